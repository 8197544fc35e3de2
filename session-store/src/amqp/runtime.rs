//! The broker's own threads, apart from the RESP server's, so that neither protocol's load
//! delays the other and each can be given its own share of the cores.
//!
//! How many is a trade, and one is the default. Routing runs under one lock per node, so
//! more threads add only socket and framing work in parallel, and they cost a cross-thread
//! wake-up for many messages: a publisher's connection task routes a message and wakes its
//! consumer's task, which a multi-threaded runtime may hand to a second, parked thread; on
//! one thread that wake-up is a queue push. Measured on two cores against one lapin
//! client, one thread used 31–41% less broker CPU per message than two in the transient,
//! manual-ack and fanout benchmarks, at the same or higher rates; on an earlier, busy day
//! two threads delivered about 13% more in fanout at the same CPU per message.

use std::io;
use std::num::NonZeroUsize;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{Node, TlsListener, serve_with_tls};

/// Runs [`serve_with_tls`] on a runtime of `threads` threads of its own until `stop` is cancelled,
/// and returns once it has shut down. Fails only if the threads cannot start.
pub async fn serve_on_own_threads(
    listener: TcpListener,
    tls: Option<TlsListener>,
    node: Arc<Node>,
    threads: NonZeroUsize,
    stop: CancellationToken,
) -> io::Result<()> {
    // A socket belongs to the runtime that registered it: hand it over unregistered.
    let listener = listener.into_std()?;
    let tls = match tls {
        Some(TlsListener { listener, tls }) => Some((listener.into_std()?, tls)),
        None => None,
    };
    let runtime = match threads.get() {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
    }
    .enable_all()
    .thread_name("amqp")
    .build()?;
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("amqp".into())
        .spawn(move || {
            let served = runtime.block_on(async move {
                let tls = match tls {
                    Some((listener, tls)) => Some(TlsListener {
                        listener: TcpListener::from_std(listener)?,
                        tls,
                    }),
                    None => None,
                };
                serve_with_tls(
                    TcpListener::from_std(listener)?,
                    tls,
                    node,
                    stop.cancelled_owned(),
                )
                .await;
                Ok(())
            });
            // Dropping the runtime here, outside any async context, ends its tasks.
            drop(runtime);
            let _ = done_tx.send(served);
        })?;
    done_rx
        .await
        .unwrap_or_else(|_| Err(io::Error::other("the AMQP broker's thread panicked")))
}
