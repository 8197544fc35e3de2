//! The accept loop and graceful shutdown, shared by the `lb` binary and tests.
//!
//! On shutdown the listener closes first (new clients are refused at once), idle
//! keep-alive connections close, and requests in flight get up to the drain timeout to
//! finish, like HAProxy's soft stop bounded by `hard-stop-after`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::backend::Backends;
use crate::config::Config;
use crate::health;
use crate::proxy::{MAX_REQUEST_HEAD, Proxy};

/// hyper's read buffer per connection, roughly what a request head may take before it
/// answers 431 by itself; the proxy checks the exact limit ([`crate::proxy::MAX_REQUEST_HEAD`]).
/// hyper's default lets each connection hold about 400 KB.
const READ_BUFFER: usize = 2 * MAX_REQUEST_HEAD;

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot read the listening address: {0}")]
    LocalAddr(std::io::Error),
}

/// Serves `listener` with `config` until `shutdown` resolves, then drains connections for
/// at most `config.drain_timeout`. Health checks run for as long as this does.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let addr = listener.local_addr().map_err(ServerError::LocalAddr)?;
    let backends = Arc::new(Backends::new(&config.backends));
    let proxy = Arc::new(Proxy::new(&config, Arc::clone(&backends)));
    let _health_checks = health::spawn(Arc::clone(&backends), config.health.clone());

    info!("listening on {addr}");
    let list: Vec<String> = backends
        .all()
        .iter()
        .map(|b| format!("{}=http://{}", b.id, b.authority))
        .collect();
    let affinity = match &config.affinity {
        Some(cookie) => format!("cookie {}", cookie.name()),
        None => "none".to_string(),
    };
    let algorithm = config.algorithm.to_possible_value();
    info!(
        "backends: {} (algorithm {}, affinity {affinity})",
        list.join(", "),
        algorithm.as_ref().map_or("?", |v| v.get_name())
    );

    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.client_timeout)
        .max_buf_size(READ_BUFFER)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        debug!(%peer, "cannot set TCP_NODELAY: {e}");
                    }
                    let proxy = Arc::clone(&proxy);
                    let service = service_fn(move |request| {
                        let proxy = Arc::clone(&proxy);
                        async move { Ok::<_, Infallible>(proxy.handle(request, peer).await) }
                    });
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    let connection = graceful.watch(connection);
                    connections.spawn(async move {
                        if let Err(e) = connection.await {
                            debug!(%peer, "connection ended with an error: {e}");
                        }
                    });
                }
                Err(e) => {
                    warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }

    drop(listener);
    info!(
        "shutting down: waiting up to {:?} for {} open connections",
        config.drain_timeout,
        graceful.count()
    );
    match tokio::time::timeout(config.drain_timeout, graceful.shutdown()).await {
        Ok(()) => info!("all connections drained"),
        Err(_) => warn!(
            "drain timeout of {:?} reached: closing connections with requests in flight",
            config.drain_timeout
        ),
    }
    connections.shutdown().await;
    Ok(())
}
