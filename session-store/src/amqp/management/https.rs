//! The management API over HTTPS (RabbitMQ's `management.ssl`): a listener for `axum::serve`
//! that hands out connections whose TLS handshake is done. Each handshake runs on a task
//! of its own, so a slow or silent client never holds up the next one.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{debug, warn};

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections whose handshake is done and that `axum::serve` has yet to take.
const READY: usize = 64;
/// Upper bound of the pause after a failed accept.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Accepts on a TCP listener and yields TLS connections.
pub struct HttpsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accepting: JoinHandle<()>,
}

impl HttpsListener {
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor) -> io::Result<HttpsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(READY);
        let accepting = tokio::spawn(async move {
            let mut backoff = Duration::from_millis(10);
            loop {
                let (socket, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        warn!("https accept failed: {e}; retrying in {backoff:?}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                        continue;
                    }
                };
                backoff = Duration::from_millis(10);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => debug!(%peer, "https: TLS handshake failed: {e}"),
                        Err(_) => debug!(%peer, "https: TLS handshake not done in time; closed"),
                    }
                });
            }
        });
        Ok(HttpsListener {
            ready,
            local,
            accepting,
        })
    }
}

impl HttpsListener {
    /// The address it listens on.
    pub fn local(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for HttpsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for HttpsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accepting task only ends when dropped with us.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
