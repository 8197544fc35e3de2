//! `bench amqp`: an AMQP 0-9-1 load generator (lapin) that measures one broker at a time.
//!
//! Each scenario declares its own uniquely named queues (and exchange), warms up, measures
//! for `--seconds`, and deletes what it declared on a fresh connection whether it passed or
//! not. Every wait is bounded: the measured window, a per-scenario hard timeout, and short
//! timeouts on connect, drain and clean-up. One `key=value` line per scenario goes to
//! stdout (`scenario=NAME error="..."` when it failed); progress goes to stderr.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::task::JoinHandle;

use crate::proc_stats::Probe;

/// Time a scenario may spend outside its warm-up and measured window (connecting,
/// declaring, draining) before it is abandoned as failed.
const SETUP_AND_DRAIN: Duration = Duration::from_secs(30);
/// Bound on each connection attempt and on the clean-up after each scenario.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the publisher may take to stop, and in-flight latency samples to arrive.
const DRAIN: Duration = Duration::from_secs(3);
/// How often the broker's resident memory is sampled for the peak.
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Flags of `bench amqp`.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// Broker to measure.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5673/%2f")]
    url: String,

    /// Scenario to run; `all` runs each in turn.
    #[arg(long, value_enum, default_value_t = ScenarioArg::All)]
    scenario: ScenarioArg,

    /// Measured seconds per scenario (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,

    /// Unmeasured seconds before each window.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,

    /// Broker process to sample: RSS idle before and peak during each scenario (VmRSS),
    /// and CPU time (utime+stime) over the measured window.
    #[arg(long)]
    broker_pid: Option<u32>,

    /// Message body size in bytes.
    #[arg(long, default_value_t = 256)]
    size: usize,

    /// Publish rate of the latency scenario, messages per second.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    rate: u64,

    /// Unconfirmed publishes allowed in flight (confirm-persistent).
    #[arg(long, default_value_t = 1000)]
    window: usize,

    /// basic.qos prefetch of manually acking consumers (ack, confirm-persistent).
    #[arg(long, default_value_t = 100)]
    prefetch: u16,

    /// The publisher pauses while this many deliveries are outstanding, so that a
    /// throughput run measures a steady state instead of a growing queue.
    #[arg(long, default_value_t = 10_000)]
    max_backlog: u64,

    /// Publishing tasks in the throughput scenarios, each on its own channel of the one
    /// publisher connection. lapin resolves a publish once its frames are written, so one
    /// task has one message in flight and measures the client's hand-offs as much as the
    /// broker; several let lapin write their frames together, as a busy service does.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    publishers: u16,

    /// Acks a manually acking consumer may have sent but not yet seen written before it
    /// takes its next delivery. 1 awaits each ack, lapin's way; amqplib and pika return
    /// from an ack at once, which a larger window mirrors.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1000))]
    ack_window: u16,

    /// PEM file of the CA that signed the broker's certificate, for an amqps:// --url.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
}

/// The TLS settings every connection of this run uses (set once from --tls-ca): one
/// process measures one broker, and the scenarios pass URLs around, not settings.
static TLS: OnceLock<OwnedTLSConfig> = OnceLock::new();

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ScenarioArg {
    Transient,
    Ack,
    ConfirmPersistent,
    Fanout3,
    Latency,
    Stream,
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// One publisher, one auto-ack consumer, transient messages.
    Transient,
    /// One publisher, one consumer acking each delivery, prefetch `--prefetch`.
    Ack,
    /// Persistent messages into a durable queue with publisher confirms (`--window`).
    ConfirmPersistent,
    /// A fanout exchange bound to three queues, one auto-ack consumer each.
    Fanout3,
    /// Publish-to-deliver latency at a steady `--rate`.
    Latency,
    /// A stream queue (`x-queue-type: stream`) with publisher confirms (`--window`) and a
    /// consumer acking each delivery, prefetch `--prefetch`. Not in `all`: RabbitMQ 3.10
    /// needs no plugin for it, but the other scenarios are the set.
    Stream,
}

