//! One demo web-app node: its flags, and serving its router until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::app::app;
use crate::routes::AppState;
use crate::sessions::{self, SessionMode};

/// When the session cookie carries the `Secure` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CookieSecure {
    /// Always (the service is only reached over TLS).
    Always,
    /// When the LB in front says the request came over TLS (X-Forwarded-Proto: https).
    Auto,
    /// Never (plain-HTTP development).
    Never,
}

#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// Address to listen on.
    #[arg(long, env = "APP_LISTEN", default_value = "127.0.0.1:3001")]
    pub listen: SocketAddr,

    /// Name shown on the page and in the X-Node header [default: node-<port>].
    #[arg(long, env = "APP_NODE_ID")]
    pub node_id: Option<String>,

    /// Where sessions live: this node's memory, the shared store, or a signed JWT cookie.
    #[arg(long, env = "SESSION_MODE", value_enum, default_value_t = SessionMode::Shared)]
    pub session_mode: SessionMode,

    /// Store URL for `shared` mode (and JWT revocations): the session-store, a real
    /// Redis/Valkey, or a Redis Cluster as redis+cluster://host1:port1,host2:port2.
    #[arg(long, env = "STORE_URL", default_value = "redis://127.0.0.1:7379")]
    pub store_url: String,

    /// AMQP URL of the broker carrying session-change events, which keep `shared` mode's
    /// near-cache coherent: the session-store's embedded broker or a RabbitMQ.
    #[arg(
        long,
        env = "EVENTS_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5673/%2f"
    )]
    pub events_url: String,

    /// For an amqps:// --events-url: a PEM file of CAs to trust besides the public root
    /// CAs (Mozilla's, built in).
    #[arg(long, env = "EVENTS_TLS_CA", value_name = "FILE")]
    pub events_tls_ca: Option<PathBuf>,

    /// For an amqps:// --events-url: a PEM client certificate to present, for brokers
    /// that require one (with `?auth_mechanism=external` in the URL, it is the login).
    #[arg(
        long,
        env = "EVENTS_TLS_CERT",
        value_name = "FILE",
        requires = "events_tls_key"
    )]
    pub events_tls_cert: Option<PathBuf>,

    /// The PKCS#8 PEM private key of --events-tls-cert.
    #[arg(
        long,
        env = "EVENTS_TLS_KEY",
        value_name = "FILE",
        requires = "events_tls_cert"
    )]
    pub events_tls_key: Option<PathBuf>,

    /// Run `shared` mode without a near-cache: every request reads the store.
    #[arg(long, env = "NO_NEAR_CACHE")]
    pub no_near_cache: bool,

    /// Longest a near-cache entry is trusted, events or not.
    #[arg(long, env = "NEAR_CACHE_MAX_AGE", default_value = "10s", value_parser = lb::config::parse_duration)]
    pub near_cache_max_age: Duration,

    /// A session unused for this long ends (reads count as use); also a token's lifetime
    /// in `jwt` mode.
    #[arg(long, env = "SESSION_IDLE_TIMEOUT", alias = "session-ttl", default_value = "30m", value_parser = lb::config::parse_duration)]
    pub idle_timeout: Duration,

    /// A session ends this long after it began, however busy.
    #[arg(long, env = "SESSION_ABSOLUTE_TIMEOUT", default_value = "12h", value_parser = lb::config::parse_duration)]
    pub absolute_timeout: Duration,

    /// How often a read-only request pushes the idle deadline out in the store.
    #[arg(long, env = "SESSION_TOUCH_INTERVAL", default_value = "60s", value_parser = lb::config::parse_duration)]
    pub touch_interval: Duration,

    /// Most sessions one user may hold; logging in past it ends the oldest (0: no cap).
    #[arg(long, env = "SESSION_MAX_PER_USER", default_value_t = 10)]
    pub max_sessions_per_user: usize,

    /// Secret(s) signing the session cookie, at least 32 bytes each; the first signs, the
    /// others are still accepted (key rotation). The same on every node [default: random
    /// per process, logged as a warning].
    #[arg(
        long = "cookie-key",
        env = "SESSION_COOKIE_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub cookie_keys: Vec<String>,

    /// When the session cookie is marked Secure.
    #[arg(long, env = "SESSION_COOKIE_SECURE", value_enum, default_value_t = CookieSecure::Auto)]
    pub cookie_secure: CookieSecure,

    /// Name the cookie `__Host-…` (implies Secure: HTTPS only).
    #[arg(long, env = "SESSION_COOKIE_HOST_PREFIX")]
    pub cookie_host_prefix: bool,

    /// HS256 secret for `jwt` mode, at least 32 bytes (key id `hs1`); the same on every
    /// node [default: random per process, logged as a warning].
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// JWT keys as KID:ALG:MATERIAL, ALG `hs256` (MATERIAL: the secret) or `eddsa`
    /// (MATERIAL: a PEM file); the first signs, the others only verify (rotation).
    /// Overrides --jwt-secret.
    #[arg(
        long = "jwt-key",
        env = "JWT_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub jwt_keys: Vec<String>,

    /// In `jwt` mode, record logouts in the store so a logged-out token is refused before
    /// it expires (one store read per request).
    #[arg(long, env = "JWT_REVOCATION")]
    pub jwt_revocation: bool,
}

/// Binds `args.listen` and serves until `shutdown` completes.
pub async fn serve(
    args: NodeArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen).await.with_context(|| {
        format!(
            "cannot listen on {}: another process may hold it; pick another address with --listen",
            args.listen
        )
    })?;
    // The bound address, not the asked one: with port 0 the kernel picks the port.
    let addr = listener
        .local_addr()
        .context("reading the address the listener is bound to")?;
    let node = args
        .node_id
        .clone()
        .unwrap_or_else(|| format!("node-{}", addr.port()));
    let built = sessions::build(&args)?;
    tracing::info!(node, mode = %args.session_mode, near_cache = built.near_cache.is_some(), "listening on {addr}");
    let state = AppState {
        node: node.into(),
        mode: args.session_mode,
        near_cache: built.near_cache.clone(),
    };
    let served = axum::serve(listener, app(state, built.layer))
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving HTTP");
    if let Some(cache) = built.near_cache {
        cache.close().await;
    }
    served
}
