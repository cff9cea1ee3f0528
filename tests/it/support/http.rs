//! A minimal synchronous client for the registry API, used to seed test
//! registries with exact bytes and to read back what a push produced.
//!
//! It is deliberately independent of airlock's own registry code, so a bug
//! there cannot hide itself by being on both sides of a test.
//!
//! These functions use `reqwest::blocking`; call them from plain `#[test]`
//! functions, or through `spawn_blocking` from inside an async runtime.

use std::sync::OnceLock;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::blocking::{Client, RequestBuilder, Response};

use super::registry::Registry;
use super::tools::sha256_digest;

/// Every manifest and index media type, so the registry never has to
/// convert or refuse: we want to see what was stored.
pub const ACCEPT_ALL_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.v1+prettyjws, \
     application/vnd.docker.distribution.manifest.v1+json";

/// A manifest as the registry served it.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// The body, byte for byte.
    pub bytes: Vec<u8>,
    /// The `Content-Type` header.
    pub content_type: String,
    /// The `Docker-Content-Digest` header (empty if absent).
    pub docker_content_digest: String,
}

/// One process-wide client: building a blocking client starts a runtime
/// thread, which is wasteful per call.
fn client() -> &'static Client {
    static CLIENT: OnceLock<Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("build registry test client")
    })
}

fn authed(reg: &Registry, req: RequestBuilder) -> RequestBuilder {
    match reg.credentials() {
        Some((user, pass)) => req.basic_auth(user, Some(pass)),
        None => req,
    }
}

fn send(reg: &Registry, req: RequestBuilder, what: &str) -> Response {
    authed(reg, req)
        .send()
        .unwrap_or_else(|e| panic!("{what} against {}: {e}", reg.host()))
}

fn expect_status(resp: Response, want: StatusCode, what: &str) -> Response {
    if resp.status() != want {
        let status = resp.status();
        let body = resp.text().unwrap_or_default();
        panic!("{what}: expected {want}, got {status}: {body}");
    }
    resp
}

