//! Queues: the messages waiting in order (by priority first, with `x-max-priority`; see
//! `ready`), and the consumers they are handed to in turn; with the limits of their
//! arguments: message TTL (checked at the head, as RabbitMQ does), maximum length and
//! bytes (of the ready messages only, as RabbitMQ counts them, so a message that goes
//! straight to a consumer is never dropped for length). The memory watermark counts
//! messages through the messages themselves (see `flow`), wherever they are held. A
//! durable queue also tells the journal what becomes of its persistent messages
//! (delivered, settled, purged), so the log can tell which are still live.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, SystemTime};

use amq_protocol::protocol::basic::{AMQPProperties, gen_properties};
use amq_protocol::types::{AMQPValue, FieldTable, ShortString};
use bytes::Bytes;

use super::broker::ConnId;
use super::flow::Charge;
use super::policy::{Effect, Policy};
use super::queue_args::{Overflow, QueueArgs, QueueType, parse_expiration};
use super::ready::Ready;
use super::stats::MessageStats;
use super::store::{Journal, Record, unix_ms};
use super::stream::{self, Stream};

/// A published message. Shared by every queue it was routed to, so a fanout to N queues
/// stores one body, counted once towards the memory watermark.
#[derive(Debug)]
pub struct Message {
    pub exchange: ShortString,
    pub routing_key: ShortString,
    /// Private, so that no change can leave `raw_properties` behind it.
    properties: AMQPProperties,
    /// The properties as the publisher encoded them, while they are unchanged.
    raw_properties: Option<Bytes>,
    pub body: Bytes,
    /// The keys of the `BCC` header taken off at publish: the message still routes by
    /// them when it is dead-lettered with its own keys, as RabbitMQ's keeps them.
    bcc: Option<Box<[String]>>,
    /// The body's bytes in the memory watermark, released with the message.
    charge: Charge,
}

impl Message {
    /// A message not yet counted towards the memory watermark.
    pub fn new(
        exchange: ShortString,
        routing_key: ShortString,
        properties: AMQPProperties,
        body: Bytes,
    ) -> Self {
        Message {
            exchange,
            routing_key,
            properties,
            raw_properties: None,
            body,
            bcc: None,
            charge: Charge::default(),
        }
    }

    /// The same message, routed by these `BCC` keys too when dead-lettered.
    pub fn with_bcc(mut self, bcc: &[String]) -> Self {
        self.bcc = (!bcc.is_empty()).then(|| bcc.into());
        self
    }

    pub fn bcc(&self) -> &[String] {
        self.bcc.as_deref().unwrap_or_default()
    }

    /// The same message, its properties delivered as `raw` (their encoding by the
    /// publisher) for as long as they are not changed.
    pub fn with_raw_properties(mut self, raw: Bytes) -> Self {
        self.raw_properties = Some(raw);
        self
    }

    pub fn properties(&self) -> &AMQPProperties {
        &self.properties
    }

    /// For a change of the properties: from then on they are encoded anew.
    pub fn properties_mut(&mut self) -> &mut AMQPProperties {
        self.raw_properties = None;
        &mut self.properties
    }

    /// Drops the `BCC` header, which the message routes by and no one may see: not its
    /// consumers, nor a publisher it is returned to. Its keys are kept aside.
    pub fn strip_bcc(&mut self) {
        if let Some(AMQPValue::FieldArray(keys)) = self
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("BCC"))
        {
            let keys: Vec<String> = keys
                .as_slice()
                .iter()
                .filter_map(|v| match v {
                    AMQPValue::LongString(s) => {
                        Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                    }
                    _ => None,
                })
                .collect();
            self.bcc = (!keys.is_empty()).then(|| keys.into());
        }
        if self
            .properties
            .headers()
            .as_ref()
            .is_some_and(|h| h.inner().contains_key("BCC"))
        {
            let kept: std::collections::BTreeMap<_, _> = self
                .properties
                .headers()
                .iter()
                .flat_map(|h| h.inner())
                .filter(|(k, _)| k.as_str() != "BCC")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let properties = std::mem::take(self.properties_mut());
            self.properties = properties.with_headers(FieldTable::from(kept));
        }
    }

    pub fn raw_properties(&self) -> Option<&Bytes> {
        self.raw_properties.as_ref()
    }

    /// Its body and encoded properties: what a stream counts for its segments and its
    /// `x-max-length-bytes` (a message with an empty body still takes room).
    pub fn content_bytes(&self) -> u64 {
        let properties = match &self.raw_properties {
            Some(raw) => raw.len(),
            // Only for messages the broker made (dead-lettered, traced): encoded once here.
            None => cookie_factory::gen_simple(gen_properties(&self.properties), Vec::new())
                .map_or(2, |encoded| encoded.len()),
        };
        self.body.len() as u64 + properties as u64
    }

    /// Counts the message in `memory` until it is dropped: its content and the broker's
    /// bookkeeping for it, so that many small messages trip the watermark as surely as
    /// a few large ones. Done once, by the broker, when the message becomes its own.
    pub fn charge(&mut self, memory: &Arc<AtomicU64>) {
        self.charge = Charge::new(memory, self.content_bytes() + HELD_OVERHEAD);
    }
}

