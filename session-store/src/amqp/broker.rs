//! One virtual host's shared state: its exchanges and queues, its connections, and per
//! channel the deliveries awaiting acknowledgement. Each vhost is a `Broker` of its own
//! (see `node`), so vhosts share nothing but the memory watermark.
//!
//! Everything sits behind one mutex, held only for in-memory work and never across an
//! await: simple and correct first. Deliveries leave through each connection's bounded
//! outbound queue with `try_reserve`; when it is full the connection is marked congested,
//! messages stay queued, and its writer calls [`Broker::resume`] once it has drained.
//!
//! Messages leave a queue by delivery, expiry (checked at the head when the queue is
//! touched and by [`Broker::tick`]), length limits or rejection; the last three
//! dead-letter them when the queue has a dead-letter exchange.
//!
//! With a journal, changes to durable things are also appended to it (see `store`), in
//! the same critical section as the change itself, so the log's order is the broker's.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::protocol::{AMQPClass, basic, exchange, queue};
use amq_protocol::types::{AMQPValue, FieldTable, ShortString};
use base64::Engine as _;
use tokio::sync::mpsc::{self, error::TrySendError};

mod inspect;

pub use inspect::VHostInfo;

use super::churn::{self, Churn};
use super::codec::Outbound;
use super::dead_letter::{self, Reason, Target};
use super::error::AmqpError;
use super::exchange::{Binding, Destination, Exchange, ExchangeKind};
use super::flow::MemoryMonitor;
use super::policy::{Kind, Policies, Policy};
use super::queue::{Admission, Consumer, Message, Queue, QueuedMessage, Return};
use super::queue_args::{
    Overflow, QueueArgs, QueueType, check_args_equivalent, check_equivalent, consumer_priority,
    erlang_binary, erlang_term, type_name,
};
use super::reply_to::{self, Replies, ReplyConsumer};
use super::stats::MessageStats;
use super::store::{self, BindingRecord, Journal, Record};
use super::stream::{self, Start, Stream};
use super::trace;
use super::vhost_meta::VHostMeta;

/// Identifies a client connection inside the broker.
pub type ConnId = u64;

/// Channels whose oldest unacknowledged delivery waited longer than the consumer
/// timeout, for their connection to close (with the timeout in ms), as RabbitMQ closes
/// them: a consumer that hangs gives its messages back to the queue.
#[derive(Debug, Default)]
pub struct TimedOut {
    channels: Mutex<Vec<(u16, u128)>>,
    notify: tokio::sync::Notify,
}

impl TimedOut {
    /// Waits until some channel timed out.
    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    /// The channels that timed out since the last call, each with the timeout in ms.
    pub fn take(&self) -> Vec<(u16, u128)> {
        std::mem::take(&mut *self.channels.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn push(&self, channel: u16, timeout: Duration) {
        self.channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((channel, timeout.as_millis()));
        self.notify.notify_one();
    }
}

/// A connection as the broker core sees it: where its frames go.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    pub tx: mpsc::Sender<Outbound>,
    /// Where the consumer timeout tells the connection to close a channel.
    pub timed_out: Arc<TimedOut>,
    /// Set when its outbound queue was full; cleared by its writer before `resume`.
    pub congested: Arc<AtomicBool>,
    /// The client advertised consumer_cancel_notify: without it, RabbitMQ drops a
    /// consumer whose queue went away without a word.
    pub cancel_notify: bool,
    /// The connection's name and user, for the copies tracing makes.
    pub name: Arc<str>,
    pub user: Arc<str>,
}

/// A virtual host: its own namespace of exchanges and queues.
#[derive(Debug)]
pub struct VHost {
    pub name: String,
    pub(super) exchanges: HashMap<String, Exchange>,
    pub(super) queues: HashMap<String, Queue>,
    pub(super) policies: Policies,
    pub(super) operator_policies: Policies,
    /// Where durable changes are logged; none when nothing persists.
    journal: Option<Journal>,
    /// Description, tags and default queue type.
    pub(super) meta: VHostMeta,
    /// Whether messages are copied to `amq.rabbitmq.trace` (see [`trace`]).
    tracing: bool,
}

impl VHost {
    /// A virtual host with the default exchange and RabbitMQ's predeclared `amq.*` ones.
    pub fn new(name: &str) -> Self {
        let mut exchanges = HashMap::new();
        for (n, kind) in [
            ("", ExchangeKind::Direct),
            ("amq.direct", ExchangeKind::Direct),
            ("amq.fanout", ExchangeKind::Fanout),
            ("amq.topic", ExchangeKind::Topic),
            ("amq.headers", ExchangeKind::Headers),
            ("amq.match", ExchangeKind::Headers),
        ] {
            exchanges.insert(n.to_string(), Exchange::new(n, kind));
        }
        // The firehose publishes here while the vhost traces (see `trace`); clients may
        // bind but not publish.
        let mut trace = Exchange::new("amq.rabbitmq.trace", ExchangeKind::Topic);
        trace.internal = true;
        exchanges.insert(trace.name.clone(), trace);
        VHost {
            name: name.to_string(),
            exchanges,
            queues: HashMap::new(),
            policies: Policies::default(),
            operator_policies: Policies::default(),
            journal: None,
            meta: VHostMeta::default(),
            tracing: false,
        }
    }

    /// The list of policies of `kind`.
    pub(super) fn policy_list(&mut self, kind: Kind) -> &mut Policies {
        match kind {
            Kind::Policy => &mut self.policies,
            Kind::Operator => &mut self.operator_policies,
        }
    }

    /// Appends a record to the journal, if there is one; returns its sequence number.
    fn log(&self, record: impl FnOnce() -> Record) -> Option<u64> {
        self.journal
            .as_ref()
            .map(|journal| journal.append(record()))
    }

    fn exchange(&self, name: &str) -> Result<&Exchange, AmqpError> {
        self.exchanges
            .get(name)
            .ok_or_else(|| AmqpError::not_found("exchange", name, &self.name))
    }

    /// A queue this connection may use: exclusive queues belong to their connection.
    fn usable_queue(&mut self, name: &str, conn: ConnId) -> Result<&mut Queue, AmqpError> {
        let vhost = self.name.clone();
        let q = self
            .queues
            .get_mut(name)
            .ok_or_else(|| AmqpError::not_found("queue", name, &vhost))?;
        check_owner(q, conn, &vhost)?;
        Ok(q)
    }

    /// Queues a message with this exchange and routing keys (its own, then any `CC` and
    /// `BCC` ones) reaches, each once, following exchange-to-exchange bindings and, from
    /// an exchange whose bindings take it nowhere, the exchange's `alternate-exchange`.
    fn route(&self, exchange: &str, keys: &[&str], headers: Option<&FieldTable>) -> Vec<String> {
        let mut queues: Vec<String> = Vec::new();
        if exchange.is_empty() {
            for key in keys {
                if self.queues.contains_key(*key) && !queues.iter().any(|q| q == key) {
                    queues.push((*key).to_string());
                }
            }
            return queues;
        }
        // Exchange-to-exchange bindings are rare: the set and the stack stay empty (and
        // allocate nothing) unless the first exchange leads to another.
        let mut seen_exchanges = HashSet::new();
        let mut pending: Vec<String> = Vec::new();
        let mut next = self.exchanges.get(exchange);
        while let Some(x) = next {
            let mut routed = false;
            for key in keys {
                x.route(key, headers, |d| {
                    routed = true;
                    match d {
                        Destination::Queue(q) => {
                            if !queues.contains(q) {
                                queues.push(q.clone());
                            }
                        }
                        Destination::Exchange(e) => {
                            if e != exchange && seen_exchanges.insert(e.clone()) {
                                pending.push(e.clone());
                            }
                        }
                    }
                });
            }
            if !routed
                && let Some(alternate) = x.alternate()
                && alternate != exchange
                && seen_exchanges.insert(alternate.to_string())
            {
                pending.push(alternate.to_string());
            }
            next = std::iter::from_fn(|| pending.pop()).find_map(|n| self.exchanges.get(&n));
        }
        queues
    }
}

fn check_owner(q: &Queue, conn: ConnId, vhost: &str) -> Result<(), AmqpError> {
    match q.owner {
        Some(owner) if owner != conn => Err(locked(q, vhost)),
        _ => Ok(()),
    }
}

fn locked(q: &Queue, vhost: &str) -> AmqpError {
    AmqpError::channel(
        super::error::code::RESOURCE_LOCKED,
        format!(
            "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{}' in vhost '{vhost}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
            q.name
        ),
    )
}

/// A delivery awaiting ack.
#[derive(Debug)]
struct Unacked {
    queue: Arc<str>,
    consumer: Option<ShortString>,
    message: QueuedMessage,
    /// When it was delivered, for the consumer timeout.
    at: Instant,
}

/// What a settled delivery becomes: acked, put back, or discarded (dead-lettered when its
/// queue says so).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    Ack,
    Requeue,
    Discard,
}

#[derive(Debug, Default)]
struct ChannelState {
    /// tx.select was seen: settlements wait in `tx_settled` for tx.commit.
    tx: bool,
    tx_settled: Vec<(Vec<(u64, Unacked)>, Settle)>,
    next_tag: u64,
    unacked: BTreeMap<u64, Unacked>,
    /// Of `unacked` (and of `tx_settled`, until commit), the deliveries to consumers:
    /// what a channel-wide prefetch counts. basic.get's do not, as in RabbitMQ.
    consumer_unacked: usize,
    /// basic.qos global=false: the limit of consumers created from now on.
    consumer_prefetch: u16,
    /// basic.qos global=true: the limit across the channel.
    channel_prefetch: u16,
    /// (queue, tag) of this channel's consumers.
    consumers: Vec<(String, ShortString)>,
    /// Its consumer of `amq.rabbitmq.reply-to`, if any.
    reply: Option<ReplyConsumer>,
    /// Its connection was told to close it for the consumer timeout.
    timed_out: bool,
}

impl ChannelState {
    /// Whether the channel-wide prefetch lets the channel's consumers receive: while it is
    /// reached RabbitMQ holds back its no-ack consumers too, though their deliveries do
    /// not count.
    fn below_channel_prefetch(&self) -> bool {
        self.channel_prefetch == 0 || self.consumer_unacked < usize::from(self.channel_prefetch)
    }
}

#[derive(Debug)]
struct Core {
    vhost: VHost,
    connections: HashMap<ConnId, ConnHandle>,
    channels: HashMap<(ConnId, u16), ChannelState>,
    /// The channels consuming `amq.rabbitmq.reply-to`, by address suffix.
    replies: Replies,
    /// Messages published to the vhost, and those no queue took.
    published: u64,
    unroutable: u64,
    /// The counters of deleted queues, so vhost totals do not shrink.
    retired: MessageStats,
    /// The node-wide count of held message bytes, which dead letters are charged to.
    memory: Arc<AtomicU64>,
    /// The node's churn counters.
    churn: Arc<Churn>,
    /// Deliveries to copy to the trace exchange once their dispatch is done.
    taps: Vec<Tap>,
}

