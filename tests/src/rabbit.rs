//! The AMQP brokers the conformance tests compare: a private, real RabbitMQ node (the
//! reference, Debian package `rabbitmq-server`) and the broker embedded in `session-store`.
//!
//! The RabbitMQ node runs on free loopback ports (AMQP, Erlang distribution and its own
//! epmd), keeps all its state in a temporary directory, and can never outlive the test
//! process: epmd and the Erlang VM are started with `PR_SET_PDEATHSIG` from a thread that
//! lives as long as the node, so the kernel kills both when the test binary exits, panics
//! or is killed, even when the handle sits in a `static` that is never dropped.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::{Proc, bin, engines_required, free_port, wait_port};

/// The Debian package's server script.
const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
/// Bound on the node's start-up (a cold start on 2 cores takes 5 to 20 s).
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// A private RabbitMQ node. Dropping it kills the node and its epmd and removes its state.
pub struct RabbitMq {
    port: u16,
    /// The management plugin's HTTP port, when it was enabled (with the Prometheus
    /// plugin, on `prometheus_port`).
    management_port: Option<u16>,
    prometheus_port: Option<u16>,
    /// The amqps listener's port, enabled with the management plugin and serving the
    /// certificates of [`crate::tls::pki`].
    tls_port: Option<u16>,
    /// The management API's HTTPS port, beside its HTTP one, with the same certificates.
    https_port: Option<u16>,
    dist_port: u16,
    epmd_port: u16,
    dir: PathBuf,
    stop: Arc<AtomicBool>,
    keeper: Option<JoinHandle<()>>,
}

impl RabbitMq {
    /// The AMQP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`
    pub fn url(&self) -> String {
        amqp_url(self.port)
    }

    /// `amqps://guest:guest@127.0.0.1:<port>/%2f`, when the node was started with
    /// [`start_rabbitmq_with_management`].
    pub fn amqps_url(&self) -> Option<String> {
        self.tls_port
            .map(|port| format!("amqps://guest:guest@127.0.0.1:{port}/%2f"))
    }

    /// `https://127.0.0.1:<port>` of the management API over TLS, when the node was
    /// started with [`start_rabbitmq_with_management`].
    pub fn management_https_url(&self) -> Option<String> {
        self.https_port
            .map(|port| format!("https://127.0.0.1:{port}"))
    }

    /// `http://127.0.0.1:<port>` of the management API, when the node was started with
    /// [`start_rabbitmq_with_management`].
    pub fn management_url(&self) -> Option<String> {
        self.management_port
            .map(|port| format!("http://127.0.0.1:{port}"))
    }

    /// `http://127.0.0.1:<port>/metrics` of the Prometheus plugin, enabled with the
    /// management plugin.
    pub fn metrics_url(&self) -> Option<String> {
        self.prometheus_port
            .map(|port| format!("http://127.0.0.1:{port}/metrics"))
    }

    /// The directory holding the node's configuration, logs and database.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// SIGKILLs the node (and its epmd) and waits until both are gone. Its state stays on
    /// disk for [`RabbitMq::restart`].
    pub fn kill(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.join();
        }
    }

    /// Starts the node again after [`RabbitMq::kill`], on the same ports with the same
    /// state, and waits until it accepts AMQP connections.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Starts epmd and the node on the keeper thread and waits for an AMQP handshake;
    /// panics with the node's logs if it does not come up.
    fn launch(&mut self) {
        let epmd = crate::which("epmd").expect("epmd on PATH");
        let stop = Arc::new(AtomicBool::new(false));
        let (started_tx, started_rx) = mpsc::channel::<Result<(), String>>();
        let keeper = {
            let dir = self.dir.clone();
            let stop = stop.clone();
            let (port, dist_port, epmd_port) = (self.port, self.dist_port, self.epmd_port);
            std::thread::Builder::new()
                .name(format!("rabbitmq-{port}"))
                .spawn(move || {
                    keep_node(&epmd, &dir, port, dist_port, epmd_port, &stop, &started_tx);
                })
                .expect("spawn the RabbitMQ keeper thread")
        };
        self.stop = stop;
        self.keeper = Some(keeper);
        match started_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let log = tail_logs(self.dir());
                panic!("RabbitMQ did not start: {e}\n{log}");
            }
            Err(_) => panic!("RabbitMQ keeper thread ended during start-up"),
        }
        // The handshake runs on a runtime of its own in a plain thread: this may be called
        // from inside a test's tokio runtime, where blocking on another one is refused.
        let url = self.url();
        let ready = std::thread::spawn(move || wait_amqp_ready(&url, START_TIMEOUT))
            .join()
            .expect("readiness probe thread");
        if let Err(e) = ready {
            let log = tail_logs(self.dir());
            panic!(
                "RabbitMQ on port {} never accepted an AMQP connection: {e}\n{log}",
                self.port
            );
        }
        for port in [
            self.management_port,
            self.prometheus_port,
            self.tls_port,
            self.https_port,
        ]
        .into_iter()
        .flatten()
        {
            wait_port(port, START_TIMEOUT);
        }
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The URL of a broker on 127.0.0.1 with the default guest account and vhost.
pub fn amqp_url(port: u16) -> String {
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
}

