//! The bus task: connect, declare, consume, flush the outbox, notice the link's loss,
//! back off, reconnect.

use std::hash::{BuildHasher, RandomState};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind,
    PublisherConfirm,
};
use tokio::sync::{Notify, watch};
use tracing::{debug, error, info, warn};

use super::{Event, Live, Shared};

/// Heartbeat asked for when the URL names none, in seconds. lapin drops a connection that
/// has been silent for two intervals.
const DEFAULT_HEARTBEAT: u16 = 5;
/// Bound on each step of setting up a connection (TCP and handshake, each declaration).
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on closing a connection politely.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the connection's state is checked, as a backstop to its events.
const STATUS_CHECK: Duration = Duration::from_millis(500);
/// Outboxed messages published before waiting for their confirms.
const FLUSH_BATCH: usize = 256;
/// Bytes of a malformed body quoted in the log.
const EXCERPT: usize = 120;
/// At most one warning about malformed events per this long.
const MALFORMED_WARN_EVERY: Duration = Duration::from_secs(1);

/// `host:port vhost "/"`: the URL without credentials, for logs.
pub(super) fn redact(url: &str) -> String {
    match url.parse::<AMQPUri>() {
        Ok(uri) => format!(
            "{}:{} vhost {:?}",
            uri.authority.host, uri.authority.port, uri.vhost
        ),
        Err(_) => "<unparsable AMQP URL>".into(),
    }
}

fn properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        // Transient: the queues are not durable, an event outliving a broker restart would
        // have nobody to go to.
        .with_delivery_mode(1)
}

/// Sends `body` to `exchange` on a confirm-mode channel; the returned confirm resolves
/// when the broker acks. Sending and waiting are apart so that publishes keep their order
/// (sending under the bus's lock) without each waiting for the previous one's ack.
pub(super) async fn send(
    channel: &Channel,
    exchange: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<PublisherConfirm, String> {
    let send = channel.basic_publish(
        exchange.into(),
        "".into(),
        BasicPublishOptions::default(),
        body,
        properties(),
    );
    tokio::time::timeout(timeout, send)
        .await
        .map_err(|_| format!("basic.publish: no answer within {timeout:?}"))?
        .map_err(|e| format!("basic.publish: {e}"))
}

/// Waits for the broker's ack of one publish.
pub(super) async fn confirmed(confirm: PublisherConfirm, timeout: Duration) -> Result<(), String> {
    let confirmation = tokio::time::timeout(timeout, confirm)
        .await
        .map_err(|_| format!("no confirm within {timeout:?}"))?
        .map_err(|e| format!("confirm: {e}"))?;
    if confirmation.is_ack() {
        Ok(())
    } else {
        Err("nacked by the broker".to_string())
    }
}

/// Completes when the bus is closed or its last handle dropped.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|&stopped| stopped).await;
}

/// Calls the subscriber; a panic there is logged instead of ending the task (which would
/// leave the subscriber believing it is still subscribed).
fn notify(what: &str, call: impl FnOnce()) -> bool {
    let ok = catch_unwind(AssertUnwindSafe(call)).is_ok();
    if !ok {
        error!("session event subscriber panicked in {what}");
    }
    ok
}

/// The pause before reconnect attempt `attempt` (0 for the first): doubling from
/// `backoff_min` up to `backoff_max`, drawn from the upper half of that (so that nodes
/// restarted together spread out), never below `backoff_min`.
fn backoff(min: Duration, max: Duration, attempt: u32) -> Duration {
    let min = min.max(Duration::from_millis(1));
    let max = max.max(min);
    let ceiling = min.saturating_mul(1u32 << attempt.min(20)).min(max);
    let unit = (RandomState::new().hash_one(Instant::now()) >> 11) as f64 / (1u64 << 53) as f64;
    (ceiling / 2 + (ceiling / 2).mul_f64(unit)).clamp(min, max)
}

