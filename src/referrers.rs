//! Signatures, SBOMs and attestations carried with their images.
//!
//! On export, every manifest of an image (and, recursively, of what refers
//! to it) is asked for its referrers: the OCI referrers API or its tag
//! fallback, and cosign's `sha256-<hex>.sig`, `.att` and `.sbom` tags.
//! Each referrer becomes an entry of its own in the bundle, marked with
//! its subject and the image it belongs to; its manifests and blobs are
//! ordinary bundle content. On import, referrers are pushed after their
//! subjects, and on a registry without the API the fallback index is
//! merged, never replaced.

use std::collections::{BTreeMap, HashSet};

use futures::future::join_all;

use crate::convert::Schema1Mode;
use crate::digest::Digest;
use crate::export::{ResolvedImage, resolve};
use crate::layout::Layout;
use crate::manifest::{Descriptor, Kind};
use crate::reference::ImageRef;
use crate::registry::Client;
use crate::registry::referrers::fallback_tag;

/// Annotation on a bundle entry: the digest of the manifest it refers to.
pub const SUBJECT: &str = "io.github.airlock.subject";
/// Annotation on a bundle entry: the name of the image it belongs to.
pub const SUBJECT_IMAGE: &str = "io.github.airlock.subject-image";
/// cosign's tag suffixes, after `sha256-<hex>`.
const COSIGN: [&str; 3] = ["sig", "att", "sbom"];
/// How deep referrers of referrers are followed.
const MAX_DEPTH: usize = 4;

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct ReferrerOptions {
    pub enabled: bool,
    /// Keep only referrers of these types (empty: all). A referrer's type
    /// is its `artifactType`, else its config's media type; a cosign tag's
    /// is also `cosign.sig`, `cosign.att` or `cosign.sbom`.
    pub types: Vec<String>,
}

impl Default for ReferrerOptions {
    fn default() -> Self {
        ReferrerOptions {
            enabled: true,
            types: Vec::new(),
        }
    }
}

/// What a referrer is, as `inspect` counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ArtifactKind {
    Signature,
    Sbom,
    Attestation,
    Other,
}

/// Classifies a referrer by its type and, for cosign, its tag.
pub fn classify(artifact_type: Option<&str>, name: &str) -> ArtifactKind {
    let t = artifact_type.unwrap_or("").to_ascii_lowercase();
    if name.ends_with(".sig") || t.contains("signature") || t.contains(".sig") {
        ArtifactKind::Signature
    } else if name.ends_with(".sbom") || ["sbom", "spdx", "cyclonedx"].iter().any(|w| t.contains(w))
    {
        ArtifactKind::Sbom
    } else if name.ends_with(".att") || t.contains("attestation") || t.contains("in-toto") {
        ArtifactKind::Attestation
    } else {
        ArtifactKind::Other
    }
}

/// "signed, SBOM, 2 attestations" for a list of kinds.
pub fn describe(kinds: &[ArtifactKind]) -> String {
    let count = |k| kinds.iter().filter(|x| **x == k).count();
    let mut parts = Vec::new();
    if count(ArtifactKind::Signature) > 0 {
        parts.push("signed".to_string());
    }
    match count(ArtifactKind::Sbom) {
        0 => {}
        1 => parts.push("SBOM".to_string()),
        n => parts.push(format!("{n} SBOMs")),
    }
    match count(ArtifactKind::Attestation) {
        0 => {}
        1 => parts.push("1 attestation".to_string()),
        n => parts.push(format!("{n} attestations")),
    }
    match count(ArtifactKind::Other) {
        0 => {}
        1 => parts.push("1 other artifact".to_string()),
        n => parts.push(format!("{n} other artifacts")),
    }
    parts.join(", ")
}

/// Finds everything that refers to `image`'s manifests, recursively, each
/// resolved as an image of its own. Returns them and warnings to print.
pub async fn discover(
    client: &Client,
    cache: &Layout,
    image: &ResolvedImage,
    options: &ReferrerOptions,
    schema1: Schema1Mode,
) -> (Vec<ResolvedImage>, Vec<String>) {
    let mut found = Vec::new();
    let mut warnings = Vec::new();
    if !options.enabled {
        return (found, warnings);
    }
    // One tag listing serves every fallback and cosign lookup below.
    let tags = client.tags(&image.reference).await.ok().flatten();
    let tags = tags.as_ref();
    let mut seen: HashSet<Digest> = image.manifests.iter().map(|m| m.digest.clone()).collect();
    let mut names: HashSet<String> = HashSet::new();
    let mut level: Vec<Digest> = image.manifests.iter().map(|m| m.digest.clone()).collect();

    // Referrers of what the registry served, when the bundle holds
    // something else (a filtered index, a converted schema1 image).
    if image.source_digest != image.root.digest {
        let lost = referrers_of(
            client,
            &image.reference,
            &image.source_digest,
            options,
            tags,
        )
        .await;
        if !lost.0.is_empty() {
            warnings.push(format!(
                "{}: {} referrer(s) of {} (signatures, SBOMs) are left out: they refer to \
                 the registry's manifest, not to {} in the bundle",
                image.reference.name(),
                lost.0.len(),
                image.source_digest,
                image.root.digest
            ));
        }
    }

    for _ in 0..MAX_DEPTH {
        if level.is_empty() {
            break;
        }
        let lists = join_all(
            level
                .iter()
                .map(|d| referrers_of(client, &image.reference, d, options, tags)),
        )
        .await;
        let mut next = Vec::new();
        for (subject, (refs, errs)) in level.iter().zip(lists) {
            warnings.extend(errs);
            for (reference, artifact_type) in refs {
                if !names.insert(reference.name()) {
                    continue;
                }
                match resolve(client, cache, &reference, &[], schema1).await {
                    Ok(mut r) => {
                        // A manifest listed twice (by the API and a cosign
                        // tag) is carried once by digest, once by tag.
                        if reference.digest().is_some() && !seen.insert(r.root.digest.clone()) {
                            continue;
                        }
                        r.subject = Some(subject.clone());
                        r.referrer_of = Some(image.reference.name());
                        r.artifact_type = artifact_type.or_else(|| config_type(&r));
                        if !options.types.is_empty() && !type_matches(&r, &options.types) {
                            continue;
                        }
                        next.extend(
                            r.manifests
                                .iter()
                                .filter(|m| {
                                    reference.digest().is_some() || seen.insert(m.digest.clone())
                                })
                                .map(|m| m.digest.clone()),
                        );
                        found.push(r);
                    }
                    Err(e) => warnings.push(format!(
                        "{}: referrer {reference} skipped: {}",
                        image.reference.name(),
                        crate::error_chain(&e)
                    )),
                }
            }
        }
        level = next;
    }
    (found, warnings)
}

