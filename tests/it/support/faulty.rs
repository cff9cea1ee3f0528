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
//! credentials, and can expire them after a number of uses. Rules apply
//! before auth, as at a load balancer in front of both, so the token
//! server and the `/v2/` probe can fail too.
//!
//! A second listener on another loopback address (the "mirror", standing
//! in for the CDN a registry redirects blob reads to) serves the same
//! content without rules or auth and records what it was sent.
//!
//! The server runs on a thread of its own with its own tokio runtime, so it
//! serves plain `#[test]` functions; dropping [`Faulty`] stops it.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::Method;
use tokio::sync::oneshot;

use super::images::PushedImage;
use super::registry::Registry;
use super::tools::sha256_digest;

mod serve;

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
    /// Answer 200 with this body as `content_type` and these extra headers
    /// (a referrers API page with its `Link`, say).
    Answer {
        body: Bytes,
        content_type: String,
        headers: Vec<(String, String)>,
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
            Fault::Answer { .. } => "answer",
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
                runtime.block_on(serve::serve(serving, listener, mirror, stopped));
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
