//! Where every member of an archive goes, decided before anything is
//! written.
//!
//! The plan is a pure function of the metadata files, the blob list (digest,
//! size, media type, in order) and the options, so the same images give the
//! same parts byte for byte. A blob goes whole into the current part if it
//! fits, else whole into the next part if it fits an empty one; only a blob
//! larger than a part is cut into pieces, which fill the current part's
//! rest and then whole parts.

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use super::{
    ArchiveError, BlobEntry, FORMAT, PART_MEMBER, PIECES_DIR, PartIdentity, Piece, VERSION,
};
use crate::digest::{Algorithm, Digest};

/// A tar block.
pub const BLOCK: u64 = 512;
/// The end-of-archive marker: two zero blocks.
const TRAILER: u64 = 2 * BLOCK;
/// `airlock-part.json` is padded to exactly one block, so its size does not
/// depend on the numbers in it.
const IDENTITY_SIZE: u64 = BLOCK;
/// A piece smaller than this is not worth a header; start the next part.
const MIN_PIECE: u64 = 64 * 1024;

/// What a member holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// `airlock-part.json`.
    Identity,
    /// Bytes known when planning (metadata files, manifests).
    Inline(Bytes),
    /// A run of a blob's bytes, starting at `blob_offset`.
    Blob { digest: Digest, blob_offset: u64 },
}

/// One tar member of a part.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub path: String,
    /// Offset of the member's header in the part file.
    pub header_offset: u64,
    pub size: u64,
    pub content: Content,
}

impl Member {
    /// Offset of the member's data in the part file.
    pub fn data_offset(&self) -> u64 {
        self.header_offset + BLOCK
    }
}

/// One part as planned.
#[derive(Debug, Clone, PartialEq)]
pub struct PartPlan {
    pub number: u32,
    pub members: Vec<Member>,
    /// The file's size, trailer included.
    pub size: u64,
}

/// A blob to place, in archive order.
#[derive(Debug, Clone)]
pub struct BlobInput {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    /// The bytes, when already in hand (manifests).
    pub inline: Option<Bytes>,
}

/// The whole archive as planned.
#[derive(Debug, Clone)]
pub struct Plan {
    pub bundle: String,
    pub chunk_size: u64,
    pub mtime: u64,
    pub parts: Vec<PartPlan>,
    pub blobs: Vec<BlobEntry>,
}

impl Plan {
    /// The `airlock-part.json` of part `number`: JSON padded with spaces to
    /// one block, ending in a newline.
    pub fn identity(&self, number: u32) -> Vec<u8> {
        let identity = PartIdentity {
            format: FORMAT.to_string(),
            bundle: self.bundle.clone(),
            part: number,
            parts: self.parts.len() as u32,
        };
        let mut bytes = serde_json::to_vec(&identity).expect("identity serialises");
        bytes.resize(IDENTITY_SIZE as usize - 1, b' ');
        bytes.push(b'\n');
        bytes
    }
}

/// The ustar header of a regular file member. Deterministic: owner 0:0,
/// mode 0644, the given mtime, no user or group names.
pub fn header(path: &str, size: u64, mtime: u64) -> Result<[u8; 512], ArchiveError> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)
        .map_err(|e| ArchiveError::Invalid(format!("cannot name tar member {path}: {e}")))?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(*h.as_bytes())
}

fn member_len(size: u64) -> u64 {
    BLOCK + size.div_ceil(BLOCK) * BLOCK
}

