//! Legacy Docker schema1 images on export: converted to OCI or Docker v2s2
//! as their layers stream in.
//!
//! A schema1 manifest has no config and no layer sizes. Resolving asks the
//! registry for each layer's size (HEAD); converting downloads each layer
//! once, hashing the decompressed stream for its diff ID from the very
//! bytes written to the bundle, then builds the config and manifest the way
//! skopeo does (see `formats/schema1.md`). Layer digests never change; the
//! config and manifest are new, and the entry records the schema1 digest.

use std::collections::HashMap;
use std::io::Read;

use bytes::Bytes;
use futures::StreamExt;

use crate::diffid::{Compression, DiffIdHasher};
use crate::digest::Digest;
use crate::export::{ExportReport, ImageError, ResolvedImage};
use crate::layout::Layout;
use crate::manifest::{DOCKER_MANIFEST, Descriptor, Kind, Manifest, SCHEMA1};
use crate::platform::Platform;
use crate::progress::Progress;
use crate::reference::ImageRef;
use crate::registry::{Client, RegistryError};
use crate::schema1::{self, Schema1, TargetFormat, layer_media_type};

/// What export does with a schema1 image.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Schema1Mode {
    /// Convert to an OCI image (the default).
    #[default]
    Oci,
    /// Convert to a Docker v2s2 image.
    Docker,
    /// Store the schema1 manifest as it is (without signatures); most
    /// tools cannot read such a layout.
    Keep,
}

/// A schema1 image resolved but not yet converted.
#[derive(Debug, Clone)]
pub struct Pending {
    pub parsed: Schema1,
    pub source: Digest,
    pub format: TargetFormat,
    /// One per layer, base first, with the registry's sizes.
    pub layers: Vec<Descriptor>,
}

/// Resolves a schema1 manifest: validates it and sizes its layers. For
/// `keep`, the image is complete now; otherwise it is pending conversion.
pub async fn resolve(
    client: &Client,
    reference: &ImageRef,
    manifest: &Manifest,
    mode: Schema1Mode,
) -> Result<ResolvedImage, ImageError> {
    let invalid = |e: schema1::Schema1Error| ImageError::Invalid(crate::error_chain(&e));
    let parsed = schema1::parse(&manifest.body).map_err(invalid)?;
    let mut sizes: HashMap<Digest, u64> = HashMap::new();
    let mut layers = Vec::new();
    for layer in parsed.layers() {
        let size = match sizes.get(&layer.digest) {
            Some(s) => *s,
            None => {
                let size = client
                    .blob_exists(reference, &layer.digest)
                    .await?
                    .ok_or_else(|| RegistryError::NotFound {
                        what: format!("layer {} of the schema1 manifest", layer.digest),
                    })?;
                sizes.insert(layer.digest.clone(), size);
                size
            }
        };
        layers.push(Descriptor {
            media_type: schema1::DOCKER_LAYER_GZIP.to_string(),
            digest: layer.digest,
            size,
            platform: None,
            artifact_type: None,
            annotations: None,
        });
    }
    let platform = Platform {
        os: "linux".to_string(),
        architecture: parsed.architecture.clone(),
        variant: None,
    };
    let unique = unique(&layers);

    let format = match mode {
        Schema1Mode::Keep => {
            // Stored without signatures: those bytes are what the digest
            // is computed over, so the layout stays content-addressed.
            let payload = Bytes::from(schema1::payload(&manifest.body).map_err(invalid)?);
            let mut root = Manifest::parse(manifest.digest.clone(), payload, Some(SCHEMA1))?;
            root.media_type = SCHEMA1.to_string();
            root.blobs = unique.clone();
            return Ok(ResolvedImage {
                reference: reference.clone(),
                root: root.clone(),
                source_digest: manifest.digest.clone(),
                manifests: vec![root],
                blobs: unique,
                platforms: vec![platform],
                pending: None,
                subject: None,
                referrer_of: None,
                artifact_type: None,
            });
        }
        Schema1Mode::Oci => TargetFormat::Oci,
        Schema1Mode::Docker => TargetFormat::Docker,
    };
    Ok(ResolvedImage {
        reference: reference.clone(),
        root: manifest.clone(),
        source_digest: manifest.digest.clone(),
        manifests: Vec::new(),
        blobs: unique,
        platforms: vec![platform],
        pending: Some(Pending {
            parsed,
            source: manifest.digest.clone(),
            format,
            layers,
        }),
        subject: None,
        referrer_of: None,
        artifact_type: None,
    })
}

