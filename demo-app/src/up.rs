//! `demo-app up`: the whole topology on one machine — session store, app nodes and load
//! balancer — as separate child processes of this one, so killing a node really loses what
//! that node held. Each child is this same executable run with another subcommand, which
//! keeps `cargo run -p demo-app -- up` a single build.
//!
//! Children are told to stop with SIGTERM when `up` stops (the LB, then the nodes, the store
//! last, each stage once the one before has exited), and the kernel sends them
//! SIGTERM if `up` itself dies without a chance to (parent-death signal), so none is left
//! behind.

use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener, TcpStream};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use session_layer::store::redact_url;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::sessions::{SessionMode, random_secret};

/// How long each child gets to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long each child gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How the load balancer pins clients to nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Affinity {
    /// Every request is balanced afresh.
    None,
    /// A signed cookie pins each client to the node that first served it.
    Cookie,
}

impl Affinity {
    /// The flag value, as the `lb` binary takes it.
    fn as_str(self) -> &'static str {
        match self {
            Affinity::None => "none",
            Affinity::Cookie => "cookie",
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Where the nodes keep sessions.
    #[arg(long, env = "SESSION_MODE", value_enum, default_value_t = SessionMode::Shared)]
    pub session_mode: SessionMode,

    /// Whether the load balancer pins clients to a node.
    #[arg(long, env = "LB_AFFINITY", value_enum, default_value_t = Affinity::None)]
    pub affinity: Affinity,

    /// Load balancer port: the one URL to open in a browser.
    #[arg(long, env = "UP_LB_PORT", default_value_t = 8080)]
    pub lb_port: u16,

    /// App node ports, one node per port.
    #[arg(
        long,
        env = "UP_NODE_PORTS",
        value_delimiter = ',',
        default_value = "3001,3002,3003"
    )]
    pub node_ports: Vec<u16>,

    /// Port of the embedded session store.
    #[arg(long, env = "UP_STORE_PORT", default_value_t = 7379)]
    pub store_port: u16,

    /// AMQP 0-9-1 port of the broker embedded in the session store (unused with
    /// --store-url, which starts no store).
    #[arg(long, env = "UP_AMQP_PORT", default_value_t = 5673)]
    pub amqp_port: u16,

    /// Use this store instead of starting one, e.g. a real Redis: redis://127.0.0.1:6379.
    #[arg(long, env = "STORE_URL")]
    pub store_url: Option<String>,

    /// Broker for session-change events, e.g. a RabbitMQ: amqp://guest:guest@127.0.0.1:5672/%2f
    /// [default: the started store's embedded broker; with --store-url and no
    /// --events-url, nodes run without a near-cache].
    #[arg(long, env = "EVENTS_URL")]
    pub events_url: Option<String>,
}

/// One started child process.
struct Member {
    name: String,
    port: u16,
    child: Child,
}

/// Starts the topology and runs until `shutdown` completes, then stops every child.
pub async fn up(args: UpArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    if args.node_ports.is_empty() {
        bail!("--node-ports needs at least one port");
    }
    check_ports_free(&args)?;
    let exe = std::env::current_exe().context("locating this executable to start the children")?;
    let mut env = shared_secrets();
    if let Some(threads) = worker_threads(&args) {
        tracing::info!(
            threads = threads.1,
            "each process runs this many runtime threads ({WORKER_THREADS} overrides)"
        );
        env.push(threads);
    }

    let mut members = Vec::new();
    let started = start_all(&exe, &args, &env, &mut members).await;
    if let Err(err) = started {
        stop_all(members).await;
        return Err(err);
    }
    print_summary(&args, &members);

    let (release, mut stages) = watch_all(members);
    tokio::select! {
        _ = shutdown => {}
        _ = all_exited(&mut stages) => {
            tracing::warn!("every child has exited; stopping");
        }
    }
    stop_in_order(&release, &mut stages).await;
    println!("stopped every process");
    Ok(())
}

/// Children stop in three stages, each once the one before has exited: the LB first (no
/// new requests), then the nodes (each closes its event link while the broker is still
/// there to say goodbye to), the store last.
const STAGES: usize = 3;

fn stop_stage(name: &str) -> usize {
    match name {
        "lb" => 0,
        "store" => 2,
        _ => 1,
    }
}

/// Watches every member; each stops once the returned sender releases its stage (a value
/// above the stage's number).
fn watch_all(members: Vec<Member>) -> (watch::Sender<usize>, [JoinSet<()>; STAGES]) {
    let (release, released) = watch::channel(0);
    let mut stages: [JoinSet<()>; STAGES] = Default::default();
    for m in members {
        let stage = stop_stage(&m.name);
        stages[stage].spawn(watch_member(m, stage, released.clone()));
    }
    (release, stages)
}

