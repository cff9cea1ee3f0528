//! A fault-injecting HTTP proxy in front of a test [`Registry`].
//!
//! [`Faulty`] listens on 127.0.0.1 and forwards every request to the real
//! registry behind it, except those a test's rules pick out: those it
//! answers with a status, delays, cuts short, corrupts, replaces or
//! redirects. Every request is logged, so a test can assert what airlock
//! asked for and how often, not only that it ended well.
//!
//! ```ignore
//! let reg = Registry::start();
//! let proxy = Faulty::start(&reg);
//! proxy.first(2, Match::blob(&layer), Fault::ServerError(503));
//! // export proxy.reference(&img) ...
//! assert_eq!(proxy.requests(&Match::blob(&layer).method("GET")).len(), 3);
//! ```
//!
//! With [`TokenAuth`] the proxy is also the registry's token server: it
//! demands `Bearer` tokens it issued itself from `/token` against Basic
//! credentials, and can expire them after a number of uses. Rules are
//! applied before auth, as by a load balancer in front of both, so the
//! token server and the `/v2/` probe can fail too. A second
//! listener on another loopback address (the "mirror", a stand-in for a
//! CDN a registry redirects blob downloads to) serves the same content and
//! records what it was sent.
//!
//! The server runs on a thread of its own with its own tokio runtime, so it
//! serves plain `#[test]` functions; dropping [`Faulty`] stops it.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::oneshot;

use super::images::PushedImage;
use super::registry::Registry;
use super::tools::sha256_digest;

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Which requests a rule applies to: a method (or any) and a path shape.
#[derive(Debug, Clone)]
pub struct Match {
    method: Option<Method>,
    path: PathMatch,
}

#[derive(Debug, Clone)]
enum PathMatch {
    Any,
    Blob(String),
    Manifest(String),
    Uploads,
    Contains(String),
    Exactly(String),
}

impl Match {
    /// Every request.
    pub fn any() -> Match {
        Match::on(PathMatch::Any)
    }

    /// Reads of one blob: `/v2/<name>/blobs/<digest>`.
    pub fn blob(digest: &str) -> Match {
        Match::on(PathMatch::Blob(digest.to_string()))
    }

    /// One manifest by tag or digest: `/v2/<name>/manifests/<reference>`.
    pub fn manifest(reference: &str) -> Match {
        Match::on(PathMatch::Manifest(reference.to_string()))
    }

    /// Every request of blob uploads: the POST that opens a session and the
    /// PATCH and PUT that send bytes.
    pub fn uploads() -> Match {
        Match::on(PathMatch::Uploads)
    }

    /// Requests whose path and query contain `text`.
    pub fn path_contains(text: &str) -> Match {
        Match::on(PathMatch::Contains(text.to_string()))
    }

    /// Requests for exactly this path (query aside), e.g. `/v2/`.
    pub fn path_is(path: &str) -> Match {
        Match::on(PathMatch::Exactly(path.to_string()))
    }

    /// The same, but only for requests with `method` (`"GET"`, `"PUT"`..).
    pub fn method(mut self, method: &str) -> Match {
        self.method = Some(Method::from_bytes(method.as_bytes()).expect("an HTTP method"));
        self
    }

    fn on(path: PathMatch) -> Match {
        Match { method: None, path }
    }

    /// Whether a request with this method and path (query included) matches.
    pub fn matches(&self, method: &str, path_and_query: &str) -> bool {
        if self.method.as_ref().is_some_and(|m| m.as_str() != method) {
            return false;
        }
        let path = path_and_query.split('?').next().unwrap_or("");
        match &self.path {
            PathMatch::Any => true,
            PathMatch::Blob(d) => {
                path.ends_with(&format!("/blobs/{d}")) && !path.contains("/blobs/uploads/")
            }
            PathMatch::Manifest(r) => path.ends_with(&format!("/manifests/{r}")),
            PathMatch::Uploads => path.contains("/blobs/uploads/"),
            PathMatch::Contains(text) => path_and_query.contains(text.as_str()),
            PathMatch::Exactly(p) => path == p,
        }
    }
}