/// A delivery to copy, while tracing is on.
#[derive(Debug)]
struct Tap {
    message: Arc<Message>,
    queue: Arc<str>,
    redelivered: bool,
    conn: ConnId,
    channel: u16,
}

/// What basic.get hands back.
#[derive(Debug)]
pub struct GetResult {
    pub delivery_tag: u64,
    pub redelivered: bool,
    pub message_count: u32,
    pub message: Arc<Message>,
}

/// What became of a published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Some queue took it (or refused it for length): no basic.return.
    pub routed: bool,
    /// A full reject-publish queue refused it: basic.nack in confirm mode.
    pub rejected: bool,
    /// The journal position that must be on disk before the publish is confirmed:
    /// set for a persistent message that reached a durable queue.
    pub synced_at: Option<u64>,
}

/// A message leaving a queue for its dead-letter exchange.
#[derive(Debug)]
struct Dead {
    queue: Arc<str>,
    dlx: String,
    routing_key: Option<String>,
    message: Arc<Message>,
    reason: Reason,
}

/// Most dead letters handled for one operation, a guard against pathological loops the
/// cycle rule does not catch (drop-head queues dead-lettering into each other).
const DEAD_LETTER_BUDGET: usize = 100_000;

/// delivery_mode of a persistent message.
const PERSISTENT: u8 = 2;

/// The broker: cheap to share between connection tasks.
#[derive(Debug)]
pub struct Broker {
    name: String,
    core: Mutex<Core>,
    memory: Arc<MemoryMonitor>,
    /// Publisher confirms sent and mandatory messages returned, counted outside the
    /// lock by the connections.
    confirms: AtomicU64,
    returns: AtomicU64,
}

impl Broker {
    /// The vhost `name`, its messages' bytes counted by the node-wide `memory` monitor,
    /// its channels and queues opened and closed by the node's `churn`.
    pub fn new(name: &str, memory: Arc<MemoryMonitor>, churn: Arc<Churn>) -> Self {
        Broker {
            name: name.to_string(),
            core: Mutex::new(Core {
                vhost: VHost::new(name),
                connections: HashMap::new(),
                channels: HashMap::new(),
                replies: Replies::new(),
                published: 0,
                unroutable: 0,
                retired: MessageStats::default(),
                memory: memory.counter(),
                churn,
                taps: Vec::new(),
            }),
            memory,
            confirms: AtomicU64::new(0),
            returns: AtomicU64::new(0),
        }
    }

    /// The vhost's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Rebuilds the durable state recovered from `journal`'s log and logs to it from now
    /// on. Called once, before any connection.
    pub fn restore_durable(&self, journal: Journal, state: store::State) {
        let mut core = self.lock();
        store::restore(&mut core.vhost, state, &journal);
        core.vhost.journal = Some(journal);
        drop(core);
        self.memory.check();
    }

    /// Follows how far the journal is on disk; none without a journal.
    pub fn journal_synced(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.lock().vhost.journal.as_ref().map(Journal::synced)
    }

