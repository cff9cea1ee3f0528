//! Reading archives: the index, each part's identity, and blobs by the
//! pieces the index names.
//!
//! Nothing here extracts members by the names inside the tar: blobs are
//! read at the offsets the index gives and verified against their digests,
//! so a hostile member name or link can never reach the file system.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::plan::BLOCK;
use super::{
    ArchiveError, ArchiveIndex, ArchivePaths, BlobEntry, PART_MEMBER, PartIdentity, part_label,
};
use crate::digest::{Digest, verify_bytes};

/// The largest index file airlock reads (a bundle of many thousand blobs
/// stays far below it).
const MAX_INDEX_BYTES: u64 = 256 * 1024 * 1024;

/// An archive opened by its index.
#[derive(Debug, Clone)]
pub struct Archive {
    pub paths: ArchivePaths,
    pub index: ArchiveIndex,
}

/// What is wrong with a part, as far as can be told without reading it all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartProblem {
    Missing,
    Truncated {
        expected: u64,
        actual: u64,
    },
    Oversized {
        expected: u64,
        actual: u64,
    },
    /// Its `airlock-part.json` names another bundle.
    Foreign {
        bundle: String,
    },
    /// Its `airlock-part.json` says it is another part of this bundle.
    Renumbered {
        says: u32,
    },
    /// No readable `airlock-part.json` at its start.
    NotAPart(String),
    /// Its bytes do not hash to the index's sha256.
    Corrupt {
        actual: String,
    },
    /// A tar member that a part of this format never holds.
    BadMember(String),
    Unreadable(String),
}

impl std::fmt::Display for PartProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PartProblem::Missing => write!(f, "missing"),
            PartProblem::Truncated { expected, actual } => {
                write!(f, "truncated: {actual} bytes of {expected}")
            }
            PartProblem::Oversized { expected, actual } => {
                write!(f, "wrong size: {actual} bytes, the index says {expected}")
            }
            PartProblem::Foreign { bundle } => {
                write!(
                    f,
                    "belongs to another bundle ({})",
                    &bundle[..bundle.len().min(12)]
                )
            }
            PartProblem::Renumbered { says } => {
                write!(f, "is part {} of this bundle, renamed", part_label(*says))
            }
            PartProblem::NotAPart(why) => write!(f, "not an airlock part: {why}"),
            PartProblem::Corrupt { actual } => {
                write!(
                    f,
                    "corrupt: its sha256 is {}, not the index's",
                    &actual[..12]
                )
            }
            PartProblem::BadMember(why) => write!(f, "unexpected member: {why}"),
            PartProblem::Unreadable(why) => write!(f, "unreadable: {why}"),
        }
    }
}

