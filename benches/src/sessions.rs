//! `bench sessions`: a bounded HTTP load generator for the demo app's session modes.
//!
//! Virtual users log in once, keep their own cookies (the session cookie or JWT, and the
//! load balancer's affinity cookie) and are each bound to one of `--connections`
//! keep-alive connections to `--url`. Each connection sends one request at a time, for
//! `--warmup` then `--seconds`: `GET /api/session` or, with probability `--write-ratio`,
//! `POST /cart`. A full cart (400) makes its user log out and in again, counted apart.
//!
//! Latencies go to a fixed-size log-linear histogram (0.1% resolution), so memory does not
//! grow with the run. With `--node-urls`, the nodes' `/api/near-cache` counters are read
//! at the start and end of the measured window: hit ratio, evictions and updates (copies
//! replaced by the state a write event carried) are the deltas, invalidation lags are the
//! nodes' own percentiles after the run.
//!
//! One `key=value` line goes to stdout; progress and the first few errors go to stderr.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http::header::{CONTENT_TYPE, COOKIE, HOST, SET_COOKIE};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::proc_stats::Probe;

/// Bound on one request, from connecting to the end of its body.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the nodes get to subscribe to session events before the run starts anyway.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(20);
/// How long the workers may take to finish their last request after the window.
const DRAIN: Duration = Duration::from_secs(15);
/// Pause after a failed request, so a dead server is not hammered in a tight loop.
const ERROR_PAUSE: Duration = Duration::from_millis(10);
/// Errors described on stderr, per worker.
const ERRORS_SHOWN: usize = 3;

/// Flags of `bench sessions`.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// Where the load goes: the load balancer (or one node).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,

    /// Keep-alive connections, each with one request in flight.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    connections: u32,

    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,

    /// Unmeasured seconds of the same load first (logins happen here).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,

    /// Share of requests that are `POST /cart`; the rest are `GET /api/session`.
    #[arg(long, default_value_t = 0.1)]
    write_ratio: f64,

    /// Total requests per second to aim for, spread evenly over the connections (a
    /// connection that falls behind does not catch up in a burst) [default: as fast as
    /// the server answers]. For measuring latencies below saturation.
    #[arg(long)]
    rate: Option<f64>,

    /// Virtual users, spread over the connections [default: one per connection].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    users: Option<u32>,

    /// The nodes' own URLs (comma-separated), to read their near-cache counters.
    #[arg(long, value_delimiter = ',')]
    node_urls: Vec<String>,

    /// Processes whose CPU time (utime+stime) over the window is reported per request,
    /// as NAME=PID (comma-separated; PIDs under one name are summed). This load
    /// generator is always reported, as `bench`.
    #[arg(long, value_delimiter = ',')]
    cpu_pids: Vec<String>,
}

