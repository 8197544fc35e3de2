//! The signal that starts a graceful shutdown: Ctrl-C or SIGTERM, as a service manager or
//! `docker stop` sends. Public so the `demo-app` binary, which also runs the store, shares it.

use std::future::Future;

use tokio::signal::unix::{self, SignalKind};

/// Registers for SIGINT and SIGTERM at once, and returns a future that completes on the
/// first of them. Registering up front matters: a signal that arrives before the future
/// is first polled is still seen, instead of killing the process.
pub fn signal() -> impl Future<Output = ()> {
    let int = unix::signal(SignalKind::interrupt());
    let term = unix::signal(SignalKind::terminate());
    async move {
        match (int, term) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            (Err(err), _) | (_, Err(err)) => {
                tracing::warn!(%err, "cannot listen for signals; only Ctrl-C will stop this process");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        tracing::info!("shutting down");
    }
}
