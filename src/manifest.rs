//! Manifests and indexes: media types, classification, and the descriptors
//! they name.
//!
//! A [`Manifest`] always holds the exact bytes it was read as, and its digest
//! is the digest of those bytes; parsing never re-serialises. Classification
//! reads the body (`mediaType`, then the shape), because registries and
//! oci-client do not reliably report the Content-Type.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::platform::Platform;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";

/// Every manifest type airlock asks a registry for. Sending the whole list
/// matters: a registry may down-convert a v2s2 image to schema1 for a client
/// that does not accept v2s2.
pub const ACCEPT: &[&str] = &[
    OCI_INDEX,
    DOCKER_LIST,
    OCI_MANIFEST,
    DOCKER_MANIFEST,
    SCHEMA1_SIGNED,
    SCHEMA1,
];

/// The largest manifest accepted from a registry or a bundle (the limit
/// distribution and containerd apply too).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// A manifest that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest {digest} is not valid JSON: {reason}")]
    Json { digest: Digest, reason: String },
    #[error("manifest {digest} is not a usable manifest: {reason}")]
    Shape { digest: Digest, reason: String },
    #[error("manifest {digest} has unknown media type {media_type:?}")]
    UnknownType { digest: Digest, media_type: String },
    #[error("manifest {digest} is {size} bytes, over the {MAX_MANIFEST_BYTES}-byte limit")]
    TooLarge { digest: Digest, size: usize },
}

/// What kind of document a manifest is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An OCI index or a Docker manifest list: names other manifests.
    Index,
    /// An OCI image manifest or Docker v2s2 manifest: names a config and
    /// layers (or, for artifacts, blobs).
    Image,
    /// Docker image manifest v2 schema 1 (legacy).
    Schema1,
}

/// An OCI content descriptor, as it appears in manifests and `index.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// The parts of a manifest airlock reads; everything else stays in `body`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Shape {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    blobs: Option<Vec<Descriptor>>,
    #[serde(default)]
    fs_layers: Option<serde_json::Value>,
    #[serde(default)]
    subject: Option<Descriptor>,
}

/// A parsed manifest with its exact bytes.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub kind: Kind,
    /// The media type the manifest is pushed and stored as.
    pub media_type: String,
    pub digest: Digest,
    pub body: Bytes,
    /// Index entries (empty unless `kind` is `Index`).
    pub manifests: Vec<Descriptor>,
    /// Config then layers (empty unless `kind` is `Image`).
    pub blobs: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
}