    /// Follows the memory alarm (true: over the watermark, publishers are blocked).
    pub fn memory_alarm(&self) -> tokio::sync::watch::Receiver<bool> {
        self.memory.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // No code path leaves the core half-updated on panic in a way later calls cannot
        // live with, so a poisoned lock is still usable.
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a connection (its id unique across the node) once it opened this vhost.
    pub fn register_connection(&self, id: ConnId, handle: ConnHandle) {
        self.lock().connections.insert(id, handle);
    }

    /// Counts a publisher confirm.
    pub fn confirmed(&self) {
        self.confirms.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a mandatory message returned as unroutable.
    pub fn returned(&self) {
        self.returns.fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets a connection: its channels close (unacked messages go back to their
    /// queues) and its exclusive queues are deleted.
    pub fn connection_closed(&self, conn: ConnId) {
        let mut core = self.lock();
        let channels: Vec<u16> = core
            .channels
            .keys()
            .filter(|(c, _)| *c == conn)
            .map(|(_, ch)| *ch)
            .collect();
        for ch in channels {
            close_channel(&mut core, conn, ch);
        }
        let exclusive: Vec<String> = core
            .vhost
            .queues
            .values()
            .filter(|q| q.owner == Some(conn))
            .map(|q| q.name.to_string())
            .collect();
        for name in exclusive {
            delete_queue(&mut core, &name);
        }
        core.connections.remove(&conn);
    }

    /// The vhost's description, tags and default queue type.
    pub fn meta(&self) -> VHostMeta {
        self.lock().vhost.meta.clone()
    }

    pub fn set_meta(&self, meta: VHostMeta) {
        self.lock().vhost.meta = meta;
    }

    /// Whether messages are copied to `amq.rabbitmq.trace`.
    pub fn tracing(&self) -> bool {
        self.lock().vhost.tracing
    }

    pub fn set_tracing(&self, on: bool) {
        self.lock().vhost.tracing = on;
    }

    pub fn open_channel(&self, conn: ConnId, channel: u16) {
        let mut core = self.lock();
        core.channels
            .insert((conn, channel), ChannelState::default());
        core.churn.count(churn::Event::ChannelCreated);
    }

    pub fn close_channel(&self, conn: ConnId, channel: u16) {
        close_channel(&mut self.lock(), conn, channel);
    }

    pub fn exchange_declare(&self, d: &exchange::Declare) -> Result<(), AmqpError> {
        let mut core = self.lock();
        let vhost = &mut core.vhost;
        let name = d.exchange.as_str();
        if d.passive && name.is_empty() {
            return Err(default_exchange_refused());
        }
        if d.passive {
            vhost.exchange(name)?;
            return Ok(());
        }
        // RabbitMQ's order: the type, the default exchange, then (for a new exchange) the
        // reserved prefix and the alternate exchange's type.
        let kind = ExchangeKind::parse(d.kind.as_str()).ok_or_else(|| {
            // RabbitMQ says "invalid" for names that happen to be Erlang atoms, the empty
            // one among them, and "unknown" for the rest, plugin types (x-delayed-message,
            // …) among them.
            let which = if d.kind.as_str().is_empty() {
                "invalid"
            } else {
                "unknown"
            };
            AmqpError::connection(
                super::error::code::COMMAND_INVALID,
                format!("COMMAND_INVALID - {which} exchange type '{}'", d.kind),
            )
        })?;
        if name.is_empty() {
            return Err(default_exchange_refused());
        }
        if let Some(x) = vhost.exchanges.get(name) {
            let arg = |a, r: &dyn std::fmt::Display, c: &dyn std::fmt::Display| {
                AmqpError::inequivalent(a, "exchange", name, &vhost.name, r, c)
            };
            if x.kind != kind {
                return Err(arg("type", &kind.as_str(), &x.kind.as_str()));
            }
            if x.durable != d.durable {
                return Err(arg("durable", &d.durable, &x.durable));
            }
            if x.auto_delete != d.auto_delete {
                return Err(arg("auto_delete", &d.auto_delete, &x.auto_delete));
            }
            if x.internal != d.internal {
                return Err(arg("internal", &d.internal, &x.internal));
            }
            check_args_equivalent(
                &d.arguments,
                &x.arguments,
                &["alternate-exchange"],
                &format!("exchange '{name}' in vhost '{}'", vhost.name),
            )?;
            return Ok(());
        }
        if name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format_args!(
                "exchange name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        if let Some(v) = d.arguments.inner().get("alternate-exchange")
            && !matches!(v, AMQPValue::LongString(_))
        {
            return Err(AmqpError::precondition(format_args!(
                "invalid type '{}' for arg 'alternate-exchange' in exchange '{name}' in vhost '{}'",
                type_name(v),
                vhost.name
            )));
        }
        let mut x = Exchange::new(name, kind);
        x.durable = d.durable;
        x.auto_delete = d.auto_delete;
        x.internal = d.internal;
        x.arguments = d.arguments.clone();
        x.policy = vhost.policies.for_exchange(name);
        if x.durable {
            vhost.log(|| Record::DeclareExchange {
                name: name.to_string(),
                kind: kind.as_str().to_string(),
                auto_delete: x.auto_delete,
                internal: x.internal,
                arguments: x.arguments.clone(),
            });
        }
        vhost.exchanges.insert(name.to_string(), x);
        Ok(())
    }

    pub fn exchange_delete(&self, d: &exchange::Delete) -> Result<(), AmqpError> {
        let mut core = self.lock();
        let name = d.exchange.as_str();
        if name.is_empty() {
            return Err(default_exchange_refused());
        }
        if name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format_args!(
                "deletion of system exchange '{name}' in vhost '{}' not allowed",
                core.vhost.name
            )));
        }
        let vhost = &mut core.vhost;
        let Some(x) = vhost.exchanges.get(name) else {
            return Ok(());
        };
        if d.if_unused && x.has_bindings() {
            return Err(AmqpError::precondition(format_args!(
                "exchange '{name}' in vhost '{}' in use",
                vhost.name
            )));
        }
        if x.durable {
            vhost.log(|| Record::DeleteExchange {
                name: name.to_string(),
            });
        }
        vhost.exchanges.remove(name);
        remove_bindings_to(vhost, &Destination::Exchange(name.to_string()));
        Ok(())
    }

    /// exchange.bind and queue.bind: `unbind` reverses them.
    pub fn bind(
        &self,
        conn: ConnId,
        source: &str,
        destination: Destination,
        key: &str,
        arguments: &FieldTable,
        unbind: bool,
    ) -> Result<(), AmqpError> {
        let mut core = self.lock();
        let vhost = &mut core.vhost;
        if source.is_empty() || destination == Destination::Exchange(String::new()) {
            return Err(default_exchange_refused());
        }
        let durable_destination = match &destination {
            Destination::Queue(q) => vhost.usable_queue(q, conn).map(|q| q.journal.is_some()),
            Destination::Exchange(e) => vhost.exchange(e).map(|x| x.durable),
        };
        // RabbitMQ's order for a bind: a missing source, then a missing destination, then
        // the binding's arguments, then a queue another connection holds exclusively.
        if !unbind {
            let x = vhost.exchange(source)?;
            let destination_found =
                !matches!(&durable_destination, Err(e) if e.code == super::error::code::NOT_FOUND);
            if destination_found && x.kind == ExchangeKind::Headers {
                check_x_match(arguments)?;
            }
        }
        let vhost_name = vhost.name.clone();
        let x = vhost.exchanges.get_mut(source);
        let binding = Binding {
            destination,
            arguments: arguments.clone(),
        };
        // Unbinding what is not there is not an error in RabbitMQ, whatever is missing,
        // even on a queue another connection holds exclusively.
        let (durable_destination, x) = match (durable_destination, x) {
            (Err(e), _) if unbind && e.code == super::error::code::NOT_FOUND => return Ok(()),
            (_, None) if unbind => return Ok(()),
            (Err(e), Some(x))
                if unbind
                    && e.code == super::error::code::RESOURCE_LOCKED
                    && !x.has_binding(key, &binding) =>
            {
                return Ok(());
            }
            (d, x) => (
                d?,
                x.ok_or_else(|| AmqpError::not_found("exchange", source, &vhost_name))?,
            ),
        };
        // As in RabbitMQ, a binding is durable when both its ends are.
        let record = (durable_destination && x.durable).then(|| BindingRecord {
            source: source.to_string(),
            destination: binding.destination.clone(),
            key: key.to_string(),
            arguments: arguments.clone(),
        });
        let mut emptied = None;
        if unbind {
            // Only removing its last binding deletes an auto-delete exchange: unbinding
            // what was never bound leaves a fresh one alone.
            let existed = x.has_binding(key, &binding);
            x.unbind(key, &binding);
            if existed && x.auto_delete && !x.has_bindings() {
                emptied = Some(x.durable);
                vhost.exchanges.remove(source);
            }
        } else {
            x.bind(key, binding);
        }
        if let Some(r) = record {
            vhost.log(|| {
                if unbind {
                    Record::Unbind(r)
                } else {
                    Record::Bind(r)
                }
            });
        }
        if let Some(durable) = emptied {
            if durable {
                vhost.log(|| Record::DeleteExchange {
                    name: source.to_string(),
                });
            }
            // Gone, it is no destination either: exchanges bound to it lose those
            // bindings, and go too if they were auto-delete and had no other.
            remove_bindings_to(vhost, &Destination::Exchange(source.to_string()));
        }
        Ok(())
    }

    /// Returns the queue's name (generated when empty), message and consumer counts. A
    /// non-passive declaration is first submitted to `authorize` with the final name,
    /// as RabbitMQ checks permissions on the generated name. A new queue is refused when
    /// the vhost already has `max_queues`.
    pub fn queue_declare(
        &self,
        conn: ConnId,
        d: &queue::Declare,
        max_queues: Option<u64>,
        authorize: impl FnOnce(&str) -> Result<(), AmqpError>,
    ) -> Result<(String, u32, u32), AmqpError> {
        let mut core = self.lock();
        let core = &mut *core;
        // The vhost's default queue type, for a declaration that names none.
        let defaulted;
        let d = match core
            .vhost
            .meta
            .queue_type_for(d.durable, d.exclusive, d.auto_delete)
        {
            Some(kind) if !d.arguments.inner().contains_key("x-queue-type") => {
                let mut arguments = d.arguments.clone();
                arguments.insert("x-queue-type".into(), AMQPValue::LongString(kind.into()));
                defaulted = queue::Declare {
                    arguments,
                    ..d.clone()
                };
                &defaulted
            }
            _ => d,
        };
        let requested = d.queue.as_str();
        if reply_to::is_reserved(requested) {
            // The pseudo-queue, or a live reply address, "exists" with one consumer.
            let live = requested == reply_to::PSEUDO_QUEUE
                || reply_to::suffix(requested).is_some_and(|s| core.replies.contains_key(s));
            if !live {
                return Err(AmqpError::not_found("queue", requested, &core.vhost.name));
            }
            return Ok((requested.to_string(), 0, 1));
        }
        // RabbitMQ checks the name before anything else, even whether the queue exists.
        if !d.passive && requested.starts_with("amq.") {
            return Err(AmqpError::access_refused(format_args!(
                "queue name '{requested}' contains reserved prefix 'amq.*'"
            )));
        }
        let mut authorize = Some(authorize);
        if !d.passive
            && !requested.is_empty()
            && let Some(check) = authorize.take()
        {
            check(requested)?;
        }
        let now = Instant::now();
        if core.vhost.queues.contains_key(requested) {
            core.vhost.usable_queue(requested, conn)?;
            expire_queue(core, requested, now);
        }
        let vhost = &mut core.vhost;
        if d.passive {
            let q = vhost.usable_queue(requested, conn)?;
            // A classic queue's process renews its lease when asked for its counts; a
            // quorum queue's state machine does not (RabbitMQ 3.10).
            if q.args.kind != QueueType::Quorum {
                q.last_used = now;
            }
            let consumers = reported_consumers(q, &core.channels);
            return Ok((q.name.to_string(), q.message_count(), consumers));
        }
        // A queue that exists is only compared with the declaration, as in RabbitMQ: its
        // arguments were checked when it was made.
        if let Some(q) = vhost.queues.get_mut(requested) {
            core.churn.count(churn::Event::QueueDeclared);
            q.last_used = now;
            let arg = |a, r: &dyn std::fmt::Display, c: &dyn std::fmt::Display| {
                AmqpError::inequivalent(a, "queue", requested, &vhost.name, r, c)
            };
            // As in RabbitMQ: exclusivity first, and the same lock error as another
            // connection's exclusive queue gets; an exclusive queue is never durable.
            if q.owner.is_some() != d.exclusive {
                return Err(locked(q, &vhost.name));
            }
            let durable = d.durable && !d.exclusive;
            if q.durable != durable {
                return Err(arg("durable", &durable, &q.durable));
            }
            if q.auto_delete != d.auto_delete {
                return Err(arg("auto_delete", &d.auto_delete, &q.auto_delete));
            }
            check_equivalent(&d.arguments, &q.arguments, requested, &vhost.name)?;
            let consumers = reported_consumers(q, &core.channels);
            return Ok((q.name.to_string(), q.message_count(), consumers));
        }
        // A new queue, checked in RabbitMQ's order: permission, the vhost's limit, the
        // dead-letter exchange's type, then every argument and what its type demands.
        let name = if requested.is_empty() {
            unique_name("amq.gen-")
        } else {
            requested.to_string()
        };
        if let Some(check) = authorize.take() {
            check(&name)?;
        }
        core.churn.count(churn::Event::QueueDeclared);
        if let Some(max) = max_queues
            && u64::try_from(vhost.queues.len()).unwrap_or(u64::MAX) >= max
        {
            return Err(AmqpError::precondition(format_args!(
                "cannot declare queue '{name}': queue limit in vhost '{}' ({max}) is reached",
                vhost.name
            )));
        }
        if let Some(dlx) = d.arguments.inner().get("x-dead-letter-exchange")
            && !matches!(dlx, AMQPValue::LongString(_))
        {
            return Err(AmqpError::precondition(format_args!(
                "invalid type '{}' for arg 'x-dead-letter-exchange' in queue '{name}' in vhost '{}'",
                type_name(dlx),
                vhost.name
            )));
        }
        let args = QueueArgs::parse(&d.arguments, &name, &vhost.name)?;
        if args.kind.replicated() {
            check_replicated_declare(d, requested, &vhost.name, args.kind)?;
        }
        if args.kind == QueueType::Quorum && args.overflow == Overflow::RejectPublishDlx {
            tracing::warn!(
                queue = %name, vhost = %vhost.name,
                "x-overflow reject-publish-dlx is not a quorum queue's: it drops the head"
            );
        }
        let owner = d.exclusive.then_some(conn);
        let mut q = Queue::new(
            &name,
            d.durable && owner.is_none(),
            owner,
            d.auto_delete,
            d.arguments.clone(),
            args,
        );
        let none_yet = q.set_policy(
            vhost.policies.for_queue(&name),
            vhost.operator_policies.for_queue(&name),
        );
        debug_assert!(none_yet.is_empty(), "an empty queue drops nothing");
        // Exclusive queues die with their connection, so they are never logged.
        if d.durable && owner.is_none() && vhost.journal.is_some() {
            q.journal = vhost.journal.clone();
            vhost.log(|| Record::DeclareQueue {
                name: q.name.clone(),
                auto_delete: q.auto_delete,
                arguments: q.arguments.clone(),
            });
        }
        vhost.queues.insert(name.clone(), q);
        core.churn.count(churn::Event::QueueCreated);
        Ok((name, 0, 0))
    }

    /// Whether the vhost has a queue `name`; unlike a passive declare, this leaves the
    /// queue's idle time (`x-expires`) alone.
    pub fn has_queue(&self, name: &str) -> bool {
        self.lock().vhost.queues.contains_key(name)
    }

    /// The type of the exchange `name`, if it exists.
    pub fn exchange_kind(&self, name: &str) -> Option<ExchangeKind> {
        self.lock().vhost.exchanges.get(name).map(|x| x.kind)
    }

    /// The vhost's policies of `kind`, highest priority first.
    pub fn policies(&self, kind: Kind) -> Vec<Arc<Policy>> {
        self.lock()
            .vhost
            .policy_list(kind)
            .iter()
            .cloned()
            .collect()
    }

    /// Adds or replaces a policy (of its kind) and applies the vhost's policies anew to
    /// every queue and exchange. Returns whether one of that name existed, and the
    /// journal position to await (see [`Broker::synced`]) before telling the caller it
    /// is kept.
    pub fn set_policy(&self, policy: Policy) -> (bool, Option<u64>) {
        let mut core = self.lock();
        let vhost = &mut core.vhost;
        let (kind, name) = (policy.kind, policy.name.clone());
        let json = policy.to_json(&vhost.name).to_string();
        let existed = vhost.policy_list(kind).set(policy);
        let logged = vhost.log(|| Record::SetPolicy { kind, name, json });
        reapply_policies(&mut core);
        drop(core);
        self.memory.check();
        (existed, logged)
    }

    /// Removes a policy and applies the rest anew. None when there was no such policy;
    /// else the journal position to await, as for [`Broker::set_policy`].
    pub fn clear_policy(&self, kind: Kind, name: &str) -> Option<Option<u64>> {
        let mut core = self.lock();
        let vhost = &mut core.vhost;
        if !vhost.policy_list(kind).remove(name) {
            return None;
        }
        let logged = vhost.log(|| Record::ClearPolicy {
            kind,
            name: name.to_string(),
        });
        reapply_policies(&mut core);
        drop(core);
        self.memory.check();
        Some(logged)
    }

    /// Waits until the journal has `position` on disk (at once without one).
    pub async fn synced(&self, position: Option<u64>) {
        if let (Some(position), Some(mut synced)) = (position, self.journal_synced()) {
            let _ = synced.wait_for(|on_disk| *on_disk >= position).await;
        }
    }

    pub fn queue_purge(&self, conn: ConnId, name: &str) -> Result<u32, AmqpError> {
        let mut core = self.lock();
        let vhost_name = core.vhost.name.clone();
        let q = core.vhost.usable_queue(name, conn)?;
        if q.stream.is_some() {
            return Err(not_for_streams("queue.purge", name, &vhost_name));
        }
        let purged = q.purge();
        drop(core);
        self.memory.check();
        Ok(purged)
    }

    /// Deletes a queue for `conn`: its message count, and the basic.cancel frames due to
    /// `conn`'s own consumers of it, to be sent after queue.delete-ok, as RabbitMQ sends
    /// them.
    pub fn queue_delete(
        &self,
        conn: ConnId,
        d: &queue::Delete,
    ) -> Result<(u32, Vec<Outbound>), AmqpError> {
        let mut core = self.lock();
        let name = d.queue.as_str();
        let vhost_name = core.vhost.name.clone();
        let Some(q) = core.vhost.queues.get(name) else {
            return Ok((0, Vec::new()));
        };
        check_owner(q, conn, &vhost_name)?;
        if q.args.kind == QueueType::Quorum {
            // RabbitMQ 3.10 refuses these flags on a quorum queue, whatever its state.
            let flag = [(d.if_unused, "if-unused"), (d.if_empty, "if-empty")]
                .into_iter()
                .find_map(|(set, flag)| set.then_some(flag));
            if let Some(flag) = flag {
                return Err(AmqpError::connection(
                    super::error::code::NOT_IMPLEMENTED,
                    format!(
                        "NOT_IMPLEMENTED - cannot delete queue '{name}' in vhost '{vhost_name}'. queue.delete operations with {flag} flag set are not supported by quorum queues"
                    ),
                ));
            }
        }
        // A stream takes no notice of either flag, as RabbitMQ 3.10's.
        let stream = q.stream.is_some();
        if d.if_unused && !stream && !q.consumers.is_empty() {
            return Err(AmqpError::precondition(format_args!(
                "queue '{name}' in vhost '{vhost_name}' in use"
            )));
        }
        if d.if_empty && !stream && !q.is_empty() {
            return Err(AmqpError::precondition(format_args!(
                "queue '{name}' in vhost '{vhost_name}' not empty"
            )));
        }
        let mut deleted = delete_queue_for(&mut core, name, Some(conn));
        drop(core);
        if stream {
            // RabbitMQ reports no messages for a stream it deletes.
            deleted.0 = 0;
        }
        self.memory.check();
        Ok(deleted)
    }

    /// Checks that a message may be published to `exchange` (it exists and is not
    /// internal), as basic.publish does before routing, even inside a transaction.
    pub fn check_publish(&self, exchange: &str) -> Result<(), AmqpError> {
        check_publish(&self.lock().vhost, exchange)
    }

    /// Routes a message to its queues and delivers what it can; `from` is the client's
    /// connection and channel (none for the management API's publishes), for tracing.
    /// From here on its body counts towards the memory watermark for as long as
    /// anything holds it.
    pub fn publish(
        &self,
        mut message: Message,
        from: Option<(ConnId, u16)>,
    ) -> Result<Published, AmqpError> {
        let mut core = self.lock();
        let core = &mut *core;
        check_publish(&core.vhost, message.exchange.as_str())?;
        let cc = routing_headers(message.properties())?;
        message.strip_bcc();
        message.charge(&core.memory);
        if message.exchange.as_str().is_empty()
            && let Some(suffix) = reply_to::suffix(message.routing_key.as_str())
        {
            // Delivered beside the queues, as RabbitMQ's default exchange does: the
            // publish itself counts as routed nowhere.
            let suffix = suffix.to_string();
            deliver_reply(core, &suffix, Arc::new(message));
            core.published += 1;
            core.unroutable += 1;
            return Ok(Published {
                routed: false,
                rejected: false,
                synced_at: None,
            });
        }
        let headers = message.properties().headers().as_ref();
        // One key needs no list: most publishes name no CC.
        let (single, with_cc);
        let keys: &[&str] = if cc.is_empty() {
            single = [message.routing_key.as_str()];
            &single
        } else {
            with_cc = routing_keys(&message, &cc);
            &with_cc
        };
        let targets = core.vhost.route(message.exchange.as_str(), keys, headers);
        if core.vhost.tracing
            && !trace::is_copy(&message)
            && let Some((conn, channel)) = from
            && let Some(handle) = core.connections.get(&conn)
        {
            let by = trace::Party {
                connection: &handle.name,
                channel,
                user: &handle.user,
            };
            let copy = trace::published(&message, keys, &targets, &core.vhost.name, by);
            route_copy(core, copy);
        }
        core.published += 1;
        if targets.is_empty() {
            core.unroutable += 1;
            return Ok(Published {
                routed: false,
                rejected: false,
                synced_at: None,
            });
        }
        let mut dead = Vec::new();
        let (rejected, synced_at) = enqueue_all(core, Arc::new(message), &targets, &mut dead);
        dead_letter_all(core, dead);
        self.memory.check();
        Ok(Published {
            routed: true,
            rejected,
            synced_at,
        })
    }

    /// Expires messages, deletes unused `x-expires` queues, applies streams' age limits
    /// and has the channels with a delivery unacknowledged for longer than
    /// `consumer_timeout` closed; run periodically.
    pub fn tick(&self, consumer_timeout: Option<Duration>) {
        let mut core = self.lock();
        let core = &mut *core;
        let now = Instant::now();
        if let Some(timeout) = consumer_timeout {
            time_out_channels(core, now, timeout);
        }
        let now_ms = store::unix_ms(SystemTime::now());
        let names: Vec<String> = core.vhost.queues.keys().cloned().collect();
        for name in names {
            expire_queue(core, &name, now);
            if let Some(q) = core.vhost.queues.get_mut(&name)
                && q.args.max_age.is_some()
            {
                q.retain(now_ms);
            }
            if core
                .vhost
                .queues
                .get(&name)
                .is_some_and(|q| q.unused_expired(now))
            {
                delete_queue(core, &name);
            }
        }
        self.memory.check();
    }

    /// tx.select on the broker side: acks wait for commit.
    pub fn tx_select(&self, conn: ConnId, channel: u16) {
        if let Some(state) = self.lock().channels.get_mut(&(conn, channel)) {
            state.tx = true;
        }
    }

    /// tx.commit's acks, nacks and rejects take effect; tx.rollback's return to
    /// unacknowledged.
    pub fn tx_end(&self, conn: ConnId, channel: u16, commit: bool) {
        let mut core = self.lock();
        let core = &mut *core;
        let Some(state) = core.channels.get_mut(&(conn, channel)) else {
            return;
        };
        let held = std::mem::take(&mut state.tx_settled);
        if commit {
            for (settled, how) in held {
                settle(core, conn, channel, settled, how);
            }
        } else {
            for (tag, u) in held.into_iter().flat_map(|(settled, _)| settled) {
                state.unacked.insert(tag, u);
            }
        }
        self.memory.check();
    }

    /// Adds an inactive consumer; [`Broker::activate`] starts deliveries once consume-ok
    /// is on its way. Returns the tag, generated when empty.
    pub fn consume(
        &self,
        conn: ConnId,
        channel: u16,
        c: &basic::Consume,
    ) -> Result<ShortString, AmqpError> {
        let mut core = self.lock();
        let core = &mut *core;
        let vhost_name = core.vhost.name.clone();
        let state = channel_state(&mut core.channels, conn, channel)?;
        let tag = consumer_tag(state, &c.consumer_tag)?;
        let q = core.vhost.usable_queue(c.queue.as_str(), conn)?;
        if q.args.kind == QueueType::Quorum && state.channel_prefetch > 0 {
            return Err(no_global_qos(&q.name, &vhost_name));
        }
        let reads_from = match &q.stream {
            Some(stream) => Some(stream_start(stream, c, state, &q.name, &vhost_name)?),
            None => None,
        };
        let priority = consumer_priority(&c.arguments, c.queue.as_str(), &vhost_name)?;
        // Stream offsets are for stream queues.
        if reads_from.is_none() && c.arguments.inner().contains_key(stream::OFFSET_HEADER) {
            return Err(AmqpError::precondition(format_args!(
                "invalid arg 'x-stream-offset' for queue '{}' in vhost '{vhost_name}' of queue type {}",
                q.name,
                q.args.kind.module()
            )));
        }
        // A single-active-consumer queue refuses exclusive consumers outright, as RabbitMQ's.
        // A quorum queue takes no notice of `exclusive`, as in RabbitMQ 3.10.
        let taken = !q.consumers.is_empty() || q.args.single_active_consumer;
        if q.args.kind == QueueType::Classic
            && ((c.exclusive && taken) || q.consumers.iter().any(|c| c.exclusive))
        {
            return Err(AmqpError::access_refused(format_args!(
                "queue '{}' in vhost '{vhost_name}' in exclusive use",
                q.name
            )));
        }
        q.consumers.push(Consumer {
            tag: tag.clone(),
            conn,
            channel,
            no_ack: c.no_ack,
            exclusive: c.exclusive,
            prefetch: state.consumer_prefetch,
            priority,
            unacked: 0,
            active: false,
            reads_from,
        });
        q.had_consumers = true;
        q.last_used = Instant::now();
        state.consumers.push((q.name.to_string(), tag.clone()));
        Ok(tag)
    }

    /// basic.consume of `amq.rabbitmq.reply-to`, with RabbitMQ's checks in its order.
    /// Returns the tag, generated when empty.
    pub fn consume_replies(
        &self,
        conn: ConnId,
        channel: u16,
        c: &basic::Consume,
    ) -> Result<ShortString, AmqpError> {
        let mut core = self.lock();
        let core = &mut *core;
        let state = channel_state(&mut core.channels, conn, channel)?;
        let tag = consumer_tag(state, &c.consumer_tag)?;
        if !c.no_ack {
            return Err(AmqpError::precondition("reply consumer cannot acknowledge"));
        }
        if state.reply.is_some() {
            return Err(AmqpError::precondition("reply consumer already set"));
        }
        let suffix = unique_name("");
        core.replies.insert(suffix.clone(), (conn, channel));
        state.reply = Some(ReplyConsumer::new(tag.clone(), suffix));
        Ok(tag)
    }

    /// The reply address of the channel's `amq.rabbitmq.reply-to` consumer.
    pub fn reply_address(&self, conn: ConnId, channel: u16) -> Option<String> {
        let core = self.lock();
        let state = core.channels.get(&(conn, channel))?;
        state.reply.as_ref().map(ReplyConsumer::address)
    }

    pub fn activate(&self, queue: &str, conn: ConnId, channel: u16, tag: &ShortString) {
        let mut core = self.lock();
        let core = &mut *core;
        let Some(q) = core.vhost.queues.get_mut(queue) else {
            return;
        };
        for c in &mut q.consumers {
            if c.conn == conn && c.channel == channel && c.tag == *tag {
                c.active = true;
            }
        }
        dispatch_queue(core, queue);
        self.memory.check();
    }

    /// basic.cancel; false if no such consumer.
    pub fn cancel(&self, conn: ConnId, channel: u16, tag: &ShortString) -> bool {
        let mut core = self.lock();
        let Some(state) = core.channels.get_mut(&(conn, channel)) else {
            return false;
        };
        if state.reply.as_ref().is_some_and(|r| r.tag == *tag) {
            if let Some(reply) = state.reply.take() {
                core.replies.remove(&reply.suffix);
            }
            return true;
        }
        let Some(pos) = state.consumers.iter().position(|(_, t)| t == tag) else {
            return false;
        };
        let (queue, tag) = state.consumers.remove(pos);
        remove_consumer(&mut core, &queue, conn, channel, &tag);
        // A quorum queue hands its messages to the consumers left at once (with a single
        // active consumer, to the next one), as RabbitMQ's does; a classic queue waits
        // for its next event.
        if core
            .vhost
            .queues
            .get(&queue)
            .is_some_and(|q| q.args.kind == QueueType::Quorum)
        {
            dispatch_queue(&mut core, &queue);
        }
        true
    }

    pub fn qos(&self, conn: ConnId, channel: u16, prefetch: u16, global: bool) {
        let mut core = self.lock();
        let core = &mut *core;
        if let Some(state) = core.channels.get_mut(&(conn, channel)) {
            if global {
                state.channel_prefetch = prefetch;
            } else {
                // As in RabbitMQ: a per-consumer limit also lifts the channel-wide one.
                state.consumer_prefetch = prefetch;
                state.channel_prefetch = 0;
            }
        }
        redispatch_for(core, |c| c.0 == conn && c.1 == channel);
    }

    /// basic.ack, and basic.nack/reject when `settle` is `Some(requeue)`.
    pub fn ack(
        &self,
        conn: ConnId,
        channel: u16,
        tag: u64,
        multiple: bool,
        reject: Option<bool>,
    ) -> Result<(), AmqpError> {
        let mut core = self.lock();
        let core = &mut *core;
        let Some(state) = core.channels.get_mut(&(conn, channel)) else {
            return Ok(());
        };
        if (tag != 0 || !multiple) && !state.unacked.contains_key(&tag) {
            return Err(unknown_tag(tag));
        }
        let how = match reject {
            None => Settle::Ack,
            Some(true) => Settle::Requeue,
            Some(false) => Settle::Discard,
        };
        // Refused before anything is taken: the connection closes on this error, and
        // what stays unacked is requeued then.
        let upto = if multiple && tag == 0 { u64::MAX } else { tag };
        let from = if multiple { 0 } else { tag };
        if how != Settle::Ack
            && let Some(q) = state.unacked.range(from..=upto).find_map(|(_, u)| {
                core.vhost
                    .queues
                    .get(&*u.queue)
                    .filter(|q| q.stream.is_some())
            })
        {
            return Err(not_for_streams(
                "basic.nack and basic.reject",
                &q.name,
                &core.vhost.name,
            ));
        }
        let settled: Vec<(u64, Unacked)> = if multiple {
            let keep = if tag == 0 {
                BTreeMap::new()
            } else {
                state.unacked.split_off(&(tag + 1))
            };
            std::mem::replace(&mut state.unacked, keep)
                .into_iter()
                .collect()
        } else {
            state
                .unacked
                .remove(&tag)
                .into_iter()
                .map(|u| (tag, u))
                .collect()
        };
        if state.tx {
            state.tx_settled.push((settled, how));
            return Ok(());
        }
        settle(core, conn, channel, settled, how);
        self.memory.check();
        Ok(())
    }

    /// Whether the channel the consumer timeout named is still the one it timed out:
    /// the client may have closed it and opened another under the same number since.
    pub fn timed_out(&self, conn: ConnId, channel: u16) -> bool {
        self.lock()
            .channels
            .get(&(conn, channel))
            .is_some_and(|state| state.timed_out)
    }

    /// Whether basic.recover may go ahead: not on a channel holding deliveries from a
    /// stream, which keeps every message and cannot take one back (RabbitMQ 3.10.8's
    /// channel crashes there with 541; this broker refuses as it refuses nack and reject).
    pub fn check_recover(&self, conn: ConnId, channel: u16) -> Result<(), AmqpError> {
        let core = self.lock();
        let Some(state) = core.channels.get(&(conn, channel)) else {
            return Ok(());
        };
        let streamed = state.unacked.values().find_map(|u| {
            core.vhost
                .queues
                .get(&*u.queue)
                .filter(|q| q.stream.is_some())
        });
        match streamed {
            Some(q) => Err(not_for_streams("basic.recover", &q.name, &core.vhost.name)),
            None => Ok(()),
        }
    }

    /// basic.recover: every unacknowledged delivery of the channel goes back, but those
    /// from a stream, which may have arrived since [`Broker::check_recover`] (recover-ok
    /// is sent in between): they stay the client's to ack.
    pub fn recover(&self, conn: ConnId, channel: u16) {
        let mut core = self.lock();
        let core = &mut *core;
        let Some(state) = core.channels.get_mut(&(conn, channel)) else {
            return;
        };
        let queues = &core.vhost.queues;
        let (streamed, back): (BTreeMap<_, _>, BTreeMap<_, _>) = std::mem::take(&mut state.unacked)
            .into_iter()
            .partition(|(_, u)| queues.get(&*u.queue).is_some_and(|q| q.stream.is_some()));
        state.unacked = streamed;
        settle(
            core,
            conn,
            channel,
            back.into_iter().collect(),
            Settle::Requeue,
        );
    }

    pub fn get(
        &self,
        conn: ConnId,
        channel: u16,
        queue: &str,
        no_ack: bool,
    ) -> Result<Option<GetResult>, AmqpError> {
        let mut core = self.lock();
        let core = &mut *core;
        let q = core.vhost.usable_queue(queue, conn)?;
        if q.stream.is_some() {
            return Err(not_for_streams("basic.get", queue, &core.vhost.name));
        }
        if q.args.kind == QueueType::Quorum && q.args.single_active_consumer {
            let name = q.name.clone();
            return Err(AmqpError::channel(
                super::error::code::RESOURCE_LOCKED,
                format!(
                    "RESOURCE_LOCKED - cannot obtain access to locked queue '{name}' in vhost '{}'. basic.get operations are not supported by quorum queues with single active consumer",
                    core.vhost.name
                ),
            ));
        }
        let now = Instant::now();
        expire_queue(core, queue, now);
        let q = core.vhost.usable_queue(queue, conn)?;
        q.last_used = now;
        let Some(m) = q.pop() else {
            return Ok(None);
        };
        q.stats.delivered(true, no_ack, m.redelivered);
        q.delivered(&m, no_ack);
        // What expired behind it goes now that it is at the head, before the count.
        let expired = q.drop_expired(now);
        let dead: Vec<Dead> = dead_letters(q, expired, Reason::Expired).collect();
        let message_count = q.message_count();
        let queue_name = q.name.clone();
        let outgoing = q.outgoing(&m, true);
        if core.vhost.tracing && !trace::is_copy(&m.message) {
            core.taps.push(Tap {
                message: m.message.clone(),
                queue: queue_name.clone(),
                redelivered: m.redelivered,
                conn,
                channel,
            });
        }
        dead_letter_all(core, dead);
        self.memory.check();
        let Some(state) = core.channels.get_mut(&(conn, channel)) else {
            return Ok(None);
        };
        state.next_tag += 1;
        let result = GetResult {
            delivery_tag: state.next_tag,
            redelivered: m.redelivered,
            message_count,
            message: outgoing,
        };
        if !no_ack {
            state.unacked.insert(
                state.next_tag,
                Unacked {
                    queue: queue_name,
                    consumer: None,
                    message: m,
                    at: Instant::now(),
                },
            );
        }
        copy_deliveries(core);
        Ok(Some(result))
    }

    /// Called by a connection's writer once its outbound queue has room again.
    pub fn resume(&self, conn: ConnId) {
        let mut guard = self.lock();
        let core = &mut *guard;
        if let Some(handle) = core.connections.get(&conn) {
            let replies = core
                .channels
                .iter_mut()
                .filter(|((c, _), _)| *c == conn)
                .filter_map(|(_, state)| state.reply.as_mut());
            for reply in replies {
                reply.flush(handle);
            }
        }
        redispatch_for(core, |c| c.0 == conn);
        drop(guard);
        self.memory.check();
    }
}

/// The consumer count queue.declare-ok reports. A quorum queue reports what RabbitMQ's
/// `rabbit_fifo` holds as consumers: not the waiting ones of a single-active-consumer
/// queue, but a cancelled one until its deliveries are settled, and each basic.get
/// whose message is not yet settled.
fn reported_consumers(q: &Queue, channels: &HashMap<(ConnId, u16), ChannelState>) -> u32 {
    match q.args.kind {
        QueueType::Classic => return q.consumer_count(),
        // A stream's consumers read it on their own; RabbitMQ counts none.
        QueueType::Stream => return 0,
        QueueType::Quorum => {}
    }
    let mut count = if q.args.single_active_consumer {
        q.consumers.len().min(1)
    } else {
        q.consumers.len()
    };
    let mut cancelled: Vec<(ConnId, u16, &ShortString)> = Vec::new();
    for (&(conn, channel), state) in channels {
        let held = state.unacked.values();
        let in_tx = state
            .tx_settled
            .iter()
            .flat_map(|(settled, _)| settled.iter().map(|(_, u)| u));
        for u in held.chain(in_tx).filter(|u| *u.queue == *q.name) {
            match &u.consumer {
                None => count += 1,
                Some(tag) => {
                    let live = q
                        .consumers
                        .iter()
                        .any(|c| c.conn == conn && c.channel == channel && c.tag == *tag);
                    if !live && !cancelled.contains(&(conn, channel, tag)) {
                        cancelled.push((conn, channel, tag));
                    }
                }
            }
        }
    }
    u32::try_from(count + cancelled.len()).unwrap_or(u32::MAX)
}

/// What RabbitMQ refuses when a quorum queue or a stream is created, in its order.
fn check_replicated_declare(
    d: &queue::Declare,
    name: &str,
    vhost: &str,
    kind: QueueType,
) -> Result<(), AmqpError> {
    if name.is_empty() {
        return Err(AmqpError::precondition(format_args!(
            "Cannot declare a server-named queue for type {}",
            kind.module()
        )));
    }
    let invalid = [
        (d.auto_delete, "auto-delete"),
        (d.exclusive, "exclusive-owner"),
        (!d.durable, "non-durable"),
    ];
    match invalid.iter().find(|(bad, _)| *bad) {
        Some((_, property)) => Err(AmqpError::precondition(format_args!(
            "invalid property '{property}' for queue '{name}' in vhost '{vhost}'"
        ))),
        None => Ok(()),
    }
}

/// The extra routing keys of RabbitMQ's sender-selected distribution: the strings in the
/// `CC` and `BCC` header arrays (other elements are skipped, as RabbitMQ does). Either
/// header holding anything but an array makes the message invalid.
fn routing_headers(properties: &AMQPProperties) -> Result<Vec<String>, AmqpError> {
    let Some(headers) = properties.headers() else {
        return Ok(Vec::new());
    };
    let mut keys = Vec::new();
    for name in ["CC", "BCC"] {
        match headers.inner().get(name) {
            None => {}
            Some(AMQPValue::FieldArray(array)) => {
                keys.extend(array.as_slice().iter().filter_map(|v| match v {
                    AMQPValue::LongString(s) => {
                        Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                    }
                    _ => None,
                }));
            }
            Some(other) => {
                return Err(AmqpError::precondition(format_args!(
                    "invalid message: {{unacceptable_type_in_header,\"{name}\",{}}}",
                    type_name(other)
                )));
            }
        }
    }
    Ok(keys)
}

/// A message's routing key followed by its `CC`/`BCC` keys.
fn routing_keys<'a>(message: &'a Message, cc: &'a [String]) -> Vec<&'a str> {
    let mut keys = Vec::with_capacity(1 + cc.len());
    keys.push(message.routing_key.as_str());
    keys.extend(cc.iter().map(String::as_str));
    keys
}

/// A headers binding's `x-match`, checked as RabbitMQ checks it when binding.
fn check_x_match(arguments: &FieldTable) -> Result<(), AmqpError> {
    match arguments.inner().get("x-match") {
        None => Ok(()),
        Some(AMQPValue::LongString(s)) => match s.as_bytes() {
            b"all" | b"any" | b"all-with-x" | b"any-with-x" => Ok(()),
            other => Err(AmqpError::precondition(format_args!(
                "Invalid x-match field value {}; expected all, any, all-with-x, or any-with-x",
                erlang_binary(other)
            ))),
        },
        Some(other) => Err(AmqpError::precondition(format_args!(
            "Invalid x-match field type {} (value {}); expected longstr",
            type_name(other),
            erlang_term(other)
        ))),
    }
}

/// The exchange exists and takes publishes from clients.
fn check_publish(vhost: &VHost, exchange: &str) -> Result<(), AmqpError> {
    // The default exchange can be neither deleted nor made internal. Not looked up: see
    // `names::same` on what comparing empty names costs.
    if exchange.is_empty() {
        return Ok(());
    }
    let x = vhost.exchange(exchange)?;
    if x.internal {
        return Err(AmqpError::access_refused(format_args!(
            "cannot publish to internal exchange '{exchange}' in vhost '{}'",
            vhost.name
        )));
    }
    Ok(())
}

fn default_exchange_refused() -> AmqpError {
    AmqpError::access_refused("operation not permitted on the default exchange")
}

fn unknown_tag(tag: u64) -> AmqpError {
    AmqpError::precondition(format_args!("unknown delivery tag {tag}"))
}

/// `prefix` + 22 URL-safe base64 characters of 16 random bytes, like RabbitMQ's
/// `amq.gen-` and `amq.ctag-` names.
fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // Without an entropy source, a process-wide counter still keeps names unique.
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        bytes[..8].copy_from_slice(&n.to_be_bytes());
        bytes[8..].copy_from_slice(&u64::from(std::process::id()).to_be_bytes());
    }
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Acks, returns or discards settled deliveries, then delivers what freed prefetch
/// allows.
fn settle(core: &mut Core, conn: ConnId, channel: u16, settled: Vec<(u64, Unacked)>, how: Settle) {
    let mut touched: Vec<Arc<str>> = Vec::new();
    let mut dead = Vec::new();
    if let Some(state) = core.channels.get_mut(&(conn, channel)) {
        let released = settled.iter().filter(|(_, u)| u.consumer.is_some()).count();
        state.consumer_unacked = state.consumer_unacked.saturating_sub(released);
    }
    for (_, u) in settled {
        let Some(q) = core.vhost.queues.get_mut(&*u.queue) else {
            continue;
        };
        release_credit(q, conn, channel, u.consumer.as_ref());
        match how {
            Settle::Ack => {
                q.stats.ack += 1;
                q.settled(&u.message);
            }
            Settle::Requeue => {
                if let Some(m) = q.requeue(u.message, Return::Given) {
                    q.settled(&m);
                    dead.extend(dead_from(q, m.message, Reason::DeliveryLimit));
                }
            }
            Settle::Discard => {
                q.settled(&u.message);
                dead.extend(dead_from(q, u.message.message, Reason::Rejected));
            }
        }
        if !touched.contains(&u.queue) {
            touched.push(u.queue);
        }
    }
    if how == Settle::Requeue {
        trim_requeued(core, &touched, &mut dead);
    }
    dead_letter_all(core, dead);
    for name in touched {
        dispatch_queue(core, &name);
    }
    // A channel-wide prefetch may have held back other queues of this channel.
    if core
        .channels
        .get(&(conn, channel))
        .is_some_and(|s| s.channel_prefetch > 0)
    {
        redispatch_for(core, |c| c.0 == conn && c.1 == channel);
    }
}

/// Drops what messages given back pushed past a drop-head queue's length limits: the
/// oldest, as RabbitMQ does before it delivers again.
fn trim_requeued(core: &mut Core, queues: &[Arc<str>], dead: &mut Vec<Dead>) {
    for name in queues {
        if let Some(q) = core.vhost.queues.get_mut(&**name) {
            let dropped = q.trim();
            dead.extend(dead_letters(q, dropped, Reason::MaxLen));
        }
    }
}

/// Dead letters for the messages `q` dropped, if it has a dead-letter exchange.
fn dead_letters(
    q: &Queue,
    dropped: Vec<QueuedMessage>,
    reason: Reason,
) -> impl Iterator<Item = Dead> + '_ {
    dropped
        .into_iter()
        .filter_map(move |m| dead_from(q, m.message, reason))
}

