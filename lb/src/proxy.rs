//! The request path, as a few phases in the spirit of pingora's `ProxyHttp`:
//!
//! 1. `request_filter`: refuse `CONNECT` and ambiguous targets (no Host, two Hosts, an
//!    invalid one, an authority-form target), read and remove the affinity cookie;
//! 2. `upstream_request_filter`: `X-Forwarded-*`, hop-by-hop headers;
//! 3. `read_body`: keep a small body for replay (within `--client-timeout`), stream any
//!    other;
//! 4. `forward`: `select_upstream` (the pinned backend if it is up, else the
//!    [`Selector`]'s choice), send with the pooled client, and on a connect failure mark
//!    the backend down and retry on the next candidate if the body can be replayed; an
//!    idempotent request whose pooled connection the backend had just closed is sent once
//!    more on a fresh one;
//! 5. `response_filter`: framing, hop-by-hop headers, backend header, affinity cookie.
//!
//! Bodies stream both ways. The one exception is a small request body (a known length of
//! at most 64 KiB), which is read first so it can be sent again to another backend. A
//! response body that stalls for `--upstream-timeout` is cut off, and a request body the
//! client garbles is answered as the client's error (400), not the backend's.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, FORWARDED, HOST, SET_COOKIE,
    TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::request::Parts;
use http::uri::{self, Scheme, Uri};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::timeout;
use tracing::{debug, warn};

use crate::affinity::CookieAffinity;
use crate::backend::{Backend, Backends};
use crate::config::Config;
use crate::error::{ErrorKind, ProxyError, Side, describe};
use crate::select::{Selector, selector};

/// What a body's failure is, whichever side's body it was.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Body type of every response the proxy produces, streamed or generated.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// Largest request head (request line and headers) taken, 431 above it: room for large
/// cookies (HAProxy stops at 16 KB, nginx at 32 KB).
pub const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// Largest request body kept in memory so it can be replayed on another backend.
const MAX_REPLAYABLE_BODY: u64 = 64 * 1024;
/// Idle upstream connections are closed after this, below common backend keep-alive limits.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus the legacy `Keep-Alive`/`Proxy-Connection`.
const HOP_BY_HOP: [HeaderName; 7] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers a client's `Connection` list may not remove: what routes and frames the
/// request, its credentials, and what proxies before this one added. RFC 9110 lets a
/// sender name any header there; HAProxy and nginx honour none of these, and a client
/// that could strip them could hide itself or drop a trusted proxy's additions.
const NEVER_HOP_BY_HOP: [HeaderName; 8] = [
    HOST,
    CONTENT_LENGTH,
    AUTHORIZATION,
    COOKIE,
    FORWARDED,
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
];

/// The reverse proxy: shared by all connections, one [`Proxy::handle`] call per request.
pub struct Proxy {
    backends: Arc<Backends>,
    selector: Box<dyn Selector>,
    affinity: Option<CookieAffinity>,
    backend_header: Option<HeaderName>,
    upstream_timeout: Duration,
    client_timeout: Duration,
    retries: u32,
    client: Client<HttpConnector, ProxyBody>,
}

/// What one request's phases learn and pass on.
struct Ctx {
    peer: SocketAddr,
    /// The backend named by a valid affinity cookie.
    pinned: Option<usize>,
}

/// A request body, either kept for replay or streamed through once.
enum RequestBody {
    Replayable(Bytes),
    Streamed {
        body: Option<Incoming>,
        /// Set when reading the body from the client failed.
        failed: Arc<AtomicBool>,
    },
}

impl RequestBody {
    /// The body for the next attempt; `None` once a streamed body was used.
    fn next(&mut self) -> Option<ProxyBody> {
        match self {
            RequestBody::Replayable(bytes) => Some(full(bytes.clone())),
            RequestBody::Streamed { body, failed } => body.take().map(|inner| {
                let failed = Arc::clone(failed);
                ClientBody { inner, failed }.boxed()
            }),
        }
    }

    /// Whether reading the streamed body from the client failed (malformed chunks, cut
    /// short): then the failed request is the client's doing, not the backend's.
    fn client_failed(&self) -> bool {
        matches!(self, RequestBody::Streamed { failed, .. } if failed.load(Ordering::Relaxed))
    }

    fn replayable(&self) -> bool {
        matches!(self, RequestBody::Replayable(_))
    }
}

