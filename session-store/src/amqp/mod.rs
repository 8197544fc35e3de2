//! An embedded AMQP 0-9-1 broker with RabbitMQ's model and wire behaviour, so `lapin`
//! code written for it works unchanged against a real RabbitMQ, chosen by URL.
//!
//! Layout: [`serve`] accepts connections; `connection` runs each one (with `handshake` for
//! its opening and `codec` for its bytes); the [`Node`] holds the vhosts, each a `broker`
//! with its `exchange`s and `queue`s; `error` maps failures to channel.close /
//! connection.close. Messages live in memory; with a data directory, each vhost's durable
//! exchanges, queues and bindings and its persistent messages are also logged to disk by
//! `store` and recovered on start. Queue arguments (`queue_args`) bring TTLs, length
//! limits, priorities (`ready`) and `dead_letter`ing; `tx` holds transactions; `flow` the
//! memory watermark that blocks publishers. `users` and `permissions` decide who may do
//! what, as configured by [`Definitions`] (RabbitMQ's definitions JSON); `stats` counts
//! messages for the [`management`] HTTP API.

mod access;
pub mod auth_attempts;
mod broker;
pub mod churn;
mod codec;
mod connection;
mod dead_letter;
pub mod definitions;
pub mod error;
mod exchange;
mod flow;
#[doc(hidden)]
pub mod fuzzing;
mod globals;
mod handshake;
pub mod limits;
pub mod management;
mod names;
mod node;
pub mod permissions;
mod policy;
mod queue;
mod queue_args;
mod ready;
mod reply_to;
mod runtime;
mod stats;
mod store;
mod stream;
pub mod tls;
mod trace;
mod trim;
mod tx;
pub mod users;
pub mod vhost_meta;

pub use definitions::{Definitions, DefinitionsError};
pub use flow::default_watermark;
pub use node::{Node, NodeError};
pub use runtime::serve_on_own_threads;
pub use store::StoreError;
pub use tls::{CertLogin, Tls, TlsConfig, TlsError};

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long shutdown waits for clients to acknowledge connection.close.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound of the pause after a failed accept.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// How long a client has to finish its TLS handshake (RabbitMQ's
/// `ssl_handshake_timeout`).
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often expired messages and unused `x-expires` queues are swept.
const SWEEP_INTERVAL: Duration = Duration::from_millis(50);
/// RabbitMQ 3.10's default `consumer_timeout`: 30 minutes.
pub const DEFAULT_CONSUMER_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How often message counters are sampled for rates (RabbitMQ's management plugin
/// samples every 5 s).
const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// Broker settings; the defaults are RabbitMQ's.
#[derive(Clone)]
pub struct AmqpConfig {
    /// Users, vhosts, permissions and the topology to start with; by default RabbitMQ's
    /// `guest`/`guest` on `/`, from loopback only.
    pub definitions: Definitions,
    /// Largest frame offered in connection.tune, in bytes.
    pub frame_max: u32,
    /// Most channels per connection offered in connection.tune.
    pub channel_max: u16,
    /// Heartbeat interval offered in connection.tune, in seconds (0: none).
    pub heartbeat: u16,
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
    /// Bytes of messages held (queued, on their way to consumers, or awaiting acks)
    /// above which publishers are blocked (RabbitMQ's memory high watermark); by default
    /// 40 % of physical memory.
    pub memory_high_watermark: u64,
    /// Where durable exchanges, queues, bindings and persistent messages are kept, one
    /// subdirectory per vhost; none keeps everything in memory only.
    pub data_dir: Option<PathBuf>,
    /// Whether TLS clients with a verified certificate may log in with SASL EXTERNAL as
    /// the user their certificate names, and which part names it.
    pub cert_login: Option<CertLogin>,
    /// How long a delivery may stay unacknowledged before its channel is closed with
    /// 406 and its messages go back (RabbitMQ's `consumer_timeout`); none: forever.
    pub consumer_timeout: Option<Duration>,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            definitions: Definitions::default(),
            frame_max: 131_072,
            channel_max: 2047,
            heartbeat: 60,
            max_connections: 10_000,
            memory_high_watermark: default_watermark(),
            data_dir: None,
            cert_login: None,
            consumer_timeout: Some(DEFAULT_CONSUMER_TIMEOUT),
        }
    }
}

/// Shows everything but password hashes.
impl std::fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut users: Vec<&str> = self
            .definitions
            .users
            .all()
            .map(|u| u.name.as_str())
            .collect();
        users.sort_unstable();
        f.debug_struct("AmqpConfig")
            .field("users", &users)
            .field("vhosts", &self.definitions.vhosts)
            .field("frame_max", &self.frame_max)
            .field("channel_max", &self.channel_max)
            .field("heartbeat", &self.heartbeat)
            .field("max_connections", &self.max_connections)
            .field("memory_high_watermark", &self.memory_high_watermark)
            .field("data_dir", &self.data_dir)
            .field("cert_login", &self.cert_login)
            .field("consumer_timeout", &self.consumer_timeout)
            .finish()
    }
}

