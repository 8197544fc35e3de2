//! Queues: the messages waiting in order, and the consumers they are handed to in turn;
//! with the limits of their arguments: message TTL (checked at the head, as RabbitMQ
//! does), maximum length and bytes, and the bytes they hold counted towards the broker's
//! memory watermark.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::types::{FieldTable, ShortString};
use bytes::Bytes;

use super::broker::ConnId;
use super::queue_args::{Overflow, QueueArgs, parse_expiration};
use super::stats::MessageStats;

/// A published message. Shared by every queue it was routed to, so a fanout to N queues
/// stores one body.
#[derive(Debug)]
pub struct Message {
    pub exchange: ShortString,
    pub routing_key: ShortString,
    pub properties: AMQPProperties,
    pub body: Bytes,
}

/// A message in one queue. `seq` is its place in the queue, kept so a requeued message
/// goes back where it was, as RabbitMQ does.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    pub seq: u64,
    pub message: Arc<Message>,
    pub redelivered: bool,
    /// When the message expires (the queue's TTL or its own `expiration`, the sooner).
    pub expires_at: Option<Instant>,
}

impl QueuedMessage {
    fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    fn size(&self) -> u64 {
        self.message.body.len() as u64
    }
}

/// What a queue did with a new message.
#[derive(Debug)]
pub enum Admission {
    /// Queued; these older messages were dropped from the head to make room.
    Accepted(Vec<QueuedMessage>),
    /// Refused: the queue is full and its overflow is reject-publish(-dlx).
    Rejected,
}

/// A basic.consume subscription.
#[derive(Debug)]
pub struct Consumer {
    pub tag: ShortString,
    pub conn: ConnId,
    pub channel: u16,
    pub no_ack: bool,
    pub exclusive: bool,
    /// Most unacknowledged deliveries at once; 0 is unlimited.
    pub prefetch: u16,
    pub unacked: u32,
    /// False until consume-ok has been queued, so no delivery overtakes it.
    pub active: bool,
}

/// A declared queue.
#[derive(Debug)]
pub struct Queue {
    pub name: Arc<str>,
    pub durable: bool,
    /// The connection of an exclusive queue.
    pub owner: Option<ConnId>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    pub args: QueueArgs,
    messages: VecDeque<QueuedMessage>,
    /// Body bytes of `messages`.
    bytes: u64,
    /// The broker-wide count of queued bytes, kept in step with `bytes`.
    memory: Arc<AtomicU64>,
    next_seq: u64,
    pub consumers: Vec<Consumer>,
    /// Index of the consumer to try first, for round-robin.
    pub cursor: usize,
    /// Whether any consumer ever subscribed: auto-delete waits for the first one to go.
    pub had_consumers: bool,
    /// Last declare, basic.get or consumer activity, for `x-expires`.
    pub last_used: Instant,
    /// Messages routed in, delivered and acknowledged, for the management API.
    pub stats: MessageStats,
}

impl Queue {
    pub fn new(
        name: &str,
        durable: bool,
        owner: Option<ConnId>,
        auto_delete: bool,
        arguments: FieldTable,
        args: QueueArgs,
        memory: Arc<AtomicU64>,
    ) -> Self {
        Queue {
            name: Arc::from(name),
            durable,
            owner,
            auto_delete,
            arguments,
            args,
            messages: VecDeque::new(),
            bytes: 0,
            memory,
            next_seq: 0,
            consumers: Vec::new(),
            cursor: 0,
            had_consumers: false,
            last_used: Instant::now(),
            stats: MessageStats::default(),
        }
    }

    /// Queues a message at `now`, applying the length limits.
    pub fn enqueue(&mut self, message: Arc<Message>, now: Instant) -> Admission {
        let own_ttl = message
            .properties
            .expiration()
            .as_ref()
            .and_then(|e| parse_expiration(e.as_str()).ok());
        let ttl = match (self.args.message_ttl, own_ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let m = QueuedMessage {
            seq: self.next_seq + 1,
            message,
            redelivered: false,
            expires_at: ttl.map(|t| {
                now.checked_add(t)
                    .unwrap_or(now + Duration::from_secs(1 << 32))
            }),
        };
        let size = m.size();
        if self.args.overflow != Overflow::DropHead
            && self
                .args
                .over_limit(self.messages.len() + 1, self.bytes + size)
        {
            return Admission::Rejected;
        }
        self.next_seq += 1;
        self.add(size);
        self.messages.push_back(m);
        let mut dropped = Vec::new();
        while self.args.over_limit(self.messages.len(), self.bytes) {
            match self.pop() {
                Some(m) => dropped.push(m),
                None => break,
            }
        }
        Admission::Accepted(dropped)
    }

    /// Takes the message at the head.
    pub fn pop(&mut self) -> Option<QueuedMessage> {
        let m = self.messages.pop_front()?;
        self.sub(m.size());
        Some(m)
    }

    /// Removes the expired messages at the head, as RabbitMQ does: one behind an unexpired
    /// message waits for its turn.
    pub fn drop_expired(&mut self, now: Instant) -> Vec<QueuedMessage> {
        let mut expired = Vec::new();
        while self.messages.front().is_some_and(|m| m.expired(now)) {
            if let Some(m) = self.pop() {
                expired.push(m);
            }
        }
        expired
    }

    /// Puts a delivered message back at its original position, marked redelivered. It
    /// keeps its expiry time.
    pub fn requeue(&mut self, mut message: QueuedMessage) {
        message.redelivered = true;
        self.add(message.size());
        let at = self.messages.partition_point(|m| m.seq < message.seq);
        self.messages.insert(at, message);
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    pub fn message_count(&self) -> u32 {
        u32::try_from(self.messages.len()).unwrap_or(u32::MAX)
    }

    /// Body bytes of the ready messages.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn consumer_count(&self) -> u32 {
        u32::try_from(self.consumers.len()).unwrap_or(u32::MAX)
    }

    pub fn purge(&mut self) -> u32 {
        let count = self.message_count();
        self.messages.clear();
        self.sub(self.bytes);
        count
    }

    /// Whether `x-expires` has run out: unused (no consumers, no get, no declare) for
    /// that long.
    pub fn unused_expired(&self, now: Instant) -> bool {
        self.args.expires.is_some_and(|limit| {
            self.consumers.is_empty() && now.saturating_duration_since(self.last_used) >= limit
        })
    }

    fn add(&mut self, size: u64) {
        self.bytes += size;
        self.memory.fetch_add(size, Ordering::Relaxed);
    }

    fn sub(&mut self, size: u64) {
        self.bytes -= size;
        self.memory.fetch_sub(size, Ordering::Relaxed);
    }
}

/// A deleted queue's messages no longer count towards the memory watermark.
impl Drop for Queue {
    fn drop(&mut self) {
        self.memory.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body: &'static [u8], expiration: Option<&str>) -> Arc<Message> {
        let mut properties = AMQPProperties::default();
        if let Some(e) = expiration {
            properties = properties.with_expiration(e.into());
        }
        Arc::new(Message {
            exchange: "".into(),
            routing_key: "q".into(),
            properties,
            body: Bytes::from_static(body),
        })
    }