fn unique(layers: &[Descriptor]) -> Vec<Descriptor> {
    let mut seen = std::collections::HashSet::new();
    layers
        .iter()
        .filter(|l| seen.insert(l.digest.clone()))
        .cloned()
        .collect()
}

/// Converts every pending image: downloads its layers into `layout`
/// (unless present) with their diff IDs, then writes the new config and
/// sets the image's manifest. Images that fail move to the report.
pub async fn convert_pending(
    client: &Client,
    layout: &Layout,
    images: Vec<ResolvedImage>,
    jobs: usize,
    progress: &Progress,
    report: &mut ExportReport,
) -> Vec<ResolvedImage> {
    let mut out = Vec::with_capacity(images.len());
    for mut image in images {
        let Some(pending) = image.pending.take() else {
            out.push(image);
            continue;
        };
        match convert(client, layout, &image, &pending, jobs, progress, report).await {
            Ok(converted) => {
                progress.println(&format!(
                    "{}: converted schema1 {} to {}",
                    image.reference.name(),
                    pending.source,
                    converted.root.digest
                ));
                out.push(converted);
            }
            Err(e) => report
                .failed
                .push((image.reference.name(), crate::error_chain(&e))),
        }
    }
    out
}

async fn convert(
    client: &Client,
    layout: &Layout,
    image: &ResolvedImage,
    pending: &Pending,
    jobs: usize,
    progress: &Progress,
    report: &mut ExportReport,
) -> Result<ResolvedImage, ImageError> {
    let bytes: u64 = image
        .blobs
        .iter()
        .filter(|b| !layout.has_blob(&b.digest, b.size))
        .map(|b| b.size)
        .sum();
    progress.add_total(bytes);
    let bar = progress.image(&image.reference.name(), bytes);
    let results: Vec<(Digest, Result<LayerDiff, ImageError>)> =
        futures::stream::iter(image.blobs.clone())
            .map(|blob| {
                let client = client.clone();
                let layout = layout.clone();
                let source = image.reference.clone();
                let progress = progress.clone();
                let bar = bar.clone();
                async move {
                    let digest = blob.digest.clone();
                    let task = tokio::spawn(async move {
                        layer_with_diff_id(&client, &layout, &source, &blob, &|n| {
                            progress.advance(&bar, n)
                        })
                        .await
                    });
                    let r = task.await.unwrap_or_else(|e| {
                        Err(ImageError::Invalid(format!("download task failed: {e}")))
                    });
                    (digest, r)
                }
            })
            .buffer_unordered(jobs.max(1))
            .collect()
            .await;
    bar.finish_and_clear();

    let mut diff = HashMap::new();
    for (digest, r) in results {
        let (diff_id, compression, fetched) = r?;
        if fetched {
            report.blobs_fetched += 1;
            report.bytes_fetched += image
                .blobs
                .iter()
                .find(|b| b.digest == digest)
                .map_or(0, |b| b.size);
        }
        diff.insert(digest, (diff_id, compression));
    }

    let format = pending.format;
    let diff_ids: Vec<Digest> = pending
        .layers
        .iter()
        .map(|l| diff[&l.digest].0.clone())
        .collect();
    let invalid = |e: schema1::Schema1Error| ImageError::Invalid(crate::error_chain(&e));
    let config = Bytes::from(
        pending
            .parsed
            .config_for(format, &diff_ids)
            .map_err(invalid)?,
    );
    let config_desc = Descriptor {
        media_type: format.config_media_type().to_string(),
        digest: Digest::sha256_of(&config),
        size: config.len() as u64,
        platform: None,
        artifact_type: None,
        annotations: None,
    };
    let layers: Vec<Descriptor> = pending
        .layers
        .iter()
        .map(|l| Descriptor {
            media_type: layer_media_type(format, diff[&l.digest].1).to_string(),
            ..l.clone()
        })
        .collect();
    let body = Bytes::from(
        pending
            .parsed
            .manifest(format, &config_desc, &layers, &pending.source),
    );
    let media_type = match format {
        TargetFormat::Oci => crate::manifest::OCI_MANIFEST,
        TargetFormat::Docker => DOCKER_MANIFEST,
    };
    let root = Manifest::parse(Digest::sha256_of(&body), body, Some(media_type))?;
    debug_assert_eq!(root.kind, Kind::Image);
    layout.write_small_blob(&config_desc.digest, &config)?;

    let mut blobs = vec![config_desc];
    blobs.extend(unique(&layers));
    Ok(ResolvedImage {
        reference: image.reference.clone(),
        root: root.clone(),
        source_digest: pending.source.clone(),
        manifests: vec![root],
        blobs,
        platforms: config_platform(&config).into_iter().collect(),
        pending: None,
        subject: image.subject.clone(),
        referrer_of: image.referrer_of.clone(),
        artifact_type: image.artifact_type.clone(),
    })
}