/// [`serve`] with a [`Node`] made from `config` (see [`Node::open`]); fails before
/// serving anyone if its data directory or definitions cannot be used.
pub async fn run(
    listener: TcpListener,
    config: AmqpConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NodeError> {
    serve(listener, Node::open(config).await?, shutdown).await;
    Ok(())
}

/// Serves AMQP clients on `listener` until `shutdown` completes; then stops accepting,
/// sends every client connection.close 320 CONNECTION_FORCED "broker shutdown" and waits
/// (at most 5 s) for the connections to end. Last, the vhosts' journals write out what
/// they hold and stop.
pub async fn serve(listener: TcpListener, node: Arc<Node>, shutdown: impl Future<Output = ()>) {
    serve_with_tls(listener, None, node, shutdown).await;
}

/// The amqps listener and the TLS its connections are wrapped in.
pub struct TlsListener {
    pub listener: TcpListener,
    pub tls: Tls,
}

/// [`serve`], also serving TLS clients on `tls`; both listeners count towards
/// `max_connections`.
pub async fn serve_with_tls(
    listener: TcpListener,
    tls: Option<TlsListener>,
    node: Arc<Node>,
    shutdown: impl Future<Output = ()>,
) {
    if let Ok(addr) = listener.local_addr() {
        node.add_listener("amqp", addr);
    }
    if let Some(t) = &tls
        && let Ok(addr) = t.listener.local_addr()
    {
        node.add_listener("amqp/ssl", addr);
        node.set_tls_listener(addr, t.tls.files.clone());
    }
    let config = node.config();
    let limit = Arc::new(Semaphore::new(config.max_connections));
    let stop = CancellationToken::new();
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let plain = accept_each(
        &listener,
        "amqp",
        &limit,
        config.max_connections,
        |socket, permit| {
            let (node, stop, done) = (node.clone(), stop.clone(), done_tx.clone());
            tokio::spawn(async move {
                connection::serve(socket, node, stop).await;
                drop(permit);
                drop(done);
            });
        },
    );
    let secure = async {
        let Some(TlsListener { listener, tls }) = &tls else {
            return std::future::pending().await;
        };
        accept_each(
            listener,
            "amqps",
            &limit,
            config.max_connections,
            |socket, permit| {
                let (node, stop, done) = (node.clone(), stop.clone(), done_tx.clone());
                let acceptor = tls.acceptor.clone();
                tokio::spawn(async move {
                    let peer = socket.peer_addr().ok();
                    // The AMQP handshake's own timeout starts once TLS is up.
                    let handshake =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(socket));
                    let stream = tokio::select! {
                        accepted = handshake => accepted,
                        () = stop.cancelled() => return,
                    };
                    match stream {
                        Ok(Ok(stream)) => connection::serve_tls(stream, node, stop).await,
                        Ok(Err(e)) => info!(?peer, "amqps: TLS handshake failed: {e}"),
                        Err(_) => info!(
                            ?peer,
                            "amqps: TLS handshake not done in {TLS_HANDSHAKE_TIMEOUT:?}; closed"
                        ),
                    }
                    drop(permit);
                    drop(done);
                });
            },
        )
        .await
    };
    let accept = async {
        tokio::join!(plain, secure);
    };
    let sweep = async {
        let mut every = tokio::time::interval(SWEEP_INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            node.tick();
        }
    };
    let sample = async {
        let mut every = tokio::time::interval(SAMPLE_INTERVAL);
        let mut trim = trim::QuietTrim::default();
        loop {
            every.tick().await;
            if trim.observe(node.sample()) {
                tracing::debug!("amqp: quiet; returned freed memory to the OS");
            }
        }
    };
    tokio::select! {
        () = accept => {}
        () = sweep => {}
        () = sample => {}
        () = shutdown => info!("amqp: shutting down, closing connections"),
    }
    drop(done_tx);
    stop.cancel();
    if tokio::time::timeout(DRAIN_TIMEOUT, done_rx.recv())
        .await
        .is_err()
    {
        warn!("amqp connections still open after {DRAIN_TIMEOUT:?}; dropping them");
    }
    let closing = node.clone();
    // A panicked writer has already been reported by `close_journals`.
    let _ = tokio::task::spawn_blocking(move || closing.close_journals()).await;
}

/// Accepts on `listener` for ever, handing each socket on with its connection-limit
/// permit; a socket over the limit is closed at once.
async fn accept_each(
    listener: &TcpListener,
    protocol: &str,
    limit: &Arc<Semaphore>,
    max: usize,
    mut serve: impl FnMut(tokio::net::TcpStream, tokio::sync::OwnedSemaphorePermit),
) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let socket = match listener.accept().await {
            Ok((socket, _)) => socket,
            Err(e) => {
                warn!("{protocol} accept failed: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(10);
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            warn!("{protocol} connection refused: {max} connections open");
            continue;
        };
        serve(socket, permit);
    }
}