async fn stop_in_order(release: &watch::Sender<usize>, stages: &mut [JoinSet<()>; STAGES]) {
    for (n, stage) in stages.iter_mut().enumerate() {
        let _ = release.send(n + 1);
        while stage.join_next().await.is_some() {}
    }
}

/// The environment variable Tokio's runtime takes its number of worker threads from.
const WORKER_THREADS: &str = "TOKIO_WORKER_THREADS";

/// Tokio gives each process one runtime thread per core, but the topology's processes
/// share one machine: each gets its share of the cores instead, so that under load they
/// do not spend their time waking and parking each other's surplus threads (on 2 cores,
/// one thread each measured 12–17% less CPU per request through the LB). None when the
/// caller set TOKIO_WORKER_THREADS: the children inherit it.
fn worker_threads(args: &UpArgs) -> Option<(&'static str, String)> {
    if std::env::var_os(WORKER_THREADS).is_some() {
        return None;
    }
    let processes = args.node_ports.len() + 1 + usize::from(args.store_url.is_none());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Some((WORKER_THREADS, threads_each(cores, processes).to_string()))
}

fn threads_each(cores: usize, processes: usize) -> usize {
    (cores / processes.max(1)).max(1)
}

/// Secrets every node (and LB replica) must agree on. Taken from the environment when set
/// there, else generated for this run — children inherit them through their environment,
/// never their command line, so `ps` does not show them.
fn shared_secrets() -> Vec<(&'static str, String)> {
    [
        ("JWT_SECRET", "session tokens"),
        ("SESSION_COOKIE_KEYS", "session cookies"),
        ("LB_COOKIE_KEY", "affinity cookies"),
    ]
    .into_iter()
    .map(|(var, what)| match std::env::var(var) {
        Ok(v) if !v.is_empty() => (var, v),
        _ => {
            tracing::warn!(
                "{var} not set: generated a random one for this run; {what} issued now \
                 won't be valid after a restart. Set {var} to keep them."
            );
            (var, random_secret())
        }
    })
    .collect()
}

fn check_ports_free(args: &UpArgs) -> anyhow::Result<()> {
    let mut wanted = vec![(args.lb_port, "load balancer", "--lb-port")];
    wanted.extend(
        args.node_ports
            .iter()
            .map(|&p| (p, "app node", "--node-ports")),
    );
    if args.store_url.is_none() {
        wanted.push((args.store_port, "session store", "--store-port"));
        wanted.push((args.amqp_port, "AMQP broker", "--amqp-port"));
    }
    for (i, (port, what, flag)) in wanted.iter().enumerate() {
        if wanted[..i].iter().any(|(p, ..)| p == port) {
            bail!("port {port} is given twice; every process needs its own port");
        }
        if let Err(err) = StdListener::bind((Ipv4Addr::LOCALHOST, *port)) {
            bail!(
                "port {port} for the {what} is not free ({err}); stop what holds it, \
                 or choose another with {flag}"
            );
        }
    }
    Ok(())
}

async fn start_all(
    exe: &PathBuf,
    args: &UpArgs,
    env: &[(&'static str, String)],
    members: &mut Vec<Member>,
) -> anyhow::Result<()> {
    let store_url = match &args.store_url {
        Some(url) => url.clone(),
        None => {
            let addr = format!("127.0.0.1:{}", args.store_port);
            let amqp = format!("127.0.0.1:{}", args.amqp_port);
            start(
                exe,
                "store",
                args.store_port,
                &["store", "--bind", &addr, "--amqp-bind", &amqp],
                env,
                members,
            )
            .await?;
            format!("redis://{addr}")
        }
    };
    let events_url = match (&args.events_url, &args.store_url) {
        (Some(url), _) => Some(url.clone()),
        (None, None) => Some(format!(
            "amqp://guest:guest@127.0.0.1:{}/%2f",
            args.amqp_port
        )),
        (None, Some(_)) => None,
    };
    // The URLs may hold passwords: the nodes get them in their environment, which other
    // users cannot read, rather than on a command line that `ps` shows to everyone.
    let mut node_env = env.to_vec();
    node_env.push(("STORE_URL", store_url));
    if let Some(url) = &events_url {
        node_env.push(("EVENTS_URL", url.clone()));
    }
    let mut backends = Vec::new();
    for (i, port) in args.node_ports.iter().enumerate() {
        let name = format!("app{}", i + 1);
        let listen = format!("127.0.0.1:{port}");
        let mode = args.session_mode.to_string();
        let mut argv = vec![
            "serve",
            "--listen",
            &listen,
            "--node-id",
            &name,
            "--session-mode",
            &mode,
        ];
        if events_url.is_none() {
            argv.push("--no-near-cache");
        }
        start(exe, &name, *port, &argv, &node_env, members).await?;
        backends.push(format!("{name}=http://{listen}"));
    }
    let listen = format!("127.0.0.1:{}", args.lb_port);
    let mut argv = vec![
        "lb",
        "--listen",
        &listen,
        "--affinity",
        args.affinity.as_str(),
    ];
    for b in &backends {
        argv.extend(["--backend", b.as_str()]);
    }
    start(exe, "lb", args.lb_port, &argv, env, members).await
}

/// Spawns one child and waits until it accepts connections on `port`.
async fn start(
    exe: &PathBuf,
    name: &str,
    port: u16,
    argv: &[&str],
    env: &[(&'static str, String)],
    members: &mut Vec<Member>,
) -> anyhow::Result<()> {
    let mut cmd = Command::new(exe);
    cmd.args(argv)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    die_with_parent(&mut cmd);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {name} ({})", exe.display()))?;
    members.push(Member {
        name: name.to_string(),
        port,
        child,
    });
    let member = members.last_mut().context("the member just pushed")?;
    wait_listening(member).await
}

/// Asks the kernel to SIGTERM the child when this process dies, however it dies.
fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id();
    #[allow(unsafe_code)]
    // SAFETY: the closure runs between fork and exec and only makes two async-signal-safe
    // system calls (prctl, getppid) without allocating or taking locks.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
            // The parent may have died before the call above: then nobody will signal us.
            if nix::unistd::getppid().as_raw() != i32::try_from(parent).unwrap_or(-1) {
                return Err(std::io::Error::other("parent exited during start-up"));
            }
            Ok(())
        });
    }
}

