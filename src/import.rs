//! Import: from a bundle into a registry, digests preserved.
//!
//! A run plans first: it reads every named image's manifests from the
//! bundle (verifying each) and checks that every blob file is there with
//! its size, so a broken image is refused before anything of it is pushed.
//! Then blobs go up, each digest uploaded once and mounted into the other
//! repositories that need it. Last, per image whose blobs all arrived:
//! child manifests by digest, then the root under its tag. A tag therefore
//! never points at an incomplete image, and a re-run finds what is there
//! with HEAD requests and sends only what is missing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};

use crate::bundle::{Bundle, BundleError};
use crate::digest::Digest;
use crate::layout::ref_name;
use crate::manifest::{Descriptor, Kind, Manifest, ManifestError};
use crate::progress::{Progress, human_bytes, plural, rate};
use crate::reference::{ImageRef, Target};
use crate::referrers::{SUBJECT, SUBJECT_IMAGE, listing_descriptor};
use crate::registry::{Client, Pushed, RegistryError};

/// How deep indexes may nest in a bundle.
const MAX_DEPTH: usize = 4;

/// Why one image of a bundle cannot be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{0}")]
    Invalid(String),
}

/// What the user asked of an import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub target: Target,
    /// Import only these images (names as the bundle has them, or as the
    /// user wrote them); empty: all.
    pub only: Vec<String>,
    pub dry_run: bool,
    pub jobs: usize,
}

/// An image that could not be imported: its name and why.
pub type Failure = (String, String);

/// One image of the bundle, planned for import.
#[derive(Debug, Clone)]
pub struct PlannedImage {
    /// The name in the bundle.
    pub name: String,
    /// Where it goes.
    pub target: ImageRef,
    /// The root's index.json descriptor.
    pub root: Descriptor,
    /// Every manifest, children first, the root last.
    pub manifests: Vec<Manifest>,
    /// Configs and layers, each once.
    pub blobs: Vec<Descriptor>,
    /// For a signature, SBOM or attestation: the manifest it refers to.
    pub subject: Option<Digest>,
    /// For a referrer: the image it belongs to.
    pub subject_image: Option<String>,
}

/// The outcome of a run.
#[derive(Debug, Default)]
pub struct ImportReport {
    pub imported: Vec<PlannedImage>,
    pub failed: Vec<(String, String)>,
    pub blobs_uploaded: usize,
    pub blobs_mounted: usize,
    pub blobs_present: usize,
    pub bytes_uploaded: u64,
    pub manifests_pushed: usize,
    pub elapsed: Duration,
    pub dry_run: bool,
}

impl ImportReport {
    /// The one-line summary every run ends with.
    pub fn summary(&self) -> String {
        let verb = if self.dry_run {
            "would import"
        } else {
            "imported"
        };
        let sent = if self.dry_run {
            "to upload"
        } else {
            "uploaded"
        };
        format!(
            "{verb} {}: {} {sent} ({}), {} mounted, {} already present, {} in {:.1} s, {}",
            plural(self.imported.len(), "image"),
            plural(self.blobs_uploaded, "blob"),
            human_bytes(self.bytes_uploaded),
            self.blobs_mounted,
            self.blobs_present,
            plural(self.manifests_pushed, "manifest"),
            self.elapsed.as_secs_f64(),
            rate(self.bytes_uploaded, self.elapsed),
        )
    }
}

/// Reads the bundle's images and where each goes.
pub fn plan(
    bundle: &Bundle,
    options: &ImportOptions,
) -> Result<(Vec<PlannedImage>, Vec<Failure>), BundleError> {
    let entries = bundle.entries()?;
    let mut planned = Vec::new();
    let mut failed = Vec::new();
    let mut names = HashSet::new();
    for entry in &entries {
        let Some(name) = ref_name(entry) else {
            tracing::warn!(
                "index.json entry {} has no {} annotation; skipped",
                entry.digest,
                crate::layout::REF_NAME
            );
            continue;
        };
        // An image's signatures and SBOMs come along with it.
        let owner = entry
            .annotations
            .as_ref()
            .and_then(|a| a.get(SUBJECT_IMAGE));
        if !options.only.is_empty()
            && !matches_filter(name, &options.only)
            && !owner.is_some_and(|o| matches_filter(o, &options.only))
        {
            continue;
        }
        if !names.insert(name.to_string()) {
            continue;
        }
        match plan_image(bundle, entry, name, &options.target) {
            Ok(p) => planned.push(p),
            Err(e) => failed.push((name.to_string(), crate::error_chain(&e))),
        }
    }
    for wanted in &options.only {
        if !names
            .iter()
            .any(|n| matches_filter(n, std::slice::from_ref(wanted)))
        {
            failed.push((wanted.clone(), "the bundle has no such image".to_string()));
        }
    }
    Ok((planned, failed))
}

