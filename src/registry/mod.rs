//! The registry client: the distribution protocol as airlock uses it.
//!
//! Every request is ours, over one reqwest client, the token dance
//! included ([`auth::fetch_token`]), because oci-client hides what we must
//! see and control: the Content-Type of a manifest, the status and
//! `Retry-After` of a failed answer (a token server's 503 among them),
//! resumable blob reads, one streamed PUT per upload, and mounts that the
//! registry refuses with 202.
//!
//! Invariant: every body this module hands out as "fetched" or reports as
//! "pushed" went through a [`Verifier`] for the digest it was asked for.

pub mod auth;
mod blob;
pub mod referrers;
pub mod retry;

pub use blob::{BlobReader, Pushed};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap};
use reqwest::{RequestBuilder, Response, StatusCode};

use crate::digest::{Algorithm, Digest, Hasher, VerifyError};
use crate::manifest::{ACCEPT as MANIFEST_TYPES, MAX_MANIFEST_BYTES};
use crate::reference::ImageRef;
use auth::{CredentialSource, Credentials};
use retry::{RetryPolicy, retry_after, retryable_error, retryable_status};

/// A registry request that failed for good.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{what}")]
    Transport {
        what: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{what}: registry answered {status}{}", detail_suffix(.detail))]
    Status {
        what: String,
        status: StatusCode,
        detail: String,
        /// How long the registry asked us to wait (`Retry-After`).
        retry_after: Option<Duration>,
    },
    #[error("{what}: not found")]
    NotFound { what: String },
    #[error(
        "{what}: access denied ({status}). Check the credentials for {registry} \
         (docker login, --username with --password-stdin)"
    )]
    Denied {
        what: String,
        registry: String,
        status: StatusCode,
    },
    #[error("{what}: authentication with {registry} failed: {reason}")]
    Auth {
        what: String,
        registry: String,
        reason: String,
    },
    #[error("{what}")]
    Verify {
        what: String,
        #[source]
        source: VerifyError,
    },
    #[error("{what}: {reason}")]
    Protocol { what: String, reason: String },
    #[error("cannot set up a client: {0}")]
    Setup(String),
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

impl RegistryError {
    /// Whether the failure came from the registry or network and could go
    /// away on a later run (as opposed to content that is wrong).
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Transport { .. } => true,
            RegistryError::Status { status, .. } => retryable_status(*status),
            _ => false,
        }
    }

    /// How long the registry asked us to wait before asking again, if it
    /// said (`Retry-After` on a 429 or 503).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RegistryError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Errors that can say whether they are content failing its digest.
pub trait RetryClass {
    fn is_corrupt(&self) -> bool;
}

impl RetryClass for RegistryError {
    fn is_corrupt(&self) -> bool {
        matches!(self, RegistryError::Verify { .. })
    }
}

/// How to reach registries: transport and trust.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Speak HTTP instead of HTTPS.
    pub plain_http: bool,
    /// HTTPS without certificate verification.
    pub insecure: bool,
    /// Extra PEM root certificates.
    pub ca_file: Option<PathBuf>,
    pub credentials: CredentialSource,
    pub retry: RetryPolicy,
}

/// What a request is for, in the token scope's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    Pull,
    Push,
}

/// The header a repository's requests carry, once worked out.
#[derive(Clone)]
enum AuthHeader {
    None,
    Basic(Credentials),
    Bearer(String),
}

/// A manifest as the registry served it.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub body: Bytes,
    pub content_type: Option<String>,
    /// The digest of `body` (verified against the reference when it named
    /// one, and against `Docker-Content-Digest` when the registry sent it).
    pub digest: Digest,
}

/// The registry client shared by every task of a run.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    options: ConnectOptions,
    /// Auth headers per (registry, repository, access).
    auth: Mutex<HashMap<(String, String, Access), AuthHeader>>,
    /// Registries found to have no referrers API: not asked again.
    no_referrers_api: Mutex<std::collections::HashSet<String>>,
}

impl Client {
    /// How often a failed or corrupted transfer is tried again.
    pub fn retries(&self) -> u32 {
        self.inner.options.retry.retries
    }