/// A layer's diff ID, its compression, and whether it had to be fetched.
type LayerDiff = (Digest, Compression, bool);

/// Puts one layer in the layout and returns its diff ID and compression,
/// and whether it had to be fetched. The diff ID is computed from the same
/// bytes that are written (or, for a layer already present, read back).
async fn layer_with_diff_id(
    client: &Client,
    layout: &Layout,
    source: &ImageRef,
    blob: &Descriptor,
    advance: &(dyn Fn(u64) + Sync),
) -> Result<LayerDiff, ImageError> {
    let diff_err = |e: crate::diffid::DiffIdError| {
        ImageError::Invalid(format!("layer {}: {}", blob.digest, crate::error_chain(&e)))
    };
    if layout.has_blob(&blob.digest, blob.size) {
        let path = layout.blob_path(&blob.digest);
        let (d, c) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            let mut file = std::fs::File::open(&path)?;
            let mut hasher = DiffIdHasher::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]).map_err(std::io::Error::other)?;
            }
            hasher.finish().map_err(std::io::Error::other)
        })
        .await
        .map_err(|e| ImageError::Invalid(format!("diff ID task failed: {e}")))?
        .map_err(|e| ImageError::Invalid(format!("layer {}: {e}", blob.digest)))?;
        return Ok((d, c, false));
    }
    client
        .retry_corrupt(&blob.digest, || async {
            let mut reader = client.blob_reader(source, &blob.digest, blob.size);
            let mut temp = layout.begin_blob(&blob.digest).await?;
            let mut hasher = DiffIdHasher::new();
            while let Some(chunk) = reader.next_chunk().await? {
                advance(chunk.len() as u64);
                hasher.update(&chunk).map_err(diff_err)?;
                temp.write(chunk).await?;
            }
            // The reader verified the digest before it reported the end.
            temp.commit().await?;
            let (d, c) = hasher.finish().map_err(diff_err)?;
            Ok((d, c, true))
        })
        .await
}

fn config_platform(config: &[u8]) -> Option<Platform> {
    #[derive(serde::Deserialize)]
    struct C {
        os: Option<String>,
        architecture: Option<String>,
        variant: Option<String>,
    }
    let c: C = serde_json::from_slice(config).ok()?;
    Some(Platform {
        os: c.os?,
        architecture: c.architecture?,
        variant: c.variant,
    })
}