/// Runs the load and prints the result line. Returns false when a request failed or a
/// session was lost (the line is printed either way).
pub async fn run(args: Args) -> anyhow::Result<bool> {
    if !(args.seconds > 0.0 && args.seconds.is_finite()) {
        bail!("--seconds must be a positive number, not {}", args.seconds);
    }
    if !(args.warmup >= 0.0 && args.warmup.is_finite()) {
        bail!("--warmup must be zero or more, not {}", args.warmup);
    }
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("--rate must be a positive number");
    }
    if !(0.0..=1.0).contains(&args.write_ratio) {
        bail!(
            "--write-ratio must be within 0..=1, not {}",
            args.write_ratio
        );
    }
    let target = Arc::new(Target::parse(&args.url)?);
    let nodes = args
        .node_urls
        .iter()
        .filter(|u| !u.trim().is_empty())
        .map(|u| Target::parse(u.trim()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cpu = CpuProbes::new(&args.cpu_pids)?;
    let connections = args.connections as usize;
    let users = args.users.map_or(connections, |u| u as usize);

    if !nodes.is_empty() {
        wait_subscribed(&nodes).await;
    }

    let start = Instant::now() + Duration::from_secs_f64(args.warmup);
    let clock = Clock {
        start,
        end: start + Duration::from_secs_f64(args.seconds),
    };
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x5eed);
    let mut workers = JoinSet::new();
    for c in 0..connections {
        let names: Vec<String> = (c..users)
            .step_by(connections)
            .map(|u| format!("bench-{u}"))
            .collect();
        if names.is_empty() {
            continue;
        }
        let worker = Worker {
            conn: Conn::new(target.clone()),
            users: names.into_iter().map(User::new).collect(),
            rng: SplitMix(seed ^ (c as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            write_ratio: args.write_ratio,
            pace: args
                .rate
                .map(|r| Duration::from_secs_f64(connections as f64 / r)),
            tally: Tally::default(),
            item: 0,
        };
        workers.spawn(worker.run(clock));
    }
    let rate = args
        .rate
        .map_or("unpaced".to_string(), |r| format!("{r} req/s"));
    eprintln!(
        "bench sessions: {connections} connections, {users} users, {rate}, {:.0}% writes, \
         {} s warm-up + {} s measured against {}",
        args.write_ratio * 100.0,
        args.warmup,
        args.seconds,
        args.url
    );

    tokio::time::sleep_until(clock.start.into()).await;
    let cpu_before = cpu.sample();
    let before = node_stats(&nodes).await;
    tokio::time::sleep_until(clock.end.into()).await;
    let cpu_after = cpu.sample();
    let after = node_stats(&nodes).await;

    let mut tally = Tally::default();
    let drained = tokio::time::timeout(DRAIN, async {
        while let Some(joined) = workers.join_next().await {
            match joined {
                Ok(t) => tally.merge(t),
                Err(err) => eprintln!("bench sessions: a worker failed: {err}"),
            }
        }
    })
    .await;
    if drained.is_err() {
        workers.abort_all();
        bail!("workers still busy {DRAIN:?} after the window; is the server hung?");
    }

    let cache = CacheDelta::new(&before, &after);
    let line = tally.line(args.seconds, &cache);
    let cpu = cpu.fields(&cpu_before, &cpu_after, args.seconds, tally.requests);
    let rate = args.rate.map_or("-".to_string(), |r| r.to_string());
    println!(
        "{line} {cpu} seconds={} connections={connections} users={users} write_ratio={} \
         rate={rate}",
        args.seconds, args.write_ratio
    );
    Ok(tally.requests > 0 && tally.errors == 0 && tally.lost == 0)
}

/// CPU time of named processes, sampled at both ends of the measured window.
struct CpuProbes {
    /// Names in the order given; `bench` (this process) first.
    names: Vec<String>,
    probes: Vec<(usize, Probe)>,
}

impl CpuProbes {
    fn new(specs: &[String]) -> anyhow::Result<Self> {
        let mut names = vec!["bench".to_string()];
        let mut probes = vec![(0, Probe::new(std::process::id())?)];
        for spec in specs.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            let (name, pid) = spec
                .split_once('=')
                .with_context(|| format!("--cpu-pids wants NAME=PID, not {spec:?}"))?;
            let pid: u32 = pid
                .parse()
                .with_context(|| format!("--cpu-pids: {pid:?} is not a PID"))?;
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                bail!("--cpu-pids: name {name:?} must be letters, digits or '-'");
            }
            let ix = match names.iter().position(|n| n == name) {
                Some(ix) => ix,
                None => {
                    names.push(name.to_string());
                    names.len() - 1
                }
            };
            probes.push((ix, Probe::new(pid)?));
        }
        Ok(CpuProbes { names, probes })
    }

    /// CPU seconds per name; None where a process could not be read.
    fn sample(&self) -> Vec<Option<f64>> {
        let mut sums = vec![Some(0.0); self.names.len()];
        for (ix, probe) in &self.probes {
            sums[*ix] = match (sums[*ix], probe.cpu_seconds()) {
                (Some(sum), Ok(s)) => Some(sum + s),
                _ => None,
            };
        }
        sums
    }

    /// `cpu_NAME_us_per_req=…` for each name, then `cpu_cores=…`: all of them together,
    /// in cores busy over the window.
    fn fields(
        &self,
        before: &[Option<f64>],
        after: &[Option<f64>],
        seconds: f64,
        requests: u64,
    ) -> String {
        let mut fields = Vec::new();
        let mut total = Some(0.0);
        for (ix, name) in self.names.iter().enumerate() {
            let used = match (before[ix], after[ix]) {
                (Some(b), Some(a)) => Some((a - b).max(0.0)),
                _ => None,
            };
            total = total.zip(used).map(|(t, u)| t + u);
            let per_req = used.filter(|_| requests > 0).map_or("-".to_string(), |u| {
                format!("{:.1}", u * 1e6 / requests as f64)
            });
            fields.push(format!("cpu_{name}_us_per_req={per_req}"));
        }
        let cores = total.map_or("-".to_string(), |t| format!("{:.2}", t / seconds));
        fields.push(format!("cpu_cores={cores}"));
        fields.join(" ")
    }
}

