//! Export: from registries into an OCI image layout.
//!
//! Resolve fetches every manifest of every image (concurrently across
//! images) and decides what the bundle holds; as each image resolves, its
//! blobs join one pool for all images (`fetch`), so downloads run while
//! the other images and the referrers are still being asked for. Schema1
//! images are converted after resolution, fetching their own layers.
//! Commit then writes each complete image's manifests (children before the
//! index naming them) and finally `index.json`. An image whose blobs did
//! not all arrive gets no manifest and no entry, so the layout never names
//! content it lacks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use crate::base::{Base, BaseInfo, layout_base_path, read_layout_base};
use crate::convert::{Pending, Schema1Mode, convert_pending};
use crate::digest::Digest;
use crate::layout::{CONTAINERD_NAME, Layout, LayoutError, REF_NAME};
use crate::lock::{LockedBlob, LockedImage};
use crate::manifest::{Descriptor, Kind, Manifest, ManifestError};
use crate::platform::Platform;
use crate::progress::{Progress, human_bytes, plural, rate};
use crate::reference::ImageRef;
use crate::referrers::{ReferrerOptions, SUBJECT, SUBJECT_IMAGE, discover};
use crate::registry::{Client, RegistryError};

/// Annotation on an `index.json` entry whose index a platform filter
/// rewrote: the digest the registry served.
pub const SOURCE_DIGEST: &str = "io.github.airlock.source-digest";

/// How deep indexes may nest (an index of indexes of manifests is depth 2).
const MAX_DEPTH: usize = 4;

mod fetch;
mod resolve;

use resolve::join_platforms;
pub use resolve::resolve;

/// Why one image could not be exported.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("the index has no {wanted} (it has: {available})")]
    MissingPlatform { wanted: String, available: String },
    #[error("the image is {actual}, not {wanted}")]
    WrongPlatform { wanted: String, actual: String },
    #[error("{0}")]
    Invalid(String),
    #[error("blob {0} did not arrive")]
    BlobMissing(Digest),
}

/// What the user asked of an export.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Keep only these platforms of multi-platform images (empty: all).
    pub platforms: Vec<Platform>,
    /// Annotations recorded on every `index.json` entry written.
    pub annotations: BTreeMap<String, String>,
    /// Blobs in flight at once.
    pub jobs: usize,
    /// What to do with legacy schema1 images.
    pub schema1: Schema1Mode,
    /// Which signatures, SBOMs and attestations come along.
    pub referrers: ReferrerOptions,
    /// Leave out the blobs this earlier bundle carried (`--since`).
    pub since: Option<Arc<Base>>,
    /// From a lock: the referrers to carry, instead of asking again.
    pub locked_referrers: Option<Vec<LockedImage>>,
}

/// One image, resolved: what the bundle will hold for it.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    pub reference: ImageRef,
    /// The manifest or index the bundle names (filtered when asked).
    pub root: Manifest,
    /// What the registry served for the reference.
    pub source_digest: Digest,
    /// Every manifest, children first, the root last.
    pub manifests: Vec<Manifest>,
    /// Configs and layers, each once.
    pub blobs: Vec<Descriptor>,
    pub platforms: Vec<Platform>,
    /// A schema1 image still to be converted (its layers' diff IDs are
    /// computed as they download); `root` is then the schema1 manifest.
    pub pending: Option<Pending>,
    /// For a referrer: the manifest it refers to.
    pub subject: Option<Digest>,
    /// For a referrer: the name of the image it belongs to.
    pub referrer_of: Option<String>,
    /// For a referrer: its artifact type.
    pub artifact_type: Option<String>,
}

/// The outcome of a run.
#[derive(Debug, Default)]
pub struct ExportReport {
    pub exported: Vec<ResolvedImage>,
    pub failed: Vec<(String, String)>,
    pub blobs_fetched: usize,
    pub blobs_present: usize,
    /// Left out because the bundle given to `--since` carried them.
    pub blobs_omitted: usize,
    pub bytes_fetched: u64,
    pub elapsed: Duration,
}

impl ExportReport {
    /// The one-line summary every run ends with.
    pub fn summary(&self) -> String {
        let manifests: usize = self.exported.iter().map(|i| i.manifests.len()).sum();
        let omitted = if self.blobs_omitted > 0 {
            format!(", {} left out (in the base)", self.blobs_omitted)
        } else {
            String::new()
        };
        format!(
            "exported {}: {}, {} fetched ({} already present{omitted}), {} in {:.1} s, {}",
            plural(self.exported.len(), "image"),
            plural(manifests, "manifest"),
            plural(self.blobs_fetched, "blob"),
            self.blobs_present,
            human_bytes(self.bytes_fetched),
            self.elapsed.as_secs_f64(),
            rate(self.bytes_fetched, self.elapsed),
        )
    }
}

