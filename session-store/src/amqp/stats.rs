//! Message counters and their rates, for the management API. Counters are plain fields
//! bumped under the broker lock the operation already holds (so they cost an add, never
//! an allocation); rates come from sampling them every few seconds, as RabbitMQ's
//! management plugin does with its 5 s samples.

use std::collections::HashMap;
use std::time::Instant;

/// RabbitMQ's `message_stats` counters of a queue, a vhost or the whole node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageStats {
    /// Messages published (to an exchange for a vhost; routed into it for a queue).
    pub publish: u64,
    /// Deliveries to consumers that must ack.
    pub deliver: u64,
    /// Deliveries to no-ack consumers.
    pub deliver_no_ack: u64,
    /// basic.get answered with a message, that must be acked.
    pub get: u64,
    /// basic.get answered with a message, no-ack.
    pub get_no_ack: u64,
    /// Deliveries (either way) of messages delivered before.
    pub redeliver: u64,
    pub ack: u64,
    /// Publisher confirms sent.
    pub confirm: u64,
    /// Mandatory messages returned as unroutable.
    pub return_unroutable: u64,
    /// Non-mandatory messages dropped as unroutable.
    pub drop_unroutable: u64,
}

/// How many counters [`MessageStats::fields`] lists.
pub const FIELDS: usize = 11;

impl MessageStats {
    /// All counters summed: grows with any message traffic, still while there is none.
    pub fn traffic(&self) -> u64 {
        self.fields()
            .iter()
            .fold(0u64, |sum, (_, n)| sum.wrapping_add(*n))
    }

    /// Each counter under its RabbitMQ name, `deliver_get` being the sum of the four
    /// delivery counters.
    pub fn fields(&self) -> [(&'static str, u64); FIELDS] {
        [
            ("publish", self.publish),
            ("deliver", self.deliver),
            ("deliver_no_ack", self.deliver_no_ack),
            ("get", self.get),
            ("get_no_ack", self.get_no_ack),
            ("deliver_get", self.deliver_get()),
            ("redeliver", self.redeliver),
            ("ack", self.ack),
            ("confirm", self.confirm),
            ("return_unroutable", self.return_unroutable),
            ("drop_unroutable", self.drop_unroutable),
        ]
    }

    pub fn deliver_get(&self) -> u64 {
        self.deliver + self.deliver_no_ack + self.get + self.get_no_ack
    }

    /// Counts one delivery to a consumer (`get`: false) or by basic.get.
    pub fn delivered(&mut self, get: bool, no_ack: bool, redelivered: bool) {
        let counter = match (get, no_ack) {
            (false, false) => &mut self.deliver,
            (false, true) => &mut self.deliver_no_ack,
            (true, false) => &mut self.get,
            (true, true) => &mut self.get_no_ack,
        };
        *counter += 1;
        if redelivered {
            self.redeliver += 1;
        }
    }

    pub fn add(&mut self, other: &MessageStats) {
        self.publish += other.publish;
        self.deliver += other.deliver;
        self.deliver_no_ack += other.deliver_no_ack;
        self.get += other.get;
        self.get_no_ack += other.get_no_ack;
        self.redeliver += other.redeliver;
        self.ack += other.ack;
        self.confirm += other.confirm;
        self.return_unroutable += other.return_unroutable;
        self.drop_unroutable += other.drop_unroutable;
    }
}

/// Per-second rates of each of [`MessageStats::fields`], in the same order.
pub type Rates = [f64; FIELDS];

#[derive(Debug)]
struct Sample {
    at: Instant,
    stats: MessageStats,
    rates: Rates,
    seen: bool,
}

/// The last sample of each counted thing (a queue, a vhost, the node), by key, and the
/// rates between it and the sample before.
#[derive(Debug, Default)]
pub struct Sampler {
    samples: HashMap<String, Sample>,
}

impl Sampler {
    /// Records `stats` for `key` at `now`; the rate is the change since the last sample.
    pub fn record(&mut self, key: String, stats: MessageStats, now: Instant) {
        let sample = self.samples.entry(key).or_insert(Sample {
            at: now,
            stats,
            rates: [0.0; FIELDS],
            seen: true,
        });
        let secs = now.saturating_duration_since(sample.at).as_secs_f64();
        if secs > 0.0 {
            let (old, new) = (sample.stats.fields(), stats.fields());
            for (i, rate) in sample.rates.iter_mut().enumerate() {
                *rate = new[i].1.saturating_sub(old[i].1) as f64 / secs;
            }
        }
        sample.at = now;
        sample.stats = stats;
        sample.seen = true;
    }

