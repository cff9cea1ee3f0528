//! Resolving an image: every manifest it needs, fetched once (or read
//! from the bundle when already there), platform filters applied.

use std::collections::HashSet;

use bytes::Bytes;
use futures::future::BoxFuture;

use super::{ImageError, MAX_DEPTH, ResolvedImage};
use crate::convert::Schema1Mode;
use crate::digest::Digest;
use crate::layout::Layout;
use crate::manifest::{Descriptor, Kind, Manifest};
use crate::platform::Platform;
use crate::reference::ImageRef;
use crate::registry::{Client, RegistryError};

/// Fetches every manifest of one image and decides what the bundle holds.
pub async fn resolve(
    client: &Client,
    layout: &Layout,
    reference: &ImageRef,
    platforms: &[Platform],
    schema1: Schema1Mode,
) -> Result<ResolvedImage, ImageError> {
    let root = fetch_root(client, layout, reference).await?;
    if root.kind == Kind::Schema1 {
        let image = crate::convert::resolve(client, reference, &root, schema1).await?;
        let actual = &image.platforms[0];
        if !platforms.is_empty() && !platforms.iter().any(|f| f.selects(actual)) {
            return Err(ImageError::WrongPlatform {
                wanted: join_platforms(platforms),
                actual: actual.to_string(),
            });
        }
        return Ok(image);
    }
    let source_digest = root.digest.clone();
    let mut out = Collected::default();
    let mut image_platforms = Vec::new();

    let root = match root.kind {
        Kind::Index => {
            let entries = select_platforms(&root, platforms)?;
            let mut ancestors = vec![root.digest.clone()];
            for entry in &entries {
                if let Some(p) = &entry.platform {
                    image_platforms.push(p.clone());
                }
                walk(
                    client,
                    layout,
                    reference,
                    entry,
                    1,
                    &mut ancestors,
                    &mut out,
                )
                .await?;
            }
            if entries.len() == root.manifests.len() {
                root
            } else {
                let keep: Vec<Digest> = entries.iter().map(|e| e.digest.clone()).collect();
                let body = root.filtered_index(&keep)?;
                Manifest::parse(Digest::sha256_of(&body), body, Some(&root.media_type))?
            }
        }
        Kind::Image => {
            let platform = image_platform(client, layout, reference, &root).await?;
            if !platforms.is_empty() {
                match &platform {
                    Some(p) if platforms.iter().any(|f| f.selects(p)) => {}
                    other => {
                        return Err(ImageError::WrongPlatform {
                            wanted: join_platforms(platforms),
                            actual: other
                                .as_ref()
                                .map_or("of unknown platform".to_string(), |p| p.to_string()),
                        });
                    }
                }
            }
            image_platforms.extend(platform);
            out.add_blobs(&root.blobs);
            root
        }
        Kind::Schema1 => unreachable!("schema1 roots are resolved above"),
    };
    out.manifests.push(root.clone());
    Ok(ResolvedImage {
        reference: reference.clone(),
        root,
        source_digest,
        manifests: out.manifests,
        blobs: out.blobs,
        platforms: image_platforms,
        pending: None,
        subject: None,
        referrer_of: None,
        artifact_type: None,
    })
}

#[derive(Default)]
struct Collected {
    manifests: Vec<Manifest>,
    blobs: Vec<Descriptor>,
    seen: HashSet<Digest>,
}

impl Collected {
    fn add_blobs(&mut self, blobs: &[Descriptor]) {
        for b in blobs {
            if self.seen.insert(b.digest.clone()) {
                self.blobs.push(b.clone());
            }
        }
    }
}

/// Fetches a child manifest and, for an index, its children first.
fn walk<'a>(
    client: &'a Client,
    layout: &'a Layout,
    reference: &'a ImageRef,
    entry: &'a Descriptor,
    depth: usize,
    ancestors: &'a mut Vec<Digest>,
    out: &'a mut Collected,
) -> BoxFuture<'a, Result<(), ImageError>> {
    Box::pin(async move {
        let invalid = ImageError::Invalid;
        if ancestors.contains(&entry.digest) {
            return Err(invalid(format!("index {} lists itself", entry.digest)));
        }
        if depth > MAX_DEPTH {
            return Err(invalid(format!(
                "indexes nest deeper than {MAX_DEPTH} levels at {}",
                entry.digest
            )));
        }
        if out.manifests.iter().any(|m| m.digest == entry.digest) {
            return Ok(());
        }
        let manifest = manifest_by_digest(
            client,
            layout,
            reference,
            &entry.digest,
            Some(entry.size),
            Some(&entry.media_type),
        )
        .await?;
        match manifest.kind {
            Kind::Index => {
                ancestors.push(manifest.digest.clone());
                for child in &manifest.manifests {
                    walk(client, layout, reference, child, depth + 1, ancestors, out).await?;
                }
                ancestors.pop();
            }
            Kind::Image => out.add_blobs(&manifest.blobs),
            Kind::Schema1 => {
                return Err(invalid(format!(
                    "index entry {} is a schema1 manifest, which an index may not name",
                    entry.digest
                )));
            }
        }
        out.manifests.push(manifest);
        Ok(())
    })
}

