//! Memory-based flow control, after RabbitMQ's memory high watermark: when the bytes of
//! the messages the broker holds (their bodies, properties and the broker's bookkeeping
//! for each) pass the watermark the alarm goes on, and connections that publish are told
//! with connection.blocked and not read from until it goes off again, so a fast
//! publisher cannot grow the broker without bound while consumers catch up.
//!
//! A message is charged once, when it is made (published, dead-lettered, recovered from
//! disk), and released when the last reference to the message goes: a message held
//! by several queues, waiting in a connection's outbound queue, delivered and awaiting
//! its ack, or kept by the journal's writer counts exactly as long as it takes memory.
//! The alarm itself is re-evaluated by broker operations and the periodic sweep.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

/// RabbitMQ's default `vm_memory_high_watermark`: 40 % of physical memory.
const DEFAULT_FRACTION_PERCENT: u64 = 40;
/// The watermark when physical memory cannot be read (1 GiB).
const FALLBACK_WATERMARK: u64 = 1 << 30;

/// The broker-wide count of held message bytes and the alarm derived from it.
#[derive(Debug)]
pub struct MemoryMonitor {
    used: Arc<AtomicU64>,
    watermark: u64,
    alarm: watch::Sender<bool>,
}

impl MemoryMonitor {
    pub fn new(watermark: u64) -> Self {
        MemoryMonitor {
            used: Arc::new(AtomicU64::new(0)),
            watermark,
            alarm: watch::Sender::new(false),
        }
    }

    /// The counter [`Charge`]s add message bytes to and take them from.
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.used.clone()
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Turns the alarm on above the watermark and off at or below it; listeners are woken
    /// only on a change.
    pub fn check(&self) {
        let over = self.used() > self.watermark;
        self.alarm.send_if_modified(|on| {
            let changed = *on != over;
            *on = over;
            changed
        });
    }

    /// Follows the alarm: true while memory is over the watermark.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.alarm.subscribe()
    }
}

/// Bytes counted in a [`MemoryMonitor`] for as long as this value lives: a message holds
/// one for its body, so the body is released with the last reference to the message.
/// The default charges nothing (a message not yet made the broker's).
#[derive(Debug, Default)]
pub struct Charge {
    counted: Option<(Arc<AtomicU64>, u64)>,
}

impl Charge {
    /// Adds `bytes` to `counter` until dropped.
    pub fn new(counter: &Arc<AtomicU64>, bytes: u64) -> Self {
        counter.fetch_add(bytes, Ordering::Relaxed);
        Charge {
            counted: Some((counter.clone(), bytes)),
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some((counter, bytes)) = self.counted.take() {
            counter.fetch_sub(bytes, Ordering::Relaxed);
        }
    }
}

/// 40 % of physical memory as `/proc/meminfo` reports it, else 1 GiB.
pub fn default_watermark() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| mem_total(&text))
        .map_or(FALLBACK_WATERMARK, |total| {
            total / 100 * DEFAULT_FRACTION_PERCENT
        })
}

/// `MemTotal:  16318412 kB` in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line.split_whitespace().skip(1);
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => n.checked_mul(1024),
        None => Some(n),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mem_total() {
        let text = "MemTotal:       16318412 kB\nMemFree:         1000 kB\n";
        assert_eq!(mem_total(text), Some(16_318_412 * 1024));
        assert_eq!(mem_total("nothing"), None);
        assert!(default_watermark() > 0);
    }

    #[test]
    fn alarm_follows_the_watermark() {
        let m = MemoryMonitor::new(100);
        let mut alarm = m.subscribe();
        m.counter().fetch_add(101, Ordering::Relaxed);
        m.check();
        assert!(alarm.has_changed().expect("open"));
        assert!(*alarm.borrow_and_update());
        m.check();
        assert!(!alarm.has_changed().expect("open"), "no news, no wake-up");
        m.counter().fetch_sub(1, Ordering::Relaxed);
        m.check();
        assert!(!*alarm.borrow_and_update());
    }

    #[test]
    fn a_charge_lasts_as_long_as_its_value() {
        let m = MemoryMonitor::new(100);
        let charge = Charge::new(&m.counter(), 40);
        let other = Charge::new(&m.counter(), 2);
        assert_eq!(m.used(), 42);
        drop(charge);
        assert_eq!(m.used(), 2);
        drop(other);
        drop(Charge::default());
        assert_eq!(m.used(), 0);
    }
}
