//! Read-only snapshots of a vhost for the management API: totals, queues, exchanges,
//! bindings, channels and consumers, copied out under the lock so no caller holds it while
//! rendering.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use amq_protocol::types::FieldTable;

use super::{Broker, ChannelState, ConnId, Destination, Settle};
use crate::amqp::policy::Policy;
use crate::amqp::stats::MessageStats;

/// A vhost's totals.
#[derive(Debug, Clone, Default)]
pub struct VHostInfo {
    pub name: String,
    pub connections: usize,
    pub channels: usize,
    pub exchanges: usize,
    pub queues: usize,
    pub consumers: usize,
    pub messages_ready: u64,
    pub messages_unacknowledged: u64,
    pub stats: MessageStats,
}

#[derive(Debug, Clone)]
pub struct QueueInfo {
    pub name: String,
    pub durable: bool,
    pub auto_delete: bool,
    pub exclusive: bool,
    /// `classic` or `quorum`.
    pub kind: &'static str,
    pub arguments: FieldTable,
    pub messages_ready: u64,
    pub messages_unacknowledged: u64,
    pub message_bytes_ready: u64,
    /// Body bytes of the deliveries awaiting an ack.
    pub message_bytes_unacknowledged: u64,
    pub consumers: usize,
    pub stats: MessageStats,
    /// The tag of the queue's exclusive consumer, if it has one.
    pub exclusive_consumer_tag: Option<String>,
    /// On a single-active-consumer queue, the tag of the consumer that receives.
    pub single_active_consumer_tag: Option<String>,
    /// Whether some consumer could take a delivery right now: it is active, below its
    /// prefetch and its channel's, and its connection is not congested. A point sample
    /// of what RabbitMQ's `consumer_capacity` averages over time.
    pub consumer_ready: bool,
    /// The policy that applies, and its definition.
    pub policy: Option<Arc<Policy>>,
    /// The operator policy that applies, and its definition.
    pub operator_policy: Option<Arc<Policy>>,
}

#[derive(Debug, Clone)]
pub struct ExchangeInfo {
    pub name: String,
    pub kind: &'static str,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
    pub policy: Option<Arc<Policy>>,
}

#[derive(Debug, Clone)]
pub struct BindingInfo {
    pub source: String,
    pub destination: String,
    /// `queue` or `exchange`.
    pub destination_type: &'static str,
    pub routing_key: String,
    pub arguments: FieldTable,
}

#[derive(Debug, Clone)]
pub struct ChannelInfo {
    pub conn: ConnId,
    pub number: u16,
    pub consumers: usize,
    pub messages_unacknowledged: usize,
    pub prefetch_count: u16,
    pub global_prefetch_count: u16,
    pub transactional: bool,
    /// Deliveries acked inside the open transaction, settled at tx.commit.
    pub acks_uncommitted: usize,
}

#[derive(Debug, Clone)]
pub struct ConsumerInfo {
    pub queue: String,
    pub tag: String,
    pub conn: ConnId,
    pub channel: u16,
    pub ack_required: bool,
    pub exclusive: bool,
    pub prefetch_count: u16,
    /// `x-priority` of basic.consume (0 when not given).
    pub priority: i64,
    /// On a single-active-consumer queue: whether this is the one that receives.
    pub single_active: Option<bool>,
}

impl Broker {
    /// The vhost's totals; deliveries and acks include those of deleted queues.
    pub fn info(&self) -> VHostInfo {
        let core = self.lock();
        let mut stats = core.retired;
        let (mut consumers, mut ready) = (0, 0);
        for q in core.vhost.queues.values() {
            stats.add(&q.stats);
            consumers += q.consumers.len();
            ready += u64::from(q.message_count());
        }
        let returns = self.returns.load(Ordering::Relaxed);
        stats.publish = core.published;
        stats.confirm = self.confirms.load(Ordering::Relaxed);
        stats.return_unroutable = returns;
        stats.drop_unroutable = core.unroutable.saturating_sub(returns);
        VHostInfo {
            name: self.name.clone(),
            connections: core.connections.len(),
            channels: core.channels.len(),
            exchanges: core.vhost.exchanges.len(),
            queues: core.vhost.queues.len(),
            consumers,
            messages_ready: ready,
            messages_unacknowledged: core.channels.values().map(|c| c.unacked.len() as u64).sum(),
            stats,
        }
    }