    /// Builds a client; a bad CA file is an error here, not a silent default.
    pub fn new(options: ConnectOptions) -> Result<Client, RegistryError> {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("airlock/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(120))
            .pool_max_idle_per_host(32);
        if let Some(path) = &options.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                RegistryError::Setup(format!("cannot read CA file {}: {e}", path.display()))
            })?;
            let parsed = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                RegistryError::Setup(format!("CA file {} is not PEM: {e}", path.display()))
            })?;
            if parsed.is_empty() {
                return Err(RegistryError::Setup(format!(
                    "CA file {} holds no certificate",
                    path.display()
                )));
            }
            for cert in parsed {
                builder = builder.add_root_certificate(cert);
            }
        }
        if options.insecure {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        let http = builder
            .build()
            .map_err(|e| RegistryError::Setup(e.to_string()))?;

        Ok(Client {
            inner: Arc::new(Inner {
                http,
                options,
                auth: Mutex::new(HashMap::new()),
                no_referrers_api: Mutex::new(std::collections::HashSet::new()),
            }),
        })
    }

    /// `scheme://host[:port]` of the image's registry.
    fn origin(&self, image: &ImageRef) -> String {
        let scheme = if self.inner.options.plain_http {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{}", image.api_host())
    }

    /// Runs a download again from the start (up to `--retries` times) when
    /// its bytes fail their digest: one corrupted transfer (a proxy, a bad
    /// cache on the registry's side) should not fail an image. `attempt`
    /// must start from scratch each time, discarding what it wrote.
    pub async fn retry_corrupt<T, E, F, Fut>(&self, what: &Digest, mut attempt: F) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
        E: RetryClass,
    {
        let policy = self.inner.options.retry;
        let mut tries = 0;
        loop {
            match attempt().await {
                Err(e) if e.is_corrupt() && tries < policy.retries => {
                    tries += 1;
                    tracing::warn!(
                        "blob {what} arrived corrupted; fetching it again ({tries}/{})",
                        policy.retries
                    );
                }
                other => return other,
            }
        }
    }

    fn base_url(&self, image: &ImageRef) -> String {
        format!("{}/v2/{}", self.origin(image), image.repository())
    }

    /// Works out (once per repository and access) which header to send.
    async fn auth_header(
        &self,
        image: &ImageRef,
        access: Access,
        what: &str,
    ) -> Result<AuthHeader, RegistryError> {
        let key = (
            image.api_host().to_string(),
            image.repository().to_string(),
            access,
        );
        if let Some(h) = self.inner.auth.lock().expect("auth lock").get(&key) {
            return Ok(h.clone());
        }
        let creds = self.inner.options.credentials.lookup(image.registry());
        let scope = match access {
            Access::Pull => format!("repository:{}:pull", image.repository()),
            Access::Push => format!("repository:{}:pull,push", image.repository()),
        };
        let origin = self.origin(image);
        // The token server is a server like any other: it throttles and
        // fails, and its 429 and 5xx are retried as the registry's are.
        let policy = self.inner.options.retry;
        let mut attempt = 0;
        let token = loop {
            match auth::fetch_token(&self.inner.http, &origin, &scope, creds.as_ref()).await {
                Ok(token) => break token,
                Err(f) if f.transient && attempt < policy.retries => {
                    attempt += 1;
                    let wait = policy.backoff(attempt, f.retry_after);
                    tracing::debug!("{what}: {}; retry {attempt} in {wait:?}", f.reason);
                    tokio::time::sleep(wait).await;
                }
                Err(f) => {
                    return Err(RegistryError::Auth {
                        what: what.to_string(),
                        registry: image.registry().to_string(),
                        reason: f.reason,
                    });
                }
            }
        };
        let header = match (token, creds) {
            (Some(t), _) => AuthHeader::Bearer(t),
            (None, Some(c)) => AuthHeader::Basic(c),
            (None, None) => AuthHeader::None,
        };
        self.inner
            .auth
            .lock()
            .expect("auth lock")
            .insert(key, header.clone());
        Ok(header)
    }

    fn forget_auth(&self, image: &ImageRef, access: Access) {
        let key = (
            image.api_host().to_string(),
            image.repository().to_string(),
            access,
        );
        self.inner.auth.lock().expect("auth lock").remove(&key);
    }

    /// Sends a repeatable request with auth, retrying what the policy allows.
    ///
    /// `build` is called once per attempt. Answers other than 401, 429 and
    /// 5xx are returned as they are, for the caller to judge.
    async fn send(
        &self,
        image: &ImageRef,
        access: Access,
        what: &str,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        let policy = self.inner.options.retry;
        let mut reauthed = false;
        let mut attempt = 0u32;
        loop {
            let header = self.auth_header(image, access, what).await?;
            let mut request = build(&self.inner.http);
            request = match &header {
                AuthHeader::None => request,
                AuthHeader::Basic(c) => request.basic_auth(&c.username, Some(&c.password)),
                AuthHeader::Bearer(t) => request.bearer_auth(t),
            };
            let started = std::time::Instant::now();
            let sent = request.send().await;
            if let Ok(resp) = &sent {
                tracing::trace!("{what}: {} in {:?}", resp.status(), started.elapsed());
            }
            let failure = match sent {
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !reauthed => {
                    // A token may have expired mid-run: fetch a new one once.
                    reauthed = true;
                    self.forget_auth(image, access);
                    continue;
                }
                Ok(resp)
                    if resp.status() == StatusCode::UNAUTHORIZED
                        || resp.status() == StatusCode::FORBIDDEN =>
                {
                    return Err(RegistryError::Denied {
                        what: what.to_string(),
                        registry: image.registry().to_string(),
                        status: resp.status(),
                    });
                }
                Ok(resp) if retryable_status(resp.status()) => {
                    let status = resp.status();
                    let retry_after = retry_after(resp.headers());
                    let detail = error_detail(resp).await;
                    (
                        retry_after,
                        RegistryError::Status {
                            what: what.to_string(),
                            status,
                            detail,
                            retry_after,
                        },
                    )
                }
                Ok(resp) => return Ok(resp),
                Err(e) if retryable_error(&e) => (
                    None,
                    RegistryError::Transport {
                        what: what.to_string(),
                        source: e.without_url(),
                    },
                ),
                Err(e) => {
                    return Err(RegistryError::Transport {
                        what: what.to_string(),
                        source: e.without_url(),
                    });
                }
            };
            attempt += 1;
            let (asked, err) = failure;
            if attempt > policy.retries {
                return Err(err);
            }
            let wait = policy.backoff(attempt, asked);
            tracing::debug!("{err}; retry {attempt}/{} in {wait:?}", policy.retries);
            tokio::time::sleep(wait).await;
        }
    }

    /// Fetches a manifest by tag or digest, verified, at most 4 MiB.
    pub async fn get_manifest(&self, image: &ImageRef) -> Result<FetchedManifest, RegistryError> {
        let reference = image.fetch_reference();
        let what = manifest_what(image);
        let url = format!("{}/manifests/{reference}", self.base_url(image));
        let accept = MANIFEST_TYPES.join(", ");
        let policy = self.inner.options.retry;
        let mut attempt = 0;
        loop {
            let resp = self
                .send(image, Access::Pull, &what, |c| {
                    c.get(&url).header(ACCEPT, accept.as_str())
                })
                .await?;
            let resp = check_status(resp, &what).await?;
            let content_type = header_str(resp.headers(), CONTENT_TYPE.as_str())
                .map(|ct| ct.split(';').next().unwrap_or("").trim().to_string());
            let header_digest = header_str(resp.headers(), "docker-content-digest");
            match read_limited(resp, MAX_MANIFEST_BYTES, &what).await {
                Ok(body) => {
                    let digest = verify_manifest(image, &body, header_digest.as_deref(), &what)?;
                    return Ok(FetchedManifest {
                        body,
                        content_type,
                        digest,
                    });
                }
                Err(e) if e.is_transient() && attempt < policy.retries => {
                    attempt += 1;
                    tokio::time::sleep(policy.backoff(attempt, None)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Resolves a manifest reference with HEAD: its digest, size and media
    /// type, or `None` when the registry does not have it.
    pub async fn head_manifest(
        &self,
        image: &ImageRef,
    ) -> Result<Option<(Digest, u64, Option<String>)>, RegistryError> {
        let what = manifest_what(image);
        let url = format!(
            "{}/manifests/{}",
            self.base_url(image),
            image.fetch_reference()
        );
        let accept = MANIFEST_TYPES.join(", ");
        let resp = self
            .send(image, Access::Pull, &what, |c| {
                c.head(&url).header(ACCEPT, accept.as_str())
            })
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = check_status(resp, &what).await?;
        let digest = header_str(resp.headers(), "docker-content-digest")
            .and_then(|d| d.parse::<Digest>().ok());
        let size =
            header_str(resp.headers(), CONTENT_LENGTH.as_str()).and_then(|s| s.parse::<u64>().ok());
        let content_type = header_str(resp.headers(), CONTENT_TYPE.as_str());
        match (digest, size) {
            (Some(d), Some(s)) => Ok(Some((d, s, content_type))),
            // Without a digest header HEAD tells us nothing we can trust.
            _ => Err(RegistryError::Protocol {
                what,
                reason: "HEAD answer has no Docker-Content-Digest".to_string(),
            }),
        }
    }

    /// Pushes a manifest's exact bytes under `reference` (a tag or digest).
    pub async fn put_manifest(
        &self,
        image: &ImageRef,
        reference: &str,
        media_type: &str,
        body: &Bytes,
    ) -> Result<Digest, RegistryError> {
        let what = format!(
            "push of manifest {}/{}:{reference}",
            image.registry(),
            image.repository()
        );
        let url = format!("{}/manifests/{reference}", self.base_url(image));
        let resp = self
            .send(image, Access::Push, &what, |c| {
                c.put(&url)
                    .header(CONTENT_TYPE, media_type)
                    .body(body.clone())
            })
            .await?;
        let resp = check_status(resp, &what).await?;
        let ours = Digest::sha256_of(body);
        if let Some(theirs) = header_str(resp.headers(), "docker-content-digest")
            && theirs != ours.to_string()
        {
            return Err(RegistryError::Protocol {
                what,
                reason: format!("registry stored it as {theirs}, expected {ours}"),
            });
        }
        Ok(ours)
    }

    /// Whether the repository holds a blob; returns its size when it does.
    pub async fn blob_exists(
        &self,
        image: &ImageRef,
        digest: &Digest,
    ) -> Result<Option<u64>, RegistryError> {
        let what = format!(
            "blob {digest} in {}/{}",
            image.registry(),
            image.repository()
        );
        let url = format!("{}/blobs/{digest}", self.base_url(image));
        let resp = self
            .send(image, Access::Pull, &what, |c| c.head(&url))
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = check_status(resp, &what).await?;
        Ok(Some(
            header_str(resp.headers(), CONTENT_LENGTH.as_str())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
        ))
    }
}
/// Checks a digest-addressed or tag-addressed manifest body.
fn verify_manifest(
    image: &ImageRef,
    body: &Bytes,
    header: Option<&str>,
    what: &str,
) -> Result<Digest, RegistryError> {
    let verify_err = |source| RegistryError::Verify {
        what: what.to_string(),
        source,
    };
    // Schema1 is digested over its payload, signatures removed (the
    // registry re-signs on every GET, so the bytes change and the digest
    // does not); every other manifest over its bytes.
    let schema1 = body.windows(10).any(|w| w == b"\"fsLayers\"");
    let digest_as = |algorithm: Algorithm| -> Result<Digest, RegistryError> {
        if schema1 {
            crate::schema1::payload_digest(body).map_err(|e| RegistryError::Protocol {
                what: what.to_string(),
                reason: crate::error_chain(&e),
            })
        } else {
            let mut h = Hasher::new(algorithm);
            h.update(body);
            Ok(h.finish())
        }
    };
    let check = |want: &Digest, actual: Digest| {
        if &actual == want {
            Ok(())
        } else {
            Err(verify_err(VerifyError::Digest {
                expected: want.clone(),
                actual,
            }))
        }
    };
    if let Some(want) = image.digest() {
        check(want, digest_as(want.algorithm())?)?;
        return Ok(want.clone());
    }
    let computed = digest_as(Algorithm::Sha256)?;
    if let Some(h) = header.and_then(|h| h.parse::<Digest>().ok()) {
        let ours = if h.algorithm() == Algorithm::Sha256 {
            computed.clone()
        } else {
            digest_as(h.algorithm())?
        };
        check(&h, ours)?;
    }
    Ok(computed)
}

async fn check_status(resp: Response, what: &str) -> Result<Response, RegistryError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    if status == StatusCode::NOT_FOUND {
        return Err(RegistryError::NotFound {
            what: what.to_string(),
        });
    }
    let retry_after = retry_after(resp.headers());
    Err(RegistryError::Status {
        what: what.to_string(),
        status,
        detail: error_detail(resp).await,
        retry_after,
    })
}

/// The first error of a distribution error body, or a short text excerpt.
async fn error_detail(resp: Response) -> String {
    let body = resp.bytes().await.unwrap_or_default();
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        code: Option<String>,
        message: Option<String>,
    }
    if let Ok(e) = serde_json::from_slice::<Errors>(&body)
        && let Some(first) = e.errors.first()
    {
        return format!(
            "{} {}",
            first.code.clone().unwrap_or_default(),
            first.message.clone().unwrap_or_default()
        )
        .trim()
        .to_string();
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

async fn read_limited(
    mut resp: Response,
    limit: usize,
    what: &str,
) -> Result<Bytes, RegistryError> {
    if let Some(len) = resp.content_length()
        && len > limit as u64
    {
        return Err(RegistryError::Protocol {
            what: what.to_string(),
            reason: format!("{len} bytes is over the {limit}-byte manifest limit"),
        });
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| RegistryError::Transport {
        what: what.to_string(),
        source: e.without_url(),
    })? {
        if out.len() + chunk.len() > limit {
            return Err(RegistryError::Protocol {
                what: what.to_string(),
                reason: format!("body is over the {limit}-byte manifest limit"),
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(out))
}

/// How a manifest request names its object: the digest, or the tag.
fn manifest_what(image: &ImageRef) -> String {
    match image.digest() {
        Some(d) => format!("manifest {d}"),
        None => format!("tag {}", image.fetch_reference()),
    }
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}