async fn wait_listening(member: &mut Member) -> anyhow::Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, member.port));
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = member.child.try_wait()? {
            bail!(
                "{} exited during start-up ({status}); its log above says why",
                member.name
            );
        }
        if tokio::task::spawn_blocking(move || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200))
        })
        .await?
        .is_ok()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not listen on {addr} within {START_TIMEOUT:?}",
                member.name
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn print_summary(args: &UpArgs, members: &[Member]) {
    let url = |m: &Member| match m.name.as_str() {
        "store" => format!("redis://127.0.0.1:{}", m.port),
        _ => format!("http://127.0.0.1:{}", m.port),
    };
    println!();
    println!("Open http://127.0.0.1:{}/ in a browser.", args.lb_port);
    println!(
        "session mode: {}, balancing: round-robin, affinity: {}",
        args.session_mode,
        args.affinity.as_str()
    );
    if let Some(store) = &args.store_url {
        println!("  store  {} (external)", redact_url(store));
    }
    match (&args.events_url, &args.store_url, args.session_mode) {
        (_, _, mode) if mode != SessionMode::Shared => {}
        (Some(_), _, _) => {
            println!("  near-caches on, kept coherent through the --events-url broker")
        }
        (None, Some(_), _) => println!("  near-caches off: pass --events-url to turn them on"),
        (None, None, _) => println!("  near-caches on, kept coherent through the embedded broker"),
    }
    for m in members {
        let pid = m.child.id().map(|p| p.to_string()).unwrap_or_default();
        println!("  {:<6} {:<24} pid {pid}", m.name, url(m));
        if m.name == "store" {
            let amqp = format!("amqp://127.0.0.1:{}", args.amqp_port);
            println!("  {:<6} {amqp:<24} (same process)", "amqp");
            println!(
                "  {:<6} {:<24} (broker management, guest/guest)",
                "", "http://127.0.0.1:15673/"
            );
        }
    }
    println!("Kill a node (kill -9 <pid>) to see what each mode loses. Ctrl-C stops everything.");
    println!();
}

/// Watches one child: reports if it exits on its own, stops it when told to.
async fn watch_member(mut m: Member, stage: usize, mut released: watch::Receiver<usize>) {
    tokio::select! {
        status = m.child.wait() => {
            report_exit(&m.name, status);
            return;
        }
        _ = released.wait_for(|&r| r > stage) => {}
    }
    if let Some(pid) = m.child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    match tokio::time::timeout(STOP_TIMEOUT, m.child.wait()).await {
        Ok(_) => {}
        Err(_) => {
            tracing::warn!(
                name = m.name,
                "did not stop within {STOP_TIMEOUT:?}; killing it"
            );
            let _ = m.child.kill().await;
        }
    }
}

fn report_exit(name: &str, status: std::io::Result<ExitStatus>) {
    match status {
        Ok(s) => tracing::warn!(name, status = %s, "exited; the others keep running"),
        Err(err) => tracing::warn!(name, %err, "lost track of it"),
    }
}

async fn all_exited(stages: &mut [JoinSet<()>; STAGES]) {
    for stage in stages {
        while stage.join_next().await.is_some() {}
    }
}

/// Stops children started before a start-up failure.
async fn stop_all(members: Vec<Member>) {
    let (release, mut stages) = watch_all(members);
    stop_in_order(&release, &mut stages).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_process_gets_its_share_of_the_cores_and_at_least_one() {
        assert_eq!(threads_each(2, 5), 1);
        assert_eq!(threads_each(16, 5), 3);
        assert_eq!(threads_each(1, 0), 1);
    }
}
