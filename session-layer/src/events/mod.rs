//! Session-change events over AMQP 0-9-1: how the nodes of a `shared` deployment keep their
//! near-caches coherent.
//!
//! Every node declares one durable fanout exchange (`session.events` by default) and, on
//! each connection, a server-named, exclusive, auto-delete queue bound to it. A node that
//! changes a session publishes an [`Event`]; every node, the publisher included, receives
//! it and drops its cached copy.
//!
//! An event published while a node's queue does not exist never reaches that node. This is
//! why the bus tells its [`Subscriber`] about the link itself: after
//! [`Subscriber::disconnected`] the cache can no longer be trusted, and after
//! [`Subscriber::subscribed`] every event published from then on will be delivered, so a
//! cache emptied at that moment (or bypassed in between) is coherent again.
//!
//! On the publishing side, events go to one publisher task per [`Bus`], which sends all
//! that queued up while its previous message was on its way as one message (a JSON array;
//! a lone event goes as a plain object). Under load that turns many small messages, each
//! a wake-up in every node and in the broker, into a few larger ones; idle, an event
//! leaves at once. [`Bus::publish`] waits for the broker's publisher confirm. An event
//! that cannot be confirmed goes to a bounded outbox, which is published (in order, ahead
//! of any newer event) right after the next successful (re)connect.
//!
//! The connection is owned by one task per [`Bus`], which reconnects with exponential
//! backoff and jitter; lapin's own recovery is not used, because a recovered consumer on a
//! recreated queue would hide the gap during which events were lost.

mod link;

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use lapin::{Channel, PublisherConfirm};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::Record;

/// lapin's TLS settings, as [`BusConfig::tls`] takes them.
pub use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};

/// How long [`Bus::close`] waits for the task to close its connection before aborting it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most events in one message.
const MAX_BATCH: usize = 256;

/// A change to one session, as published to every node.
///
/// On the wire, a JSON object: `{"id":"…","version":3,"kind":"write","at_us":…}`, plus
/// `"session":{…}` when the event carries the new state. Unknown fields are ignored, and
/// `at_us` and `session` may be missing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The session's id.
    pub id: String,
    /// The session's version after the change.
    pub version: u64,
    pub kind: EventKind,
    /// When the publishing node made the event, in microseconds since the Unix epoch (for
    /// measuring how long events take to arrive; nodes' clocks may disagree a little).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_us: Option<u64>,
    /// The session as saved at `version`, so receivers can update their copy instead of
    /// dropping it and reading the store on the next request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<Record>,
    /// Authenticates `session` (see the near-cache): receivers apply carried state only
    /// when it verifies, so whoever can publish to the exchange cannot plant a session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl Event {
    /// An event stamped with the current time.
    pub fn new(id: impl Into<String>, version: u64, kind: EventKind) -> Self {
        Event {
            id: id.into(),
            version,
            kind,
            at_us: Some(now_us()),
            session: None,
            mac: None,
        }
    }

    /// The same event, carrying the session's new state.
    pub fn with_session(mut self, record: Record) -> Self {
        self.session = Some(record);
        self
    }

    /// Microseconds from the event's making (on the publishing node's clock) until now
    /// (on this node's), or None if it carries no time. Zero if the clocks disagree the
    /// other way.
    pub fn lag_micros(&self) -> Option<u64> {
        self.at_us.map(|at| now_us().saturating_sub(at))
    }
}

/// One event waiting for the publisher task.
struct Queued {
    /// The event as JSON; None for a drain request from [`Bus::close`], answered once
    /// everything queued before it has been confirmed or put in the outbox.
    body: Option<Vec<u8>>,
    /// Told how the event fared, for [`Bus::publish`]; None for [`Bus::publish_detached`].
    done: Option<oneshot::Sender<Result<(), BusError>>>,
}

/// Events sent as one message.
struct Batch {
    /// Their bodies joined into a JSON array; one alone as it is.
    body: Vec<u8>,
    events: usize,
    waiters: Waiters,
}