/// Whether a bundle name is one of the `--image` filters, compared as
/// normalised references so that `alpine:3.20` finds
/// `docker.io/library/alpine:3.20`.
fn matches_filter(name: &str, filters: &[String]) -> bool {
    let normal = ImageRef::parse(name).map(|r| r.name()).ok();
    filters.iter().any(|f| {
        f == name
            || ImageRef::parse(f)
                .ok()
                .map(|r| r.name())
                .is_some_and(|n| Some(n) == normal)
    })
}

fn plan_image(
    bundle: &Bundle,
    entry: &Descriptor,
    name: &str,
    target: &Target,
) -> Result<PlannedImage, ImportError> {
    let target_ref = target_for(name, entry, target)?;
    let mut manifests = Vec::new();
    let mut blobs = Vec::new();
    let mut seen = HashSet::new();
    let mut ancestors = Vec::new();
    collect(
        bundle,
        entry,
        0,
        &mut ancestors,
        &mut manifests,
        &mut blobs,
        &mut seen,
    )?;
    // Refuse before pushing anything: every blob present, right size.
    for blob in &blobs {
        bundle.check_blob(&blob.digest, blob.size)?;
    }
    let annotation = |key: &str| entry.annotations.as_ref().and_then(|a| a.get(key)).cloned();
    let subject = annotation(SUBJECT)
        .map(|d| d.parse::<Digest>())
        .transpose()
        .map_err(|e| ImportError::Invalid(format!("{SUBJECT}: {e}")))?;
    Ok(PlannedImage {
        name: name.to_string(),
        target: target_ref,
        root: entry.clone(),
        manifests,
        blobs,
        subject,
        subject_image: annotation(SUBJECT_IMAGE),
    })
}

/// Where an image named `name` in the bundle lands under `target`.
fn target_for(name: &str, entry: &Descriptor, target: &Target) -> Result<ImageRef, ImportError> {
    // A layout written by other tools may name an image by its tag alone
    // (`oci:DIR:1.0`); then the target prefix is the repository.
    if !name.contains('/') {
        let Some(prefix) = &target.prefix else {
            return Err(ImportError::Invalid(format!(
                "the bundle names this image only as {name:?}; give the repository \
                 with --to REGISTRY/REPOSITORY"
            )));
        };
        let candidate = format!("{}/{prefix}:{name}", target.registry);
        return ImageRef::parse(&candidate)
            .map_err(|e| ImportError::Invalid(crate::error_chain(&e)));
    }
    let source = ImageRef::parse(name).map_err(|e| ImportError::Invalid(crate::error_chain(&e)))?;
    // A digest-only name is pushed by digest: the root's own.
    if source.tag().is_none() && source.digest() != Some(&entry.digest) {
        return Err(ImportError::Invalid(format!(
            "the name says digest {} but the entry is {}",
            source.digest().map(|d| d.to_string()).unwrap_or_default(),
            entry.digest
        )));
    }
    Ok(source.retarget(target))
}

