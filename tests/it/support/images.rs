//! Deterministic test images, built in memory and pushed with exact bytes.
//!
//! Everything is derived from a seed, so building twice with the same seed
//! yields identical blobs and digests. Layers hold pseudo-random bytes, which
//! do not compress, so a layer's size on the wire is close to what was asked.

use std::collections::BTreeMap;
use std::io::Write;

use serde::Serialize;

use super::tools::sha256_digest;

// The push client and the ready-made images live in their own files to keep
// this one readable; tests reach them all through `images::`. Not every test
// binary module uses every name, hence the allow.
#[allow(unused_imports)]
pub use super::push::*;

#[allow(unused_imports)]
pub use super::http::{
    ACCEPT_ALL_MANIFESTS, FetchedManifest, blob_exists, catalog, delete_blob, delete_manifest,
    get_blob, get_manifest, get_manifest_accepting, list_tags, push_blob, push_manifest,
    try_get_manifest,
};

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI gzip layer media type.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd layer media type.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// OCI uncompressed layer media type.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Docker v2 schema 2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config media type.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer media type.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker schema 1 signed manifest media type.
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// A small seeded PRNG (xorshift64*). Not for anything but test data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`; every seed, including 0, gives a usable state.
    pub fn new(seed: u64) -> Rng {
        // One splitmix64 step spreads nearby seeds apart and avoids the
        // all-zero state, which xorshift can never leave.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng(if z == 0 { 1 } else { z })
    }

    /// The next 64 pseudo-random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// `len` pseudo-random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// Mixes a label into a seed, so related objects (base layer of arm64,
/// app layer of amd64, ...) get unrelated byte streams.
pub fn derive_seed(seed: u64, label: &str) -> u64 {
    // FNV-1a over the label, folded into the seed; stable across builds.
    let mut h: u64 = 0xCBF2_9CE4_8422_2325 ^ seed;
    for b in label.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// How a layer is compressed and which media type it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// `application/vnd.oci.image.layer.v1.tar+gzip`
    OciGzip,
    /// `application/vnd.oci.image.layer.v1.tar+zstd`
    OciZstd,
    /// `application/vnd.oci.image.layer.v1.tar`
    OciTar,
    /// `application/vnd.docker.image.rootfs.diff.tar.gzip`
    DockerGzip,
}

impl LayerKind {
    /// The layer descriptor's media type.
    pub fn media_type(self) -> &'static str {
        match self {
            LayerKind::OciGzip => OCI_LAYER_GZIP,
            LayerKind::OciZstd => OCI_LAYER_ZSTD,
            LayerKind::OciTar => OCI_LAYER_TAR,
            LayerKind::DockerGzip => DOCKER_LAYER_GZIP,
        }
    }

    fn compress(self, tar: &[u8]) -> Vec<u8> {
        match self {
            LayerKind::OciGzip | LayerKind::DockerGzip => {
                // Default GzBuilder writes mtime 0 and no file name, so the
                // output depends only on the input. Level 0 (stored deflate
                // blocks) is still valid gzip; on random data real levels
                // gain nothing, and zlib-rs's fast level even grows it by
                // ~5% while costing more time than the rest of the build.
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
                enc.write_all(tar).expect("gzip layer");
                enc.finish().expect("gzip layer")
            }
            LayerKind::OciZstd => zstd::encode_all(tar, 3).expect("zstd layer"),
            LayerKind::OciTar => tar.to_vec(),
        }
    }
}

/// Manifest family: OCI, or Docker v2 schema 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// OCI manifests / index with OCI media types.
    Oci,
    /// Docker v2s2 manifests / manifest list with Docker media types.
    Docker,
}

impl Flavour {
    /// Media type of a single-platform manifest.
    pub fn manifest_type(self) -> &'static str {
        match self {
            Flavour::Oci => OCI_MANIFEST,
            Flavour::Docker => DOCKER_MANIFEST,
        }
    }

    /// Media type of a multi-platform index / list.
    pub fn index_type(self) -> &'static str {
        match self {
            Flavour::Oci => OCI_INDEX,
            Flavour::Docker => DOCKER_LIST,
        }
    }

    /// Media type of the image config.
    pub fn config_type(self) -> &'static str {
        match self {
            Flavour::Oci => OCI_CONFIG,
            Flavour::Docker => DOCKER_CONFIG,
        }
    }

    /// The gzip layer kind of this family.
    pub fn gzip_layer(self) -> LayerKind {
        match self {
            Flavour::Oci => LayerKind::OciGzip,
            Flavour::Docker => LayerKind::DockerGzip,
        }
    }
}

