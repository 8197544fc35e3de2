//! Command-line entry point, shared by the `lb` binary and `demo-app up` (which runs the
//! LB as `demo-app lb ...` with these same [`Args`] flattened into its own parser).

use std::future::Future;
use std::path::PathBuf;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::{Config, Settings};
use crate::server;

/// The LB's flags; each also reads an `LB_*` environment variable.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// TOML file with the same settings as the flags (see lb/lb.example.toml); flags and
    /// LB_* variables override it.
    #[arg(long, env = "LB_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub settings: Settings,
}

impl Args {
    /// Merges the file (if any) under the flags and validates the result.
    pub fn into_config(self) -> anyhow::Result<Config> {
        let settings = match &self.config {
            Some(path) => Settings::from_file(path)?.overlay(self.settings),
            None => self.settings,
        };
        Ok(Config::from_settings(settings)?)
    }
}

/// Builds the configuration, binds the listen address and serves until `shutdown`.
pub async fn serve(args: Args, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let config = args.into_config()?;
    let listener = TcpListener::bind(config.listen).await.with_context(|| {
        format!(
            "cannot listen on {}: is another process using it? Choose another address with \
             --listen (or LB_LISTEN)",
            config.listen
        )
    })?;
    server::run(listener, config, shutdown).await?;
    Ok(())
}