/// The root manifest: resolved with HEAD, read from the layout when it is
/// already there, fetched by digest otherwise.
async fn fetch_root(
    client: &Client,
    layout: &Layout,
    reference: &ImageRef,
) -> Result<Manifest, ImageError> {
    if let Some(d) = reference.digest() {
        return manifest_by_digest(client, layout, reference, d, None, None).await;
    }
    let head = match client.head_manifest(reference).await {
        Ok(Some(found)) => Some(found),
        Ok(None) => {
            return Err(RegistryError::NotFound {
                what: "the registry has no such image".to_string(),
            }
            .into());
        }
        // Some registries answer HEAD without a digest: GET by tag instead.
        Err(RegistryError::Protocol { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    match head {
        Some((digest, size, content_type)) => {
            manifest_by_digest(
                client,
                layout,
                reference,
                &digest,
                Some(size),
                content_type.as_deref(),
            )
            .await
        }
        None => {
            let fetched = client.get_manifest(reference).await?;
            let hint = fetched.content_type.clone();
            Ok(Manifest::parse(
                fetched.digest,
                fetched.body,
                hint.as_deref(),
            )?)
        }
    }
}

/// A manifest by digest, from the layout when present (verified again on
/// read), from the registry otherwise.
async fn manifest_by_digest(
    client: &Client,
    layout: &Layout,
    reference: &ImageRef,
    digest: &Digest,
    size: Option<u64>,
    hint: Option<&str>,
) -> Result<Manifest, ImageError> {
    let local = std::fs::metadata(layout.blob_path(digest))
        .is_ok_and(|m| size.is_none_or(|s| m.len() == s));
    let (body, content_type): (Bytes, Option<String>) = if local {
        (layout.read_small_blob(digest, size)?, None)
    } else {
        let fetched = client
            .get_manifest(&reference.with_digest(digest.clone()))
            .await?;
        if let Some(s) = size
            && fetched.body.len() as u64 != s
        {
            return Err(RegistryError::Verify {
                what: format!("manifest {digest}"),
                source: crate::digest::VerifyError::Size {
                    digest: digest.clone(),
                    expected: s,
                    actual: fetched.body.len() as u64,
                },
            }
            .into());
        }
        (fetched.body, fetched.content_type)
    };
    let hint = hint.map(str::to_string).or(content_type);
    Ok(Manifest::parse(digest.clone(), body, hint.as_deref())?)
}

/// The entries of an index that the platform filter keeps.
fn select_platforms(index: &Manifest, filters: &[Platform]) -> Result<Vec<Descriptor>, ImageError> {
    if filters.is_empty() {
        return Ok(index.manifests.clone());
    }
    for f in filters {
        let found = index
            .manifests
            .iter()
            .any(|e| e.platform.as_ref().is_some_and(|p| f.selects(p)));
        if !found {
            let available: Vec<String> = index
                .manifests
                .iter()
                .filter_map(|e| e.platform.as_ref().map(|p| p.to_string()))
                .collect();
            return Err(ImageError::MissingPlatform {
                wanted: f.to_string(),
                available: available.join(", "),
            });
        }
    }
    Ok(index
        .manifests
        .iter()
        .filter(|e| {
            e.platform
                .as_ref()
                .is_some_and(|p| filters.iter().any(|f| f.selects(p)))
        })
        .cloned()
        .collect())
}

/// The platform an image manifest's config declares.
async fn image_platform(
    client: &Client,
    layout: &Layout,
    reference: &ImageRef,
    manifest: &Manifest,
) -> Result<Option<Platform>, ImageError> {
    let Some(config) = manifest.blobs.first() else {
        return Ok(None);
    };
    // Only image configs say a platform; artifacts' configs do not.
    let is_image_config = config.media_type == "application/vnd.oci.image.config.v1+json"
        || config.media_type == "application/vnd.docker.container.image.v1+json";
    if !is_image_config || config.size > crate::manifest::MAX_MANIFEST_BYTES as u64 {
        return Ok(None);
    }
    let bytes = if layout.has_blob(&config.digest, config.size) {
        layout.read_small_blob(&config.digest, Some(config.size))?
    } else {
        let bytes = client
            .get_small_blob(reference, &config.digest, config.size)
            .await?;
        layout.write_small_blob(&config.digest, &bytes)?;
        bytes
    };
    #[derive(serde::Deserialize)]
    struct Config {
        os: Option<String>,
        architecture: Option<String>,
        variant: Option<String>,
    }
    let parsed: Config = serde_json::from_slice(&bytes).map_err(|e| {
        ImageError::Invalid(format!("config {} is not valid JSON: {e}", config.digest))
    })?;
    Ok(match (parsed.os, parsed.architecture) {
        (Some(os), Some(architecture)) => Some(Platform {
            os,
            architecture,
            variant: parsed.variant,
        }),
        _ => None,
    })
}

pub(super) fn join_platforms(platforms: &[Platform]) -> String {
    let names: Vec<String> = platforms.iter().map(|p| p.to_string()).collect();
    names.join(", ")
}