impl Batch {
    /// Takes every event in `queued` (which holds no drain request).
    fn new(queued: &mut Vec<Queued>) -> Batch {
        let events = queued.len();
        let mut waiters = Vec::new();
        let mut body = Vec::new();
        for q in queued.drain(..) {
            waiters.extend(q.done);
            let Some(event) = q.body else { continue };
            if events == 1 {
                body = event;
            } else {
                body.push(if body.is_empty() { b'[' } else { b',' });
                body.extend_from_slice(&event);
            }
        }
        if events > 1 {
            body.push(b']');
        }
        Batch {
            body,
            events,
            waiters: Waiters(waiters),
        }
    }
}

/// The callers of [`Bus::publish`] whose events went in one batch.
struct Waiters(Vec<oneshot::Sender<Result<(), BusError>>>);

impl Waiters {
    /// Tells each how its event fared; detached events' failures are only logged.
    fn answer(self, events: usize, outcome: Result<(), BusError>) {
        if let Err(err) = &outcome
            && self.0.is_empty()
        {
            tracing::debug!(%err, events, "detached session events");
        }
        for waiter in self.0 {
            let _ = waiter.send(outcome.clone());
        }
    }
}

/// The publisher task: sends each batch under the order lock, so batches leave in the
/// order their events were queued. As Nagle's algorithm does for small segments, it keeps
/// one message unconfirmed at most: events queued while the broker has yet to ack the
/// previous one wait for that ack and leave together. Idle, an event leaves at once; under
/// load, one message carries many. Ends when the last [`Bus`] is dropped.
async fn publisher(shared: Arc<Shared>, mut queue: mpsc::Receiver<Queued>) {
    let mut queued = Vec::with_capacity(MAX_BATCH);
    // What came after a drain request, for the next round.
    let mut later = Vec::new();
    let mut unconfirmed: Option<JoinHandle<()>> = None;
    loop {
        queued.append(&mut later);
        if queued.is_empty() && queue.recv_many(&mut queued, MAX_BATCH).await == 0 {
            break;
        }
        if let Some(previous) = unconfirmed.take() {
            // Bounded by the confirm timeout; a panic there was already reported.
            let _ = previous.await;
            while queued.len() < MAX_BATCH
                && let Ok(more) = queue.try_recv()
            {
                queued.push(more);
            }
        }
        if let Some(at) = queued.iter().position(|q| q.body.is_none()) {
            later = queued.split_off(at);
        }
        if !queued.is_empty() {
            unconfirmed = send(&shared, Batch::new(&mut queued)).await;
        }
        if !later.is_empty() {
            if let Some(previous) = unconfirmed.take() {
                let _ = previous.await;
            }
            let drained = later.remove(0);
            if let Some(done) = drained.done {
                let _ = done.send(Ok(()));
            }
        }
    }
}

/// Sends one batch, or puts it in the outbox when there is no link; returns the task that
/// waits for its confirm.
async fn send(shared: &Arc<Shared>, batch: Batch) -> Option<JoinHandle<()>> {
    let Batch {
        body,
        events,
        waiters,
    } = batch;
    let turn = shared.order.lock().await;
    let live = {
        let link = shared.link();
        match &link.live {
            Some(live) if link.outbox.is_empty() => live.clone(),
            _ => {
                drop(link);
                let outcome = shared.enqueue(body, events, BusError::NotConnected);
                waiters.answer(events, outcome);
                return None;
            }
        }
    };
    let timeout = shared.config.confirm_timeout;
    let sent = link::send(&live.channel, &shared.config.exchange, &body, timeout).await;
    drop(turn);
    let shared = shared.clone();
    Some(tokio::spawn(async move {
        let outcome = settle(&shared, live, body, events, sent).await;
        waiters.answer(events, outcome);
    }))
}