impl Proxy {
    /// A proxy over `backends` with a keep-alive connection pool to them.
    pub fn new(config: &Config, backends: Arc<Backends>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Proxy {
            backends,
            selector: selector(config.algorithm),
            affinity: config.affinity.clone(),
            backend_header: config.backend_header.clone(),
            upstream_timeout: config.upstream_timeout,
            client_timeout: config.client_timeout,
            retries: config.retries,
            client,
        }
    }

    /// Proxies one request from `peer`. Failures become 4xx/5xx responses with a short
    /// plain-text body, never a dropped connection.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = request.into_parts();
        let mut ctx = Ctx { peer, pinned: None };
        let result = self.process(&mut ctx, &mut parts, body).await;
        match result {
            Ok((index, response)) => {
                let backend = self
                    .backends
                    .all()
                    .get(index)
                    .map_or("?", |b| b.id.as_str());
                debug!(
                    %peer, method = %parts.method, uri = %parts.uri, backend,
                    status = response.status().as_u16(), "proxied"
                );
                self.response_filter(&ctx, index, response)
            }
            Err(err) => {
                warn!(
                    %peer, method = %parts.method, uri = %parts.uri, side = ?err.side(),
                    "answered {}: {err}", err.status().as_u16()
                );
                error_response(&err)
            }
        }
    }

    /// Phases 1 to 4; any error ends the request with the response it maps to.
    async fn process(
        &self,
        ctx: &mut Ctx,
        parts: &mut Parts,
        body: Incoming,
    ) -> Result<(usize, Response<Incoming>), ProxyError> {
        self.request_filter(ctx, parts)?;
        upstream_request_filter(parts, ctx.peer);
        let body = read_body(body, self.client_timeout).await?;
        self.forward(ctx, parts, body).await
    }

    /// Phase 1: refuse what a reverse proxy cannot carry, take the affinity cookie out.
    fn request_filter(&self, ctx: &mut Ctx, parts: &mut Parts) -> Result<(), ProxyError> {
        if parts.method == Method::CONNECT {
            return Err(ProxyError::new(ErrorKind::Unsupported {
                what: "CONNECT".to_string(),
            }));
        }
        check_target(parts)?;
        if let Some(affinity) = &self.affinity {
            ctx.pinned = affinity
                .take(&mut parts.headers)
                .and_then(|id| self.backends.position(&id));
        }
        Ok(())
    }

    /// Backends to try next, in order, at most `attempts`. The pinned backend comes
    /// first when it is up; the algorithm is consulted only when more are needed, so
    /// pinned clients do not skew the round-robin.
    fn select_upstream(&self, ctx: &Ctx, tried: &[usize], attempts: usize) -> Vec<usize> {
        let backends = self.backends.all();
        if tried.is_empty() {
            let pinned = ctx
                .pinned
                .filter(|&i| backends.get(i).is_some_and(Backend::is_up));
            if let Some(pinned) = pinned {
                return vec![pinned];
            }
        }
        let key = match ctx.peer.ip() {
            IpAddr::V4(ip) => ip.octets().to_vec(),
            IpAddr::V6(ip) => ip.octets().to_vec(),
        };
        let mut candidates = self.selector.select(backends, &key, attempts);
        candidates.retain(|i| !tried.contains(i));
        candidates.truncate(attempts.saturating_sub(tried.len()));
        candidates
    }

    /// Phase 4: picks a backend and sends the request, moving on to the next candidate
    /// only when the error allows a retry (nothing was sent) and the body can be resent.
    async fn forward(
        &self,
        ctx: &Ctx,
        parts: &Parts,
        mut body: RequestBody,
    ) -> Result<(usize, Response<Incoming>), ProxyError> {
        let backends = self.backends.all();
        let attempts = usize::try_from(self.retries)
            .unwrap_or(usize::MAX)
            .saturating_add(1);
        let mut tried: Vec<usize> = Vec::new();
        let mut last_failure = None;
        'attempts: while tried.len() < attempts {
            let candidates = self.select_upstream(ctx, &tried, attempts);
            if candidates.is_empty() {
                break;
            }
            for index in candidates {
                let (Some(backend), Some(attempt_body)) = (backends.get(index), body.next()) else {
                    break 'attempts;
                };
                tried.push(index);
                let mut outcome = self.attempt(parts, backend, attempt_body).await;
                // The backend closed a pooled connection as the request went out on it:
                // an idempotent request goes once more, on a fresh connection, as nginx's
                // `proxy_next_upstream error` does.
                if let Err(err) = &outcome
                    && err.stale_connection
                    && parts.method.is_idempotent()
                    && let Some(again) = body.next()
                {
                    debug!("{err}; sending again on a fresh connection");
                    outcome = self.attempt(parts, backend, again).await;
                }
                if outcome.is_err() && body.client_failed() {
                    return Err(ProxyError::new(ErrorKind::BadRequest {
                        reason: "the request body was malformed or cut short".to_string(),
                    }));
                }
                match outcome {
                    Ok(response) => return Ok((index, response)),
                    Err(err) if !err.retryable => return Err(err),
                    Err(err) if !body.replayable() => return Err(err.not_replayable()),
                    Err(err) => {
                        debug!("{err}; trying another backend");
                        last_failure = Some(err);
                    }
                }
            }
        }
        match last_failure {
            Some(err) if backends.iter().any(Backend::is_up) => Err(err.gave_up(tried.len())),
            _ => Err(ProxyError::new(ErrorKind::NoHealthyBackend {
                total: backends.len(),
            })),
        }
    }

    /// One try on one backend. A failed connect takes the backend out at once (passive
    /// health check), because the next request would most likely fail the same way.
    async fn attempt(
        &self,
        parts: &Parts,
        backend: &Backend,
        body: ProxyBody,
    ) -> Result<Response<Incoming>, ProxyError> {
        let request = upstream_request(parts, backend, body)?;
        let error = match timeout(self.upstream_timeout, self.client.request(request)).await {
            Ok(Ok(response)) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                // The client's Upgrade was not passed on, so nothing was agreed: relaying
                // the switch would leave the client with a connection in no protocol.
                return Err(ProxyError::new(ErrorKind::Upstream {
                    backend: backend.id.clone(),
                    reason: "it switched protocols unasked".to_string(),
                }));
            }
            Ok(Ok(response)) => return Ok(response),
            Ok(Err(error)) => error,
            Err(_) => {
                return Err(ProxyError::new(ErrorKind::Timeout {
                    backend: backend.id.clone(),
                    timeout: self.upstream_timeout,
                }));
            }
        };
        let reason = describe(&error);
        if !error.is_connect() {
            let stale = std::error::Error::source(&error)
                .and_then(|e| e.downcast_ref::<hyper::Error>())
                .is_some_and(hyper::Error::is_incomplete_message);
            let mut err = ProxyError::new(ErrorKind::Upstream {
                backend: backend.id.clone(),
                reason,
            });
            err.stale_connection = stale;
            return Err(err);
        }
        if backend.mark_down() {
            warn!(
                "backend {} is down: connecting failed ({reason})",
                backend.id
            );
        }
        Err(ProxyError::new(ErrorKind::Connect {
            backend: backend.id.clone(),
            reason,
        }))
    }

    /// Phase 5: drop hop-by-hop headers, name the backend, pin the client if it moved.
    fn response_filter(
        &self,
        ctx: &Ctx,
        index: usize,
        response: Response<Incoming>,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = response.into_parts();
        response_framing(&mut parts.headers);
        strip_hop_by_hop(&mut parts.headers);
        if let Some(backend) = self.backends.all().get(index) {
            if let Some(name) = &self.backend_header
                && let Ok(value) = HeaderValue::from_str(&backend.id)
            {
                parts.headers.insert(name.clone(), value);
            }
            if let Some(affinity) = &self.affinity
                && ctx.pinned != Some(index)
                && let Some(cookie) = affinity.set_cookie(&backend.id)
            {
                parts.headers.append(SET_COOKIE, cookie);
            }
        }
        let body = IdleTimeout {
            inner: body,
            idle: self.upstream_timeout,
            sleep: Box::pin(tokio::time::sleep(self.upstream_timeout)),
        };
        Response::from_parts(parts, body.boxed())
    }
}

