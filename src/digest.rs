//! Content digests and the one verifier every blob passes through.
//!
//! A [`Digest`] is validated when it is parsed, so its encoded part is safe
//! to join to a path: it is never anything but lower-case hex of the right
//! length. [`Verifier`] is the only place where bytes are compared with the
//! digest and size they claim; every reader of blobs (registry downloads,
//! layout reads, archive parts, uploads) feeds it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha512};

pub mod lanes;
pub mod sha256;
pub use lanes::LaneHash;
pub use sha256::Sha256;

/// A digest string that is not of the form `algorithm:hex` we accept.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    /// Not `algorithm:encoded`, or the encoded part is not lower-case hex of
    /// the algorithm's length.
    #[error("invalid digest {0:?}: expected sha256:<64 lower-case hex characters>")]
    Malformed(String),
    /// A well-formed digest with an algorithm airlock does not implement.
    #[error("unsupported digest algorithm in {0:?}: airlock supports sha256 and sha512")]
    Unsupported(String),
}

/// Bytes that did not match the digest or size they were fetched or stored as.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// The content hashes to something else.
    #[error("content of {expected} hashes to {actual}")]
    Digest { expected: Digest, actual: Digest },
    /// The content is shorter or longer than its descriptor says.
    #[error("{digest}: expected {expected} bytes, found {actual}")]
    Size {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
}

/// The hash algorithms of the OCI image spec's registered set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    /// The name used in digest strings and under `blobs/`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A validated content digest such as `sha256:e3b0c4...`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    /// The sha256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        Digest {
            algorithm: Algorithm::Sha256,
            hex: hex::encode(Sha256::digest(bytes)),
        }
    }

    /// The digest of `bytes` under the same algorithm as `self`.
    pub fn recompute(&self, bytes: &[u8]) -> Digest {
        let mut hasher = Hasher::new(self.algorithm);
        hasher.update(bytes);
        hasher.finish()
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The encoded part: lower-case hex, safe to use as a file name.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// A short form for messages: `sha256:1f2e3d4c5b6a`.
    pub fn short(&self) -> String {
        format!("{}:{}", self.algorithm.as_str(), &self.hex[..12])
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed = || DigestError::Malformed(s.to_string());
        let (alg, encoded) = s.split_once(':').ok_or_else(malformed)?;
        // OCI image-spec "Digests": algorithm components are [a-z0-9]+ joined
        // by [+._-]; anything else is not a digest at all.
        let alg_ok = !alg.is_empty()
            && alg
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b));
        if !alg_ok {
            return Err(malformed());
        }
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => return Err(DigestError::Unsupported(s.to_string())),
        };
        let hex_ok = encoded.len() == algorithm.hex_len()
            && encoded
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex_ok {
            return Err(malformed());
        }
        Ok(Digest {
            algorithm,
            hex: encoded.to_string(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An incremental hash of one of the supported algorithms.
#[derive(Clone)]
pub enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
    /// SHA-256 hashed side by side with other downloads (see [`lanes`]).
    Lanes(LaneHash),
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
            Hasher::Lanes(h) => h.update(bytes::Bytes::copy_from_slice(bytes)),
        }
    }

    /// As [`Hasher::update`], without a copy where the bytes are queued.
    pub fn update_bytes(&mut self, bytes: &bytes::Bytes) {
        match self {
            Hasher::Lanes(h) => h.update(bytes.clone()),
            other => other.update(bytes),
        }
    }

    pub fn finish(self) -> Digest {
        match self {
            Hasher::Sha256(h) => Digest {
                algorithm: Algorithm::Sha256,
                hex: hex::encode(h.finalize()),
            },
            Hasher::Sha512(h) => Digest {
                algorithm: Algorithm::Sha512,
                hex: hex::encode(h.finalize()),
            },
            Hasher::Lanes(h) => Digest {
                algorithm: Algorithm::Sha256,
                hex: hex::encode(h.finalize()),
            },
        }
    }
}

/// Checks a stream of bytes against the digest and size it claims to have.
///
/// Feed every byte through [`Verifier::update`], then call
/// [`Verifier::finish`]; nothing may be renamed into a bundle or reported as
/// pushed before `finish` returned `Ok`.
#[derive(Clone)]
pub struct Verifier {
    expected: Digest,
    expected_size: Option<u64>,
    /// None: the size only, see [`Verifier::size_only`].
    hasher: Option<Hasher>,
    seen: u64,
}

impl Verifier {
    pub fn new(expected: &Digest, expected_size: Option<u64>) -> Verifier {
        Verifier {
            expected: expected.clone(),
            expected_size,
            hasher: Some(Hasher::new(expected.algorithm)),
            seen: 0,
        }
    }

    /// As [`Verifier::new`], for bytes that arrive as chunks alongside other
    /// streams (concurrent downloads): a sha256 is hashed in lanes, side by
    /// side with theirs; feed it with [`Verifier::update_bytes`].
    pub fn in_lanes(expected: &Digest, expected_size: Option<u64>) -> Verifier {
        let hasher = match expected.algorithm {
            Algorithm::Sha256 => Hasher::Lanes(LaneHash::new()),
            other => Hasher::new(other),
        };
        Verifier {
            hasher: Some(hasher),
            ..Verifier::new(expected, expected_size)
        }
    }

