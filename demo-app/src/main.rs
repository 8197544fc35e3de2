//! `demo-app`: run one web-app node, or (`up`) the whole topology on one machine.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use demo_app::cli::{self, Cli};
use tracing_subscriber::EnvFilter;

/// A request makes many small, short-lived allocations: under `bench sessions` at 50%
/// writes, mimalloc cut the nodes' CPU per request by about 15% against glibc's allocator
/// (`demo-app store` runs under it too). The standalone `session-store` keeps glibc's: there
/// mimalloc saved no measurable CPU and doubled the idle resident size.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    match cli::run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line with the whole cause chain; a backtrace would bury the advice.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