/// Plans the parts.
///
/// `metadata` are the files part 0001 carries before any blob
/// (`oci-layout`, `index.json`, `manifest.json`).
pub fn plan(
    chunk_size: u64,
    mtime: u64,
    metadata: &[(&str, Bytes)],
    blobs: &[BlobInput],
) -> Result<Plan, ArchiveError> {
    let mut builder = Builder::new(chunk_size);
    for (path, bytes) in metadata {
        if !builder.fits(bytes.len() as u64) {
            return Err(ArchiveError::TooSmall {
                size: chunk_size,
                needed: metadata
                    .iter()
                    .map(|(_, b)| member_len(b.len() as u64))
                    .sum::<u64>()
                    + member_len(IDENTITY_SIZE)
                    + TRAILER,
            });
        }
        builder.push(
            path.to_string(),
            bytes.len() as u64,
            Content::Inline(bytes.clone()),
        );
    }

    let mut entries = Vec::with_capacity(blobs.len());
    for blob in blobs {
        if blob.digest.algorithm() != Algorithm::Sha256 {
            return Err(ArchiveError::Invalid(format!(
                "blob {}: archives hold sha256 blobs only; export to a layout directory instead",
                blob.digest
            )));
        }
        let path = format!("blobs/sha256/{}", blob.digest.hex());
        let content = |blob_offset| match &blob.inline {
            Some(bytes) if blob_offset == 0 => Content::Inline(bytes.clone()),
            _ => Content::Blob {
                digest: blob.digest.clone(),
                blob_offset,
            },
        };
        let mut pieces = Vec::new();
        if !builder.fits(blob.size) && builder.fits_empty(blob.size) {
            builder.next_part();
        }
        if builder.fits(blob.size) {
            let m = builder.push(path, blob.size, content(0));
            pieces.push(Piece {
                part: builder.number(),
                offset: m,
                length: blob.size,
            });
        } else {
            // Larger than a part: cut it into pieces.
            let mut done = 0u64;
            let mut n = 1;
            while done < blob.size {
                let mut room = builder.room_for_data();
                if room < MIN_PIECE.min(blob.size - done) {
                    builder.next_part();
                    room = builder.room_for_data();
                }
                let length = (blob.size - done).min(room);
                let piece_path = format!("{PIECES_DIR}/sha256/{}.{n:04}", blob.digest.hex());
                let data = builder.push(
                    piece_path,
                    length,
                    Content::Blob {
                        digest: blob.digest.clone(),
                        blob_offset: done,
                    },
                );
                pieces.push(Piece {
                    part: builder.number(),
                    offset: data,
                    length,
                });
                done += length;
                n += 1;
            }
        }
        entries.push(BlobEntry {
            digest: blob.digest.clone(),
            size: blob.size,
            media_type: blob.media_type.clone(),
            pieces,
        });
    }

    let parts = builder.finish();
    let mut plan = Plan {
        bundle: String::new(),
        chunk_size,
        mtime,
        parts,
        blobs: entries,
    };
    plan.bundle = bundle_id(&plan);
    Ok(plan)
}

/// The bundle's identity: a hash of everything that decides the parts'
/// bytes, except the identity members themselves (which repeat it).
fn bundle_id(plan: &Plan) -> String {
    let mut h = Sha256::new();
    h.update(format!(
        "{FORMAT}/{VERSION} {} {}\n",
        plan.chunk_size, plan.mtime
    ));
    for part in &plan.parts {
        for m in &part.members {
            let what = match &m.content {
                Content::Identity => "identity".to_string(),
                Content::Inline(b) => format!("inline {}", Digest::sha256_of(b)),
                Content::Blob {
                    digest,
                    blob_offset,
                } => format!("blob {digest} {blob_offset}"),
            };
            h.update(format!(
                "{} {} {} {} {what}\n",
                part.number, m.header_offset, m.size, m.path
            ));
        }
    }
    hex::encode(h.finalize())
}

/// Lays members out part by part.
struct Builder {
    chunk_size: u64,
    parts: Vec<PartPlan>,
    /// Bytes used in the current part, identity member included.
    used: u64,
}

impl Builder {
    fn new(chunk_size: u64) -> Builder {
        let mut b = Builder {
            chunk_size,
            parts: Vec::new(),
            used: 0,
        };
        b.next_part();
        b
    }

    fn number(&self) -> u32 {
        self.parts.len() as u32
    }

    fn next_part(&mut self) {
        let number = self.parts.len() as u32 + 1;
        self.parts.push(PartPlan {
            number,
            members: Vec::new(),
            size: 0,
        });
        self.used = 0;
        self.push(PART_MEMBER.to_string(), IDENTITY_SIZE, Content::Identity);
    }

    /// Bytes of data one more member could hold in the current part.
    fn room_for_data(&self) -> u64 {
        let free = self.chunk_size.saturating_sub(self.used + TRAILER + BLOCK);
        // Whole blocks only, so a full piece needs no padding.
        free / BLOCK * BLOCK
    }

    fn fits(&self, size: u64) -> bool {
        self.used
            .checked_add(member_len(size))
            .and_then(|n| n.checked_add(TRAILER))
            .is_some_and(|n| n <= self.chunk_size)
    }

    fn fits_empty(&self, size: u64) -> bool {
        (member_len(IDENTITY_SIZE) + member_len(size))
            .checked_add(TRAILER)
            .is_some_and(|n| n <= self.chunk_size)
    }

    /// Appends a member; returns the offset of its data.
    fn push(&mut self, path: String, size: u64, content: Content) -> u64 {
        let header_offset = self.used;
        self.used += member_len(size);
        let part = self.parts.last_mut().expect("a part is always open");
        part.members.push(Member {
            path,
            header_offset,
            size,
            content,
        });
        header_offset + BLOCK
    }

