//! A bundle as commands that read one see it: an OCI layout directory or a
//! chunked archive, found from whatever path the user gave.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::archive::read::{Archive, PartProblem};
use crate::archive::{ArchiveError, ArchivePaths, part_label};
use crate::base::{BaseInfo, read_layout_base};
use crate::digest::Digest;
use crate::layout::{CONTAINERD_NAME, Layout, LayoutError, REF_NAME};
use crate::manifest::{Descriptor, Kind, Manifest};
use crate::referrers::{SUBJECT, SUBJECT_IMAGE};

/// A bundle that cannot be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(
        "{0}: no bundle there. Give a layout directory, an archive's NAME.index.json, \
         NAME, or one of its parts"
    )]
    NotFound(PathBuf),
    #[error("blob {digest} ({location}): {reason}")]
    Blob {
        digest: Digest,
        location: String,
        reason: String,
    },
}

/// An opened bundle.
pub enum Bundle {
    /// A layout, and its base record when it is incremental.
    Layout(Layout, Option<BaseInfo>),
    Archive {
        archive: Archive,
        /// Problems found by the up-front check of every part.
        bad_parts: Vec<(u32, PartProblem)>,
    },
}

impl Bundle {
    /// Opens what `path` names; for an archive, checks every part's
    /// presence, size and identity first.
    pub fn open(path: &Path) -> Result<Bundle, BundleError> {
        if path.is_dir() {
            // A directory holding one archive names that archive.
            if !path.join("oci-layout").exists()
                && let Some(index) = single_archive_index(path)
            {
                return Bundle::open(&index);
            }
            let layout = Layout::open(path)?;
            let base = read_layout_base(layout.root());
            return Ok(Bundle::Layout(layout, base));
        }
        let paths = ArchivePaths::find(path).ok_or_else(|| BundleError::NotFound(path.into()))?;
        let archive = Archive::open(paths)?;
        let bad_parts = archive.check_parts();
        Ok(Bundle::Archive { archive, bad_parts })
    }

    /// For an incremental bundle: what it builds on and left out.
    pub fn base(&self) -> Option<BaseInfo> {
        match self {
            Bundle::Layout(_, base) => base.clone(),
            Bundle::Archive { archive, .. } => archive.index.base.clone(),
        }
    }