impl Scenario {
    const ALL: [Scenario; 5] = [
        Scenario::Transient,
        Scenario::Ack,
        Scenario::ConfirmPersistent,
        Scenario::Fanout3,
        Scenario::Latency,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Transient => "transient",
            Scenario::Ack => "ack",
            Scenario::ConfirmPersistent => "confirm-persistent",
            Scenario::Fanout3 => "fanout3",
            Scenario::Latency => "latency",
            Scenario::Stream => "stream",
        }
    }
}

/// Runs the chosen scenarios, printing one line each. Returns whether all of them passed;
/// a failing scenario does not stop the others.
pub async fn run(args: Args) -> anyhow::Result<bool> {
    if !(args.seconds > 0.0 && args.seconds.is_finite()) {
        bail!("--seconds must be a positive number, not {}", args.seconds);
    }
    if !(args.warmup >= 0.0 && args.warmup.is_finite()) {
        bail!("--warmup must be zero or more, not {}", args.warmup);
    }
    if args.window == 0 || args.prefetch == 0 {
        bail!("--window and --prefetch must be at least 1");
    }
    if let Some(path) = &args.tls_ca {
        let ca = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --tls-ca {}", path.display()))?;
        let _ = TLS.set(OwnedTLSConfig {
            identity: None,
            cert_chain: Some(ca),
        });
    }
    let probe = args.broker_pid.map(Probe::new).transpose()?;
    let scenarios: Vec<Scenario> = match args.scenario {
        ScenarioArg::All => Scenario::ALL.to_vec(),
        ScenarioArg::Transient => vec![Scenario::Transient],
        ScenarioArg::Ack => vec![Scenario::Ack],
        ScenarioArg::ConfirmPersistent => vec![Scenario::ConfirmPersistent],
        ScenarioArg::Fanout3 => vec![Scenario::Fanout3],
        ScenarioArg::Latency => vec![Scenario::Latency],
        ScenarioArg::Stream => vec![Scenario::Stream],
    };
    let mut all_passed = true;
    for scenario in scenarios {
        let line = match run_scenario(&args, scenario, probe).await {
            Ok(report) => report.line(scenario),
            Err(err) => {
                all_passed = false;
                eprintln!("bench amqp {}: failed: {err:#}", scenario.name());
                let text = format!("{err:#}").replace('"', "'").replace('\n', " ");
                format!("scenario={} error=\"{text}\"", scenario.name())
            }
        };
        println!("{line}");
    }
    Ok(all_passed)
}

/// The queues and exchange one scenario declares, named before it starts so that
/// clean-up knows them even when the scenario fails half-way.
struct Names {
    queues: Vec<String>,
    exchange: Option<String>,
}

impl Names {
    fn new(scenario: Scenario) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let base = format!("bench.{}.{}.{nanos}", scenario.name(), std::process::id());
        match scenario {
            Scenario::Fanout3 => Self {
                queues: (0..3).map(|i| format!("{base}.q{i}")).collect(),
                exchange: Some(base),
            },
            _ => Self {
                queues: vec![base],
                exchange: None,
            },
        }
    }
}