    fn queue(args: QueueArgs) -> (Queue, Arc<AtomicU64>) {
        let memory = Arc::new(AtomicU64::new(0));
        let q = Queue::new(
            "q",
            false,
            None,
            false,
            FieldTable::default(),
            args,
            memory.clone(),
        );
        (q, memory)
    }

    fn accepted(a: Admission) -> Vec<QueuedMessage> {
        match a {
            Admission::Accepted(dropped) => dropped,
            Admission::Rejected => panic!("rejected"),
        }
    }

    #[test]
    fn requeued_messages_return_to_their_place() {
        let (mut q, memory) = queue(QueueArgs::default());
        let now = Instant::now();
        for _ in 0..4 {
            accepted(q.enqueue(message(b"ab", None), now));
        }
        assert_eq!(memory.load(Ordering::Relaxed), 8);
        let first = q.pop().expect("1");
        let second = q.pop().expect("2");
        assert_eq!(memory.load(Ordering::Relaxed), 4);
        q.requeue(second);
        q.requeue(first);
        let order: Vec<(u64, bool)> = q.messages.iter().map(|m| (m.seq, m.redelivered)).collect();
        assert_eq!(order, vec![(1, true), (2, true), (3, false), (4, false)]);
        assert_eq!(q.purge(), 4);
        assert_eq!(memory.load(Ordering::Relaxed), 0);
        accepted(q.enqueue(message(b"abc", None), now));
        drop(q);
        assert_eq!(
            memory.load(Ordering::Relaxed),
            0,
            "a deleted queue frees its bytes"
        );
    }

    #[test]
    fn only_expired_messages_at_the_head_are_dropped() {
        let ttl = QueueArgs {
            message_ttl: Some(Duration::from_millis(100)),
            ..QueueArgs::default()
        };
        let (mut q, _) = queue(ttl);
        let t0 = Instant::now();
        accepted(q.enqueue(message(b"long", Some("60000")), t0));
        accepted(q.enqueue(message(b"short", Some("10")), t0));
        accepted(q.enqueue(message(b"queue-ttl", None), t0));
        let later = t0 + Duration::from_millis(50);
        assert!(q.drop_expired(later).is_empty(), "head not yet expired");
        let first = q.pop().expect("head");
        assert_eq!(first.message.body.as_ref(), b"long");
        assert_eq!(
            first.expires_at,
            Some(t0 + Duration::from_millis(100)),
            "the queue's shorter TTL wins"
        );
        let expired = q.drop_expired(later);
        assert_eq!(expired.len(), 1, "the 10 ms message, now at the head");
        assert!(q.drop_expired(later).is_empty());
        assert_eq!(q.drop_expired(t0 + Duration::from_millis(100)).len(), 1);
        assert!(q.is_empty());
    }

    #[test]
    fn overflow_drops_the_head_or_rejects_the_publish() {
        let now = Instant::now();
        let (mut q, _) = queue(QueueArgs {
            max_length: Some(2),
            ..QueueArgs::default()
        });
        for b in [&b"1"[..], b"2", b"3"] {
            let dropped = accepted(q.enqueue(message(b, None), now));
            if b == b"3" {
                assert_eq!(dropped.len(), 1);
                assert_eq!(dropped[0].message.body.as_ref(), b"1");
            }
        }
        assert_eq!(q.message_count(), 2);
        let (mut q, _) = queue(QueueArgs {
            max_length_bytes: Some(5),
            overflow: Overflow::RejectPublish,
            ..QueueArgs::default()
        });
        accepted(q.enqueue(message(b"abc", None), now));
        assert!(matches!(
            q.enqueue(message(b"def", None), now),
            Admission::Rejected
        ));
        accepted(q.enqueue(message(b"de", None), now));
        assert_eq!(q.message_count(), 2);
    }

    #[test]
    fn unused_queues_expire_only_without_consumers() {
        let (mut q, _) = queue(QueueArgs {
            expires: Some(Duration::from_millis(100)),
            ..QueueArgs::default()
        });
        let t0 = q.last_used;
        assert!(!q.unused_expired(t0 + Duration::from_millis(99)));
        assert!(q.unused_expired(t0 + Duration::from_millis(100)));
        q.last_used = t0 + Duration::from_millis(50);
        assert!(!q.unused_expired(t0 + Duration::from_millis(100)));
    }
}
