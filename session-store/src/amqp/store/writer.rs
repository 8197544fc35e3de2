//! The log writer: one thread that owns the open segment and makes records durable in
//! groups. It takes every record that is waiting, writes them with one `write` and one
//! fsync, and then announces the sequence number of the last one; publishers whose
//! confirms wait on the journal are released by that one announcement. The more
//! publishers, the bigger the batches, so fsyncs per second stay flat while messages per
//! second grow: a steady stream is written at most once per [`GROUP_WINDOW`].
//!
//! It also keeps the durable [`State`] up to date and compacts the log when most of it is
//! dead: confirms then wait for the compaction, while the broker itself never does.

use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{error, info};

use super::log::Appender;
use super::record::Record;
use super::state::State;

/// Most bytes gathered into one write; more records wait for the next one.
const BATCH_BYTES: usize = 4 << 20;
/// A segment is closed and a new one started past this size.
const SEGMENT_BYTES: u64 = 64 << 20;
/// The log is compacted once it is this big and holds twice its live size or more.
const COMPACT_MIN_BYTES: u64 = 16 << 20;
/// Under a steady stream of records, at most one fsync per this long (see [`run`]): a
/// confirm may wait up to this much longer, for a fraction of the fsyncs.
const GROUP_WINDOW: Duration = Duration::from_millis(1);
/// Pause before retrying a failed write (disk full, I/O error).
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// What the writer thread is sent.
#[derive(Debug)]
pub enum Command {
    /// A record and its sequence number (consecutive, in sending order).
    Append(u64, Record),
    /// Write what came before, then stop.
    Close,
}

/// Runs until [`Command::Close`] (or every sender is gone).
pub fn run(
    mut log: Appender,
    mut state: State,
    commands: &Receiver<Command>,
    synced: &watch::Sender<u64>,
) {
    let mut batch = Vec::new();
    let mut last_write: Option<Instant> = None;
    loop {
        let Ok(first) = commands.recv() else {
            return;
        };
        // Records arriving hard on the heels of the last write mean a steady stream: let
        // the rest of the group window fill this batch, so the stream costs one fsync per
        // window rather than one per handful of records. A lone record waits for nothing.
        if let Some(due) = last_write.map(|at| at + GROUP_WINDOW)
            && let Some(wait) = due.checked_duration_since(Instant::now())
        {
            std::thread::sleep(wait);
        }
        let mut last = None;
        let mut next = Some(first);
        let mut closing = false;
        while let Some(command) = next.take() {
            match command {
                Command::Append(seq, record) => {
                    let start = batch.len();
                    record.encode(&mut batch);
                    state.apply(&record, (batch.len() - start) as u64);
                    last = Some(seq);
                }
                Command::Close => closing = true,
            }
            if batch.len() < BATCH_BYTES && !closing {
                next = commands.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            write(&mut log, &batch);
            batch.clear();
            last_write = Some(Instant::now());
        }
        if let Some(seq) = last {
            synced.send_replace(seq);
        }
        if closing {
            return;
        }
        maintain(&mut log, &state);
    }
}

/// Writes a batch durably, retrying until it succeeds: a confirm must never be sent for
/// a record that is not on disk, and a full disk usually gets room again.
fn write(log: &mut Appender, batch: &[u8]) {
    let mut failures = 0u32;
    while let Err(e) = log.write_durably(batch) {
        failures += 1;
        if failures == 1 || failures.is_power_of_two() {
            error!(
                "amqp store: {e}; persistent messages are not confirmed until it can write again (attempt {failures})"
            );
        }
        std::thread::sleep(RETRY_PAUSE);
    }
}

/// Compacts a mostly dead log, or starts a new segment when the current one is full.
fn maintain(log: &mut Appender, state: &State) {
    let live = state.live_bytes();
    if log.total >= COMPACT_MIN_BYTES && log.total >= live.saturating_mul(2) {
        let before = log.total;
        match log.compact(&state.snapshot()) {
            Ok(()) => info!(
                "amqp store: compacted the log from {before} to {} bytes",
                log.total
            ),
            Err(e) => error!("amqp store: compaction failed, keeping the old segments: {e}"),
        }
    } else if log.len() >= SEGMENT_BYTES
        && let Err(e) = log.rotate()
    {
        error!("amqp store: cannot start a new segment, continuing in the old one: {e}");
    }
}
