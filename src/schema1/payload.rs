//! The digest of a schema1 manifest, signed or not.
//!
//! A signed (`prettyjws`) manifest is digested without its signatures, as
//! libtrust defines the payload: distribution stores only that payload and
//! signs it afresh on every GET, so the body changes between fetches while
//! the digest does not. The invariant: the digest returned here is the
//! `Docker-Content-Digest` a registry reports for the same manifest.

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use super::Schema1Error;
use super::gojson::{self, Kind, Node};
use super::gotype;
use super::parse::{member, parse_json};
use crate::digest::Digest;

/// libtrust's base64url: padding optional, stray bits ignored (Go's
/// non-strict decoding), spaces and newlines removed beforehand.
const JOSE_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

fn jose_decode(s: &str) -> Result<Vec<u8>, String> {
    let s: String = s.chars().filter(|c| *c != '\n' && *c != ' ').collect();
    JOSE_BASE64
        .decode(s)
        .map_err(|e| format!("bad base64url: {e}"))
}

/// The digest a registry gives a schema1 manifest.
///
/// A signed manifest (`prettyjws`) is digested without its signatures: each
/// signature's protected header says how many bytes of the body to keep
/// (`formatLength`) and what to append (`formatTail`), which is how
/// distribution stores it and re-signs it on every GET. An unsigned one is
/// digested as it is.
pub fn payload_digest(body: &[u8]) -> Result<Digest, Schema1Error> {
    Ok(Digest::sha256_of(&payload(body)?))
}

