//! Blobs: resumable verified downloads, and uploads verified as they
//! stream (one session per attempt, mounts first when the blob is known
//! elsewhere in the registry).

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{Response, StatusCode};

use super::{Access, AuthHeader, Client, RegistryError, check_status, header_str};
use crate::digest::{Digest, Verifier, VerifyError};
use crate::manifest::MAX_MANIFEST_BYTES;
use crate::reference::ImageRef;

impl Client {
    /// Opens a blob for reading. The stream resumes after dropped
    /// connections and verifies digest and size at its end.
    pub fn blob_reader(&self, image: &ImageRef, digest: &Digest, size: u64) -> BlobReader {
        // Hashed side by side with the other downloads of the run.
        self.reader(image, digest, Verifier::in_lanes(digest, Some(size)))
    }

    fn reader(&self, image: &ImageRef, digest: &Digest, verifier: Verifier) -> BlobReader {
        BlobReader {
            client: self.clone(),
            image: image.clone(),
            url: format!("{}/blobs/{digest}", self.base_url(image)),
            what: format!("blob {digest}"),
            verifier: Some(verifier),
            response: None,
            skip: 0,
            failures: 0,
        }
    }

    /// A reader that checks the size only: for a caller that checks the
    /// digest of what it wrote itself, before anything names the bytes
    /// (an archive export, while it hashes the part around the blob).
    pub fn blob_reader_size_only(
        &self,
        image: &ImageRef,
        digest: &Digest,
        size: u64,
    ) -> BlobReader {
        self.reader(image, digest, Verifier::size_only(digest, size))
    }

    /// Fetches a small blob (a config) whole into memory, verified.
    pub async fn get_small_blob(
        &self,
        image: &ImageRef,
        digest: &Digest,
        size: u64,
    ) -> Result<Bytes, RegistryError> {
        let mut reader = self.blob_reader(image, digest, size);
        let mut out = Vec::with_capacity(size.min(MAX_MANIFEST_BYTES as u64) as usize);
        while let Some(chunk) = reader.next_chunk().await? {
            out.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(out))
    }