/// Waits for the ack of a sent batch, outside the order lock (the outbox flush of a new
/// link need not wait for it). Without one, the link is dropped and the batch goes to the
/// outbox.
async fn settle(
    shared: &Shared,
    live: Live,
    body: Vec<u8>,
    events: usize,
    sent: Result<PublisherConfirm, String>,
) -> Result<(), BusError> {
    let timeout = shared.config.confirm_timeout;
    let outcome = match sent {
        Ok(confirm) => link::confirmed(confirm, timeout).await,
        Err(reason) => Err(reason),
    };
    let Err(reason) = outcome else {
        return Ok(());
    };
    tracing::debug!(%reason, "session events not confirmed; reconnecting");
    let _turn = shared.order.lock().await;
    {
        // Later publishes must queue behind this one until the reconnect.
        let mut link = shared.link();
        if link.live.as_ref().is_some_and(|l| l.is(&live)) {
            link.live = None;
        }
    }
    live.broken.notify_one();
    shared.enqueue(body, events, BusError::Unconfirmed(reason))
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What happened to the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Write,
    Rotate,
    Logout,
    Expire,
    Revoke,
    /// A kind this version does not know (from a newer publisher): still a change, so
    /// still an eviction.
    #[serde(other)]
    Other,
}

/// Told about events and about the link's state. Called from the bus task; must not block.
///
/// Calls alternate: `subscribed` is never called twice without `disconnected` in between,
/// and `event` is only called between a `subscribed` and the next `disconnected`. A node
/// also receives the events it published itself.
pub trait Subscriber: Send + Sync + 'static {
    fn event(&self, event: Event);
    /// The link to the broker is gone (or never came up): events may be missed from now on.
    fn disconnected(&self);
    /// Consuming again: every event published from now on will be seen.
    fn subscribed(&self);
}

/// Where and how the bus connects.
#[derive(Clone)]
pub struct BusConfig {
    /// `amqp://user:password@host:port/vhost`. Without a `heartbeat` query parameter the
    /// bus asks for 5 s heartbeats, so a silently dead link is noticed within about 10 s.
    pub url: String,
    /// The fanout exchange every node publishes to and binds its queue to.
    pub exchange: String,
    /// First pause between reconnect attempts.
    pub backoff_min: Duration,
    /// Longest pause between reconnect attempts.
    pub backoff_max: Duration,
    /// How long [`Bus::publish`] waits for the broker's confirm.
    pub confirm_timeout: Duration,
    /// Events kept for publishing after a reconnect; more are refused. Also how many may
    /// wait for the publisher task before publishers wait for room.
    pub outbox_capacity: usize,
    /// For an `amqps://` URL: CAs to trust beyond Mozilla's public roots (PEM) and a client
    /// certificate to present (for brokers that require one, or log clients in by it with
    /// `?auth_mechanism=external`).
    pub tls: OwnedTLSConfig,
}

impl BusConfig {
    /// The defaults for everything but the URL.
    pub fn new(url: impl Into<String>) -> Self {
        BusConfig {
            url: url.into(),
            exchange: "session.events".into(),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            confirm_timeout: Duration::from_secs(1),
            outbox_capacity: 10_000,
            tls: OwnedTLSConfig::default(),
        }
    }
}

/// Leaves the password out.
impl fmt::Debug for BusConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusConfig")
            .field("url", &link::redact(&self.url))
            .field("exchange", &self.exchange)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .field("confirm_timeout", &self.confirm_timeout)
            .field("outbox_capacity", &self.outbox_capacity)
            .finish()
    }
}

/// Why [`Bus::publish`] did not get a confirm. See [`BusError::is_queued`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    #[error("not connected to the event broker; the event waits in the outbox")]
    NotConnected,
    #[error("the event broker did not confirm the event ({0}); it waits in the outbox")]
    Unconfirmed(String),
    #[error("the event outbox is full ({0} events); the event was dropped")]
    OutboxFull(usize),
    #[error("the event bus is closed; the event was dropped")]
    Closed,
    #[error("the event could not be encoded: {0}")]
    Encode(String),
}