/// Any content-addressed blob: a layer or a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// Exact bytes as pushed.
    pub bytes: Vec<u8>,
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
    /// `bytes.len()`.
    pub size: u64,
    /// For layers, `sha256:` of the uncompressed tar; for configs, equal to
    /// `digest`.
    pub diff_id: String,
    /// Media type for the descriptor that points at this blob.
    pub media_type: String,
}

impl Blob {
    fn new(bytes: Vec<u8>, diff_id: Option<String>, media_type: &str) -> Blob {
        let digest = sha256_digest(&bytes);
        Blob {
            size: bytes.len() as u64,
            diff_id: diff_id.unwrap_or_else(|| digest.clone()),
            digest,
            bytes,
            media_type: media_type.to_string(),
        }
    }
}

/// A tar archive of regular files with random content and normalised
/// metadata (mtime 0, uid/gid 0, mode 0644; parent directories 0755).
pub fn layer_tar(seed: u64, files: &[(&str, usize)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dirs_done = std::collections::BTreeSet::new();
    for (path, size) in files {
        // Real layers list parent directories before their files; umoci and
        // podman accept either, but mirroring reality costs nothing.
        let mut prefix = String::new();
        for part in path.split('/').take(path.matches('/').count()) {
            prefix.push_str(part);
            prefix.push('/');
            if dirs_done.insert(prefix.clone()) {
                let mut h = tar_header(&prefix, 0, 0o755);
                h.set_entry_type(tar::EntryType::Directory);
                h.set_cksum();
                builder.append(&h, std::io::empty()).expect("tar dir");
            }
        }
        let data = Rng::new(derive_seed(seed, path)).bytes(*size);
        let mut h = tar_header(path, *size as u64, 0o644);
        h.set_cksum();
        builder.append(&h, data.as_slice()).expect("tar file");
    }
    builder.into_inner().expect("finish tar")
}

fn tar_header(path: &str, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_path(path).expect("tar path");
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

/// A layer holding `files` (path, size) compressed as `kind`.
pub fn layer(seed: u64, files: &[(&str, usize)], kind: LayerKind) -> Blob {
    let tar = layer_tar(seed, files);
    let diff_id = sha256_digest(&tar);
    Blob::new(kind.compress(&tar), Some(diff_id), kind.media_type())
}

/// A layer with one random file of `size` bytes, named after the seed.
pub fn random_layer(seed: u64, size: usize, kind: LayerKind) -> Blob {
    let name = format!("airlock-test/{seed:016x}.bin");
    layer(seed, &[(name.as_str(), size)], kind)
}

/// An OS/architecture pair, as in an index's `platform` field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Platform {
    /// e.g. `amd64`, `arm64`, `arm`
    pub architecture: String,
    /// e.g. `linux`
    pub os: String,
    /// e.g. `v7`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch[/variant]`, e.g. `linux/arm/v7`.
    pub fn parse(s: &str) -> Platform {
        let parts: Vec<&str> = s.split('/').collect();
        assert!(
            (2..=3).contains(&parts.len()),
            "platform {s:?} is not os/arch[/variant]"
        );
        Platform {
            os: parts[0].to_string(),
            architecture: parts[1].to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

// The JSON documents below are serde structs rather than `json!` values so
// that field order is fixed by the code, whatever serde_json features the
// dependency graph turns on.

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor<'a> {
    media_type: &'a str,
    digest: &'a str,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<&'a Platform>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ManifestDoc<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: Descriptor<'a>,
    layers: Vec<Descriptor<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IndexDoc<'a> {
    schema_version: u32,
    media_type: &'a str,
    manifests: Vec<Descriptor<'a>>,
}

#[derive(Serialize)]
struct ConfigDoc<'a> {
    created: &'a str,
    architecture: &'a str,
    os: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a str>,
    config: RuntimeConfig<'a>,
    rootfs: RootFs<'a>,
    history: Vec<History>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RuntimeConfig<'a> {
    env: Vec<&'a str>,
    cmd: Vec<&'a str>,
    labels: BTreeMap<&'a str, String>,
}

#[derive(Serialize)]
struct RootFs<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    diff_ids: Vec<&'a str>,
}

#[derive(Serialize)]
struct History {
    created: &'static str,
    created_by: String,
}

/// An image config for `platform` over `layers`, labelled with `seed` so
/// images with identical layers still get distinct configs.
pub fn config(flavour: Flavour, platform: &Platform, layers: &[Blob], seed: u64) -> Blob {
    let doc = ConfigDoc {
        created: "1970-01-01T00:00:00Z",
        architecture: &platform.architecture,
        os: &platform.os,
        variant: platform.variant.as_deref(),
        config: RuntimeConfig {
            env: vec!["PATH=/usr/local/bin:/usr/bin:/bin"],
            cmd: vec!["/bin/true"],
            labels: BTreeMap::from([("org.airlock.test.seed", seed.to_string())]),
        },
        rootfs: RootFs {
            kind: "layers",
            diff_ids: layers.iter().map(|l| l.diff_id.as_str()).collect(),
        },
        history: layers
            .iter()
            .map(|l| History {
                created: "1970-01-01T00:00:00Z",
                created_by: format!("airlock test layer {}", &l.digest[7..19]),
            })
            .collect(),
    };
    let bytes = serde_json::to_vec(&doc).expect("serialise config");
    Blob::new(bytes, None, flavour.config_type())
}

/// A built single-platform manifest together with everything it references.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Exact manifest bytes.
    pub bytes: Vec<u8>,
    /// `sha256:` of `bytes`.
    pub digest: String,
    /// Manifest media type.
    pub media_type: String,
    /// Platform the config claims.
    pub platform: Platform,
    /// The config blob.
    pub config: Blob,
    /// Layer blobs, bottom first.
    pub layers: Vec<Blob>,
}

