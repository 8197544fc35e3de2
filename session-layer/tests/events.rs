//! The session event bus against the embedded AMQP broker of `session-store`, run
//! in-process on 127.0.0.1. Each test starts its own broker; a small TCP proxy in front
//! of it lets a test cut or freeze one node's link while the others keep theirs.

mod support {
    pub mod ports;
}

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use session_layer::events::{Bus, BusConfig, BusError, Event, EventKind, Subscriber};
use session_store::amqp::{AmqpConfig, run};
use support::ports::free_port;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Bound on a whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on each awaited condition and network step.
const WAIT: Duration = Duration::from_secs(30);
const EXCHANGE: &str = "session.events";

async fn bounded(test: impl Future<Output = ()>) {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test timed out");
}

async fn step<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out"))
}

/// Polls `cond` every 10 ms until it holds; panics with `what` after [`WAIT`].
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Binds `port` on 127.0.0.1, retrying while its previous owner lets go of it.
async fn bind(port: u16) -> TcpListener {
    let deadline = Instant::now() + WAIT;
    loop {
        match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(listener) => return listener,
            Err(e) => assert!(Instant::now() < deadline, "bind 127.0.0.1:{port}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn url(port: u16) -> String {
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
}

/// The embedded broker, in memory only, on a fixed port.
struct Broker {
    port: u16,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Broker {
    async fn start(port: u16) -> Broker {
        let listener = bind(port).await;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            run(listener, AmqpConfig::default(), shutdown)
                .await
                .expect("broker");
        });
        Broker { port, stop, task }
    }

    fn url(&self) -> String {
        url(self.port)
    }

    /// Shuts the broker down (it closes every client connection) and waits until it has
    /// let go of its port.
    async fn stop(self) {
        let _ = self.stop.send(());
        step("broker shutdown", self.task)
            .await
            .expect("broker task");
    }
}

/// A TCP proxy on its own port in front of the broker. `cut` drops its connections and
/// stops listening (clients get resets, then refusals); `freeze` stops forwarding bytes
/// while keeping every socket open (a silently dead link).
struct Proxy {
    port: u16,
    upstream: u16,
    frozen: watch::Sender<bool>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(upstream: u16) -> Proxy {
        let proxy = Proxy {
            port: free_port(),
            upstream,
            frozen: watch::Sender::new(false),
            tasks: Arc::new(Mutex::new(Vec::new())),
        };
        proxy.open().await;
        proxy
    }

    fn url(&self) -> String {
        url(self.port)
    }

    fn tasks(&self) -> MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn open(&self) {
        let listener = bind(self.port).await;
        let (upstream, frozen, tasks) = (self.upstream, self.frozen.clone(), self.tasks.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let frozen = frozen.subscribe();
                let conn = tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let (client_in, client_out) = client.into_split();
                    let (server_in, server_out) = server.into_split();
                    tokio::join!(
                        pump(client_in, server_out, frozen.clone()),
                        pump(server_in, client_out, frozen),
                    );
                });
                tasks
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(conn);
            }
        });
        self.tasks().push(accept);
    }

    /// Aborts the listener and every connection, then waits until they are gone.
    async fn cut(&self) {
        loop {
            let tasks: Vec<JoinHandle<()>> = self.tasks().drain(..).collect();
            if tasks.is_empty() {
                return;
            }
            for task in tasks {
                task.abort();
                let _ = step("proxy task abort", task).await;
            }
        }
    }

    fn freeze(&self, frozen: bool) {
        self.frozen.send_replace(frozen);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for task in self.tasks().drain(..) {
            task.abort();
        }
    }
}

/// Copies bytes from `from` to `to`, holding them back while frozen.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut frozen: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if frozen.wait_for(|&f| !f).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    // Not even the end of the stream gets through while frozen.
    let _ = frozen.wait_for(|&f| !f).await;
    let _ = to.shutdown().await;
}

#[derive(Debug, Clone, PartialEq)]
enum Call {
    Event(Event),
    Disconnected,
    Subscribed,
}

