//! `bench`: load generators for the project's benchmarks. `benches/amqp.sh` runs
//! `bench amqp` against a private RabbitMQ and against our `session-store`, interleaved;
//! `benches/sessions.sh` runs `bench sessions` against the demo topology in each session
//! mode, interleaved; `bench wakeup` measures the machine's own latency floor.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod amqp;
mod proc_stats;
mod sessions;
mod wakeup;

/// Load generators that print one `key=value` result line per scenario on stdout.
#[derive(Parser)]
#[command(name = "bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// AMQP 0-9-1 broker throughput, latency, CPU and memory (lapin client).
    Amqp(amqp::Args),
    /// Demo-app sessions through the load balancer: requests/s, latency, near-cache hit
    /// ratio and invalidation lag, cookie bytes per request.
    Sessions(sessions::Args),
    /// The machine's wake-up latency: a loopback ping-pong between two threads at a steady
    /// rate, the floor under the latency figures of the other commands.
    Wakeup(wakeup::Args),
}

/// The load generator shares the machine with what it measures, so it should take as little
/// CPU as it can: mimalloc takes less than glibc's allocator for its many small buffers.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Amqp(args) => amqp::run(args).await,
        Command::Sessions(args) => sessions::run(args).await,
        Command::Wakeup(args) => tokio::task::spawn_blocking(move || wakeup::run(&args))
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("wakeup: {e}"))),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        // Every scenario printed its line; at least one of them is an `error=` line.
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