/// Aborts the task when dropped, so no task outlives its scenario, whichever way the
/// scenario ends.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn run_scenario(
    args: &Args,
    scenario: Scenario,
    probe: Option<Probe>,
) -> anyhow::Result<Report> {
    let names = Names::new(scenario);
    let rss_idle_kb = probe.map(|p| p.rss_kb()).transpose()?;
    let rss_peak_kb = Arc::new(AtomicU64::new(rss_idle_kb.unwrap_or(0)));
    let sampler = probe.map(|p| {
        let peak = rss_peak_kb.clone();
        AbortOnDrop(tokio::spawn(async move {
            let mut every = tokio::time::interval(RSS_SAMPLE_EVERY);
            loop {
                every.tick().await;
                if let Ok(kb) = p.rss_kb() {
                    peak.fetch_max(kb, Relaxed);
                }
            }
        }))
    });
    let limit = Duration::from_secs_f64(args.warmup + args.seconds) + SETUP_AND_DRAIN;
    let result = match tokio::time::timeout(limit, drive(args, scenario, &names, probe)).await {
        Ok(result) => result,
        Err(_) => Err(anyhow!("scenario timed out after {limit:?}")),
    };
    drop(sampler);
    cleanup(&args.url, &names).await;
    let mut report = result?;
    report.rss_idle_kb = rss_idle_kb;
    report.rss_peak_kb = probe.map(|_| rss_peak_kb.load(Relaxed));
    Ok(report)
}

async fn drive(
    args: &Args,
    scenario: Scenario,
    names: &Names,
    probe: Option<Probe>,
) -> anyhow::Result<Report> {
    match scenario {
        Scenario::Transient => queue_flow(args, scenario, names, probe, None, false, false).await,
        Scenario::Ack => {
            queue_flow(
                args,
                scenario,
                names,
                probe,
                Some(args.prefetch),
                false,
                false,
            )
            .await
        }
        Scenario::ConfirmPersistent | Scenario::Stream => {
            queue_flow(
                args,
                scenario,
                names,
                probe,
                Some(args.prefetch),
                scenario == Scenario::ConfirmPersistent,
                true,
            )
            .await
        }
        Scenario::Fanout3 => fanout3(args, names, probe).await,
        Scenario::Latency => latency(args, names, probe).await,
    }
}

/// Counters shared by the publisher, the consumers and the measuring loop.
#[derive(Default)]
struct Counters {
    published: AtomicU64,
    confirmed: AtomicU64,
    delivered: AtomicU64,
    stop: AtomicBool,
    failure: Mutex<Option<String>>,
}

impl Counters {
    /// Records the first failure of a publisher or consumer and stops the publisher.
    fn fail(&self, message: String) {
        if let Ok(mut failure) = self.failure.lock() {
            failure.get_or_insert(message);
        }
        self.stop.store(true, Relaxed);
    }

    fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    fn snapshot(&self) -> [u64; 3] {
        [
            self.published.load(Relaxed),
            self.confirmed.load(Relaxed),
            self.delivered.load(Relaxed),
        ]
    }
}

/// Publish-to-deliver times of messages sent inside the measured window. The first 8
/// bytes of each body carry the send time in nanoseconds since `base`.
struct LatencyRecorder {
    base: Instant,
    from_ns: AtomicU64,
    until_ns: AtomicU64,
    samples_us: Mutex<Vec<u32>>,
}