/// A dead letter from `q`, if it has a dead-letter exchange.
fn dead_from(q: &Queue, message: Arc<Message>, reason: Reason) -> Option<Dead> {
    let dlx = q.args.dead_letter_exchange.clone()?;
    Some(Dead {
        queue: q.name.clone(),
        dlx,
        routing_key: q.args.dead_letter_routing_key.clone(),
        message,
        reason,
    })
}

/// Puts every queue and exchange under the policy that now matches it; messages a
/// lowered length limit pushed out are dead-lettered as RabbitMQ does (`maxlen`).
fn reapply_policies(core: &mut Core) {
    let vhost = &mut core.vhost;
    let mut dead = Vec::new();
    for (name, q) in &mut vhost.queues {
        let dropped = q.set_policy(
            vhost.policies.for_queue(name),
            vhost.operator_policies.for_queue(name),
        );
        dead.extend(dead_letters(q, dropped, Reason::MaxLen));
    }
    for (name, x) in &mut vhost.exchanges {
        x.policy = vhost.policies.for_exchange(name);
    }
    dead_letter_all(core, dead);
}

/// Puts a message in each target queue under its limits, delivering at once where a
/// consumer is ready (so a TTL of 0 still reaches a waiting consumer). Returns whether a
/// reject-publish queue refused it, and the journal position of its publish record if it
/// was logged; what was dropped for length or expiry goes to `dead`.
fn enqueue_all(
    core: &mut Core,
    message: Arc<Message>,
    targets: &[String],
    dead: &mut Vec<Dead>,
) -> (bool, Option<u64>) {
    let now = Instant::now();
    let mut rejected = false;
    let logged = log_publish(&core.vhost, &message, targets);
    let persistent = *message.properties().delivery_mode() == Some(PERSISTENT);
    for name in targets {
        let Some(q) = core.vhost.queues.get_mut(name) else {
            continue;
        };
        let expired = q.drop_expired(now);
        dead.extend(dead_letters(q, expired, Reason::Expired));
        // Only the queues the record names keep the message on disk.
        let stored = logged
            .filter(|_| persistent || q.args.kind.replicated())
            .map(|(id, _)| id);
        match q.enqueue(message.clone(), now, stored) {
            Admission::Accepted => q.stats.publish += 1,
            Admission::Rejected => {
                rejected = true;
                if q.overflow() == Overflow::RejectPublishDlx {
                    dead.extend(dead_from(q, message.clone(), Reason::MaxLen));
                }
            }
        }
        let taps = core.vhost.tracing.then_some(&mut core.taps);
        dispatch(q, &mut core.channels, &core.connections, dead, taps);
        // Only what no consumer took counts against a drop-head limit.
        let dropped = q.trim();
        dead.extend(dead_letters(q, dropped, Reason::MaxLen));
        let expired = q.drop_expired(now);
        dead.extend(dead_letters(q, expired, Reason::Expired));
    }
    copy_deliveries(core);
    (rejected, logged.map(|(_, seq)| seq))
}