/// How the proxy misbehaves for a matching request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status and these extra headers (a distribution
    /// error body goes with it), e.g. 429 with `Retry-After`.
    Status(u16, Vec<(String, String)>),
    /// Answer 500, 502 or 503 with a distribution error body.
    ServerError(u16),
    /// Forward, then drop the connection after this many body bytes; the
    /// headers still announce the full `Content-Length`.
    TruncateBody(usize),
    /// Forward with the body's middle byte flipped: same length, another
    /// digest.
    CorruptBody,
    /// Wait this long, then forward.
    Delay(Duration),
    /// Answer 200 with this body as `content_type`, and with
    /// `Docker-Content-Digest: digest` when given. HEAD gets the headers.
    ReplaceBody {
        body: Bytes,
        content_type: String,
        digest: Option<String>,
    },
    /// Answer 302 with the same path and query under this base URL.
    RedirectTo(String),
    /// Read this many bytes of the request body (an upload), then close the
    /// connection without an answer.
    DropRequest(usize),
    /// Forward without the `Range` header, as registries that do not
    /// support ranges behave.
    IgnoreRange,
}

impl Fault {
    /// [`Fault::ReplaceBody`] with the body's own sha256 as its digest.
    pub fn serve(body: impl Into<Bytes>, content_type: &str) -> Fault {
        let body = body.into();
        Fault::ReplaceBody {
            digest: Some(sha256_digest(&body)),
            body,
            content_type: content_type.to_string(),
        }
    }

    /// A 429 whose `Retry-After` says `value` (seconds or an HTTP date).
    pub fn too_many_requests(retry_after: &str) -> Fault {
        Fault::Status(429, vec![("Retry-After".into(), retry_after.into())])
    }

    fn name(&self) -> &'static str {
        match self {
            Fault::Status(..) => "status",
            Fault::ServerError(_) => "server-error",
            Fault::TruncateBody(_) => "truncate",
            Fault::CorruptBody => "corrupt",
            Fault::Delay(_) => "delay",
            Fault::ReplaceBody { .. } => "replace",
            Fault::RedirectTo(_) => "redirect",
            Fault::DropRequest(_) => "drop-request",
            Fault::IgnoreRange => "ignore-range",
        }
    }
}

/// The token server's rules, for [`Faulty::with_token_auth`].
#[derive(Debug, Clone)]
pub struct TokenAuth {
    pub username: String,
    pub password: String,
    /// How many requests a token is good for before it "expires" and is
    /// answered 401; `None` for as many as asked.
    pub uses: Option<usize>,
}

impl TokenAuth {
    /// Tokens for `username`/`password` that never expire.
    pub fn new(username: &str, password: &str) -> TokenAuth {
        TokenAuth {
            username: username.to_string(),
            password: password.to_string(),
            uses: None,
        }
    }
}

/// Which listener saw a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The proxy itself.
    Proxy,
    /// The second listener that redirected blob reads land on.
    Mirror,
}

/// One request as the proxy saw and answered it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub listener: Listener,
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The `Range` header.
    pub range: Option<String>,
    /// The `Authorization` scheme (`Bearer`, `Basic`), never the secret.
    pub authorization: Option<String>,
    /// The status answered; 0 when the connection was dropped instead.
    pub status: u16,
    /// The fault applied, if a rule matched.
    pub fault: Option<&'static str>,
    /// When the request arrived.
    pub at: Instant,
    /// The same, by the wall clock (to compare with HTTP dates).
    pub when: SystemTime,
}

/// Identifies a rule, to ask how often it fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleId(usize);

struct Rule {
    matcher: Match,
    fault: Fault,
    /// Matching requests it still applies to; `None`: all of them.
    remaining: Option<usize>,
    hits: usize,
}

#[derive(Default)]
struct Book {
    rules: Vec<Rule>,
    log: Vec<Logged>,
    /// Issued tokens and how many uses each has left.
    tokens: HashMap<String, usize>,
    issued: usize,
}