    /// Uploads a blob unless the repository has it; mounts it from `from`
    /// when given. `open` produces the bytes, once per attempt; they are
    /// verified as they stream and a mismatch aborts the upload.
    ///
    /// Returns how the blob got there.
    pub async fn push_blob<S, F>(
        &self,
        image: &ImageRef,
        digest: &Digest,
        size: u64,
        from: Option<&str>,
        open: F,
    ) -> Result<Pushed, RegistryError>
    where
        F: Fn() -> S,
        S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    {
        let what = format!(
            "upload of blob {digest} to {}/{}",
            image.registry(),
            image.repository()
        );
        let policy = self.inner.options.retry;
        let mut attempt = 0;
        let mut reauthed = false;
        loop {
            // `send` has already retried the session request as often as
            // the policy allows; only the PUT, whose streamed body `send`
            // cannot repeat, is retried here, each time in a new session.
            // Retrying both would make N retries into (N+1)^2 attempts.
            let Some(put_url) = self.open_upload(image, digest, from, &what).await? else {
                return Ok(Pushed::Mounted);
            };
            match self
                .put_blob(image, digest, size, &open, &what, &put_url)
                .await
            {
                Ok(()) => return Ok(Pushed::Uploaded),
                // The token can expire between the session request and the
                // PUT, which does not go through `send` and its renewal:
                // renew it here, once, and start over in a new session.
                Err(RegistryError::Denied { status, .. })
                    if status == StatusCode::UNAUTHORIZED && !reauthed =>
                {
                    reauthed = true;
                    self.forget_auth(image, Access::Push);
                }
                Err(e) if e.is_transient() && attempt < policy.retries => {
                    attempt += 1;
                    let wait = policy.backoff(attempt, e.retry_after());
                    tracing::debug!("{e}; starting the upload again in {wait:?}");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Opens an upload session (or mounts the blob from `from`); returns
    /// the URL to PUT the bytes to, or `None` when the mount did it.
    async fn open_upload(
        &self,
        image: &ImageRef,
        digest: &Digest,
        from: Option<&str>,
        what: &str,
    ) -> Result<Option<String>, RegistryError> {
        let base = self.base_url(image);
        let mut start = format!("{base}/blobs/uploads/");
        if let Some(repo) = from {
            start.push_str(&format!("?mount={digest}&from={repo}"));
        }
        let resp = self
            .send(image, Access::Push, what, |c| {
                c.post(&start).header(CONTENT_LENGTH, "0")
            })
            .await?;
        if resp.status() == StatusCode::CREATED && from.is_some() {
            return Ok(None);
        }
        // 202 also answers a refused mount: the registry opened a normal
        // upload session instead, and we use it.
        let resp = check_status(resp, what).await?;
        let location = header_str(resp.headers(), LOCATION.as_str()).ok_or_else(|| {
            RegistryError::Protocol {
                what: what.to_string(),
                reason: "upload session has no Location".to_string(),
            }
        })?;
        upload_url(&base, &location, digest).map(Some)
    }

    /// Sends a blob's bytes to an open upload session in one request.
    async fn put_blob<S, F>(
        &self,
        image: &ImageRef,
        digest: &Digest,
        size: u64,
        open: &F,
        what: &str,
        put_url: &str,
    ) -> Result<(), RegistryError>
    where
        F: Fn() -> S,
        S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    {
        // One streamed PUT: distribution's per-request cost makes many small
        // PATCHes slow, and a single request is as resumable as a chunk
        // (a failed attempt starts a new session).
        let failed: Arc<Mutex<Option<VerifyError>>> = Arc::new(Mutex::new(None));
        let body = verified_stream(
            open(),
            Verifier::new(digest, Some(size)),
            size,
            failed.clone(),
        );
        let header = self.auth_header(image, Access::Push, what).await?;
        let mut request = self
            .inner
            .http
            .put(put_url)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, size.to_string())
            .body(reqwest::Body::wrap_stream(body));
        request = match &header {
            AuthHeader::None => request,
            AuthHeader::Basic(c) => request.basic_auth(&c.username, Some(&c.password)),
            AuthHeader::Bearer(t) => request.bearer_auth(t),
        };
        let sent = request.send().await;
        if let Some(source) = failed.lock().expect("verify flag").take() {
            return Err(RegistryError::Verify {
                what: what.to_string(),
                source,
            });
        }
        let resp = sent.map_err(|e| RegistryError::Transport {
            what: what.to_string(),
            source: e.without_url(),
        })?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(RegistryError::Denied {
                what: what.to_string(),
                registry: image.registry().to_string(),
                status,
            });
        }
        let resp = check_status(resp, what).await?;
        if let Some(theirs) = header_str(resp.headers(), "docker-content-digest")
            && theirs != digest.to_string()
        {
            return Err(RegistryError::Protocol {
                what: what.to_string(),
                reason: format!("registry stored it as {theirs}"),
            });
        }
        Ok(())
    }
}

/// How a blob reached the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Uploaded,
    Mounted,
}

/// A blob download that resumes with `Range` after a dropped connection and
/// verifies everything it yielded when it ends.
pub struct BlobReader {
    client: Client,
    image: ImageRef,
    url: String,
    what: String,
    verifier: Option<Verifier>,
    response: Option<Response>,
    /// Bytes of a restarted (200, not 206) answer already yielded before.
    skip: u64,
    /// Connections lost mid-body since the last byte arrived.
    failures: u32,
}

impl BlobReader {
    /// The next chunk, or `None` once the whole blob arrived and verified.
    ///
    /// Chunks are not trustworthy until `None` came back: write them to a
    /// temporary place only.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, RegistryError> {
        let policy = self.client.inner.options.retry;
        loop {
            let Some(offset) = self.verifier.as_ref().map(Verifier::seen) else {
                return Ok(None);
            };
            if self.response.is_none() {
                // `send` retried the request itself as often as the policy
                // allows: a failure here is final, or retries would square.
                self.response = Some(self.open(offset).await?);
            }
            let resp = self.response.as_mut().expect("response set above");
            let verifier = self.verifier.as_mut().expect("checked above");
            match resp.chunk().await {
                Ok(Some(mut chunk)) => {
                    if self.skip > 0 {
                        let n = self.skip.min(chunk.len() as u64) as usize;
                        self.skip -= n as u64;
                        chunk = chunk.slice(n..);
                        if chunk.is_empty() {
                            continue;
                        }
                    }
                    verifier
                        .update_bytes(&chunk)
                        .map_err(|source| RegistryError::Verify {
                            what: self.what.clone(),
                            source,
                        })?;
                    // The budget is for drops in a row: a link that keeps
                    // failing but moves the download on each time is
                    // followed to the end (the blob's size bounds it).
                    self.failures = 0;
                    return Ok(Some(chunk));
                }
                Ok(None) => {
                    let verifier = self.verifier.take().expect("checked above");
                    self.response = None;
                    verifier.finish().map_err(|source| RegistryError::Verify {
                        what: self.what.clone(),
                        source,
                    })?;
                    return Ok(None);
                }
                Err(e) if self.failures < policy.retries => {
                    self.failures += 1;
                    tracing::debug!(
                        "{}: connection lost after {} bytes ({e}); resuming",
                        self.what,
                        verifier.seen()
                    );
                    self.response = None;
                    tokio::time::sleep(policy.backoff(self.failures, None)).await;
                }
                Err(e) => {
                    return Err(RegistryError::Transport {
                        what: self.what.clone(),
                        source: e.without_url(),
                    });
                }
            }
        }
    }

