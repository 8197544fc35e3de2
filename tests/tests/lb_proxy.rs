//! The `lb` binary against small in-test HTTP backends on 127.0.0.1: balancing, forwarded
//! and hop-by-hop headers, signed-cookie affinity, retries after refused connections,
//! health checks, graceful shutdown and start-up errors.
//!
//! Each backend answers with its name and the request it saw (as JSON), serves `/healthz`
//! (switchable to 500) and `/slow?ms=N`. Every test is bounded by [`TEST_TIMEOUT`].

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e::{Proc, free_port, wait_for, wait_for_async};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, SET_COOKIE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

const TEST_TIMEOUT: Duration = Duration::from_secs(60);
const COOKIE_KEY: &str = "e2e-test-cookie-key-0123456789";
const COOKIE: &str = "lb_backend";

/// Runs a test body with a deadline, so a hang fails instead of blocking the suite.
async fn bounded(test: impl Future<Output = ()>) {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test did not finish within its time limit");
}

// ---------------------------------------------------------------------------------------
// In-test backends

struct BackendState {
    name: String,
    healthy: AtomicBool,
    in_flight: AtomicUsize,
}

/// A small HTTP/1.1 server on 127.0.0.1 that can be stopped like a killed process.
struct TestBackend {
    port: u16,
    state: Arc<BackendState>,
    running: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

/// Backends `a`, `b` and `c`, and their `--backend` specs.
async fn three_backends() -> ([TestBackend; 3], Vec<String>) {
    let backends = [
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("c").await,
    ];
    let specs = backends.iter().map(TestBackend::spec).collect();
    (backends, specs)
}

impl TestBackend {
    /// Listens on a port the kernel picks, so no other process can take it first.
    async fn start(name: &str) -> TestBackend {
        TestBackend::start_on(name, 0).await
    }

    async fn start_on(name: &str, port: u16) -> TestBackend {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind a test backend");
        let port = listener.local_addr().expect("a bound address").port();
        let state = Arc::new(BackendState {
            name: name.to_string(),
            healthy: AtomicBool::new(true),
            in_flight: AtomicUsize::new(0),
        });
        let (stop, mut stopped) = oneshot::channel();
        let serving = Arc::clone(&state);
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let state = Arc::clone(&serving);
                        connections.spawn(async move {
                            let service = service_fn(move |request| {
                                answer(Arc::clone(&state), request)
                            });
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                }
            }
            // Close the listener and every open connection, as a killed process would.
            drop(listener);
            connections.shutdown().await;
        });
        TestBackend {
            port,
            state,
            running: Some((stop, task)),
        }
    }

    fn name(&self) -> &str {
        &self.state.name
    }

    fn spec(&self) -> String {
        format!("{}=http://127.0.0.1:{}", self.name(), self.port)
    }

    fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Stops accepting and closes all connections; returns once the port refuses.
    async fn stop(&mut self) {
        if let Some((stop, task)) = self.running.take() {
            let _ = stop.send(());
            let _ = task.await;
        }
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        if let Some((_, task)) = self.running.take() {
            task.abort();
        }
    }
}