/// Reads a manifest from the bundle and, for an index, its children first.
fn collect(
    bundle: &Bundle,
    entry: &Descriptor,
    depth: usize,
    ancestors: &mut Vec<Digest>,
    manifests: &mut Vec<Manifest>,
    blobs: &mut Vec<Descriptor>,
    seen: &mut HashSet<Digest>,
) -> Result<(), ImportError> {
    if ancestors.contains(&entry.digest) {
        return Err(ImportError::Invalid(format!(
            "index {} lists itself",
            entry.digest
        )));
    }
    if depth > MAX_DEPTH {
        return Err(ImportError::Invalid(format!(
            "indexes nest deeper than {MAX_DEPTH} levels at {}",
            entry.digest
        )));
    }
    if manifests.iter().any(|m| m.digest == entry.digest) {
        return Ok(());
    }
    if !Manifest::is_manifest_type(&entry.media_type) {
        return Err(ImportError::Invalid(format!(
            "{} has media type {:?}, which is not a manifest type airlock knows",
            entry.digest, entry.media_type
        )));
    }
    let body = bundle.read_manifest(&entry.digest, entry.size)?;
    let manifest = Manifest::parse(entry.digest.clone(), body, Some(&entry.media_type))?;
    match manifest.kind {
        Kind::Index => {
            ancestors.push(manifest.digest.clone());
            for child in &manifest.manifests {
                collect(bundle, child, depth + 1, ancestors, manifests, blobs, seen)?;
            }
            ancestors.pop();
        }
        Kind::Image => {
            for b in &manifest.blobs {
                if seen.insert(b.digest.clone()) {
                    blobs.push(b.clone());
                }
            }
        }
        Kind::Schema1 => {
            return Err(ImportError::Invalid(format!(
                "{} is a Docker schema1 manifest, which registries no longer accept",
                entry.digest
            )));
        }
    }
    manifests.push(manifest);
    Ok(())
}

/// One blob to place in one repository.
#[derive(Clone)]
struct BlobTask {
    target: ImageRef,
    blob: Descriptor,
    /// Where the bytes are, for messages.
    location: String,
    /// The image whose bar counts the bytes.
    image: usize,
}

/// How placing one blob went.
enum Outcome {
    Present,
    Uploaded(u64),
    Mounted,
    WouldUpload(u64),
}