    fn finish(mut self) -> Vec<PartPlan> {
        let last = self.parts.len() - 1;
        for (i, part) in self.parts.iter_mut().enumerate() {
            part.size = part
                .members
                .last()
                .map_or(0, |m| m.header_offset + member_len(m.size))
                + TRAILER;
            debug_assert!(i == last || part.size <= self.chunk_size);
        }
        self.parts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(n: u8, size: u64) -> BlobInput {
        BlobInput {
            digest: Digest::sha256_of(&[n]),
            size,
            media_type: "application/octet-stream".into(),
            inline: None,
        }
    }

    fn meta() -> Vec<(&'static str, Bytes)> {
        vec![
            ("oci-layout", Bytes::from_static(b"{}")),
            ("index.json", Bytes::from_static(b"{}")),
        ]
    }

    #[test]
    fn no_part_exceeds_the_chunk_size_and_pieces_add_up() {
        let chunk = 256 * 1024;
        let blobs = vec![
            blob(1, 100_000),
            blob(2, 200_000),
            blob(3, 700_000),
            blob(4, 10),
        ];
        let plan = plan(chunk, 0, &meta(), &blobs).unwrap();
        for part in &plan.parts {
            assert!(part.size <= chunk, "part {} is {}", part.number, part.size);
        }
        for (entry, input) in plan.blobs.iter().zip(&blobs) {
            assert_eq!(
                entry.pieces.iter().map(|p| p.length).sum::<u64>(),
                input.size
            );
        }
        // The 700 kB blob needs pieces; the others are whole.
        assert!(plan.blobs[2].pieces.len() >= 3);
        assert_eq!(plan.blobs[1].pieces.len(), 1);
    }

    #[test]
    fn same_input_same_plan_and_identity() {
        let blobs = vec![blob(1, 5000), blob(2, 300_000)];
        let a = plan(128 * 1024, 7, &meta(), &blobs).unwrap();
        let b = plan(128 * 1024, 7, &meta(), &blobs).unwrap();
        assert_eq!(a.parts, b.parts);
        assert_eq!(a.bundle, b.bundle);
        let c = plan(128 * 1024, 8, &meta(), &blobs).unwrap();
        assert_ne!(a.bundle, c.bundle);
        assert_eq!(a.identity(1).len(), 512);
    }

    #[test]
    fn unlimited_parts_hold_everything_in_one() {
        let blobs = vec![blob(1, 5 << 20), blob(2, 3 << 20)];
        let plan = plan(u64::MAX, 0, &meta(), &blobs).unwrap();
        assert_eq!(plan.parts.len(), 1);
    }

    #[test]
    fn metadata_that_does_not_fit_is_an_error() {
        let big = vec![("index.json", Bytes::from(vec![b' '; 100_000]))];
        assert!(matches!(
            plan(64 * 1024, 0, &big, &[]),
            Err(ArchiveError::TooSmall { .. })
        ));
    }

    #[test]
    fn headers_are_deterministic_ustar() {
        let h = header("blobs/sha256/abc", 10, 0).unwrap();
        assert_eq!(&h[257..263], b"ustar\0");
        assert_eq!(h, header("blobs/sha256/abc", 10, 0).unwrap());
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parts_never_exceed_the_chunk_and_pieces_tile_each_blob(
            chunk_kib in 64u64..2048,
            sizes in proptest::collection::vec(0u64..3_000_000, 1..12),
        ) {
            let chunk = chunk_kib * 1024;
            let blobs: Vec<BlobInput> = sizes
                .iter()
                .enumerate()
                .map(|(i, s)| BlobInput {
                    digest: Digest::sha256_of(&(i as u64).to_le_bytes()),
                    size: *s,
                    media_type: "x".into(),
                    inline: None,
                })
                .collect();
            let meta = vec![("index.json", Bytes::from_static(b"{}"))];
            let plan = plan(chunk, 0, &meta, &blobs).unwrap();
            for part in &plan.parts {
                prop_assert!(part.size <= chunk);
                // Members follow each other without overlap.
                let mut end = 0;
                for m in &part.members {
                    prop_assert!(m.header_offset >= end);
                    end = m.data_offset() + m.size.div_ceil(BLOCK) * BLOCK;
                }
                prop_assert!(end + 1024 <= part.size || part.members.is_empty());
            }
            for (entry, input) in plan.blobs.iter().zip(&blobs) {
                prop_assert_eq!(entry.pieces.iter().map(|p| p.length).sum::<u64>(), input.size);
                prop_assert!(entry.pieces.windows(2).all(|w| w[0].part < w[1].part));
            }
        }
    }
}
