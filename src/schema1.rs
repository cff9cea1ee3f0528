//! Docker image manifest v2 schema 1: its digest, its validation, and its
//! conversion to an OCI or Docker v2s2 image.
//!
//! Schema1 has no config blob: each history entry carries a v1 image JSON
//! (`v1Compatibility`) and the top one stands for the image config. airlock
//! converts the way skopeo (containers/image) does, so that an image moved
//! by either tool gets the same config digest. The invariant: a [`Schema1`]
//! has already passed skopeo's checks (ids are 64 hex, each parent is the
//! id below, the base has none) with consecutive repeated ids dropped, so
//! the conversion functions only fail on caller errors (a wrong number of
//! diff IDs) or on a top entry skopeo could not convert either.
//!
//! Where skopeo's Go code decides the bytes, `gojson` and `gotype`
//! reproduce `encoding/json`; `parse` holds the checks, `config` the
//! conversion proper and `payload` the digest of signed manifests.

mod config;
mod gojson;
mod gotype;
mod parse;
mod payload;

pub use parse::parse;
pub use payload::{payload, payload_digest};

use std::collections::BTreeMap;

use crate::diffid::Compression;
use crate::digest::{Digest, DigestError};
use crate::manifest::{DOCKER_MANIFEST, Descriptor, OCI_MANIFEST};
use gotype::Val;

/// The annotation on a converted OCI manifest naming the schema1 manifest
/// it came from.
pub const SOURCE_DIGEST_ANNOTATION: &str = "io.github.airlock.schema1.digest";

pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// A schema1 manifest that cannot be digested, validated or converted.
#[derive(Debug, thiserror::Error)]
pub enum Schema1Error {
    /// Not JSON, or a field of the wrong type (as Go's decoder sees it).
    #[error("schema1 manifest cannot be read: {0}")]
    Json(String),
    #[error("schema1 manifest has schemaVersion {0}, expected 1")]
    Version(i64),
    #[error("schema1 manifest also has a {0:?} field, so its format is ambiguous")]
    Ambiguous(&'static str),
    #[error("schema1 manifest has {fs_layers} fsLayers but {history} history entries")]
    LengthMismatch { fs_layers: usize, history: usize },
    #[error("schema1 manifest has no fsLayers")]
    NoLayers,
    #[error("schema1 fsLayers[{index}] blobSum {value:?} is not a usable digest")]
    BlobSum {
        index: usize,
        value: String,
        #[source]
        source: DigestError,
    },
    #[error("schema1 history[{index}] v1Compatibility is invalid: {reason}")]
    Compat { index: usize, reason: String },
    #[error("schema1 history[{index}] has image id {id:?}, expected 64 lower-case hex characters")]
    BadId { index: usize, id: String },
    #[error("schema1 base layer history[{index}] (id {id}) has parent {parent:?}, expected none")]
    BaseHasParent {
        index: usize,
        id: String,
        parent: String,
    },
    #[error(
        "schema1 image id {id} is at history[{first}] and again at history[{again}], not next to it"
    )]
    DuplicateId {
        id: String,
        first: usize,
        again: usize,
    },
    #[error(
        "schema1 history[{index}] (id {id}) has parent {parent:?}, but the entry below it has id {below}"
    )]
    BrokenChain {
        index: usize,
        id: String,
        parent: String,
        below: String,
    },
    #[error("schema1 manifest has an empty signatures list")]
    NoSignatures,
    #[error("schema1 signature {index} has an unusable protected header: {reason}")]
    BadHeader { index: usize, reason: String },
    #[error("schema1 signature {index} has formatLength {length}, beyond the {size}-byte manifest")]
    FormatLength {
        index: usize,
        length: String,
        size: usize,
    },
    #[error("schema1 signature {index} signs a different payload than signature 0")]
    DisagreeingSignatures { index: usize },
    #[error("schema1 image has {layers} layers but {diff_ids} diff IDs were given")]
    DiffIdCount { layers: usize, diff_ids: usize },
    #[error("schema1 history[0] cannot be converted to an image config: {0}")]
    Config(String),
}

/// The manifest format a schema1 image is converted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TargetFormat {
    Oci,
    Docker,
}