/// Logs a persistent message bound for durable queues, and any message bound for quorum
/// queues and streams (which, as in RabbitMQ, keep every message whatever its delivery
/// mode); returns its id and the record's sequence number. Transient messages into
/// classic queues and non-durable queues cost nothing here.
fn log_publish(vhost: &VHost, message: &Arc<Message>, targets: &[String]) -> Option<(u64, u64)> {
    let journal = vhost.journal.as_ref()?;
    let persistent = *message.properties().delivery_mode() == Some(PERSISTENT);
    let queues: Vec<Arc<str>> = targets
        .iter()
        .filter_map(|t| vhost.queues.get(t))
        .filter(|q| q.journal.is_some() && (persistent || q.args.kind.replicated()))
        .map(|q| q.name.clone())
        .collect();
    if queues.is_empty() {
        return None;
    }
    let id = journal.next_id();
    let seq = journal.append(Record::Publish {
        id,
        published_ms: store::unix_ms(SystemTime::now()),
        queues,
        message: message.clone(),
    });
    Some((id, seq))
}

/// Republishes dead letters through their exchanges, and the dead letters that causes in
/// turn. A missing exchange drops the message, as in RabbitMQ.
fn dead_letter_all(core: &mut Core, dead: Vec<Dead>) {
    if dead.is_empty() {
        return;
    }
    let mut pending: std::collections::VecDeque<Dead> = dead.into();
    let mut budget = DEAD_LETTER_BUDGET;
    let now_secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    while let Some(d) = pending.pop_front() {
        if budget == 0 {
            tracing::warn!("amqp: dead-letter budget exhausted; dropping the rest");
            return;
        }
        budget -= 1;
        if !core.vhost.exchanges.contains_key(&d.dlx) {
            continue;
        }
        let target = Target {
            exchange: &d.dlx,
            routing_key: d.routing_key.as_deref(),
        };
        let mut letter =
            dead_letter::dead_letter(&d.message, d.reason, &d.queue, &target, now_secs);
        letter.charge(&core.memory);
        // The letter's CC and BCC keys are still its keys here, unless its routing key
        // was replaced; a bad CC header routes by the key alone.
        let mut cc = routing_headers(letter.properties()).unwrap_or_default();
        cc.extend_from_slice(letter.bcc());
        let keys = routing_keys(&letter, &cc);
        let targets: Vec<String> = core
            .vhost
            .route(&d.dlx, &keys, letter.properties().headers().as_ref())
            .into_iter()
            .filter(|q| !dead_letter::is_cycle(&letter, q))
            .collect();
        let mut more = Vec::new();
        // Dead-lettering is at most once, as RabbitMQ's default: nothing waits for the disk.
        enqueue_all(core, Arc::new(letter), &targets, &mut more);
        pending.extend(more);
    }
}