/// What holding a message costs the broker beyond its content: the message itself, its
/// place in a queue, its routing key and the frames it arrived in. Measured at about
/// 630 bytes per message with 100,000 small messages in one queue; counted a little low
/// rather than high, since the watermark is a threshold, not an allocator.
pub const HELD_OVERHEAD: u64 = 512;

/// Equal content; what the message is charged to is bookkeeping.
impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        self.exchange == other.exchange
            && self.routing_key == other.routing_key
            && self.properties == other.properties
            && self.body == other.body
    }
}

/// A message in one queue. `seq` is its place in the queue, kept so a requeued message
/// goes back where it was, as RabbitMQ does.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    pub seq: u64,
    pub message: Arc<Message>,
    pub redelivered: bool,
    /// Times it was given back (nack or reject with requeue, a channel closed): a quorum
    /// queue's delivery count.
    pub returned: u32,
    /// When the message expires (the queue's TTL or its own `expiration`, the sooner).
    pub expires_at: Option<Instant>,
    /// Its id in the journal, when it is persistent and the queue durable.
    pub stored: Option<u64>,
}

impl QueuedMessage {
    pub(super) fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    fn size(&self) -> u64 {
        self.message.body.len() as u64
    }
}

/// How a delivered message comes back to its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Return {
    /// Given back by its consumer: basic.nack, basic.reject or basic.recover.
    Given,
    /// Let go with its channel or connection.
    Released,
}

/// What a queue did with a new message.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Queued, perhaps past a drop-head limit: [`Queue::trim`] drops what is too much
    /// once consumers had their chance.
    Accepted,
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
    /// `x-priority` of basic.consume: higher ones are served first while they have room.
    pub priority: i64,
    pub unacked: u32,
    /// False until consume-ok has been queued, so no delivery overtakes it.
    pub active: bool,
    /// A stream consumer's next offset to read.
    pub reads_from: Option<u64>,
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
    /// What `arguments` say.
    pub declared: QueueArgs,
    /// What applies: `declared` under `policy` and `operator_policy`.
    pub args: QueueArgs,
    /// The vhost's policy that matches the queue, if any.
    pub policy: Option<Arc<Policy>>,
    /// The vhost's operator policy that matches the queue, if any.
    pub operator_policy: Option<Arc<Policy>>,
    messages: Ready,
    /// Body bytes of `messages`, for `x-max-length-bytes`.
    bytes: u64,
    /// A quorum queue with reject-publish went over its limits and refuses publishes
    /// until it is back under 80% of them.
    refusing: bool,
    /// Of a quorum queue's messages, how many at the head came back to it (see
    /// [`Queue::requeue`]).
    returns: usize,
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
    /// Where a durable queue records the fate of its persistent messages.
    pub journal: Option<Journal>,
    /// A stream queue's log; its `messages` stay empty.
    pub stream: Option<Stream>,
}

impl Queue {
    pub fn new(
        name: &str,
        durable: bool,
        owner: Option<ConnId>,
        auto_delete: bool,
        arguments: FieldTable,
        args: QueueArgs,
    ) -> Self {
        let messages = Ready::new(args.max_priority);
        let stream = (args.kind == QueueType::Stream).then(Stream::default);
        Queue {
            name: Arc::from(name),
            durable,
            owner,
            auto_delete,
            arguments,
            declared: args.clone(),
            args,
            policy: None,
            operator_policy: None,
            messages,
            bytes: 0,
            refusing: false,
            returns: 0,
            next_seq: 0,
            consumers: Vec::new(),
            cursor: 0,
            had_consumers: false,
            last_used: Instant::now(),
            stats: MessageStats::default(),
            journal: None,
            stream,
        }
    }