struct State {
    upstream: String,
    proxy_url: String,
    client: reqwest::Client,
    auth: Option<TokenAuth>,
    book: Mutex<Book>,
}

impl State {
    fn book(&self) -> MutexGuard<'_, Book> {
        // A panicking test thread must not hide the log from the next look.
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running fault-injecting proxy; see the module docs.
pub struct Faulty {
    addr: SocketAddr,
    mirror: SocketAddr,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Faulty {
    /// A proxy that forwards to `upstream` and demands no auth of its own
    /// (the upstream's own auth, if any, passes through).
    pub fn start(upstream: &Registry) -> Faulty {
        Faulty::start_with(upstream, None)
    }

    /// A proxy that is also the token server: every `/v2/` request needs a
    /// Bearer token from its `/token`, which needs `auth`'s credentials.
    pub fn with_token_auth(upstream: &Registry, auth: TokenAuth) -> Faulty {
        Faulty::start_with(upstream, Some(auth))
    }

    fn start_with(upstream: &Registry, auth: Option<TokenAuth>) -> Faulty {
        let listener = StdListener::bind("127.0.0.1:0").expect("bind the proxy");
        // Another loopback address is another host to a client, which is
        // what decides whether it forwards credentials on a redirect.
        let mirror = StdListener::bind("127.0.0.2:0")
            .or_else(|_| StdListener::bind("127.0.0.1:0"))
            .expect("bind the mirror");
        let addr = listener.local_addr().expect("proxy address");
        let mirror_addr = mirror.local_addr().expect("mirror address");
        let state = Arc::new(State {
            upstream: upstream.url(),
            proxy_url: format!("http://{addr}"),
            client: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("build the proxy's client"),
            auth,
            book: Mutex::new(Book::default()),
        });

        let (stop, stopped) = oneshot::channel();
        let serving = state.clone();
        let thread = std::thread::Builder::new()
            .name(format!("faulty-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                runtime.block_on(serve(serving, listener, mirror, stopped));
            })
            .expect("spawn the proxy thread");
        Faulty {
            addr,
            mirror: mirror_addr,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:PORT`, as used in image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.state.proxy_url.clone()
    }

    /// The base URL of the mirror listener, for [`Fault::RedirectTo`].
    pub fn mirror_url(&self) -> String {
        format!("http://{}", self.mirror)
    }

    /// `HOST/REPO:TAG` of an image of the upstream, reached through here.
    pub fn reference(&self, image: &PushedImage) -> String {
        format!("{}/{}:{}", self.host(), image.repo, image.tag)
    }

    /// Applies `fault` to every request that `matcher` selects.
    pub fn always(&self, matcher: Match, fault: Fault) -> RuleId {
        self.add(matcher, fault, None)
    }

    /// Applies `fault` to the first `n` requests that `matcher` selects;
    /// later ones are forwarded (or left to later rules).
    pub fn first(&self, n: usize, matcher: Match, fault: Fault) -> RuleId {
        self.add(matcher, fault, Some(n))
    }

    fn add(&self, matcher: Match, fault: Fault, remaining: Option<usize>) -> RuleId {
        let mut book = self.state.book();
        book.rules.push(Rule {
            matcher,
            fault,
            remaining,
            hits: 0,
        });
        RuleId(book.rules.len() - 1)
    }

    /// How many requests a rule has been applied to.
    pub fn hits(&self, rule: RuleId) -> usize {
        self.state.book().rules[rule.0].hits
    }

    /// Removes every rule; the proxy forwards faithfully from now on.
    pub fn clear_rules(&self) {
        self.state.book().rules.clear();
    }

    /// Every request so far, in order of arrival.
    pub fn log(&self) -> Vec<Logged> {
        self.state.book().log.clone()
    }

    /// The proxy listener's requests that `matcher` selects.
    pub fn requests(&self, matcher: &Match) -> Vec<Logged> {
        self.log()
            .into_iter()
            .filter(|r| r.listener == Listener::Proxy && matcher.matches(&r.method, &r.path))
            .collect()
    }

    /// The mirror listener's requests.
    pub fn mirror_requests(&self) -> Vec<Logged> {
        let log = self.log().into_iter();
        log.filter(|r| r.listener == Listener::Mirror).collect()
    }

    /// Forgets the requests logged so far.
    pub fn clear_log(&self) {
        self.state.book().log.clear();
    }

    /// How many tokens `/token` has handed out.
    pub fn tokens_issued(&self) -> usize {
        self.state.book().issued
    }
}

impl Drop for Faulty {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Accepts on both listeners until told to stop; dropping the runtime then
/// closes every connection still open.
async fn serve(
    state: Arc<State>,
    proxy: StdListener,
    mirror: StdListener,
    stop: oneshot::Receiver<()>,
) {
    let accept = |listener: StdListener, which: Listener| {
        let state = state.clone();
        async move {
            listener
                .set_nonblocking(true)
                .expect("non-blocking listener");
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req| handle(state.clone(), which, req));
                    // Errors here are the faults we injected, or a client
                    // that went away: nothing to report.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    };
    tokio::select! {
        _ = accept(proxy, Listener::Proxy) => {}
        _ = accept(mirror, Listener::Mirror) => {}
        _ = stop => {}
    }
}

/// Answers one request and logs it.
async fn handle(
    state: Arc<State>,
    listener: Listener,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::io::Error> {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/".to_string(), |p| p.to_string());
    let mut entry = Logged {
        listener,
        method: req.method().to_string(),
        path,
        range: header_text(req.headers(), header::RANGE),
        authorization: header_text(req.headers(), header::AUTHORIZATION)
            .map(|v| v.split(' ').next().unwrap_or_default().to_string()),
        status: 0,
        fault: None,
        at: Instant::now(),
        when: SystemTime::now(),
    };
    let result = respond(&state, listener, req, &mut entry).await;
    if let Ok(resp) = &result {
        entry.status = resp.status().as_u16();
    }
    state.book().log.push(entry);
    result
}

async fn respond(
    state: &State,
    listener: Listener,
    req: Request<Incoming>,
    entry: &mut Logged,
) -> Result<Response<Body>, std::io::Error> {
    if listener == Listener::Mirror {
        return forward(state, req, None).await;
    }
    // Faults come first, as from a load balancer in front of the registry
    // and its token server; what passes them meets auth in `deliver`.
    let Some(fault) = take_fault(state, &entry.method, &entry.path) else {
        return deliver(state, req, None).await;
    };
    entry.fault = Some(fault.name());
    match fault {
        Fault::Status(code, headers) => {
            drain(req).await;
            Ok(error_response(code, &headers))
        }
        Fault::ServerError(code) => {
            drain(req).await;
            Ok(error_response(code, &[]))
        }
        Fault::Delay(wait) => {
            tokio::time::sleep(wait).await;
            deliver(state, req, None).await
        }
        Fault::ReplaceBody {
            body,
            content_type,
            digest,
        } => {
            let head = req.method() == Method::HEAD;
            drain(req).await;
            let mut resp = Response::builder()
                .status(200)
                .header(header::CONTENT_TYPE, content_type);
            if let Some(d) = digest {
                resp = resp.header("Docker-Content-Digest", d);
            }
            let resp = if head {
                resp.header(header::CONTENT_LENGTH, body.len())
                    .body(empty())
            } else {
                resp.body(full(body))
            };
            Ok(resp.expect("a valid response"))
        }
        Fault::RedirectTo(base) => {
            drain(req).await;
            let location = format!("{}{}", base.trim_end_matches('/'), entry.path);
            Ok(Response::builder()
                .status(StatusCode::FOUND)
                .header(header::LOCATION, location)
                .body(empty())
                .expect("a valid response"))
        }
        Fault::DropRequest(after) => {
            let mut body = req.into_body();
            let mut seen = 0;
            while seen < after {
                match body.frame().await {
                    Some(Ok(frame)) => seen += frame.data_ref().map_or(0, Bytes::len),
                    _ => break,
                }
            }
            // An error from the service makes hyper close the connection
            // without an answer: a dropped connection mid-upload.
            Err(std::io::Error::other("injected: upload connection dropped"))
        }
        Fault::IgnoreRange => {
            let (mut parts, body) = req.into_parts();
            parts.headers.remove(header::RANGE);
            deliver(state, Request::from_parts(parts, body), None).await
        }
        body_fault @ (Fault::TruncateBody(_) | Fault::CorruptBody) => {
            deliver(state, req, Some(body_fault)).await
        }
    }
}

/// Whether a request is for the token server (in token auth mode).
fn is_token_request(state: &State, path: &str) -> bool {
    state.auth.is_some() && path.starts_with("/token")
}

/// What a request gets past the faults: a token from the token server, a
/// challenge without a live token, else the upstream registry's answer.
async fn deliver(
    state: &State,
    req: Request<Incoming>,
    body_fault: Option<Fault>,
) -> Result<Response<Body>, std::io::Error> {
    if let Some(auth) = &state.auth {
        if is_token_request(state, req.uri().path()) {
            return Ok(issue_token(state, auth, req.headers()));
        }
        if !spend_token(state, req.headers()) {
            return Ok(challenge(state));
        }
    }
    forward(state, req, body_fault).await
}

/// The first rule that matches and still applies, counted as used.
fn take_fault(state: &State, method: &str, path: &str) -> Option<Fault> {
    let mut book = state.book();
    let rule = book
        .rules
        .iter_mut()
        .find(|r| r.remaining.is_none_or(|n| n > 0) && r.matcher.matches(method, path))?;
    rule.hits += 1;
    if let Some(n) = &mut rule.remaining {
        *n -= 1;
    }
    Some(rule.fault.clone())
}

/// `/token`: a fresh token for the right Basic credentials, 401 otherwise.
fn issue_token(state: &State, auth: &TokenAuth, headers: &HeaderMap) -> Response<Body> {
    let expected = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", auth.username, auth.password));
    let given = header_text(headers, header::AUTHORIZATION);
    if given.as_deref().and_then(|g| g.strip_prefix("Basic ")) != Some(expected.as_str()) {
        // Deliberately no detail: nothing here may echo what was sent.
        return json_response(401, r#"{"details":"invalid credentials"}"#.to_string());
    }
    let mut book = state.book();
    book.issued += 1;
    let token = format!("faulty-token-{}", book.issued);
    book.tokens
        .insert(token.clone(), auth.uses.unwrap_or(usize::MAX));
    json_response(200, format!(r#"{{"token":"{token}","expires_in":300}}"#))
}

/// Whether the request carries a live token; uses one of its uses.
fn spend_token(state: &State, headers: &HeaderMap) -> bool {
    let Some(token) = header_text(headers, header::AUTHORIZATION)
        .and_then(|v| v.strip_prefix("Bearer ").map(str::to_string))
    else {
        return false;
    };
    let mut book = state.book();
    match book.tokens.get_mut(&token) {
        Some(left) if *left > 0 => {
            *left -= 1;
            true
        }
        _ => false,
    }
}

/// The 401 that sends a client to the token server.
fn challenge(state: &State) -> Response<Body> {
    let value = format!(
        r#"Bearer realm="{}/token",service="faulty""#,
        state.proxy_url
    );
    let mut resp = error_response(401, &[]);
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_str(&value).expect("a valid header"),
    );
    resp
}

/// Sends the request on to the upstream registry and streams its answer
/// back, cut short or corrupted when `body_fault` says so.
async fn forward(
    state: &State,
    req: Request<Incoming>,
    body_fault: Option<Fault>,
) -> Result<Response<Body>, std::io::Error> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = state
        .client
        .request(parts.method.clone(), format!("{}{path}", state.upstream));
    for (name, value) in &parts.headers {
        // The token is ours; the upstream behind a token proxy has no auth.
        // Host and length are the new request's own.
        let ours = state.auth.is_some() && name == header::AUTHORIZATION;
        let own = name == header::HOST || name == header::CONTENT_LENGTH;
        if !hop_by_hop(name) && !own && !ours {
            request = request.header(name, value);
        }
    }
    let upstream = request
        .body(body)
        .send()
        .await
        .map_err(std::io::Error::other)?;

    let mut resp = Response::builder().status(upstream.status());
    for (name, value) in upstream.headers() {
        if hop_by_hop(name) {
            continue;
        }
        // Upload sessions must continue through us, not around us.
        if name == header::LOCATION
            && let Ok(text) = value.to_str()
            && let Some(rest) = text.strip_prefix(&state.upstream)
        {
            resp = resp.header(name, format!("{}{rest}", state.proxy_url));
            continue;
        }
        resp = resp.header(name, value);
    }
    let body = match body_fault {
        Some(Fault::TruncateBody(after)) => truncated(upstream.bytes_stream(), after),
        Some(Fault::CorruptBody) => {
            let mut bytes = upstream
                .bytes()
                .await
                .map_err(std::io::Error::other)?
                .to_vec();
            if !bytes.is_empty() {
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0xff;
            }
            full(bytes)
        }
        _ => BodyExt::boxed_unsync(StreamBody::new(
            upstream
                .bytes_stream()
                .map(|r| r.map(Frame::data).map_err(std::io::Error::other)),
        )),
    };
    Ok(resp.body(body).expect("a valid response"))
}

/// The first `after` bytes of `stream`, then an error that makes hyper
/// drop the connection.
fn truncated(
    stream: impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
    after: usize,
) -> Body {
    let head = stream.scan(after, |left, item| {
        let next = match item {
            Ok(_) if *left == 0 => None,
            Ok(chunk) => {
                let n = (*left).min(chunk.len());
                *left -= n;
                Some(Ok(chunk.slice(..n)))
            }
            Err(e) => Some(Err(std::io::Error::other(e))),
        };
        futures::future::ready(next)
    });
    let cut = futures::stream::once(async {
        // Give hyper time to flush what was sent: on a body error it drops
        // the connection without writing what it still buffers.
        tokio::time::sleep(Duration::from_millis(50)).await;
        Err(std::io::Error::other(
            "injected: connection dropped mid-body",
        ))
    });
    BodyExt::boxed_unsync(StreamBody::new(head.chain(cut).map(|r| r.map(Frame::data))))
}

/// Reads and discards a request body, so the client is not cut off mid-send
/// by an early answer.
async fn drain(req: Request<Incoming>) {
    let _ = req.into_body().collect().await;
}

fn error_response(code: u16, headers: &[(String, String)]) -> Response<Body> {
    let status = StatusCode::from_u16(code).expect("a valid status code");
    let code_name = match code {
        401 => "UNAUTHORIZED",
        429 => "TOOMANYREQUESTS",
        _ => "UNAVAILABLE",
    };
    let body = format!(
        r#"{{"errors":[{{"code":"{code_name}","message":"injected by the faulty proxy ({status})"}}]}}"#
    );
    let mut resp = json_response(code, body);
    for (name, value) in headers {
        resp.headers_mut().insert(
            header::HeaderName::from_bytes(name.as_bytes()).expect("a valid header name"),
            HeaderValue::from_str(value).expect("a valid header value"),
        );
    }
    resp
}

fn json_response(code: u16, body: String) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(body))
        .expect("a valid response")
}

fn full(bytes: impl Into<Bytes>) -> Body {
    BodyExt::boxed_unsync(Full::new(bytes.into()).map_err(|never| match never {}))
}

fn empty() -> Body {
    BodyExt::boxed_unsync(Empty::new().map_err(|never| match never {}))
}

/// Headers that belong to one connection, not to the message.
fn hop_by_hop(name: &header::HeaderName) -> bool {
    [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}