/// Starts a private `rabbitmq-server` and waits until it accepts AMQP connections (a real
/// AMQP handshake, not only the TCP port). None when RabbitMQ is not installed and this run
/// does not require the reference engines (see [`engines_required`]); panics when it is
/// installed but does not come up.
pub fn start_rabbitmq() -> Option<RabbitMq> {
    start(false, None)
}

/// [`start_rabbitmq`] with the management and Prometheus plugins listening on free
/// loopback ports too, for scenarios that compare the HTTP API and metrics.
pub fn start_rabbitmq_with_management() -> Option<RabbitMq> {
    start(true, None)
}

/// [`start_rabbitmq`] with a consumer timeout of `timeout_ms` (RabbitMQ's
/// `consumer_timeout`), which its channels check every second (`channel_tick_interval`).
pub fn start_rabbitmq_with_consumer_timeout(timeout_ms: u64) -> Option<RabbitMq> {
    let advanced = format!(
        "[{{rabbit, [{{consumer_timeout, {timeout_ms}}}, {{channel_tick_interval, 1000}}]}}].\n"
    );
    start(false, Some(advanced))
}

/// A node with the management plugins (and TLS listeners) or without, and the Erlang
/// terms of `advanced.config`, if any.
fn start(management: bool, advanced: Option<String>) -> Option<RabbitMq> {
    let epmd = crate::which("epmd");
    if !Path::new(RABBITMQ_SERVER).is_file() || epmd.is_none() {
        assert!(
            !engines_required(),
            "rabbitmq-server is required in CI (apt-get install rabbitmq-server) but \
             {RABBITMQ_SERVER} or epmd is missing"
        );
        eprintln!("rabbitmq-server not installed: RabbitMQ half of this test skipped");
        return None;
    }
    remove_stale_dirs();

    let port = free_port();
    let dir = std::env::temp_dir().join(format!("e2e-rabbit-{}-{port}", std::process::id()));
    let management_port = management.then(free_port);
    let prometheus_port = management.then(free_port);
    let plugin_ports = management_port.zip(prometheus_port);
    let tls_port = management.then(free_port);
    let https_port = management.then(free_port);
    write_config(&dir, port, plugin_ports, tls_port.zip(https_port))
        .and_then(|()| match &advanced {
            Some(terms) => std::fs::write(dir.join("advanced.config"), terms),
            None => Ok(()),
        })
        .expect("write the RabbitMQ node's configuration");
    let mut rabbit = RabbitMq {
        port,
        management_port,
        prometheus_port,
        tls_port,
        https_port,
        dist_port: free_port(),
        epmd_port: free_port(),
        dir,
        stop: Arc::new(AtomicBool::new(false)),
        keeper: None,
    };
    rabbit.launch();
    Some(rabbit)
}

