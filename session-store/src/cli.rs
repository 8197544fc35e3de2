//! Command-line flags and the `serve` entry point, shared by this crate's binary and by
//! `demo-app up`, which runs the store in-process under its own `store` subcommand.

use std::future::Future;

use anyhow::Context as _;
use clap::builder::RangedU64ValueParser;
use tokio::net::TcpListener;
use tracing::info;

use crate::config::Config;

/// The store's flags; each can also come from a `STORE_*` environment variable.
/// Derives `clap::Args` so other binaries can embed it with `#[command(flatten)]`.
#[derive(Clone, clap::Args)]
pub struct Args {
    /// Address to listen on for RESP clients (redis-cli, the redis crate, ...).
    #[arg(long, env = "STORE_BIND", default_value = "127.0.0.1:7379")]
    pub bind: String,

    /// Password clients must give with AUTH or HELLO before other commands.
    #[arg(long, env = "STORE_REQUIREPASS", hide_env_values = true)]
    pub requirepass: Option<String>,

    /// Most clients connected at once; more are refused with an error.
    #[arg(
        long,
        env = "STORE_MAX_CONNECTIONS",
        default_value_t = Config::default().max_connections,
        value_parser = RangedU64ValueParser::<usize>::new().range(1..),
    )]
    pub max_connections: usize,

    /// Largest request in bytes (key, value and framing); bigger ones are refused and the
    /// connection closed.
    #[arg(
        long,
        env = "STORE_MAX_FRAME_BYTES",
        default_value_t = Config::default().max_frame_bytes,
        value_parser = RangedU64ValueParser::<usize>::new().range(1024..),
    )]
    pub max_frame_bytes: usize,

    /// Active expiry cycles per second (like Redis' hz): how soon unread expired keys
    /// are removed.
    #[arg(
        long,
        env = "STORE_EXPIRY_HZ",
        default_value_t = Config::default().expiry_hz,
        value_parser = clap::value_parser!(u32).range(1..=500),
    )]
    pub expiry_hz: u32,
}

impl Args {
    /// The server configuration these flags describe. An empty password means none, as
    /// with Redis' `requirepass ""`.
    pub fn config(&self) -> Config {
        Config {
            requirepass: self.requirepass.clone().filter(|p| !p.is_empty()),
            max_connections: self.max_connections,
            max_frame_bytes: self.max_frame_bytes,
            expiry_hz: self.expiry_hz,
        }
    }
}

/// Shows everything but the password, so logging the flags cannot leak it.
impl std::fmt::Debug for Args {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Args")
            .field("bind", &self.bind)
            .field("config", &self.config())
            .finish()
    }
}

/// Binds `args.bind`, logs `session-store listening on ADDR` and serves until `shutdown`
/// completes.
pub async fn serve(args: Args, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&args.bind).await.with_context(|| {
        format!(
            "cannot listen on {}; is another server using it? Choose another address with --bind (or STORE_BIND)",
            args.bind
        )
    })?;
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    info!("session-store listening on {addr}");
    crate::server::run(listener, args.config(), shutdown).await?;
    info!("session-store stopped");
    Ok(())
}
