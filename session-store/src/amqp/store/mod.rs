//! Durability, as RabbitMQ offers it: durable exchanges, queues and bindings, and
//! persistent messages (delivery_mode 2) in durable queues, survive a restart or a crash.
//! Transient messages and non-durable entities never touch the disk.
//!
//! Each vhost has a log of its own, in its subdirectory of the data directory, which one
//! process at a time may use (`data_dir`). Everything durable is an append-only log of [`Record`]s in segment files (`log`),
//! written by one thread that fsyncs once per batch (`writer`). A publish that needs the
//! disk gets the sequence number of its record; its confirm is sent once
//! [`Journal::synced`] reaches that number. On start the log is replayed into a
//! [`State`] (`state`) and the broker rebuilt from it (`recover`).
//!
//! A clean shutdown leaves a marker file beside the log. Without it, the broker did not
//! stop cleanly, and as RabbitMQ's queue index does then, every recovered message of a
//! classic queue is marked delivered (a consumer may have seen it just before the crash),
//! so it comes back with redelivered set.
//!
//! Other records (declares, deliveries, acks) are not waited for: they reach the disk
//! with the next batch, a few milliseconds later, and since the log is written in order,
//! any confirm sent after them also covers them. Unlike RabbitMQ, declare-ok does not
//! wait for the disk; a crash within that window forgets the declaration, never a
//! confirmed message.

mod data_dir;
mod log;
mod record;
mod recover;
mod state;
mod writer;

pub use data_dir::DataDir;
pub use record::{BindingRecord, Record};
pub use recover::{restore, unix_ms};
pub use state::State;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::watch;
use tracing::info;

use writer::Command;

/// The marker a clean shutdown leaves, removed when the log is opened again.
const CLEAN_SHUTDOWN: &str = "clean-shutdown";

/// Why the store cannot open or write.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("amqp data: {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the AMQP data directory {} is in use by another process (it holds the lock on its LOCK file). Stop that process first, or give this one a directory of its own with --amqp-data-dir (or none, with --amqp-no-persist)",
        dir.display()
    )]
    Locked { dir: PathBuf },
    #[error(
        "amqp data file {} is damaged at byte {offset} ({reason}). The records before that byte are intact; those from it on cannot be trusted. To start anyway, keep a copy of the data directory, then either truncate this file to {offset} bytes (losing what it held from there) or move the data directory aside (starting empty)",
        path.display()
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
}

impl StoreError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The broker's handle on the log; cheap to clone (durable queues each hold one).
#[derive(Debug, Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The last sequence number handed out, and the way to the writer. One lock for both
    /// keeps sequence numbers in the order the writer receives them.
    sender: Mutex<(u64, Sender<Command>)>,
    next_id: AtomicU64,
    synced: watch::Receiver<u64>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Where the clean-shutdown marker goes.
    dir: PathBuf,
}

impl Journal {
    /// Queues a record for the writer and returns its sequence number.
    pub fn append(&self, record: Record) -> u64 {
        let mut sender = self
            .inner
            .sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        sender.0 += 1;
        // After close the writer is gone and the broker is shutting down: nothing more
        // can be made durable, and nothing waits for it.
        let _ = sender.1.send(Command::Append(sender.0, record));
        sender.0
    }

    /// A new message id, larger than any in the log.
    pub fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Follows the sequence number of the last record on disk.
    pub fn synced(&self) -> watch::Receiver<u64> {
        self.inner.synced.clone()
    }

    /// Writes and syncs what is queued, then stops the writer. Blocks: call it from a
    /// blocking context.
    pub fn close(&self) {
        let sender = self
            .inner
            .sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let _ = sender.1.send(Command::Close);
        drop(sender);
        let thread = self
            .inner
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(thread) = thread else {
            return;
        };
        if thread.join().is_err() {
            tracing::error!("amqp store: the log writer panicked");
            return;
        }
        if let Err(e) = mark_clean(&self.inner.dir) {
            tracing::warn!(
                "amqp store: could not mark the shutdown clean ({e}); recovered messages will come back redelivered"
            );
        }
    }
}

/// Leaves the clean-shutdown marker, on disk before this returns.
fn mark_clean(dir: &Path) -> std::io::Result<()> {
    std::fs::File::create(dir.join(CLEAN_SHUTDOWN))?.sync_all()?;
    std::fs::File::open(dir)?.sync_all()
}