/// Where requests go: what to connect to and what to put in `Host`.
struct Target {
    addr: String,
    host: String,
}

impl Target {
    fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: Uri = url.parse().with_context(|| format!("bad URL {url:?}"))?;
        if uri.scheme_str() != Some("http") {
            bail!("{url:?}: only http:// URLs are supported");
        }
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow!("{url:?} names no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        Ok(Target {
            addr: format!("{}:{port}", authority.host()),
            host: authority.as_str().to_string(),
        })
    }
}

/// The measured window: requests started inside it count.
#[derive(Clone, Copy)]
struct Clock {
    start: Instant,
    end: Instant,
}

/// A response, read to its end.
struct Reply {
    status: StatusCode,
    set_cookies: Vec<String>,
    node: Option<String>,
    body: Bytes,
}

/// One keep-alive HTTP/1.1 connection, reopened after any failure.
struct Conn {
    target: Arc<Target>,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    fn new(target: Arc<Target>) -> Self {
        Conn {
            target,
            sender: None,
        }
    }

    async fn send(&mut self, req: Request<Full<Bytes>>) -> anyhow::Result<Reply> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(req)).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(err)) => {
                self.sender = None;
                Err(err)
            }
            Err(_) => {
                self.sender = None;
                Err(anyhow!("no response within {REQUEST_TIMEOUT:?}"))
            }
        }
    }

    async fn exchange(&mut self, req: Request<Full<Bytes>>) -> anyhow::Result<Reply> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            self.sender = Some(connect(&self.target).await?);
        }
        let sender = self.sender.as_mut().context("no connection")?;
        sender.ready().await.context("connection not ready")?;
        let res = sender.send_request(req).await.context("sending")?;
        let set_cookies = res
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        let node = res
            .headers()
            .get("x-node")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let status = res.status();
        let body = res
            .into_body()
            .collect()
            .await
            .context("reading the body")?
            .to_bytes();
        Ok(Reply {
            status,
            set_cookies,
            node,
            body,
        })
    }
}

async fn connect(target: &Target) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(&target.addr)
        .await
        .with_context(|| format!("connecting to {}", target.addr))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn request(
    target: &Target,
    method: Method,
    path: &str,
    cookie: Option<&str>,
    form: Option<String>,
) -> anyhow::Result<Request<Full<Bytes>>> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, &target.host);
    if let Some(c) = cookie {
        req = req.header(COOKIE, c);
    }
    let body = match form {
        Some(f) => {
            req = req.header(CONTENT_TYPE, "application/x-www-form-urlencoded");
            Bytes::from(f)
        }
        None => Bytes::new(),
    };
    Ok(req.body(Full::new(body))?)
}

/// A virtual user: a name and the cookies the server gave it.
struct User {
    name: String,
    /// `"user":"<name>"`, as `GET /api/session` shows a signed-in session.
    marker: String,
    cookies: Vec<(String, String)>,
    signed_in: bool,
}

impl User {
    fn new(name: String) -> Self {
        User {
            marker: format!("\"user\":\"{name}\""),
            name,
            cookies: Vec::new(),
            signed_in: false,
        }
    }

    fn cookie_header(&self) -> Option<String> {
        if self.cookies.is_empty() {
            return None;
        }
        let parts: Vec<String> = self
            .cookies
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        Some(parts.join("; "))
    }

