//! `session-store`: the RESP session store as a standalone process.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use session_store::cli::{Args, serve};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "session-store", version, about)]
struct Cli {
    #[command(flatten)]
    args: Args,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    match serve(cli.args, session_store::shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("session-store: {e:#}");
            ExitCode::FAILURE
        }
    }
}
