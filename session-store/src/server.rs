//! The accept loop, one task per connection, and graceful shutdown.
//!
//! Shape from mini-redis: a `Semaphore` caps connections; on shutdown a cancellation
//! token tells every connection task to stop after its current command, and each task
//! holds an `mpsc::Sender` whose drop signals that it has finished, so `run` knows when
//! the drain is over.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis_protocol::resp2::types::BytesFrame;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::client::Client;
use crate::cmd::{self, Context, Outcome};
use crate::codec::RespCodec;
use crate::config::Config;
use crate::connection::Connection;
use crate::db::{Db, DbDropGuard};
use crate::error::{CodecError, ServerError};
use crate::shared::Shared;

/// How long shutdown waits for connections to finish their current command.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a closing connection may take to deliver its last replies.
const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);
/// Upper bound of the pause after a failed accept (e.g. out of file descriptors).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Serves RESP clients on `listener` until `shutdown` completes, then stops accepting,
/// lets open connections finish their current command (at most 5 s) and returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let port = listener
        .local_addr()
        .map_err(ServerError::LocalAddr)?
        .port();
    let db_guard = DbDropGuard::new(config.expiry_hz);
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let acceptor = Acceptor {
        listener,
        db: db_guard.db(),
        limit: Arc::new(Semaphore::new(config.max_connections)),
        shared: Arc::new(Shared::new(config, port)),
        stop: CancellationToken::new(),
        done: done_tx,
    };
    let stop = acceptor.stop.clone();
    tokio::select! {
        () = acceptor.accept_loop() => {}
        () = shutdown => info!("shutting down: no new connections, draining open ones"),
    }
    // The acceptor holds a `done` sender too; without it, `recv` ends with the last task.
    drop(acceptor);
    stop.cancel();
    if tokio::time::timeout(DRAIN_TIMEOUT, done_rx.recv())
        .await
        .is_err()
    {
        warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
    }
    drop(db_guard);
    Ok(())
}

struct Acceptor {
    listener: TcpListener,
    db: Db,
    limit: Arc<Semaphore>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    done: mpsc::Sender<()>,
}

impl Acceptor {
    /// Accepts forever; errors are logged and retried after a pause, since they are
    /// usually transient (a peer that reset before accept, a full file table).
    async fn accept_loop(&self) {
        let mut backoff = Duration::from_millis(10);
        loop {
            let socket = match self.listener.accept().await {
                Ok((socket, _)) => socket,
                Err(e) => {
                    warn!("accept failed: {e}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                    continue;
                }
            };
            backoff = Duration::from_millis(10);
            self.shared
                .total_connections
                .fetch_add(1, Ordering::Relaxed);
            let Ok(permit) = self.limit.clone().try_acquire_owned() else {
                refuse(&socket);
                continue;
            };
            let handler = Handler {
                db: self.db.clone(),
                shared: self.shared.clone(),
                stop: self.stop.clone(),
                _done: self.done.clone(),
            };
            tokio::spawn(async move {
                handler.serve(socket).await;
                drop(permit);
            });
        }
    }
}

/// Over the connection cap: say so, as Redis does, and close. A fresh socket's send
/// buffer is empty, so a non-blocking write delivers the line without holding up the
/// accept loop.
fn refuse(socket: &TcpStream) {
    const REPLY: &[u8] = b"-ERR max number of clients reached\r\n";
    if let Err(e) = socket.try_write(REPLY) {
        debug!("could not tell a refused client why: {e}");
    }
}

struct Handler {
    db: Db,
    shared: Arc<Shared>,
    stop: CancellationToken,
    /// Dropped when this connection ends; see the module docs.
    _done: mpsc::Sender<()>,
}

impl Handler {
    async fn serve(self, socket: TcpStream) {
        let peer = socket.peer_addr().ok();
        let config = &self.shared.config;
        let mut client = Client::new(
            self.shared.next_client_id(),
            config.requirepass.is_none(),
            self.db.clone(),
        );
        let codec = RespCodec::new(config.max_frame_bytes, client.authenticated);
        let mut conn = Connection::new(socket, codec);
        self.shared
            .connected_clients
            .fetch_add(1, Ordering::Relaxed);
        debug!(?peer, id = client.id, "client connected");
        let result = self.serve_requests(&mut conn, &mut client).await;
        self.shared
            .connected_clients
            .fetch_sub(1, Ordering::Relaxed);
        match result {
            Ok(()) => debug!(?peer, id = client.id, "client disconnected"),
            Err(e) => debug!(?peer, id = client.id, "client dropped: {e}"),
        }
    }

    async fn serve_requests(
        &self,
        conn: &mut Connection,
        client: &mut Client,
    ) -> Result<(), CodecError> {
        loop {
            let request = tokio::select! {
                request = conn.read_request() => request,
                () = self.stop.cancelled() => break,
            };
            let args = match request {
                Ok(Some(args)) => args,
                // The client finished sending; it may still read (`printf ... | nc`).
                Ok(None) => break,
                Err(e @ CodecError::Protocol(_)) => {
                    debug!(id = client.id, "closing after {e}");
                    conn.queue(BytesFrame::Error(format!("ERR {e}").into()))
                        .await?;
                    break;
                }
                Err(e) => return Err(e),
            };
            self.shared
                .commands_processed
                .fetch_add(1, Ordering::Relaxed);
            match self.execute(args, client) {
                Outcome::Reply(reply) => conn.queue(reply).await?,
                Outcome::Quit => {
                    conn.queue(BytesFrame::SimpleString("OK".into())).await?;
                    break;
                }
                Outcome::Drop => return Ok(()),
            }
            conn.set_authenticated(client.authenticated);
        }
        tokio::time::timeout(FINAL_FLUSH_TIMEOUT, conn.flush())
            .await
            .unwrap_or(Ok(()))
    }

    /// Runs one request with the keyspace locked, and unlocks it before the reply is
    /// written: a slow reader must not hold up other clients.
    fn execute(&self, args: Vec<bytes::Bytes>, client: &mut Client) -> Outcome {
        let mut ctx = Context {
            db: &mut self.db.lock(),
            shared: &self.shared,
            client,
        };
        cmd::execute(args, &mut ctx)
    }
}