/// The referrers of one manifest: the API or its fallback, and cosign tags.
async fn referrers_of(
    client: &Client,
    image: &ImageRef,
    subject: &Digest,
    options: &ReferrerOptions,
    tags: Option<&HashSet<String>>,
) -> (Vec<(ImageRef, Option<String>)>, Vec<String>) {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    match client.referrers(image, subject, tags).await {
        Ok(listing) => {
            for d in listing.descriptors() {
                if !wanted(d, options) {
                    continue;
                }
                out.push((
                    ImageRef::from_parts(
                        image.registry(),
                        image.repository(),
                        None,
                        Some(d.digest.clone()),
                    ),
                    d.artifact_type.clone(),
                ));
            }
        }
        Err(e) => warnings.push(format!(
            "{}: cannot list referrers of {subject}: {}",
            image.name(),
            crate::error_chain(&e)
        )),
    }
    let cosign = join_all(COSIGN.iter().map(|suffix| {
        let tag = format!("{}.{suffix}", fallback_tag(subject));
        let listed = tags.map(|t| t.contains(&tag));
        let r = ImageRef::from_parts(image.registry(), image.repository(), Some(&tag), None);
        async move {
            let found = match listed {
                // The tag list says: no need to ask.
                Some(false) => Ok(None),
                _ => client.head_manifest(&r).await,
            };
            (r, suffix, found)
        }
    }))
    .await;
    for (r, suffix, found) in cosign {
        match found {
            Ok(Some(_)) => {
                let pseudo = format!("cosign.{suffix}");
                if options.types.is_empty() || options.types.contains(&pseudo) {
                    out.push((r, None));
                }
            }
            Ok(None) => {}
            Err(e) => warnings.push(format!("{}: {}", r.name(), crate::error_chain(&e))),
        }
    }
    (out, warnings)
}

/// Whether a descriptor from a referrers listing passes the type filter.
fn wanted(d: &Descriptor, options: &ReferrerOptions) -> bool {
    options.types.is_empty()
        || d
            .artifact_type
            .as_ref()
            .is_some_and(|t| options.types.contains(t))
        // Without an artifactType the config decides, after resolving.
        || d.artifact_type.is_none()
}

fn type_matches(r: &ResolvedImage, types: &[String]) -> bool {
    if r.reference.tag().is_some() {
        return true;
    }
    r.artifact_type.as_ref().is_some_and(|t| types.contains(t))
}

/// An artifact's type when it names none: its config's media type.
fn config_type(r: &ResolvedImage) -> Option<String> {
    (r.root.kind == Kind::Image)
        .then(|| r.root.blobs.first().map(|c| c.media_type.clone()))
        .flatten()
}

/// The descriptor a referrers index lists for a referrer manifest.
pub fn listing_descriptor(
    media_type: &str,
    digest: &Digest,
    body: &[u8],
    artifact_type: Option<&str>,
) -> Descriptor {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Head {
        artifact_type: Option<String>,
        annotations: Option<BTreeMap<String, String>>,
        config: Option<Descriptor>,
    }
    let head: Option<Head> = serde_json::from_slice(body).ok();
    let (own_type, annotations, config) = match head {
        Some(h) => (
            h.artifact_type,
            h.annotations,
            h.config.map(|c| c.media_type),
        ),
        None => (None, None, None),
    };
    Descriptor {
        media_type: media_type.to_string(),
        digest: digest.clone(),
        size: body.len() as u64,
        platform: None,
        artifact_type: own_type.or(artifact_type.map(str::to_string)).or(config),
        annotations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_common_artifact_types() {
        use ArtifactKind::*;
        assert_eq!(
            classify(Some("application/vnd.dev.cosign.artifact.sig.v1+json"), "x"),
            Signature
        );
        assert_eq!(
            classify(Some("application/vnd.cncf.notary.signature"), "x"),
            Signature
        );
        assert_eq!(classify(Some("application/spdx+json"), "x"), Sbom);
        assert_eq!(
            classify(Some("application/vnd.in-toto+json"), "x"),
            Attestation
        );
        assert_eq!(classify(None, "h/r:sha256-ab.att"), Attestation);
        assert_eq!(classify(Some("application/x-thing"), "x"), Other);
        assert_eq!(
            describe(&[Signature, Sbom, Attestation, Attestation]),
            "signed, SBOM, 2 attestations"
        );
    }
}
