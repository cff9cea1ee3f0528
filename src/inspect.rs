//! What a bundle holds, for people (`inspect`) and scripts (`--json`).

use std::collections::HashSet;

use serde::Serialize;

use crate::base::{BaseInfo, bundle_blobs};
use crate::bundle::Bundle;
use crate::layout::ref_name;
use crate::progress::human_bytes;
use crate::referrers::{ArtifactKind, SUBJECT, SUBJECT_IMAGE, classify, describe};

/// A bundle, described.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Inspection {
    /// `layout` or `archive`.
    pub kind: &'static str,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<u64>,
    pub images: Vec<ImageInfo>,
    pub parts: Vec<PartInfo>,
    /// Distinct blobs, manifests included.
    pub blobs: usize,
    /// Their total size.
    pub bytes: u64,
    /// For an incremental bundle: what it builds on and left out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseInfo>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageInfo {
    pub name: String,
    pub digest: String,
    pub media_type: String,
    pub platforms: Vec<String>,
    /// Bytes of every blob the image needs, manifests included.
    pub size: u64,
    pub blobs: usize,
    /// "signed, SBOM, 2 attestations" (empty when none).
    pub artifacts: String,
    /// The signatures, SBOMs and attestations that belong to it.
    pub referrers: Vec<ReferrerInfo>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReferrerInfo {
    pub name: String,
    pub digest: String,
    pub subject: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

/// A referrer's owner image, subject digest and artifact type.
type Owner = (String, String, Option<String>);

/// Moves referrer rows under the images they belong to.
fn fold_referrers(rows: Vec<(ImageInfo, Option<Owner>)>) -> Vec<ImageInfo> {
    let mut images = Vec::new();
    let mut referrers = Vec::new();
    for (info, owner) in rows {
        match owner {
            Some((owner, subject, artifact_type)) => {
                referrers.push((owner, subject, artifact_type, info))
            }
            None => images.push(info),
        }
    }
    for (owner, subject, artifact_type, info) in referrers {
        if let Some(image) = images.iter_mut().find(|i| i.name == owner) {
            image.referrers.push(ReferrerInfo {
                name: info.name,
                digest: info.digest,
                subject,
                artifact_type,
            });
        }
    }
    for image in &mut images {
        let kinds: Vec<ArtifactKind> = image
            .referrers
            .iter()
            .map(|r| classify(r.artifact_type.as_deref(), &r.name))
            .collect();
        image.artifacts = describe(&kinds);
    }
    images
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PartInfo {
    pub number: u32,
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// Describes a bundle from its index (and, for layouts, its manifests).
pub fn inspect(bundle: &Bundle) -> Inspection {
    match bundle {
        Bundle::Archive { archive, .. } => {
            let index = &archive.index;
            let size_of = |d: &crate::digest::Digest| archive.blob(d).map_or(0, |b| b.size);
            Inspection {
                kind: "archive",
                path: bundle.describe(),
                bundle: Some(index.bundle.clone()),
                chunk_size: Some(index.chunk_size),
                images: fold_referrers(
                    index
                        .images
                        .iter()
                        .map(|i| {
                            let info = ImageInfo {
                                name: i.name.clone(),
                                digest: i.digest.to_string(),
                                media_type: i.media_type.clone(),
                                platforms: i.platforms.iter().map(|p| p.to_string()).collect(),
                                size: i.blobs.iter().map(size_of).sum(),
                                blobs: i.blobs.len(),
                                artifacts: String::new(),
                                referrers: Vec::new(),
                            };
                            let owner = match (&i.referrer_of, &i.subject) {
                                (Some(o), Some(s)) => {
                                    Some((o.clone(), s.to_string(), i.artifact_type.clone()))
                                }
                                _ => None,
                            };
                            (info, owner)
                        })
                        .collect(),
                ),
                parts: index
                    .parts
                    .iter()
                    .map(|p| PartInfo {
                        number: p.number,
                        name: p.name.clone(),
                        size: p.size,
                        sha256: p.sha256.clone(),
                    })
                    .collect(),
                blobs: index.blobs.len(),
                bytes: index.blobs.iter().map(|b| b.size).sum(),
                base: index.base.clone(),
            }
        }
        Bundle::Layout(..) => inspect_layout(bundle),
    }
}

fn inspect_layout(bundle: &Bundle) -> Inspection {
    let mut all = HashSet::new();
    let mut bytes = 0u64;
    let mut images = Vec::new();
    for entry in bundle.entries().unwrap_or_default() {
        let mut mine = HashSet::new();
        let mut size = 0u64;
        let mut platforms = Vec::new();
        for (d, depth) in bundle.reachable(&entry) {
            mine.insert(d.digest.clone());
            size += d.size;
            if all.insert(d.digest.clone()) {
                bytes += d.size;
            }
            if let Some(p) = &d.platform
                && depth == 1
            {
                platforms.push(p.to_string());
            }
        }
        if platforms.is_empty()
            && let Some(p) = &entry.platform
        {
            platforms.push(p.to_string());
        }
        platforms.sort();
        let annotation = |k: &str| entry.annotations.as_ref().and_then(|a| a.get(k)).cloned();
        let owner = match (annotation(SUBJECT_IMAGE), annotation(SUBJECT)) {
            (Some(o), Some(s)) => Some((o, s, entry.artifact_type.clone())),
            _ => None,
        };
        images.push((
            ImageInfo {
                name: ref_name(&entry).unwrap_or("(unnamed)").to_string(),
                digest: entry.digest.to_string(),
                media_type: entry.media_type.clone(),
                platforms,
                size,
                blobs: mine.len(),
                artifacts: String::new(),
                referrers: Vec::new(),
            },
            owner,
        ));
    }
    let images = fold_referrers(images);
    Inspection {
        kind: "layout",
        path: bundle.describe(),
        bundle: None,
        chunk_size: None,
        images,
        parts: Vec::new(),
        blobs: all.len(),
        bytes,
        base: bundle.base(),
    }
}

impl Inspection {
    /// The table a person reads.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        match (&self.bundle, self.chunk_size) {
            (Some(id), Some(chunk)) => out.push_str(&format!(
                "archive {} (bundle {}, {} part{}, each at most {})\n",
                self.path,
                &id[..12.min(id.len())],
                self.parts.len(),
                if self.parts.len() == 1 { "" } else { "s" },
                if chunk == u64::MAX {
                    "unlimited".to_string()
                } else {
                    human_bytes(chunk)
                }
            )),
            _ => out.push_str(&format!("layout {}\n", self.path)),
        }
        let width = self
            .images
            .iter()
            .map(|i| i.name.len())
            .max()
            .unwrap_or(5)
            .max(5);
        out.push_str(&format!(
            "{:<width$}  {:<19}  {:>10}  PLATFORMS\n",
            "IMAGE", "DIGEST", "SIZE"
        ));
        for i in &self.images {
            let short = i.digest.get(..19).unwrap_or(&i.digest);
            let platforms = if i.platforms.is_empty() {
                "-".to_string()
            } else {
                i.platforms.join(", ")
            };
            let artifacts = if i.artifacts.is_empty() {
                String::new()
            } else {
                format!("  ({})", i.artifacts)
            };
            out.push_str(&format!(
                "{:<width$}  {short:<19}  {:>10}  {platforms}{artifacts}\n",
                i.name,
                human_bytes(i.size)
            ));
        }
        if !self.parts.is_empty() {
            out.push_str("PART  FILE  SIZE  SHA256\n");
            for p in &self.parts {
                out.push_str(&format!(
                    "{:04}  {}  {}  {}\n",
                    p.number,
                    p.name,
                    human_bytes(p.size),
                    p.sha256.get(..12).unwrap_or("")
                ));
            }
        }
        if let Some(base) = &self.base {
            out.push_str(&format!(
                "incremental: builds on {}; {} blobs ({}) left out, which the target must hold\n",
                base.builds_on,
                base.omitted.len(),
                human_bytes(base.bytes())
            ));
        }
        out.push_str(&format!(
            "{} image{}, {} blobs, {}\n",
            self.images.len(),
            if self.images.len() == 1 { "" } else { "s" },
            self.blobs,
            human_bytes(self.bytes)
        ));
        out
    }
}

/// What changed from one bundle to another.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Diff {
    pub added: Vec<ImageChange>,
    pub removed: Vec<ImageChange>,
    pub changed: Vec<ImageChange>,
    pub unchanged: usize,
    /// Blobs of the new bundle that the old one does not have.
    pub blobs_to_travel: usize,
    /// Their total size: what an incremental bundle would carry.
    pub bytes_to_travel: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageChange {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new: Option<String>,
}

/// Compares the images of two bundles, by name.
pub fn diff(old: &Bundle, new: &Bundle) -> Result<Diff, crate::bundle::BundleError> {
    let names = |b: &Bundle| -> Result<
        std::collections::BTreeMap<String, String>,
        crate::bundle::BundleError,
    > {
        Ok(b.entries()?
            .iter()
            .filter(|e| {
                e.annotations
                    .as_ref()
                    .is_none_or(|a| !a.contains_key(SUBJECT))
            })
            .filter_map(|e| ref_name(e).map(|n| (n.to_string(), e.digest.to_string())))
            .collect())
    };
    let (a, b) = (names(old)?, names(new)?);
    let mut d = Diff::default();
    for (name, digest) in &b {
        match a.get(name) {
            None => d.added.push(ImageChange {
                name: name.clone(),
                old: None,
                new: Some(digest.clone()),
            }),
            Some(o) if o != digest => d.changed.push(ImageChange {
                name: name.clone(),
                old: Some(o.clone()),
                new: Some(digest.clone()),
            }),
            Some(_) => d.unchanged += 1,
        }
    }
    for (name, digest) in &a {
        if !b.contains_key(name) {
            d.removed.push(ImageChange {
                name: name.clone(),
                old: Some(digest.clone()),
                new: None,
            });
        }
    }
    let held: HashSet<_> = bundle_blobs(old)?.into_iter().map(|b| b.digest).collect();
    let held_too: HashSet<_> = old
        .base()
        .map(|b| b.omitted.into_iter().map(|o| o.digest).collect())
        .unwrap_or_default();
    for blob in bundle_blobs(new)? {
        if !held.contains(&blob.digest) && !held_too.contains(&blob.digest) {
            d.blobs_to_travel += 1;
            d.bytes_to_travel += blob.size;
        }
    }
    Ok(d)
}

impl Diff {
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for c in &self.added {
            out.push_str(&format!(
                "+ {}  {}\n",
                c.name,
                c.new.as_deref().unwrap_or("")
            ));
        }
        for c in &self.removed {
            out.push_str(&format!(
                "- {}  {}\n",
                c.name,
                c.old.as_deref().unwrap_or("")
            ));
        }
        for c in &self.changed {
            out.push_str(&format!(
                "~ {}  {} -> {}\n",
                c.name,
                c.old.as_deref().unwrap_or(""),
                c.new.as_deref().unwrap_or("")
            ));
        }
        out.push_str(&format!(
            "{} added, {} removed, {} changed, {} unchanged; {} blobs ({}) would travel\n",
            self.added.len(),
            self.removed.len(),
            self.changed.len(),
            self.unchanged,
            self.blobs_to_travel,
            human_bytes(self.bytes_to_travel)
        ));
        out
    }
}
