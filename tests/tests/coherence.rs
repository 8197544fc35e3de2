//! Coherent near-caches in `shared` mode, end to end: three demo-app nodes with near-caches,
//! talked to directly (not through the LB) so each test decides which node serves which
//! request, over a store and a broker that can be killed under them.
//!
//! Every scenario runs twice: `<scenario>::embedded` on the workspace's `session-store`
//! (store and AMQP broker), `<scenario>::redis_rabbitmq` on a real `redis-server` and a
//! real RabbitMQ node (one node shared by the binary; the broker-outage scenario gets a
//! private one it can kill). With `CI=true` the real engines must be installed.
//!
//! Nothing waits by sleeping: conditions are polled against a deadline, and the windows
//! that are allowed to exist (an event still in flight) are measured, bounded by an
//! assertion, and printed.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use e2e::rabbit::{RabbitMq, start_rabbitmq};
use e2e::topology::{Broker, Options, Store, Topology};
use e2e::{bin, redis_server_available, wait_for_async};
use reqwest::StatusCode;
use reqwest::header::{COOKIE, SET_COOKIE};
use serde_json::Value;

/// Bound on a whole scenario.
const SCENARIO: Duration = Duration::from_secs(150);
/// Longest another client may still read a session's older state on another node after
/// the write's response has arrived: the event's way through the broker. On an idle
/// 2-core machine the worst seen is 5 to 15 ms; under heavy load (a benchmark running
/// alongside) 80 ms. A node ignoring events stays stale until the entry's maximum age.
const STALE_BOUND: Duration = Duration::from_millis(250);
/// Longest an ended session's old cookie may still be honoured on another node after the
/// response that ended it has arrived (its event is confirmed by the broker before the
/// response leaves, so this is only the broker → node leg). Same figures as above.
const REPLAY_BOUND: Duration = Duration::from_millis(250);
/// A read still stale after this long is a failure, not a lag.
const GIVE_UP: Duration = Duration::from_secs(2);
/// Bound on the nodes noticing a dead broker, and on re-subscribing after it returns.
const LINK_CHANGE: Duration = Duration::from_secs(20);
/// Items a cart holds (the demo refuses more): sessions are renewed before that.
const CART_MAX: usize = 20;

static RABBIT: LazyLock<Option<RabbitMq>> = LazyLock::new(start_rabbitmq);

// ---------------------------------------------------------------------------------------
// engines

/// The store and broker a scenario runs on.
#[derive(Clone)]
enum Engines {
    /// `session-store` for both.
    Embedded,
    /// `redis-server` and RabbitMQ (the shared node's URL).
    Real { rabbit_url: String },
}

/// What a scenario needs of the broker.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Whatever the default deployment runs.
    Plain,
    /// A broker that outlives the store.
    BrokerApart,
    /// A broker of the topology's own that it can kill and restart.
    KillableBroker,
}

impl Engines {
    fn name(&self) -> &'static str {
        match self {
            Engines::Embedded => "embedded",
            Engines::Real { .. } => "redis+rabbitmq",
        }
    }

    /// Three `shared` nodes with near-caches behind a round-robin LB.
    fn options(&self, need: Need) -> Options<'static> {
        let mut opts = Options::new("shared", "none", 3);
        match self {
            Engines::Embedded => {
                opts.broker = match need {
                    Need::Plain => Broker::InStore,
                    Need::BrokerApart | Need::KillableBroker => Broker::Separate,
                };
            }
            Engines::Real { rabbit_url } => {
                opts.store = Store::Redis;
                opts.broker = match need {
                    Need::Plain | Need::BrokerApart => Broker::Url(rabbit_url.clone()),
                    Need::KillableBroker => Broker::RabbitMq,
                };
            }
        }
        opts
    }
}

/// The real engines, or None (after saying so) when they are not installed and this run
/// does not require them.
async fn real_engines() -> Option<Engines> {
    if !redis_server_available() {
        return None;
    }
    let url = tokio::task::spawn_blocking(|| LazyLock::force(&RABBIT).as_ref().map(RabbitMq::url))
        .await
        .expect("start RabbitMQ");
    url.map(|rabbit_url| Engines::Real { rabbit_url })
}

async fn run<F, Fut>(name: &str, engines: Engines, scenario: F)
where
    F: FnOnce(Engines) -> Fut,
    Fut: Future<Output = ()>,
{
    let on = engines.name();
    // Built (or found fresh) before the clock starts: a cold build takes minutes.
    tokio::task::spawn_blocking(|| ["session-store", "demo-app", "lb"].map(bin))
        .await
        .expect("build the binaries under test");
    tokio::time::timeout(SCENARIO, scenario(engines))
        .await
        .unwrap_or_else(|_| panic!("{name} on {on} took longer than {SCENARIO:?}"));
}

/// Generates `mod <name> { embedded, redis_rabbitmq }` running `<name>(engines)` on each.
macro_rules! on_engines {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::run(stringify!($name), super::Engines::Embedded, super::$name).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis_rabbitmq() {
                let Some(engines) = super::real_engines().await else {
                    eprintln!("{}: redis-server or RabbitMQ not installed, skipped", stringify!($name));
                    return;
                };
                super::run(stringify!($name), engines, super::$name).await;
            }
        }
    )*};
}

on_engines!(
    read_your_writes_on_every_node,
    other_clients_see_a_write_within_the_event_lag,
    concurrent_cart_additions_on_two_nodes_both_land,
    broker_outage_turns_near_caches_off_and_back_on,
    ended_sessions_replayed_on_other_nodes_are_refused,
    store_outage_is_a_clear_503_and_recovers_with_near_caches,
    logout_everywhere_ends_every_session_on_every_node,
    per_user_cap_ends_the_oldest_session_everywhere,
);

