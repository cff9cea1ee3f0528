//! Referrers: the manifests (signatures, SBOMs, attestations) that name
//! another manifest as their `subject`.
//!
//! The OCI 1.1 referrers API (`GET /v2/<name>/referrers/<digest>`,
//! paginated with `Link`) where the registry has it; otherwise the
//! tag-scheme fallback, an index under the tag `sha256-<hex>`. Registries
//! without the API (distribution 2.8 among them) need the fallback index
//! kept up to date by whoever pushes a referrer: [`Client::add_referrers`].

use std::collections::HashSet;

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, HeaderMap, LINK};

use super::{Access, Client, RegistryError, check_status, header_str, read_limited};
use crate::digest::Digest;
use crate::manifest::{Descriptor, MAX_MANIFEST_BYTES, OCI_INDEX};
use crate::reference::ImageRef;

/// How many pages of referrers are read at most.
const MAX_PAGES: usize = 100;

/// The tag of the tag-scheme fallback index for `digest`.
pub fn fallback_tag(digest: &Digest) -> String {
    format!("{}-{}", digest.algorithm().as_str(), digest.hex())
}

/// Whether and how a registry lists referrers.
#[derive(Debug, Clone, PartialEq)]
pub enum Listing {
    /// The referrers API answered.
    Api(Vec<Descriptor>),
    /// No API; the fallback tag's index (empty when the tag is absent).
    Fallback(Vec<Descriptor>),
}

impl Listing {
    pub fn descriptors(&self) -> &[Descriptor] {
        match self {
            Listing::Api(d) | Listing::Fallback(d) => d,
        }
    }
}

impl Client {
    /// The repository's tags (all pages), or `None` when it cannot list
    /// them. One request answers for every fallback and cosign tag of a
    /// repository, instead of one lookup per manifest and tag.
    pub async fn tags(&self, image: &ImageRef) -> Result<Option<HashSet<String>>, RegistryError> {
        let what = format!("tags of {}", image.repository());
        let mut url = format!("{}/tags/list?n=1000", self.base_url(image));
        let mut tags = HashSet::new();
        for _ in 0..MAX_PAGES {
            let u = url.clone();
            let resp = self.send(image, Access::Pull, &what, |c| c.get(&u)).await?;
            if !resp.status().is_success() {
                return Ok(None);
            }
            let next = next_link(resp.headers(), &u);
            let body = read_limited(resp, MAX_MANIFEST_BYTES, &what).await?;
            #[derive(serde::Deserialize)]
            struct List {
                tags: Option<Vec<String>>,
            }
            let Ok(list) = serde_json::from_slice::<List>(&body) else {
                return Ok(None);
            };
            tags.extend(list.tags.unwrap_or_default());
            match next {
                Some(n) => url = n,
                None => return Ok(Some(tags)),
            }
        }
        Ok(Some(tags))
    }

    /// The referrers of `digest` in `image`'s repository. `tags`, when
    /// known, saves the fallback lookup of a tag that does not exist.
    pub async fn referrers(
        &self,
        image: &ImageRef,
        digest: &Digest,
        tags: Option<&HashSet<String>>,
    ) -> Result<Listing, RegistryError> {
        let no_api = self
            .inner
            .no_referrers_api
            .lock()
            .expect("referrers lock")
            .contains(image.api_host());
        if no_api {
            return Ok(Listing::Fallback(
                self.fallback_referrers(image, digest, tags).await?,
            ));
        }
        let what = format!("referrers of {digest}");
        let mut url = format!("{}/referrers/{digest}", self.base_url(image));
        let mut found = Vec::new();
        for page in 0..MAX_PAGES {
            let u = url.clone();
            let resp = self
                .send(image, Access::Pull, &what, |c| {
                    c.get(&u).header(ACCEPT, OCI_INDEX)
                })
                .await?;
            // A registry without the API answers 404 (distribution: "404
            // page not found"), or 400/405 for a route it does not know.
            let absent = matches!(
                resp.status(),
                StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST | StatusCode::METHOD_NOT_ALLOWED
            );
            if page == 0 && absent {
                self.inner
                    .no_referrers_api
                    .lock()
                    .expect("referrers lock")
                    .insert(image.api_host().to_string());
                return Ok(Listing::Fallback(
                    self.fallback_referrers(image, digest, tags).await?,
                ));
            }
            let resp = check_status(resp, &what).await?;
            let next = next_link(resp.headers(), &u);
            let body = read_limited(resp, MAX_MANIFEST_BYTES, &what).await?;
            found.extend(index_entries(&body, &what)?);
            match next {
                Some(n) => url = n,
                None => break,
            }
        }
        Ok(Listing::Api(found))
    }