    /// Applies `Set-Cookie`s: stores or replaces each, and drops the ones being deleted
    /// (empty, `Max-Age=0` or expired in 1970).
    fn absorb(&mut self, set_cookies: &[String]) {
        for sc in set_cookies {
            let mut parts = sc.split(';');
            let Some((name, value)) = parts.next().and_then(|p| p.split_once('=')) else {
                continue;
            };
            let (name, value) = (name.trim(), value.trim());
            let deleted = value.is_empty()
                || parts.any(|a| {
                    let a = a.trim().to_ascii_lowercase();
                    a == "max-age=0"
                        || a.starts_with("max-age=-")
                        || (a.starts_with("expires=") && a.contains("1970"))
                });
            self.cookies.retain(|(n, _)| n != name);
            if !deleted {
                self.cookies.push((name.to_string(), value.to_string()));
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Read,
    Cart,
    Login,
    Logout,
}

impl Op {
    fn path(self) -> &'static str {
        match self {
            Op::Read => "/api/session",
            Op::Cart => "/cart",
            Op::Login => "/login",
            Op::Logout => "/logout",
        }
    }
}

/// What one request came to.
#[derive(PartialEq, Eq)]
enum Outcome {
    Ok,
    /// `POST /cart` refused with 400: the cart holds its 20 items.
    CartFull,
    /// `GET /api/session` answered, but not with the user's signed-in session.
    Lost,
    Failed,
}

/// One connection's driver and the users bound to it.
struct Worker {
    conn: Conn,
    users: Vec<User>,
    rng: SplitMix,
    write_ratio: f64,
    /// Time between this connection's requests, with --rate.
    pace: Option<Duration>,
    tally: Tally,
    item: u64,
}

impl Worker {
    async fn run(mut self, clock: Clock) -> Tally {
        let mut next = 0;
        let mut due = Instant::now();
        while Instant::now() < clock.end {
            if let Some(pace) = self.pace {
                let now = Instant::now();
                // Behind schedule by more than one step: start afresh rather than burst.
                due = if due + pace < now { now } else { due + pace };
                if due >= clock.end {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
            }
            let u = next;
            next = (next + 1) % self.users.len();
            let op = if !self.users[u].signed_in {
                Op::Login
            } else if self.rng.unit() < self.write_ratio {
                Op::Cart
            } else {
                Op::Read
            };
            let outcome = self.call(u, op, clock).await;
            if outcome == Outcome::CartFull {
                // Start over with an empty cart: a new session for the same user.
                if self.call(u, Op::Logout, clock).await == Outcome::Ok {
                    self.call(u, Op::Login, clock).await;
                }
            }
        }
        self.tally
    }

    async fn call(&mut self, u: usize, op: Op, clock: Clock) -> Outcome {
        let user = &mut self.users[u];
        let cookie = user.cookie_header();
        let form = match op {
            Op::Login => Some(format!("name={}", user.name)),
            Op::Cart => {
                self.item += 1;
                Some(format!("item=item-{}", self.item))
            }
            Op::Read | Op::Logout => None,
        };
        let method = if op == Op::Read {
            Method::GET
        } else {
            Method::POST
        };
        let began = Instant::now();
        let measured = began >= clock.start && began < clock.end;
        let result = match request(
            &self.conn.target,
            method,
            op.path(),
            cookie.as_deref(),
            form,
        ) {
            Ok(req) => self.conn.send(req).await,
            Err(err) => Err(err),
        };
        let micros = began.elapsed().as_micros();
        let (outcome, detail) = match result {
            Err(err) => (Outcome::Failed, format!("{op:?}: {err:#}")),
            Ok(reply) => {
                user.absorb(&reply.set_cookies);
                let outcome = match (op, reply.status) {
                    (Op::Read, StatusCode::OK) if contains(&reply.body, &user.marker) => {
                        if self.tally.mode.is_none() {
                            self.tally.mode = mode_of(&reply.body);
                        }
                        Outcome::Ok
                    }
                    (Op::Read, StatusCode::OK) => {
                        user.signed_in = false;
                        Outcome::Lost
                    }
                    (Op::Cart, StatusCode::SEE_OTHER) => Outcome::Ok,
                    (Op::Cart, StatusCode::BAD_REQUEST) => Outcome::CartFull,
                    (Op::Login, StatusCode::SEE_OTHER) => {
                        user.signed_in = true;
                        Outcome::Ok
                    }
                    (Op::Logout, StatusCode::SEE_OTHER) => {
                        user.signed_in = false;
                        Outcome::Ok
                    }
                    _ => Outcome::Failed,
                };
                if measured {
                    self.tally.set_cookie_bytes += reply
                        .set_cookies
                        .iter()
                        .map(|c| c.len() as u64)
                        .sum::<u64>();
                    if let Some(node) = reply.node {
                        *self.tally.per_node.entry(node).or_default() += 1;
                    }
                }
                let text = String::from_utf8_lossy(&reply.body);
                let text: String = text.chars().take(120).collect();
                (
                    outcome,
                    format!("{op:?}: HTTP {} {}", reply.status, text.trim()),
                )
            }
        };
        if measured {
            let t = &mut self.tally;
            t.requests += 1;
            let micros = u64::try_from(micros).unwrap_or(u64::MAX);
            t.latency.record(micros);
            match op {
                Op::Read => t.read_latency.record(micros),
                Op::Cart => t.write_latency.record(micros),
                Op::Login | Op::Logout => {}
            }
            t.cookie_bytes += cookie.as_ref().map_or(0, |c| c.len() as u64);
            match op {
                Op::Read => t.reads += 1,
                Op::Cart => t.writes += 1,
                Op::Login => t.logins += 1,
                Op::Logout => t.logouts += 1,
            }
            match outcome {
                Outcome::Ok => {}
                Outcome::CartFull => t.cart_full += 1,
                Outcome::Lost => t.lost += 1,
                Outcome::Failed => {
                    t.errors += 1;
                    if t.errors as usize <= ERRORS_SHOWN {
                        eprintln!("bench sessions: {detail}");
                    }
                }
            }
        }
        if outcome == Outcome::Failed {
            tokio::time::sleep(ERROR_PAUSE).await;
        }
        outcome
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

fn mode_of(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct View {
        mode: String,
    }
    serde_json::from_slice::<View>(body).ok().map(|v| v.mode)
}

/// What the measured window saw, per worker and then merged.
#[derive(Default)]
struct Tally {
    latency: Histogram,
    /// `GET /api/session` alone.
    read_latency: Histogram,
    /// `POST /cart` alone.
    write_latency: Histogram,
    requests: u64,
    reads: u64,
    writes: u64,
    logins: u64,
    logouts: u64,
    errors: u64,
    cart_full: u64,
    lost: u64,
    /// Sum of the `Cookie` header lengths sent.
    cookie_bytes: u64,
    /// Sum of the `Set-Cookie` header lengths received.
    set_cookie_bytes: u64,
    per_node: BTreeMap<String, u64>,
    mode: Option<String>,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.latency.merge(&o.latency);
        self.read_latency.merge(&o.read_latency);
        self.write_latency.merge(&o.write_latency);
        self.requests += o.requests;
        self.reads += o.reads;
        self.writes += o.writes;
        self.logins += o.logins;
        self.logouts += o.logouts;
        self.errors += o.errors;
        self.cart_full += o.cart_full;
        self.lost += o.lost;
        self.cookie_bytes += o.cookie_bytes;
        self.set_cookie_bytes += o.set_cookie_bytes;
        for (node, n) in o.per_node {
            *self.per_node.entry(node).or_default() += n;
        }
        if self.mode.is_none() {
            self.mode = o.mode;
        }
    }

    fn line(&self, seconds: f64, cache: &CacheDelta) -> String {
        let mean = |sum: u64| {
            if self.requests == 0 {
                0.0
            } else {
                sum as f64 / self.requests as f64
            }
        };
        let l = &self.latency;
        let nodes: Vec<String> = self
            .per_node
            .iter()
            .map(|(n, c)| format!("{n}:{c}"))
            .collect();
        let nodes = if nodes.is_empty() {
            "-".to_string()
        } else {
            nodes.join(",")
        };
        format!(
            "mode={} rps={:.0} p50_us={} p99_us={} p999_us={} max_us={} requests={} errors={} \
             lost={} cart_full={} reads={} writes={} logins={} logouts={} cookie_bytes={:.0} \
             set_cookie_bytes={:.0} read_p50_us={} read_p99_us={} write_p50_us={} write_p99_us={} \
             {} nodes={nodes}",
            self.mode.as_deref().unwrap_or("-"),
            self.requests as f64 / seconds,
            l.percentile(50.0),
            l.percentile(99.0),
            l.percentile(99.9),
            l.max,
            self.requests,
            self.errors,
            self.lost,
            self.cart_full,
            self.reads,
            self.writes,
            self.logins,
            self.logouts,
            mean(self.cookie_bytes),
            mean(self.set_cookie_bytes),
            self.read_latency.percentile(50.0),
            self.read_latency.percentile(99.0),
            self.write_latency.percentile(50.0),
            self.write_latency.percentile(99.0),
            cache.fields(),
        )
    }
}

/// Latencies in microseconds, HdrHistogram-style: exact below 2,048 µs, then 1,024
/// buckets per power of two (under 0.1% error), up to `u32::MAX` µs; fixed size.
struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

const SUB_BITS: u32 = 10;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = ((32 - SUB_BITS as usize) + 1) * SUB as usize;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

impl Histogram {
    fn index(v: u64) -> usize {
        let v = v.min(u64::from(u32::MAX));
        if v < 2 * SUB {
            return v as usize;
        }
        let shift = (63 - v.leading_zeros()) - SUB_BITS;
        ((u64::from(shift) + 1) * SUB + ((v >> shift) - SUB)) as usize
    }

    /// The middle of bucket `i`'s range (its value, for the exact buckets).
    fn value(i: usize) -> u64 {
        let i = i as u64;
        if i < 2 * SUB {
            return i;
        }
        let shift = i / SUB - 1;
        let low = (i % SUB + SUB) << shift;
        low + (1 << shift) / 2
    }

    fn record(&mut self, micros: u64) {
        self.counts[Self::index(micros)] += 1;
        self.total += 1;
        self.max = self.max.max(micros);
    }

    fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.total += o.total;
        self.max = self.max.max(o.max);
    }

    /// The smallest recorded value with at least `p`% of the values at or below it.
    fn percentile(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((p / 100.0 * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::value(i).min(self.max);
            }
        }
        self.max
    }
}

/// A small, fast, seedable generator (SplitMix64) for choosing reads or writes.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A node's `GET /api/near-cache`.
#[derive(Clone, Debug, Default, Deserialize)]
struct NodeStats {
    subscribed: bool,
    hits: u64,
    misses: u64,
    evictions: u64,
    /// Copies replaced by the state a write event carried (absent from older nodes).
    #[serde(default)]
    updates: u64,
    events: u64,
    flushes: u64,
    lag_p50_us: Option<u64>,
    lag_p99_us: Option<u64>,
}

/// `Ok(None)`: the node runs without a near-cache (404).
async fn fetch_stats(node: &Target) -> anyhow::Result<Option<NodeStats>> {
    let mut conn = Conn::new(Arc::new(Target {
        addr: node.addr.clone(),
        host: node.host.clone(),
    }));
    let reply = conn
        .send(request(node, Method::GET, "/api/near-cache", None, None)?)
        .await?;
    match reply.status {
        StatusCode::OK => Ok(Some(
            serde_json::from_slice(&reply.body).context("parsing /api/near-cache")?,
        )),
        StatusCode::NOT_FOUND => Ok(None),
        s => bail!("/api/near-cache answered {s}"),
    }
}

/// Every node's stats; a node that could not be read counts as having no near-cache.
async fn node_stats(nodes: &[Target]) -> Vec<Option<NodeStats>> {
    let mut all = Vec::with_capacity(nodes.len());
    for node in nodes {
        all.push(match fetch_stats(node).await {
            Ok(s) => s,
            Err(err) => {
                eprintln!("bench sessions: {}: {err:#}", node.addr);
                None
            }
        });
    }
    all
}

/// Waits (bounded) until every node that has a near-cache has subscribed to events, so
/// the warm-up is not spent on a cache that is still off.
async fn wait_subscribed(nodes: &[Target]) {
    let deadline = Instant::now() + SUBSCRIBE_WAIT;
    loop {
        let stats = node_stats(nodes).await;
        let waiting = stats
            .iter()
            .filter(|s| s.as_ref().is_some_and(|s| !s.subscribed))
            .count();
        if waiting == 0 {
            return;
        }
        if Instant::now() >= deadline {
            eprintln!(
                "bench sessions: {waiting} node(s) still not subscribed to session events \
                 after {SUBSCRIBE_WAIT:?}; measuring anyway"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The near-cache over the measured window, summed over the nodes that have one.
struct CacheDelta {
    nodes: usize,
    hits: u64,
    misses: u64,
    evictions: u64,
    updates: u64,
    events: u64,
    flushes: u64,
    lag_p50_us: Option<u64>,
    lag_p99_us: Option<u64>,
}

impl CacheDelta {
    fn new(before: &[Option<NodeStats>], after: &[Option<NodeStats>]) -> Self {
        let mut d = CacheDelta {
            nodes: 0,
            hits: 0,
            misses: 0,
            evictions: 0,
            updates: 0,
            events: 0,
            flushes: 0,
            lag_p50_us: None,
            lag_p99_us: None,
        };
        let mut p50s = Vec::new();
        for (b, a) in before.iter().zip(after) {
            let (Some(b), Some(a)) = (b, a) else {
                continue;
            };
            d.nodes += 1;
            d.hits += a.hits.saturating_sub(b.hits);
            d.misses += a.misses.saturating_sub(b.misses);
            d.evictions += a.evictions.saturating_sub(b.evictions);
            d.updates += a.updates.saturating_sub(b.updates);
            d.events += a.events.saturating_sub(b.events);
            d.flushes += a.flushes.saturating_sub(b.flushes);
            p50s.extend(a.lag_p50_us);
            // The worst node's tail.
            d.lag_p99_us = d.lag_p99_us.max(a.lag_p99_us);
        }
        // The median node's median.
        p50s.sort_unstable();
        d.lag_p50_us = p50s.get(p50s.len().saturating_sub(1) / 2).copied();
        d
    }

    fn fields(&self) -> String {
        if self.nodes == 0 {
            return "hit_ratio=- lag_p50_us=- lag_p99_us=- evictions=- updates=- events=- flushes=-"
                .to_string();
        }
        let looked = self.hits + self.misses;
        let ratio = if looked == 0 {
            "-".to_string()
        } else {
            format!("{:.3}", self.hits as f64 / looked as f64)
        };
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        format!(
            "hit_ratio={ratio} lag_p50_us={} lag_p99_us={} evictions={} updates={} events={} \
             flushes={}",
            opt(self.lag_p50_us),
            opt(self.lag_p99_us),
            self.evictions,
            self.updates,
            self.events,
            self.flushes
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_round_trip_within_a_tenth_of_a_percent() {
        for v in [
            0,
            1,
            999,
            2047,
            2048,
            2049,
            5000,
            123_456,
            9_999_999,
            4_000_000_000,
        ] {
            let got = Histogram::value(Histogram::index(v));
            let err = (got as f64 - v as f64).abs() / (v.max(1) as f64);
            assert!(err <= 0.001, "{v} -> {got}");
        }
        assert!(Histogram::index(u64::MAX) < BUCKETS);
    }

    #[test]
    fn percentiles_of_a_known_spread() {
        let mut h = Histogram::default();
        for v in 1..=1000 {
            h.record(v);
        }
        assert_eq!(h.percentile(50.0), 500);
        assert_eq!(h.percentile(99.0), 990);
        assert_eq!(h.percentile(100.0), 1000);
    }

    #[test]
    fn cookies_are_stored_replaced_and_deleted() {
        let mut u = User::new("a".into());
        u.absorb(&["sid=abc; Path=/; HttpOnly".into(), "lb_backend=x".into()]);
        assert_eq!(u.cookie_header().as_deref(), Some("sid=abc; lb_backend=x"));
        u.absorb(&["sid=def; Path=/".into()]);
        assert_eq!(u.cookie_header().as_deref(), Some("lb_backend=x; sid=def"));
        u.absorb(&["sid=; Max-Age=0; Path=/".into()]);
        assert_eq!(u.cookie_header().as_deref(), Some("lb_backend=x"));
    }
}