    /// Checks the size only. For bytes whose digest another verifier
    /// checks later, before anything names them (an archive checks a blob
    /// while it hashes the part around it).
    pub fn size_only(expected: &Digest, size: u64) -> Verifier {
        Verifier {
            expected: expected.clone(),
            expected_size: Some(size),
            hasher: None,
            seen: 0,
        }
    }

    /// Counts `n` more bytes, failing once more arrived than expected.
    fn count(&mut self, n: usize) -> Result<(), VerifyError> {
        self.seen += n as u64;
        if let Some(size) = self.expected_size
            && self.seen > size
        {
            return Err(self.size_error());
        }
        Ok(())
    }

    /// Hashes `bytes`, failing early once more bytes arrived than expected.
    pub fn update(&mut self, bytes: &[u8]) -> Result<(), VerifyError> {
        self.count(bytes.len())?;
        if let Some(h) = &mut self.hasher {
            h.update(bytes);
        }
        Ok(())
    }

    /// As [`Verifier::update`], without a copy for a verifier [`in_lanes`].
    ///
    /// [`in_lanes`]: Verifier::in_lanes
    pub fn update_bytes(&mut self, bytes: &bytes::Bytes) -> Result<(), VerifyError> {
        self.count(bytes.len())?;
        if let Some(h) = &mut self.hasher {
            h.update_bytes(bytes);
        }
        Ok(())
    }

    /// As [`Verifier::update`], and feeds the same bytes to `along` (an
    /// archive part's hash) in the same pass where it can.
    pub fn update_along(&mut self, along: &mut Sha256, bytes: &[u8]) -> Result<(), VerifyError> {
        self.count(bytes.len())?;
        match &mut self.hasher {
            Some(Hasher::Sha256(h)) => Sha256::update_both(h, along, bytes),
            Some(h @ (Hasher::Sha512(_) | Hasher::Lanes(_))) => {
                h.update(bytes);
                along.update(bytes);
            }
            None => along.update(bytes),
        }
        Ok(())
    }

    /// How many bytes have been fed so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    pub fn expected(&self) -> &Digest {
        &self.expected
    }

    pub fn expected_size(&self) -> Option<u64> {
        self.expected_size
    }

    /// Compares size and digest of everything fed.
    pub fn finish(self) -> Result<u64, VerifyError> {
        if let Some(size) = self.expected_size
            && self.seen != size
        {
            return Err(self.size_error());
        }
        let Some(hasher) = self.hasher else {
            return Ok(self.seen);
        };
        let actual = hasher.finish();
        if actual != self.expected {
            return Err(VerifyError::Digest {
                expected: self.expected,
                actual,
            });
        }
        Ok(self.seen)
    }

    fn size_error(&self) -> VerifyError {
        VerifyError::Size {
            digest: self.expected.clone(),
            expected: self.expected_size.unwrap_or(0),
            actual: self.seen,
        }
    }
}

/// Verifies a complete in-memory body (manifests, small configs).
pub fn verify_bytes(
    expected: &Digest,
    expected_size: Option<u64>,
    bytes: &[u8],
) -> Result<(), VerifyError> {
    let mut v = Verifier::new(expected, expected_size);
    v.update(bytes)?;
    v.finish().map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_prints_sha256() {
        let d: Digest = EMPTY.parse().unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(d, Digest::sha256_of(b""));
    }

    #[test]
    fn rejects_digest_with_path_separator() {
        for bad in [
            "sha256:../../x",
            "sha256:/etc/passwd",
            "../sha256:00",
            "sha256:",
        ] {
            assert!(
                matches!(bad.parse::<Digest>(), Err(DigestError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn rejects_upper_case_and_wrong_length() {
        let upper = EMPTY.to_uppercase().replacen("SHA256", "sha256", 1);
        assert!(upper.parse::<Digest>().is_err());
        assert!(EMPTY[..EMPTY.len() - 1].parse::<Digest>().is_err());
        assert!(format!("{EMPTY}0").parse::<Digest>().is_err());
    }

    #[test]
    fn names_unsupported_algorithm() {
        let err = "md5:d41d8cd98f00b204e9800998ecf8427e".parse::<Digest>();
        assert!(matches!(err, Err(DigestError::Unsupported(_))));
    }

    #[test]
    fn verifier_reports_size_before_digest() {
        let d = Digest::sha256_of(b"hello");
        assert!(verify_bytes(&d, Some(5), b"hello").is_ok());
        assert!(matches!(
            verify_bytes(&d, Some(5), b"hello!"),
            Err(VerifyError::Size {
                expected: 5,
                actual: 6,
                ..
            })
        ));
        assert!(matches!(
            verify_bytes(&d, Some(5), b"hellO"),
            Err(VerifyError::Digest { .. })
        ));
        assert!(matches!(
            verify_bytes(&d, None, b"hell"),
            Err(VerifyError::Digest { .. })
        ));
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parsing_never_panics_and_valid_digests_are_path_safe(s in ".{0,140}") {
            if let Ok(d) = s.parse::<Digest>() {
                prop_assert!(d.hex().bytes().all(|b| b.is_ascii_hexdigit()));
                prop_assert_eq!(d.to_string(), s);
            }
        }

        #[test]
        fn any_sha256_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let d = Digest::sha256_of(&bytes);
            prop_assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        }
    }
}
