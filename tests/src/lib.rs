//! Helpers for the end-to-end tests: build and locate the workspace's binaries, pick free
//! loopback ports, start processes that die with the test, and wait on conditions with a
//! deadline instead of sleeping.

pub mod rabbit;
pub mod tls;
pub mod topology;

use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Path of a workspace binary (`lb`, `session-store`, `demo-app`), built on first use.
///
/// The tests crate cannot name other packages' binaries through `CARGO_BIN_EXE_*`, so the
/// first call for a name runs `cargo build` for it in the profile this test was built with.
/// That keeps it fresh: a stale binary from an earlier build would test old code. Each
/// binary is named like the package that holds it.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", name, "--bin", name]);
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .expect("run cargo build for the binary under test");
        assert!(status.success(), "cargo build of {name} failed");
        built.push(name.to_string());
    }
    let path = profile_dir().join(name);
    assert!(
        path.exists(),
        "binary {} not found after build",
        path.display()
    );
    path
}

/// `target/<profile>`: the test executable lives in `target/<profile>/deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable sits in target/<profile>/deps")
        .to_path_buf()
}

/// A free TCP port on 127.0.0.1 for a server under test. Ports handed out by this process
/// are never repeated, so parallel tests in one binary cannot collide with each other.
///
/// The port comes from below the kernel's ephemeral range: a port from inside it (what
/// binding port 0 returns) can be taken by any client socket's local end between this
/// check and the server's bind, which on a busy test run happens.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let (low, high) = (10_000u32, u32::from(ephemeral_start()));
    let random = RandomState::new();
    for attempt in 0u32..10_000 {
        let offset = u32::try_from(random.hash_one(attempt) % u64::from(high - low)).unwrap_or(0);
        let port = u16::try_from(low + offset).unwrap_or(u16::MAX);
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port in {low}..{high} on 127.0.0.1");
}

/// First port of the kernel's ephemeral range (Linux's default when unreadable).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .filter(|&start| start > 11_000)
        .unwrap_or(32_768)
}

/// Polls `cond` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Async twin of [`wait_for`] for tests running on tokio.
pub async fn wait_for_async<T, F, Fut>(what: &str, timeout: Duration, mut cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until something accepts TCP connections on `port`.
pub fn wait_port(port: u16, timeout: Duration) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for(&format!("port {port} to accept"), timeout, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
    });
}

/// A child process killed (SIGKILL) when dropped, so a failing test leaves nothing behind.
/// Its stdout and stderr are copied to the test's output with a name prefix, for
/// diagnosis, and kept for [`Proc::output`].
pub struct Proc {
    name: String,
    child: Child,
    output: Arc<Output>,
}

/// Lines of a [`Proc`]'s output kept for [`Proc::output`]: the latest, so a chatty
/// process cannot grow a test's memory without bound.
const KEPT_LINES: usize = 10_000;

/// What a [`Proc`] wrote, and how many of its two pipes have closed.
#[derive(Default)]
struct Output {
    lines: Mutex<VecDeque<String>>,
    closed: AtomicUsize,
}

impl Proc {
    /// Starts `program` with `args` and extra environment; stdout and stderr are relayed.
    pub fn spawn(name: &str, program: &Path, args: &[String], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
        let output = Arc::new(Output::default());
        relay(name, child.stdout.take(), output.clone());
        relay(name, child.stderr.take(), output.clone());
        Proc {
            name: name.to_string(),
            child,
            output,
        }
    }

    /// The lines the process (and whatever it started with the same pipes) wrote, the
    /// latest [`KEPT_LINES`] of them, once both pipes have closed: call after it exited.
    pub fn output(&self) -> Vec<String> {
        wait_for(
            &format!("{}'s output to end", self.name),
            Duration::from_secs(10),
            || (self.output.closed.load(Ordering::SeqCst) == 2).then_some(()),
        );
        self.output
            .lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits i32"));
        // The process may already be gone; that is what the caller wanted anyway.
        let _ = kill(pid, sig);
    }

    /// SIGKILL and reap: the process is really gone when this returns.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself and returns its exit code (None if signalled).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let name = self.name.clone();
        let child = &mut self.child;
        wait_for(&format!("{name} to exit"), timeout, || {
            child.try_wait().ok().flatten()
        })
        .code()
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The address in the process's first log line that says `{what} on ADDR`, such as
    /// `amqp listening on 127.0.0.1:40123`. A server told to bind port 0 reports the port
    /// the kernel gave it this way, so no other process can take that port between a
    /// test's choice of it and the server's bind. Panics if the process exits first.
    pub fn logged_addr(&mut self, what: &str, timeout: Duration) -> SocketAddr {
        let marker = format!("{what} on ");
        let name = self.name.clone();
        let output = Arc::clone(&self.output);
        let child = &mut self.child;
        wait_for(
            &format!("{name} to log `{marker}ADDR` (at RUST_LOG=info or finer)"),
            timeout,
            || {
                let lines = output.lines.lock().unwrap_or_else(PoisonError::into_inner);
                let found = lines.iter().find_map(|line| {
                    let (_, rest) = line.split_once(&marker)?;
                    rest.split_whitespace().next()?.parse::<SocketAddr>().ok()
                });
                drop(lines);
                if found.is_none()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    panic!("{name} exited ({status}) before it logged `{marker}ADDR`");
                }
                found
            },
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn relay(name: &str, pipe: Option<impl std::io::Read + Send + 'static>, output: Arc<Output>) {
    let Some(pipe) = pipe else {
        output.closed.fetch_add(1, Ordering::SeqCst);
        return;
    };
    let name = name.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            match line {
                Ok(line) => {
                    eprintln!("[{name}] {line}");
                    let mut lines = output.lines.lock().unwrap_or_else(PoisonError::into_inner);
                    if lines.len() == KEPT_LINES {
                        lines.pop_front();
                    }
                    lines.push_back(line);
                }
                Err(_) => break,
            }
        }
        output.closed.fetch_add(1, Ordering::SeqCst);
    });
}

/// Whether this run must have the reference engines (redis-server, ...) installed.
/// CI sets `CI=true`; there a missing engine fails the test instead of skipping it.
pub fn engines_required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var("E2E_REQUIRE_ENGINES").is_ok_and(|v| v == "1")
}

/// Finds an executable on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A real `redis-server` on a free port with no persistence, or None when it is not
/// installed and this run does not require it (see [`engines_required`]).
pub fn start_redis_server() -> Option<(Proc, u16)> {
    if !redis_server_available() {
        return None;
    }
    let port = free_port();
    Some((start_redis_server_on(port), port))
}

/// Whether `redis-server` is on PATH. When it is not, panics if this run requires the
/// reference engines (see [`engines_required`]) and otherwise says the test skips it.
pub fn redis_server_available() -> bool {
    if which("redis-server").is_some() {
        return true;
    }
    assert!(
        !engines_required(),
        "redis-server is required in CI (apt-get install redis-server) but not on PATH"
    );
    eprintln!("redis-server not installed: reference half of this test skipped");
    false
}

/// A real `redis-server` with no persistence on `port` (e.g. again on the port of one that
/// was killed), once it accepts connections. Panics if it is not installed.
pub fn start_redis_server_on(port: u16) -> Proc {
    let server = which("redis-server").expect("redis-server on PATH");
    let args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let proc = Proc::spawn("redis-server", &server, &args, &[]);
    wait_port(port, Duration::from_secs(10));
    proc
}