    /// The entries of the fallback index, or none when there is no tag.
    async fn fallback_referrers(
        &self,
        image: &ImageRef,
        digest: &Digest,
        tags: Option<&HashSet<String>>,
    ) -> Result<Vec<Descriptor>, RegistryError> {
        if tags.is_some_and(|t| !t.contains(&fallback_tag(digest))) {
            return Ok(Vec::new());
        }
        let tagged = ImageRef::from_parts(
            image.registry(),
            image.repository(),
            Some(&fallback_tag(digest)),
            None,
        );
        match self.get_manifest(&tagged).await {
            Ok(m) => index_entries(
                &m.body,
                &format!("referrers index {}", fallback_tag(digest)),
            ),
            Err(RegistryError::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Makes `descriptors` listed as referrers of `subject` on a registry
    /// without the referrers API: merges them into the fallback index
    /// (keeping what it already lists) and pushes it under its tag. Does
    /// nothing where the API answers (the registry indexes subjects
    /// itself). Returns whether the fallback index was written.
    pub async fn add_referrers(
        &self,
        image: &ImageRef,
        subject: &Digest,
        descriptors: &[Descriptor],
    ) -> Result<bool, RegistryError> {
        let existing = match self.referrers(image, subject, None).await? {
            Listing::Api(_) => return Ok(false),
            Listing::Fallback(d) => d,
        };
        let mut merged = existing.clone();
        for d in descriptors {
            if !merged.iter().any(|e| e.digest == d.digest) {
                merged.push(d.clone());
            }
        }
        if merged.len() == existing.len() {
            return Ok(false);
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": merged,
        });
        let mut body = serde_json::to_vec_pretty(&index).expect("index serialises");
        body.push(b'\n');
        self.put_manifest(image, &fallback_tag(subject), OCI_INDEX, &Bytes::from(body))
            .await?;
        Ok(true)
    }
}

/// The `manifests` of an index body.
fn index_entries(body: &[u8], what: &str) -> Result<Vec<Descriptor>, RegistryError> {
    #[derive(serde::Deserialize)]
    struct Index {
        #[serde(default)]
        manifests: Vec<Descriptor>,
    }
    serde_json::from_slice::<Index>(body)
        .map(|i| i.manifests)
        .map_err(|e| RegistryError::Protocol {
            what: what.to_string(),
            reason: format!("not an image index: {e}"),
        })
}

/// The `rel="next"` target of a `Link` header, resolved against `base`.
fn next_link(headers: &HeaderMap, base: &str) -> Option<String> {
    let link = header_str(headers, LINK.as_str())?;
    let target = link
        .split(',')
        .find(|l| l.contains("rel=\"next\"") || l.contains("rel=next"))?;
    let inner = target
        .split(';')
        .next()?
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>');
    reqwest::Url::parse(base)
        .ok()?
        .join(inner)
        .ok()
        .map(|u| u.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn follows_relative_next_links() {
        let mut h = HeaderMap::new();
        h.insert(
            LINK,
            HeaderValue::from_static("</v2/a/referrers/sha256:x?n=2&last=b>; rel=\"next\""),
        );
        assert_eq!(
            next_link(&h, "http://r:5000/v2/a/referrers/sha256:x").as_deref(),
            Some("http://r:5000/v2/a/referrers/sha256:x?n=2&last=b")
        );
        assert_eq!(next_link(&HeaderMap::new(), "http://r/"), None);
    }

    #[test]
    fn fallback_tag_is_algorithm_dash_hex() {
        let d = Digest::sha256_of(b"");
        assert_eq!(fallback_tag(&d), format!("sha256-{}", d.hex()));
    }
}
