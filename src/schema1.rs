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
//! Where skopeo's Go code decides the bytes, [`gojson`] and [`gotype`]
//! reproduce `encoding/json`; [`config`] holds the conversion proper and
//! [`payload`] the digest of signed manifests.

mod config;
mod gojson;
mod gotype;
mod payload;

pub use payload::payload_digest;

use std::collections::{BTreeMap, HashMap};

use crate::diffid::Compression;
use crate::digest::{Digest, DigestError};
use crate::manifest::{DOCKER_MANIFEST, Descriptor, OCI_MANIFEST};
use gojson::{Kind, Node};
use gotype::{Field, Ty, Val};

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
    #[error("schema1 manifest is not valid JSON: {0}")]
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

/// The manifest's top level as Go's `json.Unmarshal` reads it into
/// containers/image's `Schema1` struct.
static MANIFEST: [Field; 6] = [
    field("name", Ty::Str),
    field("tag", Ty::Str),
    field("architecture", Ty::Str),
    field(
        "fsLayers",
        Ty::List(&Ty::Struct(&[field("blobSum", Ty::Str)])),
    ),
    field(
        "history",
        Ty::List(&Ty::Struct(&[field("v1Compatibility", Ty::Str)])),
    ),
    field("schemaVersion", Ty::Int),
];

const fn field(name: &'static str, ty: Ty) -> Field {
    Field {
        name,
        ty,
        omitempty: false,
    }
}

pub(crate) fn parse_json(body: &[u8]) -> Result<Node<'_>, Schema1Error> {
    let text = std::str::from_utf8(body).map_err(|e| Schema1Error::Json(e.to_string()))?;
    gojson::parse(text).map_err(Schema1Error::Json)
}

/// The last member named exactly `key`, as a Go map lookup finds it.
pub(crate) fn member<'n, 'a>(node: &'n Node<'a>, key: &str) -> Option<&'n Node<'a>> {
    match &node.kind {
        Kind::Object(members) => members.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
        _ => None,
    }
}

/// Parses and validates a schema1 manifest (signed or not) as skopeo does.
pub fn parse(body: &[u8]) -> Result<Schema1, Schema1Error> {
    let node = parse_json(body)?;
    let ty = Ty::Struct(&MANIFEST);
    let mut val = ty.zero();
    ty.decode(&node, &mut val).map_err(Schema1Error::Json)?;
    let Val::Struct(top) = val else {
        unreachable!("a struct type decodes into a struct value")
    };
    if let Val::Int(v) = top[5]
        && v != 1
    {
        return Err(Schema1Error::Version(v));
    }
    check_unambiguous(&node)?;

    let fs_layers = list_of_strings(&top[3]);
    let history = list_of_strings(&top[4]);
    if fs_layers.len() != history.len() {
        return Err(Schema1Error::LengthMismatch {
            fs_layers: fs_layers.len(),
            history: history.len(),
        });
    }
    if fs_layers.is_empty() {
        return Err(Schema1Error::NoLayers);
    }

    let mut entries = Vec::with_capacity(history.len());
    for (index, (blob_sum, v1)) in fs_layers.into_iter().zip(history).enumerate() {
        let invalid = |reason: String| Schema1Error::Compat { index, reason };
        let compat = config::decode_compat(&v1).map_err(invalid)?;
        let value = serde_json::from_str(&v1).map_err(|e| invalid(e.to_string()))?;
        let blob_sum = blob_sum.parse().map_err(|source| Schema1Error::BlobSum {
            index,
            value: blob_sum.clone(),
            source,
        })?;
        let id = gotype::str_at(&compat, config::COMPAT_ID).to_string();
        let parent = gotype::str_at(&compat, config::COMPAT_PARENT).to_string();
        entries.push(Entry {
            blob_sum,
            v1_compatibility: v1,
            value,
            id,
            parent: (!parent.is_empty()).then_some(parent),
            throwaway: compat[config::COMPAT_THROWAWAY] == Val::Bool(true),
            manifest_index: index,
            compat,
        });
    }

    fix_layers(&mut entries)?;
    Ok(Schema1 {
        name: gotype::str_at(&top, 0).to_string(),
        tag: gotype::str_at(&top, 1).to_string(),
        architecture: gotype::str_at(&top, 2).to_string(),
        entries,
    })
}

fn list_of_strings(val: &Val) -> Vec<String> {
    let Val::List(Some(items)) = val else {
        return Vec::new();
    };
    items
        .iter()
        .map(|item| match item {
            Val::Struct(fields) => gotype::str_at(fields, 0).to_string(),
            _ => String::new(),
        })
        .collect()
}

/// containers/image refuses a manifest that also carries another format's
/// essential fields (matched case-insensitively, ignoring nulls).
fn check_unambiguous(node: &Node<'_>) -> Result<(), Schema1Error> {
    let Kind::Object(members) = &node.kind else {
        return Ok(());
    };
    for name in ["config", "layers", "manifests"] {
        let present = members
            .iter()
            .rev()
            .find(|(k, _)| k == name || gotype::fold_eq(name, k))
            .is_some_and(|(_, v)| !v.is_null());
        if present {
            return Err(Schema1Error::Ambiguous(name));
        }
    }
    Ok(())
}

/// skopeo's `fixManifestLayers`: checks the id chain and drops the upper of
/// two consecutive entries with the same id.
fn fix_layers(entries: &mut Vec<Entry>) -> Result<(), Schema1Error> {
    for (index, e) in entries.iter().enumerate() {
        let hex = e.id.len() == 64 && e.id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !hex {
            return Err(Schema1Error::BadId {
                index,
                id: e.id.clone(),
            });
        }
    }
    let base = entries.last().expect("the caller checked for no entries");
    if let Some(parent) = &base.parent {
        return Err(Schema1Error::BaseHasParent {
            index: entries.len() - 1,
            id: base.id.clone(),
            parent: parent.clone(),
        });
    }

    // A repeat that is not adjacent would make the chain a loop.
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut last = "";
    for (index, e) in entries.iter().enumerate() {
        if let Some(&first) = seen.get(e.id.as_str())
            && e.id != last
        {
            return Err(Schema1Error::DuplicateId {
                id: e.id.clone(),
                first,
                again: index,
            });
        }
        seen.entry(&e.id).or_insert(index);
        last = &e.id;
    }

    // From the base up, as skopeo walks, so the first broken link reported
    // is the lowest one; a removal shifts only the entries above.
    for i in (0..entries.len() - 1).rev() {
        if entries[i].id == entries[i + 1].id {
            entries.remove(i);
        } else if entries[i].parent.as_deref().unwrap_or("") != entries[i + 1].id {
            return Err(Schema1Error::BrokenChain {
                index: entries[i].manifest_index,
                id: entries[i].id.clone(),
                parent: entries[i].parent.clone().unwrap_or_default(),
                below: entries[i + 1].id.clone(),
            });
        }
    }
    Ok(())
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