/// Runs on the keeper thread for the node's whole life: starts epmd and the node with
/// `PR_SET_PDEATHSIG` (which fires when *this thread* ends, hence the dedicated thread),
/// reports start-up, then kills both when asked to stop or when the node exits.
fn keep_node(
    epmd: &Path,
    dir: &Path,
    port: u16,
    dist_port: u16,
    epmd_port: u16,
    stop: &AtomicBool,
    started: &mpsc::Sender<Result<(), String>>,
) {
    let log = |name: &str| {
        std::fs::File::create(dir.join(name))
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null())
    };
    // Our own epmd, in the foreground, so it is a child of ours and dies with us. The node
    // finds it on ERL_EPMD_PORT and does not start a daemon of its own.
    let mut epmd_cmd = Command::new(epmd);
    epmd_cmd
        .args(["-port", &epmd_port.to_string(), "-address", "127.0.0.1"])
        .env("ERL_EPMD_PORT", epmd_port.to_string())
        .stdin(Stdio::null())
        .stdout(log("epmd.log"))
        .stderr(log("epmd.err"));
    die_with_this_thread(&mut epmd_cmd);
    let mut epmd_child = match epmd_cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = started.send(Err(format!("start epmd: {e}")));
            return;
        }
    };
    if let Err(e) = wait_port_checked(epmd_port, &mut epmd_child, Duration::from_secs(10)) {
        reap(&mut epmd_child);
        let _ = started.send(Err(format!("epmd: {e}")));
        return;
    }

    let mut node_cmd = Command::new(RABBITMQ_SERVER);
    let home = dir.join("home");
    node_cmd
        .env("HOME", &home)
        .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
        .env("RABBITMQ_NODENAME", format!("e2erabbit{port}@localhost"))
        .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
        .env("RABBITMQ_NODE_PORT", port.to_string())
        .env("RABBITMQ_DIST_PORT", dist_port.to_string())
        .env("ERL_EPMD_PORT", epmd_port.to_string())
        .env("ERL_EPMD_ADDRESS", "127.0.0.1")
        .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
        .env("RABBITMQ_LOG_BASE", dir.join("log"))
        .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
        .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
        .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
        .env("RABBITMQ_PID_FILE", dir.join("beam.pid"))
        .env(
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
            "-kernel inet_dist_use_interface {127,0,0,1}",
        )
        // The script's foreground mode forks the VM and proxies signals from a shell; with
        // `detached` set it execs the VM instead, so the VM is our direct child and keeps
        // the death signal (PR_SET_PDEATHSIG survives execve).
        .env("detached", "true")
        .env_remove("NOTIFY_SOCKET")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log("stdout.log"))
        .stderr(log("stderr.log"));
    die_with_this_thread(&mut node_cmd);
    let mut node = match node_cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            reap(&mut epmd_child);
            let _ = started.send(Err(format!("start {RABBITMQ_SERVER}: {e}")));
            return;
        }
    };
    let _ = started.send(Ok(()));

    // Poll, bounded by the node's life: stop when asked or when the node exits by itself.
    loop {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if !matches!(node.try_wait(), Ok(None)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    reap(&mut node);
    // `epmd -kill` refuses while nodes are registered unless relaxed; killing our own
    // child by its pid is exact.
    reap(&mut epmd_child);
}

/// Asks the kernel to SIGKILL the child when the spawning thread (the keeper) ends, which
/// includes every way the test process can end.
fn die_with_this_thread(cmd: &mut Command) {
    let parent = std::process::id();
    #[allow(unsafe_code)]
    // SAFETY: the closure runs between fork and exec and only makes two async-signal-safe
    // system calls (prctl, getppid) without allocating or taking locks.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The parent may have died before the call above: then nobody will signal us.
            if nix::unistd::getppid().as_raw() != i32::try_from(parent).unwrap_or(-1) {
                return Err(std::io::Error::other("parent exited during start-up"));
            }
            Ok(())
        });
    }
}