impl LatencyRecorder {
    fn new(capacity: usize) -> Self {
        Self {
            base: Instant::now(),
            from_ns: AtomicU64::new(u64::MAX),
            until_ns: AtomicU64::new(u64::MAX),
            samples_us: Mutex::new(Vec::with_capacity(capacity)),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn record(&self, body: &[u8]) {
        let Some(stamp) = body.first_chunk::<8>() else {
            return;
        };
        let sent = u64::from_le_bytes(*stamp);
        if sent < self.from_ns.load(Relaxed) || sent >= self.until_ns.load(Relaxed) {
            return;
        }
        let micros = self.now_ns().saturating_sub(sent) / 1000;
        if let Ok(mut samples) = self.samples_us.lock() {
            samples.push(u32::try_from(micros).unwrap_or(u32::MAX));
        }
    }

    fn percentiles(&self) -> Percentiles {
        let mut samples = self
            .samples_us
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        samples.sort_unstable();
        let at = |p: f64| -> u32 {
            if samples.is_empty() {
                return 0;
            }
            let rank = (p / 100.0 * samples.len() as f64).ceil() as usize;
            samples[rank.clamp(1, samples.len()) - 1]
        };
        Percentiles {
            count: samples.len(),
            p50_us: at(50.0),
            p99_us: at(99.0),
            p999_us: at(99.9),
            max_us: samples.last().copied().unwrap_or(0),
        }
    }
}

struct Percentiles {
    count: usize,
    p50_us: u32,
    p99_us: u32,
    p999_us: u32,
    max_us: u32,
}

/// What the measured window saw.
struct Window {
    seconds: f64,
    published: u64,
    confirmed: u64,
    delivered: u64,
    broker_cpu_s: Option<f64>,
}

struct Report {
    window: Window,
    /// The scenario's headline count: confirmed publishes for confirm-persistent,
    /// deliveries otherwise.
    counted: u64,
    latency: Option<Percentiles>,
    rss_idle_kb: Option<u64>,
    rss_peak_kb: Option<u64>,
}

impl Report {
    fn new(window: Window, scenario: Scenario, latency: Option<Percentiles>) -> Self {
        let counted = match scenario {
            Scenario::ConfirmPersistent => window.confirmed,
            _ => window.delivered,
        };
        Self {
            window,
            counted,
            latency,
            rss_idle_kb: None,
            rss_peak_kb: None,
        }
    }

    fn line(&self, scenario: Scenario) -> String {
        let w = &self.window;
        let per_s = |n: u64| n as f64 / w.seconds;
        let mut line = format!(
            "scenario={} seconds={:.2} rate={:.0} pub_per_s={:.0} deliver_per_s={:.0}",
            scenario.name(),
            w.seconds,
            per_s(self.counted),
            per_s(w.published),
            per_s(w.delivered),
        );
        if scenario == Scenario::ConfirmPersistent {
            line += &format!(" confirmed_per_s={:.0}", per_s(w.confirmed));
        }
        if let Some(l) = &self.latency {
            line += &format!(
                " samples={} p50_us={} p99_us={} p999_us={} max_us={}",
                l.count, l.p50_us, l.p99_us, l.p999_us, l.max_us
            );
        }
        if let Some(cpu) = w.broker_cpu_s {
            line += &format!(" broker_cpu_s={cpu:.2}");
            if self.counted > 0 {
                line += &format!(" cpu_us_per_msg={:.2}", cpu * 1e6 / self.counted as f64);
            }
        }
        let mb = |kb: u64| kb as f64 / 1024.0;
        if let (Some(idle), Some(peak)) = (self.rss_idle_kb, self.rss_peak_kb) {
            line += &format!(" rss_idle_mb={:.1} rss_peak_mb={:.1}", mb(idle), mb(peak));
        }
        line
    }
}

/// Everything a running scenario owns; dropping it aborts its tasks.
#[derive(Default)]
struct Clients {
    connections: Vec<Connection>,
    tasks: Vec<AbortOnDrop>,
}

impl Clients {
    /// Closes the connections politely, each bounded by a short timeout.
    async fn close(self) {
        drop(self.tasks);
        for conn in self.connections {
            let _ =
                tokio::time::timeout(Duration::from_secs(2), conn.close(200, "bye".into())).await;
        }
    }
}

async fn connect(url: &str, name: &str) -> anyhow::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let tls = TLS.get().cloned().unwrap_or_default();
    let runtime = lapin::runtime::default_runtime()?;
    let connect = Connection::connect_with_config(url, props, tls, runtime);
    tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| anyhow!("no AMQP handshake within {CONNECT_TIMEOUT:?}"))
        .and_then(|r| r.map_err(anyhow::Error::from))
        .with_context(|| format!("connect to {url}"))
}

/// How a manually acking consumer acks: each delivery, with up to `window` acks in
/// flight.
#[derive(Clone, Copy)]
struct ManualAck {
    prefetch: u16,
    window: usize,
}