async fn start(opts: Options<'static>) -> Topology {
    tokio::task::spawn_blocking(move || Topology::start(opts))
        .await
        .expect("start the topology")
}

// ---------------------------------------------------------------------------------------
// talking to nodes

/// What a response did to the session cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CookieChange {
    Set(String),
    Clear,
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    cookie: Option<CookieChange>,
    body: String,
}

/// One `GET /api/session`.
#[derive(Debug, Clone)]
struct View {
    node: String,
    session: Option<String>,
    user: Option<String>,
    cart: Vec<String>,
    version: u64,
    cookie: Option<CookieChange>,
}

/// The nodes of a topology, each by its own URL, and a client without a cookie jar:
/// every request carries exactly the cookie the test gives it.
#[derive(Clone)]
struct Net {
    http: reqwest::Client,
    /// `(node id, base URL)`.
    nodes: Vec<(String, String)>,
}

impl Net {
    fn new(topo: &Topology) -> Net {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        let nodes = topo
            .nodes
            .iter()
            .enumerate()
            .map(|(i, (id, ..))| (id.clone(), topo.node_url(i, "")))
            .collect();
        Net { http, nodes }
    }

    fn len(&self) -> usize {
        self.nodes.len()
    }

    async fn send(&self, req: reqwest::RequestBuilder, cookie: Option<&str>, what: &str) -> Reply {
        let req = match cookie {
            Some(c) => req.header(COOKIE, format!("sid={c}")),
            None => req,
        };
        let res = req.send().await.unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = res.status();
        let cookie = res
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|h| h.to_str().ok())
            .find_map(|h| h.strip_prefix("sid="))
            .map(|h| {
                let value = h.split(';').next().unwrap_or_default();
                if value.is_empty() || h.contains("Max-Age=0") {
                    CookieChange::Clear
                } else {
                    CookieChange::Set(value.to_string())
                }
            });
        let body = res
            .text()
            .await
            .unwrap_or_else(|e| panic!("{what}: body: {e}"));
        Reply {
            status,
            cookie,
            body,
        }
    }

    async fn get(&self, node: usize, path: &str, cookie: Option<&str>) -> Reply {
        let (id, base) = &self.nodes[node];
        let req = self.http.get(format!("{base}{path}"));
        self.send(req, cookie, &format!("GET {path} on {id}")).await
    }

    async fn post(
        &self,
        node: usize,
        path: &str,
        form: &[(&str, &str)],
        cookie: Option<&str>,
    ) -> Reply {
        let (id, base) = &self.nodes[node];
        let req = self.http.post(format!("{base}{path}")).form(form);
        self.send(req, cookie, &format!("POST {path} on {id}"))
            .await
    }

    /// `GET /api/session` on `node`; asserts a 200 from that very node.
    async fn view(&self, node: usize, cookie: Option<&str>) -> View {
        let reply = self.get(node, "/api/session", cookie).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "GET /api/session on {}: {}",
            self.nodes[node].0,
            reply.body
        );
        let view = parse_view(&reply.body, reply.cookie);
        assert_eq!(view.node, self.nodes[node].0, "answered by the node asked");
        view
    }

    /// `POST path` on `node`; asserts the 303 a successful form gets.
    async fn submit(
        &self,
        node: usize,
        path: &str,
        form: &[(&str, &str)],
        cookie: Option<&str>,
    ) -> Option<CookieChange> {
        let reply = self.post(node, path, form, cookie).await;
        assert_eq!(
            reply.status,
            StatusCode::SEE_OTHER,
            "POST {path} {form:?} on {}: {}",
            self.nodes[node].0,
            reply.body
        );
        reply.cookie
    }

    /// Logs a fresh client in as `user` on `node`; returns its cookie.
    async fn login(&self, node: usize, user: &str) -> String {
        match self.submit(node, "/login", &[("name", user)], None).await {
            Some(CookieChange::Set(c)) => c,
            other => panic!("login as {user} set no session cookie: {other:?}"),
        }
    }

    /// Adds `item` to the cart of the session `cookie` names, on `node`; returns the
    /// session's new cookie.
    async fn add(&self, node: usize, item: &str, cookie: &str) -> String {
        match self
            .submit(node, "/cart", &[("item", item)], Some(cookie))
            .await
        {
            Some(CookieChange::Set(c)) => c,
            other => panic!("adding {item} on node {node} set no new cookie: {other:?}"),
        }
    }

    async fn near_cache(&self, node: usize) -> Stats {
        let reply = self.get(node, "/api/near-cache", None).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "GET /api/near-cache on {}: {}",
            self.nodes[node].0,
            reply.body
        );
        Stats::parse(&reply.body)
    }

    async fn near_caches(&self) -> Vec<Stats> {
        let mut all = Vec::new();
        for node in 0..self.len() {
            all.push(self.near_cache(node).await);
        }
        all
    }

    /// Polls until every node's near-cache reports `subscribed == want`; returns how long
    /// that took.
    async fn wait_subscribed(&self, want: bool, timeout: Duration) -> Duration {
        let began = Instant::now();
        let what = format!("every node's near-cache to report subscribed={want}");
        wait_for_async(&what, timeout, || async {
            let all = self.near_caches().await;
            all.iter().all(|s| s.subscribed == want).then_some(())
        })
        .await;
        began.elapsed()
    }
}