/// Drops (and dead-letters) the expired messages at the head of a queue.
fn expire_queue(core: &mut Core, name: &str, now: Instant) {
    let Some(q) = core.vhost.queues.get_mut(name) else {
        return;
    };
    let expired = q.drop_expired(now);
    if expired.is_empty() {
        return;
    }
    let dead: Vec<Dead> = dead_letters(q, expired, Reason::Expired).collect();
    dead_letter_all(core, dead);
}

/// Expires a queue's head, then hands its messages to ready consumers.
fn dispatch_queue(core: &mut Core, name: &str) {
    expire_queue(core, name, Instant::now());
    if let Some(q) = core.vhost.queues.get_mut(name) {
        let mut dead = Vec::new();
        let taps = core.vhost.tracing.then_some(&mut core.taps);
        dispatch(q, &mut core.channels, &core.connections, &mut dead, taps);
        dead_letter_all(core, dead);
        copy_deliveries(core);
    }
}

/// Routes a trace copy through `amq.rabbitmq.trace` to the queues bound there.
fn route_copy(core: &mut Core, mut copy: Message) {
    copy.charge(&core.memory);
    let key = [copy.routing_key.as_str()];
    let targets = core.vhost.route(trace::EXCHANGE, &key, None);
    if targets.is_empty() {
        return;
    }
    let mut dead = Vec::new();
    enqueue_all(core, Arc::new(copy), &targets, &mut dead);
    dead_letter_all(core, dead);
}