/// Opens a connection and a consumer on `queue`. With `manual`, the consumer acks each
/// delivery; without, the broker considers messages acked when sent.
async fn start_consumer(
    url: &str,
    queue: &str,
    manual: Option<ManualAck>,
    counters: &Arc<Counters>,
    latency: Option<Arc<LatencyRecorder>>,
    clients: &mut Clients,
) -> anyhow::Result<()> {
    let conn = connect(url, "bench-consumer").await?;
    let ch = conn
        .create_channel()
        .await
        .context("open consumer channel")?;
    if let Some(ManualAck { prefetch, .. }) = manual {
        ch.basic_qos(prefetch, BasicQosOptions::default())
            .await
            .context("basic.qos")?;
    }
    let options = BasicConsumeOptions {
        no_ack: manual.is_none(),
        ..Default::default()
    };
    let mut consumer = ch
        .basic_consume(queue.into(), "".into(), options, FieldTable::default())
        .await
        .with_context(|| format!("basic.consume on {queue}"))?;
    let counters = counters.clone();
    let queue = queue.to_owned();
    let window = manual.map_or(1, |m| m.window.max(1));
    let task = tokio::spawn(async move {
        let _channel = ch;
        let mut acks = FuturesUnordered::new();
        loop {
            // A full window of acks in flight: the next delivery waits for one of them.
            let full = acks.len() >= window;
            let delivery = tokio::select! {
                Some(done) = acks.next(), if !acks.is_empty() => match done {
                    Ok(_) => continue,
                    Err(err) => return counters.fail(format!("basic.ack on {queue}: {err}")),
                },
                next = consumer.next(), if !full => match next {
                    None => break,
                    Some(Ok(delivery)) => delivery,
                    Some(Err(err)) => return counters.fail(format!("consumer on {queue}: {err}")),
                },
            };
            if let Some(latency) = &latency {
                latency.record(&delivery.data);
            }
            if manual.is_some() {
                acks.push(async move { delivery.ack(BasicAckOptions::default()).await });
            }
            counters.delivered.fetch_add(1, Relaxed);
        }
        if !counters.stop.load(Relaxed) {
            counters.fail(format!("consumer on {queue} was cancelled"));
        }
    });
    clients.connections.push(conn);
    clients.tasks.push(AbortOnDrop(task));
    Ok(())
}

/// Where and how the throughput publisher sends.
#[derive(Clone)]
struct Publish {
    exchange: String,
    routing_key: String,
    properties: BasicProperties,
    body: Vec<u8>,
    /// Deliveries each publish produces (queues it reaches).
    fanout: u64,
    /// Unconfirmed publishes allowed in flight; `None` without publisher confirms.
    confirm_window: Option<usize>,
}

