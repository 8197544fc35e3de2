//! Rates of change of queue lengths (`messages_details`, `messages_ready_details`,
//! `messages_unacknowledged_details`), which RabbitMQ reports for queues, vhosts and the
//! node. The broker counts nothing for them: the management server samples the lengths
//! every few seconds while it runs, as RabbitMQ's management plugin samples its stats.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::amqp::node::Node;
use crate::amqp::stats::{DepthRates, DepthSampler};

/// How often queue lengths are sampled (RabbitMQ's default stats interval).
pub const INTERVAL: Duration = Duration::from_secs(5);

/// The sampler's key for the node's totals.
const OVERVIEW: &str = "overview";

/// The sampled queue lengths of a node.
#[derive(Debug, Default)]
pub struct Depths {
    sampler: Mutex<DepthSampler>,
}

impl Depths {
    /// Records every queue's length, each vhost's and the node's.
    pub fn sample(&self, node: &Node) {
        let now = Instant::now();
        let mut samples = Vec::new();
        let mut total = [0u64; 2];
        for v in node.vhosts() {
            let mut in_vhost = [0u64; 2];
            for (queue, ready, unacked) in v.depths() {
                in_vhost[0] += ready;
                in_vhost[1] += unacked;
                samples.push((queue_key(v.name(), &queue), [ready, unacked]));
            }
            total[0] += in_vhost[0];
            total[1] += in_vhost[1];
            samples.push((vhost_key(v.name()), in_vhost));
        }
        samples.push((OVERVIEW.to_string(), total));
        let mut sampler = self.lock();
        for (key, depth) in samples {
            sampler.record(key, depth, now);
        }
        sampler.end_round();
    }

    pub fn overview(&self) -> DepthRates {
        self.lock().rates(OVERVIEW)
    }

    pub fn vhost(&self, vhost: &str) -> DepthRates {
        self.lock().rates(&vhost_key(vhost))
    }

    pub fn queue(&self, vhost: &str, queue: &str) -> DepthRates {
        self.lock().rates(&queue_key(vhost, queue))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DepthSampler> {
        self.sampler.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn vhost_key(vhost: &str) -> String {
    format!("vhost\0{vhost}")
}

fn queue_key(vhost: &str, queue: &str) -> String {
    format!("queue\0{vhost}\0{queue}")
}