impl Manifest {
    /// Builds the config and the manifest for the given layers.
    pub fn build(flavour: Flavour, platform: Platform, layers: Vec<Blob>, seed: u64) -> Manifest {
        let config = config(flavour, &platform, &layers, seed);
        let doc = ManifestDoc {
            schema_version: 2,
            media_type: flavour.manifest_type(),
            config: descriptor(&config, None),
            layers: layers.iter().map(|l| descriptor(l, None)).collect(),
        };
        let bytes = serde_json::to_vec_pretty(&doc).expect("serialise manifest");
        Manifest {
            digest: sha256_digest(&bytes),
            bytes,
            media_type: flavour.manifest_type().to_string(),
            platform,
            config,
            layers,
        }
    }

    /// Config and layers, in that order.
    pub fn blobs(&self) -> impl Iterator<Item = &Blob> {
        std::iter::once(&self.config).chain(self.layers.iter())
    }

    /// Layer digests, bottom first.
    pub fn layer_digests(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.digest.clone()).collect()
    }
}

fn descriptor<'a>(blob: &'a Blob, platform: Option<&'a Platform>) -> Descriptor<'a> {
    Descriptor {
        media_type: &blob.media_type,
        digest: &blob.digest,
        size: blob.size,
        platform,
    }
}

/// A built multi-platform index (OCI) or manifest list (Docker).
#[derive(Debug, Clone)]
pub struct Index {
    /// Exact index bytes.
    pub bytes: Vec<u8>,
    /// `sha256:` of `bytes`.
    pub digest: String,
    /// Index media type.
    pub media_type: String,
    /// The child manifests, in index order.
    pub manifests: Vec<Manifest>,
}

impl Index {
    /// Builds an index whose entries carry each manifest's platform.
    pub fn build(flavour: Flavour, manifests: Vec<Manifest>) -> Index {
        let doc = IndexDoc {
            schema_version: 2,
            media_type: flavour.index_type(),
            manifests: manifests
                .iter()
                .map(|m| Descriptor {
                    media_type: &m.media_type,
                    digest: &m.digest,
                    size: m.bytes.len() as u64,
                    platform: Some(&m.platform),
                })
                .collect(),
        };
        let bytes = serde_json::to_vec_pretty(&doc).expect("serialise index");
        Index {
            digest: sha256_digest(&bytes),
            bytes,
            media_type: flavour.index_type().to_string(),
            manifests,
        }
    }
}