/// Refuses a request whose head is over [`MAX_REQUEST_HEAD`], or whose target is
/// ambiguous, as HAProxy and nginx do (RFC 9112 §3.2): two Host headers, an invalid one,
/// none in HTTP/1.1, or an authority-form target on a method other than CONNECT. An
/// absolute-form target's authority replaces the Host.
fn check_target(parts: &mut Parts) -> Result<(), ProxyError> {
    let bad = |reason: &str| {
        Err(ProxyError::new(ErrorKind::BadRequest {
            reason: reason.to_string(),
        }))
    };
    let target = parts.uri.authority().map_or(0, |a| a.as_str().len())
        + parts.uri.path_and_query().map_or(0, |p| p.as_str().len());
    let head = target
        + parts
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>();
    if head > MAX_REQUEST_HEAD {
        return Err(ProxyError::new(ErrorKind::HeadTooLarge {
            limit: MAX_REQUEST_HEAD,
        }));
    }
    if parts.uri.scheme().is_none() && parts.uri.authority().is_some() {
        return bad("an authority-form target is only for CONNECT");
    }
    let mut hosts = parts.headers.get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return bad("more than one Host header");
    }
    if let Some(authority) = parts.uri.authority() {
        if let Ok(value) = HeaderValue::from_str(authority.as_str()) {
            parts.headers.insert(HOST, value);
        }
        return Ok(());
    }
    match host {
        None if parts.version == Version::HTTP_11 => bad("no Host header"),
        Some(value)
            if value
                .to_str()
                .ok()
                .and_then(|h| h.parse::<uri::Authority>().ok())
                .is_none_or(|a| a.as_str().contains('@')) =>
        {
            bad("an invalid Host header")
        }
        _ => Ok(()),
    }
}

