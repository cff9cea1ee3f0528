//! Layer diff IDs: the sha256 of a layer's *uncompressed* tar stream.
//!
//! An image config lists every layer by its diff ID, so converting a schema1
//! manifest (which names only compressed blobs) needs each blob decompressed
//! once. [`DiffIdHasher`] does that on the fly as the compressed bytes
//! arrive, in whatever chunks the network delivers them. The invariant: the
//! hasher never holds more than a decoder's fixed working buffers, whatever
//! the size of the blob, and a digest is only returned for a stream that
//! decompressed completely.

use std::fmt;
use std::io::{self, Write};

use crate::digest::{Algorithm, Digest, Hasher};

/// gzip's member header (RFC 1952, section 2.3.1): ID1, ID2.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// A zstd frame's magic number, little-endian (RFC 8878, section 3.1.1).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// How a layer blob is compressed, as told by its first bytes.
///
/// Media types are not trusted for this: registries and old tools label
/// zstd and uncompressed layers as gzip often enough that the bytes are
/// the only reliable witness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    Gzip,
    Zstd,
    None,
}

impl Compression {
    /// Decides from the first bytes of a blob, or says that more are needed.
    ///
    /// `None` (the Rust one) means `prefix` could still begin either magic.
    pub fn sniff(prefix: &[u8]) -> Option<Compression> {
        if prefix.starts_with(&GZIP_MAGIC) {
            return Some(Compression::Gzip);
        }
        if prefix.starts_with(&ZSTD_MAGIC) {
            return Some(Compression::Zstd);
        }
        let could_be = |magic: &[u8]| magic.starts_with(prefix);
        if could_be(&GZIP_MAGIC) || could_be(&ZSTD_MAGIC) {
            None
        } else {
            Some(Compression::None)
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::None => "uncompressed",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A compressed layer stream that could not be decompressed.
#[derive(Debug, thiserror::Error)]
pub enum DiffIdError {
    /// The decoder rejected the bytes (bad header, bad block, bad checksum).
    #[error("{compression} layer stream is corrupt within its first {offset} bytes")]
    Corrupt {
        compression: Compression,
        /// Compressed bytes fed so far, the corrupt one among them.
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// At the end of the input the last gzip member or zstd frame is not
    /// complete and verified: the blob was cut short, or (gzip) its
    /// trailing CRC or length is wrong; the decoders cannot tell which.
    #[error(
        "{compression} layer stream ends before its last block is complete and verified, \
         after {offset} bytes"
    )]
    Truncated {
        compression: Compression,
        offset: u64,
        #[source]
        source: io::Error,
    },
}

/// Hashes whatever a decoder writes out, and counts it.
struct HashWriter {
    hasher: Hasher,
    written: u64,
}

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.update(buf);
        self.written += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where the hasher is in the stream.
enum State {
    /// Too few bytes seen to tell the compression; they wait here (at most
    /// three, since four always decide).
    Sniffing(Vec<u8>),
    // A gzip blob may be several members back to back (pigz, some
    // registries' re-compression); each one decodes into the same hash.
    Gzip(Box<flate2::write::MultiGzDecoder<HashWriter>>),
    Zstd(Box<zstd::stream::write::Decoder<'static, HashWriter>>),
    Plain(Box<HashWriter>),
}

/// Computes a layer's diff ID from its compressed bytes, pushed in as they
/// arrive.
///
/// ```
/// # use airlock::diffid::{DiffIdHasher, Compression};
/// let mut h = DiffIdHasher::new();
/// h.update(b"plain tar bytes").unwrap();
/// let (diff_id, compression) = h.finish().unwrap();
/// assert_eq!(compression, Compression::None);
/// assert_eq!(diff_id, airlock::digest::Digest::sha256_of(b"plain tar bytes"));
/// ```
pub struct DiffIdHasher {
    state: State,
    /// Compressed bytes accepted so far, for error messages.
    fed: u64,
}

impl Default for DiffIdHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl DiffIdHasher {
    pub fn new() -> DiffIdHasher {
        DiffIdHasher {
            state: State::Sniffing(Vec::with_capacity(ZSTD_MAGIC.len())),
            fed: 0,
        }
    }

    /// The compression detected so far, once enough bytes arrived to tell.
    pub fn compression(&self) -> Option<Compression> {
        match &self.state {
            State::Sniffing(_) => None,
            State::Gzip(_) => Some(Compression::Gzip),
            State::Zstd(_) => Some(Compression::Zstd),
            State::Plain(_) => Some(Compression::None),
        }
    }

    /// Feeds the next compressed bytes of the blob.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), DiffIdError> {
        self.fed += chunk.len() as u64;
        if let State::Sniffing(prefix) = &mut self.state {
            let wanted = ZSTD_MAGIC.len() - prefix.len();
            let (head, rest) = chunk.split_at(wanted.min(chunk.len()));
            prefix.extend_from_slice(head);
            let Some(compression) = Compression::sniff(prefix) else {
                return Ok(());
            };
            let prefix = std::mem::take(prefix);
            self.start(compression);
            self.write(&prefix)?;
            return self.write(rest);
        }
        self.write(chunk)
    }

    /// Ends the stream and returns the diff ID with the compression found.
    pub fn finish(mut self) -> Result<(Digest, Compression), DiffIdError> {
        if let State::Sniffing(prefix) = &mut self.state {
            // Fewer than four bytes in all: too short to be either magic
            // in full, so these bytes are the layer itself.
            let prefix = std::mem::take(prefix);
            self.start(Compression::None);
            self.write(&prefix)?;
        }
        let fed = self.fed;
        let (out, compression) = match self.state {
            State::Sniffing(_) => unreachable!("the compression was decided above"),
            State::Plain(out) => (*out, Compression::None),
            // Both decoders report a member or frame cut short only here:
            // flate2 when the CRC/size trailer is missing or wrong, zstd
            // when the last frame is incomplete.
            State::Gzip(decoder) => (
                decoder
                    .finish()
                    .map_err(|source| truncated(Compression::Gzip, fed, source))?,
                Compression::Gzip,
            ),
            State::Zstd(decoder) => (
                decoder
                    .finish()
                    .map_err(|source| truncated(Compression::Zstd, fed, source))?,
                Compression::Zstd,
            ),
        };
        Ok((out.hasher.finish(), compression))
    }

    fn start(&mut self, compression: Compression) {
        let out = HashWriter {
            hasher: Hasher::new(Algorithm::Sha256),
            written: 0,
        };
        self.state = match compression {
            Compression::Gzip => State::Gzip(Box::new(flate2::write::MultiGzDecoder::new(out))),
            Compression::Zstd => State::Zstd(Box::new(
                zstd::stream::write::Decoder::new(out)
                    .expect("a zstd decoder context with no dictionary always initialises"),
            )),
            Compression::None => State::Plain(Box::new(out)),
        };
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), DiffIdError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let (result, compression) = match &mut self.state {
            State::Sniffing(_) => unreachable!("write is called once the compression is known"),
            State::Plain(out) => (out.write_all(bytes), Compression::None),
            State::Gzip(decoder) => (decoder.write_all(bytes), Compression::Gzip),
            State::Zstd(decoder) => (decoder.write_all(bytes), Compression::Zstd),
        };
        result.map_err(|source| DiffIdError::Corrupt {
            compression,
            offset: self.fed,
            source,
        })
    }
}

fn truncated(compression: Compression, offset: u64, source: io::Error) -> DiffIdError {
    DiffIdError::Truncated {
        compression,
        offset,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Something tar-like: repetitive with some variety, a few blocks long.
    fn sample(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ (i / 4096) as u8)
            .collect()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        zstd::stream::encode_all(data, 3).unwrap()
    }

    fn diff_id(blob: &[u8], chunk: usize) -> Result<(Digest, Compression), DiffIdError> {
        let mut h = DiffIdHasher::new();
        for piece in blob.chunks(chunk.max(1)) {
            h.update(piece)?;
        }
        h.finish()
    }

    #[test]
    fn hashes_decompressed_gzip() {
        let data = sample(200_000);
        let (d, c) = diff_id(&gzip(&data), 65_536).unwrap();
        assert_eq!(c, Compression::Gzip);
        assert_eq!(d, Digest::sha256_of(&data));
    }

    #[test]
    fn hashes_every_member_of_multi_member_gzip() {
        let data = sample(100_000);
        let (first, second) = data.split_at(30_000);
        let mut blob = gzip(first);
        blob.extend(gzip(second));
        let (d, c) = diff_id(&blob, 7_000).unwrap();
        assert_eq!(c, Compression::Gzip);
        assert_eq!(d, Digest::sha256_of(&data));
    }

    #[test]
    fn hashes_decompressed_zstd_with_several_frames() {
        let data = sample(150_000);
        let mut blob = zstd(&data[..50_000]);
        blob.extend(zstd(&data[50_000..]));
        let (d, c) = diff_id(&blob, 10_000).unwrap();
        assert_eq!(c, Compression::Zstd);
        assert_eq!(d, Digest::sha256_of(&data));
    }

    #[test]
    fn passes_uncompressed_bytes_through() {
        let data = sample(10_000);
        let (d, c) = diff_id(&data, 333).unwrap();
        assert_eq!(c, Compression::None);
        assert_eq!(d, Digest::sha256_of(&data));
    }

    #[test]
    fn one_byte_chunks_give_the_same_diff_id_as_one_chunk() {
        let data = sample(40_000);
        for blob in [gzip(&data), zstd(&data), data.clone()] {
            let whole = diff_id(&blob, blob.len()).unwrap();
            let bytewise = diff_id(&blob, 1).unwrap();
            assert_eq!(whole.0, bytewise.0);
            assert_eq!(whole.1, bytewise.1);
            assert_eq!(whole.0, Digest::sha256_of(&data));
        }
    }

    #[test]
    fn decides_compression_only_when_the_magic_is_complete() {
        let mut h = DiffIdHasher::new();
        h.update(&[0x28]).unwrap();
        h.update(&[]).unwrap();
        h.update(&[0xb5, 0x2f]).unwrap();
        assert_eq!(h.compression(), None);
        h.update(&[0xfd]).unwrap();
        assert_eq!(h.compression(), Some(Compression::Zstd));

        let mut h = DiffIdHasher::new();
        h.update(&[0x1f]).unwrap();
        assert_eq!(h.compression(), None);
        h.update(&[0x00]).unwrap();
        assert_eq!(h.compression(), Some(Compression::None));
    }

    #[test]
    fn treats_short_blobs_that_only_begin_a_magic_as_uncompressed() {
        for blob in [&b""[..], &[0x1f], &[0x28, 0xb5, 0x2f]] {
            let (d, c) = diff_id(blob, 1).unwrap();
            assert_eq!(c, Compression::None);
            assert_eq!(d, Digest::sha256_of(blob));
        }
    }

    #[test]
    fn rejects_truncated_gzip_and_zstd() {
        let data = sample(50_000);
        for (blob, name) in [(gzip(&data), "gzip"), (zstd(&data), "zstd")] {
            let cut = &blob[..blob.len() - 5];
            let err = diff_id(cut, 4096).unwrap_err();
            assert!(err.to_string().starts_with(name), "{err}");
        }
        // Cut inside the gzip header itself.
        let err = diff_id(&gzip(&data)[..6], 1).unwrap_err();
        assert!(matches!(
            err,
            DiffIdError::Corrupt { .. } | DiffIdError::Truncated { .. }
        ));
    }

    #[test]
    fn rejects_corrupt_gzip_checksum() {
        let data = sample(50_000);
        let mut blob = gzip(&data);
        let crc_at = blob.len() - 8;
        blob[crc_at] ^= 0xff;
        assert!(matches!(
            diff_id(&blob, 1000),
            Err(DiffIdError::Truncated {
                compression: Compression::Gzip,
                ..
            })
        ));
    }

    #[test]
    fn rejects_corrupt_deflate_and_zstd_data() {
        let data = sample(50_000);
        let mut blob = gzip(&data);
        // Past the 10-byte header: a block type of 3 is reserved (RFC 1951).
        blob[10] |= 0b110;
        assert!(diff_id(&blob, 1000).is_err());

        // zstd detects damaged data only through the frame's optional
        // content checksum, which the zstd CLI (and so most tools) writes.
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        e.include_checksum(true).unwrap();
        e.write_all(&data).unwrap();
        let mut blob = e.finish().unwrap();
        let mid = blob.len() / 2;
        for b in &mut blob[mid..mid + 16] {
            *b ^= 0x5a;
        }
        assert!(matches!(
            diff_id(&blob, 1000),
            Err(DiffIdError::Corrupt {
                compression: Compression::Zstd,
                ..
            })
        ));
    }

    #[test]
    fn rejects_garbage_after_the_last_gzip_member() {
        let mut blob = gzip(&sample(1000));
        blob.extend_from_slice(b"not a gzip member");
        let err = diff_id(&blob, 64).unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
    }

    #[test]
    fn error_names_compression_and_offset() {
        let blob = gzip(&sample(1000));
        let err = diff_id(&blob[..blob.len() - 4], 100).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("gzip layer stream"), "{text}");
        assert!(text.contains(&(blob.len() - 4).to_string()), "{text}");
        assert!(!text.ends_with('.'));
    }
}