    /// Forgets what was not recorded since the last call (deleted queues).
    pub fn end_round(&mut self) {
        self.samples.retain(|_, s| std::mem::take(&mut s.seen));
    }

    /// The latest rates of `key`; zero before two samples.
    pub fn rates(&self, key: &str) -> Rates {
        self.samples.get(key).map_or([0.0; FIELDS], |s| s.rates)
    }
}

/// A queue's length: ready messages and deliveries awaiting an ack.
pub type Depth = [u64; 2];

/// Per-second rates of change of `messages` (ready and unacknowledged together),
/// `messages_ready` and `messages_unacknowledged`: RabbitMQ's `*_details.rate` of queue
/// lengths, negative while a queue drains.
pub type DepthRates = [f64; 3];

#[derive(Debug)]
struct DepthSample {
    at: Instant,
    depth: Depth,
    rates: DepthRates,
    seen: bool,
}

/// The last sampled length of each queue, vhost and the node, by key, and its rates of
/// change since the sample before: sampled by the management API every few seconds,
/// read when it answers.
#[derive(Debug, Default)]
pub struct DepthSampler {
    samples: HashMap<String, DepthSample>,
}

impl DepthSampler {
    /// Records `depth` for `key` at `now`; the rates are the change since the last sample.
    pub fn record(&mut self, key: String, depth: Depth, now: Instant) {
        let sample = self.samples.entry(key).or_insert(DepthSample {
            at: now,
            depth,
            rates: [0.0; 3],
            seen: true,
        });
        let secs = now.saturating_duration_since(sample.at).as_secs_f64();
        if secs > 0.0 {
            let change = |new: u64, old: u64| (new as f64 - old as f64) / secs;
            let [ready, unacked] = depth;
            let [old_ready, old_unacked] = sample.depth;
            sample.rates = [
                change(ready + unacked, old_ready + old_unacked),
                change(ready, old_ready),
                change(unacked, old_unacked),
            ];
        }
        sample.at = now;
        sample.depth = depth;
        sample.seen = true;
    }

    /// Forgets what was not recorded since the last call (deleted queues).
    pub fn end_round(&mut self) {
        self.samples.retain(|_, s| std::mem::take(&mut s.seen));
    }

    /// The latest rates of `key`; zero before two samples.
    pub fn rates(&self, key: &str) -> DepthRates {
        self.samples.get(key).map_or([0.0; 3], |s| s.rates)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn rates_follow_counter_changes() {
        let mut s = Sampler::default();
        let t0 = Instant::now();
        let mut stats = MessageStats::default();
        s.record("q".into(), stats, t0);
        assert_eq!(s.rates("q")[0], 0.0);
        stats.publish = 50;
        stats.delivered(false, false, true);
        s.record("q".into(), stats, t0 + Duration::from_secs(5));
        let rates = s.rates("q");
        assert_eq!(rates[0], 10.0);
        assert_eq!(stats.fields()[5], ("deliver_get", 1));
        assert_eq!(rates[5], 0.2);
        s.end_round();
        s.end_round();
        assert_eq!(s.rates("q")[0], 0.0, "unrecorded keys are forgotten");
    }

    #[test]
    fn depth_rates_follow_queue_lengths() {
        let mut s = DepthSampler::default();
        let t0 = Instant::now();
        s.record("q".into(), [10, 0], t0);
        assert_eq!(s.rates("q"), [0.0; 3]);
        s.record("q".into(), [0, 5], t0 + Duration::from_secs(5));
        assert_eq!(s.rates("q"), [-1.0, -2.0, 1.0]);
        s.end_round();
        s.end_round();
        assert_eq!(s.rates("q"), [0.0; 3], "unrecorded keys are forgotten");
    }
}
