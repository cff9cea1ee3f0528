//! The chunked tar archive: size-limited parts and a digest index.
//!
//! A bundle `NAME` is the parts `NAME.0001.tar`, `NAME.0002.tar`, ..., the
//! index `NAME.index.json` and `NAME.sha256`. Each part is a plain POSIX tar
//! whose first member, `airlock-part.json`, names the bundle and the part's
//! sequence number. Where every member sits is decided before a byte is
//! written (see [`plan`]), so blobs stream from the registry straight to
//! their place in a part, and a reader can check any part or blob alone.
//! The format is specified in `formats/archive.md`.
//!
//! Invariant: the index is written last, after every part was hashed, so an
//! index on disk always describes complete parts.

mod contents;
pub mod plan;
pub mod read;
pub mod write;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::platform::Platform;

/// The `format` string of an archive index.
pub const FORMAT: &str = "airlock-archive";
/// The version of the format this build writes and reads.
pub const VERSION: u32 = 1;
/// The member at the start of every part that names bundle and part.
pub const PART_MEMBER: &str = "airlock-part.json";
/// Where pieces of blobs larger than a part live inside the parts.
pub const PIECES_DIR: &str = "airlock-pieces";

/// An archive that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: malformed archive index: {reason}")]
    Index { path: PathBuf, reason: String },
    #[error(
        "invalid chunk size {0:?}: give bytes (4294967295), units (64MiB, 700MB) or a preset (fat32, cd, dvd, bd25, none)"
    )]
    ChunkSize(String),
    #[error(
        "chunk size {size} is too small: part 0001 needs {needed} bytes for the bundle's metadata"
    )]
    TooSmall { size: u64, needed: u64 },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
}

impl crate::registry::RetryClass for ArchiveError {
    fn is_corrupt(&self) -> bool {
        matches!(self, ArchiveError::Registry(e) if e.is_corrupt())
    }
}

/// The index of an archive: `NAME.index.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArchiveIndex {
    pub format: String,
    pub version: u32,
    /// Identifies the bundle: every part's `airlock-part.json` repeats it.
    pub bundle: String,
    /// The largest a part may be, in bytes.
    pub chunk_size: u64,
    /// Seconds since the epoch written as every member's mtime.
    pub mtime: u64,
    pub parts: Vec<PartEntry>,
    pub images: Vec<ImageEntry>,
    pub blobs: Vec<BlobEntry>,
    /// For an incremental bundle: what it builds on and left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<crate::base::BaseInfo>,
}

/// One part file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PartEntry {
    /// The sequence number, from 1.
    pub number: u32,
    /// The file name as written (`NAME.0001.tar`).
    pub name: String,
    pub size: u64,
    /// Lower-case hex sha256 of the whole part file.
    pub sha256: String,
}

/// One image the bundle holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageEntry {
    /// The full reference it was exported as.
    pub name: String,
    pub digest: Digest,
    pub media_type: String,
    pub platforms: Vec<Platform>,
    /// Every blob the image needs: its manifests, configs and layers.
    pub blobs: Vec<Digest>,
    /// For a signature, SBOM or attestation: the manifest it refers to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Digest>,
    /// For a referrer: the name of the image it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referrer_of: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

/// One blob and where its bytes are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BlobEntry {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    /// In order; their lengths add up to `size`.
    pub pieces: Vec<Piece>,
}

/// A run of a blob's bytes inside one part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Piece {
    pub part: u32,
    /// Byte offset of the data (not of its tar header) in the part file.
    pub offset: u64,
    pub length: u64,
}

/// The contents of `airlock-part.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PartIdentity {
    pub format: String,
    pub bundle: String,
    pub part: u32,
    pub parts: u32,
}