    /// Everything `entry` reaches, each once, with its depth (the entry is
    /// 0): manifests read and verified on the way; what cannot be read is
    /// listed but not followed (verify is the place to report it).
    pub fn reachable(&self, entry: &Descriptor) -> Vec<(Descriptor, usize)> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        let mut stack = vec![(entry.clone(), 0usize)];
        while let Some((d, depth)) = stack.pop() {
            if !seen.insert(d.digest.clone()) {
                continue;
            }
            out.push((d.clone(), depth));
            if !Manifest::is_manifest_type(&d.media_type) || depth > 8 {
                continue;
            }
            let Ok(body) = self.read_manifest(&d.digest, d.size) else {
                continue;
            };
            let Ok(m) = Manifest::parse(d.digest.clone(), body, Some(&d.media_type)) else {
                continue;
            };
            let children = if m.kind == Kind::Index {
                m.manifests
            } else {
                m.blobs
            };
            stack.extend(children.into_iter().map(|c| (c, depth + 1)));
        }
        out
    }

    /// What to call the bundle in messages.
    pub fn describe(&self) -> String {
        match self {
            Bundle::Layout(l, _) => l.root().display().to_string(),
            Bundle::Archive { archive, .. } => archive.paths.index().display().to_string(),
        }
    }

    /// The images it names, as `index.json` descriptors with their names.
    pub fn entries(&self) -> Result<Vec<Descriptor>, BundleError> {
        match self {
            Bundle::Layout(l, _) => Ok(l.read_index()?.manifests),
            Bundle::Archive { archive, .. } => Ok(archive
                .index
                .images
                .iter()
                .map(|i| {
                    let mut annotations: std::collections::BTreeMap<String, String> =
                        [(REF_NAME, &i.name), (CONTAINERD_NAME, &i.name)]
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), v.clone()))
                            .collect();
                    if let (Some(s), Some(owner)) = (&i.subject, &i.referrer_of) {
                        annotations.insert(SUBJECT.to_string(), s.to_string());
                        annotations.insert(SUBJECT_IMAGE.to_string(), owner.clone());
                    }
                    Descriptor {
                        media_type: i.media_type.clone(),
                        digest: i.digest.clone(),
                        size: archive.blob(&i.digest).map_or(0, |b| b.size),
                        platform: None,
                        artifact_type: i.artifact_type.clone(),
                        annotations: Some(annotations),
                    }
                })
                .collect()),
        }
    }

    /// A manifest's bytes, verified against its digest.
    pub fn read_manifest(&self, digest: &Digest, size: u64) -> Result<Bytes, BundleError> {
        self.check_blob(digest, size)?;
        match self {
            Bundle::Layout(l, _) => Ok(l.read_small_blob(digest, Some(size))?),
            Bundle::Archive { archive, .. } => Ok(archive.read_small_blob(digest)?),
        }
    }

    /// Whether a blob's bytes are there with the right size (not hashed).
    pub fn check_blob(&self, digest: &Digest, size: u64) -> Result<(), BundleError> {
        let fail = |reason: String| BundleError::Blob {
            digest: digest.clone(),
            location: self.location(digest),
            reason,
        };
        // Left out on purpose: the target must have it (import checks).
        let omitted = match self {
            Bundle::Layout(_, base) => base.as_ref().is_some_and(|b| b.omits(digest)),
            Bundle::Archive { archive, .. } => {
                archive.index.base.as_ref().is_some_and(|b| b.omits(digest))
            }
        };
        if omitted {
            return Ok(());
        }
        match self {
            Bundle::Layout(l, _) => match std::fs::metadata(l.blob_path(digest)) {
                Ok(m) if m.len() == size => Ok(()),
                Ok(m) => Err(fail(format!("expected {size} bytes, found {}", m.len()))),
                Err(_) => Err(fail("missing".to_string())),
            },
            Bundle::Archive { archive, bad_parts } => {
                let entry = archive
                    .blob(digest)
                    .ok_or_else(|| fail("not in the archive index".to_string()))?;
                if entry.size != size {
                    return Err(fail(format!(
                        "the index says {} bytes, not {size}",
                        entry.size
                    )));
                }
                let bad: Vec<String> = archive
                    .parts_of(digest)
                    .iter()
                    .filter_map(|p| {
                        bad_parts
                            .iter()
                            .find(|(n, _)| n == p)
                            .map(|(n, why)| format!("part {} is {why}", part_label(*n)))
                    })
                    .collect();
                if bad.is_empty() {
                    Ok(())
                } else {
                    Err(fail(bad.join("; ")))
                }
            }
        }
    }

    /// Where a blob starts in an archive (part, offset), for reading parts
    /// front to back; layouts have no order.
    pub fn position(&self, digest: &Digest) -> (u32, u64) {
        match self {
            Bundle::Archive { archive, .. } => archive
                .blob(digest)
                .and_then(|b| b.pieces.first())
                .map_or((u32::MAX, 0), |p| (p.part, p.offset)),
            Bundle::Layout(..) => (0, 0),
        }
    }

    /// Where a blob's bytes are: a file, or parts.
    pub fn location(&self, digest: &Digest) -> String {
        match self {
            Bundle::Layout(l, _) => format!("file {}", l.blob_path(digest).display()),
            Bundle::Archive { archive, .. } => {
                let parts: Vec<String> = archive
                    .parts_of(digest)
                    .iter()
                    .map(|p| part_label(*p))
                    .collect();
                format!("part {}", parts.join(", "))
            }
        }
    }

    /// A blob's bytes as a stream; verify them as they flow.
    pub fn blob_stream(&self, digest: &Digest) -> BoxStream<'static, std::io::Result<Bytes>> {
        match self {
            Bundle::Layout(l, _) => {
                let path = l.blob_path(digest);
                futures::stream::once(async move { tokio::fs::File::open(path).await })
                    .map(|r| {
                        r.map(|file| tokio_util::io::ReaderStream::with_capacity(file, 1 << 20))
                    })
                    .map(|r| match r {
                        Ok(s) => s.boxed(),
                        Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
                    })
                    .flatten()
                    .boxed()
            }
            Bundle::Archive { archive, .. } => match archive.blob(digest) {
                Some(entry) => archive.blob_stream(entry).boxed(),
                None => {
                    let e = std::io::Error::other(format!("blob {digest} is not in the archive"));
                    futures::stream::once(async move { Err(e) }).boxed()
                }
            },
        }
    }
}

/// The one `*.index.json` in a directory, if there is exactly one.
fn single_archive_index(dir: &Path) -> Option<PathBuf> {
    let mut found = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".index.json"));
    let first = found.next()?;
    found.next().is_none().then_some(first)
}