/// A subscriber that records every call.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<Call>>,
}

impl Subscriber for Recorder {
    fn event(&self, event: Event) {
        self.lock().push(Call::Event(event));
    }
    fn disconnected(&self) {
        self.lock().push(Call::Disconnected);
    }
    fn subscribed(&self) {
        self.lock().push(Call::Subscribed);
    }
}

impl Recorder {
    fn lock(&self) -> MutexGuard<'_, Vec<Call>> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn calls(&self) -> Vec<Call> {
        self.lock().clone()
    }

    fn events(&self) -> Vec<Event> {
        self.lock()
            .iter()
            .filter_map(|c| match c {
                Call::Event(e) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    fn count(&self, call: &Call) -> usize {
        self.lock().iter().filter(|c| *c == call).count()
    }

    fn subscribes(&self) -> usize {
        self.count(&Call::Subscribed)
    }

    fn disconnects(&self) -> usize {
        self.count(&Call::Disconnected)
    }

    /// The contract with subscribers: `subscribed` and `disconnected` alternate (a first
    /// `disconnected` may come before any `subscribed`), events only while subscribed.
    fn check_protocol(&self, name: &str) {
        let calls = self.calls();
        let mut up = false;
        for (i, call) in calls.iter().enumerate() {
            match call {
                Call::Subscribed => {
                    assert!(
                        !up,
                        "{name}: subscribed twice in a row at call {i}: {calls:?}"
                    );
                    up = true;
                }
                Call::Disconnected => {
                    assert!(
                        up || i == 0,
                        "{name}: disconnected while down at call {i}: {calls:?}"
                    );
                    up = false;
                }
                Call::Event(_) => assert!(up, "{name}: event while down at call {i}"),
            }
        }
    }
}

fn config(url: String) -> BusConfig {
    BusConfig {
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..BusConfig::new(url)
    }
}

fn event(n: u64) -> Event {
    Event::new(format!("session-{n}"), n, EventKind::Write)
}

fn start(url: String) -> (Bus, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    (Bus::start(config(url), recorder.clone()), recorder)
}

async fn raw_connect(url: &str) -> Connection {
    step(
        "raw connect",
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .expect("raw connect")
}

async fn raw_channel(conn: &Connection) -> Channel {
    step("raw channel", conn.create_channel())
        .await
        .expect("raw channel")
}

/// A raw client's own queue on the exchange, to look at what the bus sends, consumed on a
/// channel that is also in confirm mode, for publishing by hand.
async fn raw_watch(conn: &Connection) -> (Channel, lapin::Consumer) {
    let ch = raw_channel(conn).await;
    step(
        "exchange.declare",
        ch.exchange_declare(
            EXCHANGE.into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("same exchange");
    let q = step(
        "queue.declare",
        ch.queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue")
    .name()
    .to_string();
    step(
        "queue.bind",
        ch.queue_bind(
            q.as_str().into(),
            EXCHANGE.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("bind");
    let watch = step(
        "basic.consume",
        ch.basic_consume(
            q.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("consume");
    step(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    (ch, watch)
}

/// Publishes `body` by hand and waits for the broker's ack.
async fn raw_publish(ch: &Channel, body: &[u8]) {
    let confirm = step(
        "raw publish",
        ch.basic_publish(
            EXCHANGE.into(),
            "".into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        ),
    )
    .await
    .expect("raw publish");
    assert!(
        step("raw confirm", confirm)
            .await
            .expect("confirm")
            .is_ack()
    );
}

/// The reply code of a passive queue.declare of `queue` on a fresh channel (None: exists
/// and is usable by this connection).
async fn passive_declare(conn: &Connection, queue: &str) -> Option<u16> {
    let ch = raw_channel(conn).await;
    let r = step(
        "passive queue.declare",
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    match r {
        Ok(_) => None,
        Err(e) => match e.kind() {
            lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
            other => panic!("passive declare of {queue}: {other:?}"),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_sees_every_event_in_order() {
    bounded(async {
        let broker = Broker::start(free_port()).await;
        let (a, ra) = start(broker.url());
        let (b, rb) = start(broker.url());
        until("both subscribed", || a.is_subscribed() && b.is_subscribed()).await;
        assert_eq!((ra.subscribes(), rb.subscribes()), (1, 1));

        let sent: Vec<Event> = (0..500).map(event).collect();
        for e in &sent {
            a.publish(e).await.expect("publish while connected");
        }
        until("500 events at both", || {
            ra.events().len() >= 500 && rb.events().len() >= 500
        })
        .await;
        assert_eq!(
            ra.events(),
            sent,
            "the publisher sees its own events, in order"
        );
        assert_eq!(rb.events(), sent, "the other node sees them in order");

        let back = Event::new("from-b", 7, EventKind::Logout);
        b.publish(&back).await.expect("publish from b");
        until("b's event at a", || ra.events().last() == Some(&back)).await;
        assert_eq!(a.outbox_len(), 0);
        assert_eq!((ra.disconnects(), rb.disconnects()), (0, 0));

        a.close().await;
        b.close().await;
        ra.check_protocol("a");
        rb.check_protocol("b");
        broker.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_queued_together_leave_together_and_arrive_in_order() {
    bounded(async {
        let broker = Broker::start(free_port()).await;
        let (a, ra) = start(broker.url());
        let (b, rb) = start(broker.url());
        until("both subscribed", || a.is_subscribed() && b.is_subscribed()).await;
        let conn = raw_connect(&broker.url()).await;
        let (ch, mut watch) = raw_watch(&conn).await;

        // Queued faster than one message at a time can leave: they must go out batched,
        // and arrive whole and in order.
        let sent: Vec<Event> = (0..500).map(event).collect();
        for e in &sent {
            a.publish_detached(e).await.expect("queued");
        }
        until("500 events at both", || {
            ra.events().len() >= 500 && rb.events().len() >= 500
        })
        .await;
        assert_eq!(ra.events(), sent, "in order at the publisher");
        assert_eq!(rb.events(), sent, "in order at the other node");

        // On the wire: plain objects for lone events, arrays for batches, nothing else.
        let (mut messages, mut on_wire) = (0, Vec::new());
        while on_wire.len() < sent.len() {
            let delivery = step("raw delivery", watch.next())
                .await
                .expect("a delivery")
                .expect("ok");
            messages += 1;
            match serde_json::from_slice::<serde_json::Value>(&delivery.data).expect("JSON") {
                serde_json::Value::Array(batch) => {
                    assert!(batch.len() > 1, "a batch holds several events");
                    on_wire.extend(batch);
                }
                one => on_wire.push(one),
            }
        }
        let versions: Vec<u64> = on_wire
            .iter()
            .map(|e| e["version"].as_u64().expect("a version"))
            .collect();
        assert_eq!(versions, (0..500).collect::<Vec<_>>());
        assert!(
            messages < sent.len(),
            "500 events queued at once went out in {messages} messages"
        );

        // A batch from elsewhere (another node's publisher) is delivered event by event;
        // an empty one is nothing.
        raw_publish(&ch, b"[]").await;
        let pair = [event(1000), event(1001)];
        raw_publish(&ch, &serde_json::to_vec(&pair).expect("JSON")).await;
        until("the pair", || ra.events().len() >= 502).await;
        assert_eq!(ra.events()[500..], pair);
        assert_eq!((ra.disconnects(), rb.disconnects()), (0, 0));

        let _ = step("raw close", conn.close(200, "bye".into())).await;
        a.close().await;
        b.close().await;
        ra.check_protocol("a");
        rb.check_protocol("b");
        broker.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_queued_before_close_still_go_out() {
    bounded(async {
        let broker = Broker::start(free_port()).await;
        let (a, _ra) = start(broker.url());
        let (b, rb) = start(broker.url());
        until("both subscribed", || a.is_subscribed() && b.is_subscribed()).await;

        // A node stopping right after writes' responses left: their events are queued,
        // not yet sent, and must not be lost with the node.
        let sent: Vec<Event> = (0..300).map(event).collect();
        for e in &sent {
            a.publish_detached(e).await.expect("queued");
        }
        a.close().await;
        let err = a.publish(&event(300)).await.expect_err("closed");
        assert!(matches!(err, BusError::Closed), "{err}");
        until("all 300 at b", || rb.events().len() >= 300).await;
        assert_eq!(rb.events(), sent);

        b.close().await;
        rb.check_protocol("b");
        broker.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_disconnects_resubscribes_and_flushes_the_outbox() {
    bounded(async {
        let broker = Broker::start(free_port()).await;
        let port = broker.port;
        // A reaches the broker through a proxy, so that the test can keep it away from the
        // restarted broker until B has subscribed again: then B must see A's outbox.
        let proxy = Proxy::start(port).await;
        let (a, ra) = start(proxy.url());
        let (b, rb) = start(broker.url());
        until("both subscribed", || a.is_subscribed() && b.is_subscribed()).await;
        let first_queue = b.queue_name().expect("b's queue");

        broker.stop().await;
        until("both told of the loss", || {
            ra.disconnects() == 1 && rb.disconnects() == 1
        })
        .await;
        assert!(!a.is_subscribed() && !b.is_subscribed());
        proxy.cut().await;

        let e1 = event(1);
        let err = a.publish(&e1).await.expect_err("publish while down");
        assert!(matches!(err, BusError::NotConnected), "{err}");
        assert!(err.is_queued());
        assert_eq!(a.outbox_len(), 1);

        let broker = Broker::start(port).await;
        until("b subscribed again", || {
            b.is_subscribed() && rb.subscribes() == 2
        })
        .await;
        assert_ne!(
            b.queue_name(),
            Some(first_queue),
            "a fresh queue per connection"
        );
        let e2 = event(2);
        let err = a.publish(&e2).await.expect_err("a still cut off");
        assert!(err.is_queued(), "{err}");
        assert_eq!(a.outbox_len(), 2);
        assert!(!a.is_subscribed());

        proxy.open().await;
        until("a subscribed again", || a.is_subscribed()).await;
        until("the outbox at both, in order", || {
            ra.events().len() >= 2 && rb.events().len() >= 2
        })
        .await;
        assert_eq!(ra.events(), vec![e1.clone(), e2.clone()]);
        assert_eq!(rb.events(), vec![e1, e2]);
        assert_eq!(a.outbox_len(), 0);

        let e3 = event(3);
        a.publish(&e3).await.expect("publish after the flush");
        until("e3 at both", || {
            ra.events().last() == Some(&e3) && rb.events().last() == Some(&e3)
        })
        .await;
        assert_eq!((ra.subscribes(), rb.subscribes()), (2, 2));
        assert_eq!((ra.disconnects(), rb.disconnects()), (1, 1));

        a.close().await;
        b.close().await;
        ra.check_protocol("a");
        rb.check_protocol("b");
        broker.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_are_skipped() {
    bounded(async {
        let broker = Broker::start(free_port()).await;
        let (a, ra) = start(broker.url());
        until("subscribed", || a.is_subscribed()).await;

        // A raw client: its own queue on the exchange to look at what the bus sends, and a
        // confirm-mode channel for garbage.
        let conn = raw_connect(&broker.url()).await;
        let (ch, mut watch) = raw_watch(&conn).await;

        let huge = vec![b'{'; 200_000];
        let garbage: Vec<&[u8]> = vec![
            b"not json",
            b"",
            b"\xff\xfe\x00binary",
            b"{}",
            b"[1,2,3]",
            br#"{"id":"x","version":-1,"kind":"write"}"#,
            &huge,
        ];
        // Then, from an older or newer publisher: no time, an unknown field, an unknown
        // kind (still a change to that session, so still delivered).
        let compatible: [&[u8]; 2] = [
            br#"{"id":"other","version":9,"kind":"revoke","extra":true}"#,
            br#"{"id":"x","version":1,"kind":"exploded"}"#,
        ];
        for body in garbage.iter().copied().chain(compatible) {
            raw_publish(&ch, body).await;
        }

        let good = event(1);
        a.publish(&good).await.expect("publish after garbage");
        until("the good events", || ra.events().len() >= 3).await;
        let expected_compatible = Event {
            id: "other".into(),
            version: 9,
            kind: EventKind::Revoke,
            at_us: None,
            session: None,
            mac: None,
        };
        let expected_unknown_kind = Event {
            id: "x".into(),
            version: 1,
            kind: EventKind::Other,
            at_us: None,
            session: None,
            mac: None,
        };
        assert_eq!(
            ra.events(),
            vec![expected_compatible, expected_unknown_kind, good.clone()]
        );
        assert!(a.is_subscribed());
        assert_eq!(ra.disconnects(), 0, "garbage does not cost the link");

        // What went over the wire from the bus: JSON, labelled as such.
        let mut from_bus = None;
        for _ in 0..garbage.len() + 3 {
            let delivery = step("raw delivery", watch.next())
                .await
                .expect("a delivery")
                .expect("ok");
            from_bus = Some(delivery);
        }
        let delivery = from_bus.expect("the bus's delivery");
        assert_eq!(
            delivery
                .properties
                .content_type()
                .as_ref()
                .map(|s| s.as_str()),
            Some("application/json")
        );
        let json: serde_json::Value = serde_json::from_slice(&delivery.data).expect("JSON body");
        assert_eq!(json["id"], "session-1");
        assert_eq!(json["version"], 1);
        assert_eq!(json["kind"], "write");

        let _ = step("raw close", conn.close(200, "bye".into())).await;
        a.close().await;
        ra.check_protocol("a");
        broker.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_bus_ends_its_task_and_deletes_its_queue() {
    bounded(async {
        let broker = Broker::start(free_port()).await;
        let (a, ra) = start(broker.url());
        until("subscribed", || a.is_subscribed()).await;
        let queue = a.queue_name().expect("a queue while subscribed");
        assert!(queue.starts_with("amq.gen-"), "{queue}");

        let conn = raw_connect(&broker.url()).await;
        assert_eq!(
            passive_declare(&conn, &queue).await,
            Some(405),
            "the queue exists and is exclusive to the bus's connection"
        );

        let clone = a.clone();
        drop(a);
        assert!(clone.is_subscribed(), "a clone keeps the bus running");
        drop(clone);
        until("the task gone (it held the subscriber)", || {
            Arc::strong_count(&ra) == 1
        })
        .await;
        assert_eq!(ra.calls().last(), Some(&Call::Disconnected));
        ra.check_protocol("a");

        let deadline = Instant::now() + WAIT;
        while passive_declare(&conn, &queue).await != Some(404) {
            assert!(Instant::now() < deadline, "queue {queue} still there");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = step("raw close", conn.close(200, "bye".into())).await;
        broker.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_broker_at_start_then_one_appears() {
    bounded(async {
        let port = free_port();
        let (a, ra) = start(url(port));
        until("told the first connect failed", || ra.disconnects() == 1).await;
        assert!(!a.is_subscribed());
        let e1 = event(1);
        let err = a.publish(&e1).await.expect_err("nothing to publish to");
        assert!(matches!(err, BusError::NotConnected), "{err}");
        assert_eq!(a.outbox_len(), 1);

        let broker = Broker::start(port).await;
        until("subscribed", || a.is_subscribed()).await;
        until("the outboxed event", || ra.events() == vec![e1.clone()]).await;
        assert_eq!(a.outbox_len(), 0);
        assert_eq!(ra.disconnects(), 1, "one disconnected for the whole outage");

        a.close().await;
        assert!(!a.is_subscribed());
        assert_eq!(ra.calls().last(), Some(&Call::Disconnected));
        let err = a.publish(&event(2)).await.expect_err("closed");
        assert!(matches!(err, BusError::Closed), "{err}");
        assert!(!err.is_queued());
        a.close().await; // twice is fine
        ra.check_protocol("a");
        broker.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_link_is_noticed() {
    bounded(async {
        let broker = Broker::start(free_port()).await;
        let proxy = Proxy::start(broker.port).await;
        // A publishes into the silence (its confirm times out); B only listens and must
        // notice by the missing heartbeats (1 s here).
        let quick = |url: String| BusConfig {
            confirm_timeout: Duration::from_millis(300),
            ..config(url)
        };
        let ra = Arc::new(Recorder::default());
        let rb = Arc::new(Recorder::default());
        let a = Bus::start(quick(proxy.url()), ra.clone());
        let b = Bus::start(quick(format!("{}?heartbeat=1", proxy.url())), rb.clone());
        until("both subscribed", || a.is_subscribed() && b.is_subscribed()).await;

        proxy.freeze(true);
        // e1 goes out into the silence; e2, queued behind it, waits for e1's confirm,
        // which never comes: both end up in the outbox, in order.
        let (e1, e2) = (event(1), event(2));
        a.publish_detached(&e1).await.expect("queued");
        let err = a
            .publish(&e2)
            .await
            .expect_err("no confirm through a frozen link");
        assert!(err.is_queued(), "{err}");
        assert_eq!(a.outbox_len(), 2);
        until("a told of the loss", || ra.disconnects() == 1).await;
        until("b told of the loss (heartbeats)", || rb.disconnects() == 1).await;
        assert!(!a.is_subscribed() && !b.is_subscribed());

        proxy.freeze(false);
        until("both subscribed again", || {
            a.is_subscribed() && b.is_subscribed()
        })
        .await;
        // (B sees them only if it re-subscribed first; if not, it emptied its cache.)
        until("a's outbox flushed", || ra.events().len() >= 2).await;
        assert_eq!(ra.events(), vec![e1, e2]);
        assert_eq!(a.outbox_len(), 0);

        a.close().await;
        b.close().await;
        ra.check_protocol("a");
        rb.check_protocol("b");
        drop(proxy);
        broker.stop().await;
    })
    .await;
}

/// Panics on events for the session `boom`, records everything else.
#[derive(Default)]
struct Grumpy(Recorder);

impl Subscriber for Grumpy {
    fn event(&self, event: Event) {
        assert_ne!(event.id, "boom", "the subscriber fails on this one");
        self.0.event(event);
    }
    fn disconnected(&self) {
        self.0.disconnected();
    }
    fn subscribed(&self) {
        self.0.subscribed();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_subscriber_costs_a_reconnect_not_the_bus() {
    bounded(async {
        let broker = Broker::start(free_port()).await;
        let grumpy = Arc::new(Grumpy::default());
        let a = Bus::start(config(broker.url()), grumpy.clone());
        until("subscribed", || a.is_subscribed()).await;

        a.publish(&Event::new("boom", 1, EventKind::Write))
            .await
            .expect("publish");
        until("told of the lost link", || grumpy.0.disconnects() == 1).await;
        until("subscribed again", || {
            a.is_subscribed() && grumpy.0.subscribes() == 2
        })
        .await;
        let e = event(2);
        a.publish(&e).await.expect("publish");
        until("the next event", || grumpy.0.events() == vec![e.clone()]).await;

        a.close().await;
        grumpy.0.check_protocol("grumpy");
        broker.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_refuses_newer_events() {
    bounded(async {
        let port = free_port();
        let recorder = Arc::new(Recorder::default());
        let config = BusConfig {
            outbox_capacity: 2,
            ..config(url(port))
        };
        let a = Bus::start(config, recorder.clone());
        for n in 1..=2 {
            let err = a.publish(&event(n)).await.expect_err("no broker");
            assert!(err.is_queued(), "{err}");
        }
        let err = a.publish(&event(3)).await.expect_err("no room");
        assert!(matches!(err, BusError::OutboxFull(2)), "{err}");
        assert!(!err.is_queued());
        assert_eq!(a.outbox_len(), 2);

        let broker = Broker::start(port).await;
        until("the two queued events", || recorder.events().len() >= 2).await;
        let seen: Vec<(String, u64)> = recorder
            .events()
            .into_iter()
            .map(|e| (e.id, e.version))
            .collect();
        assert_eq!(
            seen,
            vec![("session-1".to_string(), 1), ("session-2".to_string(), 2)]
        );
        a.close().await;
        broker.stop().await;
    })
    .await;
}

/// A CA and a server certificate for 127.0.0.1 it signed, as PEM files in `dir`; returns
/// the CA's PEM and the certificate and key paths.
fn certificates(dir: &std::path::Path) -> (String, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("key")).expect("CA");
    let key = KeyPair::generate().expect("key");
    let server = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("server params")
        .signed_by(&key, &*ca)
        .expect("sign");
    let (cert_path, key_path) = (dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&cert_path, server.pem()).expect("write the certificate");
    std::fs::write(&key_path, key.serialize_pem()).expect("write the key");
    (ca.pem(), cert_path, key_path)
}

/// Over amqps, with the broker's CA given to the bus, events reach every node as over
/// plain AMQP; a bus that trusts another CA never subscribes, so it never takes events
/// from a broker it cannot authenticate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_travel_over_amqps_and_an_untrusted_broker_is_never_used() {
    use session_layer::events::OwnedTLSConfig;
    use session_store::amqp::{Node, Tls, TlsConfig, TlsListener, serve_with_tls};
    bounded(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let (ca_pem, cert, key) = certificates(dir.path());
        let other = tempfile::tempdir().expect("temp dir");
        let (other_ca_pem, _, _) = certificates(other.path());
        let tls = Tls::load(&TlsConfig {
            cert,
            key,
            ca: None,
            require_client_cert: false,
        })
        .expect("load the certificate");
        let plain = bind(0).await;
        let secure = bind(0).await;
        let port = secure.local_addr().expect("address").port();
        let node = Node::open(AmqpConfig::default())
            .await
            .expect("broker node");
        let (stop, stopped) = oneshot::channel::<()>();
        let broker = tokio::spawn(serve_with_tls(
            plain,
            Some(TlsListener {
                listener: secure,
                tls,
            }),
            node,
            async {
                let _ = stopped.await;
            },
        ));
        let url = format!("amqps://guest:guest@127.0.0.1:{port}/%2f");
        let trusting = |ca: &str| BusConfig {
            tls: OwnedTLSConfig {
                identity: None,
                cert_chain: Some(ca.to_string()),
            },
            ..config(url.clone())
        };
        let recorders: Vec<Arc<Recorder>> = (0..3).map(|_| Arc::default()).collect();
        let a = Bus::start(trusting(&ca_pem), recorders[0].clone());
        let b = Bus::start(trusting(&ca_pem), recorders[1].clone());
        let stranger = Bus::start(trusting(&other_ca_pem), recorders[2].clone());
        until("both trusting buses subscribed", || {
            a.is_subscribed() && b.is_subscribed()
        })
        .await;
        let sent: Vec<Event> = (0..50).map(event).collect();
        for e in &sent {
            a.publish(e).await.expect("publish over amqps");
        }
        until("50 events at both", || {
            recorders[0].events().len() >= 50 && recorders[1].events().len() >= 50
        })
        .await;
        assert_eq!(recorders[1].events(), sent);
        // It has been retrying all along (every 20–200 ms); give it a while longer.
        let watch_until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < watch_until {
            assert!(
                !stranger.is_subscribed(),
                "subscribed to an untrusted broker"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(recorders[2].events().is_empty());
        assert_eq!(recorders[2].subscribes(), 0);
        for bus in [&a, &b, &stranger] {
            bus.close().await;
        }
        recorders[0].check_protocol("a");
        let _ = stop.send(());
        step("broker shutdown", broker).await.expect("broker task");
    })
    .await;
}