fn parse_view(body: &str, cookie: Option<CookieChange>) -> View {
    let json: Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("session JSON: {e}: {body}"));
    let text = |key: &str| json[key].as_str().map(str::to_string);
    View {
        node: text("node").unwrap_or_default(),
        session: text("session"),
        user: text("user"),
        cart: json["cart"]
            .as_array()
            .unwrap_or_else(|| panic!("a cart array: {body}"))
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        version: json["version"]
            .as_u64()
            .unwrap_or_else(|| panic!("a version: {body}")),
        cookie,
    }
}

/// The session version a signed `<id>.<version>` cookie value carries.
fn version_of(cookie: &str) -> u64 {
    cookie
        .rsplit_once('.')
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("cookie {cookie:?} does not end in .<version>"))
}

/// `GET /api/near-cache`.
#[derive(Debug, Clone, Default)]
struct Stats {
    subscribed: bool,
    hits: u64,
    misses: u64,
    /// Entries dropped because an event announced a newer version.
    evictions: u64,
    /// Entries replaced by the newer state a write's event carried.
    updates: u64,
    events: u64,
    flushes: u64,
    lag_p50_us: Option<u64>,
    lag_p99_us: Option<u64>,
}

impl Stats {
    fn parse(body: &str) -> Stats {
        let json: Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("near-cache JSON: {e}: {body}"));
        let count = |key: &str| {
            json[key]
                .as_u64()
                .unwrap_or_else(|| panic!("near-cache {key}: {body}"))
        };
        Stats {
            subscribed: json["subscribed"]
                .as_bool()
                .unwrap_or_else(|| panic!("near-cache subscribed: {body}")),
            hits: count("hits"),
            misses: count("misses"),
            evictions: count("evictions"),
            updates: count("updates"),
            events: count("events"),
            flushes: count("flushes"),
            lag_p50_us: json["lag_p50_us"].as_u64(),
            lag_p99_us: json["lag_p99_us"].as_u64(),
        }
    }
}

/// Per node, `after - before` of a counter.
fn grown(before: &[Stats], after: &[Stats], counter: fn(&Stats) -> u64) -> Vec<u64> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| counter(a).saturating_sub(counter(b)))
        .collect()
}