/// Imports the planned images into the target registry.
pub async fn import_bundle(
    client: &Client,
    bundle: &Arc<Bundle>,
    images: Vec<PlannedImage>,
    options: &ImportOptions,
    progress: &Progress,
) -> ImportReport {
    let jobs = options.jobs.max(1);
    let mut report = ImportReport {
        dry_run: options.dry_run,
        ..ImportReport::default()
    };

    // An incremental bundle leaves blobs out: before anything is pushed,
    // the target must already hold each one its images need.
    let base = bundle.base();
    let mut images = images;
    if let Some(base) = &base {
        let mut ready = Vec::new();
        for image in images {
            let mut missing = Vec::new();
            for b in image.blobs.iter().filter(|b| base.omits(&b.digest)) {
                match client.blob_exists(&image.target, &b.digest).await {
                    Ok(Some(_)) => {}
                    Ok(None) => missing.push(b.digest.to_string()),
                    Err(e) => missing.push(format!("{} ({})", b.digest, crate::error_chain(&e))),
                }
            }
            if missing.is_empty() {
                ready.push(image);
            } else {
                report.failed.push((
                    image.name.clone(),
                    format!(
                        "the target lacks {} blob(s) this incremental bundle leaves out: {}. \
                         Import what it builds on ({}) first",
                        missing.len(),
                        missing.join(", "),
                        base.builds_on
                    ),
                ));
            }
        }
        images = ready;
    }

    // Each digest is uploaded to the first repository that needs it; the
    // others mount it from there once it is in place.
    let mut first: Vec<BlobTask> = Vec::new();
    let mut rest: Vec<BlobTask> = Vec::new();
    let mut home: HashMap<Digest, String> = HashMap::new();
    let mut placed: HashSet<(String, Digest)> = HashSet::new();
    for (i, image) in images.iter().enumerate() {
        for blob in &image.blobs {
            let repo = image.target.repository().to_string();
            let omitted = base.as_ref().is_some_and(|b| b.omits(&blob.digest));
            if omitted || !placed.insert((repo.clone(), blob.digest.clone())) {
                continue;
            }
            let task = BlobTask {
                target: image.target.clone(),
                blob: blob.clone(),
                location: bundle.location(&blob.digest),
                image: i,
            };
            if home.contains_key(&blob.digest) {
                rest.push(task);
            } else {
                home.insert(blob.digest.clone(), repo);
                first.push(task);
            }
        }
    }
    // An archive is read part by part, front to back, as far as the blobs
    // in flight allow.
    first.sort_by_key(|t| bundle.position(&t.blob.digest));
    let bars: Vec<_> = images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            let bytes: u64 = first
                .iter()
                .filter(|t| t.image == i)
                .map(|t| t.blob.size)
                .sum();
            progress.add_total(bytes);
            progress.image(&image.target.name(), bytes)
        })
        .collect();

    let mut failures: HashMap<(String, Digest), String> = HashMap::new();
    for (phase, tasks) in [(0, first), (1, rest)] {
        let home = &home;
        let results: Vec<(BlobTask, Result<Outcome, RegistryError>)> = futures::stream::iter(tasks)
            .map(|task| {
                let client = client.clone();
                let bundle = bundle.clone();
                let from = (phase == 1)
                    .then(|| home.get(&task.blob.digest).cloned())
                    .flatten();
                let bar = bars[task.image].clone();
                let progress = progress.clone();
                let dry_run = options.dry_run;
                async move {
                    let t = task.clone();
                    let outcome = tokio::spawn(async move {
                        let meter = Arc::new(move |n| progress.advance(&bar, n));
                        place_blob(&client, bundle, &t, from.as_deref(), dry_run, meter).await
                    })
                    .await
                    .unwrap_or_else(|e| {
                        Err(RegistryError::Protocol {
                            what: format!("blob {}", task.blob.digest),
                            reason: format!("upload task failed: {e}"),
                        })
                    });
                    (task, outcome)
                }
            })
            .buffer_unordered(jobs)
            .collect()
            .await;
        for (task, outcome) in results {
            match outcome {
                Ok(Outcome::Present) => report.blobs_present += 1,
                Ok(Outcome::Mounted) => report.blobs_mounted += 1,
                Ok(Outcome::Uploaded(n)) | Ok(Outcome::WouldUpload(n)) => {
                    report.blobs_uploaded += 1;
                    report.bytes_uploaded += n;
                }
                Err(e) => {
                    failures.insert(
                        (
                            task.target.repository().to_string(),
                            task.blob.digest.clone(),
                        ),
                        crate::error_chain(&e),
                    );
                }
            }
        }
    }
    for bar in &bars {
        bar.finish_and_clear();
    }

    // Manifests, per image whose blobs are all in place; tags last.
    // Referrers go in later waves, after the manifest they refer to.
    let mut waiting = images;
    let mut failed_names: HashSet<String> = HashSet::new();
    let mut listings: BTreeMap<(String, Digest), (ImageRef, Vec<Descriptor>)> = BTreeMap::new();
    while !waiting.is_empty() {
        let pending_roots: HashSet<Digest> =
            waiting.iter().map(|i| i.root.digest.clone()).collect();
        let (mut wave, rest): (Vec<_>, Vec<_>) = waiting.into_iter().partition(|i| {
            i.subject
                .as_ref()
                .is_none_or(|s| !pending_roots.contains(s) || s == &i.root.digest)
        });
        if wave.is_empty() {
            // Referrers referring to each other in a circle: push them all.
            wave = rest;
            waiting = Vec::new();
        } else {
            waiting = rest;
        }
        let pushes = futures::stream::iter(wave)
            .map(|image| {
                let client = client.clone();
                let repo = image.target.repository().to_string();
                let failed_blob = image
                    .blobs
                    .iter()
                    .find_map(|b| failures.get(&(repo.clone(), b.digest.clone())).cloned());
                let owner_failed = image
                    .subject_image
                    .as_ref()
                    .filter(|o| failed_names.contains(*o))
                    .map(|o| format!("not pushed: the image it refers to, {o}, failed"));
                let dry_run = options.dry_run;
                async move {
                    if let Some(e) = failed_blob.or(owner_failed) {
                        return (image, Err(e));
                    }
                    if dry_run {
                        return (image, Ok(0));
                    }
                    let result = push_manifests(&client, &image)
                        .await
                        .map_err(|e| crate::error_chain(&e));
                    (image, result)
                }
            })
            .buffer_unordered(jobs)
            .collect::<Vec<_>>()
            .await;
        for (image, result) in pushes {
            match result {
                Ok(n) => {
                    report.manifests_pushed += n;
                    // A referrer pushed by digest is listed under its
                    // subject; one pushed by a (cosign) tag is found by it.
                    if let (Some(subject), None) = (&image.subject, image.target.tag()) {
                        let root = image.manifests.last().expect("a root");
                        let d = listing_descriptor(
                            &root.media_type,
                            &root.digest,
                            &root.body,
                            image.root.artifact_type.as_deref(),
                        );
                        listings
                            .entry((image.target.repository().to_string(), subject.clone()))
                            .or_insert_with(|| (image.target.clone(), Vec::new()))
                            .1
                            .push(d);
                    }
                    report.imported.push(image);
                }
                Err(e) => {
                    failed_names.insert(image.name.clone());
                    report.failed.push((image.name.clone(), e));
                }
            }
        }
    }
    if !options.dry_run {
        for ((_, subject), (target, descriptors)) in listings {
            if let Err(e) = client.add_referrers(&target, &subject, &descriptors).await {
                report.failed.push((
                    format!("referrers of {subject} in {}", target.repository()),
                    crate::error_chain(&e),
                ));
            }
        }
    }
    report.imported.sort_by(|a, b| a.name.cmp(&b.name));
    progress.finish();
    report.elapsed = progress.elapsed();
    report
}