    /// Queues a message at `now`, unless a reject-publish limit refuses it. `stored` is
    /// its journal id when it was logged for this queue.
    pub fn enqueue(
        &mut self,
        message: Arc<Message>,
        now: Instant,
        stored: Option<u64>,
    ) -> Admission {
        if self.stream.is_some() {
            self.append(message, unix_ms(SystemTime::now()));
            return Admission::Accepted;
        }
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
            returned: 0,
            expires_at: ttl.map(|t| {
                now.checked_add(t)
                    .unwrap_or(now + Duration::from_secs(1 << 32))
            }),
            stored: stored.filter(|_| self.journal.is_some()),
        };
        let size = m.size();
        if self.refuses(size) {
            self.settled(&m);
            return Admission::Rejected;
        }
        self.next_seq += 1;
        self.add(size);
        self.messages.push_back(m);
        self.refuse_if_over();
        Admission::Accepted
    }

    /// Appends to a stream, then applies its retention if a segment was completed.
    fn append(&mut self, message: Arc<Message>, published_ms: u64) {
        let segment = self
            .args
            .max_segment_bytes
            .unwrap_or(stream::DEFAULT_SEGMENT_BYTES);
        if let Some(s) = &mut self.stream
            && s.append(message, published_ms, segment)
        {
            self.retain(published_ms);
        }
    }

    /// Drops what a stream's retention (`x-max-length-bytes`, `x-max-age`) no longer
    /// keeps at `now_ms`; the journal learns the new first offset with the drop, in one
    /// record, so offsets survive a restart or a crash.
    pub fn retain(&mut self, now_ms: u64) {
        let Some(s) = &mut self.stream else {
            return;
        };
        let dropped = s.retain(self.args.max_length_bytes, self.args.max_age, now_ms);
        if !dropped.is_empty()
            && let Some(journal) = &self.journal
        {
            journal.append(Record::StreamTrim {
                queue: self.name.clone(),
                offset: s.first(),
            });
        }
    }

    /// Puts back a stream recovered from the journal: its first offset, then its
    /// messages in order.
    pub fn restore_stream(
        &mut self,
        first: u64,
        messages: impl IntoIterator<Item = (Arc<Message>, u64)>,
    ) {
        self.stream = Some(Stream::starting_at(first));
        for (message, published_ms) in messages {
            self.append(message, published_ms);
        }
    }

    /// What the queue does when full: as its arguments and policy say, except that a
    /// quorum queue has no reject-publish-dlx and drops the head instead, as RabbitMQ's
    /// do (with a warning in its log).
    pub fn overflow(&self) -> Overflow {
        match (self.args.overflow, self.args.kind) {
            (Overflow::RejectPublishDlx, QueueType::Quorum) => Overflow::DropHead,
            (overflow, _) => overflow,
        }
    }

    /// Whether reject-publish refuses a message of `size` bytes. A classic queue refuses
    /// one that would take it over a limit. A quorum queue (RabbitMQ's `rabbit_fifo`)
    /// takes messages until it is over, and then refuses them until it is back under
    /// 80% of its limits.
    fn refuses(&self, size: u64) -> bool {
        match (self.overflow(), self.args.kind) {
            (Overflow::DropHead, _) => false,
            (Overflow::RejectPublish, QueueType::Quorum) => self.refusing,
            _ => self
                .args
                .over_limit(self.messages.len() + 1, self.bytes + size),
        }
    }

    /// Starts a quorum queue's refusals once it is over its limits.
    fn refuse_if_over(&mut self) {
        if self.args.kind == QueueType::Quorum
            && self.overflow() == Overflow::RejectPublish
            && self.args.over_limit(self.messages.len(), self.bytes)
        {
            self.refusing = true;
        }
    }

    /// Drops messages from the head while a drop-head queue is over its length limits,
    /// as RabbitMQ does after a publish no consumer took and after messages are given
    /// back; the caller dead-letters them in the order returned: oldest first, or for a
    /// quorum queue newest first, as `rabbit_fifo` emits them.
    #[must_use]
    pub fn trim(&mut self) -> Vec<QueuedMessage> {
        if self.overflow() != Overflow::DropHead {
            return Vec::new();
        }
        let mut dropped = Vec::new();
        while self.args.over_limit(self.messages.len(), self.bytes) {
            match self.pop() {
                Some(m) => {
                    self.settled(&m);
                    dropped.push(m);
                }
                None => break,
            }
        }
        if self.args.kind == QueueType::Quorum {
            dropped.reverse();
        }
        dropped
    }

    /// Puts the queue under `policy` and `operator` (or none). A drop-head queue whose limit fell drops
    /// its oldest messages at once, as RabbitMQ's does; the caller dead-letters them.
    /// Messages already queued keep the expiry they were given.
    #[must_use]
    pub fn set_policy(
        &mut self,
        policy: Option<Arc<Policy>>,
        operator: Option<Arc<Policy>>,
    ) -> Vec<QueuedMessage> {
        let effect = Effect::merged(
            policy.as_deref().map(|p| &p.effect),
            operator.as_deref().map(|p| &p.effect),
        );
        self.args = self.declared.with_policy(&self.arguments, effect.as_ref());
        self.policy = policy;
        self.operator_policy = operator;
        self.refusing = false;
        self.refuse_if_over();
        self.trim()
    }

    /// Puts back a message recovered from the journal, at the tail, as published at
    /// `published` (so its TTL keeps counting from then), redelivered if it had been
    /// delivered.
    pub fn restore(&mut self, message: Arc<Message>, id: u64, delivered: bool, published: Instant) {
        if self.enqueue(message, published, Some(id)) == Admission::Accepted
            && let Some(m) = self.messages.last_added_mut(id)
        {
            m.redelivered = delivered;
        }
        // No consumer yet: what the limits do not allow is dropped as it was logged.
        let _ = self.trim();
    }

    /// Records that a message left the queue for a consumer: one that must ack it is
    /// remembered as delivered (redelivered after a restart); for one that will not, the
    /// message is gone.
    pub fn delivered(&self, m: &QueuedMessage, no_ack: bool) {
        if no_ack {
            self.settled(m);
        } else if !m.redelivered
            && let (Some(journal), Some(id)) = (&self.journal, m.stored)
        {
            journal.append(Record::Delivered {
                queue: self.name.clone(),
                id,
            });
        }
    }

    /// Records that a message left the queue for good (acked, rejected, expired, dropped).
    pub fn settled(&self, m: &QueuedMessage) {
        if let (Some(journal), Some(id)) = (&self.journal, m.stored) {
            journal.append(Record::Settle {
                queue: self.name.clone(),
                id,
            });
        }
    }

    /// Takes the message at the head.
    pub fn pop(&mut self) -> Option<QueuedMessage> {
        let m = self.messages.pop_front()?;
        self.returns = self.returns.saturating_sub(1);
        self.sub(m.size());
        Some(m)
    }

    /// Removes the expired messages at the head, as RabbitMQ does: one behind an unexpired
    /// message waits for its turn.
    pub fn drop_expired(&mut self, now: Instant) -> Vec<QueuedMessage> {
        let expired = self.messages.pop_expired(now);
        self.returns = self.returns.saturating_sub(expired.len());
        for m in &expired {
            self.sub(m.size());
            self.settled(m);
        }
        expired
    }

    /// Puts a delivered message back, marked redelivered; it keeps its expiry time. A
    /// classic queue puts it where it was. A quorum queue does what RabbitMQ 3.10's
    /// `rabbit_fifo` does: one given back goes to the tail, or, with an
    /// `x-delivery-limit`, to the head behind those returned before it; one let go with
    /// its channel goes there too. It hands back one given back more often than its
    /// delivery limit: the caller settles and dead-letters it.
    #[must_use]
    pub fn requeue(&mut self, mut message: QueuedMessage, how: Return) -> Option<QueuedMessage> {
        if self.stream.is_some() {
            // It never left the stream.
            return None;
        }
        message.redelivered = true;
        message.returned = message.returned.saturating_add(1);
        if self.args.kind == QueueType::Quorum
            && self
                .args
                .delivery_limit
                .is_some_and(|limit| i64::from(message.returned) > limit)
        {
            return Some(message);
        }
        self.add(message.size());
        match self.args.kind {
            QueueType::Quorum if how == Return::Given && self.args.delivery_limit.is_none() => {
                self.messages.push_back(message);
            }
            QueueType::Quorum => {
                self.messages.insert_at(self.returns, message);
                self.returns += 1;
            }
            QueueType::Classic | QueueType::Stream => self.messages.insert_in_place(message),
        }
        self.refuse_if_over();
        None
    }

    /// The message as a consumer (`get` false) or basic.get receives it: from a quorum
    /// queue with RabbitMQ's `x-delivery-count` header, which basic.get always carries
    /// and a delivery once the message has been given back.
    pub fn outgoing(&self, m: &QueuedMessage, get: bool) -> Arc<Message> {
        if self.args.kind != QueueType::Quorum || (!get && m.returned == 0) {
            return m.message.clone();
        }
        let original = &m.message;
        let mut headers = original.properties.headers().clone().unwrap_or_default();
        headers.insert(
            "x-delivery-count".into(),
            AMQPValue::LongLongInt(i64::from(m.returned)),
        );
        Arc::new(Message::new(
            original.exchange.clone(),
            original.routing_key.clone(),
            original.properties.clone().with_headers(headers),
            original.body.clone(),
        ))
    }

    pub fn is_empty(&self) -> bool {
        self.stream
            .as_ref()
            .map_or(self.messages.is_empty(), Stream::is_empty)
    }

    pub fn message_count(&self) -> u32 {
        let len = self
            .stream
            .as_ref()
            .map_or(self.messages.len(), Stream::len);
        u32::try_from(len).unwrap_or(u32::MAX)
    }

    /// Body bytes of the ready messages (of a stream, of all it holds).
    pub fn bytes(&self) -> u64 {
        self.stream.as_ref().map_or(self.bytes, Stream::bytes)
    }

    pub fn consumer_count(&self) -> u32 {
        u32::try_from(self.consumers.len()).unwrap_or(u32::MAX)
    }

    pub fn purge(&mut self) -> u32 {
        let count = self.message_count();
        if let Some(journal) = &self.journal
            && self.messages.iter().any(|m| m.stored.is_some())
        {
            journal.append(Record::Purge {
                queue: self.name.clone(),
            });
        }
        self.messages.clear();
        self.returns = 0;
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
    }

    fn sub(&mut self, size: u64) {
        self.bytes -= size;
        if self.refusing && self.args.below_soft_limit(self.messages.len(), self.bytes) {
            self.refusing = false;
        }
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
        Arc::new(Message::new(
            "".into(),
            "q".into(),
            properties,
            Bytes::from_static(body),
        ))
    }

    fn queue(args: QueueArgs) -> Queue {
        Queue::new("q", false, None, false, FieldTable::default(), args)
    }

    fn accepted(a: Admission) {
        assert_eq!(a, Admission::Accepted);
    }

    #[test]
    fn requeued_messages_return_to_their_place() {
        let mut q = queue(QueueArgs::default());
        let now = Instant::now();
        for _ in 0..4 {
            accepted(q.enqueue(message(b"ab", None), now, None));
        }
        assert_eq!(q.bytes(), 8);
        let first = q.pop().expect("1");
        let second = q.pop().expect("2");
        assert_eq!(
            q.bytes(),
            4,
            "only ready messages count for x-max-length-bytes"
        );
        assert!(q.requeue(second, Return::Given).is_none());
        assert!(q.requeue(first, Return::Released).is_none());
        let order: Vec<(u64, bool)> = q.messages.iter().map(|m| (m.seq, m.redelivered)).collect();
        assert_eq!(order, vec![(1, true), (2, true), (3, false), (4, false)]);
        assert_eq!(q.purge(), 4);
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn a_message_counts_towards_memory_until_its_last_holder_lets_go() {
        let memory = Arc::new(AtomicU64::new(0));
        let used = || memory.load(std::sync::atomic::Ordering::Relaxed);
        let mut m = Message::new(
            "".into(),
            "q".into(),
            AMQPProperties::default(),
            "abcd".into(),
        );
        assert_eq!(
            m.content_bytes(),
            6,
            "the body and two bytes of property flags"
        );
        let held = 6 + HELD_OVERHEAD;
        m.charge(&memory);
        let m = Arc::new(m);
        let (mut a, mut b) = (queue(QueueArgs::default()), queue(QueueArgs::default()));
        accepted(a.enqueue(m.clone(), Instant::now(), None));
        accepted(b.enqueue(m, Instant::now(), None));
        assert_eq!(used(), held, "one message, however many queues hold it");
        let delivered = a.pop().expect("delivered");
        drop(b);
        assert_eq!(used(), held, "delivered but not acked: still held");
        drop(delivered);
        assert_eq!(used(), 0);
    }

    #[test]
    fn only_expired_messages_at_the_head_are_dropped() {
        let ttl = QueueArgs {
            message_ttl: Some(Duration::from_millis(100)),
            ..QueueArgs::default()
        };
        let mut q = queue(ttl);
        let t0 = Instant::now();
        accepted(q.enqueue(message(b"long", Some("60000")), t0, None));
        accepted(q.enqueue(message(b"short", Some("10")), t0, None));
        accepted(q.enqueue(message(b"queue-ttl", None), t0, None));
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
        let mut q = queue(QueueArgs {
            max_length: Some(2),
            ..QueueArgs::default()
        });
        for b in [&b"1"[..], b"2", b"3"] {
            accepted(q.enqueue(message(b, None), now, None));
        }
        assert_eq!(q.message_count(), 3, "past the limit until trimmed");
        let dropped = q.trim();
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].message.body.as_ref(), b"1");
        assert_eq!(q.message_count(), 2);
        // Given back, the oldest return to the head and are the ones dropped.
        let (first, second) = (q.pop().expect("2"), q.pop().expect("3"));
        accepted(q.enqueue(message(b"4", None), now, None));
        accepted(q.enqueue(message(b"5", None), now, None));
        assert!(q.requeue(second, Return::Given).is_none());
        assert!(q.requeue(first, Return::Given).is_none());
        let dropped: Vec<Bytes> = q
            .trim()
            .into_iter()
            .map(|m| m.message.body.clone())
            .collect();
        assert_eq!(dropped, [&b"2"[..], b"3"]);
        assert_eq!(q.bytes(), 2);
        let mut q = queue(QueueArgs {
            max_length_bytes: Some(5),
            overflow: Overflow::RejectPublish,
            ..QueueArgs::default()
        });
        accepted(q.enqueue(message(b"abc", None), now, None));
        assert!(matches!(
            q.enqueue(message(b"def", None), now, None),
            Admission::Rejected
        ));
        accepted(q.enqueue(message(b"de", None), now, None));
        assert_eq!(q.message_count(), 2);
    }

    fn bodies(q: &Queue) -> Vec<&[u8]> {
        q.messages.iter().map(|m| m.message.body.as_ref()).collect()
    }

    #[test]
    fn quorum_queues_requeue_to_the_tail_or_behind_earlier_returns() {
        let now = Instant::now();
        for (delivery_limit, how, expected) in [
            (None, Return::Given, [&b"3"[..], b"2", b"1"]),
            (Some(10), Return::Given, [&b"2"[..], b"1", b"3"]),
            (None, Return::Released, [&b"2"[..], b"1", b"3"]),
        ] {
            let mut q = queue(QueueArgs {
                kind: QueueType::Quorum,
                delivery_limit,
                ..QueueArgs::default()
            });
            for b in [&b"1"[..], b"2", b"3"] {
                accepted(q.enqueue(message(b, None), now, None));
            }
            let (first, second) = (q.pop().expect("1"), q.pop().expect("2"));
            assert!(q.requeue(second, how).is_none() && q.requeue(first, how).is_none());
            assert_eq!(bodies(&q), expected, "{delivery_limit:?} {how:?}");
            let head = q.pop().expect("head");
            assert_eq!(
                head.redelivered,
                head.message.body != b"3"[..],
                "only 3 is new"
            );
        }
    }

    #[test]
    fn quorum_reject_publish_refuses_from_over_the_limit_to_80_percent() {
        let now = Instant::now();
        let mut q = queue(QueueArgs {
            kind: QueueType::Quorum,
            max_length: Some(5),
            overflow: Overflow::RejectPublish,
            ..QueueArgs::default()
        });
        for _ in 0..6 {
            accepted(q.enqueue(message(b"m", None), now, None));
        }
        assert_eq!(
            q.enqueue(message(b"m", None), now, None),
            Admission::Rejected
        );
        q.pop();
        assert_eq!(
            q.enqueue(message(b"m", None), now, None),
            Admission::Rejected,
            "5 left"
        );
        q.pop();
        accepted(q.enqueue(message(b"m", None), now, None));
        // A quorum queue has no reject-publish-dlx: it drops the head.
        q.args.overflow = Overflow::RejectPublishDlx;
        assert_eq!(q.overflow(), Overflow::DropHead);
    }

    #[test]
    fn unused_queues_expire_only_without_consumers() {
        let mut q = queue(QueueArgs {
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