/// Copies the deliveries a dispatch recorded to the trace exchange.
fn copy_deliveries(core: &mut Core) {
    if core.taps.is_empty() {
        return;
    }
    for tap in std::mem::take(&mut core.taps) {
        let Some(handle) = core.connections.get(&tap.conn) else {
            continue;
        };
        let to = trace::Party {
            connection: &handle.name,
            channel: tap.channel,
            user: &handle.user,
        };
        let copy = trace::delivered(
            &tap.message,
            &tap.queue,
            tap.redelivered,
            &core.vhost.name,
            to,
        );
        route_copy(core, copy);
    }
}

/// A settled delivery frees a place in its consumer's prefetch window.
fn release_credit(q: &mut Queue, conn: ConnId, channel: u16, tag: Option<&ShortString>) {
    let Some(tag) = tag else {
        return;
    };
    if let Some(c) = q
        .consumers
        .iter_mut()
        .find(|c| c.conn == conn && c.channel == channel && c.tag == *tag)
    {
        c.unacked = c.unacked.saturating_sub(1);
    }
}

/// Dispatches every queue with a consumer on a channel `on` selects.
fn redispatch_for(core: &mut Core, on: impl Fn((ConnId, u16)) -> bool) {
    let queues: Vec<String> = core
        .channels
        .iter()
        .filter(|(k, _)| on(**k))
        .flat_map(|(_, s)| s.consumers.iter().map(|(q, _)| q.clone()))
        .collect();
    for name in queues {
        dispatch_queue(core, &name);
    }
}

/// The broker side of a channel the connection opened.
fn channel_state(
    channels: &mut HashMap<(ConnId, u16), ChannelState>,
    conn: ConnId,
    channel: u16,
) -> Result<&mut ChannelState, AmqpError> {
    channels
        .get_mut(&(conn, channel))
        .ok_or_else(|| AmqpError::channel(super::error::code::CHANNEL_ERROR, "no channel"))
}

/// The tag a basic.consume asked for, or a generated one; reusing one of the channel's
/// is a connection error in RabbitMQ.
fn consumer_tag(state: &ChannelState, requested: &ShortString) -> Result<ShortString, AmqpError> {
    if state.consumers.iter().any(|(_, t)| t == requested) {
        return Err(AmqpError::connection(
            super::error::code::NOT_ALLOWED,
            format!("NOT_ALLOWED - attempt to reuse consumer tag '{requested}'"),
        ));
    }
    Ok(if requested.as_str().is_empty() {
        ShortString::from(unique_name("amq.ctag-"))
    } else {
        requested.clone()
    })
}

/// Hands a reply to the channel whose address ends in `suffix`, if it still consumes
/// replies; drops it otherwise, as RabbitMQ does.
fn deliver_reply(core: &mut Core, suffix: &str, message: Arc<Message>) {
    let Some(&(conn, channel)) = core.replies.get(suffix) else {
        return;
    };
    let (Some(state), Some(handle)) = (
        core.channels.get_mut(&(conn, channel)),
        core.connections.get(&conn),
    ) else {
        return;
    };
    let Some(reply) = state.reply.as_mut() else {
        return;
    };
    let deliver = Outbound::Content {
        channel,
        // The tag the channel's next delivery will have, not taken: replies need no ack,
        // and RabbitMQ 3.x gives them all the same one.
        method: deliver(&reply.tag, state.next_tag + 1, false, &message),
        message,
    };
    reply.send(handle, deliver);
}

/// Hands queued messages to consumers in turn while any has room. A message that
/// expired behind the one handed out goes to `dead` as it reaches the head, as in
/// RabbitMQ, rather than to a consumer.
fn dispatch(
    q: &mut Queue,
    channels: &mut HashMap<(ConnId, u16), ChannelState>,
    connections: &HashMap<ConnId, ConnHandle>,
    dead: &mut Vec<Dead>,
    mut taps: Option<&mut Vec<Tap>>,
) {
    if q.stream.is_some() {
        dispatch_stream(q, channels, connections, taps);
        return;
    }
    let now = Instant::now();
    let quorum = q.args.kind == QueueType::Quorum;
    // Without differing `x-priority`s the first consumer with room will do, and the
    // readiness checks (two map lookups each) stop there.
    let prioritized = q
        .consumers
        .windows(2)
        .any(|w| w[0].priority != w[1].priority);
    while !q.is_empty() {
        // With a single active consumer only the oldest may receive; otherwise, in turn
        // from the cursor, the first of the highest `x-priority` with room.
        let n = if q.args.single_active_consumer {
            q.consumers.len().min(1)
        } else {
            q.consumers.len()
        };
        let ready = |c: &Consumer| {
            c.active
                && (c.no_ack || c.prefetch == 0 || c.unacked < u32::from(c.prefetch))
                && channels.get(&(c.conn, c.channel)).is_some_and(|s| {
                    // A quorum queue's consumer has its credit from basic.consume; a
                    // channel-wide limit set later does not apply to it.
                    quorum || s.below_channel_prefetch()
                })
                && connections
                    .get(&c.conn)
                    .is_some_and(|h| !h.congested.load(Ordering::Acquire))
        };
        let start = if n == 1 { 0 } else { q.cursor };
        let mut in_turn = (0..n)
            .map(|i| (start + i) % n)
            .filter(|&i| ready(&q.consumers[i]));
        let chosen = if prioritized {
            in_turn.fold(None::<usize>, |best, i| match best {
                Some(b) if q.consumers[b].priority >= q.consumers[i].priority => Some(b),
                _ => Some(i),
            })
        } else {
            in_turn.next()
        };
        let Some(i) = chosen else {
            return;
        };
        let key = (q.consumers[i].conn, q.consumers[i].channel);
        let Some(handle) = connections.get(&key.0) else {
            return;
        };
        let Some(permit) = reserve(handle, &mut q.consumers[i].active) else {
            continue;
        };
        if !channels.contains_key(&key) {
            return;
        }
        let Some(m) = q.pop() else {
            return;
        };
        q.delivered(&m, q.consumers[i].no_ack);
        let expired = q.drop_expired(now);
        dead.extend(dead_letters(q, expired, Reason::Expired));
        let outgoing = q.outgoing(&m, false);
        let (Some(state), c) = (channels.get_mut(&key), &mut q.consumers[i]) else {
            return;
        };
        state.next_tag += 1;
        permit.send(Outbound::Content {
            channel: c.channel,
            method: deliver(&c.tag, state.next_tag, m.redelivered, &m.message),
            message: outgoing,
        });
        q.stats.delivered(false, c.no_ack, m.redelivered);
        if let Some(taps) = taps.as_deref_mut()
            && !trace::is_copy(&m.message)
        {
            taps.push(Tap {
                message: m.message.clone(),
                queue: q.name.clone(),
                redelivered: m.redelivered,
                conn: c.conn,
                channel: c.channel,
            });
        }
        if !c.no_ack {
            c.unacked += 1;
            state.consumer_unacked += 1;
            state.unacked.insert(
                state.next_tag,
                Unacked {
                    queue: q.name.clone(),
                    consumer: Some(c.tag.clone()),
                    message: m,
                    at: now,
                },
            );
        }
        q.cursor = (i + 1) % n;
    }
}