    async fn open(&mut self, offset: u64) -> Result<Response, RegistryError> {
        let url = self.url.clone();
        let resp = self
            .client
            .send(&self.image, Access::Pull, &self.what, |c| {
                let r = c.get(&url);
                if offset > 0 {
                    r.header("range", format!("bytes={offset}-"))
                } else {
                    r
                }
            })
            .await?;
        if offset > 0 && resp.status() == StatusCode::OK {
            // The registry ignored the range: read past what we have.
            self.skip = offset;
        } else if offset > 0 && resp.status() == StatusCode::PARTIAL_CONTENT {
            let start = header_str(resp.headers(), "content-range").and_then(|r| {
                r.strip_prefix("bytes ")?
                    .split('-')
                    .next()?
                    .parse::<u64>()
                    .ok()
            });
            if start != Some(offset) {
                return Err(RegistryError::Protocol {
                    what: self.what.clone(),
                    reason: format!("asked to resume at byte {offset}, got another range"),
                });
            }
            self.skip = 0;
        }
        check_status(resp, &self.what).await
    }
}

/// Wraps a byte stream so that each chunk is verified, and the request it
/// feeds is aborted when the content is wrong.
///
/// The digest is checked *before* the chunk that completes the expected
/// size is handed on: once the last byte is out, the request is complete
/// and the registry would commit (or reject) it without us.
fn verified_stream<S>(
    inner: S,
    verifier: Verifier,
    size: u64,
    failed: Arc<Mutex<Option<VerifyError>>>,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static
where
    S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
{
    let state = (Box::pin(inner), Some(verifier), failed);
    futures::stream::unfold(state, move |(mut inner, mut verifier, failed)| async move {
        let v = verifier.as_mut()?;
        let fail = |e: VerifyError| {
            let msg = e.to_string();
            *failed.lock().expect("verify flag") = Some(e);
            std::io::Error::other(msg)
        };
        let checked = match inner.next().await {
            Some(Ok(chunk)) => match v.update(&chunk) {
                Ok(()) if v.seen() == size => {
                    let v = verifier.take().expect("checked above");
                    v.finish().map(|_| chunk).map_err(fail)
                }
                Ok(()) => Ok(chunk),
                Err(e) => Err(fail(e)),
            },
            Some(Err(e)) => Err(e),
            // Ended short of the size: the verifier says by how much.
            None => match verifier.take().expect("checked above").finish() {
                Ok(_) => return None,
                Err(e) => Err(fail(e)),
            },
        };
        match checked {
            Ok(chunk) => Some((Ok(chunk), (inner, verifier, failed))),
            Err(e) => Some((Err(e), (inner, None, failed))),
        }
    })
}

/// Builds the PUT URL from an upload `Location`, which may be relative and
/// may carry a query of its own (distribution's `_state`).
fn upload_url(base: &str, location: &str, digest: &Digest) -> Result<String, RegistryError> {
    let base_url = reqwest::Url::parse(base).map_err(|e| RegistryError::Protocol {
        what: "upload".to_string(),
        reason: e.to_string(),
    })?;
    let mut url = base_url
        .join(location)
        .map_err(|e| RegistryError::Protocol {
            what: "upload".to_string(),
            reason: format!("bad Location {location:?}: {e}"),
        })?;
    url.query_pairs_mut()
        .append_pair("digest", &digest.to_string());
    Ok(url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_url_keeps_existing_query() {
        let d = Digest::sha256_of(b"");
        let url = upload_url(
            "http://127.0.0.1:5000/v2/team/app",
            "/v2/team/app/blobs/uploads/abc?_state=xyz",
            &d,
        )
        .unwrap();
        assert!(url.starts_with(
            "http://127.0.0.1:5000/v2/team/app/blobs/uploads/abc?_state=xyz&digest=sha256%3A"
        ));
        let abs = upload_url("http://a/v2/x", "https://b/up?x=1", &d).unwrap();
        assert!(abs.starts_with("https://b/up?x=1&digest="));
    }
}