/// Exports `references` into `layout`.
pub async fn export_to_layout(
    client: &Client,
    layout: &Layout,
    references: &[ImageRef],
    options: &ExportOptions,
    progress: &Progress,
) -> Result<ExportReport, LayoutError> {
    let jobs = options.jobs.max(1);
    let mut report = ExportReport::default();
    // Blobs are fetched as each image resolves, from all images in one
    // pool, while the rest are still being resolved. Schema1 images fetch
    // their own layers as they are converted, after resolution.
    let (found, found_rx) = tokio::sync::mpsc::unbounded_channel();
    let resolving = async {
        let images = resolve_all(
            client,
            layout,
            references,
            options,
            progress,
            &mut report,
            &|image| {
                if image.pending.is_none() {
                    let _ = found.send(fetch::Found {
                        reference: image.reference.clone(),
                        blobs: image.blobs.clone(),
                    });
                }
            },
        )
        .await;
        drop(found);
        images
    };
    let fetching = fetch::fetch_all(
        client,
        layout,
        found_rx,
        options.since.as_deref(),
        jobs,
        progress,
    );
    let (images, (fetched, bars)) = tokio::join!(resolving, fetching);
    report.blobs_fetched += fetched.fetched;
    report.bytes_fetched += fetched.bytes;
    report.blobs_present += fetched.present;
    report.blobs_omitted += fetched.omitted;
    let failures = fetched.failures;
    let images = convert_pending(client, layout, images, jobs, progress, &mut report).await;
    for bar in &bars {
        bar.finish_and_clear();
    }

    // Commit complete images: their manifests, all at once, then the
    // index entries.
    let mut complete = Vec::new();
    for image in images {
        match check_complete(layout, &image, &failures, options.since.as_deref()) {
            Ok(()) => complete.push(image),
            Err(e) => report
                .failed
                .push((image.reference.name(), crate::error_chain(&e))),
        }
    }
    let manifests: Vec<(&Digest, &[u8])> = complete
        .iter()
        .flat_map(|i| i.manifests.iter().map(|m| (&m.digest, &m.body[..])))
        .collect();
    layout.write_small_blobs(&manifests)?;
    let mut index = layout.read_index()?;
    for image in complete {
        index.upsert(index_entry(&image, &options.annotations));
        report.exported.push(image);
    }
    record_base(layout, &report.exported, options.since.as_deref())?;
    layout.write_index(&index)?;
    layout.finish()?;
    progress.finish();
    report.elapsed = progress.elapsed();
    Ok(report)
}

/// Resolves every image, several at a time; failures go into the report.
/// `found` sees each image as soon as it is resolved (in no set order; the
/// list returned keeps the order of `references`, referrers after).
///
/// `cache` is a layout whose manifests need not be fetched again and where
/// configs read to check a platform are kept.
pub async fn resolve_all(
    client: &Client,
    cache: &Layout,
    references: &[ImageRef],
    options: &ExportOptions,
    progress: &Progress,
    report: &mut ExportReport,
    found: &(dyn Fn(&ResolvedImage) + Sync),
) -> Vec<ResolvedImage> {
    let mut resolving = futures::stream::iter(references.iter().cloned().enumerate())
        .map(|(n, r)| {
            let client = client.clone();
            let cache = cache.clone();
            let platforms = options.platforms.clone();
            let mode = options.schema1;
            async move {
                let result = tokio::spawn({
                    let r = r.clone();
                    async move { resolve(&client, &cache, &r, &platforms, mode).await }
                })
                .await
                .unwrap_or_else(|e| Err(ImageError::Invalid(format!("resolve task failed: {e}"))));
                (n, r, result)
            }
        })
        .buffer_unordered(options.jobs.max(1));
    let mut resolved = Vec::with_capacity(references.len());
    while let Some((n, reference, result)) = resolving.next().await {
        if let Ok(image) = &result {
            found(image);
        }
        resolved.push((n, reference, result));
    }
    resolved.sort_by_key(|(n, _, _)| *n);

    let mut images = Vec::new();
    let mut referrers = Vec::new();
    for (_, reference, result) in resolved {
        match result {
            Ok(image) => {
                if image.root.digest != image.source_digest {
                    progress.println(&format!(
                        "{}: kept {}; index {} filtered to {}",
                        reference.name(),
                        join_platforms(&image.platforms),
                        image.source_digest,
                        image.root.digest
                    ));
                }
                images.push(image);
            }
            Err(e) => report
                .failed
                .push((reference.name(), crate::error_chain(&e))),
        }
    }

    // From a lock: exactly the referrers it lists, by digest.
    if let Some(locked) = &options.locked_referrers {
        for li in locked {
            let reference = match ImageRef::parse(&li.reference) {
                Ok(r) => r.with_digest(li.digest.clone()),
                Err(e) => {
                    report
                        .failed
                        .push((li.reference.clone(), crate::error_chain(&e)));
                    continue;
                }
            };
            match resolve(client, cache, &reference, &[], options.schema1).await {
                Ok(mut r) => {
                    r.subject = li.subject.clone();
                    r.referrer_of = li.subject_image.clone();
                    r.artifact_type = li.artifact_type.clone();
                    found(&r);
                    images.push(r);
                }
                Err(e) => report
                    .failed
                    .push((li.reference.clone(), crate::error_chain(&e))),
            }
        }
        return images;
    }

    // Signatures, SBOMs and attestations of every image, after them.
    let discovered = futures::future::join_all(
        images
            .iter()
            .map(|i| discover(client, cache, i, &options.referrers, options.schema1)),
    )
    .await;
    let mut names: HashSet<String> = images.iter().map(|i| i.reference.name()).collect();
    for (discovered, warnings) in discovered {
        for w in warnings {
            progress.println(&format!("warning: {w}"));
        }
        for r in discovered {
            if names.insert(r.reference.name()) {
                found(&r);
                referrers.push(r);
            }
        }
    }
    images.extend(referrers);
    images
}