fn reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn wait_port_checked(port: u16, child: &mut Child, timeout: Duration) -> Result<(), String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    loop {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status} before listening on {port}"));
        }
        if Instant::now() >= deadline {
            return Err(format!("not listening on {port} after {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls with real AMQP handshakes (lapin) until one succeeds, bounded by `timeout`.
fn wait_amqp_ready(url: &str, timeout: Duration) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("build a runtime: {e}"))?;
    rt.block_on(async {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no attempt");
        while Instant::now() < deadline {
            let attempt = tokio::time::timeout(
                Duration::from_secs(5),
                lapin::Connection::connect(url, lapin::ConnectionProperties::default()),
            )
            .await;
            match attempt {
                Ok(Ok(conn)) => {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        conn.close(200, "ready".into()),
                    )
                    .await;
                    return Ok(());
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "handshake timed out".into(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(format!("last error: {last}"))
    })
}

/// `plugins`: the management and Prometheus plugins' ports, when they are to run (with
/// the EXTERNAL mechanism's plugin); `tls`: the amqps listener's, with the test
/// certificates, asking clients for a certificate, verifying one they present and letting
/// it log in with EXTERNAL as the user its common name names; and the management API's
/// HTTPS port, with the same certificate.
fn write_config(
    dir: &Path,
    port: u16,
    plugins: Option<(u16, u16)>,
    tls: Option<(u16, u16)>,
) -> std::io::Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    for sub in ["mnesia", "log", "home"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let (plugins, listener) = match plugins {
        Some((m, p)) => (
            "[rabbitmq_management,rabbitmq_prometheus,rabbitmq_auth_mechanism_ssl].\n",
            format!(
                "management.tcp.port = {m}\nmanagement.tcp.ip = 127.0.0.1\n\
                 prometheus.tcp.port = {p}\nprometheus.tcp.ip = 127.0.0.1\n"
            ),
        ),
        None => ("[].\n", String::new()),
    };
    let tls = match tls {
        Some((tls, https)) => {
            let pki = crate::tls::pki();
            let (ca, cert, key) = (
                pki.ca.display(),
                pki.server_cert.display(),
                pki.server_key.display(),
            );
            format!(
                "listeners.ssl.default = 127.0.0.1:{tls}\n\
                 auth_mechanisms.1 = PLAIN\n\
                 auth_mechanisms.2 = AMQPLAIN\n\
                 auth_mechanisms.3 = EXTERNAL\n\
                 ssl_cert_login_from = common_name\n\
                 ssl_options.cacertfile = {ca}\n\
                 ssl_options.certfile = {cert}\n\
                 ssl_options.keyfile = {key}\n\
                 ssl_options.verify = verify_peer\n\
                 ssl_options.fail_if_no_peer_cert = false\n\
                 management.ssl.port = {https}\n\
                 management.ssl.ip = 127.0.0.1\n\
                 management.ssl.certfile = {cert}\n\
                 management.ssl.keyfile = {key}\n"
            )
        }
        None => String::new(),
    };
    std::fs::write(dir.join("enabled_plugins"), plugins)?;
    std::fs::write(
        dir.join("rabbitmq.conf"),
        format!(
            "listeners.tcp.default = 127.0.0.1:{port}\n\
             loopback_users.guest = true\n\
             log.console = false\n\
             log.file.level = warning\n\
             {listener}{tls}"
        ),
    )?;
    std::fs::write(dir.join("rabbitmq-env.conf"), "")?;
    Ok(())
}

/// Removes node directories left by earlier test processes that no longer exist (their
/// nodes died with them; only the files remain).
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| {
            n.strip_prefix("e2e-rabbit-")
                .or_else(|| n.strip_prefix("e2e-amqp-"))
                .or_else(|| n.strip_prefix("e2e-tls-"))
        }) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn tail_logs(dir: &Path) -> String {
    let mut out = String::new();
    let mut files = vec![dir.join("stdout.log"), dir.join("stderr.log")];
    if let Ok(entries) = std::fs::read_dir(dir.join("log")) {
        files.extend(entries.flatten().map(|e| e.path()));
    }
    for file in files {
        if let Ok(text) = std::fs::read_to_string(&file) {
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(30);
            out.push_str(&format!("--- {} ---\n", file.display()));
            out.push_str(&lines[start..].join("\n"));
            out.push('\n');
        }
    }
    out
}

/// Our broker: `session-store` with its AMQP listener on a free loopback port (the RESP
/// listener on another). Killed when the returned [`Proc`] is dropped.
pub fn start_embedded() -> (Proc, u16) {
    let (proc, port, _) = start_embedded_with_management();
    (proc, port)
}

/// [`start_embedded`] with `extra` flags.
pub fn start_embedded_with_args(extra: &[&str]) -> (Proc, u16) {
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let (proc, port, _, _) = start_embedded_with(&extra);
    (proc, port)
}

/// [`start_embedded`], also returning the loopback port of its management API. Every
/// listener binds port 0 and the ports are read from the log, so none can be taken by
/// another process first.
pub fn start_embedded_with_management() -> (Proc, u16, u16) {
    let (proc, port, management, _) = start_embedded_with(&[]);
    (proc, port, management)
}

/// [`start_embedded_with_management`], also serving amqps with the certificates of
/// [`crate::tls::pki`] as the RabbitMQ node does: asking clients for a certificate,
/// verifying one they present, and letting it log in with SASL EXTERNAL as the user its
/// common name names; and the management API over HTTPS too.
pub fn start_embedded_with_tls() -> (Proc, TlsPorts) {
    start_embedded_with_tls_and(&[])
}

/// The loopback ports of an embedded broker started with TLS.
pub struct TlsPorts {
    pub amqp: u16,
    pub amqps: u16,
    pub management: u16,
    /// The management API over HTTPS.
    pub https: u16,
}

/// [`start_embedded_with_tls`] with `extra` flags.
pub fn start_embedded_with_tls_and(extra: &[&str]) -> (Proc, TlsPorts) {
    let pki = crate::tls::pki();
    let mut tls = vec![
        "--amqp-management-tls-bind".to_string(),
        "127.0.0.1:0".to_string(),
        "--amqps-bind".to_string(),
        "127.0.0.1:0".to_string(),
        "--amqp-tls-cert".to_string(),
        pki.server_cert.display().to_string(),
        "--amqp-tls-key".to_string(),
        pki.server_key.display().to_string(),
        "--amqp-tls-ca".to_string(),
        pki.ca.display().to_string(),
        "--amqp-tls-cert-login".to_string(),
        "common-name".to_string(),
    ];
    tls.extend(extra.iter().map(|s| s.to_string()));
    let (mut proc, amqp, management, amqps) = start_embedded_with(&tls);
    let https = proc
        .logged_addr("amqp management https listening", Duration::from_secs(20))
        .port();
    let ports = TlsPorts {
        amqp,
        amqps: amqps.expect("the amqps listener's address"),
        management,
        https,
    };
    (proc, ports)
}

fn start_embedded_with(extra: &[String]) -> (Proc, u16, u16, Option<u16>) {
    static STARTED: AtomicUsize = AtomicUsize::new(0);
    remove_stale_dirs();
    // Its own empty data directory, so durable queues of earlier runs cannot leak in.
    let data = std::env::temp_dir().join(format!(
        "e2e-amqp-{}-{}",
        std::process::id(),
        STARTED.fetch_add(1, Ordering::Relaxed)
    ));
    let args = vec![
        "--bind".to_string(),
        "127.0.0.1:0".to_string(),
        "--amqp-bind".to_string(),
        "127.0.0.1:0".to_string(),
        "--amqp-data-dir".to_string(),
        data.display().to_string(),
        "--amqp-management-bind".to_string(),
        "127.0.0.1:0".to_string(),
    ];
    let args = [args.as_slice(), extra].concat();
    let mut proc = Proc::spawn("session-store", &bin("session-store"), &args, &[]);
    // Logged once each listener is bound and listening.
    let start = Duration::from_secs(20);
    let port = proc.logged_addr("amqp listening", start).port();
    let tls = extra
        .iter()
        .any(|a| a == "--amqps-bind")
        .then(|| proc.logged_addr("amqps listening", start).port());
    let management = proc.logged_addr("amqp management listening", start).port();
    (proc, port, management, tls)
}
