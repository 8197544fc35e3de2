//! Churn: connections, channels and queues opened and closed since the node started,
//! counted as RabbitMQ's `connection_churn_metrics` are, for the overview's
//! `churn_rates` and the `rabbitmq_connections_opened_total` family of metrics that
//! dashboards chart (a client that reconnects or redeclares in a loop shows there).
//! Node-wide atomics, so that no vhost's lock is needed and deleting a vhost loses no
//! counts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// What is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    ConnectionCreated,
    ConnectionClosed,
    ChannelCreated,
    ChannelClosed,
    /// A queue.declare that is not passive and passed its permission check.
    QueueDeclared,
    QueueCreated,
    /// By any cause: a client, auto-delete, an exclusive owner gone, expiry, the API.
    QueueDeleted,
}

impl Event {
    pub const ALL: [Event; 7] = [
        Event::ConnectionCreated,
        Event::ConnectionClosed,
        Event::ChannelCreated,
        Event::ChannelClosed,
        Event::QueueDeclared,
        Event::QueueCreated,
        Event::QueueDeleted,
    ];

    /// The name in the overview's `churn_rates`.
    pub fn overview_name(self) -> &'static str {
        match self {
            Event::ConnectionCreated => "connection_created",
            Event::ConnectionClosed => "connection_closed",
            Event::ChannelCreated => "channel_created",
            Event::ChannelClosed => "channel_closed",
            Event::QueueDeclared => "queue_declared",
            Event::QueueCreated => "queue_created",
            Event::QueueDeleted => "queue_deleted",
        }
    }

    /// The Prometheus counter and its help, as RabbitMQ's plugin names them.
    pub fn metric(self) -> (&'static str, &'static str) {
        match self {
            Event::ConnectionCreated => (
                "rabbitmq_connections_opened_total",
                "Total number of connections opened",
            ),
            Event::ConnectionClosed => (
                "rabbitmq_connections_closed_total",
                "Total number of connections closed or terminated",
            ),
            Event::ChannelCreated => (
                "rabbitmq_channels_opened_total",
                "Total number of channels opened",
            ),
            Event::ChannelClosed => (
                "rabbitmq_channels_closed_total",
                "Total number of channels closed",
            ),
            Event::QueueDeclared => (
                "rabbitmq_queues_declared_total",
                "Total number of queues declared",
            ),
            Event::QueueCreated => (
                "rabbitmq_queues_created_total",
                "Total number of queues created",
            ),
            Event::QueueDeleted => (
                "rabbitmq_queues_deleted_total",
                "Total number of queues deleted",
            ),
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The counters, and their rates between the last two samples.
#[derive(Debug)]
pub struct Churn {
    counts: [AtomicU64; 7],
    sampled: Mutex<Sampled>,
}

#[derive(Debug)]
struct Sampled {
    at: Instant,
    counts: [u64; 7],
    rates: [f64; 7],
}

impl Default for Churn {
    fn default() -> Self {
        Churn {
            counts: Default::default(),
            sampled: Mutex::new(Sampled {
                at: Instant::now(),
                counts: [0; 7],
                rates: [0.0; 7],
            }),
        }
    }
}

impl Churn {
    pub fn count(&self, event: Event) {
        self.counts[event.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn total(&self, event: Event) -> u64 {
        self.counts[event.index()].load(Ordering::Relaxed)
    }

    /// Per second, between the last two samples.
    pub fn rate(&self, event: Event) -> f64 {
        self.sampled().rates[event.index()]
    }

    /// Takes a sample at `now`; run every few seconds, with the message rates.
    pub fn sample(&self, now: Instant) {
        let counts = Event::ALL.map(|e| self.total(e));
        let mut sampled = self.sampled();
        let secs = now.saturating_duration_since(sampled.at).as_secs_f64();
        if secs <= 0.0 {
            return;
        }
        let before = sampled.counts;
        sampled.rates = std::array::from_fn(|i| counts[i].saturating_sub(before[i]) as f64 / secs);
        sampled.counts = counts;
        sampled.at = now;
    }

    fn sampled(&self) -> std::sync::MutexGuard<'_, Sampled> {
        self.sampled.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn totals_grow_and_rates_are_per_second_between_samples() {
        let churn = Churn::default();
        let start = Instant::now();
        churn.sample(start);
        for _ in 0..4 {
            churn.count(Event::QueueDeclared);
        }
        churn.count(Event::ConnectionCreated);
        churn.sample(start + Duration::from_secs(2));
        assert_eq!(churn.total(Event::QueueDeclared), 4);
        assert_eq!(churn.rate(Event::QueueDeclared), 2.0);
        assert_eq!(churn.rate(Event::ConnectionCreated), 0.5);
        assert_eq!(churn.rate(Event::QueueDeleted), 0.0);
        churn.sample(start + Duration::from_secs(4));
        assert_eq!(churn.rate(Event::QueueDeclared), 0.0);
        assert_eq!(churn.total(Event::QueueDeclared), 4);
    }
}
