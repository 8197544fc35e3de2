//! The topology under test: a session store, an AMQP broker for session events, N demo-app
//! nodes and the load balancer, each a real process on free loopback ports.
//!
//! By default the store is the workspace's `session-store` with its embedded broker in the
//! same process (what `demo-app up` runs). [`Options`] can instead run the broker as a
//! process of its own (so it can be killed while the store lives), use a real
//! `redis-server` as the store, or a real RabbitMQ as the broker (private to the topology,
//! or someone else's by URL).

use std::time::Duration;

use crate::rabbit::{RabbitMq, amqp_url, start_rabbitmq};
use crate::{Proc, bin, free_port, start_redis_server_on, wait_port};

/// Secrets every node and the LB share, as `demo-app up` passes them.
const JWT_SECRET: &str = "e2e-test-jwt-secret-0123456789abcdef";
const LB_COOKIE_KEY: &str = "e2e-test-lb-cookie-key-0123456789";
const SESSION_COOKIE_KEYS: &str = "e2e-test-session-cookie-key-0123456789";
const START: Duration = Duration::from_secs(20);

/// What keeps the sessions in `shared` mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Store {
    /// The workspace's `session-store`.
    Embedded,
    /// A real `redis-server` of the topology's own (it must be installed: check with
    /// [`crate::redis_server_available`] first).
    Redis,
}

/// What carries the session-change events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broker {
    /// The broker embedded in the `session-store` process of [`Store::Embedded`]: they
    /// live and die together.
    InStore,
    /// The embedded broker in a `session-store` process of its own, which can be killed
    /// and restarted while the store lives.
    Separate,
    /// A private RabbitMQ node for this topology (it must be installed: see
    /// [`crate::rabbit::start_rabbitmq`]); killable and restartable.
    RabbitMq,
    /// Someone else's broker, by AMQP URL; the topology cannot kill it.
    Url(String),
}

/// What to start.
#[derive(Debug, Clone)]
pub struct Options<'a> {
    /// `local`, `shared` or `jwt`.
    pub mode: &'a str,
    /// `none` or `cookie`.
    pub affinity: &'a str,
    pub nodes: usize,
    pub store: Store,
    pub broker: Broker,
    /// Extra arguments for every node's `demo-app serve`.
    pub node_args: Vec<String>,
}

impl<'a> Options<'a> {
    /// `nodes` nodes in `mode` behind an LB with `affinity`, on the embedded store with its
    /// broker in the same process.
    pub fn new(mode: &'a str, affinity: &'a str, nodes: usize) -> Self {
        Options {
            mode,
            affinity,
            nodes,
            store: Store::Embedded,
            broker: Broker::InStore,
            node_args: Vec::new(),
        }
    }
}

/// The running broker, when the topology owns one apart from the store.
enum BrokerProc {
    None,
    Separate(Option<Proc>),
    RabbitMq(RabbitMq),
}

/// A running topology; every process is killed when it is dropped.
pub struct Topology {
    pub store: Option<Proc>,
    pub store_port: u16,
    /// The AMQP port of the broker carrying the nodes' session events (0 for a broker
    /// given by URL).
    pub amqp_port: u16,
    /// `(node id, port, process)`, in the LB's backend order.
    pub nodes: Vec<(String, u16, Proc)>,
    pub lb: Proc,
    pub lb_port: u16,
    store_kind: Store,
    broker_kind: Broker,
    broker: BrokerProc,
    node_spec: NodeSpec,
}

/// How every node is started.
struct NodeSpec {
    mode: String,
    store_port: u16,
    events_url: String,
    extra_args: Vec<String>,
}

impl Topology {
    /// Starts everything and waits until each process accepts connections. Blocking.
    pub fn start(opts: Options<'_>) -> Topology {
        assert!(
            opts.broker != Broker::InStore || opts.store == Store::Embedded,
            "only the embedded store has a broker inside"
        );
        let store_port = free_port();
        let mut amqp_port = free_port();
        let shared = opts.mode == "shared";
        let (broker, events_url) = match &opts.broker {
            Broker::InStore => (BrokerProc::None, amqp_url(amqp_port)),
            Broker::Separate => (
                BrokerProc::Separate(shared.then(|| start_broker(amqp_port))),
                amqp_url(amqp_port),
            ),
            Broker::RabbitMq if shared => {
                let rabbit = start_rabbitmq().expect("rabbitmq-server installed");
                amqp_port = rabbit.port();
                let url = rabbit.url();
                (BrokerProc::RabbitMq(rabbit), url)
            }
            Broker::RabbitMq => (BrokerProc::None, amqp_url(amqp_port)),
            Broker::Url(url) => {
                amqp_port = 0;
                (BrokerProc::None, url.clone())
            }
        };
        let store = shared.then(|| {
            spawn_store(
                &opts.store,
                store_port,
                (opts.broker == Broker::InStore).then_some(amqp_port),
            )
        });
        let node_spec = NodeSpec {
            mode: opts.mode.to_string(),
            store_port,
            events_url,
            extra_args: opts.node_args.clone(),
        };
        // Nodes and the LB listen on ports the kernel picks, read back from the line each
        // logs once it accepts connections, so no other process can take them first. All
        // nodes start before any is waited on.
        let started: Vec<(String, Proc)> = (1..=opts.nodes)
            .map(|i| {
                let id = format!("app{i}");
                let proc = node_spec.spawn(&id, 0);
                (id, proc)
            })
            .collect();
        let nodes: Vec<(String, u16, Proc)> = started
            .into_iter()
            .map(|(id, mut proc)| {
                let port = proc.logged_addr("listening", START).port();
                (id, port, proc)
            })
            .collect();
        let mut args = vec![
            "--listen".to_string(),
            "127.0.0.1:0".to_string(),
            "--affinity".to_string(),
            opts.affinity.to_string(),
        ];
        for (id, port, _) in &nodes {
            args.push("--backend".into());
            args.push(format!("{id}=http://127.0.0.1:{port}"));
        }
        let mut lb = Proc::spawn("lb", &bin("lb"), &args, &[("LB_COOKIE_KEY", LB_COOKIE_KEY)]);
        let lb_port = lb.logged_addr("listening", START).port();
        Topology {
            store,
            store_port,
            amqp_port,
            nodes,
            lb,
            lb_port,
            store_kind: opts.store,
            broker_kind: opts.broker,
            broker,
            node_spec,
        }
    }