/// A response that names both a Transfer-Encoding and a Content-Length was framed by the
/// former (RFC 9112 §6.3), and this proxy re-frames it: the length goes. Repeated equal
/// lengths (`5, 5`) become one.
fn response_framing(headers: &mut HeaderMap) {
    if headers.contains_key(TRANSFER_ENCODING) {
        headers.remove(CONTENT_LENGTH);
        return;
    }
    let lengths: Vec<String> = headers
        .get_all(CONTENT_LENGTH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .collect();
    if lengths.len() > 1
        && lengths.iter().all(|l| *l == lengths[0])
        && let Ok(one) = HeaderValue::from_str(&lengths[0])
    {
        headers.insert(CONTENT_LENGTH, one);
    }
}

/// A streamed request body that remembers whether reading it from the client failed.
struct ClientBody {
    inner: Incoming,
    failed: Arc<AtomicBool>,
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => {
                this.failed.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(e.into())))
            }
            other => other.map(|frame| frame.map(|f| f.map_err(BoxError::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that fails once the backend has sent nothing for `idle`, so that a
/// backend stalled mid-response cannot hold the client's connection (HAProxy's `timeout
/// server`); the client sees the response cut short.
struct IdleTimeout {
    inner: Incoming,
    idle: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Body for IdleTimeout {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = tokio::time::Instant::now() + this.idle;
                this.sleep.as_mut().reset(next);
                Poll::Ready(frame.map(|f| f.map_err(BoxError::from)))
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(format!(
                    "the backend sent nothing for {:?} in the middle of a response",
                    this.idle
                )
                .into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Phase 2: headers a backend needs to know who really asked, minus per-hop ones.
fn upstream_request_filter(parts: &mut Parts, peer: SocketAddr) {
    let headers = &mut parts.headers;
    // Strip first, so a client listing X-Forwarded-* in Connection only drops its own copy.
    strip_hop_by_hop(headers);
    // The LB's own server answers `Expect: 100-continue` when it reads the body; the
    // backend gets the body without being asked.
    headers.remove(http::header::EXPECT);
    let client_ip = peer.ip().to_canonical().to_string();
    let mut forwarded_for: Vec<u8> = Vec::new();
    for previous in headers.get_all(&X_FORWARDED_FOR) {
        forwarded_for.extend_from_slice(previous.as_bytes());
        forwarded_for.extend_from_slice(b", ");
    }
    forwarded_for.extend_from_slice(client_ip.as_bytes());
    let forwarded_for =
        HeaderValue::from_bytes(&forwarded_for).or_else(|_| HeaderValue::try_from(client_ip));
    if let Ok(value) = forwarded_for {
        headers.insert(X_FORWARDED_FOR, value);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    let host = headers.get(HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    match host {
        Some(host) => headers.insert(X_FORWARDED_HOST, host),
        None => headers.remove(X_FORWARDED_HOST),
    };
}

/// Removes hop-by-hop headers, including any the `Connection` header names but those in
/// [`NEVER_HOP_BY_HOP`].
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    let listed = listed
        .iter()
        .filter(|name| !NEVER_HOP_BY_HOP.contains(name));
    for name in listed.chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// Phase 3: reads a small body of known length into memory, within `limit` (a client
/// that trickles it gets a 408); anything else streams.
async fn read_body(body: Incoming, limit: Duration) -> Result<RequestBody, ProxyError> {
    match body.size_hint().exact() {
        Some(len) if len <= MAX_REPLAYABLE_BODY => match timeout(limit, body.collect()).await {
            Ok(Ok(collected)) => Ok(RequestBody::Replayable(collected.to_bytes())),
            Ok(Err(e)) => Err(ProxyError::new(ErrorKind::BadRequest {
                reason: format!("could not read the request body: {}", describe(&e)),
            })),
            Err(_) => Err(ProxyError::new(ErrorKind::ClientTimeout { timeout: limit })),
        },
        _ => Ok(RequestBody::Streamed {
            body: Some(body),
            failed: Arc::default(),
        }),
    }
}

/// The request as sent to `backend`: same method, path and headers, HTTP/1.1.
fn upstream_request(
    parts: &Parts,
    backend: &Backend,
    body: ProxyBody,
) -> Result<Request<ProxyBody>, ProxyError> {
    let mut target = uri::Parts::default();
    target.scheme = Some(Scheme::HTTP);
    target.authority = Some(backend.authority.clone());
    target.path_and_query = Some(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| uri::PathAndQuery::from_static("/")),
    );
    let uri = Uri::from_parts(target).map_err(|e| {
        ProxyError::new(ErrorKind::BadRequest {
            reason: format!("invalid request target {}: {e}", parts.uri),
        })
    })?;
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = parts.headers.clone();
    Ok(request)
}

fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

fn error_response(err: &ProxyError) -> Response<ProxyBody> {
    let mut response = Response::new(full(Bytes::from(err.body())));
    *response.status_mut() = err.status();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    // After a request it could not make sense of, a client's next bytes cannot be
    // trusted to start a request either: the connection closes, as in HAProxy and nginx.
    if err.side() == Side::Downstream {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("valid name"),
                HeaderValue::from_str(value).expect("valid value"),
            );
        }
        map
    }

    fn names(map: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_lists_are_stripped_but_not_end_to_end_ones() {
        let mut map = headers(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("connection", "x-other, Cookie, Host"),
            ("host", "shop.example"),
            ("x-secret-hop", "1"),
            ("x-other", "2"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("accept", "*/*"),
            ("cookie", "a=1"),
        ]);
        strip_hop_by_hop(&mut map);
        assert_eq!(names(&map), ["accept", "cookie", "host"]);
    }

    #[test]
    fn a_response_framed_twice_keeps_the_chunked_framing() {
        let mut map = headers(&[("content-length", "3"), ("transfer-encoding", "chunked")]);
        response_framing(&mut map);
        assert_eq!(names(&map), ["transfer-encoding"]);
        let mut map = headers(&[("content-length", "5, 5")]);
        response_framing(&mut map);
        assert_eq!(
            map.get("content-length").map(HeaderValue::as_bytes),
            Some(&b"5"[..])
        );
    }

    #[test]
    fn forwarded_headers_are_added() {
        let request = Request::builder()
            .uri("/path?q=1")
            .header(HOST, "shop.example")
            .header("x-forwarded-for", "203.0.113.7")
            .header("x-forwarded-proto", "https")
            .header("connection", "x-forwarded-host")
            .header("x-forwarded-host", "spoofed")
            .body(())
            .expect("valid request");
        let (mut parts, ()) = request.into_parts();
        let peer: SocketAddr = "[::ffff:127.0.0.1]:4000".parse().expect("valid address");
        upstream_request_filter(&mut parts, peer);
        let get = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        assert_eq!(get("x-forwarded-for"), Some("203.0.113.7, 127.0.0.1"));
        assert_eq!(get("x-forwarded-proto"), Some("http"));
        assert_eq!(get("x-forwarded-host"), Some("shop.example"));
        assert_eq!(get("connection"), None);
    }
}