impl Archive {
    /// Reads and validates the index.
    pub fn open(paths: ArchivePaths) -> Result<Archive, ArchiveError> {
        let path = paths.index();
        let io = |source| ArchiveError::Io {
            path: path.clone(),
            source,
        };
        let file = std::fs::File::open(&path).map_err(io)?;
        let mut bytes = Vec::new();
        file.take(MAX_INDEX_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| ArchiveError::Io {
                path: path.clone(),
                source,
            })?;
        if bytes.len() as u64 > MAX_INDEX_BYTES {
            return Err(ArchiveError::Index {
                path,
                reason: format!("over {MAX_INDEX_BYTES} bytes"),
            });
        }
        let index: ArchiveIndex =
            serde_json::from_slice(&bytes).map_err(|e| ArchiveError::Index {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        index.validate(&path)?;
        Ok(Archive { paths, index })
    }

    /// Checks every part's presence, size and identity (cheap: reads one
    /// block of each). Returns the problems found, by part number.
    pub fn check_parts(&self) -> Vec<(u32, PartProblem)> {
        self.index
            .parts
            .iter()
            .filter_map(|p| self.check_part(p.number).err().map(|e| (p.number, e)))
            .collect()
    }

    /// Checks one part's presence, size and identity.
    pub fn check_part(&self, number: u32) -> Result<(), PartProblem> {
        let entry = &self.index.parts[number as usize - 1];
        let path = self.paths.part(number);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(PartProblem::Missing),
            Err(e) => return Err(PartProblem::Unreadable(e.to_string())),
        };
        let actual = meta.len();
        let file =
            std::fs::File::open(&path).map_err(|e| PartProblem::Unreadable(e.to_string()))?;
        let identity = match read_identity(&file) {
            Ok(i) => i,
            // Too short to hold even its identity: cut off, most likely.
            Err(PartProblem::NotAPart(_)) if actual < 2 * BLOCK && actual < entry.size => {
                return Err(PartProblem::Truncated {
                    expected: entry.size,
                    actual,
                });
            }
            Err(e) => return Err(e),
        };
        if identity.bundle != self.index.bundle {
            return Err(PartProblem::Foreign {
                bundle: identity.bundle,
            });
        }
        if identity.part != number {
            return Err(PartProblem::Renumbered {
                says: identity.part,
            });
        }
        if actual < entry.size {
            return Err(PartProblem::Truncated {
                expected: entry.size,
                actual,
            });
        }
        if actual > entry.size {
            return Err(PartProblem::Oversized {
                expected: entry.size,
                actual,
            });
        }
        Ok(())
    }

    pub fn blob(&self, digest: &Digest) -> Option<&BlobEntry> {
        self.index.blob(digest)
    }

    /// The parts a blob's bytes are in.
    pub fn parts_of(&self, digest: &Digest) -> Vec<u32> {
        let mut parts: Vec<u32> = self
            .blob(digest)
            .map(|b| b.pieces.iter().map(|p| p.part).collect())
            .unwrap_or_default();
        parts.dedup();
        parts
    }

    /// Reads a small blob (a manifest) whole and verifies it.
    pub fn read_small_blob(&self, digest: &Digest) -> Result<Bytes, ArchiveError> {
        let entry = self
            .blob(digest)
            .ok_or_else(|| ArchiveError::Invalid(format!("blob {digest} is not in the archive")))?;
        if entry.size > crate::manifest::MAX_MANIFEST_BYTES as u64 {
            return Err(ArchiveError::Invalid(format!(
                "blob {digest} is {} bytes, too large to be a manifest",
                entry.size
            )));
        }
        let mut out = vec![0u8; entry.size as usize];
        let mut at = 0usize;
        for piece in &entry.pieces {
            let path = self.paths.part(piece.part);
            let file = std::fs::File::open(&path).map_err(|source| ArchiveError::Io {
                path: path.clone(),
                source,
            })?;
            let end = at + piece.length as usize;
            file.read_exact_at(&mut out[at..end], piece.offset)
                .map_err(|source| ArchiveError::Io { path, source })?;
            at = end;
        }
        verify_bytes(digest, Some(entry.size), &out).map_err(|e| {
            ArchiveError::Invalid(format!(
                "{e} (in part {})",
                self.parts_of(digest)
                    .iter()
                    .map(|p| part_label(*p))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        Ok(Bytes::from(out))
    }

    /// A blob's bytes as a stream of large chunks, read piece by piece from
    /// the parts. Unverified: feed it to a verifier.
    pub fn blob_stream(
        &self,
        entry: &BlobEntry,
    ) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        let pieces: Vec<(PathBuf, u64, u64)> = entry
            .pieces
            .iter()
            .map(|p| (self.paths.part(p.part), p.offset, p.length))
            .collect();
        futures::stream::iter(pieces)
            .then(|(path, offset, length)| async move {
                let mut file = tokio::fs::File::open(&path).await?;
                file.seek(std::io::SeekFrom::Start(offset)).await?;
                Ok::<_, std::io::Error>(tokio_util::io::ReaderStream::with_capacity(
                    file.take(length),
                    1 << 20,
                ))
            })
            .try_flatten()
    }
}

/// Reads and parses `airlock-part.json` at the start of a part.
fn read_identity(file: &std::fs::File) -> Result<PartIdentity, PartProblem> {
    let mut block = [0u8; 2 * BLOCK as usize];
    file.read_exact_at(&mut block, 0)
        .map_err(|_| PartProblem::NotAPart("shorter than two tar blocks".to_string()))?;
    let header = tar::Header::from_byte_slice(&block[..BLOCK as usize]);
    let name = header.path_bytes();
    if name.as_ref() != PART_MEMBER.as_bytes() {
        return Err(PartProblem::NotAPart(format!(
            "its first member is {:?}, not {PART_MEMBER}",
            String::from_utf8_lossy(&name)
        )));
    }
    let text = String::from_utf8_lossy(&block[BLOCK as usize..]);
    serde_json::from_str(text.trim_end())
        .map_err(|e| PartProblem::NotAPart(format!("{PART_MEMBER} is not valid: {e}")))
}