/// Publishes as fast as the broker takes it until told to stop, pausing while
/// `--max-backlog` deliveries are outstanding or the confirm window is full.
async fn publish_flat_out(
    ch: Channel,
    publish: Publish,
    counters: Arc<Counters>,
    max_backlog: u64,
) -> anyhow::Result<()> {
    let mut unconfirmed = FuturesUnordered::new();
    let count = |confirmation: lapin::Result<lapin::Confirmation>| match confirmation
        .context("publisher confirm")?
    {
        c if c.is_ack() => {
            counters.confirmed.fetch_add(1, Relaxed);
            Ok(())
        }
        _ => Err(anyhow!("the broker nacked a publish")),
    };
    while !counters.stop.load(Relaxed) {
        let expected = counters.published.load(Relaxed) * publish.fanout;
        if expected.saturating_sub(counters.delivered.load(Relaxed)) >= max_backlog {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let confirm = ch
            .basic_publish(
                publish.exchange.as_str().into(),
                publish.routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &publish.body,
                publish.properties.clone(),
            )
            .await
            .context("basic.publish")?;
        counters.published.fetch_add(1, Relaxed);
        let Some(window) = publish.confirm_window else {
            continue;
        };
        unconfirmed.push(confirm);
        while unconfirmed.len() >= window {
            match unconfirmed.next().await {
                Some(confirmation) => count(confirmation)?,
                None => break,
            }
        }
        while let Some(Some(confirmation)) = unconfirmed.next().now_or_never() {
            count(confirmation)?;
        }
    }
    Ok(())
}

/// Starts `--publishers` flat-out publishers on `conn`: one on `ch` (already in confirm
/// mode when the scenario wants confirms), the others on channels of their own. The
/// confirm window is shared out among them.
async fn start_publishers(
    args: &Args,
    conn: &Connection,
    ch: Channel,
    publish: &Publish,
    counters: &Arc<Counters>,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let n = usize::from(args.publishers);
    let mut channels = vec![ch];
    while channels.len() < n {
        let ch = conn
            .create_channel()
            .await
            .context("open publisher channel")?;
        if publish.confirm_window.is_some() {
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .context("confirm.select")?;
        }
        channels.push(ch);
    }
    let mut share = publish.clone();
    share.confirm_window = publish.confirm_window.map(|w| w.div_ceil(n).max(1));
    Ok(channels
        .into_iter()
        .map(|ch| {
            spawn_reporting(
                counters,
                "publisher",
                publish_flat_out(ch, share.clone(), counters.clone(), args.max_backlog),
            )
        })
        .collect())
}

/// Runs `task` in the background; its error, if any, fails the scenario.
fn spawn_reporting(
    counters: &Arc<Counters>,
    what: &'static str,
    task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
) -> JoinHandle<()> {
    let counters = counters.clone();
    tokio::spawn(async move {
        if let Err(err) = task.await {
            counters.fail(format!("{what}: {err:#}"));
        }
    })
}

/// Warm-up, then the measured window with a progress line per second on stderr. Fails
/// as soon as a publisher or consumer has failed. Stops the publisher at the end.
async fn measure(
    args: &Args,
    label: &str,
    counters: &Counters,
    probe: Option<Probe>,
    latency: Option<&LatencyRecorder>,
) -> anyhow::Result<Window> {
    let check = || match counters.failure() {
        Some(failure) => Err(anyhow!(failure)),
        None => Ok(()),
    };
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    check()?;
    let cpu0 = probe.map(|p| p.cpu_seconds()).transpose()?;
    let start = counters.snapshot();
    let t0 = Instant::now();
    if let Some(latency) = latency {
        latency.from_ns.store(latency.now_ns(), Relaxed);
    }
    let length = Duration::from_secs_f64(args.seconds);
    let mut last = (t0, start);
    while t0.elapsed() < length {
        let tick = Duration::from_secs(1).min(length.saturating_sub(t0.elapsed()));
        tokio::time::sleep(tick).await;
        let now = (Instant::now(), counters.snapshot());
        let secs = now.0.duration_since(last.0).as_secs_f64().max(1e-9);
        let rate = |i: usize| (now.1[i] - last.1[i]) as f64 / secs;
        eprintln!(
            "bench amqp {label}: {:4.1}/{:.0} s  published {:>7.0}/s  confirmed {:>7.0}/s  \
             delivered {:>7.0}/s",
            t0.elapsed().as_secs_f64(),
            args.seconds,
            rate(0),
            rate(1),
            rate(2),
        );
        last = now;
        check()?;
    }
    let end = counters.snapshot();
    let seconds = t0.elapsed().as_secs_f64();
    let cpu1 = probe.map(|p| p.cpu_seconds()).transpose()?;
    if let Some(latency) = latency {
        latency.until_ns.store(latency.now_ns(), Relaxed);
    }
    counters.stop.store(true, Relaxed);
    Ok(Window {
        seconds,
        published: end[0] - start[0],
        confirmed: end[1] - start[1],
        delivered: end[2] - start[2],
        broker_cpu_s: cpu0.zip(cpu1).map(|(a, b)| b - a),
    })
}

/// Waits (bounded by [`DRAIN`]) for the publisher tasks to stop and report.
async fn finish_publishers(
    publishers: Vec<JoinHandle<()>>,
    counters: &Counters,
) -> anyhow::Result<()> {
    let aborters: Vec<_> = publishers.iter().map(JoinHandle::abort_handle).collect();
    if tokio::time::timeout(DRAIN, futures::future::join_all(publishers))
        .await
        .is_err()
    {
        aborters.iter().for_each(tokio::task::AbortHandle::abort);
        bail!("the publishers did not stop within {DRAIN:?}");
    }
    match counters.failure() {
        Some(failure) => Err(anyhow!(failure)),
        None => Ok(()),
    }
}

/// transient, ack, confirm-persistent and stream: one publisher, one queue, one consumer.
/// A stream keeps every message on disk whatever its delivery mode, so its publishes are
/// transient.
async fn queue_flow(
    args: &Args,
    scenario: Scenario,
    names: &Names,
    probe: Option<Probe>,
    prefetch: Option<u16>,
    persistent: bool,
    confirms: bool,
) -> anyhow::Result<Report> {
    let queue = names.queues.first().context("no queue name")?;
    let mut clients = Clients::default();
    let conn = connect(&args.url, "bench-publisher").await?;
    let ch = conn
        .create_channel()
        .await
        .context("open publisher channel")?;
    let stream = scenario == Scenario::Stream;
    let durable = QueueDeclareOptions {
        durable: persistent || stream,
        ..Default::default()
    };
    let mut arguments = FieldTable::default();
    if stream {
        arguments.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString("stream".into()),
        );
    }
    ch.queue_declare(queue.as_str().into(), durable, arguments)
        .await
        .with_context(|| format!("queue.declare {queue}"))?;
    if confirms {
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .context("confirm.select")?;
    }
    let counters = Arc::new(Counters::default());
    let manual = prefetch.map(|prefetch| ManualAck {
        prefetch,
        window: usize::from(args.ack_window),
    });
    start_consumer(&args.url, queue, manual, &counters, None, &mut clients).await?;
    let publish = Publish {
        exchange: String::new(),
        routing_key: queue.clone(),
        properties: BasicProperties::default().with_delivery_mode(if persistent { 2 } else { 1 }),
        body: vec![b'x'; args.size],
        fanout: 1,
        confirm_window: confirms.then_some(args.window),
    };
    let publishers = start_publishers(args, &conn, ch, &publish, &counters).await?;
    clients.connections.push(conn);
    let window = measure(args, scenario.name(), &counters, probe, None).await?;
    finish_publishers(publishers, &counters).await?;
    clients.close().await;
    Ok(Report::new(window, scenario, None))
}

