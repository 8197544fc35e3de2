//! A real Redis Cluster for tests: three `redis-server` masters on 127.0.0.1, each with
//! its own temporary directory, joined by `redis-cli --cluster create`. Every process is
//! killed and the directory removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;

use super::ports::free_port;

/// Bound on each wait: a server accepting connections, the join, `cluster_state:ok`.
const WAIT: Duration = Duration::from_secs(30);
const MASTERS: usize = 3;

pub struct RedisCluster {
    nodes: Vec<Child>,
    ports: Vec<u16>,
    dir: PathBuf,
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether `name` is an executable on PATH.
fn installed(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
}

fn temp_dir() -> PathBuf {
    static STARTED: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "session-layer-cluster-{}-{}-{nanos}",
        std::process::id(),
        STARTED.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    dir
}

fn spawn_node(dir: &Path, port: u16, bus_port: u16) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string()])
        .args(["--cluster-port", &bus_port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--cluster-enabled", "yes"])
        .arg("--cluster-config-file")
        .arg(dir.join(format!("nodes-{port}.conf")))
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(log_file(dir, port))
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server starts")
}

fn log_file(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!("redis-{port}.log"))
}

/// Waits until the node on `port` accepts connections; if it exits instead, fails with
/// its log.
async fn until_listening(node: &mut Child, dir: &Path, port: u16) {
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if let Ok(Some(status)) = node.try_wait() {
            let log = std::fs::read_to_string(log_file(dir, port)).unwrap_or_default();
            panic!("redis-server on {port} exited ({status}):\n{log}");
        }
        assert!(
            Instant::now() < deadline,
            "redis-server on {port} did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl RedisCluster {
    /// Three masters, not yet joined: they answer, but serve no slot. None when
    /// `redis-server` or `redis-cli` is missing, unless `CI=true`, where that fails.
    pub async fn spawn() -> Option<RedisCluster> {
        let missing: Vec<&str> = ["redis-server", "redis-cli"]
            .into_iter()
            .filter(|tool| !installed(tool))
            .collect();
        if !missing.is_empty() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{missing:?} required with CI=true"
            );
            eprintln!("{missing:?} not installed: skipping the Redis Cluster half");
            return None;
        }
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            ports: (0..MASTERS).map(|_| free_port()).collect(),
            dir: temp_dir(),
        };
        for &port in &cluster.ports {
            let node = spawn_node(&cluster.dir, port, free_port());
            cluster.nodes.push(node);
        }
        for (node, &port) in cluster.nodes.iter_mut().zip(&cluster.ports) {
            until_listening(node, &cluster.dir, port).await;
        }
        Some(cluster)
    }

    /// Assigns the slots evenly and waits until every node reports `cluster_state:ok`.
    pub async fn join(&self) {
        let mut create = tokio::process::Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        create.args(self.ports.iter().map(|p| format!("127.0.0.1:{p}")));
        create.args(["--cluster-replicas", "0", "--cluster-yes"]);
        create.stdout(Stdio::piped()).stderr(Stdio::piped());
        create.kill_on_drop(true);
        let out = tokio::time::timeout(WAIT, create.output())
            .await
            .expect("redis-cli --cluster create timed out")
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + WAIT;
        for &port in &self.ports {
            let mut conn = self.conn(port).await;
            loop {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut conn)
                    .await
                    .expect("CLUSTER INFO");
                if info.lines().any(|l| l.trim() == "cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {port} never reached cluster_state:ok: {info}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// A joined cluster.
    pub async fn start() -> Option<RedisCluster> {
        let cluster = Self::spawn().await?;
        cluster.join().await;
        Some(cluster)
    }

    /// The URL `RedisStore::connect` takes: every master as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// A plain connection to one node, which answers MOVED for keys it does not own.
    pub async fn conn(&self, port: u16) -> MultiplexedConnection {
        redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to a cluster node")
    }

    /// The port of the master that serves `key`: the one node that does not redirect it.
    pub async fn owner(&self, key: &str) -> u16 {
        let mut owners = Vec::new();
        for &port in &self.ports {
            let answer: redis::RedisResult<i64> = redis::cmd("EXISTS")
                .arg(key)
                .query_async(&mut self.conn(port).await)
                .await;
            if answer.is_ok() {
                owners.push(port);
            }
        }
        assert_eq!(owners.len(), 1, "{key} served by {owners:?}");
        owners[0]
    }

    pub async fn keyslot(&self, key: &str) -> u16 {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut self.conn(self.ports[0]).await)
            .await
            .expect("CLUSTER KEYSLOT")
    }

    pub async fn node_id(&self, port: u16) -> String {
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query_async(&mut self.conn(port).await)
            .await
            .expect("CLUSTER MYID")
    }

    /// Starts moving `slot` from the master on `from` to the one on `to`, and moves `key`
    /// (in that slot) along: from now on `from` answers ASK for it, the way a resharding
    /// in progress looks to clients.
    pub async fn migrate_key(&self, key: &str, slot: u16, from: u16, to: u16) {
        let (from_id, to_id) = (self.node_id(from).await, self.node_id(to).await);
        let set_slot = |state: &str, id: &str| {
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("SETSLOT").arg(slot).arg(state).arg(id);
            cmd
        };
        let () = set_slot("IMPORTING", &from_id)
            .query_async(&mut self.conn(to).await)
            .await
            .expect("SETSLOT IMPORTING");
        let () = set_slot("MIGRATING", &to_id)
            .query_async(&mut self.conn(from).await)
            .await
            .expect("SETSLOT MIGRATING");
        let () = redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(to)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(key)
            .query_async(&mut self.conn(from).await)
            .await
            .expect("MIGRATE");
    }

    /// Ends a migration: every master learns that `to` owns `slot`.
    pub async fn assign_slot(&self, slot: u16, to: u16) {
        let to_id = self.node_id(to).await;
        let mut order = vec![to];
        order.extend(self.ports.iter().copied().filter(|&p| p != to));
        for port in order {
            let () = redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("NODE")
                .arg(&to_id)
                .query_async(&mut self.conn(port).await)
                .await
                .expect("SETSLOT NODE");
        }
    }
}
