//! The `demo-app` command line. It lives in the library so tests can check that a command
//! written elsewhere (compose.yaml, the README) parses, without starting anything.

use clap::{Parser, Subcommand};

use crate::node::{self, NodeArgs};
use crate::up::{self, UpArgs};

#[derive(Debug, Parser)]
#[command(name = "demo-app", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the session store, three app nodes and the load balancer on this machine.
    Up(UpArgs),
    /// Run one web-app node.
    Serve(NodeArgs),
    /// Run the session store (the same as the `session-store` binary).
    Store(session_store::cli::Args),
    /// Run the load balancer (the same as the `lb` binary).
    Lb(lb::cli::Args),
}

/// Runs the chosen command until it ends or Ctrl-C/SIGTERM stops it.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(args) => up::up(args, session_store::shutdown::signal()).await,
        Command::Serve(args) => node::serve(args, session_store::shutdown::signal()).await,
        Command::Store(args) => {
            session_store::cli::serve(args, session_store::shutdown::signal()).await
        }
        Command::Lb(args) => lb::cli::serve(args, session_store::shutdown::signal()).await,
    }
}