impl BusError {
    /// Whether the event is in the outbox, to be published after the next reconnect.
    pub fn is_queued(&self) -> bool {
        matches!(self, BusError::NotConnected | BusError::Unconfirmed(_))
    }
}

/// The event bus of one node. Cheap to clone; the task stops when [`Bus::close`] is called
/// or the last clone is dropped.
#[derive(Clone)]
pub struct Bus {
    handle: Arc<Handle>,
}

/// Held only by the [`Bus`] clones (never by the task), so that dropping the last one
/// stops the task.
struct Handle {
    shared: Arc<Shared>,
    /// To the publisher task.
    queue: mpsc::Sender<Queued>,
    stop: watch::Sender<bool>,
    task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        let _ = self.stop.send(true);
    }
}

/// State shared by the [`Bus`] clones and the task.
struct Shared {
    config: BusConfig,
    subscriber: Arc<dyn Subscriber>,
    subscribed: AtomicBool,
    closed: AtomicBool,
    /// Taken by the publisher task for each send and by the outbox flush for its whole
    /// duration, so that events leave in the order `publish` was called and the outbox is
    /// only changed by its holder.
    order: tokio::sync::Mutex<()>,
    link: Mutex<Link>,
}

#[derive(Default)]
struct Link {
    /// The current connection's confirm-mode channel, once the outbox has been flushed.
    live: Option<Live>,
    /// Message bodies waiting for a connection, oldest first, with how many events each
    /// holds.
    outbox: VecDeque<(Vec<u8>, usize)>,
    /// Events in `outbox`.
    outboxed: usize,
    /// Events refused since the outbox last had room (logged once flushed).
    dropped: u64,
    /// The current connection's queue.
    queue: Option<String>,
}

#[derive(Clone)]
struct Live {
    channel: Channel,
    /// Notified when a publish on `channel` failed: the task drops the connection.
    broken: Arc<Notify>,
}

impl Live {
    fn is(&self, other: &Live) -> bool {
        Arc::ptr_eq(&self.broken, &other.broken)
    }
}