    /// Every queue, sorted by name.
    pub fn queues(&self) -> Vec<QueueInfo> {
        let core = self.lock();
        // (count, body bytes) of the deliveries awaiting an ack, by queue.
        let mut unacked: HashMap<&str, (u64, u64)> = HashMap::new();
        for state in core.channels.values() {
            for u in state.unacked.values() {
                let entry = unacked.entry(&*u.queue).or_default();
                entry.0 += 1;
                entry.1 += u.message.message.body.len() as u64;
            }
        }
        let mut list: Vec<QueueInfo> = core
            .vhost
            .queues
            .values()
            .map(|q| {
                let (messages_unacknowledged, message_bytes_unacknowledged) =
                    unacked.get(&*q.name).copied().unwrap_or_default();
                let sac = q.args.single_active_consumer;
                // Of a single-active-consumer queue only the first consumer receives.
                let receiving = &q.consumers[..if sac {
                    q.consumers.len().min(1)
                } else {
                    q.consumers.len()
                }];
                let consumer_ready = receiving.iter().any(|c| {
                    let channel_room = core
                        .channels
                        .get(&(c.conn, c.channel))
                        .is_some_and(ChannelState::below_channel_prefetch);
                    let flowing = core
                        .connections
                        .get(&c.conn)
                        .is_some_and(|h| !h.congested.load(Ordering::Relaxed));
                    c.active
                        && (c.prefetch == 0 || c.unacked < u32::from(c.prefetch))
                        && channel_room
                        && flowing
                });
                QueueInfo {
                    name: q.name.to_string(),
                    durable: q.durable,
                    auto_delete: q.auto_delete,
                    exclusive: q.owner.is_some(),
                    kind: q.args.kind.name(),
                    arguments: q.arguments.clone(),
                    messages_ready: u64::from(q.message_count()),
                    messages_unacknowledged,
                    message_bytes_ready: q.bytes(),
                    message_bytes_unacknowledged,
                    consumers: q.consumers.len(),
                    stats: q.stats,
                    exclusive_consumer_tag: q
                        .consumers
                        .iter()
                        .find(|c| c.exclusive)
                        .map(|c| c.tag.to_string()),
                    single_active_consumer_tag: receiving
                        .first()
                        .filter(|_| sac)
                        .map(|c| c.tag.to_string()),
                    consumer_ready,
                    policy: q.policy.clone(),
                    operator_policy: q.operator_policy.clone(),
                }
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// Each queue's name, ready messages and deliveries awaiting an ack: what the
    /// management API samples for the rates of change of queue lengths, without the
    /// rest of [`Broker::queues`].
    pub fn depths(&self) -> Vec<(String, u64, u64)> {
        let core = self.lock();
        let mut unacked: HashMap<&str, u64> = HashMap::new();
        for state in core.channels.values() {
            for u in state.unacked.values() {
                *unacked.entry(&*u.queue).or_default() += 1;
            }
        }
        core.vhost
            .queues
            .values()
            .map(|q| {
                let pending = unacked.get(&*q.name).copied().unwrap_or(0);
                (q.name.to_string(), u64::from(q.message_count()), pending)
            })
            .collect()
    }

    /// Every exchange, the default one included (as `""`), sorted by name.
    pub fn exchanges(&self) -> Vec<ExchangeInfo> {
        let core = self.lock();
        let mut list: Vec<ExchangeInfo> = core
            .vhost
            .exchanges
            .values()
            .map(|x| ExchangeInfo {
                name: x.name.clone(),
                kind: x.kind.as_str(),
                durable: x.durable,
                auto_delete: x.auto_delete,
                internal: x.internal,
                arguments: x.arguments.clone(),
                policy: x.policy.clone(),
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// Every binding, with the default exchange's implicit one to each queue first, as
    /// RabbitMQ lists them.
    pub fn bindings(&self) -> Vec<BindingInfo> {
        let core = self.lock();
        let mut queues: Vec<&str> = core.vhost.queues.keys().map(String::as_str).collect();
        queues.sort_unstable();
        let mut list: Vec<BindingInfo> = queues
            .into_iter()
            .map(|q| BindingInfo {
                source: String::new(),
                destination: q.to_string(),
                destination_type: "queue",
                routing_key: q.to_string(),
                arguments: FieldTable::default(),
            })
            .collect();
        let mut explicit: Vec<BindingInfo> = core
            .vhost
            .exchanges
            .values()
            .flat_map(|x| {
                x.bindings().map(|(key, b)| {
                    let (destination, destination_type) = match &b.destination {
                        Destination::Queue(q) => (q.clone(), "queue"),
                        Destination::Exchange(e) => (e.clone(), "exchange"),
                    };
                    BindingInfo {
                        source: x.name.clone(),
                        destination,
                        destination_type,
                        routing_key: key.to_string(),
                        arguments: b.arguments.clone(),
                    }
                })
            })
            .collect();
        explicit.sort_by(|a, b| {
            (&a.source, &a.destination, &a.routing_key).cmp(&(
                &b.source,
                &b.destination,
                &b.routing_key,
            ))
        });
        list.extend(explicit);
        list
    }

    /// Every consumer, by queue and in the order the queue serves them.
    pub fn consumers(&self) -> Vec<ConsumerInfo> {
        let core = self.lock();
        let mut list: Vec<ConsumerInfo> = core
            .vhost
            .queues
            .values()
            .flat_map(|q| {
                let sac = q.args.single_active_consumer;
                q.consumers
                    .iter()
                    .enumerate()
                    .map(move |(i, c)| ConsumerInfo {
                        queue: q.name.to_string(),
                        tag: c.tag.to_string(),
                        conn: c.conn,
                        channel: c.channel,
                        ack_required: !c.no_ack,
                        exclusive: c.exclusive,
                        prefetch_count: c.prefetch,
                        priority: c.priority,
                        single_active: sac.then_some(i == 0),
                    })
            })
            .collect();
        // Stable: a queue's consumers keep their serving order.
        list.sort_by(|a, b| a.queue.cmp(&b.queue));
        list
    }

    /// Every open channel, by connection and number.
    pub fn channels(&self) -> Vec<ChannelInfo> {
        let core = self.lock();
        let mut list: Vec<ChannelInfo> = core
            .channels
            .iter()
            .map(|(&(conn, number), s)| ChannelInfo {
                conn,
                number,
                consumers: s.consumers.len(),
                messages_unacknowledged: s.unacked.len(),
                prefetch_count: s.consumer_prefetch,
                global_prefetch_count: s.channel_prefetch,
                transactional: s.tx,
                acks_uncommitted: s
                    .tx_settled
                    .iter()
                    .filter(|(_, settle)| *settle == Settle::Ack)
                    .map(|(tags, _)| tags.len())
                    .sum(),
            })
            .collect();
        list.sort_by_key(|c| (c.conn, c.number));
        list
    }
}