impl ArchiveIndex {
    /// Checks what a reader relies on before touching any part.
    pub fn validate(&self, path: &Path) -> Result<(), ArchiveError> {
        let bad = |reason: String| ArchiveError::Index {
            path: path.to_path_buf(),
            reason,
        };
        if self.format != FORMAT {
            return Err(bad(format!("format is {:?}, not {FORMAT:?}", self.format)));
        }
        if self.version != VERSION {
            return Err(bad(format!(
                "version {} is not {VERSION}; this airlock reads version {VERSION}",
                self.version
            )));
        }
        if self.bundle.len() != 64 || !self.bundle.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("bundle is not 64 hex digits".to_string()));
        }
        for (i, part) in self.parts.iter().enumerate() {
            if part.number as usize != i + 1 {
                return Err(bad(format!(
                    "part {} is listed as number {}",
                    i + 1,
                    part.number
                )));
            }
            if part.sha256.len() != 64 || !part.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(format!("part {} has no valid sha256", part.number)));
            }
            if part.size > self.chunk_size {
                return Err(bad(format!(
                    "part {} is larger than the chunk size",
                    part.number
                )));
            }
        }
        for blob in &self.blobs {
            let mut total = 0u64;
            for piece in &blob.pieces {
                let Some(part) = self.parts.get((piece.part as usize).wrapping_sub(1)) else {
                    return Err(bad(format!(
                        "blob {} names part {}",
                        blob.digest, piece.part
                    )));
                };
                let end = piece.offset.checked_add(piece.length);
                if end.is_none_or(|e| e > part.size) {
                    return Err(bad(format!(
                        "blob {} runs past the end of part {}",
                        blob.digest,
                        part_label(piece.part)
                    )));
                }
                total = total.saturating_add(piece.length);
            }
            if total != blob.size {
                return Err(bad(format!(
                    "blob {}: pieces add up to {total} bytes, not {}",
                    blob.digest, blob.size
                )));
            }
        }
        Ok(())
    }

    /// The blob entry for a digest.
    pub fn blob(&self, digest: &Digest) -> Option<&BlobEntry> {
        self.blobs.iter().find(|b| &b.digest == digest)
    }

    /// Serialises with a stable key order and a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("index always serialises");
        out.push(b'\n');
        out
    }
}

/// `0003`: how parts are named in file names and messages.
pub fn part_label(number: u32) -> String {
    format!("{number:04}")
}

/// The files of an archive bundle, found from any of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivePaths {
    /// `DIR/NAME`, without any suffix.
    pub stem: PathBuf,
}

impl ArchivePaths {
    /// From the `-o` of an export: `NAME.tar` or `NAME`.
    pub fn for_output(output: &Path) -> ArchivePaths {
        let text = output.to_string_lossy();
        let stem = text.strip_suffix(".tar").unwrap_or(&text);
        ArchivePaths {
            stem: PathBuf::from(stem),
        }
    }

    /// From what a user names: the index file, `NAME`, or any part.
    pub fn find(given: &Path) -> Option<ArchivePaths> {
        let text = given.to_string_lossy().to_string();
        if let Some(stem) = text.strip_suffix(".index.json") {
            return Some(ArchivePaths { stem: stem.into() });
        }
        if let Some(stem) = strip_part_suffix(&text) {
            return Some(ArchivePaths { stem: stem.into() });
        }
        for stem in [text.as_str(), text.strip_suffix(".tar").unwrap_or(&text)] {
            let paths = ArchivePaths { stem: stem.into() };
            if paths.index().is_file() {
                return Some(paths);
            }
        }
        None
    }

    pub fn name(&self) -> String {
        self.stem
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default()
    }

    pub fn index(&self) -> PathBuf {
        self.with_suffix(".index.json")
    }

    pub fn checksums(&self) -> PathBuf {
        self.with_suffix(".sha256")
    }

    /// Progress of an unfinished export, for a re-run to resume from.
    pub fn state(&self) -> PathBuf {
        let dir = self.stem.parent().unwrap_or(Path::new(""));
        dir.join(format!(".{}.airlock-partial.json", self.name()))
    }

    pub fn part(&self, number: u32) -> PathBuf {
        self.with_suffix(&format!(".{}.tar", part_label(number)))
    }

    pub fn part_name(&self, number: u32) -> String {
        format!("{}.{}.tar", self.name(), part_label(number))
    }

    fn with_suffix(&self, suffix: &str) -> PathBuf {
        let mut s = self.stem.clone().into_os_string();
        s.push(suffix);
        PathBuf::from(s)
    }
}

/// `NAME.0003.tar` -> `NAME`.
fn strip_part_suffix(text: &str) -> Option<&str> {
    let rest = text.strip_suffix(".tar")?;
    let (stem, digits) = rest.rsplit_once('.')?;
    (digits.len() >= 4 && digits.bytes().all(|b| b.is_ascii_digit())).then_some(stem)
}

/// The largest a part may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSize(pub u64);

impl ChunkSize {
    /// FAT32's limit on one file: 4 GiB - 1 byte.
    pub const FAT32: ChunkSize = ChunkSize(4 * 1024 * 1024 * 1024 - 1);
    /// The smallest part this build writes.
    pub const MIN: u64 = 64 * 1024;

