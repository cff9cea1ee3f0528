//! What an archive holds: its metadata files, its blobs in archive order,
//! and its index.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Serialize;

use super::plan::{BlobInput, Plan};
use super::{ArchiveError, ArchiveIndex, ArchivePaths, FORMAT, ImageEntry, PartEntry, VERSION};
use crate::base::{Base, BaseInfo};
use crate::digest::Digest;
use crate::export::{ResolvedImage, index_entry};
use crate::layout::Index;
use crate::lock::LockedBlob;
use crate::manifest::Kind;
use crate::reference::ImageRef;

/// The metadata files and the blobs, in archive order: manifests first (so
/// part 0001 holds what a reader needs to plan), then configs and layers.
#[allow(clippy::type_complexity)]
pub(super) fn contents(
    images: &[ResolvedImage],
    annotations: &BTreeMap<String, String>,
    since: Option<&Base>,
) -> Result<(Vec<(&'static str, Bytes)>, Vec<BlobInput>), ArchiveError> {
    let mut index = Index::default();
    for image in images {
        index.upsert(index_entry(image, annotations));
    }
    let metadata = vec![
        (
            "oci-layout",
            Bytes::from(format!(
                "{{\"imageLayoutVersion\":\"{}\"}}",
                crate::layout::LAYOUT_VERSION
            )),
        ),
        ("index.json", Bytes::from(index.to_bytes())),
        ("manifest.json", Bytes::from(docker_manifest(images))),
    ];

    let mut blobs = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for image in images {
        for m in &image.manifests {
            if seen.insert(m.digest.clone()) {
                blobs.push(BlobInput {
                    digest: m.digest.clone(),
                    size: m.body.len() as u64,
                    media_type: m.media_type.clone(),
                    inline: Some(m.body.clone()),
                });
            }
        }
    }
    for image in images {
        for b in &image.blobs {
            // Left out when the bundle this one builds on carried it.
            if since.is_some_and(|base| base.has(&b.digest)) {
                continue;
            }
            if seen.insert(b.digest.clone()) {
                blobs.push(BlobInput {
                    digest: b.digest.clone(),
                    size: b.size,
                    media_type: b.media_type.clone(),
                    inline: None,
                });
            }
        }
    }
    Ok((metadata, blobs))
}

/// The `manifest.json` that `docker load` reads: per image, the linux/amd64
/// manifest of an index (or its first), with paths into `blobs/`.
fn docker_manifest(images: &[ResolvedImage]) -> Vec<u8> {
    #[derive(Serialize)]
    #[serde(rename_all = "PascalCase")]
    struct Entry {
        config: String,
        repo_tags: Vec<String>,
        layers: Vec<String>,
    }
    let path = |d: &Digest| format!("blobs/{}/{}", d.algorithm().as_str(), d.hex());
    let mut entries = Vec::new();
    // Signatures and SBOMs are not images to load.
    for image in images.iter().filter(|i| i.referrer_of.is_none()) {
        let candidates: Vec<_> = image
            .manifests
            .iter()
            .filter(|m| m.kind == Kind::Image)
            .collect();
        let chosen = match image.root.kind {
            Kind::Image => Some(&image.root),
            _ => image
                .root
                .manifests
                .iter()
                .find(|d| {
                    d.platform
                        .as_ref()
                        .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
                })
                .or(image.root.manifests.first())
                .and_then(|d| candidates.iter().find(|m| m.digest == d.digest).copied()),
        };
        let Some(manifest) = chosen else { continue };
        let Some((config, layers)) = manifest.blobs.split_first() else {
            continue;
        };
        let repo_tags = image
            .reference
            .tag()
            .map(|_| vec![docker_name(&image.reference)])
            .unwrap_or_default();
        entries.push(Entry {
            config: path(&config.digest),
            repo_tags,
            layers: layers.iter().map(|l| path(&l.digest)).collect(),
        });
    }
    let mut out = serde_json::to_vec(&entries).expect("manifest.json serialises");
    out.push(b'\n');
    out
}

/// The short name docker prints: `alpine:3.20` for Docker Hub's library.
fn docker_name(r: &ImageRef) -> String {
    let name = r.name();
    name.strip_prefix("docker.io/library/")
        .or_else(|| name.strip_prefix("docker.io/"))
        .unwrap_or(&name)
        .to_string()
}

/// What an incremental archive leaves out: every blob of its images that
/// the base carried.
pub(super) fn base_info(images: &[ResolvedImage], since: Option<&Base>) -> Option<BaseInfo> {
    let base = since?;
    let mut omitted = BTreeMap::new();
    for b in images
        .iter()
        .flat_map(|i| i.blobs.iter())
        .filter(|b| base.has(&b.digest))
    {
        omitted.insert(b.digest.clone(), LockedBlob::from(b));
    }
    Some(BaseInfo {
        builds_on: base.description.clone(),
        omitted: omitted.into_values().collect(),
    })
}

/// The index for `plan`, with part hashes where known.
pub(super) fn archive_index(
    paths: &ArchivePaths,
    plan: &Plan,
    images: &[ResolvedImage],
    hashes: &[String],
    base: Option<BaseInfo>,
) -> ArchiveIndex {
    ArchiveIndex {
        base,
        format: FORMAT.to_string(),
        version: VERSION,
        bundle: plan.bundle.clone(),
        chunk_size: plan.chunk_size,
        mtime: plan.mtime,
        parts: plan
            .parts
            .iter()
            .map(|p| PartEntry {
                number: p.number,
                name: paths.part_name(p.number),
                size: p.size,
                sha256: hashes
                    .get(p.number as usize - 1)
                    .cloned()
                    .unwrap_or_default(),
            })
            .collect(),
        images: images
            .iter()
            .map(|i| {
                let mut blobs: Vec<Digest> = i.manifests.iter().map(|m| m.digest.clone()).collect();
                blobs.extend(i.blobs.iter().map(|b| b.digest.clone()));
                ImageEntry {
                    name: i.reference.name(),
                    digest: i.root.digest.clone(),
                    media_type: i.root.media_type.clone(),
                    platforms: i.platforms.clone(),
                    blobs,
                    subject: i.subject.clone(),
                    referrer_of: i.referrer_of.clone(),
                    artifact_type: i.artifact_type.clone(),
                }
            })
            .collect(),
        blobs: plan.blobs.clone(),
    }
}