impl Manifest {
    /// Parses `body`, whose digest the caller has already verified.
    ///
    /// `hint` is the media type from a descriptor or a Content-Type header,
    /// used only when the body does not say.
    pub fn parse(
        digest: Digest,
        body: Bytes,
        hint: Option<&str>,
    ) -> Result<Manifest, ManifestError> {
        if body.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge {
                digest,
                size: body.len(),
            });
        }
        let shape: Shape = serde_json::from_slice(&body).map_err(|e| {
            let reason = e.to_string();
            let digest = digest.clone();
            // Well-formed JSON with a wrong field (a bad digest, a size
            // that is not a number) is not a syntax error.
            match e.classify() {
                serde_json::error::Category::Data => ManifestError::Shape { digest, reason },
                _ => ManifestError::Json { digest, reason },
            }
        })?;
        let hint = hint.filter(|h| ACCEPT.contains(h));
        let media_type = match (&shape.media_type, hint) {
            (Some(m), _) => m.clone(),
            (None, Some(h)) => h.to_string(),
            (None, None) if shape.manifests.is_some() => OCI_INDEX.to_string(),
            (None, None) if shape.config.is_some() => OCI_MANIFEST.to_string(),
            (None, None) if shape.fs_layers.is_some() => SCHEMA1_SIGNED.to_string(),
            (None, None) => String::new(),
        };
        let kind = match media_type.as_str() {
            OCI_INDEX | DOCKER_LIST => Kind::Index,
            OCI_MANIFEST | DOCKER_MANIFEST => Kind::Image,
            SCHEMA1 | SCHEMA1_SIGNED => Kind::Schema1,
            _ => return Err(ManifestError::UnknownType { digest, media_type }),
        };

        let mut manifest = Manifest {
            kind,
            media_type,
            digest,
            body,
            manifests: Vec::new(),
            blobs: Vec::new(),
            subject: shape.subject,
        };
        match kind {
            Kind::Index => manifest.manifests = shape.manifests.unwrap_or_default(),
            Kind::Image => {
                let config = shape.config.ok_or_else(|| ManifestError::Json {
                    digest: manifest.digest.clone(),
                    reason: "image manifest has no config".to_string(),
                })?;
                manifest.blobs.push(config);
                manifest.blobs.extend(shape.layers.unwrap_or_default());
                manifest.blobs.extend(shape.blobs.unwrap_or_default());
            }
            Kind::Schema1 => {}
        }
        Ok(manifest)
    }

    /// Whether `media_type` is a manifest or index type (as opposed to a blob).
    pub fn is_manifest_type(media_type: &str) -> bool {
        ACCEPT.contains(&media_type)
    }

    /// A new index holding only the entries `keep` selects, with every other
    /// field of the original kept as it was. Entries keep their exact JSON.
    pub fn filtered_index(&self, keep: &[Digest]) -> Result<Bytes, ManifestError> {
        let mut value: serde_json::Value =
            serde_json::from_slice(&self.body).map_err(|e| ManifestError::Json {
                digest: self.digest.clone(),
                reason: e.to_string(),
            })?;
        if let Some(entries) = value.get_mut("manifests").and_then(|m| m.as_array_mut()) {
            entries.retain(|entry| {
                entry
                    .get("digest")
                    .and_then(|d| d.as_str())
                    .and_then(|d| d.parse::<Digest>().ok())
                    .is_some_and(|d| keep.contains(&d))
            });
        }
        let mut out = serde_json::to_vec_pretty(&value).expect("a JSON value always serialises");
        out.push(b'\n');
        Ok(Bytes::from(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Manifest, ManifestError> {
        let body = Bytes::from(body.to_string());
        Manifest::parse(Digest::sha256_of(&body), body, None)
    }

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn classifies_by_body_without_media_type() {
        let idx = parse(&format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#
        ))
        .unwrap();
        assert_eq!(idx.kind, Kind::Index);
        assert_eq!(
            idx.manifests[0].platform.as_ref().unwrap().architecture,
            "amd64"
        );
        let img = parse(&format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"{D}","size":0}},"layers":[]}}"#
        ))
        .unwrap();
        assert_eq!(img.kind, Kind::Image);
        assert_eq!(img.media_type, OCI_MANIFEST);
        assert_eq!(parse(r#"{"fsLayers":[]}"#).unwrap().kind, Kind::Schema1);
    }

    #[test]
    fn rejects_unknown_type_and_bad_digest() {
        assert!(matches!(
            parse(r#"{"mediaType":"text/html"}"#),
            Err(ManifestError::UnknownType { .. })
        ));
        let bad = format!(
            r#"{{"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"sha256:../../x","size":1}}]}}"#
        );
        assert!(matches!(parse(&bad), Err(ManifestError::Shape { .. })));
        assert!(matches!(
            parse("{not json"),
            Err(ManifestError::Json { .. })
        ));
    }

    #[test]
    fn rejects_oversized_manifest() {
        let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(MAX_MANIFEST_BYTES));
        assert!(matches!(parse(&big), Err(ManifestError::TooLarge { .. })));
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "(sha256:[0-9a-f]{0,64}|application/vnd[a-z.+]{0,40}|[a-zA-Z]{0,10})"
                .prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(
                    "(mediaType|manifests|config|layers|digest|size|platform|fsLayers|x)",
                    inner,
                    0..6
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn classification_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let body = Bytes::from(bytes);
            let _ = Manifest::parse(Digest::sha256_of(&body), body, None);
        }

        #[test]
        fn classification_never_panics_on_json(v in json_value(), hint in proptest::option::of("[a-z./+]{0,40}")) {
            let body = Bytes::from(serde_json::to_vec(&v).unwrap());
            if let Ok(m) = Manifest::parse(Digest::sha256_of(&body), body, hint.as_deref()) {
                // A manifest that parsed names only valid digests.
                for d in m.manifests.iter().chain(m.blobs.iter()) {
                    prop_assert!(d.digest.to_string().parse::<Digest>().is_ok());
                }
                let _ = m.filtered_index(&[]);
            }
        }
    }
}