/// Hands a stream's messages to its consumers, each from its own offset, one message per
/// consumer in turn while any has credit (its prefetch less what it has not acked) and
/// something left to read. A delivery carries its offset in the `x-stream-offset` header.
fn dispatch_stream(
    q: &mut Queue,
    channels: &mut HashMap<(ConnId, u16), ChannelState>,
    connections: &HashMap<ConnId, ConnHandle>,
    mut taps: Option<&mut Vec<Tap>>,
) {
    let Some(stream) = &q.stream else {
        return;
    };
    let (first, next) = (stream.first(), stream.next());
    let now = Instant::now();
    let mut progress = true;
    while progress {
        progress = false;
        for c in &mut q.consumers {
            let Some(offset) = c.reads_from.map(|o| o.max(first)) else {
                continue;
            };
            if !c.active || offset >= next || c.unacked >= u32::from(c.prefetch) {
                continue;
            }
            let key = (c.conn, c.channel);
            let (Some(handle), Some(state)) = (connections.get(&key.0), channels.get_mut(&key))
            else {
                continue;
            };
            if handle.congested.load(Ordering::Acquire) {
                continue;
            }
            let Some(permit) = reserve(handle, &mut c.active) else {
                continue;
            };
            let Some(entry) = q.stream.as_ref().and_then(|s| s.get(offset)) else {
                continue;
            };
            state.next_tag += 1;
            permit.send(Outbound::Content {
                channel: c.channel,
                method: deliver(&c.tag, state.next_tag, false, &entry.message),
                message: with_offset(&entry.message, offset),
            });
            q.stats.delivered(false, false, false);
            if let Some(taps) = taps.as_deref_mut()
                && !trace::is_copy(&entry.message)
            {
                taps.push(Tap {
                    message: entry.message.clone(),
                    queue: q.name.clone(),
                    redelivered: false,
                    conn: c.conn,
                    channel: c.channel,
                });
            }
            c.reads_from = Some(offset + 1);
            c.unacked += 1;
            state.consumer_unacked += 1;
            // Nothing to journal or give back: the message stays in the stream.
            state.unacked.insert(
                state.next_tag,
                Unacked {
                    queue: q.name.clone(),
                    consumer: Some(c.tag.clone()),
                    message: QueuedMessage {
                        seq: offset,
                        message: entry.message.clone(),
                        redelivered: false,
                        returned: 0,
                        expires_at: None,
                        stored: None,
                    },
                    at: now,
                },
            );
            progress = true;
        }
    }
}

/// basic.deliver of `message` to the consumer `tag`.
fn deliver(
    tag: &ShortString,
    delivery_tag: u64,
    redelivered: bool,
    message: &Message,
) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
        consumer_tag: tag.clone(),
        delivery_tag,
        redelivered,
        exchange: message.exchange.clone(),
        routing_key: message.routing_key.clone(),
    }))
}

/// A place for one delivery in a consumer's connection's outbound queue. None when the
/// queue is full (the connection is marked congested, and resumes dispatch once its
/// writer drained it) or gone (the consumer is marked inactive).
fn reserve<'a>(handle: &'a ConnHandle, active: &mut bool) -> Option<mpsc::Permit<'a, Outbound>> {
    match handle.tx.try_reserve() {
        Ok(permit) => Some(permit),
        Err(TrySendError::Full(())) => {
            handle.congested.store(true, Ordering::Release);
            None
        }
        Err(TrySendError::Closed(())) => {
            *active = false;
            None
        }
    }
}

/// A stream message as its consumers receive it: with its offset among its headers.
fn with_offset(message: &Message, offset: u64) -> Arc<Message> {
    let mut headers = message.properties().headers().clone().unwrap_or_default();
    headers.insert(
        stream::OFFSET_HEADER.into(),
        AMQPValue::LongLongInt(i64::try_from(offset).unwrap_or(i64::MAX)),
    );
    Arc::new(Message::new(
        message.exchange.clone(),
        message.routing_key.clone(),
        message.properties().clone().with_headers(headers),
        message.body.clone(),
    ))
}

/// Where a new consumer of `stream` starts, after RabbitMQ 3.10's checks in its order:
/// only `x-stream-offset` among consumer arguments RabbitMQ knows, a prefetch set with
/// basic.qos, manual acks, then the offset spec itself.
fn stream_start(
    stream: &Stream,
    c: &basic::Consume,
    state: &ChannelState,
    queue: &str,
    vhost: &str,
) -> Result<u64, AmqpError> {
    // In RabbitMQ's order: the offset, the consumer arguments a stream has no use for,
    // the prefetch, automatic acks, a channel-wide prefetch.
    let start =
        Start::parse(&c.arguments, store::unix_ms(SystemTime::now())).map_err(|reason| {
            AmqpError::precondition(format_args!(
                "invalid arg 'x-stream-offset' for queue '{queue}' in vhost '{vhost}': {reason}"
            ))
        })?;
    if let Some(key) = c
        .arguments
        .inner()
        .keys()
        .find(|k| matches!(k.as_str(), "x-priority" | "x-cancel-on-ha-failover"))
    {
        return Err(AmqpError::precondition(format_args!(
            "invalid arg '{key}' for queue '{queue}' in vhost '{vhost}' of queue type {}",
            QueueType::Stream.module()
        )));
    }
    if state.consumer_prefetch == 0 {
        return Err(AmqpError::precondition(format_args!(
            "consumer prefetch count is not set for 'queue '{queue}' in vhost '{vhost}''"
        )));
    }
    if c.no_ack {
        return Err(not_for_streams("automatic acknowledgement", queue, vhost));
    }
    if state.channel_prefetch > 0 {
        return Err(no_global_qos(queue, vhost));
    }
    Ok(stream.resolve(start))
}

/// 540 NOT_IMPLEMENTED: quorum queues and streams have no channel-wide prefetch.
fn no_global_qos(queue: &str, vhost: &str) -> AmqpError {
    AmqpError::connection(
        super::error::code::NOT_IMPLEMENTED,
        format!("NOT_IMPLEMENTED - queue '{queue}' in vhost '{vhost}' does not support global qos"),
    )
}

/// 540 NOT_IMPLEMENTED, a connection error, for what a stream does not do.
fn not_for_streams(what: &str, queue: &str, vhost: &str) -> AmqpError {
    AmqpError::connection(
        super::error::code::NOT_IMPLEMENTED,
        format!(
            "NOT_IMPLEMENTED - {what} not supported by stream queues queue '{queue}' in vhost '{vhost}'"
        ),
    )
}

/// Tells the connections of channels whose oldest unacknowledged delivery is older than
/// `timeout` to close them, once each (RabbitMQ's `consumer_timeout`).
fn time_out_channels(core: &mut Core, now: Instant, timeout: Duration) {
    for (&(conn, channel), state) in &mut core.channels {
        let late = state
            .unacked
            .first_key_value()
            .is_some_and(|(_, u)| now.saturating_duration_since(u.at) >= timeout);
        if late
            && !state.timed_out
            && let Some(handle) = core.connections.get(&conn)
        {
            state.timed_out = true;
            handle.timed_out.push(channel, timeout);
        }
    }
}

/// Closes a channel's broker side: consumers go, unacked messages return.
fn close_channel(core: &mut Core, conn: ConnId, channel: u16) {
    let Some(state) = core.channels.remove(&(conn, channel)) else {
        return;
    };
    core.churn.count(churn::Event::ChannelClosed);
    if let Some(reply) = &state.reply {
        core.replies.remove(&reply.suffix);
    }
    let mut touched: Vec<Arc<str>> = Vec::new();
    let mut dead = Vec::new();
    let in_tx = state
        .tx_settled
        .into_iter()
        .flat_map(|(settled, _)| settled);
    for u in state.unacked.into_values().chain(in_tx.map(|(_, u)| u)) {
        if let Some(q) = core.vhost.queues.get_mut(&*u.queue) {
            release_credit(q, conn, channel, u.consumer.as_ref());
            if let Some(m) = q.requeue(u.message, Return::Released) {
                q.settled(&m);
                dead.extend(dead_from(q, m.message, Reason::DeliveryLimit));
            }
            if !touched.contains(&u.queue) {
                touched.push(u.queue);
            }
        }
    }
    for (queue, tag) in state.consumers {
        remove_consumer(core, &queue, conn, channel, &tag);
    }
    trim_requeued(core, &touched, &mut dead);
    dead_letter_all(core, dead);
    for name in touched {
        dispatch_queue(core, &name);
    }
}

/// Drops one consumer; an auto-delete queue goes with its last consumer.
fn remove_consumer(core: &mut Core, queue: &str, conn: ConnId, channel: u16, tag: &ShortString) {
    let Some(q) = core.vhost.queues.get_mut(queue) else {
        return;
    };
    q.consumers
        .retain(|c| !(c.conn == conn && c.channel == channel && c.tag == *tag));
    if q.cursor >= q.consumers.len() {
        q.cursor = 0;
    }
    if q.consumers.is_empty() {
        q.last_used = Instant::now();
    }
    if q.auto_delete && q.had_consumers && q.consumers.is_empty() {
        delete_queue(core, queue);
    }
}

/// Deletes a queue, its bindings and consumers (who are told with basic.cancel if their
/// client advertised consumer_cancel_notify). Returns how many messages it held.
fn delete_queue(core: &mut Core, name: &str) -> u32 {
    delete_queue_for(core, name, None).0
}

/// [`delete_queue`], for `deleter`: the cancels due to its own consumers are returned
/// instead of sent.
fn delete_queue_for(core: &mut Core, name: &str, deleter: Option<ConnId>) -> (u32, Vec<Outbound>) {
    let mut own = Vec::new();
    let Some(q) = core.vhost.queues.remove(name) else {
        return (0, own);
    };
    core.churn.count(churn::Event::QueueDeleted);
    core.retired.add(&q.stats);
    if q.journal.is_some() {
        core.vhost.log(|| Record::DeleteQueue {
            name: q.name.clone(),
        });
    }
    remove_bindings_to(&mut core.vhost, &Destination::Queue(name.to_string()));
    for c in &q.consumers {
        if let Some(state) = core.channels.get_mut(&(c.conn, c.channel)) {
            state.consumers.retain(|(_, t)| *t != c.tag);
        }
        if let Some(handle) = core.connections.get(&c.conn).filter(|h| h.cancel_notify) {
            let cancel = AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                consumer_tag: c.tag.clone(),
                nowait: true,
            }));
            let frame = Outbound::Method(c.channel, cancel);
            if deleter == Some(c.conn) {
                own.push(frame);
                continue;
            }
            // Best effort: a client too slow to read its queue misses the notice, as its
            // consumer is gone either way.
            let _ = handle.tx.try_send(frame);
        }
    }
    (q.message_count(), own)
}

/// Removes every binding to `destination`; auto-delete exchanges left unbound go too.
fn remove_bindings_to(vhost: &mut VHost, destination: &Destination) {
    let mut emptied = Vec::new();
    for x in vhost.exchanges.values_mut() {
        if x.unbind_all(destination) && x.auto_delete && !x.has_bindings() {
            emptied.push((x.name.clone(), x.durable));
        }
    }
    for (name, durable) in emptied {
        if durable {
            vhost.log(|| Record::DeleteExchange { name: name.clone() });
        }
        vhost.exchanges.remove(&name);
        remove_bindings_to(vhost, &Destination::Exchange(name));
    }
}
