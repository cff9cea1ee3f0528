//! How the proxy answers: accepting connections, applying a rule's fault,
//! playing token server, and forwarding to the upstream registry.

use std::net::TcpListener as StdListener;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::oneshot;

use super::{Body, Fault, Listener, Logged, State, TokenAuth};

/// Accepts on both listeners until told to stop; dropping the runtime then
/// closes every connection still open.
pub(super) async fn serve(
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
        Fault::Answer {
            body,
            content_type,
            headers,
        } => {
            drain(req).await;
            let mut resp = Response::builder()
                .status(200)
                .header(header::CONTENT_TYPE, content_type);
            for (k, v) in headers {
                resp = resp.header(k, v);
            }
            Ok(resp.body(full(body)).expect("a valid response"))
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