impl TargetFormat {
    pub fn manifest_media_type(self) -> &'static str {
        match self {
            TargetFormat::Oci => OCI_MANIFEST,
            TargetFormat::Docker => DOCKER_MANIFEST,
        }
    }

    pub fn config_media_type(self) -> &'static str {
        match self {
            TargetFormat::Oci => OCI_CONFIG,
            TargetFormat::Docker => DOCKER_CONFIG,
        }
    }
}

/// The media type of a layer blob with `compression` in `format`.
///
/// Docker v2s2 defines no zstd layer type; docker and containerd accept
/// the OCI one in a v2s2 manifest (BuildKit writes it there), so that is
/// what a zstd layer gets. skopeo itself refuses zstd in v2s2.
pub fn layer_media_type(format: TargetFormat, compression: Compression) -> &'static str {
    match (format, compression) {
        (TargetFormat::Oci, Compression::Gzip) => OCI_LAYER_GZIP,
        (TargetFormat::Oci, Compression::None) => OCI_LAYER,
        (_, Compression::Zstd) => OCI_LAYER_ZSTD,
        (TargetFormat::Docker, Compression::Gzip) => DOCKER_LAYER_GZIP,
        (TargetFormat::Docker, Compression::None) => DOCKER_LAYER,
    }
}

/// A validated schema1 manifest.
#[derive(Debug, Clone)]
pub struct Schema1 {
    pub name: String,
    pub tag: String,
    pub architecture: String,
    /// fsLayers and history paired, top (index 0) first, with the upper of
    /// two consecutive entries sharing an id dropped.
    pub entries: Vec<Entry>,
}

/// One fsLayers/history pair.
#[derive(Debug, Clone)]
pub struct Entry {
    pub blob_sum: Digest,
    /// The v1Compatibility string exactly as in the manifest.
    pub v1_compatibility: String,
    /// The same, parsed.
    pub value: serde_json::Value,
    pub id: String,
    /// `None` for the base.
    pub parent: Option<String>,
    /// History only: the entry's blob adds nothing to the filesystem.
    pub throwaway: bool,
    /// Where the entry was in the manifest, before duplicates were dropped.
    pub manifest_index: usize,
    /// The fields skopeo reads, decoded as Go does.
    compat: Vec<Val>,
}

/// A layer of the converted image: a non-throwaway entry's blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRef {
    pub digest: Digest,
    /// The entry's position in [`Schema1::entries`].
    pub index: usize,
}

