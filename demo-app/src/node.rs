//! One demo web-app node: its flags, and serving its router until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio::net::TcpListener;

use crate::app::app;
use crate::routes::AppState;
use crate::session::{
    JwtSessions, LocalSessions, SessionMode, Sessions, SharedSessions, random_bytes,
};

/// Shortest accepted JWT secret: HS256 wants a key at least as long as its hash.
const MIN_JWT_SECRET: usize = 32;

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

    /// Store URL for `shared` mode: the session-store, or a real Redis/Valkey.
    #[arg(long, env = "STORE_URL", default_value = "redis://127.0.0.1:7379")]
    pub store_url: String,

    /// Session lifetime (e.g. 30m, 90s): idle timeout for `local` and `shared`, token
    /// lifetime for `jwt`.
    #[arg(long, env = "SESSION_TTL", default_value = "30m", value_parser = lb::config::parse_duration)]
    pub session_ttl: Duration,

    /// HS256 secret for `jwt` mode, at least 32 bytes; every node behind one LB needs the
    /// same one [default: random per process, logged as a warning].
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
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
    let node = args
        .node_id
        .clone()
        .unwrap_or_else(|| format!("node-{}", args.listen.port()));
    let sessions = sessions(&args)?;
    tracing::info!(node, mode = %args.session_mode, "listening on {}", args.listen);
    let state = AppState {
        node: node.into(),
        sessions: Arc::new(sessions),
    };
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving HTTP")
}

fn sessions(args: &NodeArgs) -> anyhow::Result<Sessions> {
    let ttl = args.session_ttl.max(Duration::from_secs(1));
    Ok(match args.session_mode {
        SessionMode::Local => Sessions::Local(LocalSessions::new(ttl)),
        SessionMode::Shared => Sessions::Shared(
            SharedSessions::connect(&args.store_url, ttl).with_context(|| {
                format!(
                    "invalid --store-url {:?}: expected redis://host:port",
                    args.store_url
                )
            })?,
        ),
        SessionMode::Jwt => Sessions::Jwt(Box::new(JwtSessions::new(&jwt_secret(args)?, ttl))),
    })
}

fn jwt_secret(args: &NodeArgs) -> anyhow::Result<Vec<u8>> {
    match &args.jwt_secret {
        Some(s) if s.len() >= MIN_JWT_SECRET => Ok(s.as_bytes().to_vec()),
        Some(_) => bail!("--jwt-secret must be at least {MIN_JWT_SECRET} bytes"),
        None => {
            let secret = random_secret();
            tracing::warn!(
                "no --jwt-secret / JWT_SECRET given: generated a random one for this process. \
                 Tokens die with it, and other nodes will reject them; set JWT_SECRET to share one."
            );
            Ok(secret.into_bytes())
        }
    }
}

/// 32 random bytes as base64: a secret that can travel in an environment variable.
pub fn random_secret() -> String {
    STANDARD.encode(random_bytes::<32>())
}