/// The task behind a [`super::Bus`]: runs until `stop` says so or its sender is dropped.
pub(super) async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let target = redact(&shared.config.url);
    // Whether `disconnected` was called since the last `subscribed` (or at start).
    let mut told_down = false;
    // When the current outage began, if it was logged.
    let mut outage: Option<Instant> = None;
    let mut attempt: u32 = 0;
    let mut malformed = Malformed::default();
    loop {
        let connected = tokio::select! {
            biased;
            () = stopped(&mut stop) => break,
            connected = connect(&shared) => connected,
        };
        match connected {
            Ok(mut session) => {
                attempt = 0;
                match outage.take() {
                    Some(since) => info!(
                        broker = %target, queue = %session.queue,
                        "session events: reconnected after {:.1?}", since.elapsed()
                    ),
                    None => {
                        info!(broker = %target, queue = %session.queue, "session events: connected")
                    }
                }
                shared.link().queue = Some(session.queue.clone());
                let end = if notify("subscribed", || shared.subscriber.subscribed()) {
                    // After the call: `is_subscribed` implies the subscriber was told.
                    shared.subscribed.store(true, Ordering::SeqCst);
                    session.serve(&shared, &mut stop, &mut malformed).await
                } else {
                    End::Lost("the subscriber panicked".into())
                };
                {
                    let mut link = shared.link();
                    link.live = None;
                    link.queue = None;
                }
                shared.subscribed.store(false, Ordering::SeqCst);
                // Whichever way the session ended, `subscribed` is followed by this.
                notify("disconnected", || shared.subscriber.disconnected());
                told_down = true;
                match end {
                    End::Stop => {
                        session.close().await;
                        break;
                    }
                    End::Lost(reason) => {
                        warn!(broker = %target, %reason, "session events: link lost; reconnecting");
                        outage = Some(Instant::now());
                        // Politely, in case the connection still works (a publish timed
                        // out on a slow broker), so the broker drops the old queue; in
                        // the background, as a dead link would hold up reconnecting.
                        tokio::spawn(session.close());
                    }
                }
            }
            Err(reason) => {
                if !told_down {
                    notify("disconnected", || shared.subscriber.disconnected());
                    told_down = true;
                }
                if outage.is_none() {
                    warn!(broker = %target, %reason, "session events: cannot connect; retrying");
                    outage = Some(Instant::now());
                } else {
                    debug!(broker = %target, %reason, attempt, "session events: connect failed");
                }
            }
        }
        let pause = backoff(
            shared.config.backoff_min,
            shared.config.backoff_max,
            attempt,
        );
        attempt = attempt.saturating_add(1);
        tokio::select! {
            biased;
            () = stopped(&mut stop) => break,
            () = tokio::time::sleep(pause) => {}
        }
    }
    if !told_down {
        notify("disconnected", || shared.subscriber.disconnected());
    }
    let left = shared.link().outboxed;
    if left > 0 {
        warn!(
            events = left,
            "session events: bus closed with events in the outbox; dropped"
        );
    }
    debug!(broker = %target, "session events: bus stopped");
}

/// Why a connection's service ended.
enum End {
    Stop,
    Lost(String),
}

/// One connection, subscribed.
struct Session {
    conn: Connection,
    events: Pin<Box<dyn Stream<Item = lapin::Event> + Send>>,
    consumer: Consumer,
    /// The consumer's channel, kept open as long as the session.
    _consuming: Channel,
    /// In confirm mode, for publishing.
    publishing: Channel,
    queue: String,
}

async fn step<T>(
    what: &str,
    fut: impl Future<Output = Result<T, lapin::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(STEP_TIMEOUT, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {STEP_TIMEOUT:?}")),
    }
}

/// Connects, declares the exchange and this connection's queue, and registers the
/// consumer (returning once the broker sent basic.consume-ok).
async fn connect(shared: &Shared) -> Result<Session, String> {
    let mut uri: AMQPUri = shared
        .config
        .url
        .parse()
        .map_err(|e| format!("invalid AMQP URL: {e}"))?;
    uri.query.heartbeat.get_or_insert(DEFAULT_HEARTBEAT);
    let name = format!("session-layer events (pid {})", std::process::id());
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let runtime =
        lapin::runtime::default_runtime().map_err(|e| format!("AMQP client runtime: {e}"))?;
    let tls = shared.config.tls.clone();
    let conn = step(
        "connect",
        Connection::connect_uri_with_config(uri, props, tls, runtime),
    )
    .await?;
    let events = Box::pin(conn.events_listener());
    match subscribe(shared, &conn).await {
        Ok((consuming, consumer, publishing, queue)) => Ok(Session {
            conn,
            events,
            consumer,
            _consuming: consuming,
            publishing,
            queue,
        }),
        Err(e) => {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, "setup failed".into()))
                    .await;
            });
            Err(e)
        }
    }
}