/// Takes the clean-shutdown marker away, on disk before this returns: from now on a crash
/// must not look like a clean shutdown. Returns whether it was there.
fn take_clean_mark(dir: &Path) -> Result<bool, StoreError> {
    let path = dir.join(CLEAN_SHUTDOWN);
    match std::fs::remove_file(&path) {
        Ok(()) => {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| StoreError::io(dir, e))?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::io(&path, e)),
    }
}

/// After a crash: marks every message of the classic queues in `state` delivered, and
/// returns the records that say so in the log. Quorum queues replay their log as it was,
/// in RabbitMQ as here, so theirs keep their flags.
fn mark_delivered(state: &mut State) -> Vec<Record> {
    let mut records = Vec::new();
    for (queue, def) in &mut state.queues {
        let quorum = matches!(
            def.arguments.inner().get("x-queue-type"),
            Some(amq_protocol::types::AMQPValue::LongString(t)) if t.as_bytes() == b"quorum"
        );
        if quorum {
            continue;
        }
        for (id, delivered) in &mut def.messages {
            if !*delivered {
                *delivered = true;
                records.push(Record::Delivered {
                    queue: queue.clone(),
                    id: *id,
                });
            }
        }
    }
    records
}

/// Opens (creating if need be) the log in `dir`, replays it and starts the writer.
/// Returns the journal and the durable state to rebuild the broker from. The bodies of the
/// recovered messages are charged to `memory`, the broker's watermark count.
pub fn open(dir: &Path, memory: &Arc<AtomicU64>) -> Result<(Journal, State), StoreError> {
    std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
    let clean = take_clean_mark(dir)?;
    let segments = log::list_segments(dir)?;
    let mut state = State::default();
    let mut total = 0;
    let mut last_len = 0;
    let mut superseded = Vec::new();
    for (i, &number) in segments.iter().enumerate() {
        let path = log::segment_path(dir, number);
        let newest = i + 1 == segments.len();
        let mut first = true;
        last_len = log::read_segment(&path, newest, |mut record, size| {
            record.charge(memory);
            if first && record == Record::Snapshot {
                superseded.extend_from_slice(&segments[..i]);
            }
            first = false;
            state.apply(&record, size);
        })?;
        total += last_len;
    }
    // A compaction that wrote its segment but did not finish deleting the old ones.
    for number in superseded {
        let path = log::segment_path(dir, number);
        std::fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
    }
    let number = segments.last().copied().unwrap_or(1);
    let appender = log::Appender::open(dir, number, last_len, total)?;
    info!(
        "amqp store: {} recovered from {} ({} exchanges, {} queues, {} messages)",
        dir.display(),
        if segments.is_empty() {
            "nothing".to_string()
        } else {
            format!("{total} bytes")
        },
        state.exchanges.len(),
        state.queues.len(),
        state.messages.len()
    );
    let crashed = if clean {
        Vec::new()
    } else {
        mark_delivered(&mut state)
    };
    if !crashed.is_empty() {
        info!(
            "amqp store: the last shutdown was not clean; {} recovered messages will be delivered as redelivered, as RabbitMQ delivers them",
            crashed.len()
        );
    }
    let (tx, rx) = mpsc::channel();
    let (synced_tx, synced_rx) = watch::channel(0);
    let writer_state = state.clone();
    let thread = std::thread::Builder::new()
        .name("amqp-store".into())
        .spawn(move || writer::run(appender, writer_state, &rx, &synced_tx))
        .map_err(|e| StoreError::io(dir, e))?;
    let journal = Journal {
        inner: Arc::new(Inner {
            sender: Mutex::new((0, tx)),
            next_id: AtomicU64::new(state.max_id + 1),
            synced: synced_rx,
            thread: Mutex::new(Some(thread)),
            dir: dir.to_path_buf(),
        }),
    };
    for record in crashed {
        journal.append(record);
    }
    Ok((journal, state))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn queue(name: &str) -> Record {
        Record::DeclareQueue {
            name: Arc::from(name),
            auto_delete: false,
            arguments: Default::default(),
        }
    }

    #[test]
    fn records_survive_close_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (journal, state) = open(dir.path(), &Arc::new(AtomicU64::new(0))).expect("open");
        assert_eq!(state, State::default());
        journal.append(queue("a"));
        let seq = journal.append(queue("b"));
        journal.close();
        assert_eq!(*journal.synced().borrow(), seq);
        let (journal, state) = open(dir.path(), &Arc::new(AtomicU64::new(0))).expect("reopen");
        let names: Vec<&str> = state.queues.keys().map(|q| &**q).collect();
        assert_eq!(names, vec!["a", "b"]);
        journal.close();
    }
}