async fn answer(
    state: Arc<BackendState>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_string();
    if path == "/healthz" {
        let status = if state.healthy.load(Ordering::SeqCst) {
            StatusCode::OK
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        let mut response = Response::new(Full::new(Bytes::from_static(b"health\n")));
        *response.status_mut() = status;
        return Ok(response);
    }
    if path == "/slow" {
        let ms: u64 = request
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("ms="))
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(1000);
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        state.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in request.headers() {
        headers
            .entry(name.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let method = request.method().to_string();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let echo = json!({
        "backend": state.name,
        "method": method,
        "path": path,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    let mut response = Response::new(Full::new(Bytes::from(echo.to_string())));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, "application/json".parse().expect("static"));
    if path == "/hop" {
        let headers = response.headers_mut();
        headers.insert("connection", "x-resp-hop".parse().expect("static"));
        headers.insert("x-resp-hop", "yes".parse().expect("static"));
        headers.insert("keep-alive", "timeout=5".parse().expect("static"));
    }
    Ok(response)
}

// ---------------------------------------------------------------------------------------
// The LB under test

struct Lb {
    proc: Proc,
    port: u16,
}

impl Lb {
    /// Starts the `lb` binary in front of `backends` (specs `id=http://...`) with a fixed
    /// cookie key plus `extra` flags, and waits until it accepts connections.
    async fn start(backends: &[String], extra: &[&str]) -> Lb {
        let mut args = vec!["--cookie-key".to_string(), COOKIE_KEY.to_string()];
        for spec in backends {
            args.push("--backend".to_string());
            args.push(spec.clone());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Lb::start_with(args, &[]).await
    }

    /// Starts the `lb` binary with exactly `args` and `env` besides `--listen`, on a port
    /// the kernel picks, read back from the `listening on` line it logs once it accepts
    /// connections (so no other process can take the port first).
    async fn start_with(mut args: Vec<String>, env: &[(&str, &str)]) -> Lb {
        args.push("--listen".to_string());
        args.push("127.0.0.1:0".to_string());
        let binary = lb_binary().await;
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (proc, port) = tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let mut proc = Proc::spawn("lb", &binary, &args, &env);
            let port = proc
                .logged_addr("listening", Duration::from_secs(20))
                .port();
            (proc, port)
        })
        .await
        .expect("start the lb binary");
        Lb { proc, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

async fn lb_binary() -> std::path::PathBuf {
    tokio::task::spawn_blocking(|| e2e::bin("lb"))
        .await
        .expect("build the lb binary")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("build an HTTP client")
}

fn client_with_jar() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .cookie_store(true)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("build an HTTP client")
}

/// What one response through the LB showed.
struct Seen {
    status: StatusCode,
    /// The `X-Backend` response header.
    backend: Option<String>,
    /// Value of the LB's cookie in `Set-Cookie`, if it set one.
    set_cookie: Option<String>,
    set_cookie_line: Option<String>,
    /// The backend's echo, when a backend answered.
    echo: Value,
    text: String,
}

async fn send(request: reqwest::RequestBuilder) -> Seen {
    let response = request.send().await.expect("request through the lb");
    let status = StatusCode::from_u16(response.status().as_u16()).expect("valid status");
    let backend = response
        .headers()
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let set_cookie_line = response
        .headers()
        .get_all(SET_COOKIE.as_str())
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{COOKIE}=")))
        .map(str::to_string);
    let set_cookie = set_cookie_line.as_deref().map(|line| {
        line.trim_start_matches(&format!("{COOKIE}="))
            .split(';')
            .next()
            .unwrap_or_default()
            .to_string()
    });
    let text = response.text().await.expect("read the response body");
    let echo = serde_json::from_str(&text).unwrap_or(Value::Null);
    Seen {
        status,
        backend,
        set_cookie,
        set_cookie_line,
        echo,
        text,
    }
}

/// Request headers the backend saw, by lower-case name.
fn seen_header<'a>(echo: &'a Value, name: &str) -> Vec<&'a str> {
    echo["headers"][name]
        .as_array()
        .map(|values| values.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Balancing and headers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly_and_names_the_backend() {
    bounded(async {
        let (backends, specs) = three_backends().await;
        let lb = Lb::start(&specs, &[]).await;
        let client = client();
        let mut counts: HashMap<String, usize> = HashMap::new();
        for _ in 0..30 {
            let seen = send(client.get(lb.url("/"))).await;
            assert_eq!(seen.status, StatusCode::OK, "{}", seen.text);
            let answered = seen.echo["backend"]
                .as_str()
                .expect("echo names its backend");
            assert_eq!(
                seen.backend.as_deref(),
                Some(answered),
                "X-Backend is the answering backend"
            );
            assert!(
                seen.set_cookie.is_none(),
                "no affinity cookie without --affinity cookie"
            );
            *counts.entry(answered.to_string()).or_default() += 1;
        }
        for backend in &backends {
            assert_eq!(counts.get(backend.name()), Some(&10), "counts: {counts:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_arrive_and_hop_by_hop_headers_do_not() {
    bounded(async {
        let backend = TestBackend::start("a").await;
        let lb = Lb::start(&[backend.spec()], &["--affinity", "cookie"]).await;
        // Raw bytes, so no client library adds or drops headers on the way.
        let mut stream = TcpStream::connect(("127.0.0.1", lb.port))
            .await
            .expect("connect to the lb");
        let request = "GET /hop?x=1 HTTP/1.1\r\n\
            Host: shop.example:8080\r\n\
            X-Forwarded-For: 203.0.113.7\r\n\
            X-Forwarded-Proto: https\r\n\
            Connection: close, X-Hop\r\n\
            X-Hop: secret\r\n\
            Keep-Alive: timeout=5\r\n\
            Proxy-Connection: keep-alive\r\n\
            TE: trailers\r\n\
            Trailer: X-Checksum\r\n\
            Upgrade: websocket\r\n\
            Cookie: a=1; lb_backend=a.forged; b=2\r\n\
            X-Custom: kept\r\n\
            \r\n";
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send the request");
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .expect("read until the lb closes");
        let raw = String::from_utf8_lossy(&raw);
        let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
        let head = head.to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains("\r\nx-backend: a\r\n"), "{head}");
        assert!(
            !head.contains("x-resp-hop"),
            "response hop-by-hop header leaked: {head}"
        );
        assert!(
            !head.contains("keep-alive"),
            "response Keep-Alive leaked: {head}"
        );

        let echo: Value = serde_json::from_str(body).expect("the backend's JSON echo");
        assert_eq!(echo["path"], "/hop");
        assert_eq!(
            seen_header(&echo, "x-forwarded-for"),
            ["203.0.113.7, 127.0.0.1"]
        );
        assert_eq!(seen_header(&echo, "x-forwarded-proto"), ["http"]);
        assert_eq!(
            seen_header(&echo, "x-forwarded-host"),
            ["shop.example:8080"]
        );
        assert_eq!(seen_header(&echo, "host"), ["shop.example:8080"]);
        assert_eq!(seen_header(&echo, "x-custom"), ["kept"]);
        assert_eq!(
            seen_header(&echo, "cookie"),
            ["a=1; b=2"],
            "LB cookie stripped, others kept"
        );
        for hop in [
            "connection",
            "x-hop",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "upgrade",
        ] {
            assert!(
                seen_header(&echo, hop).is_empty(),
                "{hop} reached the backend: {echo}"
            );
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Cookie affinity

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_affinity_pins_a_client_and_sets_the_cookie_once() {
    bounded(async {
        let (_backends, specs) = three_backends().await;
        let lb = Lb::start(&specs, &["--affinity", "cookie"]).await;

        let browser = client_with_jar();
        let first = send(browser.get(lb.url("/"))).await;
        assert_eq!(first.status, StatusCode::OK, "{}", first.text);
        let pinned = first.backend.clone().expect("X-Backend");
        let line = first
            .set_cookie_line
            .clone()
            .expect("first response sets the cookie");
        for attribute in ["Path=/", "HttpOnly", "SameSite=Lax"] {
            assert!(line.contains(attribute), "{attribute} missing in {line}");
        }
        let cookie = first.set_cookie.clone().expect("cookie value");
        assert!(
            cookie.starts_with(&format!("{pinned}.")),
            "{cookie} names {pinned}"
        );
        for i in 1..30 {
            let seen = send(browser.get(lb.url("/"))).await;
            assert_eq!(seen.status, StatusCode::OK);
            assert_eq!(
                seen.backend.as_deref(),
                Some(pinned.as_str()),
                "request {i} moved"
            );
            assert_eq!(
                seen.set_cookie_line, None,
                "request {i} set the cookie again"
            );
            assert!(
                seen_header(&seen.echo, "cookie").is_empty(),
                "the app saw the LB cookie"
            );
        }

        // Another client is balanced on its own, not sent where the first one is pinned.
        let other = send(client_with_jar().get(lb.url("/"))).await;
        assert_ne!(other.backend.as_deref(), Some(pinned.as_str()));

        // A replica with the same key honours the cookie without being told anything.
        let replica = Lb::start(&specs, &["--affinity", "cookie"]).await;
        let seen = send(
            client()
                .get(replica.url("/"))
                .header("cookie", format!("{COOKIE}={cookie}")),
        )
        .await;
        assert_eq!(seen.backend.as_deref(), Some(pinned.as_str()));
        assert_eq!(seen.set_cookie_line, None);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_cookies_are_ignored_and_replaced_never_rejected() {
    bounded(async {
        let (backends, specs) = three_backends().await;
        let lb = Lb::start(&specs, &["--affinity", "cookie"]).await;
        let first = send(client().get(lb.url("/"))).await;
        let genuine = first.set_cookie.expect("a fresh cookie");
        let pinned = first.backend.expect("X-Backend");
        let (_, mac) = genuine.rsplit_once('.').expect("id.mac");
        let other = backends
            .iter()
            .map(TestBackend::name)
            .find(|name| *name != pinned)
            .expect("another backend");
        let mut flipped = genuine.clone();
        let last = flipped
            .pop()
            .map_or('A', |c| if c == 'A' { 'B' } else { 'A' });
        flipped.push(last);
        let forged = [
            format!("{other}.{mac}"),
            flipped,
            format!("{other}.AAAA"),
            "nonexistent.c29tZXRoaW5n".to_string(),
            "garbage%%%".to_string(),
            String::new(),
            "x".repeat(8 * 1024),
        ];
        for value in &forged {
            assert_forged_cookie_is_replaced(&lb, value).await;
        }

        // Validly signed, but for a backend this LB does not have.
        let remaining: Vec<String> = backends
            .iter()
            .filter(|b| b.name() != pinned)
            .map(TestBackend::spec)
            .collect();
        let smaller = Lb::start(&remaining, &["--affinity", "cookie"]).await;
        assert_forged_cookie_is_replaced(&smaller, &genuine).await;
    })
    .await;
}

async fn assert_forged_cookie_is_replaced(lb: &Lb, value: &str) {
    let shown = &value[..value.len().min(40)];
    let seen = send(
        client()
            .get(lb.url("/"))
            .header("cookie", format!("a=1; {COOKIE}={value}")),
    )
    .await;
    assert_eq!(
        seen.status,
        StatusCode::OK,
        "cookie {shown:?}: {}",
        seen.text
    );
    assert_eq!(
        seen_header(&seen.echo, "cookie"),
        ["a=1"],
        "cookie {shown:?}"
    );
    let fresh = seen
        .set_cookie
        .unwrap_or_else(|| panic!("cookie {shown:?} was accepted instead of replaced"));
    let backend = seen.backend.expect("X-Backend");
    assert!(fresh.starts_with(&format!("{backend}.")));
    let again = send(
        client()
            .get(lb.url("/"))
            .header("cookie", format!("{COOKIE}={fresh}")),
    )
    .await;
    assert_eq!(again.backend, Some(backend), "the fresh cookie pins");
    assert_eq!(again.set_cookie_line, None, "the fresh cookie is valid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pinned_backend_hands_its_clients_to_another() {
    bounded(async {
        let mut backends = [
            TestBackend::start("a").await,
            TestBackend::start("b").await,
            TestBackend::start("c").await,
        ];
        let specs: Vec<String> = backends.iter().map(TestBackend::spec).collect();
        let lb = Lb::start(&specs, &["--affinity", "cookie"]).await;
        let browser = client_with_jar();
        let first = send(browser.get(lb.url("/"))).await;
        let pinned = first.backend.expect("X-Backend");
        assert_eq!(
            send(browser.get(lb.url("/"))).await.backend.as_deref(),
            Some(pinned.as_str())
        );

        let victim = backends
            .iter_mut()
            .find(|b| b.name() == pinned)
            .expect("the pinned backend");
        victim.stop().await;

        let moved = send(browser.get(lb.url("/"))).await;
        assert_eq!(moved.status, StatusCode::OK, "{}", moved.text);
        let new_home = moved.backend.expect("X-Backend");
        assert_ne!(new_home, pinned);
        assert!(moved.set_cookie.is_some(), "the client is re-pinned");
        for _ in 0..5 {
            let seen = send(browser.get(lb.url("/"))).await;
            assert_eq!(seen.backend.as_deref(), Some(new_home.as_str()));
            assert_eq!(seen.set_cookie_line, None);
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Failures

/// With backends `[dead, a]`, the first request goes to `dead` (refused), is retried on
/// `a`, and `dead` gets no traffic for the next 2 s even once something listens there.
async fn refused_backend_is_retried_and_skipped(method: reqwest::Method) {
    let live = TestBackend::start("a").await;
    let dead_port = free_port();
    let specs = [format!("dead=http://127.0.0.1:{dead_port}"), live.spec()];
    // Slow health checks, so only the passive marking can take `dead` out in time.
    let lb = Lb::start(&specs, &["--health-interval", "10s", "--fall", "3"]).await;
    let client = client();
    let body = format!("payload for {method}");
    let seen = send(
        client
            .request(method.clone(), lb.url("/submit"))
            .body(body.clone()),
    )
    .await;
    let marked = Instant::now();
    assert_eq!(seen.status, StatusCode::OK, "{method}: {}", seen.text);
    assert_eq!(seen.backend.as_deref(), Some("a"));
    assert_eq!(seen.echo["method"], method.as_str());
    assert_eq!(
        seen.echo["body"],
        body.as_str(),
        "the body was replayed intact"
    );

    let _revived = TestBackend::start_on("dead", dead_port).await;
    let mut requests = 0;
    while marked.elapsed() < Duration::from_secs(2) {
        let seen = send(
            client
                .request(method.clone(), lb.url("/"))
                .body(body.clone()),
        )
        .await;
        assert_eq!(seen.status, StatusCode::OK);
        assert_eq!(
            seen.backend.as_deref(),
            Some("a"),
            "routed to the down backend"
        );
        requests += 1;
    }
    assert!(requests >= 10, "only {requests} requests in 2 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_get_is_retried_on_another_backend() {
    bounded(refused_backend_is_retried_and_skipped(reqwest::Method::GET)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_post_with_small_body_is_retried_on_another_backend() {
    bounded(refused_backend_is_retried_and_skipped(
        reqwest::Method::POST,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_body_is_not_retried() {
    bounded(async {
        let live = TestBackend::start("a").await;
        let specs = [
            format!("dead=http://127.0.0.1:{}", free_port()),
            live.spec(),
        ];
        let lb = Lb::start(&specs, &["--health-interval", "10s", "--fall", "3"]).await;
        let large = "x".repeat(100 * 1024);
        let seen = send(client().post(lb.url("/upload")).body(large.clone())).await;
        assert_eq!(seen.status, StatusCode::BAD_GATEWAY, "{}", seen.text);
        assert!(
            seen.text.contains("dead"),
            "names the backend: {}",
            seen.text
        );
        assert!(seen.text.contains("not retried"), "{}", seen.text);
        // `dead` is out now, so the same upload goes straight to `a`.
        let seen = send(client().post(lb.url("/upload")).body(large.clone())).await;
        assert_eq!(seen.status, StatusCode::OK);
        assert_eq!(seen.echo["body"].as_str().map(str::len), Some(large.len()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_backends_down_gives_503_with_a_readable_body() {
    bounded(async {
        let specs = [
            format!("x=http://127.0.0.1:{}", free_port()),
            format!("y=http://127.0.0.1:{}", free_port()),
        ];
        let lb = Lb::start(&specs, &[]).await;
        for _ in 0..2 {
            let seen = send(client().get(lb.url("/"))).await;
            assert_eq!(
                seen.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{}",
                seen.text
            );
            assert!(seen.text.contains("no healthy backend"), "{}", seen.text);
            assert!(seen.backend.is_none());
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_checks_take_a_backend_out_and_passing_ones_bring_it_back() {
    bounded(async {
        let a = TestBackend::start("a").await;
        let b = TestBackend::start("b").await;
        let lb = Lb::start(
            &[a.spec(), b.spec()],
            &["--health-interval", "100ms", "--rise", "2", "--fall", "2"],
        )
        .await;
        let client = client();
        let backends_of = |n: usize| {
            let client = client.clone();
            let url = lb.url("/");
            async move {
                let mut names = Vec::new();
                for _ in 0..n {
                    let seen = send(client.get(&url)).await;
                    assert_eq!(seen.status, StatusCode::OK, "{}", seen.text);
                    names.extend(seen.backend);
                }
                names
            }
        };
        assert!(backends_of(4).await.iter().any(|n| n == "b"));

        b.set_healthy(false);
        wait_for_async("b to be taken out", Duration::from_secs(10), || async {
            backends_of(4).await.iter().all(|n| n == "a").then_some(())
        })
        .await;
        // Stays out while unhealthy.
        assert!(backends_of(10).await.iter().all(|n| n == "a"));

        b.set_healthy(true);
        wait_for_async("b to come back", Duration::from_secs(10), || async {
            backends_of(2).await.iter().any(|n| n == "b").then_some(())
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_without_response_headers_in_time_gets_504() {
    bounded(async {
        let backend = TestBackend::start("a").await;
        let lb = Lb::start(&[backend.spec()], &["--upstream-timeout", "300ms"]).await;
        let started = Instant::now();
        let seen = send(client().get(lb.url("/slow?ms=3000"))).await;
        assert_eq!(seen.status, StatusCode::GATEWAY_TIMEOUT, "{}", seen.text);
        assert!(seen.text.contains("backend a"), "{}", seen.text);
        assert!(seen.text.contains("300ms"), "{}", seen.text);
        assert!(started.elapsed() < Duration::from_secs(2));
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Process lifecycle

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_requests_in_flight_finish_then_exits_zero() {
    bounded(async {
        let backend = TestBackend::start("a").await;
        let mut lb = Lb::start(&[backend.spec()], &["--drain-timeout", "5s"]).await;
        let client = client();
        // An idle keep-alive connection must not hold the shutdown up.
        assert_eq!(send(client.get(lb.url("/"))).await.status, StatusCode::OK);
        let slow = tokio::spawn(send(client.get(lb.url("/slow?ms=1000"))));
        wait_for_async(
            "the slow request to reach the backend",
            Duration::from_secs(5),
            || async { (backend.state.in_flight.load(Ordering::SeqCst) == 1).then_some(()) },
        )
        .await;
        let signalled = Instant::now();
        lb.proc.signal(Signal::SIGTERM);
        let seen = slow.await.expect("slow request task");
        assert_eq!(
            seen.status,
            StatusCode::OK,
            "the request in flight completed"
        );
        let code = tokio::task::spawn_blocking(move || {
            let code = lb.proc.wait_exit(Duration::from_secs(5));
            (code, lb)
        })
        .await
        .expect("wait for the lb")
        .0;
        assert_eq!(code, Some(0));
        assert!(
            signalled.elapsed() < Duration::from_secs(4),
            "exit took {:?}",
            signalled.elapsed()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_bounds_shutdown() {
    bounded(async {
        let backend = TestBackend::start("a").await;
        let mut lb = Lb::start(&[backend.spec()], &["--drain-timeout", "500ms"]).await;
        let stuck = tokio::spawn(send(client().get(lb.url("/slow?ms=20000"))));
        wait_for_async(
            "the stuck request to reach the backend",
            Duration::from_secs(5),
            || async { (backend.state.in_flight.load(Ordering::SeqCst) == 1).then_some(()) },
        )
        .await;
        let signalled = Instant::now();
        lb.proc.signal(Signal::SIGTERM);
        let code = tokio::task::spawn_blocking(move || {
            let code = lb.proc.wait_exit(Duration::from_secs(5));
            (code, lb)
        })
        .await
        .expect("wait for the lb")
        .0;
        assert_eq!(code, Some(0));
        assert!(
            signalled.elapsed() < Duration::from_secs(3),
            "exit took {:?}",
            signalled.elapsed()
        );
        stuck.abort();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_overrides_the_config_file() {
    bounded(async {
        let from_file = TestBackend::start("file").await;
        let from_env = TestBackend::start("env").await;
        let path = std::env::temp_dir().join(format!(
            "lb-e2e-{}-{}.toml",
            std::process::id(),
            free_port()
        ));
        let file = format!(
            "backends = [\"{}\"]\nbackend-header = \"X-Served-By\"\naffinity = \"none\"\n",
            from_file.spec()
        );
        std::fs::write(&path, file).expect("write the config file");
        let env_spec = from_env.spec();
        let lb = Lb::start_with(
            vec!["--config".to_string(), path.display().to_string()],
            &[
                ("LB_BACKENDS", env_spec.as_str()),
                ("LB_AFFINITY", "cookie"),
                ("LB_COOKIE_KEY", COOKIE_KEY),
            ],
        )
        .await;
        let response = client()
            .get(lb.url("/"))
            .send()
            .await
            .expect("request through the lb");
        let _ = std::fs::remove_file(&path);
        assert_eq!(response.status().as_u16(), 200);
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        assert_eq!(
            header("x-served-by").as_deref(),
            Some("env"),
            "LB_BACKENDS replaced the file's list"
        );
        assert_eq!(
            header("x-backend"),
            None,
            "the file's backend-header applies"
        );
        assert!(
            header("set-cookie").is_some_and(|c| c.starts_with("lb_backend=env.")),
            "LB_AFFINITY won"
        );
    })
    .await;
}

/// A child that is killed if the test fails before it exits.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_taken_listen_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port to occupy");
    let addr = taken.local_addr().expect("its address");
    let child = Command::new(e2e::bin("lb"))
        .args([
            "--listen",
            &addr.to_string(),
            "--backend",
            "http://127.0.0.1:9",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start lb");
    let mut child = KillOnDrop(child);
    let status = wait_for("lb to give up", Duration::from_secs(20), || {
        child.0.try_wait().ok().flatten()
    });
    let mut stderr = String::new();
    if let Some(mut pipe) = child.0.stderr.take() {
        pipe.read_to_string(&mut stderr).expect("read stderr");
    }
    assert!(!status.success(), "lb should fail: {stderr}");
    assert!(
        stderr.contains(&addr.to_string()),
        "names the address: {stderr}"
    );
    assert!(stderr.contains("--listen"), "suggests --listen: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

// ---------------------------------------------------------------------------------------
// Ambiguous requests and misbehaving peers, as HAProxy and nginx handle them

/// Sends `request` as raw bytes on a new connection to `port` and returns everything that
/// comes back until the LB closes the connection (each request here asks it to, or is
/// one it closes on); bounded, so a hang fails.
async fn raw_exchange(port: u16, request: &[u8], pause: Option<Duration>) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the lb");
    stream.write_all(request).await.expect("write the request");
    if let Some(pause) = pause {
        tokio::time::sleep(pause).await;
    }
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply))
        .await
        .expect("the lb neither answered nor closed within 10 s")
        .expect("read the reply");
    String::from_utf8_lossy(&reply).into_owned()
}

/// A backend that answers every request, health checks included, with `response` and
/// then keeps the connection open without a word more, or closes it.
async fn raw_backend(response: &'static [u8], hold: bool) -> (String, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match stream.read(&mut byte).await {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            let _ = stream.write_all(response).await;
            if hold {
                held.push(stream);
            }
        }
    });
    (format!("raw=http://127.0.0.1:{port}"), task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_targets_are_refused_and_end_to_end_headers_kept() {
    bounded(async {
        let backend = TestBackend::start("a").await;
        let lb = Lb::start(&[backend.spec()], &[]).await;
        for (what, request) in [
            (
                "two Host headers",
                "GET /echo HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
            ),
            ("no Host header", "GET /echo HTTP/1.1\r\n\r\n"),
            (
                "an invalid Host",
                "GET /echo HTTP/1.1\r\nHost: a b/c\r\nConnection: close\r\n\r\n",
            ),
            (
                "an authority-form target",
                "GET abs.example:80 HTTP/1.1\r\nHost: abs.example\r\n\r\n",
            ),
        ] {
            let reply = raw_exchange(lb.port, request.as_bytes(), None).await;
            assert!(reply.starts_with("HTTP/1.1 400 "), "{what}: {reply}");
            assert!(!reply.contains("\"backend\""), "{what} reached a backend");
        }

        // Connection cannot name what routes the request or what it carries for it.
        let request = "GET /echo HTTP/1.1\r\nHost: t.example\r\nCookie: c=1\r\n\
                       Authorization: Basic eDp5\r\nConnection: close, Host, Cookie, Authorization\r\n\r\n";
        let reply = raw_exchange(lb.port, request.as_bytes(), None).await;
        assert!(reply.starts_with("HTTP/1.1 200 "), "{reply}");
        for kept in ["\"host\":[\"t.example\"]", "\"cookie\":[\"c=1\"]", "\"authorization\""] {
            assert!(reply.contains(kept), "{kept} missing: {reply}");
        }

        // A request head over 64 KiB is refused, not buffered.
        let big = format!(
            "GET /echo HTTP/1.1\r\nHost: t.example\r\nX-Big: {}\r\n\r\n",
            "a".repeat(70_000)
        );
        let reply = raw_exchange(lb.port, big.as_bytes(), None).await;
        assert!(reply.starts_with("HTTP/1.1 431 "), "{}", &reply[..reply.len().min(200)]);

        // The LB answers `Expect: 100-continue` itself; the backend is not asked.
        let request = "POST /echo HTTP/1.1\r\nHost: t.example\r\nExpect: 100-continue\r\n\
                       Content-Length: 2\r\nConnection: close\r\n\r\nhi";
        let reply = raw_exchange(lb.port, request.as_bytes(), None).await;
        assert!(reply.contains("\"body\":\"hi\""), "{reply}");
        assert!(!reply.contains("\"expect\""), "{reply}");

        // An absolute-form target's authority is the host (RFC 9112 §3.2.2).
        let request =
            "GET http://abs.example/echo HTTP/1.1\r\nHost: t.example\r\nConnection: close\r\n\r\n";
        let reply = raw_exchange(lb.port, request.as_bytes(), None).await;
        assert!(reply.contains("\"host\":[\"abs.example\"]"), "{reply}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_or_garbled_request_body_is_the_clients_error() {
    bounded(async {
        let backend = TestBackend::start("a").await;
        let lb = Lb::start(&[backend.spec()], &["--client-timeout", "500ms"]).await;
        // 10 of 100 bytes, then nothing.
        let request = b"POST /echo HTTP/1.1\r\nHost: t.example\r\nContent-Length: 100\r\n\r\n0123456789";
        let reply = raw_exchange(lb.port, request, None).await;
        assert!(reply.starts_with("HTTP/1.1 408 "), "{reply}");

        // A chunk size that is no hexadecimal number: 400, not the backend's 502.
        let request = b"POST /echo HTTP/1.1\r\nHost: t.example\r\nTransfer-Encoding: chunked\r\n\r\n5g\r\nhello\r\n0\r\n\r\n";
        let reply = raw_exchange(lb.port, request, None).await;
        assert!(reply.starts_with("HTTP/1.1 400 "), "{reply}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_backends_do_not_reach_the_client_as_they_are() {
    bounded(async {
        let quiet = ["--health-interval", "1h", "--upstream-timeout", "500ms"];
        // Both framings: the chunked one wins and the length goes.
        let (spec, _task) = raw_backend(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            true,
        )
        .await;
        let lb = Lb::start(&[spec], &quiet).await;
        let seen = send(client().get(lb.url("/"))).await;
        assert_eq!((seen.status, seen.text.as_str()), (StatusCode::OK, "hello"));

        // A switch of protocols nobody asked for: 502.
        let (spec, _task) = raw_backend(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", true).await;
        let lb = Lb::start(&[spec], &quiet).await;
        let seen = send(client().get(lb.url("/"))).await;
        assert_eq!(seen.status, StatusCode::BAD_GATEWAY, "{}", seen.text);

        // Headers and 10 of 100 bytes, then silence: the client's response is cut off
        // once the backend has been silent for --upstream-timeout.
        let (spec, _task) =
            raw_backend(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789", true).await;
        let lb = Lb::start(&[spec], &quiet).await;
        let reply = raw_exchange(
            lb.port,
            b"GET / HTTP/1.1\r\nHost: t.example\r\n\r\n",
            None,
        )
        .await;
        assert!(reply.starts_with("HTTP/1.1 200 "), "{reply}");
        assert!(reply.ends_with("0123456789"), "{reply}");
    })
    .await;
}

/// A backend that answers the first request on each connection, keeps the connection
/// open, and closes it on the second request without answering: what a backend whose
/// keep-alive timeout fires as a request arrives looks like.
async fn one_request_per_connection_backend() -> (String, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut answered = false;
                loop {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if answered {
                            return;
                        }
                        answered = true;
                        let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if stream.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (format!("once=http://127.0.0.1:{port}"), task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_on_a_connection_the_backend_just_closed_is_sent_again() {
    bounded(async {
        let (spec, _task) = one_request_per_connection_backend().await;
        let lb = Lb::start(&[spec], &["--health-interval", "1h"]).await;
        let client = client();
        for round in 0..3 {
            let seen = send(client.get(lb.url("/"))).await;
            assert_eq!(
                (seen.status, seen.text.as_str()),
                (StatusCode::OK, "ok"),
                "request {round}: the pooled connection was closed under it"
            );
        }
        // A POST is not sent twice: the backend may have acted on it.
        let seen = send(client.post(lb.url("/")).body("x")).await;
        let again = send(client.post(lb.url("/")).body("x")).await;
        assert!(
            [seen.status, again.status].contains(&StatusCode::BAD_GATEWAY),
            "{} / {}",
            seen.status,
            again.status
        );
    })
    .await;
}