async fn subscribe(
    shared: &Shared,
    conn: &Connection,
) -> Result<(Channel, Consumer, Channel, String), String> {
    let exchange = shared.config.exchange.as_str();
    let consuming = step("channel.open", conn.create_channel()).await?;
    // Durable: the exchange is declared by every node on every connect anyway, but a
    // durable one also survives the broker restarting while some node is still down.
    step(
        "exchange.declare",
        consuming.exchange_declare(
            exchange.into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await?;
    // A fresh queue per connection: exclusive and auto-delete, so it goes away with the
    // connection (or this consumer) and never holds events for a node that is not there.
    let queue = step(
        "queue.declare",
        consuming.queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await?
    .name()
    .to_string();
    step(
        "queue.bind",
        consuming.queue_bind(
            queue.as_str().into(),
            exchange.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await?;
    // no-ack: the queue lives exactly as long as this connection, so a delivery the broker
    // sent but this node did not process can never be redelivered to anyone who needs it:
    // acks would buy nothing but a frame per event. Whatever is lost with the connection
    // is covered by the `disconnected` that follows.
    let consumer = step(
        "basic.consume",
        consuming.basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await?;
    let publishing = step("channel.open", conn.create_channel()).await?;
    step(
        "confirm.select",
        publishing.confirm_select(ConfirmSelectOptions::default()),
    )
    .await?;
    Ok((consuming, consumer, publishing, queue))
}

impl Session {
    /// Delivers events to the subscriber and flushes the outbox, until the bus stops or
    /// the link fails in any of the ways it can show: an error event on the connection, a
    /// failed or ended consumer, a failed publish, or a connection no longer open.
    async fn serve(
        &mut self,
        shared: &Shared,
        stop: &mut watch::Receiver<bool>,
        malformed: &mut Malformed,
    ) -> End {
        let live = Live {
            channel: self.publishing.clone(),
            broken: Arc::new(Notify::new()),
        };
        let broken = live.broken.clone();
        let flush = flush(shared, live);
        tokio::pin!(flush);
        let mut flushed = false;
        let mut check = tokio::time::interval(STATUS_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Made once, not per event: each would register a waiter and drop it again.
        let stopping = stopped(stop);
        tokio::pin!(stopping);
        let unconfirmed = broken.notified();
        tokio::pin!(unconfirmed);
        loop {
            tokio::select! {
                biased;
                () = &mut stopping => return End::Stop,
                () = &mut unconfirmed => return End::Lost("a publish was not confirmed".into()),
                event = self.events.next() => match event {
                    Some(lapin::Event::Error(e)) => return End::Lost(e.to_string()),
                    Some(other) => debug!(event = ?other, "session events: connection event"),
                    None => return End::Lost("the connection's event stream ended".into()),
                },
                _ = check.tick() => if !self.conn.status().connected() {
                    return End::Lost("the connection is no longer open".into());
                },
                flushed_now = &mut flush, if !flushed => {
                    flushed = true;
                    match flushed_now {
                        Ok(0) => {}
                        Ok(n) => info!(events = n, "session events: outbox flushed"),
                        Err(e) => return End::Lost(format!("outbox flush: {e}")),
                    }
                }
                delivery = self.consumer.next() => match delivery {
                    Some(Ok(delivery)) => {
                        if !deliver(shared, &delivery.data, malformed) {
                            return End::Lost("the subscriber panicked".into());
                        }
                    }
                    Some(Err(e)) => return End::Lost(format!("consumer: {e}")),
                    None => return End::Lost("the consumer was cancelled".into()),
                }
            }
        }
    }

    async fn close(self) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.conn.close(200, "bye".into())).await;
    }
}

/// Publishes the outbox in order, then makes `live` the channel `publish` uses. Holds the
/// publish lock throughout, so newer events wait behind the outboxed ones. An event leaves
/// the outbox only once confirmed: if this is cut short, the rest stays for the next
/// connection (a confirmed-but-not-yet-removed event may then go out twice, which is
/// harmless for invalidations).
async fn flush(shared: &Shared, live: Live) -> Result<usize, String> {
    let _turn = shared.order.lock().await;
    let timeout = shared.config.confirm_timeout;
    let exchange = shared.config.exchange.as_str();
    let mut sent = 0;
    loop {
        let batch: Vec<(Vec<u8>, usize)> = shared
            .link()
            .outbox
            .iter()
            .take(FLUSH_BATCH)
            .cloned()
            .collect();
        if batch.is_empty() {
            break;
        }
        let mut confirms = Vec::with_capacity(batch.len());
        for (body, _) in &batch {
            confirms.push(send(&live.channel, exchange, body, timeout).await?);
        }
        for confirm in confirms {
            confirmed(confirm, timeout).await?;
        }
        let events: usize = batch.iter().map(|(_, events)| events).sum();
        let mut link = shared.link();
        link.outbox.drain(..batch.len());
        link.outboxed -= events;
        sent += events;
    }
    let dropped = {
        let mut link = shared.link();
        link.live = Some(live);
        std::mem::take(&mut link.dropped)
    };
    if dropped > 0 {
        error!(
            events = dropped,
            "session events: events were dropped while the outbox was full"
        );
    }
    Ok(sent)
}

/// Rate-limits the warnings about malformed events, so that a misbehaving publisher cannot
/// flood the log: one warning per [`MALFORMED_WARN_EVERY`], the rest at debug and counted.
#[derive(Default)]
struct Malformed {
    last_warning: Option<Instant>,
    unreported: u64,
}

/// Hands the events of one delivery (one event, or a JSON array of them) to the
/// subscriber, in order; a malformed body is logged and skipped. False if the subscriber
/// panicked.
fn deliver(shared: &Shared, body: &[u8], malformed: &mut Malformed) -> bool {
    let batch = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let parsed = if batch {
        serde_json::from_slice::<Vec<Event>>(body)
    } else {
        serde_json::from_slice::<Event>(body).map(|event| vec![event])
    };
    let error = match parsed {
        Ok(events) => {
            return notify("event", || {
                for event in events {
                    shared.subscriber.event(event);
                }
            });
        }
        Err(e) => e,
    };
    let excerpt = excerpt(body);
    if malformed
        .last_warning
        .is_none_or(|at| at.elapsed() >= MALFORMED_WARN_EVERY)
    {
        warn!(
            %error, bytes = body.len(), %excerpt,
            skipped_unreported = malformed.unreported,
            "session events: malformed event skipped"
        );
        malformed.last_warning = Some(Instant::now());
        malformed.unreported = 0;
    } else {
        debug!(%error, bytes = body.len(), %excerpt, "session events: malformed event skipped");
        malformed.unreported += 1;
    }
    true
}

/// The start of `body` as text, control characters escaped.
fn excerpt(body: &[u8]) -> String {
    let head = &body[..body.len().min(EXCERPT)];
    let mut text = String::with_capacity(head.len() + 3);
    for c in String::from_utf8_lossy(head).chars() {
        if c.is_control() {
            text.extend(c.escape_default());
        } else {
            text.push(c);
        }
    }
    if body.len() > EXCERPT {
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_in_bounds_and_grows() {
        let (min, max) = (Duration::from_millis(50), Duration::from_secs(5));
        for attempt in 0..40 {
            let pause = backoff(min, max, attempt);
            assert!(pause >= min && pause <= max, "{attempt}: {pause:?}");
        }
        assert_eq!(backoff(min, max, 0), min);
        assert!(backoff(min, max, 4) >= Duration::from_millis(400));
        assert!(backoff(min, max, 30) >= max / 2);
    }

    #[test]
    fn excerpt_is_bounded_and_escaped() {
        let long = vec![b'x'; 1000];
        assert_eq!(excerpt(&long).chars().count(), EXCERPT + 1);
        assert_eq!(excerpt(b"\"a\"\n\0\xff"), "\"a\"\\n\\u{0}\u{fffd}");
    }

    #[test]
    fn redact_drops_credentials() {
        let shown = redact("amqp://user:secret@broker:5673/%2f");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("broker:5673"), "{shown}");
    }
}