/// fanout3: one publisher into a fanout exchange bound to three queues, a consumer each.
async fn fanout3(args: &Args, names: &Names, probe: Option<Probe>) -> anyhow::Result<Report> {
    let exchange = names.exchange.as_deref().context("no exchange name")?;
    let mut clients = Clients::default();
    let conn = connect(&args.url, "bench-publisher").await?;
    let ch = conn
        .create_channel()
        .await
        .context("open publisher channel")?;
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .with_context(|| format!("exchange.declare {exchange}"))?;
    let counters = Arc::new(Counters::default());
    for queue in &names.queues {
        ch.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("queue.declare {queue}"))?;
        ch.queue_bind(
            queue.as_str().into(),
            exchange.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("queue.bind {queue} to {exchange}"))?;
        start_consumer(&args.url, queue, None, &counters, None, &mut clients).await?;
    }
    let publish = Publish {
        exchange: exchange.to_owned(),
        routing_key: String::new(),
        properties: BasicProperties::default().with_delivery_mode(1),
        body: vec![b'x'; args.size],
        fanout: names.queues.len() as u64,
        confirm_window: None,
    };
    let publishers = start_publishers(args, &conn, ch, &publish, &counters).await?;
    clients.connections.push(conn);
    let window = measure(args, "fanout3", &counters, probe, None).await?;
    finish_publishers(publishers, &counters).await?;
    clients.close().await;
    Ok(Report::new(window, Scenario::Fanout3, None))
}

