//! Login attempts per protocol, counted as RabbitMQ counts them for
//! `/api/auth/attempts/NODE` and the `rabbitmq_auth_attempts_*` metrics, so that alerts
//! on password guessing written for RabbitMQ work here: `amqp091` for AMQP logins (a
//! wrong password or a malformed response fails; an unknown mechanism is not an attempt),
//! `http` for every management API request that carries credentials (refused by the
//! route's own rule, such as a missing tag, counts as failed).

use std::sync::atomic::{AtomicU64, Ordering};

/// The protocols logins are counted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Amqp091,
    Http,
}

impl Protocol {
    const ALL: [Protocol; 2] = [Protocol::Amqp091, Protocol::Http];

    /// RabbitMQ's name of the protocol in these counters.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Amqp091 => "amqp091",
            Protocol::Http => "http",
        }
    }

    fn index(self) -> usize {
        match self {
            Protocol::Amqp091 => 0,
            Protocol::Http => 1,
        }
    }
}

/// One protocol's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub protocol: Protocol,
    pub succeeded: u64,
    pub failed: u64,
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.succeeded + self.failed
    }
}

/// The node's counters; lock-free, as every management request bumps one.
#[derive(Debug, Default)]
pub struct AuthAttempts {
    succeeded: [AtomicU64; 2],
    failed: [AtomicU64; 2],
}

impl AuthAttempts {
    pub fn succeeded(&self, protocol: Protocol) {
        self.succeeded[protocol.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn failed(&self, protocol: Protocol) {
        self.failed[protocol.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Turns one attempt counted as succeeded into a failed one: a management request
    /// whose login passed but whose route refused the user.
    pub fn refused_after_all(&self, protocol: Protocol) {
        let i = protocol.index();
        let _ = self.succeeded[i]
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        self.failed[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The protocols with attempts since the start or the last reset, as RabbitMQ lists
    /// only those.
    pub fn counts(&self) -> Vec<Counts> {
        Protocol::ALL
            .into_iter()
            .map(|protocol| Counts {
                protocol,
                succeeded: self.succeeded[protocol.index()].load(Ordering::Relaxed),
                failed: self.failed[protocol.index()].load(Ordering::Relaxed),
            })
            .filter(|c| c.total() > 0)
            .collect()
    }

    /// Starts counting again from zero (`DELETE /api/auth/attempts/NODE`).
    pub fn reset(&self) {
        for counter in self.succeeded.iter().chain(&self.failed) {
            counter.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_protocol_list_only_those_tried_and_reset() {
        let a = AuthAttempts::default();
        assert!(a.counts().is_empty());
        a.succeeded(Protocol::Amqp091);
        a.failed(Protocol::Amqp091);
        a.succeeded(Protocol::Amqp091);
        assert_eq!(
            a.counts(),
            [Counts {
                protocol: Protocol::Amqp091,
                succeeded: 2,
                failed: 1
            }]
        );
        a.succeeded(Protocol::Http);
        a.refused_after_all(Protocol::Http);
        let http = a.counts()[1];
        assert_eq!((http.succeeded, http.failed, http.total()), (0, 1, 1));
        a.reset();
        assert!(a.counts().is_empty());
    }
}
