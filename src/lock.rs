//! Lock files: which digests an export resolved to, so that the same
//! bundle can be made again later (`--from-lock`) and later bundles can
//! leave out what an earlier one carried (`--since`).
//!
//! The format is in `formats/lock.md`. A lock pins every image by the
//! digest the registry served for it and records the options that decide
//! the bundle's bytes; `--from-lock` fetches by those digests only, never
//! by tag, and finds referrers from the lock instead of asking again.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::convert::Schema1Mode;
use crate::digest::Digest;
use crate::export::ResolvedImage;
use crate::platform::Platform;

pub const FORMAT: &str = "airlock-lock";
pub const VERSION: u32 = 1;

/// A lock file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an airlock lock file: {reason}")]
    Malformed { path: String, reason: String },
}

/// `airlock.lock`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Lock {
    pub format: String,
    pub version: u32,
    pub options: LockOptions,
    /// In export order: the requested images first, then their referrers.
    pub images: Vec<LockedImage>,
    /// Every blob of the bundle, manifests included, sorted by digest.
    pub blobs: Vec<LockedBlob>,
}

/// The options that decide a bundle's bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LockOptions {
    pub platforms: Vec<String>,
    pub annotations: BTreeMap<String, String>,
    pub schema1: Schema1Mode,
    /// The chunk size of an archive export; none for a layout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<u64>,
}

/// One image of the bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LockedImage {
    /// The name in the bundle (`host/app:1.2`, or `host/app@sha256:..`).
    pub reference: String,
    /// What the registry served for it: the digest `--from-lock` fetches.
    pub digest: Digest,
    /// What the bundle names, when that differs (a platform filter, a
    /// schema1 conversion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_digest: Option<Digest>,
    pub platforms: Vec<Platform>,
    /// For a referrer: the manifest it refers to and the image it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

/// One blob of the bundle.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LockedBlob {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

impl From<&crate::manifest::Descriptor> for LockedBlob {
    fn from(d: &crate::manifest::Descriptor) -> LockedBlob {
        LockedBlob {
            digest: d.digest.clone(),
            size: d.size,
            media_type: d.media_type.clone(),
        }
    }
}

impl Lock {
    /// The lock of what an export wrote.
    pub fn of(images: &[ResolvedImage], options: LockOptions) -> Lock {
        let mut blobs = BTreeMap::new();
        for image in images {
            for m in &image.manifests {
                blobs.insert(
                    m.digest.clone(),
                    LockedBlob {
                        digest: m.digest.clone(),
                        size: m.body.len() as u64,
                        media_type: m.media_type.clone(),
                    },
                );
            }
            for b in &image.blobs {
                blobs.insert(b.digest.clone(), LockedBlob::from(b));
            }
        }
        Lock {
            format: FORMAT.to_string(),
            version: VERSION,
            options,
            images: images
                .iter()
                .map(|i| LockedImage {
                    reference: i.reference.name(),
                    digest: i.source_digest.clone(),
                    bundle_digest: (i.root.digest != i.source_digest)
                        .then(|| i.root.digest.clone()),
                    platforms: i.platforms.clone(),
                    subject: i.subject.clone(),
                    subject_image: i.referrer_of.clone(),
                    artifact_type: i.artifact_type.clone(),
                })
                .collect(),
            blobs: blobs.into_values().collect(),
        }
    }

    pub fn read(path: &Path) -> Result<Lock, LockError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| LockError::Io {
            path: shown.clone(),
            source,
        })?;
        let lock: Lock = serde_json::from_slice(&bytes).map_err(|e| LockError::Malformed {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        if lock.format != FORMAT || lock.version != VERSION {
            return Err(LockError::Malformed {
                path: shown,
                reason: format!(
                    "format {:?} version {}; this airlock reads {FORMAT:?} version {VERSION}",
                    lock.format, lock.version
                ),
            });
        }
        Ok(lock)
    }

    /// Writes the lock atomically.
    pub fn write(&self, path: &Path) -> Result<(), LockError> {
        use std::io::Write;
        let shown = path.display().to_string();
        let io = |source| LockError::Io {
            path: shown.clone(),
            source,
        };
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut bytes = serde_json::to_vec_pretty(self).expect("lock serialises");
        bytes.push(b'\n');
        let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        temp.write_all(&bytes).map_err(io)?;
        temp.as_file().sync_all().map_err(io)?;
        temp.persist(path).map_err(|e| io(e.error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_other_formats() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        std::fs::write(&p, r#"{"format":"other","version":1,"options":{"platforms":[],"annotations":{},"schema1":"oci"},"images":[],"blobs":[]}"#).unwrap();
        assert!(matches!(Lock::read(&p), Err(LockError::Malformed { .. })));
        std::fs::write(&p, "not json").unwrap();
        assert!(Lock::read(&p).is_err());
    }
}