/// The bytes a schema1 manifest's digest is computed over: the body
/// without its signatures (see [`payload_digest`]), or the whole body when
/// it is unsigned.
pub fn payload(body: &[u8]) -> Result<Vec<u8>, Schema1Error> {
    let node = parse_json(body)?;
    let signatures = match member(&node, "signatures") {
        None => return Ok(body.to_vec()),
        // containers/image treats a null list as no list.
        Some(sigs) if sigs.is_null() => return Ok(body.to_vec()),
        Some(sigs) => sigs,
    };
    let Kind::Array(signatures) = &signatures.kind else {
        return Err(Schema1Error::Json("signatures is not an array".to_string()));
    };
    if signatures.is_empty() {
        // libtrust would digest an empty payload here; nothing sensible
        // can be verified against that.
        return Err(Schema1Error::NoSignatures);
    }

    let mut payload: Option<(usize, Vec<u8>)> = None;
    for (index, sig) in signatures.iter().enumerate() {
        let bad = |reason: String| Schema1Error::BadHeader { index, reason };
        let protected = match &sig.kind {
            Kind::Object(members) => members
                .iter()
                .rev()
                .find(|(k, _)| gotype::fold_eq("protected", k))
                .map(|(_, v)| v),
            _ => return Err(bad("the signature is not an object".to_string())),
        };
        let protected = match protected.map(|p| &p.kind) {
            Some(Kind::Str(s)) => s.as_str(),
            None | Some(Kind::Null) => "",
            Some(_) => return Err(bad("protected is not a string".to_string())),
        };
        let header = jose_decode(protected).map_err(bad)?;
        let header = std::str::from_utf8(&header).map_err(|e| bad(e.to_string()))?;
        let header = gojson::parse(header).map_err(bad)?;
        if !matches!(header.kind, Kind::Object(_)) {
            return Err(bad("the header is not a JSON object".to_string()));
        }

        let length = match member(&header, "formatLength") {
            Some(
                n @ Node {
                    kind: Kind::Number, ..
                },
            ) => n.raw,
            _ => return Err(bad("formatLength is missing or not a number".to_string())),
        };
        let tail = match member(&header, "formatTail").map(|t| &t.kind) {
            Some(Kind::Str(t)) => jose_decode(t).map_err(bad)?,
            _ => return Err(bad("formatTail is missing or not a string".to_string())),
        };
        // libtrust reads the number as a float64 and truncates it to int.
        let out_of_range = || Schema1Error::FormatLength {
            index,
            length: length.to_string(),
            size: body.len(),
        };
        let value: f64 = length.parse().map_err(|_| out_of_range())?;
        if !(0.0..=body.len() as f64).contains(&value) {
            return Err(out_of_range());
        }
        let length = value as usize;

        match &payload {
            None => payload = Some((length, tail)),
            Some(first) if *first == (length, tail) => {}
            Some(_) => return Err(Schema1Error::DisagreeingSignatures { index }),
        }
    }

    let (length, tail) = payload.expect("at least one signature was read");
    let mut bytes = body[..length].to_vec();
    bytes.extend_from_slice(&tail);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET1: &[u8] = include_bytes!("../../tests/data/schema1/registry-get1.json");
    const GET2: &[u8] = include_bytes!("../../tests/data/schema1/registry-get2.json");
    const REGISTRY_DIGEST: &str = include_str!("../../tests/data/schema1/registry.digest");
    const UNSIGNED: &[u8] = include_bytes!("../../tests/data/schema1/edge.json");

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A signed body the way libtrust lays it out: the payload without its
    /// closing tail, then the signatures.
    fn signed(payload: &str, tail: &str, protected: &[String]) -> Vec<u8> {
        let cut = &payload[..payload.len() - tail.len()];
        let sigs: Vec<String> = protected
            .iter()
            .map(|p| format!(r#"{{"header":{{"alg":"ES256"}},"signature":"x","protected":"{p}"}}"#))
            .collect();
        format!("{cut},\n   \"signatures\": [{}]\n}}", sigs.join(",")).into_bytes()
    }

    fn header(length: usize, tail: &str) -> String {
        b64(format!(
            r#"{{"formatLength":{length},"formatTail":"{}","time":"2020-01-01T00:00:00Z"}}"#,
            b64(tail.as_bytes())
        )
        .as_bytes())
    }

    const PRETTY: &str = "{\n   \"schemaVersion\": 1,\n   \"name\": \"a/b\"\n}";

    #[test]
    fn matches_the_registry_digest_across_re_signed_gets() {
        assert_ne!(GET1, GET2, "distribution signs every GET afresh");
        let expected: Digest = REGISTRY_DIGEST.trim().parse().unwrap();
        assert_eq!(payload_digest(GET1).unwrap(), expected);
        assert_eq!(payload_digest(GET2).unwrap(), expected);
        assert_ne!(Digest::sha256_of(GET1), expected);
    }

    #[test]
    fn digests_unsigned_manifest_as_is() {
        assert_eq!(
            payload_digest(UNSIGNED).unwrap(),
            Digest::sha256_of(UNSIGNED)
        );
        let null = br#"{"schemaVersion":1,"signatures":null}"#;
        assert_eq!(payload_digest(null).unwrap(), Digest::sha256_of(null));
    }

    #[test]
    fn strips_signatures_of_pretty_printed_manifest() {
        let len = PRETTY.len() - 2;
        let body = signed(PRETTY, "\n}", &[header(len, "\n}")]);
        assert_eq!(
            payload_digest(&body).unwrap(),
            Digest::sha256_of(PRETTY.as_bytes())
        );
    }

    #[test]
    fn tolerates_padding_and_line_breaks_in_base64url() {
        let len = PRETTY.len() - 2;
        let raw = format!(r#"{{"formatLength":{len},"formatTail":"Cn0="}}"#);
        let mut padded = base64::engine::general_purpose::URL_SAFE.encode(raw.as_bytes());
        padded.insert_str(8, "\\n ");
        let body = signed(PRETTY, "\n}", &[padded]);
        assert_eq!(
            payload_digest(&body).unwrap(),
            Digest::sha256_of(PRETTY.as_bytes())
        );
    }

    #[test]
    fn accepts_agreeing_signatures_and_rejects_disagreeing_ones() {
        let len = PRETTY.len() - 2;
        let two = signed(PRETTY, "\n}", &[header(len, "\n}"), header(len, "\n}")]);
        assert_eq!(
            payload_digest(&two).unwrap(),
            Digest::sha256_of(PRETTY.as_bytes())
        );

        let other_tail = signed(PRETTY, "\n}", &[header(len, "\n}"), header(len, "}")]);
        assert!(matches!(
            payload_digest(&other_tail),
            Err(Schema1Error::DisagreeingSignatures { index: 1 })
        ));
        let other_length = signed(PRETTY, "\n}", &[header(len, "\n}"), header(len - 1, "\n}")]);
        let err = payload_digest(&other_length).unwrap_err();
        assert_eq!(
            err.to_string(),
            "schema1 signature 1 signs a different payload than signature 0"
        );
    }

    #[test]
    fn rejects_format_length_outside_the_body() {
        for length in ["100000", "-1", "1e300"] {
            let raw = format!(r#"{{"formatLength":{length},"formatTail":"fQ"}}"#);
            let body = signed(PRETTY, "\n}", &[b64(raw.as_bytes())]);
            let err = payload_digest(&body).unwrap_err();
            assert!(
                matches!(err, Schema1Error::FormatLength { index: 0, .. }),
                "{length}: {err}"
            );
            assert!(err.to_string().contains(length), "{err}");
        }
    }

    #[test]
    fn rejects_bad_protected_headers() {
        let cases = [
            "!!!not base64!!!".to_string(),
            b64(b"not json"),
            b64(br#"{"formatTail":"fQ"}"#),
            b64(br#"{"formatLength":"12","formatTail":"fQ"}"#),
            b64(br#"{"formatLength":12}"#),
            b64(br#"{"formatLength":12,"formatTail":"%%"}"#),
            b64(b"[]"),
        ];
        for protected in cases {
            let body = signed(PRETTY, "\n}", std::slice::from_ref(&protected));
            let err = payload_digest(&body).unwrap_err();
            assert!(
                matches!(err, Schema1Error::BadHeader { index: 0, .. }),
                "{protected}: {err}"
            );
        }
    }

    #[test]
    fn rejects_empty_or_malformed_signature_lists() {
        assert!(matches!(
            payload_digest(br#"{"schemaVersion":1,"signatures":[]}"#),
            Err(Schema1Error::NoSignatures)
        ));
        assert!(matches!(
            payload_digest(br#"{"schemaVersion":1,"signatures":{}}"#),
            Err(Schema1Error::Json(_))
        ));
        assert!(matches!(
            payload_digest(br#"{"schemaVersion":1,"signatures":[1]}"#),
            Err(Schema1Error::BadHeader { index: 0, .. })
        ));
        assert!(matches!(
            payload_digest(b"{\"schemaVersion\":1"),
            Err(Schema1Error::Json(_))
        ));
    }
}
