//! The broker's own threads, apart from the RESP server's.
//!
//! Routing runs under one lock per node, so more threads add little but socket and framing
//! work in parallel, and they cost a cross-thread wake-up for nearly every message: a
//! publisher's connection task routes a message and wakes its consumer's task, which a
//! multi-threaded runtime hands to a second, parked thread. On one thread that wake-up is a
//! queue push. Measured on two cores against one lapin client, one thread used 16–28% less
//! broker CPU per message in the ack, confirm and fanout benchmarks on a quiet machine
//! (about 5% on a busy one), at the same rates.

use std::io;
use std::num::NonZeroUsize;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{Node, serve};

/// Runs [`serve`] on a runtime of `threads` threads of its own until `stop` is cancelled,
/// and returns once it has shut down. Fails only if the threads cannot start.
pub async fn serve_on_own_threads(
    listener: TcpListener,
    node: Arc<Node>,
    threads: NonZeroUsize,
    stop: CancellationToken,
) -> io::Result<()> {
    // A socket belongs to the runtime that registered it: hand it over unregistered.
    let listener = listener.into_std()?;
    let runtime = if threads.get() == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads.get());
        builder
    }
    .enable_all()
    .thread_name("amqp")
    .build()?;
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("amqp".into())
        .spawn(move || {
            let served = runtime.block_on(async move {
                serve(
                    TcpListener::from_std(listener)?,
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
