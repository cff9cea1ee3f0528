//! Ready-made images: build from a seed, push to a [`Registry`], and report
//! every digest involved. Re-exported from [`super::images`].

use std::collections::{BTreeMap, BTreeSet};

use super::http::{push_blob, push_manifest};
use super::images::{
    Blob, Flavour, Index, LayerKind, Manifest, Platform, derive_seed, random_layer,
};
use super::registry::Registry;

/// Seeds for an image: `base` drives the per-platform base layer, `app` the
/// app layer and config. Two images with the same `base` share base layers
/// (per platform), which is what cross-repo mount and dedup tests need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSeed {
    /// Seed of the shared base layer.
    pub base: u64,
    /// Seed of everything specific to this image.
    pub app: u64,
}

impl From<u64> for ImageSeed {
    /// Uses the same number for base and app.
    fn from(seed: u64) -> ImageSeed {
        ImageSeed {
            base: seed,
            app: seed,
        }
    }
}

/// What a push helper stored, with every digest a test may want to check.
#[derive(Debug, Clone)]
pub struct PushedImage {
    /// Registry host (`127.0.0.1:PORT`).
    pub host: String,
    /// Repository name.
    pub repo: String,
    /// Tag pointing at the top-level manifest or index.
    pub tag: String,
    /// Digest of the top-level document (index if any, else the manifest).
    pub digest: String,
    /// Media type of the top-level document.
    pub media_type: String,
    /// Exact bytes of the top-level document.
    pub bytes: Vec<u8>,
    /// Digest of the index / manifest list, if the image is multi-platform.
    pub index_digest: Option<String>,
    /// The platform manifests, in index order (one for a single image).
    pub manifests: Vec<Manifest>,
    /// Sum of sizes of the distinct config and layer blobs.
    pub total_blob_bytes: u64,
}

impl PushedImage {
    /// `HOST/REPO:TAG`
    pub fn reference(&self) -> String {
        format!("{}/{}:{}", self.host, self.repo, self.tag)
    }

    /// `docker://HOST/REPO:TAG`, for skopeo and podman.
    pub fn docker_ref(&self) -> String {
        format!("docker://{}", self.reference())
    }

    /// `HOST/REPO@DIGEST` of the top-level document.
    pub fn digest_reference(&self) -> String {
        format!("{}/{}@{}", self.host, self.repo, self.digest)
    }

    /// The manifest for `platform` (`os/arch[/variant]`); panics if absent.
    pub fn manifest(&self, platform: &str) -> &Manifest {
        let want = Platform::parse(platform);
        self.manifests
            .iter()
            .find(|m| m.platform == want)
            .unwrap_or_else(|| panic!("{} has no manifest for {platform}", self.reference()))
    }

    /// Platform manifest digests, in index order.
    pub fn manifest_digests(&self) -> Vec<String> {
        self.manifests.iter().map(|m| m.digest.clone()).collect()
    }

    /// Config digests, in index order.
    pub fn config_digests(&self) -> Vec<String> {
        self.manifests
            .iter()
            .map(|m| m.config.digest.clone())
            .collect()
    }

    /// Distinct layer digests, sorted.
    pub fn layer_digests(&self) -> BTreeSet<String> {
        self.manifests
            .iter()
            .flat_map(|m| m.layers.iter().map(|l| l.digest.clone()))
            .collect()
    }

    /// Distinct config and layer digests with their sizes.
    pub fn blob_sizes(&self) -> BTreeMap<String, u64> {
        self.manifests
            .iter()
            .flat_map(|m| m.blobs())
            .map(|b| (b.digest.clone(), b.size))
            .collect()
    }

    /// Distinct config and layer digests, sorted.
    pub fn blob_digests(&self) -> BTreeSet<String> {
        self.blob_sizes().into_keys().collect()
    }

    /// Digests of every manifest-like document: index (if any) and manifests.
    pub fn all_manifest_digests(&self) -> Vec<String> {
        self.index_digest
            .iter()
            .cloned()
            .chain(self.manifest_digests())
            .collect()
    }
}

fn push_blobs<'a>(reg: &Registry, repo: &str, blobs: impl Iterator<Item = &'a Blob>) {
    let mut done = BTreeSet::new();
    for blob in blobs {
        if done.insert(blob.digest.clone()) {
            push_blob(reg, repo, &blob.bytes);
        }
    }
}

fn pushed(
    reg: &Registry,
    repo: &str,
    tag: &str,
    index: Option<&Index>,
    manifests: Vec<Manifest>,
) -> PushedImage {
    let (digest, media_type, bytes) = match index {
        Some(i) => (i.digest.clone(), i.media_type.clone(), i.bytes.clone()),
        None => {
            let m = &manifests[0];
            (m.digest.clone(), m.media_type.clone(), m.bytes.clone())
        }
    };
    let mut image = PushedImage {
        host: reg.host(),
        repo: repo.to_string(),
        tag: tag.to_string(),
        digest,
        media_type,
        bytes,
        index_digest: index.map(|i| i.digest.clone()),
        manifests,
        total_blob_bytes: 0,
    };
    image.total_blob_bytes = image.blob_sizes().values().sum();
    image
}