impl Schema1 {
    /// The layers of the converted image, base first: every entry that is
    /// not throwaway. Two entries may name the same blob (a Dockerfile step
    /// that changed nothing but was not marked empty); both stay, as the
    /// image's diff IDs list each.
    pub fn layers(&self) -> Vec<LayerRef> {
        self.entries
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, e)| !e.throwaway)
            .map(|(index, e)| LayerRef {
                digest: e.blob_sum.clone(),
                index,
            })
            .collect()
    }

    /// The Docker v2s2 image config skopeo writes for this image, given the
    /// diff IDs of [`Schema1::layers`] in order.
    ///
    /// This is the config for a Docker target. For an OCI target skopeo
    /// passes it through image-spec's struct, which changes the bytes: use
    /// [`Schema1::oci_config`] (or [`Schema1::config_for`]) there.
    pub fn config(&self, diff_ids: &[Digest]) -> Result<Vec<u8>, Schema1Error> {
        let layers = self.layers().len();
        if diff_ids.len() != layers {
            return Err(Schema1Error::DiffIdCount {
                layers,
                diff_ids: diff_ids.len(),
            });
        }
        let compats: Vec<Vec<Val>> = self.entries.iter().map(|e| e.compat.clone()).collect();
        let ids: Vec<String> = diff_ids.iter().map(Digest::to_string).collect();
        config::docker_config(&self.entries[0].v1_compatibility, &compats, &ids)
            .map_err(Schema1Error::Config)
    }

    /// The OCI image config skopeo writes for this image: the Docker config
    /// with the fields image-spec does not define dropped.
    pub fn oci_config(&self, diff_ids: &[Digest]) -> Result<Vec<u8>, Schema1Error> {
        config::oci_config(&self.config(diff_ids)?).map_err(Schema1Error::Config)
    }

    /// The config for `format`: [`Schema1::oci_config`] or
    /// [`Schema1::config`].
    pub fn config_for(
        &self,
        format: TargetFormat,
        diff_ids: &[Digest],
    ) -> Result<Vec<u8>, Schema1Error> {
        match format {
            TargetFormat::Oci => self.oci_config(diff_ids),
            TargetFormat::Docker => self.config(diff_ids),
        }
    }

    /// The converted image manifest, compact JSON with fields in the order
    /// skopeo writes them.
    ///
    /// Descriptors are written as given, so their media types are the
    /// caller's choice (see [`layer_media_type`]). An OCI manifest records
    /// `source`, the schema1 digest, in the [`SOURCE_DIGEST_ANNOTATION`]
    /// annotation; Docker v2s2 has no annotations, and its descriptors carry
    /// only media type, size and digest, so a Docker manifest is exactly
    /// the one skopeo writes.
    pub fn manifest(
        &self,
        format: TargetFormat,
        config: &Descriptor,
        layers: &[Descriptor],
        source: &Digest,
    ) -> Vec<u8> {
        let write_desc = |out: &mut String, d: &Descriptor| match format {
            TargetFormat::Oci => write_oci_descriptor(out, d),
            TargetFormat::Docker => write_docker_descriptor(out, d),
        };
        let mut out = String::from(r#"{"schemaVersion":2,"mediaType":"#);
        gojson::write_str(&mut out, format.manifest_media_type());
        out.push_str(r#","config":"#);
        write_desc(&mut out, config);
        out.push_str(r#","layers":["#);
        for (i, layer) in layers.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_desc(&mut out, layer);
        }
        out.push(']');
        if format == TargetFormat::Oci {
            let annotations =
                BTreeMap::from([(SOURCE_DIGEST_ANNOTATION.to_string(), source.to_string())]);
            out.push_str(r#","annotations":"#);
            write_string_map(&mut out, &annotations);
        }
        out.push('}');
        out.into_bytes()
    }
}

fn write_string_map(out: &mut String, map: &BTreeMap<String, String>) {
    out.push('{');
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        gojson::write_str(out, k);
        out.push(':');
        gojson::write_str(out, v);
    }
    out.push('}');
}

/// image-spec's `Descriptor` field order.
fn write_oci_descriptor(out: &mut String, d: &Descriptor) {
    out.push_str(r#"{"mediaType":"#);
    gojson::write_str(out, &d.media_type);
    out.push_str(r#","digest":"#);
    gojson::write_str(out, &d.digest.to_string());
    out.push_str(&format!(r#","size":{}"#, d.size));
    if let Some(annotations) = d.annotations.as_ref().filter(|a| !a.is_empty()) {
        out.push_str(r#","annotations":"#);
        write_string_map(out, annotations);
    }
    if let Some(p) = &d.platform {
        out.push_str(r#","platform":{"architecture":"#);
        gojson::write_str(out, &p.architecture);
        out.push_str(r#","os":"#);
        gojson::write_str(out, &p.os);
        if let Some(v) = p.variant.as_deref().filter(|v| !v.is_empty()) {
            out.push_str(r#","variant":"#);
            gojson::write_str(out, v);
        }
        out.push('}');
    }
    if let Some(t) = d.artifact_type.as_deref().filter(|t| !t.is_empty()) {
        out.push_str(r#","artifactType":"#);
        gojson::write_str(out, t);
    }
    out.push('}');
}

/// docker distribution's `Descriptor` as v2s2 manifests carry it.
fn write_docker_descriptor(out: &mut String, d: &Descriptor) {
    out.push_str(r#"{"mediaType":"#);
    gojson::write_str(out, &d.media_type);
    out.push_str(&format!(r#","size":{},"digest":"#, d.size));
    gojson::write_str(out, &d.digest.to_string());
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffid::DiffIdHasher;

    macro_rules! fixture {
        ($name:literal) => {
            include_bytes!(concat!("../tests/data/schema1/", $name)).as_slice()
        };
    }

    /// The layer blobs the fixture manifests name, by digest.
    fn blob(digest: &Digest) -> &'static [u8] {
        match digest.hex() {
            "67ed875f07785cf4c36d4b3592450df0c46ee7669583e32768f737081521647e" => fixture!(
                "layer-67ed875f07785cf4c36d4b3592450df0c46ee7669583e32768f737081521647e.tar.gz"
            ),
            "9601123cab9be1bcd67595be2993e496662a0f56561b6787293e043c008d5ce4" => fixture!(
                "layer-9601123cab9be1bcd67595be2993e496662a0f56561b6787293e043c008d5ce4.tar.gz"
            ),
            "b634210e4625d09d4f128c24fb5925943df1ec41807d259f563b1490b2d3fb0d" => fixture!(
                "layer-b634210e4625d09d4f128c24fb5925943df1ec41807d259f563b1490b2d3fb0d.tar.gz"
            ),
            other => panic!("no fixture blob {other}"),
        }
    }

    /// Converts `body` as an airlock export would: diff IDs streamed from
    /// the blobs, then config and manifest. Returns (config, manifest).
    fn convert(body: &[u8], format: TargetFormat) -> (Vec<u8>, Vec<u8>) {
        let image = parse(body).unwrap();
        let mut diff_ids = Vec::new();
        let mut descriptors = Vec::new();
        for layer in image.layers() {
            let bytes = blob(&layer.digest);
            let mut hasher = DiffIdHasher::new();
            for chunk in bytes.chunks(7) {
                hasher.update(chunk).unwrap();
            }
            let (diff_id, compression) = hasher.finish().unwrap();
            diff_ids.push(diff_id);
            descriptors.push(descriptor(
                layer_media_type(format, compression),
                &layer.digest,
                bytes.len(),
            ));
        }
        let config = image.config_for(format, &diff_ids).unwrap();
        assert_eq!(config, image.config_for(format, &diff_ids).unwrap());
        let config_desc = descriptor(
            format.config_media_type(),
            &Digest::sha256_of(&config),
            config.len(),
        );
        let source = payload_digest(body).unwrap();
        let manifest = image.manifest(format, &config_desc, &descriptors, &source);
        (config, manifest)
    }

    fn descriptor(media_type: &str, digest: &Digest, size: usize) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest: digest.clone(),
            size: size as u64,
            platform: None,
            artifact_type: None,
            annotations: None,
        }
    }

    fn text(bytes: &[u8]) -> &str {
        std::str::from_utf8(bytes).unwrap()
    }

    /// skopeo's OCI manifest with airlock's source annotation added.
    fn with_source(skopeo: &[u8], source: &[u8]) -> String {
        let skopeo = text(skopeo);
        let digest = payload_digest(source).unwrap();
        format!(
            r#"{},"annotations":{{"{SOURCE_DIGEST_ANNOTATION}":"{digest}"}}}}"#,
            &skopeo[..skopeo.len() - 1]
        )
    }

    #[test]
    fn converts_registry_manifest_to_skopeos_docker_bytes() {
        let (config, manifest) = convert(fixture!("registry-get1.json"), TargetFormat::Docker);
        assert_eq!(
            text(&config),
            text(fixture!("registry.skopeo-docker-config.json"))
        );
        assert_eq!(
            text(&manifest),
            text(fixture!("registry.skopeo-docker-manifest.json"))
        );
    }

    #[test]
    fn converts_registry_manifest_to_skopeos_oci_bytes() {
        let body = fixture!("registry-get2.json");
        let (config, manifest) = convert(body, TargetFormat::Oci);
        assert_eq!(
            text(&config),
            text(fixture!("registry.skopeo-oci-config.json"))
        );
        assert_eq!(
            text(&manifest),
            with_source(fixture!("registry.skopeo-oci-manifest.json"), body)
        );
    }

    #[test]
    fn converts_crafted_edge_cases_as_skopeo_does() {
        let body = fixture!("edge.json");
        let (config, manifest) = convert(body, TargetFormat::Docker);
        assert_eq!(
            text(&config),
            text(fixture!("edge.skopeo-docker-config.json"))
        );
        assert_eq!(
            text(&manifest),
            text(fixture!("edge.skopeo-docker-manifest.json"))
        );
        let (config, manifest) = convert(body, TargetFormat::Oci);
        assert_eq!(text(&config), text(fixture!("edge.skopeo-oci-config.json")));
        assert_eq!(
            text(&manifest),
            with_source(fixture!("edge.skopeo-oci-manifest.json"), body)
        );
    }

    #[test]
    fn converts_docker_before_1_8_3_through_the_v1_struct() {
        let body = fixture!("old-docker.json");
        let (config, _) = convert(body, TargetFormat::Docker);
        assert_eq!(
            text(&config),
            text(fixture!("old-docker.skopeo-docker-config.json"))
        );
        let (config, manifest) = convert(body, TargetFormat::Oci);
        assert_eq!(
            text(&config),
            text(fixture!("old-docker.skopeo-oci-config.json"))
        );
        assert_eq!(
            text(&manifest),
            with_source(fixture!("old-docker.skopeo-oci-manifest.json"), body)
        );
    }

    #[test]
    fn config_needs_one_diff_id_per_layer() {
        let image = parse(fixture!("registry-get1.json")).unwrap();
        let err = image.config(&[Digest::sha256_of(b"")]).unwrap_err();
        assert!(matches!(
            err,
            Schema1Error::DiffIdCount {
                layers: 3,
                diff_ids: 1
            }
        ));
    }

    #[test]
    fn config_of_a_throwaway_only_image_has_no_diff_ids() {
        let v1 = format!(r#"{{"id":"{}","throwaway":true}}"#, "a".repeat(64));
        let body = serde_json::json!({
            "schemaVersion": 1,
            "fsLayers": [{"blobSum": Digest::sha256_of(b"").to_string()}],
            "history": [{"v1Compatibility": v1}],
        })
        .to_string();
        let image = parse(body.as_bytes()).unwrap();
        assert!(image.layers().is_empty());
        let docker = String::from_utf8(image.config(&[]).unwrap()).unwrap();
        assert!(docker.contains(r#""rootfs":{"type":"layers"}"#), "{docker}");
        let oci = String::from_utf8(image.oci_config(&[]).unwrap()).unwrap();
        assert!(
            oci.contains(r#""rootfs":{"type":"layers","diff_ids":null}"#),
            "{oci}"
        );
    }

    #[test]
    fn picks_layer_media_types_per_format() {
        use Compression::*;
        assert_eq!(layer_media_type(TargetFormat::Oci, Gzip), OCI_LAYER_GZIP);
        assert_eq!(layer_media_type(TargetFormat::Oci, Zstd), OCI_LAYER_ZSTD);
        assert_eq!(layer_media_type(TargetFormat::Oci, None), OCI_LAYER);
        assert_eq!(
            layer_media_type(TargetFormat::Docker, Gzip),
            DOCKER_LAYER_GZIP
        );
        assert_eq!(layer_media_type(TargetFormat::Docker, None), DOCKER_LAYER);
        assert_eq!(layer_media_type(TargetFormat::Docker, Zstd), OCI_LAYER_ZSTD);
    }

    #[test]
    fn writes_descriptor_extras_only_in_oci_manifests() {
        let image = parse(fixture!("old-docker.json")).unwrap();
        let digest = Digest::sha256_of(b"x");
        let mut layer = descriptor(OCI_LAYER_ZSTD, &digest, 1);
        layer.annotations = Some(BTreeMap::from([("a".to_string(), "<b>".to_string())]));
        let config = descriptor(OCI_CONFIG, &digest, 1);
        let oci = image.manifest(TargetFormat::Oci, &config, &[layer.clone()], &digest);
        assert!(
            text(&oci).contains(r#","size":1,"annotations":{"a":"\u003cb\u003e"}}]"#),
            "{}",
            text(&oci)
        );
        let docker = image.manifest(TargetFormat::Docker, &config, &[layer], &digest);
        assert!(!text(&docker).contains("annotations"), "{}", text(&docker));
    }

    #[test]
    fn error_messages_are_lowercase_without_trailing_period() {
        let errors = [
            parse(b"[]").unwrap_err(),
            parse(br#"{"schemaVersion":2}"#).unwrap_err(),
            payload_digest(br#"{"signatures":[]}"#).unwrap_err(),
            Schema1Error::DiffIdCount {
                layers: 1,
                diff_ids: 0,
            },
        ];
        for err in errors {
            let msg = err.to_string();
            assert!(msg.starts_with("schema1 "), "{msg}");
            assert!(!msg.ends_with('.'), "{msg}");
        }
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    const SIGNED: &[u8] = include_bytes!("../tests/data/schema1/registry-get1.json");

    proptest! {
        #[test]
        fn never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = payload_digest(&bytes);
            let _ = parse(&bytes);
        }

        #[test]
        fn never_panics_on_a_damaged_real_manifest(at in 0usize..SIGNED.len(), byte in any::<u8>()) {
            let mut body = SIGNED.to_vec();
            body[at] = byte;
            let _ = payload_digest(&body);
            if let Ok(s) = parse(&body) {
                let ids = vec![Digest::sha256_of(b""); s.layers().len()];
                let _ = s.config_for(TargetFormat::Oci, &ids);
            }
        }
    }
}
