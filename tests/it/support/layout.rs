//! Independent checks of an OCI image layout directory, such as one written
//! by `airlock export` or by `skopeo copy ... oci:DIR:TAG`.
//!
//! `oci-image-tool validate --type image DIR` alone is too weak for our
//! images: the packaged version skips nested indexes with a warning (so a
//! multi-arch layout passes without its manifests ever being read) and
//! rejects zstd layers outright. [`check_oci_layout`] walks the whole graph
//! itself and hands each document to oci-image-tool for schema validation.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::images::{
    DOCKER_CONFIG, DOCKER_LIST, DOCKER_MANIFEST, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST,
};
use super::tools::{run, sha256_file};

/// What a layout holds, as found by [`check_oci_layout`].
#[derive(Debug, Clone, Default)]
pub struct LayoutReport {
    /// `org.opencontainers.image.ref.name` → digest, from `index.json`.
    pub refs: BTreeMap<String, String>,
    /// Every digest reachable from `index.json` → (media type, size).
    pub reachable: BTreeMap<String, (String, u64)>,
    /// Every file in `blobs/sha256/` as `sha256:<hex>` → size.
    pub blobs: BTreeMap<String, u64>,
}

impl LayoutReport {
    /// Blobs present on disk but not reachable from `index.json`.
    pub fn unreferenced(&self) -> Vec<String> {
        self.blobs
            .keys()
            .filter(|d| !self.reachable.contains_key(*d))
            .cloned()
            .collect()
    }

    /// Sum of the sizes of all blob files.
    pub fn total_blob_bytes(&self) -> u64 {
        self.blobs.values().sum()
    }
}

/// Checks every blob under `layout/blobs/sha256/` hashes to its file name
/// and returns `sha256:<hex>` → size for all of them.
pub fn oci_layout_blobs(layout: impl AsRef<Path>) -> BTreeMap<String, u64> {
    let dir = layout.as_ref().join("blobs").join("sha256");
    let mut blobs = BTreeMap::new();
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let entry = entry.expect("blob dir entry");
        let name = entry.file_name().to_string_lossy().to_string();
        let actual = sha256_file(entry.path());
        assert_eq!(actual, name, "blob {name} does not match its name");
        let size = entry.metadata().expect("blob metadata").len();
        blobs.insert(format!("sha256:{name}"), size);
    }
    blobs
}

/// Fully checks an OCI layout and panics with a precise message on the
/// first problem:
///
/// - `oci-layout` declares version 1.0.0 and `index.json` is an index;
/// - every blob file's SHA-256 matches its name;
/// - every descriptor reachable from `index.json` (through nested indexes,
///   Docker lists, manifests, configs and layers) has its blob, with the
///   declared size;
/// - every index, manifest and config passes `oci-image-tool validate`
///   for its document type (Docker media types are accepted with warnings).
///
/// Unreferenced blobs are allowed; see [`LayoutReport::unreferenced`].
pub fn check_oci_layout(layout: impl AsRef<Path>) -> LayoutReport {
    let layout = layout.as_ref();
    let marker: serde_json::Value = read_json(&layout.join("oci-layout"));
    assert_eq!(
        marker["imageLayoutVersion"],
        "1.0.0",
        "{}: bad oci-layout file",
        layout.display()
    );

    let mut report = LayoutReport {
        blobs: oci_layout_blobs(layout),
        ..Default::default()
    };
    let index_path = layout.join("index.json");
    let index: serde_json::Value = read_json(&index_path);
    assert_eq!(index["schemaVersion"], 2, "index.json: schemaVersion");

    let mut docs = Docs::default();
    docs.indexes.push(index_path);
    let mut pending: Vec<serde_json::Value> = descriptors(&index["manifests"], "index.json");
    for d in &pending {
        if let Some(name) = d["annotations"]["org.opencontainers.image.ref.name"].as_str() {
            let digest = d["digest"].as_str().unwrap_or_default().to_string();
            let previous = report.refs.insert(name.to_string(), digest);
            assert!(previous.is_none(), "index.json: ref {name} listed twice");
        }
    }

    while let Some(desc) = pending.pop() {
        let (digest, media_type, size) = parse_descriptor(&desc);
        let on_disk = report.blobs.get(&digest).copied();
        assert_eq!(
            on_disk,
            Some(size),
            "{digest} ({media_type}): blob missing or size differs from descriptor"
        );
        if report
            .reachable
            .insert(digest.clone(), (media_type.clone(), size))
            .is_some()
        {
            continue;
        }
        let path = blob_path(layout, &digest);
        match media_type.as_str() {
            OCI_INDEX | DOCKER_LIST => {
                let doc: serde_json::Value = read_json(&path);
                check_media_type(&doc, &media_type, &digest);
                pending.extend(descriptors(&doc["manifests"], &digest));
                docs.indexes.push(path);
            }
            OCI_MANIFEST | DOCKER_MANIFEST => {
                let doc: serde_json::Value = read_json(&path);
                check_media_type(&doc, &media_type, &digest);
                pending.push(doc["config"].clone());
                pending.extend(descriptors(&doc["layers"], &digest));
                docs.manifests.push(path);
            }
            OCI_CONFIG | DOCKER_CONFIG => docs.configs.push(path),
            _ => {}
        }
    }
    docs.validate();
    report
}

#[derive(Default)]
struct Docs {
    indexes: Vec<PathBuf>,
    manifests: Vec<PathBuf>,
    configs: Vec<PathBuf>,
}

impl Docs {
    /// One oci-image-tool run per document type keeps process count low.
    fn validate(&self) {
        for (kind, paths) in [
            ("imageIndex", &self.indexes),
            ("manifest", &self.manifests),
            ("config", &self.configs),
        ] {
            if paths.is_empty() {
                continue;
            }
            let out = run(Command::new("oci-image-tool")
                .args(["validate", "--type", kind])
                .args(paths));
            let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
            assert!(
                text.contains("validation succeeded"),
                "oci-image-tool --type {kind} did not report success:\n{text}"
            );
        }
    }
}

fn read_json(path: &Path) -> serde_json::Value {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: bad JSON: {e}", path.display()))
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let hex = digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("unsupported digest algorithm in {digest}"));
    layout.join("blobs").join("sha256").join(hex)
}

fn descriptors(list: &serde_json::Value, owner: &str) -> Vec<serde_json::Value> {
    list.as_array()
        .unwrap_or_else(|| panic!("{owner}: descriptor list missing"))
        .clone()
}

fn parse_descriptor(desc: &serde_json::Value) -> (String, String, u64) {
    let field = |name: &str| {
        desc[name]
            .as_str()
            .unwrap_or_else(|| panic!("descriptor without {name}: {desc}"))
            .to_string()
    };
    let size = desc["size"]
        .as_u64()
        .unwrap_or_else(|| panic!("descriptor without size: {desc}"));
    (field("digest"), field("mediaType"), size)
}

/// A document's own `mediaType`, when present, must agree with the
/// descriptor that points at it; otherwise clients disagree on what it is.
fn check_media_type(doc: &serde_json::Value, expected: &str, digest: &str) {
    if let Some(own) = doc["mediaType"].as_str() {
        assert_eq!(
            own, expected,
            "{digest}: mediaType differs from its descriptor"
        );
    }
}