fn header(resp: &Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Uploads `bytes` as a blob into `repo` and returns its `sha256:` digest.
///
/// Uses the two-step POST-then-PUT upload, which every registry supports.
pub fn push_blob(reg: &Registry, repo: &str, bytes: &[u8]) -> String {
    let digest = sha256_digest(bytes);
    let what = format!("start upload of {digest} to {repo}");
    let url = format!("{}/v2/{repo}/blobs/uploads/", reg.url());
    let resp = send(reg, client().post(&url), &what);
    let resp = expect_status(resp, StatusCode::ACCEPTED, &what);
    let location = header(&resp, "Location");
    assert!(!location.is_empty(), "{what}: no Location header");
    // The spec allows a relative Location; distribution sends an absolute one.
    let mut put_url = if location.starts_with("http://") || location.starts_with("https://") {
        location
    } else {
        format!("{}{location}", reg.url())
    };
    put_url.push(if put_url.contains('?') { '&' } else { '?' });
    put_url.push_str("digest=");
    put_url.push_str(&digest);

    let what = format!("finish upload of {digest} to {repo}");
    let req = client()
        .put(&put_url)
        .header("Content-Type", "application/octet-stream")
        .body(bytes.to_vec());
    let resp = expect_status(send(reg, req, &what), StatusCode::CREATED, &what);
    let served = header(&resp, "Docker-Content-Digest");
    assert_eq!(served, digest, "{what}: registry computed another digest");
    digest
}

/// Stores `bytes` as a manifest under `reference` (a tag or digest) with the
/// given media type, and returns its digest.
///
/// Panics unless the registry's `Docker-Content-Digest` equals the digest of
/// our bytes, i.e. it kept them as they were.
pub fn push_manifest(
    reg: &Registry,
    repo: &str,
    reference: &str,
    media_type: &str,
    bytes: &[u8],
) -> String {
    let digest = sha256_digest(bytes);
    let what = format!("push manifest {repo}:{reference} ({media_type})");
    let url = format!("{}/v2/{repo}/manifests/{reference}", reg.url());
    let req = client()
        .put(&url)
        .header("Content-Type", media_type)
        .body(bytes.to_vec());
    let resp = expect_status(send(reg, req, &what), StatusCode::CREATED, &what);
    let served = header(&resp, "Docker-Content-Digest");
    assert_eq!(served, digest, "{what}: registry changed the manifest");
    digest
}

/// Fetches a manifest by tag or digest, accepting every manifest type.
///
/// Returns `(bytes, content_type, docker_content_digest)`.
pub fn get_manifest(reg: &Registry, repo: &str, reference: &str) -> (Vec<u8>, String, String) {
    let m = try_get_manifest(reg, repo, reference)
        .unwrap_or_else(|| panic!("manifest {repo}:{reference} not found on {}", reg.host()));
    (m.bytes, m.content_type, m.docker_content_digest)
}

/// Like [`get_manifest`], but `None` on 404 instead of panicking.
pub fn try_get_manifest(reg: &Registry, repo: &str, reference: &str) -> Option<FetchedManifest> {
    get_manifest_accepting(reg, repo, reference, Some(ACCEPT_ALL_MANIFESTS))
}

/// Fetches a manifest with a chosen `Accept` header (`None` sends none), to
/// observe how the registry negotiates; `None` on 404.
pub fn get_manifest_accepting(
    reg: &Registry,
    repo: &str,
    reference: &str,
    accept: Option<&str>,
) -> Option<FetchedManifest> {
    let what = format!("get manifest {repo}:{reference} (Accept: {accept:?})");
    let url = format!("{}/v2/{repo}/manifests/{reference}", reg.url());
    let mut req = client().get(&url);
    if let Some(accept) = accept {
        req = req.header("Accept", accept);
    }
    let resp = send(reg, req, &what);
    if resp.status() == StatusCode::NOT_FOUND {
        return None;
    }
    let resp = expect_status(resp, StatusCode::OK, &what);
    let content_type = header(&resp, "Content-Type");
    let docker_content_digest = header(&resp, "Docker-Content-Digest");
    let bytes = resp
        .bytes()
        .unwrap_or_else(|e| panic!("{what}: body: {e}"))
        .to_vec();
    Some(FetchedManifest {
        bytes,
        content_type,
        docker_content_digest,
    })
}

/// Deletes a manifest by digest (the registry refuses deletion by tag).
/// Returns false if it did not exist.
pub fn delete_manifest(reg: &Registry, repo: &str, digest: &str) -> bool {
    let what = format!("delete manifest {repo}@{digest}");
    let url = format!("{}/v2/{repo}/manifests/{digest}", reg.url());
    let resp = send(reg, client().delete(&url), &what);
    found(&resp, StatusCode::ACCEPTED, &what)
}

/// Unlinks a blob from a repository, so that GETs of it answer 404 (to
/// make a run fail at a chosen blob). Returns false if it was not there.
pub fn delete_blob(reg: &Registry, repo: &str, digest: &str) -> bool {
    let what = format!("delete blob {repo}@{digest}");
    let url = format!("{}/v2/{repo}/blobs/{digest}", reg.url());
    let resp = send(reg, client().delete(&url), &what);
    found(&resp, StatusCode::ACCEPTED, &what)
}

/// Whether `HEAD /v2/<repo>/blobs/<digest>` finds the blob.
pub fn blob_exists(reg: &Registry, repo: &str, digest: &str) -> bool {
    let what = format!("head blob {repo}@{digest}");
    let url = format!("{}/v2/{repo}/blobs/{digest}", reg.url());
    let resp = send(reg, client().head(&url), &what);
    found(&resp, StatusCode::OK, &what)
}

/// True on `yes`, false on 404; any other answer fails the test.
fn found(resp: &Response, yes: StatusCode, what: &str) -> bool {
    match resp.status() {
        s if s == yes => true,
        StatusCode::NOT_FOUND => false,
        other => panic!("{what}: unexpected status {other}"),
    }
}

/// Downloads a blob and checks that its bytes match `digest`.
pub fn get_blob(reg: &Registry, repo: &str, digest: &str) -> Vec<u8> {
    let what = format!("get blob {repo}@{digest}");
    let url = format!("{}/v2/{repo}/blobs/{digest}", reg.url());
    let resp = expect_status(send(reg, client().get(&url), &what), StatusCode::OK, &what);
    let bytes = resp
        .bytes()
        .unwrap_or_else(|e| panic!("{what}: body: {e}"))
        .to_vec();
    assert_eq!(sha256_digest(&bytes), digest, "{what}: content mismatch");
    bytes
}

/// The tags of `repo`, sorted; empty if the repository does not exist.
pub fn list_tags(reg: &Registry, repo: &str) -> Vec<String> {
    let what = format!("list tags of {repo}");
    let url = format!("{}/v2/{repo}/tags/list", reg.url());
    let resp = send(reg, client().get(&url), &what);
    if resp.status() == StatusCode::NOT_FOUND {
        return Vec::new();
    }
    let resp = expect_status(resp, StatusCode::OK, &what);
    let body: serde_json::Value =
        serde_json::from_slice(&resp.bytes().expect("tags body")).expect("tags JSON");
    let mut tags: Vec<String> = body["tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    tags.sort();
    tags
}

/// The repositories in the registry's catalog, sorted.
pub fn catalog(reg: &Registry) -> Vec<String> {
    let what = "list catalog";
    let url = format!("{}/v2/_catalog?n=1000", reg.url());
    let resp = expect_status(send(reg, client().get(&url), what), StatusCode::OK, what);
    let body: serde_json::Value =
        serde_json::from_slice(&resp.bytes().expect("catalog body")).expect("catalog JSON");
    let mut repos: Vec<String> = body["repositories"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    repos.sort();
    repos
}