/// Keeps the layout's record of what it leaves out up to date: what this
/// run left out, and what earlier runs left out that is still missing.
fn record_base(
    layout: &Layout,
    exported: &[ResolvedImage],
    since: Option<&Base>,
) -> Result<(), LayoutError> {
    let path = layout_base_path(layout.root());
    let old = read_layout_base(layout.root());
    let mut omitted: BTreeMap<Digest, LockedBlob> = BTreeMap::new();
    if let Some(old) = &old {
        for b in &old.omitted {
            omitted.insert(b.digest.clone(), b.clone());
        }
    }
    if let Some(base) = since {
        for image in exported {
            for b in image.blobs.iter().filter(|b| base.has(&b.digest)) {
                omitted.insert(b.digest.clone(), LockedBlob::from(b));
            }
        }
    }
    omitted.retain(|d, b| !layout.has_blob(d, b.size));
    if omitted.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(LayoutError::Io { path, source: e })
            }
            _ => Ok(()),
        };
    }
    let builds_on = since
        .map(|b| b.description.clone())
        .or(old.map(|o| o.builds_on))
        .unwrap_or_default();
    let info = BaseInfo {
        builds_on,
        omitted: omitted.into_values().collect(),
    };
    let mut bytes = serde_json::to_vec_pretty(&info).expect("base serialises");
    bytes.push(b'\n');
    layout.write_file(crate::base::LAYOUT_FILE, &bytes)
}

/// Whether every blob an image names is in place (or left out for
/// `--since`), so its manifests may be written.
fn check_complete(
    layout: &Layout,
    image: &ResolvedImage,
    failures: &HashMap<Digest, String>,
    since: Option<&Base>,
) -> Result<(), ImageError> {
    for blob in &image.blobs {
        if let Some(e) = failures.get(&blob.digest) {
            return Err(ImageError::Invalid(e.clone()));
        }
        let omitted = since.is_some_and(|b| b.has(&blob.digest));
        if !omitted && !layout.has_blob(&blob.digest, blob.size) {
            return Err(ImageError::BlobMissing(blob.digest.clone()));
        }
    }
    Ok(())
}

/// The `index.json` entry naming an exported image.
pub fn index_entry(image: &ResolvedImage, extra: &BTreeMap<String, String>) -> Descriptor {
    let name = image.reference.name();
    let mut annotations = extra.clone();
    annotations.insert(REF_NAME.to_string(), name.clone());
    annotations.insert(CONTAINERD_NAME.to_string(), name);
    if image.root.digest != image.source_digest {
        annotations.insert(SOURCE_DIGEST.to_string(), image.source_digest.to_string());
    }
    if let (Some(subject), Some(owner)) = (&image.subject, &image.referrer_of) {
        annotations.insert(SUBJECT.to_string(), subject.to_string());
        annotations.insert(SUBJECT_IMAGE.to_string(), owner.clone());
    }
    let platform = match (image.root.kind, image.platforms.as_slice()) {
        (Kind::Image, [one]) => Some(one.clone()),
        _ => None,
    };
    Descriptor {
        media_type: image.root.media_type.clone(),
        digest: image.root.digest.clone(),
        size: image.root.body.len() as u64,
        platform,
        artifact_type: image.artifact_type.clone(),
        annotations: Some(annotations),
    }
}

impl crate::registry::RetryClass for ImageError {
    fn is_corrupt(&self) -> bool {
        matches!(self, ImageError::Registry(e) if e.is_corrupt())
    }
}

/// Reads a list file: one reference a line, `#` comments, blank lines.
pub fn parse_list_file(text: &str) -> Vec<(usize, String)> {
    text.lines()
        .enumerate()
        .map(|(n, line)| {
            (
                n + 1,
                line.split('#').next().unwrap_or("").trim().to_string(),
            )
        })
        .filter(|(_, line)| !line.is_empty())
        .collect()
}

/// Keeps only the first of references that name the same image.
pub fn dedupe(references: Vec<ImageRef>) -> Vec<ImageRef> {
    let mut seen = HashSet::new();
    references
        .into_iter()
        .filter(|r| seen.insert(r.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_file_skips_comments_and_blanks() {
        let lines = parse_list_file("# images\nalpine:3.20\n\n  busybox # the small one\n");
        assert_eq!(
            lines,
            vec![(2, "alpine:3.20".into()), (4, "busybox".into())]
        );
    }
}