impl Shared {
    fn link(&self) -> MutexGuard<'_, Link> {
        self.link.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts `body` (of `events` events) in the outbox, then returns `error` (or that the
    /// outbox is full). Callers hold `order`.
    fn enqueue(&self, body: Vec<u8>, events: usize, error: BusError) -> Result<(), BusError> {
        let mut link = self.link();
        if link.outboxed + events > self.config.outbox_capacity {
            link.dropped += events as u64;
            if link.dropped == 1 {
                tracing::error!(
                    capacity = self.config.outbox_capacity,
                    "session event outbox full: dropping events until the broker is back"
                );
            }
            return Err(BusError::OutboxFull(self.config.outbox_capacity));
        }
        link.outbox.push_back((body, events));
        link.outboxed += events;
        Err(error)
    }
}

impl Bus {
    /// Starts the connect/subscribe/reconnect task and returns at once (the broker may be
    /// down). Must be called within a Tokio runtime.
    pub fn start(config: BusConfig, subscriber: Arc<dyn Subscriber>) -> Bus {
        let shared = Arc::new(Shared {
            config,
            subscriber,
            subscribed: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            order: tokio::sync::Mutex::new(()),
            link: Mutex::new(Link::default()),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(link::run(shared.clone(), stopped));
        // Events waiting for the publisher task are bounded like the outbox; more make
        // publishers wait. As many as the outbox holds, so that while a silent link waits
        // out its confirm timeout, writes keep queueing instead of waiting with it.
        let (queue, queued) = mpsc::channel(shared.config.outbox_capacity.max(1));
        tokio::spawn(publisher(shared.clone(), queued));
        Bus {
            handle: Arc::new(Handle {
                shared,
                queue,
                stop,
                task: tokio::sync::Mutex::new(Some(task)),
            }),
        }
    }

    /// Publishes and waits for the broker's publisher confirm: `confirm_timeout` at most
    /// for its own message, after the one ahead of it (if any) got its confirm or its own
    /// timeout. When not connected or the confirm fails or times out, the event
    /// goes to a bounded outbox that is flushed (in order) right after the next successful
    /// (re)connect, and `Err` is returned ([`BusError::is_queued`] tells which). A failed
    /// confirm also makes the bus drop the connection and reconnect.
    ///
    /// Events from one node are sent in the order of the calls (of calls that overlap, in
    /// the order they queued), and reach the outbox in that order too. Once queued, the
    /// event is sent even if the returned future is dropped.
    pub async fn publish(&self, event: &Event) -> Result<(), BusError> {
        let (done, outcome) = oneshot::channel();
        self.queue(event, Some(done)).await?;
        outcome.await.unwrap_or(Err(BusError::Closed))
    }

    /// Queues like [`Bus::publish`], in order, but returns at once, leaving the sending and
    /// the broker's ack to the publisher task (with the same outbox on failure). For
    /// events whose sender has nothing to wait for. Waits only while the queue is full.
    pub async fn publish_detached(&self, event: &Event) -> Result<(), BusError> {
        self.queue(event, None).await
    }

    async fn queue(
        &self,
        event: &Event,
        done: Option<oneshot::Sender<Result<(), BusError>>>,
    ) -> Result<(), BusError> {
        let body = serde_json::to_vec(event).map_err(|e| BusError::Encode(e.to_string()))?;
        if self.handle.shared.closed.load(Ordering::SeqCst) {
            return Err(BusError::Closed);
        }
        self.handle
            .queue
            .send(Queued {
                body: Some(body),
                done,
            })
            .await
            .map_err(|_| BusError::Closed)
    }

    /// Whether the consumer is registered: every event published from now on is seen.
    pub fn is_subscribed(&self) -> bool {
        self.handle.shared.subscribed.load(Ordering::SeqCst)
    }

    /// Events waiting in the outbox.
    pub fn outbox_len(&self) -> usize {
        self.handle.shared.link().outboxed
    }

    /// The server-named queue of the current connection, if connected.
    pub fn queue_name(&self) -> Option<String> {
        self.handle.shared.link().queue.clone()
    }

    /// Sends what was queued before the call, then stops the task and closes the
    /// connection cleanly (used on shutdown and in tests), each step bounded. The
    /// subscriber gets a last `disconnected` if it was subscribed; events still in the
    /// outbox are dropped (and logged). Later publishes fail with [`BusError::Closed`].
    pub async fn close(&self) {
        let handle = &self.handle;
        handle.shared.closed.store(true, Ordering::SeqCst);
        // Events queued before now still go out (a node stopping right after a write's
        // response must not take the write's event with it), within the same bound.
        let (done, drained) = oneshot::channel();
        let drain = async {
            let request = Queued {
                body: None,
                done: Some(done),
            };
            if handle.queue.send(request).await.is_ok() {
                let _ = drained.await;
            }
        };
        if tokio::time::timeout(CLOSE_TIMEOUT, drain).await.is_err() {
            tracing::warn!("session events still queued after {CLOSE_TIMEOUT:?}; dropped");
        }
        let _ = handle.stop.send(true);
        let mut task = handle.task.lock().await;
        if let Some(mut running) = task.take()
            && tokio::time::timeout(CLOSE_TIMEOUT, &mut running)
                .await
                .is_err()
        {
            tracing::warn!("session event bus did not stop within {CLOSE_TIMEOUT:?}; aborted");
            running.abort();
            let _ = running.await;
        }
    }
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("config", &self.handle.shared.config)
            .field("subscribed", &self.is_subscribed())
            .field("outbox", &self.outbox_len())
            .finish()
    }
}