    /// Parses `64MiB`, `4GiB`, `700MB`, `123456`, or a preset name.
    pub fn parse(input: &str) -> Result<ChunkSize, ArchiveError> {
        let bad = || ArchiveError::ChunkSize(input.to_string());
        let text = input.trim();
        let preset = match text.to_ascii_lowercase().as_str() {
            "fat32" => Some(ChunkSize::FAT32.0),
            // 700 MiB fits an 80-minute CD-R (737,280,000 bytes) with room
            // for the file system and the index.
            "cd" => Some(700 * 1024 * 1024),
            // A single-layer DVD±R holds 4,700,372,992 bytes; 4,380 MiB
            // leaves room for UDF and the index.
            "dvd" => Some(4380 * 1024 * 1024),
            // A single-layer BD-R holds 25,025,314,816 bytes.
            "bd25" => Some(23_000 * 1024 * 1024),
            "none" => Some(u64::MAX),
            _ => None,
        };
        if let Some(bytes) = preset {
            return Ok(ChunkSize(bytes));
        }
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number.parse().map_err(|_| bad())?;
        let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            "k" | "kib" => 1 << 10,
            "m" | "mib" => 1 << 20,
            "g" | "gib" => 1 << 30,
            "t" | "tib" => 1 << 40,
            _ => return Err(bad()),
        };
        let bytes = number.checked_mul(factor).ok_or_else(bad)?;
        if bytes < ChunkSize::MIN {
            return Err(ArchiveError::ChunkSize(format!(
                "{input} (the smallest is {} bytes)",
                ChunkSize::MIN
            )));
        }
        Ok(ChunkSize(bytes))
    }
}

impl fmt::Display for ChunkSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_chunk_sizes_and_presets() {
        assert_eq!(ChunkSize::parse("64MiB").unwrap().0, 64 << 20);
        assert_eq!(ChunkSize::parse("4GiB").unwrap().0, 4 << 30);
        assert_eq!(ChunkSize::parse("700MB").unwrap().0, 700_000_000);
        assert_eq!(ChunkSize::parse("fat32").unwrap().0, 4_294_967_295);
        assert_eq!(ChunkSize::parse("1048576").unwrap().0, 1 << 20);
        for bad in [
            "",
            "MiB",
            "12 parsecs",
            "-5MiB",
            "99999999999999999999GiB",
            "100",
        ] {
            assert!(ChunkSize::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn finds_the_bundle_from_any_of_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let stem = dir.path().join("site");
        std::fs::write(dir.path().join("site.index.json"), "{}").unwrap();
        let want = Some(ArchivePaths { stem: stem.clone() });
        assert_eq!(
            ArchivePaths::find(&dir.path().join("site.index.json")),
            want
        );
        assert_eq!(ArchivePaths::find(&dir.path().join("site.0007.tar")), want);
        assert_eq!(ArchivePaths::find(&stem), want);
        assert_eq!(ArchivePaths::find(&dir.path().join("site.tar")), want);
        assert_eq!(ArchivePaths::find(&dir.path().join("other")), None);
        let paths = ArchivePaths { stem };
        assert_eq!(paths.part(3), dir.path().join("site.0003.tar"));
        assert_eq!(paths.part_name(12), "site.0012.tar");
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn index_checks_never_panic(
            parts in proptest::collection::vec((0u32..5, 0u64..10_000), 0..4),
            pieces in proptest::collection::vec((0u32..6, any::<u64>(), any::<u64>()), 0..6),
            size in any::<u64>(),
        ) {
            let index = ArchiveIndex {
                format: FORMAT.into(),
                version: VERSION,
                bundle: "0".repeat(64),
                chunk_size: 1 << 20,
                mtime: 0,
                parts: parts
                    .iter()
                    .map(|(n, s)| PartEntry { number: *n, name: "x".into(), size: *s, sha256: "a".repeat(64) })
                    .collect(),
                images: vec![],
                blobs: vec![BlobEntry {
                    digest: crate::digest::Digest::sha256_of(b""),
                    size,
                    media_type: "x".into(),
                    pieces: pieces.iter().map(|(part, offset, length)| Piece { part: *part, offset: *offset, length: *length }).collect(),
                }],
                base: None,
            };
            let _ = index.validate(Path::new("x.index.json"));
        }

        #[test]
        fn finding_a_bundle_never_panics(s in ".{0,80}") {
            let _ = ArchivePaths::find(Path::new(&s));
            let _ = ChunkSize::parse(&s);
        }
    }
}