/// latency: publishes at a steady `--rate` to an auto-ack consumer and records how long
/// each message took from publish to delivery.
async fn latency(args: &Args, names: &Names, probe: Option<Probe>) -> anyhow::Result<Report> {
    let queue = names.queues.first().context("no queue name")?;
    let mut clients = Clients::default();
    let conn = connect(&args.url, "bench-publisher").await?;
    let ch = conn
        .create_channel()
        .await
        .context("open publisher channel")?;
    clients.connections.push(conn);
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .with_context(|| format!("queue.declare {queue}"))?;
    let counters = Arc::new(Counters::default());
    let expected = (args.rate as f64 * (args.seconds + args.warmup)) as usize;
    let recorder = Arc::new(LatencyRecorder::new(expected.min(10_000_000)));
    start_consumer(
        &args.url,
        queue,
        None,
        &counters,
        Some(recorder.clone()),
        &mut clients,
    )
    .await?;

    let period = Duration::from_nanos(1_000_000_000 / args.rate);
    let body_len = args.size.max(8);
    let publisher = {
        let (counters, recorder, queue) = (counters.clone(), recorder.clone(), queue.clone());
        spawn_reporting(&counters.clone(), "publisher", async move {
            let mut body = vec![b'x'; body_len];
            let mut every = tokio::time::interval(period);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            while !counters.stop.load(Relaxed) {
                every.tick().await;
                body[..8].copy_from_slice(&recorder.now_ns().to_le_bytes());
                // Without confirm.select there is no confirm to wait for.
                let _unconfirmed = ch
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        BasicProperties::default().with_delivery_mode(1),
                    )
                    .await
                    .context("basic.publish")?;
                counters.published.fetch_add(1, Relaxed);
            }
            anyhow::Ok(())
        })
    };
    let window = measure(args, "latency", &counters, probe, Some(&recorder)).await?;
    finish_publishers(vec![publisher], &counters).await?;
    // Let the messages still in flight arrive, so slow ones count in the tail.
    let deadline = Instant::now() + DRAIN;
    while counters.delivered.load(Relaxed) < counters.published.load(Relaxed)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let percentiles = recorder.percentiles();
    clients.close().await;
    if percentiles.count == 0 {
        bail!("no message sent in the window was delivered");
    }
    Ok(Report::new(window, Scenario::Latency, Some(percentiles)))
}

/// Deletes the scenario's queues and exchange on a fresh connection, a channel per
/// deletion (a broker may close the channel on a missing one). Problems are reported on
/// stderr and do not fail the scenario.
async fn cleanup(url: &str, names: &Names) {
    let work = async {
        let conn = connect(url, "bench-cleanup").await?;
        for queue in &names.queues {
            let ch = conn.create_channel().await.context("open channel")?;
            if let Err(err) = ch
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
            {
                eprintln!("bench amqp: cannot delete queue {queue}: {err}");
            }
        }
        if let Some(exchange) = &names.exchange {
            let ch = conn.create_channel().await.context("open channel")?;
            if let Err(err) = ch
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await
            {
                eprintln!("bench amqp: cannot delete exchange {exchange}: {err}");
            }
        }
        let _ = conn.close(200, "bye".into()).await;
        anyhow::Ok(())
    };
    match tokio::time::timeout(CLEANUP_TIMEOUT, work).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => eprintln!("bench amqp: clean-up failed: {err:#}"),
        Err(_) => eprintln!("bench amqp: clean-up timed out after {CLEANUP_TIMEOUT:?}"),
    }
}
