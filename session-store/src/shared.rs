//! What all connections share besides the keyspace: the configuration and the counters
//! INFO reports.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use crate::config::Config;

/// Server-wide state, behind one `Arc` for every connection.
pub(crate) struct Shared {
    pub config: Config,
    pub port: u16,
    pub started: Instant,
    pub connected_clients: AtomicUsize,
    pub total_connections: AtomicU64,
    pub commands_processed: AtomicU64,
    next_client_id: AtomicU64,
}

impl Shared {
    pub(crate) fn new(config: Config, port: u16) -> Shared {
        Shared {
            config,
            port,
            started: Instant::now(),
            connected_clients: AtomicUsize::new(0),
            total_connections: AtomicU64::new(0),
            commands_processed: AtomicU64::new(0),
            next_client_id: AtomicU64::new(1),
        }
    }

    /// A new connection's id (CLIENT ID), unique for the life of the process.
    pub(crate) fn next_client_id(&self) -> u64 {
        self.next_client_id.fetch_add(1, Ordering::Relaxed)
    }
}