/// Pushes a built manifest's blobs, then the manifest under `tag`.
pub fn push_manifest_image(reg: &Registry, repo: &str, tag: &str, m: &Manifest) -> PushedImage {
    push_blobs(reg, repo, m.blobs());
    push_manifest(reg, repo, tag, &m.media_type, &m.bytes);
    pushed(reg, repo, tag, None, vec![m.clone()])
}

/// Pushes a built index: all blobs, each child manifest by digest (the
/// registry refuses an index whose children are missing), then the index
/// under `tag`.
pub fn push_index_image(reg: &Registry, repo: &str, tag: &str, index: &Index) -> PushedImage {
    push_blobs(reg, repo, index.manifests.iter().flat_map(|m| m.blobs()));
    for m in &index.manifests {
        push_manifest(reg, repo, &m.digest, &m.media_type, &m.bytes);
    }
    push_manifest(reg, repo, tag, &index.media_type, &index.bytes);
    pushed(reg, repo, tag, Some(index), index.manifests.clone())
}

/// Builds (without pushing) a multi-platform image: per platform a base
/// layer of `layer_size` bytes from `seed.base` and an app layer of half
/// that from `seed.app`.
pub fn build_multiarch(
    flavour: Flavour,
    seed: ImageSeed,
    platforms: &[&str],
    layer_size: usize,
) -> Index {
    let manifests = platforms
        .iter()
        .map(|p| {
            let platform = Platform::parse(p);
            let kind = flavour.gzip_layer();
            let base = random_layer(
                derive_seed(seed.base, &format!("base/{p}")),
                layer_size,
                kind,
            );
            let app_size = (layer_size / 2).max(1);
            let app = random_layer(derive_seed(seed.app, &format!("app/{p}")), app_size, kind);
            Manifest::build(flavour, platform, vec![base, app], seed.app)
        })
        .collect();
    Index::build(flavour, manifests)
}

/// Pushes an OCI index over OCI manifests with gzip layers; see
/// [`build_multiarch`] for the layer layout.
pub fn push_multiarch_oci(
    reg: &Registry,
    repo: &str,
    tag: &str,
    seed: impl Into<ImageSeed>,
    platforms: &[&str],
    layer_size: usize,
) -> PushedImage {
    let index = build_multiarch(Flavour::Oci, seed.into(), platforms, layer_size);
    push_index_image(reg, repo, tag, &index)
}

/// Pushes a Docker manifest list over Docker v2s2 manifests; see
/// [`build_multiarch`] for the layer layout.
pub fn push_docker_list(
    reg: &Registry,
    repo: &str,
    tag: &str,
    seed: impl Into<ImageSeed>,
    platforms: &[&str],
    layer_size: usize,
) -> PushedImage {
    let index = build_multiarch(Flavour::Docker, seed.into(), platforms, layer_size);
    push_index_image(reg, repo, tag, &index)
}

/// Pushes a linux/amd64 OCI image with two zstd layers (`layer_size` and
/// half of it) and one uncompressed layer (a quarter).
pub fn push_zstd_image(
    reg: &Registry,
    repo: &str,
    tag: &str,
    seed: u64,
    layer_size: usize,
) -> PushedImage {
    let layers = vec![
        random_layer(derive_seed(seed, "zstd/0"), layer_size, LayerKind::OciZstd),
        random_layer(
            derive_seed(seed, "zstd/1"),
            (layer_size / 2).max(1),
            LayerKind::OciZstd,
        ),
        random_layer(
            derive_seed(seed, "tar/2"),
            (layer_size / 4).max(1),
            LayerKind::OciTar,
        ),
    ];
    let m = Manifest::build(Flavour::Oci, Platform::parse("linux/amd64"), layers, seed);
    push_manifest_image(reg, repo, tag, &m)
}

/// Pushes a linux/amd64 single-manifest image with one gzip layer per entry
/// of `layer_sizes`, in the given flavour.
pub fn push_single(
    reg: &Registry,
    repo: &str,
    tag: &str,
    seed: u64,
    layer_sizes: &[usize],
    flavour: Flavour,
) -> PushedImage {
    let m = build_single(seed, layer_sizes, flavour);
    push_manifest_image(reg, repo, tag, &m)
}

/// Builds (without pushing) the image that [`push_single`] pushes.
pub fn build_single(seed: u64, layer_sizes: &[usize], flavour: Flavour) -> Manifest {
    let layers = layer_sizes
        .iter()
        .enumerate()
        .map(|(i, size)| {
            random_layer(
                derive_seed(seed, &format!("layer/{i}")),
                *size,
                flavour.gzip_layer(),
            )
        })
        .collect();
    Manifest::build(flavour, Platform::parse("linux/amd64"), layers, seed)
}
