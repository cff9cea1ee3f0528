//! What an incremental bundle builds on.
//!
//! `export --since OLD` leaves out every blob that OLD (a bundle, its
//! index, or a lock file) already carried; the new bundle records which
//! blobs it left out and what it builds on, so that `import` can check
//! that the target has them before it pushes anything, and `verify` can
//! say what the bundle needs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bundle::{Bundle, BundleError};
use crate::digest::Digest;
use crate::lock::{FORMAT as LOCK_FORMAT, Lock, LockedBlob};

/// Where a layout records what it builds on.
pub const LAYOUT_FILE: &str = "airlock-base.json";

/// What an incremental bundle builds on and what it left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BaseInfo {
    /// The bundle or lock it builds on, as given (`bundle 1a2b3c4d5e6f`,
    /// `lock airlock.lock`).
    pub builds_on: String,
    /// Blobs the images need that this bundle does not hold.
    pub omitted: Vec<LockedBlob>,
}

impl BaseInfo {
    pub fn omits(&self, digest: &Digest) -> bool {
        self.omitted.iter().any(|b| &b.digest == digest)
    }

    /// Total size of what is left out.
    pub fn bytes(&self) -> u64 {
        self.omitted.iter().map(|b| b.size).sum()
    }
}

/// The blobs of an earlier bundle.
#[derive(Debug, Clone, Default)]
pub struct Base {
    pub description: String,
    pub blobs: HashMap<Digest, LockedBlob>,
}

/// A base that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
}

impl Base {
    /// Reads a lock file, an archive (index, NAME or part) or a layout.
    pub fn load(path: &Path) -> Result<Base, BaseError> {
        if path.is_file() && looks_like_lock(path) {
            let lock = Lock::read(path)?;
            return Ok(Base {
                description: format!("lock {}", path.display()),
                blobs: lock
                    .blobs
                    .into_iter()
                    .map(|b| (b.digest.clone(), b))
                    .collect(),
            });
        }
        let bundle = Bundle::open(path)?;
        let mut blobs: HashMap<Digest, LockedBlob> = bundle_blobs(&bundle)?
            .into_iter()
            .map(|b| (b.digest.clone(), b))
            .collect();
        // What the old bundle itself built on, the target has too.
        if let Some(info) = bundle.base() {
            for b in info.omitted {
                blobs.insert(b.digest.clone(), b);
            }
        }
        let description = match &bundle {
            Bundle::Archive { archive, .. } => format!(
                "bundle {} ({})",
                &archive.index.bundle[..12],
                archive.paths.index().display()
            ),
            Bundle::Layout(l, _) => format!("layout {}", l.root().display()),
        };
        Ok(Base { description, blobs })
    }

    pub fn has(&self, digest: &Digest) -> bool {
        self.blobs.contains_key(digest)
    }
}

fn looks_like_lock(path: &Path) -> bool {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v["format"] == LOCK_FORMAT)
}

/// Every blob a bundle holds or names, manifests included.
pub fn bundle_blobs(bundle: &Bundle) -> Result<Vec<LockedBlob>, BundleError> {
    if let Bundle::Archive { archive, .. } = bundle {
        return Ok(archive
            .index
            .blobs
            .iter()
            .map(|b| LockedBlob {
                digest: b.digest.clone(),
                size: b.size,
                media_type: b.media_type.clone(),
            })
            .collect());
    }
    let mut out: HashMap<Digest, LockedBlob> = HashMap::new();
    for entry in bundle.entries()? {
        for (d, _) in bundle.reachable(&entry) {
            out.entry(d.digest.clone())
                .or_insert_with(|| LockedBlob::from(&d));
        }
    }
    let mut blobs: Vec<LockedBlob> = out.into_values().collect();
    blobs.sort();
    Ok(blobs)
}

/// Reads a layout's base record, if it has one.
pub fn read_layout_base(root: &Path) -> Option<BaseInfo> {
    let bytes = std::fs::read(root.join(LAYOUT_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The path of a layout's base record.
pub fn layout_base_path(root: &Path) -> PathBuf {
    root.join(LAYOUT_FILE)
}