/// Makes one blob present in one repository.
async fn place_blob(
    client: &Client,
    bundle: Arc<Bundle>,
    task: &BlobTask,
    from: Option<&str>,
    dry_run: bool,
    meter: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<Outcome, RegistryError> {
    let digest = &task.blob.digest;
    if client.blob_exists(&task.target, digest).await?.is_some() {
        return Ok(Outcome::Present);
    }
    if dry_run {
        return Ok(if from.is_some() {
            Outcome::Mounted
        } else {
            Outcome::WouldUpload(task.blob.size)
        });
    }
    let digest_owned = digest.clone();
    let open = move || {
        let meter = meter.clone();
        bundle
            .blob_stream(&digest_owned)
            .inspect_ok(move |chunk| meter(chunk.len() as u64))
    };
    let pushed = client
        .push_blob(&task.target, digest, task.blob.size, from, open)
        .await
        .map_err(|e| with_location(e, &task.location))?;
    Ok(match pushed {
        Pushed::Mounted => Outcome::Mounted,
        Pushed::Uploaded => Outcome::Uploaded(task.blob.size),
    })
}

/// Names where in the bundle the bytes were when they failed verification.
fn with_location(e: RegistryError, location: &str) -> RegistryError {
    match e {
        RegistryError::Verify { what, source } => RegistryError::Verify {
            what: format!("{what} ({location})"),
            source,
        },
        other => other,
    }
}

/// Pushes an image's manifests: children by digest, the root by tag (or by
/// digest when the bundle names none). Returns how many were pushed.
async fn push_manifests(client: &Client, image: &PlannedImage) -> Result<usize, RegistryError> {
    let (children, root) = image
        .manifests
        .split_last()
        .map(|(root, children)| (children, root))
        .expect("a planned image has at least its root");
    for child in children {
        client
            .put_manifest(
                &image.target,
                &child.digest.to_string(),
                &child.media_type,
                &child.body,
            )
            .await?;
    }
    let reference = match image.target.tag() {
        Some(tag) => tag.to_string(),
        None => root.digest.to_string(),
    };
    let pushed = client
        .put_manifest(&image.target, &reference, &root.media_type, &root.body)
        .await?;
    debug_assert_eq!(pushed, root.digest);
    Ok(image.manifests.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_matches_normalised_names() {
        let names = ["docker.io/library/alpine:3.20".to_string()];
        assert!(matches_filter(
            "docker.io/library/alpine:3.20",
            &["alpine:3.20".into()]
        ));
        assert!(!matches_filter(
            "docker.io/library/alpine:3.21",
            &["alpine:3.20".into()]
        ));
        assert!(matches_filter(&names[0], &names));
    }

    #[test]
    fn tag_only_names_need_a_repository() {
        let d = Descriptor {
            media_type: crate::manifest::OCI_MANIFEST.into(),
            digest: Digest::sha256_of(b"x"),
            size: 1,
            platform: None,
            artifact_type: None,
            annotations: None,
        };
        let bare = Target::parse("mirror:5000").unwrap();
        assert!(target_for("1.0", &d, &bare).is_err());
        let repo = Target::parse("mirror:5000/team/app").unwrap();
        assert_eq!(
            target_for("1.0", &d, &repo).unwrap().name(),
            "mirror:5000/team/app:1.0"
        );
    }
}