fn lags(stats: &[Stats]) -> String {
    stats
        .iter()
        .map(|s| format!("p50 {:?} µs / p99 {:?} µs", s.lag_p50_us, s.lag_p99_us))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `p`th percentile of `samples` (sorted here), zero when empty.
fn percentile(samples: &[Duration], p: usize) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    sorted
        .get((sorted.len() * p / 100).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

/// Writer, then the two readers, for round `i`: every node takes every role in turn.
fn roles(i: usize, n: usize) -> (usize, usize, usize) {
    (i % n, (i + 1) % n, (i + 2) % n)
}

// ---------------------------------------------------------------------------------------
// write on one node, read on the others

/// What a series of write-on-A / read-on-B-and-C rounds saw.
#[derive(Debug, Default)]
struct Rounds {
    reads: usize,
    /// Reads with the writer's own (new) cookie that missed the write: must stay 0.
    own_stale: usize,
    /// First reads with the cookie from before the write that missed it.
    other_stale: usize,
    /// For those, how long after the write's response the reader first saw it.
    lags: Vec<Duration>,
}

impl Rounds {
    fn report(&self, label: &str) {
        eprintln!(
            "[coherence] {label}: {} reads; stale with the writer's cookie: {}; stale first \
             reads with the cookie from before the write: {} (fresh after max {:?}, p99 {:?})",
            self.reads,
            self.own_stale,
            self.other_stale,
            self.lags.iter().max().copied().unwrap_or_default(),
            percentile(&self.lags, 99),
        );
    }
}

/// `rounds` rounds of: both other nodes read the session (their near-caches now hold it);
/// a client adds an item on one node; at once, on each other node, another client holding
/// the cookie from before the write reads, polling until it sees the item; then the
/// writing client reads there with its new cookie. Sessions are renewed before carts fill.
async fn write_then_read_elsewhere(net: &Net, label: &str, rounds: usize) -> Rounds {
    let mut seen = Rounds::default();
    let mut cookie = String::new();
    let mut cart: Vec<String> = Vec::new();
    for i in 0..rounds {
        let (w, r1, r2) = roles(i, net.len());
        if cart.len() == CART_MAX || i == 0 {
            cookie = net.login(w, &format!("{label}-{i}")).await;
            cart.clear();
        }
        let before = cookie.clone();
        // Both readers' nodes hold the current state (a near-cache entry to go stale).
        for r in [r1, r2] {
            let v = net.view(r, Some(&before)).await;
            assert_eq!(v.cart, cart, "{label}: the state before round {i}");
        }
        let item = format!("{label}-{i}");
        cookie = net.add(w, &item, &before).await;
        let written = Instant::now();
        cart.push(item.clone());
        let version = version_of(&cookie);
        // The other client first, at once: nothing but the event can tell the reader's
        // node about the write (the client's own new cookie would, and its read would
        // refresh the node's cache).
        for r in [r1, r2] {
            let mut first = true;
            loop {
                let other = net.view(r, Some(&before)).await;
                seen.reads += 1;
                if other.cart == cart {
                    if !first {
                        seen.lags.push(written.elapsed());
                    }
                    break;
                }
                if first {
                    seen.other_stale += 1;
                    first = false;
                }
                assert!(
                    written.elapsed() < GIVE_UP,
                    "{label}: {} still shows {:?} (v{}) {GIVE_UP:?} after {item} was added on {}",
                    net.nodes[r].0,
                    other.cart,
                    other.version,
                    net.nodes[w].0
                );
            }
        }
        for r in [r1, r2] {
            let own = net.view(r, Some(&cookie)).await;
            seen.reads += 1;
            if own.cart != cart || own.version < version {
                seen.own_stale += 1;
                eprintln!(
                    "[coherence] {label}: STALE own read on {} after writing {item} (v{version}) \
                     on {}: {own:?}",
                    net.nodes[r].0, net.nodes[w].0
                );
            }
        }
    }
    seen
}

// ---------------------------------------------------------------------------------------
// scenarios

/// A client writes on one node and at once reads on the two others, 1,000 times: it never
/// sees its own older state, and the near-caches really served reads meanwhile.
async fn read_your_writes_on_every_node(engines: Engines) {
    const ROUNDS: usize = 1000;
    let topo = start(engines.options(Need::Plain)).await;
    let net = Net::new(&topo);
    net.wait_subscribed(true, LINK_CHANGE).await;
    let before = net.near_caches().await;

    let mut stale = Vec::new();
    let mut cookie = String::new();
    let mut cart: Vec<String> = Vec::new();
    for i in 0..ROUNDS {
        let (w, r1, r2) = roles(i, net.len());
        if cart.len() == CART_MAX || i == 0 {
            cookie = net.login(w, &format!("ryw-{i}")).await;
            cart.clear();
        }
        let item = format!("i{i}");
        cookie = net.add(w, &item, &cookie).await;
        cart.push(item);
        let version = version_of(&cookie);
        for r in [r1, r2] {
            let v = net.view(r, Some(&cookie)).await;
            if v.cart != cart || v.version < version || v.user.is_none() {
                stale.push(format!("round {i} on {}: {v:?}", net.nodes[r].0));
            }
            if let Some(CookieChange::Set(c)) = v.cookie {
                cookie = c;
            }
        }
    }
    let after = net.near_caches().await;
    let hits = grown(&before, &after, |s| s.hits);
    let misses = grown(&before, &after, |s| s.misses);
    eprintln!(
        "[coherence] {}: read-your-writes: {} reads after writes on another node, {} stale; \
         near-cache hits per node {hits:?}, misses {misses:?}; event lag {}",
        engines.name(),
        2 * ROUNDS,
        stale.len(),
        lags(&after)
    );
    assert!(
        stale.is_empty(),
        "{} of {} reads missed the client's own write: {:#?}",
        stale.len(),
        2 * ROUNDS,
        &stale[..stale.len().min(10)]
    );
    // Each round's writer read the session in the round before (and events may have
    // brought its node the newer state since): at least that load is a near-cache hit,
    // unless the cache is off or drops entries it should keep.
    for (i, h) in hits.iter().enumerate() {
        assert!(
            *h >= (ROUNDS / 3 / 2) as u64,
            "{}'s near-cache served only {h} session loads of the ~{} it had cached: {hits:?}",
            net.nodes[i].0,
            ROUNDS / 3
        );
    }
    // The same counters reach Prometheus: at least as many hits as the API reported.
    let metrics = net.get(0, "/metrics", None).await;
    assert_eq!(metrics.status, StatusCode::OK);
    let scraped = metrics
        .body
        .lines()
        .find_map(|l| l.strip_prefix("sessions_near_cache_hits_total "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no near-cache hits in /metrics:\n{}", metrics.body));
    assert!(scraped >= after[0].hits, "{scraped} < {}", after[0].hits);
    assert!(
        metrics.body.contains("sessions_events_subscribed 1"),
        "{}",
        metrics.body
    );
}

/// Another client, holding the cookie from before a write (so nothing tells the node the
/// write happened but the event), reads on the other nodes: it sees the write as soon as
/// the event has arrived, bounded by [`STALE_BOUND`] after the write's response.
async fn other_clients_see_a_write_within_the_event_lag(engines: Engines) {
    let topo = start(engines.options(Need::Plain)).await;
    let net = Net::new(&topo);
    net.wait_subscribed(true, LINK_CHANGE).await;
    let before = net.near_caches().await;
    let rounds = write_then_read_elsewhere(&net, "lag", 300).await;
    let after = net.near_caches().await;
    rounds.report(&format!("{}: other clients", engines.name()));
    let hits = grown(&before, &after, |s| s.hits);
    let invalidated = grown(&before, &after, |s| s.evictions + s.updates);
    eprintln!(
        "[coherence] {}: hits per node {hits:?}, entries evicted or updated by events \
         {invalidated:?}; event lag {}",
        engines.name(),
        lags(&after)
    );
    assert_eq!(rounds.own_stale, 0, "the writer read its own older state");
    let max = rounds.lags.iter().max().copied().unwrap_or_default();
    assert!(
        max <= STALE_BOUND,
        "another client saw the old state up to {max:?} after the write (bound {STALE_BOUND:?}; \
         {} of {} first reads stale)",
        rounds.other_stale,
        2 * 300
    );
    // The near-caches held the old state (hits) and events evicted or replaced it.
    assert!(
        hits.iter().all(|&h| h > 0),
        "every near-cache served reads: {hits:?}"
    );
    assert!(
        invalidated.iter().all(|&e| e > 0),
        "events evicted or updated entries on every node: {invalidated:?}"
    );
}

/// The same cookie adds two items at once on two nodes, 50 times: both land every time,
/// each once (compare-and-set, the loser replays its addition on the winner's version).
async fn concurrent_cart_additions_on_two_nodes_both_land(engines: Engines) {
    const ROUNDS: usize = 50;
    let topo = start(engines.options(Need::Plain)).await;
    let net = Net::new(&topo);
    net.wait_subscribed(true, LINK_CHANGE).await;

    let mut cookie = String::new();
    let mut cart: Vec<String> = Vec::new();
    for i in 0..ROUNDS {
        let (a, b, c) = roles(i, net.len());
        if cart.len() + 2 > CART_MAX || i == 0 {
            cookie = net.login(c, &format!("race-{i}")).await;
            cart.clear();
        }
        let version = version_of(&cookie);
        let (x, y) = (format!("a{i}"), format!("b{i}"));
        let (ca, cb) = tokio::join!(net.add(a, &x, &cookie), net.add(b, &y, &cookie));
        let (va, vb) = (version_of(&ca), version_of(&cb));
        assert_eq!(
            BTreeSet::from([va, vb]),
            BTreeSet::from([version + 1, version + 2]),
            "round {i}: two saves from v{version} make two versions, one after the other"
        );
        cookie = if va > vb { ca } else { cb };
        cart.extend([x, y]);
        let want: BTreeSet<&String> = cart.iter().collect();
        for r in [c, a, b] {
            let v = net.view(r, Some(&cookie)).await;
            let got: BTreeSet<&String> = v.cart.iter().collect();
            assert_eq!(
                (got, v.cart.len()),
                (want.clone(), cart.len()),
                "round {i} on {}: both additions, once each",
                net.nodes[r].0
            );
        }
    }
    eprintln!(
        "[coherence] {}: {ROUNDS} concurrent pairs of additions on two nodes, none lost",
        engines.name()
    );
}

/// The broker is SIGKILLed mid-test: requests keep succeeding, every node stops trusting
/// its near-cache (no hit at all while down, and no stale read even for a client whose
/// cookie predates the write), and once the broker is back every node re-subscribes,
/// events flow and the caches serve again, still without stale reads.
async fn broker_outage_turns_near_caches_off_and_back_on(engines: Engines) {
    let name = engines.name();
    let mut topo = start(engines.options(Need::KillableBroker)).await;
    let net = Net::new(&topo);
    net.wait_subscribed(true, LINK_CHANGE).await;

    let up = write_then_read_elsewhere(&net, "up", 60).await;
    up.report(&format!("{name}: broker up"));
    assert_eq!(up.own_stale, 0);
    let first = net.near_caches().await;

    topo = tokio::task::spawn_blocking(move || {
        topo.kill_broker();
        topo
    })
    .await
    .expect("kill the broker");
    // At once, before the nodes may have noticed: writes and reads still succeed.
    let cookie = net.login(0, "outage").await;
    let cookie = net.add(1, "during-kill", &cookie).await;
    let v = net.view(2, Some(&cookie)).await;
    assert_eq!(
        v.cart,
        ["during-kill"],
        "read-your-writes right after the kill"
    );
    let noticed = net.wait_subscribed(false, LINK_CHANGE).await;
    let down_before = net.near_caches().await;
    let flushes = grown(&first, &down_before, |s| s.flushes);
    assert!(
        flushes.iter().all(|&f| f >= 1),
        "every node flushed its near-cache on losing the broker: {flushes:?}"
    );

    // While down: no event can arrive, so any stale read is a cache trusted when it must
    // not be. Reads go to the store and are fresh at once.
    let down = write_then_read_elsewhere(&net, "down", 60).await;
    down.report(&format!("{name}: broker down"));
    let down_after = net.near_caches().await;
    let hits_down = grown(&down_before, &down_after, |s| s.hits);
    assert_eq!(down.own_stale, 0, "stale own reads with the broker down");
    assert_eq!(
        down.other_stale, 0,
        "with the broker down, a node served a cached old state (no event could evict it)"
    );
    assert_eq!(
        hits_down,
        vec![0; net.len()],
        "near-caches must not serve while their node is cut off from the broker"
    );

    let restarted = Instant::now();
    topo = tokio::task::spawn_blocking(move || {
        topo.restart_broker();
        topo
    })
    .await
    .expect("restart the broker");
    let broker_start = restarted.elapsed();
    let resubscribed = net.wait_subscribed(true, LINK_CHANGE).await;
    let back_before = net.near_caches().await;
    let back = write_then_read_elsewhere(&net, "back", 60).await;
    back.report(&format!("{name}: broker back"));
    let back_after = net.near_caches().await;
    let hits = grown(&back_before, &back_after, |s| s.hits);
    let events = grown(&back_before, &back_after, |s| s.events);
    let invalidated = grown(&back_before, &back_after, |s| s.evictions + s.updates);
    eprintln!(
        "[coherence] {name}: broker outage: nodes noticed in {noticed:?}; broker restart took \
         {broker_start:?}, nodes re-subscribed {resubscribed:?} after; afterwards hits \
         {hits:?}, events {events:?}, entries evicted or updated {invalidated:?}"
    );
    assert_eq!(
        back.own_stale, 0,
        "stale own reads after the broker returned"
    );
    let max = back.lags.iter().max().copied().unwrap_or_default();
    assert!(
        max <= STALE_BOUND,
        "after the broker returned, old state was served up to {max:?} after a write"
    );
    for (what, grew) in [
        ("hits", &hits),
        ("events", &events),
        ("evicted or updated entries", &invalidated),
    ] {
        assert!(
            grew.iter().all(|&g| g > 0),
            "{what} grew on every node once the broker was back: {grew:?}"
        );
    }
    drop(topo);
}

/// Sessions ended on one node, their old cookies replayed at once on the others (which
/// held them in their near-caches): refused — anonymous, nothing in the cart, the cookie
/// cleared — within [`REPLAY_BOUND`] of the response that ended them; on the node that
/// ended them, always. Two ways a session ends: login moves it to a fresh id (so an id
/// planted before login is worthless after it), and logout.
async fn ended_sessions_replayed_on_other_nodes_are_refused(engines: Engines) {
    const ROUNDS: usize = 200;
    let topo = start(engines.options(Need::Plain)).await;
    let net = Net::new(&topo);
    net.wait_subscribed(true, LINK_CHANGE).await;

    let mut rotated = Replays::default();
    let mut logged_out = Replays::default();
    for i in 0..ROUNDS {
        let (a, b, c) = roles(i, net.len());
        let item = format!("pre-{i}");
        let pre = match net.submit(c, "/cart", &[("item", &item)], None).await {
            Some(CookieChange::Set(cookie)) => cookie,
            other => panic!("a first cart addition starts a session: {other:?}"),
        };
        for r in [a, b, c] {
            assert_eq!(net.view(r, Some(&pre)).await.cart, [item.as_str()]);
        }

        // Login on b: the session moves to a fresh id, keeping the cart.
        let user = format!("replay-{i}");
        let cookie = match net
            .submit(b, "/login", &[("name", &user)], Some(&pre))
            .await
        {
            Some(CookieChange::Set(cookie)) => cookie,
            other => panic!("login sets a new cookie: {other:?}"),
        };
        let moved = Instant::now();
        rotated.until_refused(&net, a, &pre, moved).await;
        rotated.until_refused(&net, c, &pre, moved).await;
        let v = net.view(b, Some(&pre)).await;
        assert!(
            v.user.is_none() && v.cart.is_empty(),
            "round {i}: the pre-login id on the login node itself: {v:?}"
        );
        for r in [a, b, c] {
            let v = net.view(r, Some(&cookie)).await;
            assert_eq!(
                (v.user.as_deref(), v.cart.as_slice()),
                (Some(user.as_str()), [item.clone()].as_slice()),
                "round {i}: logged in, cart kept"
            );
        }

        // Logout on a.
        let cleared = net.submit(a, "/logout", &[], Some(&cookie)).await;
        let out = Instant::now();
        assert_eq!(
            cleared,
            Some(CookieChange::Clear),
            "logout clears the cookie"
        );
        logged_out.until_refused(&net, b, &cookie, out).await;
        logged_out.until_refused(&net, c, &cookie, out).await;
        let v = net.view(a, Some(&cookie)).await;
        assert!(
            v.user.is_none() && v.cart.is_empty(),
            "round {i}: replay on the logout node itself: {v:?}"
        );
    }
    rotated.report(&format!("{}: login (id rotation)", engines.name()));
    logged_out.report(&format!("{}: logout", engines.name()));
    rotated.assert_bounded("the pre-login id after login");
    logged_out.assert_bounded("a logged-out cookie");
}

/// The store dies (the broker lives on): changes are refused with a 503 naming the store,
/// reads the near-cache cannot answer too; sessions it holds are still shown correctly.
/// When the store returns (empty), every node serves again by itself, and the sessions the
/// store lost leave the near-caches within their maximum age.
async fn store_outage_is_a_clear_503_and_recovers_with_near_caches(engines: Engines) {
    const MAX_AGE: Duration = Duration::from_secs(3);
    let name = engines.name();
    let mut opts = engines.options(Need::BrokerApart);
    opts.node_args = vec!["--near-cache-max-age".into(), "3s".into()];
    let mut topo = start(opts).await;
    let net = Net::new(&topo);
    net.wait_subscribed(true, LINK_CHANGE).await;

    // `seen` is in every node's near-cache; `unseen` only ever touched node 0.
    let seen = net.login(0, "seen").await;
    let seen = net.add(1, "tea", &seen).await;
    for r in 0..net.len() {
        assert_eq!(net.view(r, Some(&seen)).await.cart, ["tea"]);
    }
    let unseen = net.login(0, "unseen").await;
    // Some concurrent traffic first, as on a node in service: it opens several store
    // connections per node, all of which the store's death breaks.
    let burst = (0..8 * net.len()).map(|k| {
        let net = net.clone();
        async move { net.login(k % net.len(), &format!("busy-{k}")).await }
    });
    futures::future::join_all(burst).await;

    topo = tokio::task::spawn_blocking(move || {
        topo.kill_store();
        topo
    })
    .await
    .expect("kill the store");
    let unavailable = |reply: &Reply, what: &str| {
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{what} with the store down: {}",
            reply.body
        );
        assert!(
            reply.body.contains("session store"),
            "{what}: the 503 names the problem: {}",
            reply.body
        );
    };
    let mut from_cache = 0;
    for r in 0..net.len() {
        let node = &net.nodes[r].0;
        let reply = net
            .post(r, "/cart", &[("item", "coffee")], Some(&seen))
            .await;
        unavailable(&reply, &format!("POST /cart on {node}"));
        let reply = net.post(r, "/login", &[("name", "new")], None).await;
        unavailable(&reply, &format!("POST /login on {node}"));
        if r != 0 {
            let reply = net.get(r, "/api/session", Some(&unseen)).await;
            unavailable(
                &reply,
                &format!("GET /api/session of an uncached session on {node}"),
            );
            let reply = net.get(r, "/", Some(&unseen)).await;
            unavailable(&reply, &format!("GET / of an uncached session on {node}"));
        }
        // A cached session may be shown from the near-cache (it is the latest: nobody can
        // change it), or refused like the rest; never shown wrong.
        let reply = net.get(r, "/api/session", Some(&seen)).await;
        if reply.status == StatusCode::OK {
            let v = parse_view(&reply.body, None);
            assert_eq!(
                (v.user.as_deref(), v.cart.as_slice()),
                (Some("seen"), ["tea".to_string()].as_slice()),
                "{node} from its near-cache"
            );
            from_cache += 1;
        } else {
            unavailable(
                &reply,
                &format!("GET /api/session of a cached session on {node}"),
            );
        }
    }
    eprintln!(
        "[coherence] {name}: store down: writes and uncached reads 503; cached session shown \
         from {from_cache} of {} near-caches",
        net.len()
    );

    let restarted = Instant::now();
    topo = tokio::task::spawn_blocking(move || {
        topo.restart_store();
        topo
    })
    .await
    .expect("restart the store");
    // The store accepts connections again. Each node, asked one request at a time: how
    // many 503s before it serves, and then it must keep serving.
    let mut failed_after = Vec::new();
    for r in 0..net.len() {
        let failed = AtomicUsize::new(0);
        let what = format!("{} to serve logins again", net.nodes[r].0);
        wait_for_async(&what, Duration::from_secs(20), || {
            let (net, failed, unavailable) = (&net, &failed, &unavailable);
            async move {
                let reply = net.post(r, "/login", &[("name", "back")], None).await;
                if reply.status == StatusCode::SEE_OTHER {
                    return Some(());
                }
                unavailable(&reply, "POST /login while the nodes reconnect");
                failed.fetch_add(1, Ordering::Relaxed);
                None
            }
        })
        .await;
        for k in 0..10 {
            let reply = net.post(r, "/login", &[("name", "steady")], None).await;
            assert_eq!(
                reply.status,
                StatusCode::SEE_OTHER,
                "{}: request {k} after it served again: {}",
                net.nodes[r].0,
                reply.body
            );
        }
        failed_after.push(failed.into_inner());
    }
    let recovered = restarted.elapsed();
    eprintln!(
        "[coherence] {name}: store back: 503s per node before it served again, one request \
         at a time: {failed_after:?}"
    );
    // One request may find its connection broken (the redis crate reconnects after it);
    // more is a node blaming the store for connections it kept after they broke.
    assert!(
        failed_after.iter().all(|&f| f <= 1),
        "after the store was back, nodes answered {failed_after:?} requests (per node) with \
         503 \"store not answering\" before serving: stale store connections are used and \
         dropped one failed request at a time"
    );
    // The store came back empty: a new session works everywhere at once.
    let again = net.login(2, "seen").await;
    let again = net.add(0, "tea", &again).await;
    for r in 0..net.len() {
        let v = net.view(r, Some(&again)).await;
        assert_eq!(
            (v.user.as_deref(), v.cart.as_slice()),
            (Some("seen"), ["tea".to_string()].as_slice())
        );
    }
    // The lost session: gone from the store, and no event said so; the near-caches'
    // maximum age bounds how long they keep showing it.
    let lost_since = Instant::now();
    wait_for_async(
        "the session the store lost to leave every near-cache",
        MAX_AGE + Duration::from_secs(5),
        || async {
            for r in 0..net.len() {
                if net.view(r, Some(&seen)).await.user.is_some() {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    eprintln!(
        "[coherence] {name}: store back: every node served again {recovered:?} after the \
         restart began; the lost session was still shown for up to {:?} more (max age \
         {MAX_AGE:?})",
        lost_since.elapsed()
    );
    assert!(
        lost_since.elapsed() <= MAX_AGE + Duration::from_secs(1),
        "a near-cache kept a session the store lost for {:?}, beyond its max age {MAX_AGE:?}",
        lost_since.elapsed()
    );
    drop(topo);
}

/// Cookies of ended sessions, replayed: how many were still honoured at first, and how long
/// after the ending response those were refused.
#[derive(Debug, Default)]
struct Replays {
    tried: usize,
    passed: usize,
    windows: Vec<Duration>,
}

impl Replays {
    fn max(&self) -> Duration {
        self.windows.iter().max().copied().unwrap_or_default()
    }

    fn report(&self, label: &str) {
        eprintln!(
            "[coherence] {label}: {} of {} immediate replays of an ended session's cookie on \
             another node passed; all refused within {:?} (p99 of the passes {:?})",
            self.passed,
            self.tried,
            self.max(),
            percentile(&self.windows, 99)
        );
    }

    fn assert_bounded(&self, label: &str) {
        assert!(
            self.max() <= REPLAY_BOUND,
            "{label}: an ended session's cookie was honoured up to {:?} after the response that \
             ended it ({} of {} replays passed; bound {REPLAY_BOUND:?})",
            self.max(),
            self.passed,
            self.tried
        );
    }

    /// Replays `cookie`, whose session ended when `since` was taken, on `node` until it is
    /// refused: no user, an empty cart, and no cookie set in its place.
    async fn until_refused(&mut self, net: &Net, node: usize, cookie: &str, since: Instant) {
        self.tried += 1;
        let mut first = true;
        loop {
            let v = net.view(node, Some(cookie)).await;
            if v.user.is_none() && v.cart.is_empty() {
                // A refused cookie is never replaced by a live one. It is left alone: a
                // request still carrying an ended id must not clear the cookie that
                // replaced it in the browser (a login's, say).
                assert_eq!(v.cookie, None, "a refused cookie is left alone");
                if !first {
                    self.windows.push(since.elapsed());
                }
                return;
            }
            if first {
                self.passed += 1;
                first = false;
            }
            assert!(
                since.elapsed() < GIVE_UP,
                "{} still honours an ended session {GIVE_UP:?} after it ended: {v:?}",
                net.nodes[node].0
            );
        }
    }

    /// [`Replays::until_refused`] for each of `cookies` on every node.
    async fn all_refused(&mut self, net: &Net, cookies: &[String], since: Instant) {
        for cookie in cookies {
            for node in 0..net.len() {
                self.until_refused(net, node, cookie, since).await;
            }
        }
    }
}

/// `GET /api/sessions` with `cookie` on `node`: (short id, current) pairs.
async fn sessions_of(net: &Net, node: usize, cookie: &str) -> Vec<(String, bool)> {
    let reply = net.get(node, "/api/sessions", Some(cookie)).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "GET /api/sessions: {}",
        reply.body
    );
    let list: Value = serde_json::from_str(&reply.body).expect("sessions JSON");
    list.as_array()
        .unwrap_or_else(|| panic!("a list: {}", reply.body))
        .iter()
        .map(|s| {
            (
                s["session"].as_str().unwrap_or_default().to_string(),
                s["current"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

/// Three clients log in as one user on three nodes; `/api/sessions` lists the three; "log
/// out everywhere" from one ends all three, on every node: at once on the node that
/// handled it, within [`REPLAY_BOUND`] on the others.
async fn logout_everywhere_ends_every_session_on_every_node(engines: Engines) {
    const ROUNDS: usize = 20;
    let topo = start(engines.options(Need::Plain)).await;
    let net = Net::new(&topo);
    net.wait_subscribed(true, LINK_CHANGE).await;

    let mut replays = Replays::default();
    for i in 0..ROUNDS {
        let user = format!("everywhere-{i}");
        let mut cookies = Vec::new();
        let mut ids = Vec::new();
        for node in 0..net.len() {
            let cookie = net.login(node, &user).await;
            for r in 0..net.len() {
                let v = net.view(r, Some(&cookie)).await;
                assert_eq!(v.user.as_deref(), Some(user.as_str()));
                if r == 0 {
                    ids.push(v.session.expect("a saved session has an id"));
                }
            }
            cookies.push(cookie);
        }
        let (caller, handler) = (i % 3, (i + 1) % 3);
        let listed = sessions_of(&net, (i + 2) % 3, &cookies[caller]).await;
        let listed_ids: BTreeSet<&String> = listed.iter().map(|(s, _)| s).collect();
        assert_eq!(
            listed_ids,
            ids.iter().collect(),
            "round {i}: /api/sessions lists the user's three"
        );
        let current: Vec<&String> = listed.iter().filter(|(_, c)| *c).map(|(s, _)| s).collect();
        assert_eq!(
            current,
            [&ids[caller]],
            "the caller's own session is marked current"
        );

        let cleared = net
            .submit(handler, "/logout-everywhere", &[], Some(&cookies[caller]))
            .await;
        let out = Instant::now();
        assert_eq!(
            cleared,
            Some(CookieChange::Clear),
            "the caller's cookie is cleared"
        );
        for cookie in &cookies {
            for r in (0..net.len()).filter(|&r| r != handler) {
                replays.until_refused(&net, r, cookie, out).await;
            }
            let v = net.view(handler, Some(cookie)).await;
            assert!(
                v.user.is_none(),
                "round {i}: the node that logged the user out everywhere: {v:?}"
            );
        }
        // The index was emptied with them: a new login is the user's only session.
        let fresh = net.login(2, &user).await;
        let listed = sessions_of(&net, 0, &fresh).await;
        assert_eq!(
            listed.len(),
            1,
            "round {i}: only the new session is left: {listed:?}"
        );
    }
    replays.report(&format!("{}: logout everywhere", engines.name()));
    replays.assert_bounded("logout everywhere");
}

/// With `--max-sessions-per-user 2`, a user's third login ends the oldest session on every
/// node (within [`REPLAY_BOUND`]); the two newest live on and are the ones listed.
async fn per_user_cap_ends_the_oldest_session_everywhere(engines: Engines) {
    const ROUNDS: usize = 10;
    let mut opts = engines.options(Need::Plain);
    opts.node_args = vec!["--max-sessions-per-user".into(), "2".into()];
    let topo = start(opts).await;
    let net = Net::new(&topo);
    net.wait_subscribed(true, LINK_CHANGE).await;

    let mut replays = Replays::default();
    for i in 0..ROUNDS {
        let user = format!("capped-{i}");
        let mut cookies = Vec::new();
        let mut ids = Vec::new();
        for n in 0..3 {
            let cookie = net.login((i + n) % 3, &user).await;
            if n == 2 {
                // Every near-cache holds the oldest session: only the revocation's event
                // can make the other nodes forget it.
                replays
                    .all_refused(&net, &cookies[..1], Instant::now())
                    .await;
            }
            for r in 0..net.len() {
                let v = net.view(r, Some(&cookie)).await;
                assert_eq!(v.user.as_deref(), Some(user.as_str()));
                if r == 0 {
                    ids.push(v.session.clone().expect("an id"));
                }
            }
            cookies.push(cookie);
            for r in 0..net.len() {
                let v = net.view(r, Some(&cookies[0])).await;
                assert_eq!(
                    v.user.is_some(),
                    n < 2,
                    "round {i}: the oldest session lives until the third login"
                );
            }
        }
        for cookie in &cookies[1..] {
            for r in 0..net.len() {
                let v = net.view(r, Some(cookie)).await;
                assert_eq!(
                    v.user.as_deref(),
                    Some(user.as_str()),
                    "round {i}: the two newest sessions live on"
                );
            }
        }
        let listed: BTreeSet<String> = sessions_of(&net, i % 3, &cookies[2])
            .await
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(
            listed,
            ids[1..].iter().cloned().collect::<BTreeSet<_>>(),
            "round {i}: the index lists the two newest"
        );
    }
    replays.report(&format!("{}: per-user cap", engines.name()));
    replays.assert_bounded("the per-user cap");
}