    /// `path` through the load balancer.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.lb_port)
    }

    /// `path` on node number `i` (0-based, in [`Topology::nodes`] order), bypassing the LB.
    pub fn node_url(&self, i: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.nodes[i].1)
    }

    /// The AMQP URL the nodes publish and consume session events on.
    pub fn events_url(&self) -> &str {
        &self.node_spec.events_url
    }

    /// SIGKILLs the node with this id: whatever it held in memory is gone.
    pub fn kill_node(&mut self, id: &str) {
        self.node_mut(id).2.kill();
    }

    /// SIGKILLs the node with this id if still running, then starts it again on the same
    /// port with the same arguments and waits until it accepts connections.
    pub fn restart_node(&mut self, id: &str) {
        let port = self.node_mut(id).1;
        self.kill_node(id);
        let proc = self.node_spec.spawn(id, port);
        self.node_mut(id).2 = proc;
        wait_port(port, START);
    }

    fn node_mut(&mut self, id: &str) -> &mut (String, u16, Proc) {
        let node = self.nodes.iter_mut().find(|(n, ..)| n == id);
        node.unwrap_or_else(|| panic!("no node {id}"))
    }

    /// SIGKILLs the store (and with [`Broker::InStore`], the broker with it).
    pub fn kill_store(&mut self) {
        if let Some(store) = self.store.as_mut() {
            store.kill();
        }
    }

    /// Starts a fresh, empty store on the same port as before.
    pub fn restart_store(&mut self) {
        self.kill_store();
        let in_store = (self.broker_kind == Broker::InStore).then_some(self.amqp_port);
        self.store = Some(spawn_store(&self.store_kind, self.store_port, in_store));
    }

    /// SIGKILLs the broker (a [`Broker::Separate`] or [`Broker::RabbitMq`] one) and waits
    /// until it is gone.
    pub fn kill_broker(&mut self) {
        match &mut self.broker {
            BrokerProc::Separate(Some(proc)) => proc.kill(),
            BrokerProc::RabbitMq(rabbit) => rabbit.kill(),
            _ => panic!(
                "the topology cannot kill a {:?} broker on its own",
                self.broker_kind
            ),
        }
    }

    /// Starts the broker again on the same port (empty for the embedded one; RabbitMQ
    /// keeps its state) and waits until it accepts connections.
    pub fn restart_broker(&mut self) {
        match &mut self.broker {
            BrokerProc::Separate(proc) => {
                if let Some(old) = proc.as_mut() {
                    old.kill();
                }
                *proc = Some(start_broker(self.amqp_port));
            }
            BrokerProc::RabbitMq(rabbit) => rabbit.restart(),
            BrokerProc::None => panic!(
                "the topology cannot restart a {:?} broker on its own",
                self.broker_kind
            ),
        }
    }
}

impl NodeSpec {
    fn spawn(&self, id: &str, port: u16) -> Proc {
        let mut args: Vec<String> = [
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--node-id",
            id,
            "--session-mode",
            &self.mode,
            "--store-url",
            &format!("redis://127.0.0.1:{}", self.store_port),
            "--events-url",
            &self.events_url,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.extra_args.iter().cloned());
        let env = [
            ("JWT_SECRET", JWT_SECRET),
            ("SESSION_COOKIE_KEYS", SESSION_COOKIE_KEYS),
        ];
        Proc::spawn(id, &bin("demo-app"), &args, &env)
    }
}

/// The embedded store on `port`, with its broker on `amqp_port` if given (else without
/// one), once it accepts connections.
pub fn start_store(port: u16, amqp_port: Option<u16>) -> Proc {
    let mut args = vec!["--bind".to_string(), format!("127.0.0.1:{port}")];
    match amqp_port {
        Some(amqp) => args.extend([
            "--amqp-bind".to_string(),
            format!("127.0.0.1:{amqp}"),
            "--amqp-no-persist".to_string(),
            "--no-amqp-management".to_string(),
        ]),
        None => args.push("--no-amqp".to_string()),
    }
    let proc = Proc::spawn("store", &bin("session-store"), &args, &[]);
    wait_port(port, START);
    if let Some(amqp) = amqp_port {
        wait_port(amqp, START);
    }
    proc
}

/// The embedded broker alone (its RESP listener on a port nobody uses) on `amqp_port`,
/// once it accepts connections.
pub fn start_broker(amqp_port: u16) -> Proc {
    let args = vec![
        "--bind".to_string(),
        "127.0.0.1:0".to_string(),
        "--amqp-bind".to_string(),
        format!("127.0.0.1:{amqp_port}"),
        "--amqp-no-persist".to_string(),
        "--no-amqp-management".to_string(),
    ];
    let proc = Proc::spawn("broker", &bin("session-store"), &args, &[]);
    wait_port(amqp_port, START);
    proc
}

fn spawn_store(kind: &Store, port: u16, amqp_port: Option<u16>) -> Proc {
    match kind {
        Store::Embedded => start_store(port, amqp_port),
        Store::Redis => start_redis_server_on(port),
    }
}
