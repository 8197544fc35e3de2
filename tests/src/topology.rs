//! The topology under test: a session store, N demo-app nodes and the load balancer, each a
//! real process of the workspace's binaries on free loopback ports.

use std::time::Duration;

use crate::{Proc, bin, free_port, wait_port};

/// Secrets every node and the LB share, as `demo-app up` passes them.
const JWT_SECRET: &str = "e2e-test-jwt-secret-0123456789abcdef";
const LB_COOKIE_KEY: &str = "e2e-test-lb-cookie-key-0123456789";
const START: Duration = Duration::from_secs(20);

/// A running topology; every process is killed when it is dropped.
pub struct Topology {
    pub store: Option<Proc>,
    pub store_port: u16,
    /// `(node id, port, process)`, in the LB's backend order.
    pub nodes: Vec<(String, u16, Proc)>,
    pub lb: Proc,
    pub lb_port: u16,
}

/// What to start.
pub struct Options<'a> {
    /// `local`, `shared` or `jwt`.
    pub mode: &'a str,
    /// `none` or `cookie`.
    pub affinity: &'a str,
    pub nodes: usize,
}

impl Topology {
    pub fn start(opts: Options<'_>) -> Topology {
        let store_port = free_port();
        let store = (opts.mode == "shared").then(|| start_store(store_port));
        let nodes: Vec<(String, u16, Proc)> = (1..=opts.nodes)
            .map(|i| {
                let id = format!("app{i}");
                let port = free_port();
                let proc = start_node(&id, port, opts.mode, store_port);
                (id, port, proc)
            })
            .collect();
        for (_, port, _) in &nodes {
            wait_port(*port, START);
        }
        let lb_port = free_port();
        let mut args = vec![
            "--listen".to_string(),
            format!("127.0.0.1:{lb_port}"),
            "--affinity".to_string(),
            opts.affinity.to_string(),
        ];
        for (id, port, _) in &nodes {
            args.push("--backend".into());
            args.push(format!("{id}=http://127.0.0.1:{port}"));
        }
        let lb = Proc::spawn("lb", &bin("lb"), &args, &[("LB_COOKIE_KEY", LB_COOKIE_KEY)]);
        wait_port(lb_port, START);
        Topology {
            store,
            store_port,
            nodes,
            lb,
            lb_port,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.lb_port)
    }

    /// SIGKILLs the node with this id: whatever it held in memory is gone.
    pub fn kill_node(&mut self, id: &str) {
        let node = self.nodes.iter_mut().find(|(n, ..)| n == id);
        node.unwrap_or_else(|| panic!("no node {id}")).2.kill();
    }

    /// SIGKILLs the store.
    pub fn kill_store(&mut self) {
        if let Some(store) = self.store.as_mut() {
            store.kill();
        }
    }

    /// Starts a fresh, empty store on the same port as before.
    pub fn restart_store(&mut self) {
        self.store = Some(start_store(self.store_port));
    }
}

pub fn start_store(port: u16) -> Proc {
    let args = vec![
        "--bind".to_string(),
        format!("127.0.0.1:{port}"),
        "--amqp-bind".to_string(),
        "127.0.0.1:0".to_string(),
        "--amqp-no-persist".to_string(),
    ];
    let proc = Proc::spawn("store", &bin("session-store"), &args, &[]);
    wait_port(port, START);
    proc
}

fn start_node(id: &str, port: u16, mode: &str, store_port: u16) -> Proc {
    let args: Vec<String> = [
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--node-id",
        id,
        "--session-mode",
        mode,
        "--store-url",
        &format!("redis://127.0.0.1:{store_port}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Proc::spawn(id, &bin("demo-app"), &args, &[("JWT_SECRET", JWT_SECRET)])
}
