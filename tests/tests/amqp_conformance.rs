//! AMQP 0-9-1 conformance: every scenario runs unchanged against a real RabbitMQ node (the
//! reference) and against the broker embedded in `session-store`; `<scenario>::rabbitmq`
//! defines the behaviour and `<scenario>::embedded` must show the same.
//!
//! One RabbitMQ node serves the whole binary (started on first use); each scenario uses
//! names of its own, so they run in parallel. Each embedded test starts its own
//! `session-store`. Every await is bounded, every loop counted, and all traffic stays on
//! 127.0.0.1.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, WriteContext, gen_frame, parse_frame};
use amq_protocol::protocol::{
    AMQPClass, basic as basic_methods, channel as channel_methods, confirm as confirm_methods,
    connection as conn_methods, queue as queue_methods,
};
use e2e::rabbit::{
    RabbitMq, amqp_url, start_embedded, start_embedded_with_management,
    start_rabbitmq_with_management,
};
use e2e::{engines_required, which};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

#[path = "amqp_conformance/consumer_timeout.rs"]
mod consumer_timeout;
#[path = "amqp_conformance/node_views.rs"]
mod node_views;
#[path = "amqp_conformance/streams.rs"]
mod streams;
#[path = "amqp_conformance/tls.rs"]
mod tls;

/// Bound on any single network step.
const STEP: Duration = Duration::from_secs(5);
/// Bound on a whole scenario.
const SCENARIO: Duration = Duration::from_secs(40);
/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);

/// With its management plugin, for the scenarios that also drive the HTTP API.
static RABBIT: LazyLock<Option<RabbitMq>> = LazyLock::new(start_rabbitmq_with_management);

/// Generates `mod <name> { rabbitmq, embedded }` tests running `<name>(url)` on each broker.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rabbitmq() {
                super::on_rabbitmq(stringify!($name), super::$name).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::on_embedded(stringify!($name), super::$name).await;
            }
        }
    )*};
}
// By path, for the modules declared above it (`super::conformance!`).
use conformance;

conformance!(
    handshake_and_capabilities,
    auth_wrong_password_refused_guest_allowed,
    wrong_protocol_header,
    garbage_frame_after_handshake,
    oversize_frame_after_handshake,
    channel_max_negotiated_and_enforced,
    many_channels_on_one_connection,
    default_exchange_routes_by_queue_name,
    direct_exchange,
    fanout_exchange,
    topic_exchange,
    headers_exchange,
    predeclared_exchanges,
    exchange_redeclare_other_type,
    passive_declare_missing,
    publish_to_missing_exchange,
    exchange_to_exchange_binding,
    mandatory_unroutable_returned,
    server_named_queue,
    queue_declare_counts,
    exclusive_queue_other_connection,
    purge_returns_count,
    delete_if_empty_if_unused,
    auto_delete_queue,
    consume_manual_ack,
    prefetch_limits_unacked,
    nack_reject_requeue_redelivers,
    reject_without_requeue_drops,
    unacked_requeued_on_channel_close,
    ack_unknown_delivery_tag,
    basic_get_and_get_empty,
    exclusive_consume_conflict,
    consumer_cancel_notify_on_queue_delete,
    round_robin_two_consumers,
    publisher_confirms,
    persistent_confirms_coalesced,
    large_body_split_and_reassembled,
    queue_message_ttl,
    max_length_drop_head,
    max_length_reject_publish,
    dead_letter_on_reject,
    dead_letter_on_expiry,
    per_message_expiration,
    transactions,
    pika_client,
    aio_pika_client,
    amqplib_client,
    celery_client,
    second_protocol_header_after_handshake,
    queue_expires_when_unused,
    max_length_bytes,
    reject_publish_dlx_overflow,
    basic_recover_requeues,
    qos_global_vs_per_consumer,
    priority_queue,
    single_active_consumer,
    consumer_priorities,
    direct_reply_to,
    quorum_queues,
    alternate_exchange,
    sender_selected_distribution,
    rabbitmq_particulars,
    unimplemented_methods_refused,
    immediate_and_recover_without_requeue_refused,
    server_methods_and_misplaced_frames_refused,
    names_and_arguments_refused,
    cancel_notify_only_when_advertised,
    frames_out_of_place_in_a_publish,
    headers_delivered_as_published,
    login_refusals,
    message_size_limit,
    edge_sequences,
    queue_redeclare_equivalence,
    publish_properties_refused,
    errors_name_what_rabbitmq_names,
    tune_ok_out_of_range_refused_silently,
    length_limits_meet_consumers_and_requeues,
    expired_messages_go_when_they_reach_the_head,
    channel_prefetch_holds_no_ack_consumers,
    handshake_frames_over_the_minimum_refused_silently,
    quorum_length_limits,
    requeue_order_by_queue_type,
    quorum_consumers_as_rabbitmq_counts_them,
    quorum_queue_particulars,
);

/// As [`conformance!`], for scenarios `<name>(amqp_url, management_api_url, metrics_url)`
/// that also use the management HTTP API or the Prometheus metrics.
macro_rules! managed_conformance {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rabbitmq() {
                super::on_managed_rabbitmq(stringify!($name), super::$name).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::on_managed_embedded(stringify!($name), super::$name).await;
            }
        }
    )*};
}
// By path, for the modules declared above it (`super::managed_conformance!`).
use managed_conformance;

managed_conformance!(
    policies,
    operator_policies,
    health_checks,
    management_closes_connections,
    prometheus_metrics,
    management_administers_access,
    topic_permissions,
    limits,
    definitions_import,
    java_client,
    management_views,
    runtime_parameters,
    auth_attempts,
    queue_and_vhost_actions,
    rabbitmqadmin_cli,
    churn_and_channel_metrics,
    listing_parameters,
    vhost_metadata,
    firehose_tracing,
);

async fn on_managed_rabbitmq<F, Fut>(name: &str, scenario: F)
where
    F: FnOnce(String, String, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let rabbit = tokio::task::spawn_blocking(|| {
        LazyLock::force(&RABBIT)
            .as_ref()
            .map(|r| (r.url(), r.management_url().zip(r.metrics_url())))
    })
    .await
    .expect("start RabbitMQ");
    let Some((url, plugins)) = rabbit else {
        eprintln!("{name}: RabbitMQ not installed, skipped");
        return;
    };
    let (api, metrics) = plugins.expect("the node runs the management plugins");
    timeout(SCENARIO, scenario(url, api, metrics))
        .await
        .unwrap_or_else(|_| panic!("{name} on RabbitMQ took longer than {SCENARIO:?}"));
}

async fn on_managed_embedded<F, Fut>(name: &str, scenario: F)
where
    F: FnOnce(String, String, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let (proc, port, api) = tokio::task::spawn_blocking(start_embedded_with_management)
        .await
        .expect("start session-store");
    let api = format!("http://127.0.0.1:{api}");
    let metrics = format!("{api}/metrics");
    timeout(SCENARIO, scenario(amqp_url(port), api, metrics))
        .await
        .unwrap_or_else(|_| panic!("{name} on the embedded broker took longer than {SCENARIO:?}"));
    drop(proc);
}

async fn on_rabbitmq<F, Fut>(name: &str, scenario: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let rabbit =
        tokio::task::spawn_blocking(|| LazyLock::force(&RABBIT).as_ref().map(RabbitMq::url))
            .await
            .expect("start RabbitMQ");
    let Some(url) = rabbit else {
        eprintln!("{name}: RabbitMQ not installed, skipped");
        return;
    };
    timeout(SCENARIO, scenario(url))
        .await
        .unwrap_or_else(|_| panic!("{name} on RabbitMQ took longer than {SCENARIO:?}"));
}

async fn on_embedded<F, Fut>(name: &str, scenario: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let (proc, port) = tokio::task::spawn_blocking(start_embedded)
        .await
        .expect("start session-store");
    timeout(SCENARIO, scenario(amqp_url(port)))
        .await
        .unwrap_or_else(|_| panic!("{name} on the embedded broker took longer than {SCENARIO:?}"));
    drop(proc);
}

// ---------------------------------------------------------------------------------------
// helpers

/// A name no other scenario (or earlier run against the same node) uses.
fn uniq(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "conf.{prefix}.{}.{}.{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn step<T>(what: &str, fut: impl Future<Output = T>) -> T {
    timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {STEP:?}: {what}"))
}

async fn connect(url: &str) -> Connection {
    step(
        "connect",
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

async fn channel(conn: &Connection) -> Channel {
    step("channel.open", conn.create_channel())
        .await
        .expect("channel.open")
}

/// A channel in confirm mode: [`publish`] on it returns once the broker has the message,
/// so what follows sees it in its queues.
async fn confirmed(conn: &Connection) -> Channel {
    let ch = channel(conn).await;
    step(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    ch
}

async fn close(conn: Connection) {
    let _ = step("connection.close", conn.close(200, "bye".into())).await;
}

fn args(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn lstr(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

async fn declare_queue(
    ch: &Channel,
    name: &str,
    opts: QueueDeclareOptions,
    a: FieldTable,
) -> lapin::Queue {
    step(
        &format!("queue.declare {name}"),
        ch.queue_declare(name.into(), opts, a),
    )
    .await
    .unwrap_or_else(|e| panic!("queue.declare {name}: {e}"))
}

async fn plain_queue(ch: &Channel, name: &str) {
    declare_queue(
        ch,
        name,
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
}

async fn declare_exchange(ch: &Channel, name: &str, kind: ExchangeKind) {
    step(
        &format!("exchange.declare {name}"),
        ch.exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("exchange.declare {name}: {e}"));
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str, a: FieldTable) {
    step(
        "queue.bind",
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            a,
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("queue.bind {queue} {exchange} {key}: {e}"));
}

async fn publish_props(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) {
    let confirm = step(
        "basic.publish",
        ch.basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("basic.publish to {exchange:?}/{key:?}: {e}"));
    // On a confirm-mode channel this waits for the broker's ack (the message is then in its
    // queues); otherwise it resolves at once.
    let confirmation = step("publisher confirm", confirm)
        .await
        .unwrap_or_else(|e| panic!("confirm of publish to {exchange:?}/{key:?}: {e}"));
    assert!(
        !confirmation.is_nack(),
        "publish to {exchange:?}/{key:?} nacked"
    );
}

async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    publish_props(ch, exchange, key, body, BasicProperties::default()).await;
}

/// Publishes to queue `key` through the default exchange on a confirm-mode channel;
/// whether the broker acked it (false: nacked).
async fn publish_acked(ch: &Channel, key: &str, body: &[u8]) -> bool {
    let confirm = step(
        "basic.publish",
        ch.basic_publish(
            "".into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("basic.publish to {key:?}: {e}"));
    step("publisher confirm", confirm)
        .await
        .unwrap_or_else(|e| panic!("confirm of publish to {key:?}: {e}"))
        .is_ack()
}

/// Messages ready in `queue` (queue.declare passive on a fresh channel, so a failure does
/// not close the caller's channel).
async fn ready_count(conn: &Connection, queue: &str) -> u32 {
    let ch = channel(conn).await;
    let q = step(
        "queue.declare passive",
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions::default().passive(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("passive declare {queue}: {e}"));
    let _ = step("channel.close", ch.close(200, "ok".into())).await;
    q.message_count()
}

/// Bodies of all messages currently in `queue`, fetched with basic.get (auto-ack).
async fn drain(ch: &Channel, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..1000 {
        let got = step(
            "basic.get",
            ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }),
        )
        .await
        .unwrap_or_else(|e| panic!("basic.get {queue}: {e}"));
        match got {
            Some(m) => out.push(String::from_utf8_lossy(&m.delivery.data).into_owned()),
            None => return out,
        }
    }
    panic!("{queue} did not run empty after 1000 gets");
}

async fn consume(ch: &Channel, queue: &str, no_ack: bool) -> Consumer {
    step(
        "basic.consume",
        ch.basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("basic.consume {queue}: {e}"))
}

/// basic.consume with `exclusive`, the broker's answer as it is.
async fn exclusive_consume(ch: &Channel, queue: &str) -> Result<Consumer, lapin::Error> {
    let options = BasicConsumeOptions {
        exclusive: true,
        ..Default::default()
    };
    step(
        "exclusive consume",
        ch.basic_consume(queue.into(), "".into(), options, FieldTable::default()),
    )
    .await
}

async fn next(consumer: &mut Consumer) -> Delivery {
    step("a delivery", consumer.next())
        .await
        .expect("consumer stream ended")
        .expect("delivery error")
}

/// Asserts nothing is delivered for [`QUIET`].
async fn nothing_more(consumer: &mut Consumer) {
    if let Ok(Some(d)) = timeout(QUIET, consumer.next()).await {
        panic!(
            "unexpected delivery: {:?}",
            d.map(|d| String::from_utf8_lossy(&d.data).into_owned())
        );
    }
}

fn body(d: &Delivery) -> String {
    String::from_utf8_lossy(&d.data).into_owned()
}

/// The AMQP reply code carried by a lapin error (channel.close / connection.close).
fn reply_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

fn expect_code<T: std::fmt::Debug>(
    what: &str,
    r: Result<T, lapin::Error>,
    code: u16,
) -> lapin::Error {
    match r {
        Ok(v) => panic!("{what}: expected reply code {code}, got success {v:?}"),
        Err(e) => {
            assert_eq!(
                reply_code(&e),
                Some(code),
                "{what}: expected reply code {code}, got {e:?}"
            );
            e
        }
    }
}

fn expect_text(e: &lapin::Error, prefix: &str) {
    let lapin::ErrorKind::ProtocolError(amqp) = e.kind() else {
        panic!("not a protocol error: {e:?}");
    };
    assert!(
        amqp.get_message().as_str().starts_with(prefix),
        "reply text {:?} should start with {prefix:?}",
        amqp.get_message().as_str()
    );
}

/// Waits for the channel's close from the broker, triggered by an earlier asynchronous
/// method (basic.publish, basic.ack), and checks its reply code and text.
///
/// The next synchronous method on the channel fails, but with which error depends on a
/// race: lapin reports the broker's reply only if the close arrives while that method is
/// outstanding, and a bare "channel closing" otherwise. The broker's reason always reaches
/// the connection's event stream, so that is where it is read; `events` must have been
/// taken from the connection before the faulty method was sent.
async fn channel_closed_with(
    ch: &Channel,
    events: &mut (impl futures::Stream<Item = lapin::Event> + Unpin),
    code: u16,
    text_prefix: &str,
) {
    let r = step(
        "basic.qos after the faulty method",
        ch.basic_qos(10, BasicQosOptions::default()),
    )
    .await;
    assert!(
        r.is_err(),
        "basic.qos succeeded on a channel the broker closes"
    );
    let reason = step("the broker's channel.close", async {
        loop {
            match events.next().await {
                Some(lapin::Event::Error(e)) => break e,
                Some(_) => continue,
                None => panic!("the connection's event stream ended"),
            }
        }
    })
    .await;
    let e = expect_code(
        "channel close after the faulty method",
        Err::<(), _>(reason),
        code,
    );
    expect_text(&e, text_prefix);
}

fn header<'a>(props: &'a BasicProperties, key: &str) -> Option<&'a AMQPValue> {
    props.headers().as_ref()?.inner().get(key)
}

// ---------------------------------------------------------------------------------------
// raw protocol access for what a well-behaved client never sends

struct Raw {
    sock: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(url: &str) -> Raw {
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.split('/').next())
            .and_then(|p| p.parse::<u16>().ok())
            .expect("port in url");
        let sock = step("tcp connect", TcpStream::connect(("127.0.0.1", port)))
            .await
            .expect("tcp connect");
        Raw {
            sock,
            buf: Vec::new(),
        }
    }

    async fn send_bytes(&mut self, bytes: &[u8]) {
        step("write", self.sock.write_all(bytes))
            .await
            .expect("write");
    }

    async fn send(&mut self, frame: &AMQPFrame) {
        let ctx = gen_frame(frame)(WriteContext::from(Vec::new())).expect("serialise frame");
        let bytes = ctx.write;
        self.send_bytes(&bytes).await;
    }

    /// Reads whatever arrives until the peer closes (bounded), returning all bytes.
    async fn read_to_eof(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buf);
        let deadline = Instant::now() + STEP;
        let mut chunk = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, self.sock.read(&mut chunk)).await {
                Err(_) => panic!("peer did not close within {STEP:?}; got {out:?}"),
                Ok(Ok(0)) | Ok(Err(_)) => return out,
                Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next frame; None when the peer closed.
    async fn frame(&mut self) -> Option<AMQPFrame> {
        // On the heap: a 64 KiB array would live in every future that awaits a frame.
        let mut chunk = vec![0u8; 65536];
        for _ in 0..10_000 {
            if !self.buf.is_empty() {
                match parse_frame(self.buf.as_slice()) {
                    Ok((rest, frame)) => {
                        let used = self.buf.len() - rest.len();
                        self.buf.drain(..used);
                        return Some(frame);
                    }
                    Err(e) if e.is_incomplete() => {}
                    Err(e) => panic!("unparsable frame from broker: {e:?} in {:?}", self.buf),
                }
            }
            match step("read a frame", self.sock.read(&mut chunk)).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
        panic!("no complete frame after 10000 reads");
    }

    async fn method(&mut self) -> AMQPClass {
        for _ in 0..100 {
            match self.frame().await {
                Some(AMQPFrame::Method(_, m)) => return m,
                Some(AMQPFrame::Heartbeat) => continue,
                other => panic!("expected a method frame, got {other:?}"),
            }
        }
        panic!("only heartbeats");
    }

    /// connection.start .. open-ok as guest; returns the negotiated frame_max.
    async fn handshake(&mut self, channel_max: Option<u16>) -> u32 {
        self.handshake_as(channel_max, FieldTable::default()).await
    }

    /// [`Raw::handshake`] with these client properties.
    async fn handshake_as(
        &mut self,
        channel_max: Option<u16>,
        client_properties: FieldTable,
    ) -> u32 {
        let tune = self.until_tune(client_properties).await;
        self.send(&AMQPFrame::Method(
            0,
            AMQPClass::Connection(conn_methods::AMQPMethod::TuneOk(conn_methods::TuneOk {
                channel_max: channel_max.unwrap_or(tune.channel_max),
                frame_max: tune.frame_max,
                heartbeat: 0,
            })),
        ))
        .await;
        self.send(&AMQPFrame::Method(
            0,
            AMQPClass::Connection(conn_methods::AMQPMethod::Open(conn_methods::Open {
                virtual_host: "/".into(),
            })),
        ))
        .await;
        let AMQPClass::Connection(conn_methods::AMQPMethod::OpenOk(_)) = self.method().await else {
            panic!("expected connection.open-ok");
        };
        tune.frame_max
    }

    /// The handshake as guest up to the broker's connection.tune, which is returned.
    async fn until_tune(&mut self, client_properties: FieldTable) -> conn_methods::Tune {
        self.send_bytes(b"AMQP\x00\x00\x09\x01").await;
        let AMQPClass::Connection(conn_methods::AMQPMethod::Start(_)) = self.method().await else {
            panic!("expected connection.start");
        };
        self.send(&AMQPFrame::Method(
            0,
            AMQPClass::Connection(conn_methods::AMQPMethod::StartOk(conn_methods::StartOk {
                client_properties,
                mechanism: "PLAIN".into(),
                response: LongString::from("\0guest\0guest"),
                locale: "en_US".into(),
            })),
        ))
        .await;
        let AMQPClass::Connection(conn_methods::AMQPMethod::Tune(tune)) = self.method().await
        else {
            panic!("expected connection.tune");
        };
        tune
    }

    /// Expects connection.close with `code`, then that the broker waits for close-ok (a
    /// client must be able to answer, or it reports a broken pipe instead of the reason);
    /// answers it, and expects the socket to close. Returns the close.
    async fn expect_connection_close(&mut self, code: u16) -> conn_methods::Close {
        let mut seen = Vec::new();
        for _ in 0..100 {
            match self.frame().await {
                Some(AMQPFrame::Method(
                    0,
                    AMQPClass::Connection(conn_methods::AMQPMethod::Close(c)),
                )) => {
                    assert_eq!(
                        c.reply_code, code,
                        "connection.close reply code ({})",
                        c.reply_text
                    );
                    self.quiet("before close-ok").await;
                    self.send(&AMQPFrame::Method(
                        0,
                        AMQPClass::Connection(conn_methods::AMQPMethod::CloseOk(
                            conn_methods::CloseOk {},
                        )),
                    ))
                    .await;
                    let rest = self.read_to_eof().await;
                    assert!(
                        rest.is_empty() || rest.len() < 64,
                        "data after close: {rest:?}"
                    );
                    return c;
                }
                Some(other) => seen.push(format!("{other:?}")),
                None => {
                    panic!("socket closed without connection.close {code}; frames seen: {seen:?}")
                }
            }
        }
        panic!("no connection.close after 100 frames: {seen:?}");
    }

    /// The next frame unparsed: type, channel and payload.
    async fn raw_frame(&mut self) -> (u8, u16, Vec<u8>) {
        let mut chunk = vec![0u8; 65536];
        for _ in 0..10_000 {
            if self.buf.len() >= 7 {
                let size = u32::from_be_bytes([self.buf[3], self.buf[4], self.buf[5], self.buf[6]]);
                let end = 7 + size as usize;
                if self.buf.len() > end {
                    let frame: Vec<u8> = self.buf.drain(..=end).collect();
                    assert_eq!(frame[end], 0xCE, "frame end");
                    let channel = u16::from_be_bytes([frame[1], frame[2]]);
                    return (frame[0], channel, frame[7..end].to_vec());
                }
            }
            match step("read a frame", self.sock.read(&mut chunk)).await {
                Ok(0) | Err(_) => panic!("socket closed while reading a frame"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
        panic!("no complete frame after 10000 reads");
    }

    /// Declares `queue` on channel 1 and publishes to it a one-byte message whose content
    /// header carries `properties` (flags and all) as given, then asks for it back with
    /// basic.get. Returns the content header's payload as sent.
    async fn publish_raw_then_get(&mut self, queue: &str, properties: &[u8]) -> Vec<u8> {
        let d = queue_methods::AMQPMethod::Declare(queue_methods::Declare {
            queue: queue.into(),
            ..Default::default()
        });
        self.send(&AMQPFrame::Method(1, AMQPClass::Queue(d))).await;
        self.method().await;
        let p = basic_methods::AMQPMethod::Publish(basic_methods::Publish {
            routing_key: queue.into(),
            ..Default::default()
        });
        self.send(&AMQPFrame::Method(1, AMQPClass::Basic(p))).await;
        let mut payload = vec![0, 60, 0, 0];
        payload.extend_from_slice(&1u64.to_be_bytes());
        payload.extend_from_slice(properties);
        let mut frames = vec![2, 0, 1];
        frames.extend_from_slice(&u32::try_from(payload.len()).expect("small").to_be_bytes());
        frames.extend_from_slice(&payload);
        frames.push(0xCE);
        frames.extend_from_slice(&[3, 0, 1, 0, 0, 0, 1, b'x', 0xCE]);
        self.send_bytes(&frames).await;
        let g = basic_methods::AMQPMethod::Get(basic_methods::Get {
            queue: queue.into(),
            no_ack: true,
        });
        self.send(&AMQPFrame::Method(1, AMQPClass::Basic(g))).await;
        payload
    }

    /// Nothing arrives, and the socket stays open, for [`QUIET`].
    async fn quiet(&mut self, what: &str) {
        if let Ok(got) = timeout(QUIET, self.frame()).await {
            panic!("{what}: expected silence, got {got:?} (None: the socket closed)");
        }
    }

    /// [`Raw::handshake`], then channel 1 opened.
    async fn open_channel_1(url: &str) -> Raw {
        let mut raw = Raw::connect(url).await;
        raw.handshake(None).await;
        let open = channel_methods::AMQPMethod::Open(channel_methods::Open {});
        raw.send(&AMQPFrame::Method(1, AMQPClass::Channel(open)))
            .await;
        let m = raw.method().await;
        assert!(
            matches!(
                m,
                AMQPClass::Channel(channel_methods::AMQPMethod::OpenOk(_))
            ),
            "channel.open: {m:?}"
        );
        raw
    }
}

// ---------------------------------------------------------------------------------------
// connection level

async fn handshake_and_capabilities(url: String) {
    let mut raw = Raw::connect(&url).await;
    raw.send_bytes(b"AMQP\x00\x00\x09\x01").await;
    let AMQPClass::Connection(conn_methods::AMQPMethod::Start(start)) = raw.method().await else {
        panic!("expected connection.start");
    };
    assert_eq!((start.version_major, start.version_minor), (0, 9));
    let mechanisms = start.mechanisms.to_string();
    assert!(
        mechanisms.split(' ').any(|m| m == "PLAIN"),
        "mechanisms {mechanisms:?}"
    );
    assert!(
        mechanisms.split(' ').any(|m| m == "AMQPLAIN"),
        "mechanisms {mechanisms:?}"
    );
    let locales = start.locales.to_string();
    assert!(
        locales.split(' ').any(|l| l == "en_US"),
        "locales {locales:?}"
    );
    let props = start.server_properties.inner();
    for key in ["product", "version", "platform", "capabilities"] {
        assert!(
            props.contains_key(key),
            "server property {key} missing: {props:?}"
        );
    }
    let Some(AMQPValue::FieldTable(caps)) = props.get("capabilities") else {
        panic!("capabilities is not a table: {props:?}");
    };
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
    ] {
        assert_eq!(
            caps.inner().get(cap),
            Some(&AMQPValue::Boolean(true)),
            "capability {cap}: {caps:?}"
        );
    }
    drop(raw);

    // Through a real client: RabbitMQ's defaults are frame_max 128 KiB, 2047 channels,
    // 60 s heartbeat.
    let conn = connect(&url).await;
    let cfg = conn.configuration();
    assert_eq!(cfg.frame_max(), 131_072, "negotiated frame_max");
    assert_eq!(cfg.channel_max(), 2047, "negotiated channel_max");
    assert_eq!(cfg.heartbeat(), 60, "negotiated heartbeat");
    assert!(conn.status().connected());
    close(conn).await;
}

async fn auth_wrong_password_refused_guest_allowed(url: String) {
    let bad = url.replace("guest:guest", "guest:wrong");
    let r = step(
        "connect with a wrong password",
        Connection::connect(&bad, ConnectionProperties::default()),
    )
    .await;
    let e = expect_code("wrong password", r, 403);
    expect_text(&e, "ACCESS_REFUSED");
    // RabbitMQ answers with connection.close 403 (lapin files 403 under soft errors by code).

    let unknown = url.replace("guest:guest", "nobody:guest");
    let r = step(
        "connect as an unknown user",
        Connection::connect(&unknown, ConnectionProperties::default()),
    )
    .await;
    expect_code("unknown user", r, 403);

    // An unknown vhost: connection.close 530 NOT_ALLOWED.
    let vhost = url.replace("/%2f", "/no-such-vhost");
    let r = step(
        "connect to an unknown vhost",
        Connection::connect(&vhost, ConnectionProperties::default()),
    )
    .await;
    let e = expect_code("unknown vhost", r, 530);
    expect_text(&e, "NOT_ALLOWED");

    // guest is allowed from loopback, and the broker still serves after the refusals.
    let conn = connect(&url).await;
    assert_eq!(conn.status().username(), "guest");
    let ch = channel(&conn).await;
    let q = uniq("auth");
    plain_queue(&ch, &q).await;
    close(conn).await;
}

async fn wrong_protocol_header(url: String) {
    for header in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"AMQP\x00\x01\x00\x00",
        b"AMQP\x00\x00\x0a\x00",
    ] {
        let mut raw = Raw::connect(&url).await;
        raw.send_bytes(header).await;
        let got = raw.read_to_eof().await;
        assert_eq!(got, b"AMQP\x00\x00\x09\x01", "reply to header {header:?}");
    }
    // Still serving.
    let conn = connect(&url).await;
    close(conn).await;
}

async fn garbage_frame_after_handshake(url: String) {
    let mut raw = Raw::connect(&url).await;
    raw.handshake(None).await;
    // Frame type 9 does not exist; the frame-end octet is also wrong.
    raw.send_bytes(b"\x09\x00\x00\x00\x00\x00\x04abcd\x00")
        .await;
    raw.expect_connection_close(501).await;

    // A well-formed frame header with a bad frame-end octet.
    let mut raw = Raw::connect(&url).await;
    raw.handshake(None).await;
    raw.send_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x55").await;
    raw.expect_connection_close(501).await;

    let conn = connect(&url).await;
    let ch = channel(&conn).await;
    plain_queue(&ch, &uniq("after-garbage")).await;
    close(conn).await;
}

async fn oversize_frame_after_handshake(url: String) {
    let mut raw = Raw::connect(&url).await;
    let frame_max = raw.handshake(None).await;
    // A method frame announcing a payload far above the negotiated frame_max.
    let size = frame_max * 8;
    let mut bytes = vec![1u8, 0, 1];
    bytes.extend_from_slice(&size.to_be_bytes());
    bytes.extend_from_slice(&[0u8; 64]);
    raw.send_bytes(&bytes).await;
    let c = raw.expect_connection_close(501).await;
    // The payload size, and what frame_max leaves for a payload.
    assert_eq!(
        c.reply_text.as_str(),
        format!(
            "FRAME_ERROR - type 1, all octets = <<>>: {{frame_too_large,{size},{}}}",
            frame_max - 8
        )
    );

    let conn = connect(&url).await;
    close(conn).await;
}

async fn channel_max_negotiated_and_enforced(url: String) {
    // The client asks for fewer channels than the server offers: the smaller wins, and the
    // client refuses to open more.
    let conn = connect(&format!("{url}?channel_max=3")).await;
    assert_eq!(conn.configuration().channel_max(), 3);
    let mut chans = Vec::new();
    for _ in 0..3 {
        chans.push(channel(&conn).await);
    }
    let r = step("4th channel", conn.create_channel()).await;
    assert!(
        matches!(
            r.as_ref().map_err(lapin::Error::kind),
            Err(lapin::ErrorKind::ChannelsLimitReached)
        ),
        "{r:?}"
    );
    close(conn).await;

    // The server enforces it too: RabbitMQ counts open channels, and opening one more than
    // the negotiated channel_max is a connection error 530 NOT_ALLOWED ("number of channels
    // opened (2) has reached the negotiated channel_max (2)").
    let mut raw = Raw::connect(&url).await;
    raw.handshake(Some(2)).await;
    for id in [1u16, 2, 3] {
        raw.send(&AMQPFrame::Method(
            id,
            AMQPClass::Channel(amq_protocol::protocol::channel::AMQPMethod::Open(
                amq_protocol::protocol::channel::Open {},
            )),
        ))
        .await;
        if id < 3 {
            let m = raw.method().await;
            assert!(
                matches!(
                    m,
                    AMQPClass::Channel(amq_protocol::protocol::channel::AMQPMethod::OpenOk(_))
                ),
                "channel.open {id}: {m:?}"
            );
        }
    }
    let c = raw.expect_connection_close(530).await;
    assert_eq!((c.class_id, c.method_id), (0, 0), "{c:?}");

    // tune-ok may not ask for more channels than connection.tune offered: channel_max 0
    // ("no limit") against RabbitMQ's 2047 is refused during the handshake, before
    // connection.open-ok (RabbitMQ simply closes the socket).
    let mut raw = Raw::connect(&url).await;
    raw.send_bytes(b"AMQP\x00\x00\x09\x01").await;
    raw.method().await;
    raw.send(&AMQPFrame::Method(
        0,
        AMQPClass::Connection(conn_methods::AMQPMethod::StartOk(conn_methods::StartOk {
            client_properties: FieldTable::default(),
            mechanism: "PLAIN".into(),
            response: LongString::from("\0guest\0guest"),
            locale: "en_US".into(),
        })),
    ))
    .await;
    let AMQPClass::Connection(conn_methods::AMQPMethod::Tune(tune)) = raw.method().await else {
        panic!("expected connection.tune");
    };
    assert_eq!(tune.channel_max, 2047);
    raw.send(&AMQPFrame::Method(
        0,
        AMQPClass::Connection(conn_methods::AMQPMethod::TuneOk(conn_methods::TuneOk {
            channel_max: 0,
            frame_max: tune.frame_max,
            heartbeat: 0,
        })),
    ))
    .await;
    raw.send(&AMQPFrame::Method(
        0,
        AMQPClass::Connection(conn_methods::AMQPMethod::Open(conn_methods::Open {
            virtual_host: "/".into(),
        })),
    ))
    .await;
    for _ in 0..10 {
        match raw.frame().await {
            None => break,
            Some(AMQPFrame::Method(
                _,
                AMQPClass::Connection(conn_methods::AMQPMethod::OpenOk(_)),
            )) => {
                panic!("connection opened despite tune-ok channel_max 0 above the offered 2047")
            }
            Some(_) => {}
        }
    }
}

async fn many_channels_on_one_connection(url: String) {
    let conn = connect(&url).await;
    let q = uniq("many-ch");
    let first = channel(&conn).await;
    plain_queue(&first, &q).await;
    let mut chans = Vec::new();
    for i in 0..200u32 {
        let ch = channel(&conn).await;
        publish(&ch, "", &q, i.to_string().as_bytes()).await;
        chans.push(ch);
    }
    let ids: std::collections::HashSet<u16> = chans.iter().map(Channel::id).collect();
    assert_eq!(ids.len(), 200, "channel ids are distinct");
    // Close half of them and check the rest still work.
    for ch in chans.iter().step_by(2) {
        step("channel.close", ch.close(200, "ok".into()))
            .await
            .expect("channel.close");
    }
    for ch in chans.iter().skip(1).step_by(2).take(10) {
        plain_queue(ch, &q).await;
    }
    e2e::wait_for_async("200 messages in the queue", Duration::from_secs(10), || {
        let conn = &conn;
        let q = &q;
        async move { (ready_count(conn, q).await == 200).then_some(()) }
    })
    .await;
    let got = drain(&first, &q).await;
    assert_eq!(got.len(), 200);
    close(conn).await;
}

// ---------------------------------------------------------------------------------------
// exchanges and routing

async fn default_exchange_routes_by_queue_name(url: String) {
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    let q = uniq("default");
    plain_queue(&ch, &q).await;
    publish(&ch, "", &q, b"hello").await;
    publish(&ch, "", &format!("{q}.nope"), b"lost").await;
    assert_eq!(drain(&ch, &q).await, vec!["hello"]);
    // Binding to the default exchange is refused: 403 ACCESS_REFUSED.
    let r = step(
        "bind to default exchange",
        ch.queue_bind(
            q.as_str().into(),
            "".into(),
            "x".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    expect_code("queue.bind to the default exchange", r, 403);
    close(conn).await;
}

async fn direct_exchange(url: String) {
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    let x = uniq("direct-x");
    let (qa, qb) = (uniq("direct-a"), uniq("direct-b"));
    declare_exchange(&ch, &x, ExchangeKind::Direct).await;
    plain_queue(&ch, &qa).await;
    plain_queue(&ch, &qb).await;
    bind(&ch, &qa, &x, "red", FieldTable::default()).await;
    bind(&ch, &qb, &x, "blue", FieldTable::default()).await;
    bind(&ch, &qb, &x, "red", FieldTable::default()).await;
    publish(&ch, &x, "red", b"r").await;
    publish(&ch, &x, "blue", b"b").await;
    publish(&ch, &x, "green", b"g").await;
    publish(&ch, &x, "RED", b"R").await;
    assert_eq!(drain(&ch, &qa).await, vec!["r"]);
    assert_eq!(drain(&ch, &qb).await, vec!["r", "b"]);
    // Unbind stops routing.
    step(
        "queue.unbind",
        ch.queue_unbind(
            qb.as_str().into(),
            x.as_str().into(),
            "red".into(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("unbind");
    publish(&ch, &x, "red", b"r2").await;
    assert_eq!(drain(&ch, &qa).await, vec!["r2"]);
    assert!(drain(&ch, &qb).await.is_empty());
    close(conn).await;
}

async fn fanout_exchange(url: String) {
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    let x = uniq("fanout-x");
    declare_exchange(&ch, &x, ExchangeKind::Fanout).await;
    let queues: Vec<String> = (0..3).map(|i| uniq(&format!("fanout-{i}"))).collect();
    for q in &queues {
        plain_queue(&ch, q).await;
        bind(&ch, q, &x, "ignored", FieldTable::default()).await;
    }
    publish(&ch, &x, "any.key", b"m1").await;
    publish(&ch, &x, "", b"m2").await;
    for q in &queues {
        assert_eq!(drain(&ch, q).await, vec!["m1", "m2"], "queue {q}");
    }
    close(conn).await;
}

async fn topic_exchange(url: String) {
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    let x = uniq("topic-x");
    declare_exchange(&ch, &x, ExchangeKind::Topic).await;
    let star = uniq("topic-star");
    let hash = uniq("topic-hash");
    let both = uniq("topic-both");
    let all = uniq("topic-all");
    for q in [&star, &hash, &both, &all] {
        plain_queue(&ch, q).await;
    }
    bind(&ch, &star, &x, "a.*.c", FieldTable::default()).await;
    bind(&ch, &hash, &x, "a.#", FieldTable::default()).await;
    // Two bindings of one queue that both match: delivered once.
    bind(&ch, &both, &x, "*.b.*", FieldTable::default()).await;
    bind(&ch, &both, &x, "#.c", FieldTable::default()).await;
    bind(&ch, &all, &x, "#", FieldTable::default()).await;
    for key in ["a.b.c", "a", "a.b", "a.b.b.c", "x.b.c", "b.c", ""] {
        publish(&ch, &x, key, key.as_bytes()).await;
    }
    assert_eq!(drain(&ch, &star).await, vec!["a.b.c"]);
    // `#` matches zero words: "a.#" takes "a".
    assert_eq!(
        drain(&ch, &hash).await,
        vec!["a.b.c", "a", "a.b", "a.b.b.c"]
    );
    assert_eq!(
        drain(&ch, &both).await,
        vec!["a.b.c", "a.b.b.c", "x.b.c", "b.c"]
    );
    assert_eq!(
        drain(&ch, &all).await,
        vec!["a.b.c", "a", "a.b", "a.b.b.c", "x.b.c", "b.c", ""]
    );
    close(conn).await;
}

async fn headers_exchange(url: String) {
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    let x = uniq("headers-x");
    declare_exchange(&ch, &x, ExchangeKind::Headers).await;
    let (q_all, q_any) = (uniq("headers-all"), uniq("headers-any"));
    plain_queue(&ch, &q_all).await;
    plain_queue(&ch, &q_any).await;
    bind(
        &ch,
        &q_all,
        &x,
        "",
        args(&[
            ("x-match", lstr("all")),
            ("format", lstr("pdf")),
            ("type", lstr("report")),
        ]),
    )
    .await;
    bind(
        &ch,
        &q_any,
        &x,
        "",
        args(&[
            ("x-match", lstr("any")),
            ("format", lstr("pdf")),
            ("type", lstr("report")),
        ]),
    )
    .await;
    let send = |h: FieldTable, b: &'static str| {
        let ch = ch.clone();
        let x = x.clone();
        async move {
            publish_props(
                &ch,
                &x,
                "rk-ignored",
                b.as_bytes(),
                BasicProperties::default().with_headers(h),
            )
            .await
        }
    };
    send(
        args(&[("format", lstr("pdf")), ("type", lstr("report"))]),
        "both",
    )
    .await;
    send(
        args(&[("format", lstr("pdf")), ("type", lstr("log"))]),
        "format-only",
    )
    .await;
    send(args(&[("format", lstr("zip"))]), "none").await;
    send(
        args(&[
            ("format", lstr("pdf")),
            ("type", lstr("report")),
            ("extra", lstr("1")),
        ]),
        "superset",
    )
    .await;
    send(FieldTable::default(), "empty").await;
    assert_eq!(drain(&ch, &q_all).await, vec!["both", "superset"]);
    assert_eq!(
        drain(&ch, &q_any).await,
        vec!["both", "format-only", "superset"]
    );
    close(conn).await;
}

async fn predeclared_exchanges(url: String) {
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    for (name, kind) in [
        ("amq.direct", ExchangeKind::Direct),
        ("amq.fanout", ExchangeKind::Fanout),
        ("amq.topic", ExchangeKind::Topic),
        ("amq.headers", ExchangeKind::Headers),
        ("amq.match", ExchangeKind::Headers),
    ] {
        step(
            name,
            ch.exchange_declare(
                name.into(),
                kind,
                ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("passive declare {name}: {e}"));
    }
    // Routing through a predeclared exchange works like any other.
    let q = uniq("amq-direct");
    plain_queue(&ch, &q).await;
    bind(&ch, &q, "amq.direct", &q, FieldTable::default()).await;
    publish(&ch, "amq.direct", &q, b"via amq.direct").await;
    assert_eq!(drain(&ch, &q).await, vec!["via amq.direct"]);
    // The amq. prefix is reserved: 403 ACCESS_REFUSED.
    let r = step(
        "declare amq.custom",
        ch.exchange_declare(
            uniq("amq.custom").replacen("conf.", "amq.", 1).into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    let e = expect_code("exchange.declare with the amq. prefix", r, 403);
    expect_text(&e, "ACCESS_REFUSED");
    close(conn).await;
}

async fn exchange_redeclare_other_type(url: String) {
    let conn = connect(&url).await;
    let ch = channel(&conn).await;
    let x = uniq("redeclare-x");
    declare_exchange(&ch, &x, ExchangeKind::Direct).await;
    // The same declaration again is fine.
    declare_exchange(&ch, &x, ExchangeKind::Direct).await;
    let r = step(
        "redeclare as fanout",
        ch.exchange_declare(
            x.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    let e = expect_code("exchange redeclared with another type", r, 406);
    expect_text(&e, "PRECONDITION_FAILED");
    assert!(e.is_amqp_soft_error(), "a channel error: {e:?}");
    // The channel is closed, the connection is not.
    assert!(!ch.status().connected());
    let ch2 = channel(&conn).await;
    declare_exchange(&ch2, &x, ExchangeKind::Direct).await;
    // Queues too: redeclaring with other flags is 406.
    let q = uniq("redeclare-q");
    plain_queue(&ch2, &q).await;
    let r = step(
        "redeclare queue durable",
        ch2.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        ),
    )
    .await;
    expect_code("queue redeclared with other flags", r, 406);
    close(conn).await;
}

async fn passive_declare_missing(url: String) {
    let conn = connect(&url).await;
    let ch = channel(&conn).await;
    let r = step(
        "passive exchange",
        ch.exchange_declare(
            uniq("missing-x").into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    let e = expect_code("passive declare of a missing exchange", r, 404);
    expect_text(&e, "NOT_FOUND");
    let ch = channel(&conn).await;
    let r = step(
        "passive queue",
        ch.queue_declare(
            uniq("missing-q").into(),
            QueueDeclareOptions::default().passive(),
            FieldTable::default(),
        ),
    )
    .await;
    let e = expect_code("passive declare of a missing queue", r, 404);
    expect_text(&e, "NOT_FOUND");
    // Binding to a missing exchange, consuming from a missing queue: 404 as well.
    let ch = channel(&conn).await;
    let q = uniq("bind-missing");
    plain_queue(&ch, &q).await;
    let r = step(
        "bind to missing",
        ch.queue_bind(
            q.as_str().into(),
            uniq("missing-x").into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    expect_code("queue.bind to a missing exchange", r, 404);
    let ch = channel(&conn).await;
    let r = step(
        "consume missing",
        ch.basic_consume(
            uniq("missing-q").into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    expect_code("basic.consume from a missing queue", r.map(|_| ()), 404);
    close(conn).await;
}

async fn publish_to_missing_exchange(url: String) {
    let conn = connect(&url).await;
    let mut events = Box::pin(conn.events_listener());
    let ch = channel(&conn).await;
    publish(&ch, &uniq("missing-x"), "k", b"lost").await;
    channel_closed_with(&ch, &mut events, 404, "NOT_FOUND").await;
    // The connection survives.
    let ch2 = channel(&conn).await;
    plain_queue(&ch2, &uniq("after-404")).await;
    close(conn).await;
}

async fn exchange_to_exchange_binding(url: String) {
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    let (src, dst) = (uniq("e2e-src"), uniq("e2e-dst"));
    // Not auto-delete: an auto-delete exchange goes away with its last binding (checked
    // at the end), which would take the source with it on unbind.
    for (x, kind) in [(&src, ExchangeKind::Topic), (&dst, ExchangeKind::Fanout)] {
        step(
            "exchange.declare",
            ch.exchange_declare(
                x.as_str().into(),
                kind,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .expect("exchange.declare");
    }
    step(
        "exchange.bind",
        ch.exchange_bind(
            dst.as_str().into(),
            src.as_str().into(),
            "news.*".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.bind");
    let q = uniq("e2e-q");
    plain_queue(&ch, &q).await;
    bind(&ch, &q, &dst, "", FieldTable::default()).await;
    publish(&ch, &src, "news.today", b"yes").await;
    publish(&ch, &src, "sport.today", b"no").await;
    assert_eq!(drain(&ch, &q).await, vec!["yes"]);
    step(
        "exchange.unbind",
        ch.exchange_unbind(
            dst.as_str().into(),
            src.as_str().into(),
            "news.*".into(),
            ExchangeUnbindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.unbind");
    publish(&ch, &src, "news.today", b"after unbind").await;
    assert!(drain(&ch, &q).await.is_empty());
    for x in [&src, &dst] {
        step(
            "exchange.delete",
            ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default()),
        )
        .await
        .expect("exchange.delete");
    }
    // An auto-delete exchange is deleted when its last binding is removed.
    let ad = uniq("auto-delete-x");
    declare_exchange(&ch, &ad, ExchangeKind::Direct).await;
    bind(&ch, &q, &ad, "k", FieldTable::default()).await;
    step(
        "queue.unbind",
        ch.queue_unbind(
            q.as_str().into(),
            ad.as_str().into(),
            "k".into(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.unbind");
    let r = step(
        "passive declare of the auto-delete exchange",
        ch.exchange_declare(
            ad.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    expect_code("auto-delete exchange after its last unbind", r, 404);

    // Deleted so, it is no destination any more: an auto-delete exchange bound only to
    // it goes too.
    let ch = confirmed(&conn).await;
    let (outer, inner) = (uniq("ad-outer"), uniq("ad-inner"));
    declare_exchange(&ch, &outer, ExchangeKind::Fanout).await;
    declare_exchange(&ch, &inner, ExchangeKind::Fanout).await;
    step(
        "exchange.bind",
        ch.exchange_bind(
            inner.as_str().into(),
            outer.as_str().into(),
            "".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.bind");
    bind(&ch, &q, &inner, "", FieldTable::default()).await;
    step(
        "queue.unbind",
        ch.queue_unbind(
            q.as_str().into(),
            inner.as_str().into(),
            "".into(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.unbind");
    let r = step(
        "passive declare of the outer exchange",
        ch.exchange_declare(
            outer.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    expect_code("an auto-delete exchange whose only binding went", r, 404);

    // queue.bind naming neither a queue nor a key binds the channel's last declared
    // queue by its own name.
    let ch = confirmed(&conn).await;
    let x = uniq("shortcut-x");
    declare_exchange(&ch, &x, ExchangeKind::Direct).await;
    let named = uniq("shortcut-q");
    plain_queue(&ch, &named).await;
    step(
        "queue.bind with no queue and no key",
        ch.queue_bind(
            "".into(),
            x.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.bind");
    publish(&ch, &x, &named, b"by its name").await;
    publish(&ch, &x, "", b"by no key").await;
    assert_eq!(drain(&ch, &named).await, ["by its name"]);

    // CR and LF are taken out of the names in declarations and bindings.
    let (x, q) = (uniq("crlf-x"), uniq("crlf-q"));
    declare_exchange(&ch, &format!("{x}\r\n"), ExchangeKind::Direct).await;
    let declared = declare_queue(
        &ch,
        &format!("{q}\n"),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    assert_eq!(declared.name().as_str(), q);
    bind(
        &ch,
        &format!("{q}\r"),
        &format!("{x}\n"),
        "k",
        FieldTable::default(),
    )
    .await;
    publish(&ch, &x, "k", b"stripped").await;
    assert_eq!(drain(&ch, &q).await, ["stripped"]);
    close(conn).await;
}

async fn mandatory_unroutable_returned(url: String) {
    let conn = connect(&url).await;
    let ch = channel(&conn).await;
    step(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    let x = uniq("mandatory-x");
    declare_exchange(&ch, &x, ExchangeKind::Direct).await;
    let confirm = step(
        "publish mandatory",
        ch.basic_publish(
            x.as_str().into(),
            "nobody".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"bounce",
            BasicProperties::default().with_message_id("m1".into()),
        ),
    )
    .await
    .expect("publish");
    let confirmation = step("confirm", confirm).await.expect("confirm");
    // Unroutable but accepted: basic.return, then basic.ack.
    assert!(confirmation.is_ack(), "{confirmation:?}");
    let ret = confirmation.take_message().expect("a basic.return");
    assert_eq!(ret.reply_code, 312);
    assert_eq!(ret.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(ret.delivery.exchange.as_str(), x);
    assert_eq!(ret.delivery.routing_key.as_str(), "nobody");
    assert_eq!(ret.delivery.data, b"bounce");
    assert_eq!(
        ret.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("m1")
    );
    // Not mandatory: silently dropped, no return.
    let confirm = step(
        "publish",
        ch.basic_publish(
            x.as_str().into(),
            "nobody".into(),
            BasicPublishOptions::default(),
            b"drop",
            BasicProperties::default(),
        ),
    )
    .await
    .expect("publish");
    let confirmation = step("confirm", confirm).await.expect("confirm");
    assert!(confirmation.is_ack());
    assert!(confirmation.take_message().is_none());
    // A returned message has lost its BCC header, as a delivered one has; CC stays.
    let keys = |k: &str| AMQPValue::FieldArray(vec![lstr(k)].into());
    let headers = args(&[("CC", keys("cc-key")), ("BCC", keys("bcc-key"))]);
    let confirm = step(
        "publish mandatory with CC and BCC",
        ch.basic_publish(
            x.as_str().into(),
            "nobody".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"bounce",
            BasicProperties::default().with_headers(headers),
        ),
    )
    .await
    .expect("publish");
    let confirmation = step("confirm", confirm).await.expect("confirm");
    let ret = confirmation.take_message().expect("a basic.return");
    assert_eq!(
        ret.delivery.properties.headers(),
        &Some(args(&[("CC", keys("cc-key"))]))
    );
    close(conn).await;
}

// ---------------------------------------------------------------------------------------
// queues

async fn server_named_queue(url: String) {
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    let q = declare_queue(
        &ch,
        "",
        QueueDeclareOptions::exclusive(),
        FieldTable::default(),
    )
    .await;
    let name = q.name().as_str().to_string();
    assert!(name.starts_with("amq.gen-"), "server-named queue {name:?}");
    let q2 = declare_queue(
        &ch,
        "",
        QueueDeclareOptions::exclusive(),
        FieldTable::default(),
    )
    .await;
    assert_ne!(q2.name().as_str(), name);
    // Usable by name through the default exchange.
    publish(&ch, "", &name, b"to-gen").await;
    assert_eq!(drain(&ch, &name).await, vec!["to-gen"]);
    // Declaring an amq.* name yourself is refused: 403.
    let r = step(
        "declare amq.x",
        ch.queue_declare(
            "amq.mine".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    expect_code("queue.declare amq.mine", r, 403);
    close(conn).await;
}

async fn queue_declare_counts(url: String) {
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    let q = uniq("counts");
    let first = declare_queue(
        &ch,
        &q,
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    assert_eq!((first.message_count(), first.consumer_count()), (0, 0));
    for i in 0..3 {
        publish(&ch, "", &q, format!("{i}").as_bytes()).await;
    }
    let again = declare_queue(
        &ch,
        &q,
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    assert_eq!((again.message_count(), again.consumer_count()), (3, 0));
    // A consumer takes the messages (unacked, so not ready) and counts as a consumer.
    let cch = channel(&conn).await;
    let mut c = consume(&cch, &q, false).await;
    for _ in 0..3 {
        next(&mut c).await;
    }
    let passive = declare_queue(
        &ch,
        &q,
        QueueDeclareOptions::default().passive(),
        FieldTable::default(),
    )
    .await;
    assert_eq!((passive.message_count(), passive.consumer_count()), (0, 1));
    close(conn).await;
}

async fn exclusive_queue_other_connection(url: String) {
    let owner = connect(&url).await;
    let ch = channel(&owner).await;
    let q = uniq("exclusive");
    declare_queue(
        &ch,
        &q,
        QueueDeclareOptions::exclusive(),
        FieldTable::default(),
    )
    .await;
    let other = connect(&url).await;
    let och = channel(&other).await;
    let r = step(
        "declare from another connection",
        och.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions::exclusive(),
            FieldTable::default(),
        ),
    )
    .await;
    let e = expect_code("exclusive queue from another connection", r, 405);
    expect_text(&e, "RESOURCE_LOCKED");
    let och = channel(&other).await;
    let r = step(
        "consume from another connection",
        och.basic_consume(
            q.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    expect_code(
        "consume an exclusive queue from another connection",
        r.map(|_| ()),
        405,
    );
    // Unbinding is refused only where there is a binding to remove.
    bind(&ch, &q, "amq.direct", "held", FieldTable::default()).await;
    for (key, expected) in [("never-bound", None), ("held", Some(405))] {
        let och = channel(&other).await;
        let r = step(
            "unbind from another connection",
            och.queue_unbind(
                q.as_str().into(),
                "amq.direct".into(),
                key.into(),
                FieldTable::default(),
            ),
        )
        .await;
        match expected {
            None => r.unwrap_or_else(|e| panic!("unbind of {key}: {e}")),
            Some(code) => {
                expect_code("unbind an exclusive queue's binding", r, code);
            }
        }
    }
    // When the owner goes, the queue goes.
    close(owner).await;
    let och = channel(&other).await;
    let r = step(
        "passive after owner closed",
        och.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions::default().passive(),
            FieldTable::default(),
        ),
    )
    .await;
    expect_code("exclusive queue after its owner closed", r, 404);
    close(other).await;
}

async fn purge_returns_count(url: String) {
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    let q = uniq("purge");
    plain_queue(&ch, &q).await;
    for i in 0..5 {
        publish(&ch, "", &q, format!("{i}").as_bytes()).await;
    }
    // Sync point: basic.get sees the first, so all five are in the queue.
    let got = step(
        "basic.get",
        ch.basic_get(q.as_str().into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("get")
    .expect("a message");
    assert_eq!(got.message_count, 4);
    let purged = step(
        "queue.purge",
        ch.queue_purge(q.as_str().into(), QueuePurgeOptions::default()),
    )
    .await
    .expect("purge");
    assert_eq!(purged, 4);
    let purged = step(
        "queue.purge",
        ch.queue_purge(q.as_str().into(), QueuePurgeOptions::default()),
    )
    .await
    .expect("purge");
    assert_eq!(purged, 0);
    close(conn).await;
}

async fn delete_if_empty_if_unused(url: String) {
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    let q = uniq("delete-if");
    plain_queue(&ch, &q).await;
    publish(&ch, "", &q, b"x").await;
    assert_eq!(ready_count(&conn, &q).await, 1);
    let r = step(
        "delete if-empty",
        ch.queue_delete(
            q.as_str().into(),
            QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
        ),
    )
    .await;
    let e = expect_code("queue.delete if-empty of a non-empty queue", r, 406);
    expect_text(&e, "PRECONDITION_FAILED");

    let ch = channel(&conn).await;
    let cch = channel(&conn).await;
    let _c = consume(&cch, &q, true).await;
    let r = step(
        "delete if-unused",
        ch.queue_delete(
            q.as_str().into(),
            QueueDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        ),
    )
    .await;
    let e = expect_code("queue.delete if-unused of a consumed queue", r, 406);
    expect_text(&e, "PRECONDITION_FAILED");

    // Plain delete returns the number of messages deleted.
    let q2 = uniq("delete-count");
    let ch = channel(&conn).await;
    plain_queue(&ch, &q2).await;
    for _ in 0..3 {
        publish(&ch, "", &q2, b"m").await;
    }
    assert_eq!(ready_count(&conn, &q2).await, 3);
    let n = step(
        "queue.delete",
        ch.queue_delete(q2.as_str().into(), QueueDeleteOptions::default()),
    )
    .await
    .expect("delete");
    assert_eq!(n, 3);
    // Deleting a missing queue is not an error in RabbitMQ (returns 0).
    let n = step(
        "queue.delete missing",
        ch.queue_delete(q2.as_str().into(), QueueDeleteOptions::default()),
    )
    .await
    .expect("delete missing");
    assert_eq!(n, 0);
    close(conn).await;
}

async fn auto_delete_queue(url: String) {
    let conn = connect(&url).await;
    let ch = channel(&conn).await;
    let q = uniq("auto-delete");
    declare_queue(
        &ch,
        &q,
        QueueDeclareOptions::default().auto_delete(),
        FieldTable::default(),
    )
    .await;
    let c1 = consume(&ch, &q, true).await;
    let c2 = consume(&ch, &q, true).await;
    step(
        "cancel 1",
        ch.basic_cancel(c1.tag(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel");
    // One consumer left: still there.
    assert_eq!(ready_count(&conn, &q).await, 0);
    step(
        "cancel 2",
        ch.basic_cancel(c2.tag(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel");
    let probe = channel(&conn).await;
    let r = step(
        "passive after last cancel",
        probe.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions::default().passive(),
            FieldTable::default(),
        ),
    )
    .await;
    expect_code("auto-delete queue after its last consumer", r, 404);
    close(conn).await;
}

// ---------------------------------------------------------------------------------------
// consuming and acknowledging

async fn consume_manual_ack(url: String) {
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    let q = uniq("manual-ack");
    plain_queue(&ch, &q).await;
    let props = BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_correlation_id("c-1".into())
        .with_delivery_mode(2)
        .with_headers(args(&[("k", lstr("v")), ("n", AMQPValue::LongInt(7))]));
    publish_props(&ch, "", &q, b"one", props.clone()).await;
    publish(&ch, "", &q, b"two").await;
    let mut c = consume(&ch, &q, false).await;
    let d1 = next(&mut c).await;
    let d2 = next(&mut c).await;
    assert_eq!((body(&d1), body(&d2)), ("one".into(), "two".into()));
    assert_eq!((d1.delivery_tag, d2.delivery_tag), (1, 2));
    assert!(!d1.redelivered);
    assert_eq!(d1.exchange.as_str(), "");
    assert_eq!(d1.routing_key.as_str(), q);
    assert_eq!(d1.properties.content_type(), props.content_type());
    assert_eq!(d1.properties.correlation_id(), props.correlation_id());
    assert_eq!(d1.properties.delivery_mode(), &Some(2));
    assert_eq!(header(&d1.properties, "k"), Some(&lstr("v")));
    assert_eq!(header(&d1.properties, "n"), Some(&AMQPValue::LongInt(7)));
    // Multiple ack of both.
    step(
        "ack multiple",
        d2.acker.ack(BasicAckOptions { multiple: true }),
    )
    .await
    .expect("ack");
    let passive = declare_queue(
        &ch,
        &q,
        QueueDeclareOptions::default().passive(),
        FieldTable::default(),
    )
    .await;
    assert_eq!(passive.message_count(), 0);
    // Closing the channel must not bring them back.
    step("channel.close", ch.close(200, "ok".into()))
        .await
        .expect("close");
    assert_eq!(ready_count(&conn, &q).await, 0);
    close(conn).await;
}

async fn prefetch_limits_unacked(url: String) {
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    let q = uniq("prefetch");
    plain_queue(&ch, &q).await;
    for i in 0..5 {
        publish(&ch, "", &q, format!("{i}").as_bytes()).await;
    }
    step("basic.qos", ch.basic_qos(2, BasicQosOptions::default()))
        .await
        .expect("qos");
    let mut c = consume(&ch, &q, false).await;
    let d0 = next(&mut c).await;
    let _d1 = next(&mut c).await;
    nothing_more(&mut c).await;
    assert_eq!(ready_count(&conn, &q).await, 3);
    step("ack", d0.acker.ack(BasicAckOptions::default()))
        .await
        .expect("ack");
    let d2 = next(&mut c).await;
    assert_eq!(body(&d2), "2");
    nothing_more(&mut c).await;
    assert_eq!(ready_count(&conn, &q).await, 2);
    close(conn).await;
}

async fn nack_reject_requeue_redelivers(url: String) {
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    let q = uniq("requeue");
    plain_queue(&ch, &q).await;
    publish(&ch, "", &q, b"a").await;
    publish(&ch, "", &q, b"b").await;
    step("basic.qos", ch.basic_qos(1, BasicQosOptions::default()))
        .await
        .expect("qos");
    let mut c = consume(&ch, &q, false).await;
    let d = next(&mut c).await;
    assert_eq!((body(&d), d.redelivered), ("a".into(), false));
    step(
        "nack requeue",
        d.acker.nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        }),
    )
    .await
    .expect("nack");
    // Requeued to its original position (head): redelivered before "b".
    let d = next(&mut c).await;
    assert_eq!((body(&d), d.redelivered), ("a".into(), true));
    step(
        "reject requeue",
        d.acker.reject(BasicRejectOptions { requeue: true }),
    )
    .await
    .expect("reject");
    let d = next(&mut c).await;
    assert_eq!((body(&d), d.redelivered), ("a".into(), true));
    step("ack", d.acker.ack(BasicAckOptions::default()))
        .await
        .expect("ack");
    let d = next(&mut c).await;
    assert_eq!((body(&d), d.redelivered), ("b".into(), false));
    step("ack", d.acker.ack(BasicAckOptions::default()))
        .await
        .expect("ack");
    close(conn).await;
}

async fn reject_without_requeue_drops(url: String) {
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    let q = uniq("reject-drop");
    plain_queue(&ch, &q).await;
    publish(&ch, "", &q, b"a").await;
    publish(&ch, "", &q, b"b").await;
    let mut c = consume(&ch, &q, false).await;
    let a = next(&mut c).await;
    let b = next(&mut c).await;
    step(
        "reject",
        a.acker.reject(BasicRejectOptions { requeue: false }),
    )
    .await
    .expect("reject");
    step(
        "nack",
        b.acker.nack(BasicNackOptions {
            requeue: false,
            multiple: false,
        }),
    )
    .await
    .expect("nack");
    nothing_more(&mut c).await;
    step("channel.close", ch.close(200, "ok".into()))
        .await
        .expect("close");
    assert_eq!(ready_count(&conn, &q).await, 0);
    close(conn).await;
}

async fn unacked_requeued_on_channel_close(url: String) {
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    let q = uniq("requeue-close");
    plain_queue(&ch, &q).await;
    for b in ["a", "b", "c"] {
        publish(&ch, "", &q, b.as_bytes()).await;
    }
    let cch = channel(&conn).await;
    let mut c = consume(&cch, &q, false).await;
    for _ in 0..3 {
        next(&mut c).await;
    }
    assert_eq!(ready_count(&conn, &q).await, 0);
    step("channel.close", cch.close(200, "ok".into()))
        .await
        .expect("close");
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = step(
            "basic.get",
            ch.basic_get(q.as_str().into(), BasicGetOptions { no_ack: true }),
        )
        .await
        .expect("get")
        .expect("a requeued message");
        assert!(
            m.delivery.redelivered,
            "requeued messages are flagged redelivered"
        );
        got.push(body(&m.delivery));
    }
    assert_eq!(got, vec!["a", "b", "c"], "requeued in their original order");
    // Same when the whole connection drops.
    let other = connect(&url).await;
    let och = channel(&other).await;
    publish(&ch, "", &q, b"d").await;
    let mut c = consume(&och, &q, false).await;
    next(&mut c).await;
    drop(c);
    close(other).await;
    let m = step(
        "basic.get",
        ch.basic_get(q.as_str().into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("get")
    .expect("requeued after connection close");
    assert_eq!(
        (body(&m.delivery), m.delivery.redelivered),
        ("d".into(), true)
    );
    close(conn).await;
}

async fn ack_unknown_delivery_tag(url: String) {
    let conn = connect(&url).await;
    let mut events = Box::pin(conn.events_listener());
    let ch = channel(&conn).await;
    step("ack 999", ch.basic_ack(999, BasicAckOptions::default()))
        .await
        .expect("send ack");
    channel_closed_with(
        &ch,
        &mut events,
        406,
        "PRECONDITION_FAILED - unknown delivery tag 999",
    )
    .await;
    // Acking twice is the same error.
    let ch = channel(&conn).await;
    let q = uniq("double-ack");
    plain_queue(&ch, &q).await;
    publish(&ch, "", &q, b"x").await;
    let m = step(
        "get",
        ch.basic_get(q.as_str().into(), BasicGetOptions { no_ack: false }),
    )
    .await
    .expect("get")
    .expect("msg");
    step(
        "ack",
        ch.basic_ack(m.delivery.delivery_tag, BasicAckOptions::default()),
    )
    .await
    .expect("ack");
    step(
        "ack again",
        ch.basic_ack(m.delivery.delivery_tag, BasicAckOptions::default()),
    )
    .await
    .expect("send ack");
    channel_closed_with(
        &ch,
        &mut events,
        406,
        "PRECONDITION_FAILED - unknown delivery tag",
    )
    .await;
    close(conn).await;
}

async fn basic_get_and_get_empty(url: String) {
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    let q = uniq("get");
    plain_queue(&ch, &q).await;
    let none = step(
        "get empty",
        ch.basic_get(q.as_str().into(), BasicGetOptions::default()),
    )
    .await
    .expect("get");
    assert!(none.is_none(), "basic.get-empty");
    publish(&ch, "", &q, b"1").await;
    publish(&ch, "", &q, b"2").await;
    let m = step(
        "get",
        ch.basic_get(q.as_str().into(), BasicGetOptions { no_ack: false }),
    )
    .await
    .expect("get")
    .expect("msg");
    assert_eq!(
        (body(&m.delivery), m.message_count, m.delivery.delivery_tag),
        ("1".into(), 1, 1)
    );
    assert_eq!(m.delivery.routing_key.as_str(), q);
    let m2 = step(
        "get",
        ch.basic_get(q.as_str().into(), BasicGetOptions { no_ack: false }),
    )
    .await
    .expect("get")
    .expect("msg");
    assert_eq!(
        (
            body(&m2.delivery),
            m2.message_count,
            m2.delivery.delivery_tag
        ),
        ("2".into(), 0, 2)
    );
    // Reject the first with requeue: get sees it again, redelivered.
    step(
        "reject",
        ch.basic_reject(1, BasicRejectOptions { requeue: true }),
    )
    .await
    .expect("reject");
    let m3 = step(
        "get",
        ch.basic_get(q.as_str().into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("get")
    .expect("msg");
    assert_eq!(
        (
            body(&m3.delivery),
            m3.delivery.redelivered,
            m3.delivery.delivery_tag
        ),
        ("1".into(), true, 3)
    );
    step("ack", ch.basic_ack(2, BasicAckOptions::default()))
        .await
        .expect("ack");
    let none = step(
        "get empty",
        ch.basic_get(q.as_str().into(), BasicGetOptions::default()),
    )
    .await
    .expect("get");
    assert!(none.is_none());
    // basic.get on a missing queue: 404.
    let r = step(
        "get missing",
        ch.basic_get(uniq("missing").into(), BasicGetOptions::default()),
    )
    .await;
    expect_code(
        "basic.get from a missing queue",
        r.map(|m| m.is_some()),
        404,
    );
    close(conn).await;
}

async fn exclusive_consume_conflict(url: String) {
    let conn = connect(&url).await;
    let q = uniq("excl-consume");
    let ch = channel(&conn).await;
    plain_queue(&ch, &q).await;
    let _c = exclusive_consume(&ch, &q).await.expect("exclusive consume");
    let ch2 = channel(&conn).await;
    let r = step(
        "second consume",
        ch2.basic_consume(
            q.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    let e = expect_code(
        "consume on an exclusively consumed queue",
        r.map(|_| ()),
        403,
    );
    expect_text(&e, "ACCESS_REFUSED");
    // And an exclusive consume on a queue that already has a consumer: 403 too.
    let q2 = uniq("excl-consume2");
    let ch3 = channel(&conn).await;
    plain_queue(&ch3, &q2).await;
    let _c2 = consume(&ch3, &q2, true).await;
    let ch4 = channel(&conn).await;
    let r = exclusive_consume(&ch4, &q2).await;
    expect_code("exclusive consume on a consumed queue", r.map(|_| ()), 403);
    close(conn).await;
}

async fn consumer_cancel_notify_on_queue_delete(url: String) {
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    let q = uniq("cancel-notify");
    plain_queue(&ch, &q).await;
    let cch = channel(&conn).await;
    let mut c = consume(&cch, &q, true).await;
    publish(&ch, "", &q, b"before").await;
    assert_eq!(body(&next(&mut c).await), "before");
    step(
        "queue.delete",
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()),
    )
    .await
    .expect("delete");
    // The broker sends basic.cancel: the consumer stream ends; its channel stays open.
    let end = step("consumer end after basic.cancel", c.next()).await;
    assert!(
        end.is_none(),
        "consumer should end, got {:?}",
        end.map(|r| r.map(|d| body(&d)))
    );
    assert!(
        cch.status().connected(),
        "the consumer's channel stays open"
    );
    plain_queue(&cch, &uniq("cancel-after")).await;
    close(conn).await;
}

async fn round_robin_two_consumers(url: String) {
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    let q = uniq("round-robin");
    plain_queue(&ch, &q).await;
    let (ch1, ch2) = (channel(&conn).await, channel(&conn).await);
    let mut c1 = consume(&ch1, &q, true).await;
    let mut c2 = consume(&ch2, &q, true).await;
    for i in 0..10 {
        publish(&ch, "", &q, format!("{i}").as_bytes()).await;
    }
    let mut got1 = Vec::new();
    let mut got2 = Vec::new();
    for _ in 0..5 {
        got1.push(body(&next(&mut c1).await));
        got2.push(body(&next(&mut c2).await));
    }
    nothing_more(&mut c1).await;
    nothing_more(&mut c2).await;
    assert_eq!(got1, vec!["0", "2", "4", "6", "8"]);
    assert_eq!(got2, vec!["1", "3", "5", "7", "9"]);
    close(conn).await;
}

// ---------------------------------------------------------------------------------------
// publishing

/// A burst of persistent publishes into a durable queue, on the wire: every delivery tag
/// is acked exactly once and in order, and the acks come coalesced (`multiple`) into
/// fewer frames than messages, which is what lets a confirming publisher keep up.
async fn persistent_confirms_coalesced(url: String) {
    const BURST: u64 = 300;
    let q = uniq("confirm-burst");
    let mut raw = Raw::connect(&url).await;
    raw.handshake(None).await;
    let open = channel_methods::AMQPMethod::Open(channel_methods::Open {});
    raw.send(&AMQPFrame::Method(1, AMQPClass::Channel(open)))
        .await;
    assert!(matches!(
        raw.method().await,
        AMQPClass::Channel(channel_methods::AMQPMethod::OpenOk(_))
    ));
    let declare = queue_methods::AMQPMethod::Declare(queue_methods::Declare {
        queue: q.as_str().into(),
        passive: false,
        durable: true,
        exclusive: false,
        auto_delete: false,
        nowait: false,
        arguments: FieldTable::default(),
    });
    raw.send(&AMQPFrame::Method(1, AMQPClass::Queue(declare)))
        .await;
    assert!(matches!(
        raw.method().await,
        AMQPClass::Queue(queue_methods::AMQPMethod::DeclareOk(_))
    ));
    let select = confirm_methods::AMQPMethod::Select(confirm_methods::Select { nowait: false });
    raw.send(&AMQPFrame::Method(1, AMQPClass::Confirm(select)))
        .await;
    assert!(matches!(
        raw.method().await,
        AMQPClass::Confirm(confirm_methods::AMQPMethod::SelectOk(_))
    ));
    let mut burst = Vec::new();
    for i in 0..BURST {
        let body = format!("persistent {i}").into_bytes();
        let frames = [
            AMQPFrame::Method(
                1,
                AMQPClass::Basic(basic_methods::AMQPMethod::Publish(basic_methods::Publish {
                    exchange: "".into(),
                    routing_key: q.as_str().into(),
                    mandatory: false,
                    immediate: false,
                })),
            ),
            AMQPFrame::Header(
                1,
                AMQPContentHeader {
                    class_id: 60,
                    body_size: body.len() as u64,
                    properties: BasicProperties::default().with_delivery_mode(2),
                },
            ),
            AMQPFrame::Body(1, body),
        ];
        for frame in &frames {
            let ctx = gen_frame(frame)(WriteContext::from(Vec::new())).expect("serialise frame");
            burst.extend_from_slice(&ctx.write);
        }
    }
    raw.send_bytes(&burst).await;
    // Acked up to and including this tag.
    let mut acked = 0;
    let mut frames = 0;
    while acked < BURST {
        assert!(frames < BURST, "more confirm frames than messages");
        match raw.method().await {
            AMQPClass::Basic(basic_methods::AMQPMethod::Ack(ack)) => {
                frames += 1;
                if ack.multiple {
                    assert!(
                        ack.delivery_tag > acked,
                        "tag {} acked twice",
                        ack.delivery_tag
                    );
                } else {
                    assert_eq!(ack.delivery_tag, acked + 1, "acks out of order");
                }
                acked = ack.delivery_tag;
            }
            other => panic!("expected basic.ack, got {other:?}"),
        }
    }
    assert_eq!(acked, BURST, "acked past the last publish");
    assert!(
        frames < BURST,
        "{BURST} persistent messages confirmed in {frames} frames: no `multiple`"
    );
    let delete = queue_methods::AMQPMethod::Delete(queue_methods::Delete {
        queue: q.as_str().into(),
        if_unused: false,
        if_empty: false,
        nowait: false,
    });
    raw.send(&AMQPFrame::Method(1, AMQPClass::Queue(delete)))
        .await;
    match raw.method().await {
        AMQPClass::Queue(queue_methods::AMQPMethod::DeleteOk(ok)) => {
            assert_eq!(ok.message_count, u32::try_from(BURST).expect("small"));
        }
        other => panic!("expected queue.delete-ok, got {other:?}"),
    }
}

async fn publisher_confirms(url: String) {
    let conn = connect(&url).await;
    let ch = channel(&conn).await;
    let q = uniq("confirms");
    plain_queue(&ch, &q).await;
    step(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    assert!(ch.status().confirm());
    let one = step(
        "publish",
        ch.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            b"1",
            BasicProperties::default(),
        ),
    )
    .await
    .expect("publish");
    assert!(step("confirm", one).await.expect("confirm").is_ack());
    // Many outstanding; RabbitMQ may ack them with `multiple`, lapin resolves all.
    let mut pending = Vec::new();
    for i in 0..50 {
        pending.push(
            step(
                "publish",
                ch.basic_publish(
                    "".into(),
                    q.as_str().into(),
                    BasicPublishOptions::default(),
                    format!("{i}").as_bytes(),
                    BasicProperties::default(),
                ),
            )
            .await
            .expect("publish"),
        );
    }
    for p in pending {
        assert!(step("confirm", p).await.expect("confirm").is_ack());
    }
    let returned = step("wait_for_confirms", ch.wait_for_confirms())
        .await
        .expect("wait_for_confirms");
    assert!(returned.is_empty());
    assert_eq!(ready_count(&conn, &q).await, 51);
    // Publishing to a missing exchange in confirm mode still closes the channel with 404.
    let r = step("publish missing", async {
        let p = ch
            .basic_publish(
                uniq("nox").into(),
                "k".into(),
                BasicPublishOptions::default(),
                b"x",
                BasicProperties::default(),
            )
            .await?;
        p.await
    })
    .await;
    expect_code("confirm of a publish to a missing exchange", r, 404);
    // confirm.select on a transactional channel: 406.
    let tch = channel(&conn).await;
    step("tx.select", tch.tx_select()).await.expect("tx.select");
    let r = step(
        "confirm.select after tx.select",
        tch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await;
    expect_code("confirm.select on a tx channel", r, 406);
    close(conn).await;
}

async fn large_body_split_and_reassembled(url: String) {
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    let q = uniq("large");
    plain_queue(&ch, &q).await;
    let big: Vec<u8> = (0..(1usize << 20)).map(|i| (i * 31 % 251) as u8).collect();
    publish(&ch, "", &q, &big).await;
    publish(&ch, "", &q, b"").await;
    // Exactly frame_max - 8 bytes: one full body frame.
    let edge = vec![7u8; 131_072 - 8];
    publish(&ch, "", &q, &edge).await;
    let mut c = consume(&ch, &q, true).await;
    let d = next(&mut c).await;
    assert_eq!(d.data.len(), big.len());
    assert!(d.data == big, "1 MiB body differs after the round trip");
    let empty = next(&mut c).await;
    assert!(empty.data.is_empty());
    let e = next(&mut c).await;
    assert!(e.data == edge);
    // With a small negotiated frame_max too.
    let small = connect(&format!("{url}?frame_max=4096")).await;
    assert_eq!(small.configuration().frame_max(), 4096);
    let sch = channel(&small).await;
    publish(&sch, "", &q, &big[..100_000]).await;
    let d = next(&mut c).await;
    assert!(d.data == big[..100_000]);
    close(small).await;
    close(conn).await;
}

// ---------------------------------------------------------------------------------------
// queue arguments, TTL and dead-lettering

async fn queue_message_ttl(url: String) {
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    let q = uniq("ttl");
    declare_queue(
        &ch,
        &q,
        QueueDeclareOptions::default(),
        args(&[("x-message-ttl", AMQPValue::LongInt(200))]),
    )
    .await;
    publish(&ch, "", &q, b"short-lived").await;
    e2e::wait_for_async("the message to expire", Duration::from_secs(5), || {
        let conn = &conn;
        let q = &q;
        async move { (ready_count(conn, q).await == 0).then_some(()) }
    })
    .await;
    assert!(drain(&ch, &q).await.is_empty());
    // A TTL of 0 with no consumer: gone at once.
    let q0 = uniq("ttl0");
    declare_queue(
        &ch,
        &q0,
        QueueDeclareOptions::default(),
        args(&[("x-message-ttl", AMQPValue::LongInt(0))]),
    )
    .await;
    publish(&ch, "", &q0, b"instant").await;
    assert!(drain(&ch, &q0).await.is_empty());
    // Invalid argument types are refused: 406.
    let r = step(
        "bad ttl",
        ch.queue_declare(
            uniq("ttl-bad").into(),
            QueueDeclareOptions::default(),
            args(&[("x-message-ttl", lstr("soon"))]),
        ),
    )
    .await;
    expect_code("x-message-ttl as a string", r, 406);
    close(conn).await;
}

async fn max_length_drop_head(url: String) {
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    let q = uniq("maxlen-drop");
    declare_queue(
        &ch,
        &q,
        QueueDeclareOptions::default(),
        args(&[("x-max-length", AMQPValue::LongInt(2))]),
    )
    .await;
    for b in ["1", "2", "3", "4"] {
        publish(&ch, "", &q, b.as_bytes()).await;
    }
    assert_eq!(drain(&ch, &q).await, vec!["3", "4"]);
    // Explicit drop-head behaves the same.
    let q2 = uniq("maxlen-drop2");
    declare_queue(
        &ch,
        &q2,
        QueueDeclareOptions::default(),
        args(&[
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", lstr("drop-head")),
        ]),
    )
    .await;
    for b in ["a", "b"] {
        publish(&ch, "", &q2, b.as_bytes()).await;
    }
    assert_eq!(drain(&ch, &q2).await, vec!["b"]);
    close(conn).await;
}

async fn max_length_reject_publish(url: String) {
    let conn = connect(&url).await;
    let ch = channel(&conn).await;
    let q = uniq("maxlen-reject");
    declare_queue(
        &ch,
        &q,
        QueueDeclareOptions::default(),
        args(&[
            ("x-max-length", AMQPValue::LongInt(2)),
            ("x-overflow", lstr("reject-publish")),
        ]),
    )
    .await;
    step(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    let mut acked = Vec::new();
    for b in ["1", "2", "3"] {
        acked.push(publish_acked(&ch, &q, b.as_bytes()).await);
    }
    assert_eq!(acked, [true, true, false], "the third publish is nacked");
    assert_eq!(drain(&ch, &q).await, vec!["1", "2"]);
    close(conn).await;
}

/// The first entry of the `x-death` header as a map.
fn x_death(d: &Delivery) -> BTreeMap<String, AMQPValue> {
    let Some(AMQPValue::FieldArray(deaths)) = header(&d.properties, "x-death") else {
        panic!("no x-death array in {:?}", d.properties.headers());
    };
    let Some(AMQPValue::FieldTable(first)) = deaths.as_slice().first() else {
        panic!("x-death is empty or not tables: {deaths:?}");
    };
    first
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.clone()))
        .collect()
}

fn str_of(v: Option<&AMQPValue>) -> String {
    match v {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        Some(AMQPValue::ShortString(s)) => s.as_str().to_string(),
        other => panic!("not a string: {other:?}"),
    }
}

fn int_of(v: Option<&AMQPValue>) -> i64 {
    match v {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        other => panic!("not an integer: {other:?}"),
    }
}

/// A fanout DLX with one queue behind it; returns (exchange, queue).
async fn dead_letter_target(ch: &Channel) -> (String, String) {
    let dlx = uniq("dlx");
    let dlq = uniq("dlq");
    declare_exchange(ch, &dlx, ExchangeKind::Fanout).await;
    plain_queue(ch, &dlq).await;
    bind(ch, &dlq, &dlx, "", FieldTable::default()).await;
    (dlx, dlq)
}

async fn dead_letter_on_reject(url: String) {
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    let (dlx, dlq) = dead_letter_target(&ch).await;
    let q = uniq("dl-src");
    declare_queue(
        &ch,
        &q,
        QueueDeclareOptions::default(),
        args(&[("x-dead-letter-exchange", lstr(&dlx))]),
    )
    .await;
    publish(&ch, "", &q, b"doomed").await;
    let m = step(
        "get",
        ch.basic_get(q.as_str().into(), BasicGetOptions { no_ack: false }),
    )
    .await
    .expect("get")
    .expect("msg");
    step(
        "reject",
        ch.basic_reject(
            m.delivery.delivery_tag,
            BasicRejectOptions { requeue: false },
        ),
    )
    .await
    .expect("reject");
    let cch = channel(&conn).await;
    let mut c = consume(&cch, &dlq, true).await;
    let d = next(&mut c).await;
    assert_eq!(body(&d), "doomed");
    // Dead-lettered with the original routing key, through the DLX.
    assert_eq!(d.exchange.as_str(), dlx);
    assert_eq!(d.routing_key.as_str(), q);
    let death = x_death(&d);
    assert_eq!(str_of(death.get("reason")), "rejected");
    assert_eq!(str_of(death.get("queue")), q);
    assert_eq!(str_of(death.get("exchange")), "");
    assert_eq!(int_of(death.get("count")), 1);
    let Some(AMQPValue::FieldArray(keys)) = death.get("routing-keys") else {
        panic!("routing-keys: {death:?}");
    };
    assert_eq!(keys.as_slice().len(), 1);
    assert_eq!(str_of(keys.as_slice().first()), q);
    assert!(
        matches!(death.get("time"), Some(AMQPValue::Timestamp(_))),
        "time: {death:?}"
    );
    assert_eq!(
        str_of(header(&d.properties, "x-first-death-reason")),
        "rejected"
    );
    assert_eq!(str_of(header(&d.properties, "x-first-death-queue")), q);
    // x-dead-letter-routing-key replaces the key.
    let q2 = uniq("dl-src-rk");
    declare_queue(
        &ch,
        &q2,
        QueueDeclareOptions::default(),
        args(&[
            ("x-dead-letter-exchange", lstr(&dlx)),
            ("x-dead-letter-routing-key", lstr("new-key")),
        ]),
    )
    .await;
    publish(&ch, "", &q2, b"rekeyed").await;
    let m = step(
        "get",
        ch.basic_get(q2.as_str().into(), BasicGetOptions { no_ack: false }),
    )
    .await
    .expect("get")
    .expect("msg");
    step(
        "nack",
        ch.basic_nack(
            m.delivery.delivery_tag,
            BasicNackOptions {
                requeue: false,
                multiple: false,
            },
        ),
    )
    .await
    .expect("nack");
    let d = next(&mut c).await;
    assert_eq!(
        (body(&d), d.routing_key.as_str()),
        ("rekeyed".into(), "new-key")
    );
    close(conn).await;
}

async fn dead_letter_on_expiry(url: String) {
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    let (dlx, dlq) = dead_letter_target(&ch).await;
    let q = uniq("dl-ttl");
    declare_queue(
        &ch,
        &q,
        QueueDeclareOptions::default(),
        args(&[
            ("x-dead-letter-exchange", lstr(&dlx)),
            ("x-message-ttl", AMQPValue::LongInt(100)),
        ]),
    )
    .await;
    publish_props(
        &ch,
        "",
        &q,
        b"expires",
        BasicProperties::default().with_message_id("e1".into()),
    )
    .await;
    let cch = channel(&conn).await;
    let mut c = consume(&cch, &dlq, true).await;
    let d = next(&mut c).await;
    assert_eq!(body(&d), "expires");
    assert_eq!(
        d.properties.message_id().as_ref().map(|s| s.as_str()),
        Some("e1")
    );
    let death = x_death(&d);
    assert_eq!(str_of(death.get("reason")), "expired");
    assert_eq!(str_of(death.get("queue")), q);
    assert_eq!(int_of(death.get("count")), 1);
    // Per-message expiration also dead-letters, and x-death keeps the original expiration.
    let q2 = uniq("dl-msg-ttl");
    declare_queue(
        &ch,
        &q2,
        QueueDeclareOptions::default(),
        args(&[("x-dead-letter-exchange", lstr(&dlx))]),
    )
    .await;
    publish_props(
        &ch,
        "",
        &q2,
        b"msg-ttl",
        BasicProperties::default().with_expiration("50".into()),
    )
    .await;
    let d = next(&mut c).await;
    assert_eq!(body(&d), "msg-ttl");
    let death = x_death(&d);
    assert_eq!(str_of(death.get("reason")), "expired");
    assert_eq!(str_of(death.get("original-expiration")), "50");
    assert!(
        d.properties.expiration().is_none(),
        "expiration is removed when dead-lettered"
    );
    // An x-death the publisher set that is not an array is replaced, and without a real
    // first death the x-first-death headers are left as they were.
    for junk in [lstr("junk"), AMQPValue::LongInt(3)] {
        let q3 = uniq("dl-junk");
        let a = args(&[
            ("x-dead-letter-exchange", lstr(&dlx)),
            ("x-message-ttl", AMQPValue::LongInt(0)),
        ]);
        declare_queue(&ch, &q3, QueueDeclareOptions::default(), a).await;
        let headers = args(&[("x-death", junk), ("x-first-death-queue", lstr("zz"))]);
        let props = BasicProperties::default().with_headers(headers);
        publish_props(&ch, "", &q3, b"junk-death", props).await;
        let d = next(&mut c).await;
        assert_eq!(body(&d), "junk-death");
        let death = x_death(&d);
        assert_eq!(
            (str_of(death.get("queue")), int_of(death.get("count"))),
            (q3.clone(), 1)
        );
        assert_eq!(str_of(header(&d.properties, "x-first-death-queue")), "zz");
        assert!(header(&d.properties, "x-first-death-reason").is_none());
    }
    // A cycle of expiries is cut even after an earlier rejection: rejected in r, the
    // message expires in x, y and z in turn and is dropped on its way back to x.
    let [r, x, y, z] = ["r", "x", "y", "z"].map(|n| uniq(&format!("dl-cycle-{n}")));
    for (queue, ttl, next) in [
        (&r, None, &x),
        (&x, Some(100), &y),
        (&y, Some(100), &z),
        (&z, Some(100), &x),
    ] {
        let mut a = vec![
            ("x-dead-letter-exchange", lstr("")),
            ("x-dead-letter-routing-key", lstr(next)),
        ];
        a.extend(ttl.map(|ms| ("x-message-ttl", AMQPValue::LongInt(ms))));
        declare_queue(&ch, queue, QueueDeclareOptions::default(), args(&a)).await;
    }
    publish(&ch, "", &r, b"round").await;
    let m = get_eventually(&ch, &r).await;
    step(
        "basic.reject",
        ch.basic_reject(
            m.delivery.delivery_tag,
            BasicRejectOptions { requeue: false },
        ),
    )
    .await
    .expect("basic.reject");
    // Seen on its way round, then nowhere for ten rounds of looking (a loop would show
    // it: it waits 100 ms in each queue).
    let deadline = Instant::now() + STEP;
    let mut empty_rounds = 0;
    let mut seen = false;
    while empty_rounds < 10 {
        assert!(
            Instant::now() < deadline,
            "the message is still going round"
        );
        let mut held = 0;
        for queue in [&x, &y, &z] {
            held += ready_count(&conn, queue).await;
        }
        seen |= held > 0;
        empty_rounds = if held == 0 && seen {
            empty_rounds + 1
        } else {
            0
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    close(conn).await;
}

async fn per_message_expiration(url: String) {
    let conn = connect(&url).await;
    let mut events = Box::pin(conn.events_listener());
    let ch = channel(&conn).await;
    let q = uniq("msg-ttl");
    plain_queue(&ch, &q).await;
    publish_props(
        &ch,
        "",
        &q,
        b"short",
        BasicProperties::default().with_expiration("100".into()),
    )
    .await;
    e2e::wait_for_async("the message to expire", Duration::from_secs(5), || {
        let conn = &conn;
        let q = &q;
        async move { (ready_count(conn, q).await == 0).then_some(()) }
    })
    .await;
    publish_props(
        &ch,
        "",
        &q,
        b"long",
        BasicProperties::default().with_expiration("60000".into()),
    )
    .await;
    let m = step(
        "get",
        ch.basic_get(q.as_str().into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("get")
    .expect("unexpired message");
    assert_eq!(body(&m.delivery), "long");
    // The expiration property is delivered as sent.
    assert_eq!(
        m.delivery
            .properties
            .expiration()
            .as_ref()
            .map(|s| s.as_str()),
        Some("60000")
    );
    // An invalid expiration closes the channel: 406 PRECONDITION_FAILED.
    publish_props(
        &ch,
        "",
        &q,
        b"bad",
        BasicProperties::default().with_expiration("soon".into()),
    )
    .await;
    channel_closed_with(&ch, &mut events, 406, "PRECONDITION_FAILED").await;
    close(conn).await;
}

/// The length limits apply to messages that wait: one that goes straight to a consumer
/// with room is delivered even past a limit of 0, while reject-publish refuses it before
/// any consumer is tried. Messages given back are counted again, and a drop-head queue
/// then drops from its head: the oldest, which are the ones given back.
async fn length_limits_meet_consumers_and_requeues(url: String) {
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    let (dlx, dlq) = dead_letter_target(&ch).await;
    for (limit, value) in [("x-max-length", 0), ("x-max-length-bytes", 1)] {
        let q = uniq("limit-direct");
        let a = args(&[
            (limit, AMQPValue::LongInt(value)),
            ("x-dead-letter-exchange", lstr(&dlx)),
        ]);
        declare_queue(&ch, &q, QueueDeclareOptions::default(), a).await;
        let cch = channel(&conn).await;
        let mut c = consume(&cch, &q, true).await;
        publish(&ch, "", &q, b"straight").await;
        assert_eq!(body(&next(&mut c).await), "straight", "{limit} {value}");
        step("channel.close", cch.close(200, "ok".into()))
            .await
            .expect("close the consumer's channel");
        // Without a consumer it is dropped at once, as too long.
        publish(&ch, "", &q, b"dropped").await;
        let got = step(
            "basic.get",
            ch.basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true }),
        )
        .await
        .expect("basic.get")
        .expect("the dropped message, dead-lettered");
        assert_eq!(body(&got.delivery), "dropped");
        assert_eq!(str_of(x_death(&got.delivery).get("reason")), "maxlen");
        assert_eq!(ready_count(&conn, &q).await, 0);
    }
    let q = uniq("limit-reject-direct");
    let a = args(&[
        ("x-max-length", AMQPValue::LongInt(0)),
        ("x-overflow", lstr("reject-publish")),
    ]);
    declare_queue(&ch, &q, QueueDeclareOptions::default(), a).await;
    let cch = channel(&conn).await;
    let mut c = consume(&cch, &q, true).await;
    assert!(!publish_acked(&ch, &q, b"refused").await, "nacked");
    nothing_more(&mut c).await;
    // Given back past the limit: the head goes, here the two given back.
    let q = uniq("limit-requeue");
    let a = args(&[
        ("x-max-length", AMQPValue::LongInt(2)),
        ("x-dead-letter-exchange", lstr(&dlx)),
    ]);
    declare_queue(&ch, &q, QueueDeclareOptions::default(), a).await;
    for b in ["1", "2"] {
        publish(&ch, "", &q, b.as_bytes()).await;
    }
    let cch = channel(&conn).await;
    step("basic.qos", cch.basic_qos(2, BasicQosOptions::default()))
        .await
        .expect("basic.qos");
    let mut c = consume(&cch, &q, false).await;
    let (first, second) = (next(&mut c).await, next(&mut c).await);
    assert_eq!((body(&first), body(&second)), ("1".into(), "2".into()));
    for b in ["3", "4"] {
        publish(&ch, "", &q, b.as_bytes()).await;
    }
    nothing_more(&mut c).await;
    step(
        "basic.nack",
        second.acker.nack(BasicNackOptions {
            multiple: true,
            requeue: true,
        }),
    )
    .await
    .expect("nack");
    let (third, fourth) = (next(&mut c).await, next(&mut c).await);
    assert_eq!(
        (body(&third), third.redelivered, body(&fourth)),
        ("3".into(), false, "4".into())
    );
    let mut dead = Vec::new();
    for _ in 0..2 {
        let got = step(
            "basic.get",
            ch.basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true }),
        )
        .await
        .expect("basic.get")
        .expect("a message given back and dropped");
        dead.push((
            body(&got.delivery),
            str_of(x_death(&got.delivery).get("reason")),
        ));
    }
    assert_eq!(
        dead,
        [("1".into(), "maxlen".into()), ("2".into(), "maxlen".into())]
    );
    close(conn).await;
}

/// A message that expires behind an unexpired head waits, counted, until it reaches the
/// head; then it goes (dead-lettered) before anything else is handed out, so neither a
/// consumer nor basic.get sees it, and basic.get-ok's count leaves it out.
async fn expired_messages_go_when_they_reach_the_head(url: String) {
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    let (dlx, dlq) = dead_letter_target(&ch).await;
    let queues = [uniq("ttl-behind-get"), uniq("ttl-behind-consume")];
    for q in &queues {
        let a = args(&[("x-dead-letter-exchange", lstr(&dlx))]);
        declare_queue(&ch, q, QueueDeclareOptions::default(), a).await;
        publish(&ch, "", q, b"head").await;
        let short = BasicProperties::default().with_expiration("1".into());
        publish_props(&ch, "", q, b"expired", short).await;
        publish(&ch, "", q, b"tail").await;
    }
    // No event marks the expiry of a message behind the head: only time passing does.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(ready_count(&conn, &queues[0]).await, 3, "still counted");
    let mut got = Vec::new();
    for _ in 0..2 {
        let m = step(
            "basic.get",
            ch.basic_get(queues[0].as_str().into(), BasicGetOptions { no_ack: true }),
        )
        .await
        .expect("basic.get")
        .expect("a message");
        got.push((body(&m.delivery), m.message_count));
    }
    assert_eq!(got, [("head".into(), 1), ("tail".into(), 0)]);
    let cch = channel(&conn).await;
    let mut c = consume(&cch, &queues[1], true).await;
    assert_eq!(
        (body(&next(&mut c).await), body(&next(&mut c).await)),
        ("head".into(), "tail".into())
    );
    nothing_more(&mut c).await;
    let dead = drain(&ch, &dlq).await;
    assert_eq!(dead, ["expired", "expired"]);
    close(conn).await;
}

/// RabbitMQ's channel-wide prefetch (basic.qos global) counts the unacked deliveries of
/// the channel's consumers; while it is reached, the channel's no-ack consumers wait
/// too, though their deliveries do not count. basic.get's unacked messages do not count.
async fn channel_prefetch_holds_no_ack_consumers(url: String) {
    let conn = connect(&url).await;
    let pch = confirmed(&conn).await;
    let queues: Vec<String> = (0..3).map(|i| uniq(&format!("chq{i}"))).collect();
    for (q, n) in queues.iter().zip([1, 3, 1]) {
        plain_queue(&pch, q).await;
        for i in 0..n {
            publish(&pch, "", q, format!("{i}").as_bytes()).await;
        }
    }
    let ch = channel(&conn).await;
    step(
        "basic.qos",
        ch.basic_qos(1, BasicQosOptions { global: true }),
    )
    .await
    .expect("basic.qos");
    let mut acking = consume(&ch, &queues[0], false).await;
    let held = next(&mut acking).await;
    let mut no_ack = consume(&ch, &queues[1], true).await;
    nothing_more(&mut no_ack).await;
    assert_eq!(ready_count(&conn, &queues[1]).await, 3);
    step("basic.ack", held.acker.ack(BasicAckOptions::default()))
        .await
        .expect("ack");
    for _ in 0..3 {
        next(&mut no_ack).await;
    }
    nothing_more(&mut no_ack).await;
    let got = step(
        "basic.get",
        ch.basic_get(queues[2].as_str().into(), BasicGetOptions { no_ack: false }),
    )
    .await
    .expect("basic.get")
    .expect("a message");
    assert_eq!(body(&got.delivery), "0");
    publish(&pch, "", &queues[0], b"after-get").await;
    assert_eq!(body(&next(&mut acking).await), "after-get");
    close(conn).await;
}

async fn transactions(url: String) {
    let conn = connect(&url).await;
    let ch = channel(&conn).await;
    let q = uniq("tx");
    plain_queue(&ch, &q).await;
    step("tx.select", ch.tx_select()).await.expect("tx.select");
    publish(&ch, "", &q, b"rolled-back").await;
    assert_eq!(
        ready_count(&conn, &q).await,
        0,
        "uncommitted publish is invisible"
    );
    step("tx.rollback", ch.tx_rollback())
        .await
        .expect("tx.rollback");
    assert_eq!(ready_count(&conn, &q).await, 0);
    publish(&ch, "", &q, b"committed-1").await;
    publish(&ch, "", &q, b"committed-2").await;
    step("tx.commit", ch.tx_commit()).await.expect("tx.commit");
    assert_eq!(ready_count(&conn, &q).await, 2);
    // Acks are transactional too.
    let m = step(
        "get",
        ch.basic_get(q.as_str().into(), BasicGetOptions { no_ack: false }),
    )
    .await
    .expect("get")
    .expect("msg");
    assert_eq!(body(&m.delivery), "committed-1");
    step(
        "ack",
        ch.basic_ack(m.delivery.delivery_tag, BasicAckOptions::default()),
    )
    .await
    .expect("ack");
    step("tx.commit", ch.tx_commit()).await.expect("tx.commit");
    step("channel.close", ch.close(200, "ok".into()))
        .await
        .expect("close");
    let ch = channel(&conn).await;
    assert_eq!(drain(&ch, &q).await, vec!["committed-2"]);
    // tx.commit without tx.select: 406 PRECONDITION_FAILED.
    let r = step("commit without select", ch.tx_commit()).await;
    let e = expect_code("tx.commit on a non-transactional channel", r, 406);
    expect_text(&e, "PRECONDITION_FAILED");
    close(conn).await;
}

// ---------------------------------------------------------------------------------------
// robustness and queue limits

/// The 8 protocol-header bytes again after the handshake: read as a frame of type 'A'
/// whose size ("P\0\0\x09") is far above frame_max, so the connection closes with 501.
async fn second_protocol_header_after_handshake(url: String) {
    let mut raw = Raw::connect(&url).await;
    raw.handshake(None).await;
    raw.send_bytes(b"AMQP\x00\x00\x09\x01").await;
    raw.expect_connection_close(501).await;
    let conn = connect(&url).await;
    close(conn).await;
}

/// Whether `queue` exists: passive declare on a fresh channel (404 closes only that one).
async fn queue_exists(conn: &Connection, queue: &str) -> bool {
    let ch = channel(conn).await;
    let r = step(
        "queue.declare passive",
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions::default().passive(),
            FieldTable::default(),
        ),
    )
    .await;
    match r {
        Ok(_) => {
            let _ = step("channel.close", ch.close(200, "ok".into())).await;
            true
        }
        Err(e) => {
            assert_eq!(reply_code(&e), Some(404), "passive declare {queue}: {e:?}");
            false
        }
    }
}

/// Polls until `queue` is gone, bounded by `limit`. A passive declare counts as a use of
/// the queue (it restarts `x-expires` in RabbitMQ), so the polls are spaced by `every`,
/// longer than the queue's expiry.
async fn wait_queue_gone(
    conn: &Connection,
    queue: &str,
    every: Duration,
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    for _ in 0..1000 {
        tokio::time::sleep(every).await;
        if !queue_exists(conn, queue).await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{queue} still exists after {limit:?}"
        );
    }
    panic!("{queue} still exists after 1000 polls");
}

async fn queue_expires_when_unused(url: String) {
    let conn = connect(&url).await;
    let ch = channel(&conn).await;
    let expires = |ms: i32| args(&[("x-expires", AMQPValue::LongInt(ms))]);
    let every = Duration::from_millis(800);
    let limit = Duration::from_secs(10);
    // An unused queue goes after x-expires (and not before: it is there right away).
    let q = uniq("expires");
    declare_queue(&ch, &q, QueueDeclareOptions::default(), expires(300)).await;
    assert!(queue_exists(&conn, &q).await, "{q} right after declare");
    wait_queue_gone(&conn, &q, every, limit).await;
    // A queue with a consumer is in use and stays; once the consumer is cancelled it goes.
    let q2 = uniq("expires-used");
    declare_queue(&ch, &q2, QueueDeclareOptions::default(), expires(300)).await;
    let c = consume(&ch, &q2, true).await;
    // Watched without touching the queue for four times its expiry.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        queue_exists(&conn, &q2).await,
        "{q2} expired with a consumer"
    );
    step(
        "basic.cancel",
        ch.basic_cancel(c.tag(), BasicCancelOptions::default()),
    )
    .await
    .expect("basic.cancel");
    wait_queue_gone(&conn, &q2, every, limit).await;
    // Redeclaring an expired queue makes a new, empty one.
    declare_queue(&ch, &q, QueueDeclareOptions::default(), expires(60_000)).await;
    assert_eq!(ready_count(&conn, &q).await, 0);
    step(
        "queue.delete",
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()),
    )
    .await
    .expect("queue.delete");
    close(conn).await;
}

async fn max_length_bytes(url: String) {
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    let q = uniq("maxbytes");
    declare_queue(
        &ch,
        &q,
        QueueDeclareOptions::default(),
        args(&[("x-max-length-bytes", AMQPValue::LongInt(10))]),
    )
    .await;
    // 5 + 3 bytes fit; 4 more make 12 > 10, so the head (5 bytes) is dropped.
    for b in ["12345", "678", "9012"] {
        publish(&ch, "", &q, b.as_bytes()).await;
    }
    assert_eq!(ready_count(&conn, &q).await, 2);
    assert_eq!(drain(&ch, &q).await, vec!["678", "9012"]);
    // A message larger than the limit does not stay either.
    publish(&ch, "", &q, b"abcdefghijklmnop").await;
    assert_eq!(drain(&ch, &q).await, Vec::<String>::new());
    // Only bodies count: headers do not.
    let props = BasicProperties::default().with_headers(args(&[("pad", lstr(&"x".repeat(100)))]));
    publish_props(&ch, "", &q, b"0123456789", props).await;
    assert_eq!(drain(&ch, &q).await, vec!["0123456789"]);
    // With reject-publish, a publish that would exceed the limit is nacked instead.
    let q2 = uniq("maxbytes-reject");
    declare_queue(
        &ch,
        &q2,
        QueueDeclareOptions::default(),
        args(&[
            ("x-max-length-bytes", AMQPValue::LongInt(10)),
            ("x-overflow", lstr("reject-publish")),
        ]),
    )
    .await;
    let mut acked = Vec::new();
    for b in ["12345", "678", "9012", "ab"] {
        let p = step(
            "publish",
            ch.basic_publish(
                "".into(),
                q2.as_str().into(),
                BasicPublishOptions::default(),
                b.as_bytes(),
                BasicProperties::default(),
            ),
        )
        .await
        .expect("publish");
        acked.push(step("confirm", p).await.expect("confirm").is_ack());
    }
    assert_eq!(acked, vec![true, true, false, true]);
    assert_eq!(drain(&ch, &q2).await, vec!["12345", "678", "ab"]);
    close(conn).await;
}

async fn reject_publish_dlx_overflow(url: String) {
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    let (dlx, dlq) = dead_letter_target(&ch).await;
    let q = uniq("overflow-dlx");
    declare_queue(
        &ch,
        &q,
        QueueDeclareOptions::default(),
        args(&[
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", lstr("reject-publish-dlx")),
            ("x-dead-letter-exchange", lstr(&dlx)),
        ]),
    )
    .await;
    let mut acked = Vec::new();
    for b in ["kept", "overflowed"] {
        let p = step(
            "publish",
            ch.basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                b.as_bytes(),
                BasicProperties::default(),
            ),
        )
        .await
        .expect("publish");
        acked.push(step("confirm", p).await.expect("confirm").is_ack());
    }
    assert_eq!(
        acked,
        vec![true, false],
        "the overflowing publish is nacked"
    );
    // ... and dead-lettered, with reason maxlen.
    let cch = channel(&conn).await;
    let mut c = consume(&cch, &dlq, true).await;
    let d = next(&mut c).await;
    assert_eq!(body(&d), "overflowed");
    assert_eq!(d.exchange.as_str(), dlx);
    assert_eq!(d.routing_key.as_str(), q);
    let death = x_death(&d);
    assert_eq!(str_of(death.get("reason")), "maxlen");
    assert_eq!(str_of(death.get("queue")), q);
    nothing_more(&mut c).await;
    assert_eq!(drain(&ch, &q).await, vec!["kept"]);
    close(conn).await;
}

async fn basic_recover_requeues(url: String) {
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    let q = uniq("recover");
    plain_queue(&ch, &q).await;
    for b in ["a", "b"] {
        publish(&ch, "", &q, b.as_bytes()).await;
    }
    let mut c = consume(&ch, &q, false).await;
    let first: Vec<(String, bool)> = [next(&mut c).await, next(&mut c).await]
        .iter()
        .map(|d| (body(d), d.redelivered))
        .collect();
    assert_eq!(first, vec![("a".into(), false), ("b".into(), false)]);
    nothing_more(&mut c).await;
    // basic.recover requeue=true: both come again, flagged redelivered.
    step(
        "basic.recover",
        ch.basic_recover(BasicRecoverOptions { requeue: true }),
    )
    .await
    .expect("basic.recover");
    let mut again = Vec::new();
    for _ in 0..2 {
        let d = next(&mut c).await;
        again.push((body(&d), d.redelivered));
        step("ack", d.acker.ack(BasicAckOptions::default()))
            .await
            .expect("ack");
    }
    again.sort();
    assert_eq!(again, vec![("a".into(), true), ("b".into(), true)]);
    nothing_more(&mut c).await;
    // Acked after the recovery: nothing is left.
    step(
        "basic.cancel",
        ch.basic_cancel(c.tag(), BasicCancelOptions::default()),
    )
    .await
    .expect("basic.cancel");
    assert_eq!(ready_count(&conn, &q).await, 0);
    close(conn).await;
}

/// Counts what `consumers` receive (manual ack, never acked) until all are quiet.
async fn unacked_deliveries(consumers: &mut [Consumer]) -> Vec<usize> {
    let mut counts = vec![0; consumers.len()];
    for (c, n) in consumers.iter_mut().zip(counts.iter_mut()) {
        for _ in 0..100 {
            match timeout(QUIET, c.next()).await {
                Ok(Some(d)) => {
                    d.expect("delivery");
                    *n += 1;
                }
                _ => break,
            }
        }
    }
    counts
}

/// basic.qos global=false limits each consumer created after it; global=true limits the
/// channel as a whole (RabbitMQ's reinterpretation of the spec); both can apply at once,
/// when the channel-wide limit comes second: a per-consumer limit lifts it.
async fn qos_global_vs_per_consumer(url: String) {
    let conn = connect(&url).await;
    let pch = confirmed(&conn).await;
    let queues: Vec<String> = (0..6).map(|i| uniq(&format!("qos{i}"))).collect();
    for q in &queues {
        plain_queue(&pch, q).await;
        for i in 0..5 {
            publish(&pch, "", q, format!("{i}").as_bytes()).await;
        }
    }
    let qos = |ch: &Channel, n: u16, global: bool| {
        let ch = ch.clone();
        async move {
            step("basic.qos", ch.basic_qos(n, BasicQosOptions { global }))
                .await
                .expect("basic.qos");
        }
    };
    // Per consumer: 2 each, 4 in all.
    let ch = channel(&conn).await;
    qos(&ch, 2, false).await;
    let mut cs = vec![
        consume(&ch, &queues[0], false).await,
        consume(&ch, &queues[1], false).await,
    ];
    assert_eq!(unacked_deliveries(&mut cs).await, vec![2, 2]);
    // Per channel: 3 across both consumers.
    let ch2 = channel(&conn).await;
    qos(&ch2, 3, true).await;
    let mut cs2 = vec![
        consume(&ch2, &queues[2], false).await,
        consume(&ch2, &queues[3], false).await,
    ];
    let counts = unacked_deliveries(&mut cs2).await;
    assert_eq!(counts.iter().sum::<usize>(), 3, "{counts:?}");
    assert_eq!(
        ready_count(&conn, &queues[2]).await + ready_count(&conn, &queues[3]).await,
        7
    );
    step("channel.close", ch2.close(200, "ok".into()))
        .await
        .expect("close");
    // Both: the channel allows 3, each new consumer 1.
    let ch3 = channel(&conn).await;
    qos(&ch3, 3, true).await;
    qos(&ch3, 1, false).await;
    let mut cs3 = vec![
        consume(&ch3, &queues[2], false).await,
        consume(&ch3, &queues[3], false).await,
    ];
    assert_eq!(unacked_deliveries(&mut cs3).await, vec![1, 1]);
    // The other way round, the per-consumer limit lifts the channel's: 2 each, 4 in all.
    let ch4 = channel(&conn).await;
    qos(&ch4, 3, true).await;
    qos(&ch4, 2, false).await;
    let mut cs4 = vec![
        consume(&ch4, &queues[4], false).await,
        consume(&ch4, &queues[5], false).await,
    ];
    assert_eq!(unacked_deliveries(&mut cs4).await, vec![2, 2]);
    close(conn).await;
}

// ---------------------------------------------------------------------------------------
// another language's client

async fn pika_client(url: String) {
    let out = python_script(url, "pika", "test_pika.py", Duration::from_secs(30)).await;
    if let Some(out) = out {
        assert!(out.0, "pika script failed:\n{}", out.1);
    }
}

/// The same through an asyncio client with a codec of its own (aio-pika over aiormq and
/// pamqp): confirms, returns, a prefetch-bounded consumer, dead letters, a transaction, a
/// refused redeclaration and the RPC pattern.
async fn aio_pika_client(url: String) {
    let out = python_script(url, "aio_pika", "test_aio_pika.py", Duration::from_secs(30)).await;
    if let Some(out) = out {
        assert!(out.0, "aio-pika script failed:\n{}", out.1);
    }
}

/// Runs `tests/amqp_py/SCRIPT URL PREFIX` with python3, once `module` imports; None when
/// either is missing outside CI (in CI that fails the test).
async fn python_script(
    url: String,
    module: &'static str,
    script: &'static str,
    limit: Duration,
) -> Option<(bool, String)> {
    python_script_with(vec![url], module, script, limit).await
}

/// [`python_script`] with `args` in place of the URL.
async fn python_script_with(
    args: Vec<String>,
    module: &'static str,
    script: &'static str,
    limit: Duration,
) -> Option<(bool, String)> {
    let script = format!("{}/amqp_py/{script}", env!("CARGO_MANIFEST_DIR"));
    let Some(python) = which("python3") else {
        assert!(!engines_required(), "python3 is required in CI");
        eprintln!("python3 not installed: {module} scenario skipped");
        return None;
    };
    let importable = Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !importable {
        assert!(
            !engines_required(),
            "python3 {module} is required in CI (python3 -m pip install {module})"
        );
        eprintln!("python3 {module} not installed: {module} scenario skipped");
        return None;
    }
    let prefix = uniq(module);
    let out = tokio::task::spawn_blocking(move || {
        let mut argv = vec![script.as_str()];
        argv.extend(args.iter().map(String::as_str));
        argv.push(&prefix);
        run_with_timeout(&python, &argv, limit)
    })
    .await
    .expect("run the python script");
    Some(out)
}

async fn amqplib_client(url: String) {
    let amqplib = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/amqp_js/node_modules/amqplib/package.json"
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/amqp_js/test_amqplib.js");
    let Some(node) = which("node") else {
        assert!(!engines_required(), "node is required in CI");
        eprintln!("node not installed: amqplib scenario skipped");
        return;
    };
    if !std::path::Path::new(amqplib).is_file() {
        assert!(
            !engines_required(),
            "amqplib is required in CI (npm ci --prefix tests/amqp_js)"
        );
        eprintln!("tests/amqp_js/node_modules/amqplib missing: amqplib scenario skipped");
        return;
    }
    let prefix = uniq("amqplib");
    let out = tokio::task::spawn_blocking(move || {
        run_with_timeout(&node, &[script, &url, &prefix], Duration::from_secs(30))
    })
    .await
    .expect("run the amqplib script");
    assert!(out.0, "amqplib script failed:\n{}", out.1);
}

/// A Celery 5 worker and client (kombu over py-amqp), as most Python shops use RabbitMQ:
/// the script starts the worker itself and drives it through tasks, retries, routing to
/// priority and quorum queues, and remote control.
async fn celery_client(url: String) {
    // Under the scenario's own bound, so a hung run still shows the worker's log.
    let out = python_script(url, "celery", "test_celery.py", Duration::from_secs(35)).await;
    if let Some(out) = out {
        assert!(out.0, "celery script failed:\n{}", out.1);
        eprintln!("{}", out.1.trim_end());
    }
}

/// RabbitMQ's Java client (what Spring AMQP builds on), from Debian's
/// librabbitmq-client-java: `tests/amqp_java/Conformance.java` runs its checks, then the
/// test closes its connection through the management API and the client's automatic
/// recovery must bring its queue, binding and consumer back.
async fn java_client(url: String, api_base: String, _metrics: String) {
    use reqwest::Method;
    let Some(classes) = tokio::task::spawn_blocking(|| JAVA_CLASSES.clone())
        .await
        .expect("compile")
    else {
        return;
    };
    let (java, classpath) = classes;
    let prefix = uniq("java");
    let mut child = tokio::process::Command::new(java)
        .args(["-cp", &classpath, "Conformance", &url, &prefix])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start java");
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut stderr = child.stderr.take().expect("stderr");
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let ready = timeout(Duration::from_secs(25), async {
        while let Ok(Some(line)) = stdout.next_line().await {
            if let Some(name) = line.strip_prefix("READY ") {
                return Some(name.to_string());
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    let Some(given) = ready else {
        let _ = child.kill().await;
        panic!(
            "the Java client did not get ready:\n{}",
            errors.await.unwrap_or_default()
        );
    };
    let path = connection_path(&api_base, &given).await;
    assert_eq!(api(&api_base, Method::DELETE, &path, None).await.0, 204);
    let status = timeout(Duration::from_secs(25), child.wait())
        .await
        .map(|s| s.expect("wait for java"));
    let mut rest = String::new();
    while let Ok(Some(line)) = stdout.next_line().await {
        rest.push_str(&line);
        rest.push('\n');
    }
    let errors = errors.await.unwrap_or_default();
    assert!(
        status.as_ref().is_ok_and(std::process::ExitStatus::success) && rest.contains("all ok"),
        "the Java client failed ({status:?}):\n{rest}{errors}"
    );
}

/// The Java runtime and the classpath of `tests/amqp_java`, compiled once per test process
/// into the target directory; None when a JDK or the client library is missing outside CI
/// (in CI that fails the test).
static JAVA_CLASSES: LazyLock<Option<(std::path::PathBuf, String)>> = LazyLock::new(|| {
    const JARS: [&str; 2] = [
        "/usr/share/java/amqp-client.jar",
        "/usr/share/java/slf4j-api.jar",
    ];
    let (Some(javac), Some(java)) = (which("javac"), which("java")) else {
        assert!(!engines_required(), "a JDK (javac) is required in CI");
        eprintln!("no JDK: Java client scenario skipped");
        return None;
    };
    if !JARS.iter().all(|jar| std::path::Path::new(jar).is_file()) {
        assert!(
            !engines_required(),
            "librabbitmq-client-java is required in CI (apt-get install librabbitmq-client-java)"
        );
        eprintln!("librabbitmq-client-java not installed: Java client scenario skipped");
        return None;
    }
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("amqp-java");
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/amqp_java/Conformance.java");
    let (ok, log) = run_with_timeout(
        &javac,
        &[
            "-cp",
            &JARS.join(":"),
            "-d",
            out.to_str().expect("a UTF-8 temp dir"),
            source,
        ],
        Duration::from_secs(60),
    );
    assert!(ok, "javac failed:\n{log}");
    let classpath = format!("{}:{}", JARS.join(":"), out.display());
    Some((java, classpath))
});

/// Runs a program, killing it after `limit`; returns (success, stdout+stderr).
fn run_with_timeout(program: &std::path::Path, args: &[&str], limit: Duration) -> (bool, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s);
            s
        })
    };
    let (out, err) = (read(Box::new(stdout)), read(Box::new(stderr)));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = format!(
        "{}{}",
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default()
    );
    match status {
        Some(status) => (status.success(), text),
        None => (false, format!("killed after {limit:?}\n{text}")),
    }
}

async fn priority_queue(url: String) {
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    let q = uniq("priority");
    declare_queue(
        &ch,
        &q,
        QueueDeclareOptions::default(),
        args(&[("x-max-priority", AMQPValue::ShortShortUInt(5))]),
    )
    .await;
    // No priority counts as 0, one above the queue's maximum as the maximum.
    for (b, priority) in [
        ("none", None),
        ("3a", Some(3)),
        ("9 as 5", Some(9)),
        ("1", Some(1)),
        ("3b", Some(3)),
        ("5", Some(5)),
    ] {
        let props = match priority {
            Some(p) => BasicProperties::default().with_priority(p),
            None => BasicProperties::default(),
        };
        publish_props(&ch, "", &q, b.as_bytes(), props).await;
    }
    let order = ["9 as 5", "5", "3a", "3b", "1", "none"];
    // Highest priority first, oldest first within a priority; requeued messages go back
    // to their place.
    let mut last = 0;
    for want in &order[..3] {
        let m = step(
            "basic.get",
            ch.basic_get(q.as_str().into(), BasicGetOptions { no_ack: false }),
        )
        .await
        .expect("basic.get")
        .expect("a message");
        assert_eq!(body(&m.delivery), *want);
        last = m.delivery.delivery_tag;
    }
    step(
        "basic.nack multiple requeue",
        ch.basic_nack(
            last,
            BasicNackOptions {
                requeue: true,
                multiple: true,
            },
        ),
    )
    .await
    .expect("nack");
    // On the same channel as the nack, so the requeue is seen.
    assert_eq!(drain(&ch, &q).await, order);

    // A full priority queue drops from its head, the next message out: here the newer,
    // higher-priority one.
    let full = uniq("priority-full");
    declare_queue(
        &ch,
        &full,
        QueueDeclareOptions::default(),
        args(&[
            ("x-max-priority", AMQPValue::ShortShortUInt(5)),
            ("x-max-length", AMQPValue::LongInt(2)),
        ]),
    )
    .await;
    for (b, p) in [("a1", 1), ("b5", 5), ("c1", 1)] {
        let props = BasicProperties::default().with_priority(p);
        publish_props(&ch, "", &full, b.as_bytes(), props).await;
    }
    assert_eq!(drain(&ch, &full).await, ["a1", "c1"]);

    // Out of range or of another type: 406, and the channel closes.
    for (value, what) in [
        (AMQPValue::LongInt(256), "above 255"),
        (AMQPValue::LongInt(-1), "negative"),
        (lstr("ten"), "a string"),
    ] {
        let e = declare_refused(&conn, args(&[("x-max-priority", value)])).await;
        let e = expect_code(&format!("x-max-priority {what}"), e, 406);
        expect_text(&e, "PRECONDITION_FAILED - invalid arg 'x-max-priority'");
    }
    close(conn).await;
}

/// queue.declare of a fresh queue with `arguments`, on a channel of its own since a
/// refusal closes it.
async fn declare_refused(
    conn: &Connection,
    arguments: FieldTable,
) -> Result<lapin::Queue, lapin::Error> {
    let ch = channel(conn).await;
    step(
        "queue.declare",
        ch.queue_declare(
            uniq("refused").as_str().into(),
            QueueDeclareOptions::default(),
            arguments,
        ),
    )
    .await
}

async fn consume_with(ch: &Channel, queue: &str, arguments: FieldTable) -> Consumer {
    step(
        "basic.consume",
        ch.basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            arguments,
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("basic.consume {queue}: {e}"))
}

async fn single_active_consumer(url: String) {
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    let q = uniq("single-active");
    declare_queue(
        &ch,
        &q,
        QueueDeclareOptions::default(),
        args(&[("x-single-active-consumer", AMQPValue::Boolean(true))]),
    )
    .await;
    let (ch1, ch2) = (channel(&conn).await, channel(&conn).await);
    let mut first = consume(&ch1, &q, true).await;
    let mut second = consume(&ch2, &q, true).await;
    for b in ["1", "2", "3"] {
        publish(&ch, "", &q, b.as_bytes()).await;
    }
    for want in ["1", "2", "3"] {
        assert_eq!(
            body(&next(&mut first).await),
            want,
            "the oldest consumer only"
        );
    }
    nothing_more(&mut second).await;
    step(
        "basic.cancel",
        ch1.basic_cancel(first.tag(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel");
    for b in ["4", "5"] {
        publish(&ch, "", &q, b.as_bytes()).await;
    }
    for want in ["4", "5"] {
        assert_eq!(
            body(&next(&mut second).await),
            want,
            "the next one takes over"
        );
    }

    // An exclusive consume is refused on a single-active-consumer queue, even an idle one.
    let idle = uniq("single-active-idle");
    declare_queue(
        &ch,
        &idle,
        QueueDeclareOptions::default(),
        args(&[("x-single-active-consumer", AMQPValue::Boolean(true))]),
    )
    .await;
    let excl = channel(&conn).await;
    let r = exclusive_consume(&excl, &idle).await;
    let e = expect_code(
        "exclusive consume on a single-active-consumer queue",
        r.map(|_| ()),
        403,
    );
    expect_text(
        &e,
        &format!("ACCESS_REFUSED - queue '{idle}' in vhost '/' in exclusive use"),
    );

    let e = declare_refused(&conn, args(&[("x-single-active-consumer", lstr("yes"))])).await;
    let e = expect_code("x-single-active-consumer not a boolean", e, 406);
    expect_text(
        &e,
        "PRECONDITION_FAILED - invalid arg 'x-single-active-consumer'",
    );
    close(conn).await;
}

async fn consumer_priorities(url: String) {
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    let q = uniq("consumer-priority");
    plain_queue(&ch, &q).await;
    let (low_ch, high_ch) = (channel(&conn).await, channel(&conn).await);
    step(
        "basic.qos",
        high_ch.basic_qos(2, BasicQosOptions::default()),
    )
    .await
    .expect("qos");
    // The low-priority consumer subscribes first, so plain round-robin would serve it
    // first.
    let mut low = consume_with(&low_ch, &q, args(&[("x-priority", AMQPValue::LongInt(1))])).await;
    let mut high = consume_with(
        &high_ch,
        &q,
        args(&[("x-priority", AMQPValue::LongInt(10))]),
    )
    .await;
    for b in ["1", "2", "3", "4", "5"] {
        publish(&ch, "", &q, b.as_bytes()).await;
    }
    // The high one takes what its prefetch allows (it never acks); the rest go lower.
    for want in ["1", "2"] {
        assert_eq!(body(&next(&mut high).await), want);
    }
    for want in ["3", "4", "5"] {
        assert_eq!(body(&next(&mut low).await), want);
    }
    nothing_more(&mut high).await;

    let bad = channel(&conn).await;
    let r = step(
        "basic.consume",
        bad.basic_consume(
            q.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            args(&[("x-priority", lstr("high"))]),
        ),
    )
    .await;
    let e = expect_code("x-priority not a number", r, 406);
    expect_text(
        &e,
        "PRECONDITION_FAILED - invalid arg 'x-priority' for queue",
    );
    close(conn).await;
}

// ---------------------------------------------------------------------------------------
// direct reply-to

const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Declares `name` on a fresh channel of `conn`; the broker's answer as it is.
async fn declare_on_fresh_channel(
    conn: &Connection,
    name: &str,
    passive: bool,
) -> Result<lapin::Queue, lapin::Error> {
    let ch = channel(conn).await;
    let opts = QueueDeclareOptions {
        passive,
        ..Default::default()
    };
    step(
        &format!("queue.declare {name}"),
        ch.queue_declare(name.into(), opts, FieldTable::default()),
    )
    .await
}

/// basic.consume from the pseudo-queue; the broker's answer as it is.
async fn consume_replies(ch: &Channel, no_ack: bool) -> Result<Consumer, lapin::Error> {
    let opts = BasicConsumeOptions {
        no_ack,
        ..Default::default()
    };
    step(
        "basic.consume amq.rabbitmq.reply-to",
        ch.basic_consume(REPLY_TO.into(), "".into(), opts, FieldTable::default()),
    )
    .await
}

/// Opens a channel consuming replies, sends a request from it to `requests` and returns
/// the reply address the server sees, with the channel and its consumer tag.
async fn reply_address(
    client: &Connection,
    requests: &str,
    serving: &mut Consumer,
) -> (String, (Channel, String)) {
    let ch = confirmed(client).await;
    let consumer = consume_replies(&ch, true).await.expect("reply consumer");
    let props = BasicProperties::default().with_reply_to(REPLY_TO.into());
    publish_props(&ch, "", requests, b"request", props).await;
    let address = next(serving)
        .await
        .properties
        .reply_to()
        .as_ref()
        .map(|s| s.to_string())
        .expect("reply-to");
    let tag = consumer.tag().to_string();
    (address, (ch, tag))
}

/// RabbitMQ's direct reply-to: an RPC client consumes the pseudo-queue
/// `amq.rabbitmq.reply-to` (no-ack), publishes requests with that reply-to, which the
/// broker rewrites to an address naming the client's channel, and the reply, published to
/// the default exchange with that address as routing key, reaches the client with no
/// queue in between.
async fn direct_reply_to(url: String) {
    let client = connect(&url).await;
    let server = connect(&url).await;
    let requests = uniq("rpc-requests");
    let sch = confirmed(&server).await;
    plain_queue(&sch, &requests).await;
    let mut serving = consume(&sch, &requests, true).await;

    // The pseudo-queue always answers a declare, passive or not: this is how clients probe
    // for the feature.
    for passive in [true, false] {
        let probe = declare_on_fresh_channel(&client, REPLY_TO, passive)
            .await
            .unwrap_or_else(|e| panic!("declare {REPLY_TO} (passive {passive}): {e}"));
        assert_eq!(probe.name().as_str(), REPLY_TO);
        assert_eq!((probe.message_count(), probe.consumer_count()), (0, 1));
    }

    let cch = confirmed(&client).await;
    let mut replies = consume_replies(&cch, true).await.expect("reply consumer");
    let request_props = BasicProperties::default()
        .with_reply_to(REPLY_TO.into())
        .with_correlation_id("c1".into());
    publish_props(&cch, "", &requests, b"ping", request_props).await;
    let request = next(&mut serving).await;
    assert_eq!(body(&request), "ping");
    let address = request
        .properties
        .reply_to()
        .as_ref()
        .map(|s| s.to_string())
        .expect("the request keeps a reply-to");
    let suffix = address
        .strip_prefix("amq.rabbitmq.reply-to.")
        .unwrap_or_else(|| panic!("reply-to rewritten to an address, got {address:?}"));
    assert!(!suffix.is_empty(), "{address:?}");

    // While its consumer lives, the address answers a declare like the pseudo-queue.
    let probe = declare_on_fresh_channel(&server, &address, true)
        .await
        .unwrap_or_else(|e| panic!("passive declare of {address}: {e}"));
    assert_eq!((probe.message_count(), probe.consumer_count()), (0, 1));

    // The reply comes from another connection, through the default exchange.
    let reply_props = BasicProperties::default()
        .with_correlation_id("c1".into())
        .with_content_type("text/plain".into());
    publish_props(&sch, "", &address, b"pong", reply_props).await;
    let reply = next(&mut replies).await;
    assert_eq!(body(&reply), "pong");
    assert_eq!(reply.exchange.as_str(), "");
    assert_eq!(reply.routing_key.as_str(), address);
    assert!(!reply.redelivered);
    assert_eq!(reply.delivery_tag, 1);
    assert_eq!(
        reply
            .properties
            .correlation_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("c1")
    );
    assert_eq!(
        reply.properties.content_type().as_ref().map(|s| s.as_str()),
        Some("text/plain")
    );

    // A mandatory reply is delivered; no queue took it, so it also comes back to its
    // publisher as unroutable, as RabbitMQ routes replies beside its queues.
    let confirm = step(
        "mandatory reply",
        sch.basic_publish(
            "".into(),
            address.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"pong2",
            BasicProperties::default(),
        ),
    )
    .await
    .expect("publish");
    let confirmation = step("confirm", confirm).await.expect("confirm");
    assert!(confirmation.is_ack(), "{confirmation:?}");
    let returned = confirmation.take_message().map(|r| r.reply_code);
    let reply = next(&mut replies).await;
    // RabbitMQ 3.x does not take a tag for a reply: the channel's next one, every time.
    assert_eq!((body(&reply), reply.delivery_tag), ("pong2".into(), 1));
    assert_eq!(returned, Some(312));

    // The routing key `amq.rabbitmq.reply-to` itself names no queue.
    let confirm = step(
        "publish to the pseudo-queue name",
        sch.basic_publish(
            "".into(),
            REPLY_TO.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"nowhere",
            BasicProperties::default(),
        ),
    )
    .await
    .expect("publish");
    let confirmation = step("confirm", confirm).await.expect("confirm");
    assert_eq!(confirmation.take_message().map(|r| r.reply_code), Some(312));
    nothing_more(&mut replies).await;

    // One reply consumer per channel, and it cannot ack.
    let e = expect_code(
        "a second reply consumer",
        consume_replies(&cch, true).await.map(|_| ()),
        406,
    );
    expect_text(&e, "PRECONDITION_FAILED - reply consumer already set");
    let ch = channel(&client).await;
    let e = expect_code(
        "a reply consumer that acks",
        consume_replies(&ch, false).await.map(|_| ()),
        406,
    );
    expect_text(
        &e,
        "PRECONDITION_FAILED - reply consumer cannot acknowledge",
    );

    // A request asking for a direct reply from a channel without a reply consumer.
    let mut events = Box::pin(client.events_listener());
    let ch = channel(&client).await;
    let props = BasicProperties::default().with_reply_to(REPLY_TO.into());
    step(
        "publish without a reply consumer",
        ch.basic_publish(
            "".into(),
            requests.as_str().into(),
            BasicPublishOptions::default(),
            b"orphan",
            props,
        ),
    )
    .await
    .expect("send publish");
    channel_closed_with(
        &ch,
        &mut events,
        406,
        "PRECONDITION_FAILED - fast reply consumer does not exist",
    )
    .await;
    nothing_more(&mut serving).await;

    // The channel that failed is closed, and its address with it.
    let e = expect_code(
        "declare of a closed channel's address",
        declare_on_fresh_channel(&server, &address, true).await,
        404,
    );
    expect_text(&e, "NOT_FOUND - no queue 'amq.rabbitmq.reply-to.");

    // Each channel has its own address, gone when its consumer is cancelled.
    let (cancelled, replies2) = reply_address(&client, &requests, &mut serving).await;
    assert_ne!(cancelled, address, "each channel has its own address");
    let (cch2, tag) = replies2;
    step(
        "cancel the reply consumer",
        cch2.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()),
    )
    .await
    .expect("basic.cancel");
    let e = expect_code(
        "declare of a cancelled consumer's address",
        declare_on_fresh_channel(&server, &cancelled, true).await,
        404,
    );
    expect_text(&e, "NOT_FOUND - no queue 'amq.rabbitmq.reply-to.");

    // Once the client is gone its addresses name nothing: a declare says 404 and a reply
    // is dropped.
    let (gone, _replies3) = reply_address(&client, &requests, &mut serving).await;
    close(client).await;
    let e = expect_code(
        "declare of a gone address",
        declare_on_fresh_channel(&server, &gone, true).await,
        404,
    );
    expect_text(&e, "NOT_FOUND - no queue 'amq.rabbitmq.reply-to.");
    publish(&sch, "", &gone, b"late").await;
    let e = expect_code(
        "declare of a made-up address",
        declare_on_fresh_channel(&server, "amq.rabbitmq.reply-to.nobody", true).await,
        404,
    );
    expect_text(&e, "NOT_FOUND");
    close(server).await;
}

// ---------------------------------------------------------------------------------------
// quorum queues

fn quorum(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut a = args(extra);
    a.insert("x-queue-type".into(), lstr("quorum"));
    a
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// Declares on a fresh channel of `conn`; the broker's answer as it is.
async fn try_declare(
    conn: &Connection,
    name: &str,
    opts: QueueDeclareOptions,
    a: FieldTable,
) -> Result<lapin::Queue, lapin::Error> {
    let ch = channel(conn).await;
    step(
        &format!("queue.declare {name}"),
        ch.queue_declare(name.into(), opts, a),
    )
    .await
}

/// basic.get (manual ack) until a message comes: a quorum queue applies a nack a moment
/// after the broker read it, so the message given back may not be there at once.
async fn get_eventually(ch: &Channel, queue: &str) -> lapin::message::BasicGetMessage {
    let deadline = Instant::now() + STEP;
    loop {
        let got = step(
            "basic.get",
            ch.basic_get(queue.into(), BasicGetOptions { no_ack: false }),
        )
        .await
        .unwrap_or_else(|e| panic!("basic.get {queue}: {e}"));
        if let Some(m) = got {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "nothing in {queue} after {STEP:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn delivery_count(props: &BasicProperties) -> Option<i64> {
    header(props, "x-delivery-count").map(|v| int_of(Some(v)))
}

/// `x-queue-type: quorum` as RabbitMQ 3.10 has it: the declaration rules of the type,
/// the `x-delivery-count` header, `x-delivery-limit` dead-lettering with reason
/// `delivery_limit`, and the operations it refuses.
/// A quorum queue's reject-publish takes messages until the queue is over its limit, so
/// one more than the limit gets in, and then refuses them until the queue is back at 80%
/// of it (RabbitMQ's `rabbit_fifo`); drop-head keeps the newest, as a classic queue does,
/// and so does reject-publish-dlx, which quorum queues do not have.
async fn quorum_length_limits(url: String) {
    let conn = connect(&url).await;
    let ch = channel(&conn).await;
    step(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    let limited = |overflow: &str| {
        quorum(&[
            ("x-max-length", AMQPValue::LongInt(5)),
            ("x-overflow", lstr(overflow)),
        ])
    };
    let q = uniq("qq-reject");
    declare_queue(&ch, &q, durable(), limited("reject-publish")).await;
    let mut acks = Vec::new();
    for b in ["1", "2", "3", "4", "5", "6", "7"] {
        acks.push(publish_acked(&ch, &q, b.as_bytes()).await);
    }
    assert_eq!(acks, [true, true, true, true, true, true, false]);
    assert_eq!(ready_count(&conn, &q).await, 6);
    let get = || async {
        step(
            "basic.get",
            ch.basic_get(q.as_str().into(), BasicGetOptions { no_ack: true }),
        )
        .await
        .expect("basic.get")
        .map(|m| body(&m.delivery))
    };
    // Down to 5 (the limit) and 4 (80% of it): refused, then taken again.
    assert_eq!(get().await.as_deref(), Some("1"));
    assert!(
        !publish_acked(&ch, &q, b"8").await,
        "5 ready: still refusing"
    );
    assert_eq!(get().await.as_deref(), Some("2"));
    assert!(publish_acked(&ch, &q, b"9").await, "4 ready: taking again");
    assert_eq!(drain(&ch, &q).await, ["3", "4", "5", "6", "9"]);
    // reject-publish-dlx is not a quorum queue's: it drops the head instead.
    for overflow in ["drop-head", "reject-publish-dlx"] {
        let q = uniq("qq-drop");
        declare_queue(&ch, &q, durable(), limited(overflow)).await;
        for b in ["1", "2", "3", "4", "5", "6", "7"] {
            assert!(publish_acked(&ch, &q, b.as_bytes()).await, "{overflow}");
        }
        assert_eq!(
            drain(&ch, &q).await,
            ["3", "4", "5", "6", "7"],
            "{overflow}"
        );
    }
    close(conn).await;
}

/// Where a message given back goes: a classic queue puts it back where it was; a quorum
/// queue (RabbitMQ 3.10's `rabbit_fifo`) puts one nacked to its tail, or with an
/// `x-delivery-limit` to its head, in the order they came back; those let go with
/// their channel go to the head.
async fn requeue_order_by_queue_type(url: String) {
    let conn = connect(&url).await;
    let pch = confirmed(&conn).await;
    let cases = [
        ("classic", false, false, ["1", "2", "4", "5"]),
        ("quorum", false, false, ["5", "4", "1", "2"]),
        ("quorum", true, false, ["4", "1", "2", "5"]),
        ("quorum", false, true, ["1", "3", "4", "5"]),
        ("quorum", true, true, ["1", "3", "4", "5"]),
    ];
    for (kind, limit, close_channel, expected) in cases {
        let case = format!("{kind}, delivery limit {limit}, channel closed {close_channel}");
        let q = uniq("requeue-order");
        let mut a = vec![("x-queue-type", lstr(kind))];
        if limit {
            a.push(("x-delivery-limit", AMQPValue::LongInt(10)));
        }
        declare_queue(&pch, &q, durable(), args(&a)).await;
        for b in ["1", "2", "3", "4", "5"] {
            publish(&pch, "", &q, b.as_bytes()).await;
        }
        let ch = channel(&conn).await;
        let mut tags = Vec::new();
        for _ in 0..4 {
            let m = step(
                "basic.get",
                ch.basic_get(q.as_str().into(), BasicGetOptions { no_ack: false }),
            )
            .await
            .expect("basic.get")
            .expect("a message");
            tags.push(m.delivery.delivery_tag);
        }
        if close_channel {
            step(
                "basic.ack",
                ch.basic_ack(tags[1], BasicAckOptions::default()),
            )
            .await
            .expect("ack");
            step("channel.close", ch.close(200, "ok".into()))
                .await
                .expect("close");
        } else {
            // "4" alone, then "1" and "2" at once; "3" stays unacked.
            for (tag, multiple) in [(tags[3], false), (tags[1], true)] {
                let options = BasicNackOptions {
                    multiple,
                    requeue: true,
                };
                step("basic.nack", ch.basic_nack(tag, options))
                    .await
                    .expect("nack");
            }
        }
        // RabbitMQ applies returns to a quorum queue after the nack's round trip.
        e2e::wait_for_async("the messages back", Duration::from_secs(5), || {
            let conn = &conn;
            let q = &q;
            async move { (ready_count(conn, q).await == 4).then_some(()) }
        })
        .await;
        assert_eq!(drain(&pch, &q).await, expected, "{case}");
    }
    close(conn).await;
}

/// A quorum queue counts consumers as RabbitMQ's `rabbit_fifo` holds them: a basic.get
/// whose message is not settled is one, a cancelled consumer stays one until its
/// deliveries are settled, and a single-active-consumer queue counts only the active
/// one (where basic.get is refused). `exclusive` means nothing to a quorum queue.
async fn quorum_consumers_as_rabbitmq_counts_them(url: String) {
    let conn = connect(&url).await;
    let pch = confirmed(&conn).await;
    let consumers = |q: String| {
        let conn = &conn;
        async move {
            let ch = channel(conn).await;
            let options = QueueDeclareOptions {
                passive: true,
                ..durable()
            };
            let declared = step(
                "queue.declare passive",
                ch.queue_declare(q.as_str().into(), options, FieldTable::default()),
            )
            .await
            .expect("passive declare");
            let _ = step("channel.close", ch.close(200, "ok".into())).await;
            declared.consumer_count()
        }
    };
    let settles_to = |q: String, want: u32| {
        let consumers = &consumers;
        async move {
            e2e::wait_for_async("the consumer count", Duration::from_secs(5), || {
                let q = q.clone();
                async move { (consumers(q).await == want).then_some(()) }
            })
            .await;
        }
    };
    let q = uniq("qq-count");
    declare_queue(&pch, &q, durable(), quorum(&[])).await;
    for b in ["1", "2"] {
        publish(&pch, "", &q, b.as_bytes()).await;
    }
    let ch = channel(&conn).await;
    let got = step(
        "basic.get",
        ch.basic_get(q.as_str().into(), BasicGetOptions { no_ack: false }),
    )
    .await
    .expect("basic.get")
    .expect("a message");
    assert_eq!(consumers(q.clone()).await, 1, "an unsettled basic.get");
    step("basic.ack", got.delivery.ack(BasicAckOptions::default()))
        .await
        .expect("ack");
    settles_to(q.clone(), 0).await;
    let mut c = consume(&ch, &q, false).await;
    let d = next(&mut c).await;
    step(
        "basic.cancel",
        ch.basic_cancel(c.tag(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel");
    assert_eq!(consumers(q.clone()).await, 1, "cancelled, not settled");
    step("basic.ack", d.acker.ack(BasicAckOptions::default()))
        .await
        .expect("ack");
    settles_to(q.clone(), 0).await;
    // Exclusive consumers share a quorum queue like any other.
    // (A lapin consumer dropped is cancelled: each is held while it should count.)
    let exclusive = exclusive_consume(&ch, &q).await.expect("exclusive consume");
    let other = channel(&conn).await;
    let shared = consume(&other, &q, false).await;
    assert_eq!(consumers(q.clone()).await, 2);
    drop((exclusive, shared));
    // Single active consumer: the waiting one is not counted, and basic.get is refused.
    let sac = uniq("qq-sac-count");
    let a = quorum(&[("x-single-active-consumer", AMQPValue::Boolean(true))]);
    declare_queue(&pch, &sac, durable(), a).await;
    let (first, second) = (channel(&conn).await, channel(&conn).await);
    let active = consume(&first, &sac, false).await;
    let waiting = consume(&second, &sac, false).await;
    settles_to(sac.clone(), 1).await;
    let gch = channel(&conn).await;
    let r = step(
        "basic.get",
        gch.basic_get(sac.as_str().into(), BasicGetOptions { no_ack: true }),
    )
    .await;
    let e = expect_code("basic.get on a single-active-consumer quorum queue", r, 405);
    expect_text(
        &e,
        &format!(
            "RESOURCE_LOCKED - cannot obtain access to locked queue '{sac}' in vhost '/'. basic.get operations are not supported by quorum queues with single active consumer"
        ),
    );
    drop((active, waiting));
    close(conn).await;
}

/// More of RabbitMQ 3.10's quorum queue (`rabbit_fifo`): cancelling the single active
/// consumer hands its queue to the next one at once; messages one publish pushes out are
/// dead-lettered newest first; a channel-wide qos after basic.consume does not limit the
/// consumer.
async fn quorum_queue_particulars(url: String) {
    let conn = connect(&url).await;
    let pch = confirmed(&conn).await;
    // Single active consumer: the next one takes over at the cancel.
    let q = uniq("qq-sac-cancel");
    let sac = quorum(&[("x-single-active-consumer", AMQPValue::Boolean(true))]);
    declare_queue(&pch, &q, durable(), sac).await;
    let (a1, a2) = (channel(&conn).await, channel(&conn).await);
    step("basic.qos", a1.basic_qos(1, BasicQosOptions::default()))
        .await
        .expect("qos");
    let mut c0 = consume(&a1, &q, false).await;
    let mut c1 = consume(&a2, &q, false).await;
    for b in ["m0", "m1"] {
        publish(&pch, "", &q, b.as_bytes()).await;
    }
    let held = next(&mut c0).await;
    assert_eq!(body(&held), "m0");
    step(
        "basic.cancel",
        a1.basic_cancel(c0.tag(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel");
    assert_eq!(body(&next(&mut c1).await), "m1", "before m0 is acked");
    step("basic.ack", held.acker.ack(BasicAckOptions::default()))
        .await
        .expect("ack");
    // One publish past x-max-length-bytes drops two: dead-lettered newest first.
    let (dlx, dlq) = dead_letter_target(&pch).await;
    let q = uniq("qq-drop-order");
    let a = quorum(&[
        ("x-max-length-bytes", AMQPValue::LongInt(10)),
        ("x-dead-letter-exchange", lstr(&dlx)),
    ]);
    declare_queue(&pch, &q, durable(), a).await;
    for b in ["aaaa", "bbbb", "cccccccccc"] {
        publish(&pch, "", &q, b.as_bytes()).await;
    }
    e2e::wait_for_async("the dead letters", Duration::from_secs(5), || {
        let conn = &conn;
        let dlq = &dlq;
        async move { (ready_count(conn, dlq).await == 2).then_some(()) }
    })
    .await;
    assert_eq!(drain(&pch, &dlq).await, ["bbbb", "aaaa"]);
    // basic.qos global after basic.consume: the consumer keeps the credit it had.
    let q = uniq("qq-global-qos");
    declare_queue(&pch, &q, durable(), quorum(&[])).await;
    let ch = channel(&conn).await;
    let mut c = consume(&ch, &q, false).await;
    step(
        "basic.qos global",
        ch.basic_qos(1, BasicQosOptions { global: true }),
    )
    .await
    .expect("qos");
    for b in ["1", "2", "3"] {
        publish(&pch, "", &q, b.as_bytes()).await;
    }
    for b in ["1", "2", "3"] {
        assert_eq!(body(&next(&mut c).await), b);
    }
    // Placement and in-memory arguments have their values checked.
    for (arg, value, reason) in [
        (
            "x-quorum-initial-group-size",
            AMQPValue::LongInt(0),
            "{value_zero,0}",
        ),
        (
            "x-quorum-initial-group-size",
            AMQPValue::LongInt(-1),
            "{value_negative,-1}",
        ),
        (
            "x-quorum-initial-group-size",
            lstr("3"),
            "\"expected integer, got longstr\"",
        ),
        (
            "x-queue-leader-locator",
            lstr("bogus"),
            "invalid_queue_locator_arg",
        ),
        (
            "x-queue-leader-locator",
            AMQPValue::LongInt(1),
            "{unacceptable_type,signedint}",
        ),
        (
            "x-max-in-memory-length",
            AMQPValue::LongInt(-1),
            "{value_negative,-1}",
        ),
        (
            "x-max-in-memory-bytes",
            AMQPValue::LongInt(-1),
            "{value_negative,-1}",
        ),
    ] {
        let q = uniq("qq-bad-arg");
        let e = expect_code(
            arg,
            try_declare(&conn, &q, durable(), quorum(&[(arg, value)])).await,
            406,
        );
        expect_text(
            &e,
            &format!(
                "PRECONDITION_FAILED - invalid arg '{arg}' for queue '{q}' in vhost '/': {reason}"
            ),
        );
    }
    let q = uniq("qq-placed");
    let placed = quorum(&[
        ("x-quorum-initial-group-size", AMQPValue::LongInt(3)),
        ("x-queue-leader-locator", lstr("balanced")),
        ("x-max-in-memory-length", AMQPValue::LongInt(0)),
    ]);
    try_declare(&conn, &q, durable(), placed)
        .await
        .expect("a quorum queue with placement arguments");
    close(conn).await;
}

async fn quorum_queues(url: String) {
    let conn = connect(&url).await;
    let q = uniq("qq");

    // Declaration: durable only, named only, and the arguments of its type.
    let refused = [
        (
            "non-durable",
            QueueDeclareOptions::default(),
            "invalid property 'non-durable'",
        ),
        (
            "exclusive",
            QueueDeclareOptions {
                exclusive: true,
                ..durable()
            },
            "invalid property 'exclusive-owner'",
        ),
        (
            "auto-delete",
            QueueDeclareOptions {
                auto_delete: true,
                ..durable()
            },
            "invalid property 'auto-delete'",
        ),
    ];
    for (what, opts, text) in refused {
        let e = expect_code(what, try_declare(&conn, &q, opts, quorum(&[])).await, 406);
        expect_text(&e, &format!("PRECONDITION_FAILED - {text} for queue '{q}'"));
    }
    let e = expect_code(
        "server-named",
        try_declare(&conn, "", durable(), quorum(&[])).await,
        406,
    );
    expect_text(
        &e,
        "PRECONDITION_FAILED - Cannot declare a server-named queue for type rabbit_quorum_queue",
    );
    let e = expect_code(
        "x-max-priority on a quorum queue",
        try_declare(
            &conn,
            &q,
            durable(),
            quorum(&[("x-max-priority", AMQPValue::ShortShortUInt(5))]),
        )
        .await,
        406,
    );
    expect_text(
        &e,
        &format!(
            "PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue '{q}' in vhost '/' of queue type rabbit_quorum_queue"
        ),
    );
    let e = expect_code(
        "x-delivery-limit on a classic queue",
        try_declare(
            &conn,
            &q,
            durable(),
            args(&[("x-delivery-limit", AMQPValue::LongInt(3))]),
        )
        .await,
        406,
    );
    expect_text(
        &e,
        &format!(
            "PRECONDITION_FAILED - invalid arg 'x-delivery-limit' for queue '{q}' in vhost '/' of queue type rabbit_classic_queue"
        ),
    );
    let e = expect_code(
        "an unknown queue type",
        try_declare(
            &conn,
            &q,
            durable(),
            args(&[("x-queue-type", lstr("fast"))]),
        )
        .await,
        406,
    );
    expect_text(
        &e,
        &format!(
            "PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue '{q}' in vhost '/': \"unsupported queue type 'fast'\""
        ),
    );
    let e = expect_code(
        "a dead-letter strategy that is none",
        try_declare(
            &conn,
            &q,
            durable(),
            quorum(&[("x-dead-letter-strategy", lstr("twice"))]),
        )
        .await,
        406,
    );
    expect_text(
        &e,
        "PRECONDITION_FAILED - invalid arg 'x-dead-letter-strategy'",
    );

    let dlq = uniq("qq-dead");
    let ch = confirmed(&conn).await;
    declare_queue(&ch, &dlq, durable(), FieldTable::default()).await;
    let limited = quorum(&[
        ("x-delivery-limit", AMQPValue::LongInt(1)),
        ("x-dead-letter-exchange", lstr("")),
        ("x-dead-letter-routing-key", lstr(&dlq)),
    ]);
    declare_queue(&ch, &q, durable(), limited.clone()).await;
    let e = expect_code(
        "redeclared as classic",
        try_declare(&conn, &q, durable(), FieldTable::default()).await,
        406,
    );
    expect_text(
        &e,
        "PRECONDITION_FAILED - inequivalent arg 'x-dead-letter-exchange'",
    );

    // basic.get always carries the delivery count; each give-back adds one; past the
    // limit the message is dead-lettered with reason delivery_limit.
    publish_props(
        &ch,
        "",
        &q,
        b"poison",
        BasicProperties::default().with_delivery_mode(1),
    )
    .await;
    for want in 0..=1 {
        let m = get_eventually(&ch, &q).await;
        assert_eq!(m.delivery.data, b"poison");
        assert_eq!(m.delivery.redelivered, want > 0);
        assert_eq!(delivery_count(&m.delivery.properties), Some(want));
        step(
            "nack",
            ch.basic_nack(
                m.delivery.delivery_tag,
                BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                },
            ),
        )
        .await
        .expect("nack");
    }
    let dead = get_eventually(&ch, &dlq).await;
    assert_eq!(dead.delivery.data, b"poison");
    let death = x_death(&dead.delivery);
    assert_eq!(str_of(death.get("reason")), "delivery_limit");
    assert_eq!(str_of(death.get("queue")), q);
    assert!(
        drain(&ch, &q).await.is_empty(),
        "the poison message left {q}"
    );

    // A consumer sees the header only on a message given back.
    let q2 = uniq("qq-consume");
    declare_queue(&ch, &q2, durable(), quorum(&[])).await;
    publish(&ch, "", &q2, b"once").await;
    let cch = channel(&conn).await;
    let mut consumer = consume(&cch, &q2, false).await;
    let first = next(&mut consumer).await;
    assert_eq!(delivery_count(&first.properties), None);
    step(
        "reject",
        cch.basic_reject(first.delivery_tag, BasicRejectOptions { requeue: true }),
    )
    .await
    .expect("reject");
    let again = next(&mut consumer).await;
    assert!(again.redelivered);
    assert_eq!(delivery_count(&again.properties), Some(1));
    step(
        "ack",
        cch.basic_ack(again.delivery_tag, BasicAckOptions::default()),
    )
    .await
    .expect("ack");

    // Operations a quorum queue does not support close the connection with 540.
    let other = connect(&url).await;
    let och = channel(&other).await;
    step(
        "global qos",
        och.basic_qos(5, BasicQosOptions { global: true }),
    )
    .await
    .expect("basic.qos");
    let e = expect_code(
        "consume with global qos",
        step(
            "basic.consume",
            och.basic_consume(
                q2.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .map(|_| ()),
        540,
    );
    expect_text(
        &e,
        &format!("NOT_IMPLEMENTED - queue '{q2}' in vhost '/' does not support global qos"),
    );
    for (flag, opts) in [
        (
            "if-empty",
            QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
        ),
        (
            "if-unused",
            QueueDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        ),
    ] {
        let other = connect(&url).await;
        let och = channel(&other).await;
        let e = expect_code(
            flag,
            step("queue.delete", och.queue_delete(q2.as_str().into(), opts)).await,
            540,
        );
        expect_text(
            &e,
            &format!(
                "NOT_IMPLEMENTED - cannot delete queue '{q2}' in vhost '/'. queue.delete operations with {flag} flag set are not supported by quorum queues"
            ),
        );
    }
    for name in [&q, &q2, &dlq] {
        step(
            "queue.delete",
            ch.queue_delete(name.as_str().into(), QueueDeleteOptions::default()),
        )
        .await
        .expect("queue.delete");
    }
    close(conn).await;
}

// ---------------------------------------------------------------------------------------
// RabbitMQ's routing extensions and its refusals

/// `alternate-exchange`: what an exchange's bindings take nowhere goes to its alternate
/// exchange (a mandatory publish is then routed, not returned); a missing alternate is
/// skipped; the argument is a string and takes part in redeclaration equivalence.
async fn alternate_exchange(url: String) {
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    let (x, ae, caught, bound) = (
        uniq("ae-x"),
        uniq("ae"),
        uniq("ae-caught"),
        uniq("ae-bound"),
    );
    declare_exchange(&ch, &ae, ExchangeKind::Fanout).await;
    plain_queue(&ch, &caught).await;
    bind(&ch, &caught, &ae, "", FieldTable::default()).await;
    let with_ae = args(&[("alternate-exchange", lstr(&ae))]);
    let opts = ExchangeDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    step(
        "exchange.declare with an alternate",
        ch.exchange_declare(
            x.as_str().into(),
            ExchangeKind::Direct,
            opts,
            with_ae.clone(),
        ),
    )
    .await
    .expect("exchange.declare");
    plain_queue(&ch, &bound).await;
    bind(&ch, &bound, &x, "k", FieldTable::default()).await;
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    for (key, body) in [("k", "routed"), ("other", "alternate")] {
        let confirm = step(
            "publish",
            ch.basic_publish(
                x.as_str().into(),
                key.into(),
                mandatory,
                body.as_bytes(),
                BasicProperties::default(),
            ),
        )
        .await
        .expect("publish");
        let confirmation = step("confirm", confirm).await.expect("confirm");
        assert!(confirmation.take_message().is_none(), "{body}: returned");
    }
    assert_eq!(drain(&ch, &bound).await, ["routed"]);
    let m = get_eventually(&ch, &caught).await;
    assert_eq!(m.delivery.data, b"alternate");
    assert_eq!(m.delivery.exchange.as_str(), x, "the exchange published to");
    assert_eq!(m.delivery.routing_key.as_str(), "other");

    // A missing alternate exchange: unroutable after all.
    let x2 = uniq("ae-x2");
    let missing = args(&[("alternate-exchange", lstr(&uniq("ae-none")))]);
    step(
        "exchange.declare",
        ch.exchange_declare(x2.as_str().into(), ExchangeKind::Direct, opts, missing),
    )
    .await
    .expect("exchange.declare");
    let confirm = step(
        "publish",
        ch.basic_publish(
            x2.as_str().into(),
            "k".into(),
            mandatory,
            b"lost",
            BasicProperties::default(),
        ),
    )
    .await
    .expect("publish");
    let confirmation = step("confirm", confirm).await.expect("confirm");
    assert_eq!(confirmation.take_message().map(|r| r.reply_code), Some(312));

    let declare = |name: String, a: FieldTable| {
        let conn = &conn;
        async move {
            let ch = channel(conn).await;
            step(
                "exchange.declare",
                ch.exchange_declare(name.as_str().into(), ExchangeKind::Direct, opts, a),
            )
            .await
        }
    };
    let e = expect_code(
        "alternate-exchange not a string",
        declare(
            uniq("ae-int"),
            args(&[("alternate-exchange", AMQPValue::LongInt(5))]),
        )
        .await,
        406,
    );
    expect_text(
        &e,
        "PRECONDITION_FAILED - invalid type 'signedint' for arg 'alternate-exchange' in exchange '",
    );
    let e = expect_code(
        "redeclared with another alternate",
        declare(
            x.clone(),
            args(&[("alternate-exchange", lstr("elsewhere"))]),
        )
        .await,
        406,
    );
    expect_text(
        &e,
        &format!(
            "PRECONDITION_FAILED - inequivalent arg 'alternate-exchange' for exchange '{x}' in vhost '/': received 'elsewhere' but current is '{ae}'"
        ),
    );
    // The same name as bytes (type `x`, as pika sends a Python bytes) is the same value.
    let as_bytes = AMQPValue::ByteArray(ae.as_bytes().to_vec().into());
    declare(x.clone(), args(&[("alternate-exchange", as_bytes)]))
        .await
        .expect("redeclared with the alternate's name as bytes");
    for q in [&caught, &bound] {
        step(
            "queue.delete",
            ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()),
        )
        .await
        .expect("queue.delete");
    }
    close(conn).await;
}

/// Sender-selected distribution: the `CC` and `BCC` header arrays add routing keys; the
/// delivered message keeps its own key and `CC`, never `BCC`.
async fn sender_selected_distribution(url: String) {
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    let x = uniq("cc-x");
    declare_exchange(&ch, &x, ExchangeKind::Direct).await;
    let queues: Vec<String> = (0..3).map(|i| uniq(&format!("cc{i}"))).collect();
    for (i, q) in queues.iter().enumerate() {
        plain_queue(&ch, q).await;
        bind(&ch, q, &x, &format!("k{i}"), FieldTable::default()).await;
    }
    let array = |keys: &[&str]| {
        AMQPValue::FieldArray(keys.iter().map(|k| lstr(k)).collect::<Vec<_>>().into())
    };
    let headers = args(&[
        ("CC", array(&["k1"])),
        ("BCC", array(&["k2"])),
        ("n", AMQPValue::LongInt(7)),
    ]);
    publish_props(
        &ch,
        &x,
        "k0",
        b"m",
        BasicProperties::default().with_headers(headers),
    )
    .await;
    for q in &queues {
        let m = get_eventually(&ch, q).await;
        assert_eq!(m.delivery.routing_key.as_str(), "k0", "{q}");
        let h = &m.delivery.properties;
        assert!(header(h, "CC").is_some(), "{q}: CC kept");
        assert!(header(h, "BCC").is_none(), "{q}: BCC removed");
        assert_eq!(int_of(header(h, "n")), 7);
    }
    // Through the default exchange the extra keys name queues.
    let cc = args(&[("CC", array(&[&queues[1]]))]);
    publish_props(
        &ch,
        "",
        &queues[0],
        b"d",
        BasicProperties::default().with_headers(cc),
    )
    .await;
    assert_eq!(drain(&ch, &queues[0]).await, ["d"]);
    assert_eq!(drain(&ch, &queues[1]).await, ["d"]);

    // Dead-lettered with its own keys, a message routes by its CC and BCC keys again.
    let src = uniq("cc-src");
    declare_queue(
        &ch,
        &src,
        QueueDeclareOptions::default(),
        args(&[("x-dead-letter-exchange", lstr(&x))]),
    )
    .await;
    let both = args(&[("CC", array(&["k1"])), ("BCC", array(&["k2"]))]);
    publish_props(
        &ch,
        "",
        &src,
        b"dead",
        BasicProperties::default().with_headers(both),
    )
    .await;
    let m = get_eventually(&ch, &src).await;
    step(
        "basic.reject",
        ch.basic_reject(
            m.delivery.delivery_tag,
            BasicRejectOptions { requeue: false },
        ),
    )
    .await
    .expect("basic.reject");
    for q in &queues[1..] {
        let m = get_eventually(&ch, q).await;
        assert_eq!(m.delivery.data, b"dead", "{q}");
        assert!(header(&m.delivery.properties, "BCC").is_none(), "{q}: BCC");
    }
    assert!(
        drain(&ch, &queues[0]).await.is_empty(),
        "k0 was no key of it"
    );
    step(
        "queue.delete",
        ch.queue_delete(src.as_str().into(), QueueDeleteOptions::default()),
    )
    .await
    .expect("queue.delete");

    let mut events = Box::pin(conn.events_listener());
    let bad = channel(&conn).await;
    let not_array = BasicProperties::default().with_headers(args(&[("CC", lstr("k1"))]));
    step(
        "publish with a CC that is no array",
        bad.basic_publish(
            x.as_str().into(),
            "k0".into(),
            BasicPublishOptions::default(),
            b"x",
            not_array,
        ),
    )
    .await
    .expect("send publish");
    channel_closed_with(
        &bad,
        &mut events,
        406,
        "PRECONDITION_FAILED - invalid message: {unacceptable_type_in_header,\"CC\",longstr}",
    )
    .await;
    for q in &queues {
        step(
            "queue.delete",
            ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()),
        )
        .await
        .expect("queue.delete");
    }
    close(conn).await;
}

/// Assorted answers clients depend on: user-id checking, numeric headers matching,
/// `x-match` checking, idempotent unbinding, exclusivity on redeclaration, the trace
/// exchange, the default and system exchanges, and integer argument texts.
async fn rabbitmq_particulars(url: String) {
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;

    // TTLs and expiries up to ten years, past 32 bits (Celery's delayed delivery declares
    // such queues); one millisecond more is refused.
    for key in ["x-message-ttl", "x-expires"] {
        let ten_years = AMQPValue::LongLongInt(315_360_000_000);
        declare_refused(&conn, args(&[(key, ten_years)]))
            .await
            .unwrap_or_else(|e| panic!("{key} of ten years refused: {e}"));
        let e = declare_refused(
            &conn,
            args(&[(key, AMQPValue::LongLongInt(315_360_000_001))]),
        )
        .await;
        let e = expect_code(&format!("{key} past ten years"), e, 406);
        expect_text(&e, &format!("PRECONDITION_FAILED - invalid arg '{key}'"));
        let text = e.to_string();
        assert!(text.ends_with(": {value_too_large,315360000001}"), "{text}");
    }

    // user-id must be the authenticated user's.
    let q = uniq("uid");
    plain_queue(&ch, &q).await;
    publish_props(
        &ch,
        "",
        &q,
        b"mine",
        BasicProperties::default().with_user_id("guest".into()),
    )
    .await;
    assert_eq!(drain(&ch, &q).await, ["mine"]);
    let mut events = Box::pin(conn.events_listener());
    let bad = channel(&conn).await;
    step(
        "publish as someone else",
        bad.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default().with_user_id("mallory".into()),
        ),
    )
    .await
    .expect("send publish");
    channel_closed_with(
        &bad,
        &mut events,
        406,
        "PRECONDITION_FAILED - user_id property set to 'mallory' but authenticated user was 'guest'",
    )
    .await;

    // A headers binding's numbers match numbers of any type; a string never does.
    let hx = uniq("hdr-num");
    declare_exchange(&ch, &hx, ExchangeKind::Headers).await;
    let hq = uniq("hdr-num-q");
    plain_queue(&ch, &hq).await;
    bind(
        &ch,
        &hq,
        &hx,
        "",
        args(&[("n", AMQPValue::ShortShortInt(1))]),
    )
    .await;
    for (body, value) in [
        ("long", AMQPValue::LongLongInt(1)),
        ("unsigned-byte", AMQPValue::ShortShortUInt(1)),
        ("double", AMQPValue::Double(1.0)),
        ("string", lstr("1")),
        ("two", AMQPValue::LongInt(2)),
    ] {
        let props = BasicProperties::default().with_headers(args(&[("n", value)]));
        publish_props(&ch, &hx, "", body.as_bytes(), props).await;
    }
    assert_eq!(drain(&ch, &hq).await, ["long", "unsigned-byte", "double"]);
    // Values compare as Erlang's `==` compares them decoded: strings and byte arrays are
    // all binaries, a timestamp is an integer; a boolean is not 1.
    let bq = uniq("hdr-bin-q");
    plain_queue(&ch, &bq).await;
    let binding = args(&[
        ("s", AMQPValue::ByteArray(b"v".to_vec().into())),
        ("t", AMQPValue::LongLongInt(1_700_000_000)),
    ]);
    bind(&ch, &bq, &hx, "", binding).await;
    for (body, s, t) in [
        (
            "long-string",
            lstr("v"),
            AMQPValue::Timestamp(1_700_000_000),
        ),
        (
            "bytes",
            AMQPValue::ByteArray(b"v".to_vec().into()),
            AMQPValue::Double(1.7e9),
        ),
        (
            "other-bytes",
            lstr("w"),
            AMQPValue::Timestamp(1_700_000_000),
        ),
        ("other-time", lstr("v"), AMQPValue::Timestamp(1)),
    ] {
        let props = BasicProperties::default().with_headers(args(&[("s", s), ("t", t)]));
        publish_props(&ch, &hx, "", body.as_bytes(), props).await;
    }
    assert_eq!(drain(&ch, &bq).await, ["long-string", "bytes"]);
    let tq = uniq("hdr-bool-q");
    plain_queue(&ch, &tq).await;
    bind(&ch, &tq, &hx, "", args(&[("b", AMQPValue::Boolean(true))])).await;
    for (body, b) in [
        ("one", AMQPValue::LongInt(1)),
        ("true", AMQPValue::Boolean(true)),
    ] {
        let props = BasicProperties::default().with_headers(args(&[("b", b)]));
        publish_props(&ch, &hx, "", body.as_bytes(), props).await;
    }
    assert_eq!(drain(&ch, &tq).await, ["true"]);
    for (mode, text) in [
        (
            lstr("some"),
            "PRECONDITION_FAILED - Invalid x-match field value <<\"some\">>; expected all, any, all-with-x, or any-with-x",
        ),
        (
            AMQPValue::LongInt(1),
            "PRECONDITION_FAILED - Invalid x-match field type signedint (value 1); expected longstr",
        ),
        (
            lstr("a\u{1}b"),
            "PRECONDITION_FAILED - Invalid x-match field value <<97,1,98>>; expected all, any, all-with-x, or any-with-x",
        ),
        (
            AMQPValue::ByteArray(b"any".to_vec().into()),
            "PRECONDITION_FAILED - Invalid x-match field type binary (value <<\"any\">>); expected longstr",
        ),
        (
            AMQPValue::Void,
            "PRECONDITION_FAILED - Invalid x-match field type void (value undefined); expected longstr",
        ),
        (
            AMQPValue::FieldTable(args(&[("a", AMQPValue::LongInt(1))])),
            "PRECONDITION_FAILED - Invalid x-match field type table (value [{<<\"a\">>,signedint,1}]); expected longstr",
        ),
        (
            AMQPValue::FieldArray(vec![AMQPValue::LongInt(1), lstr("x")].into()),
            "PRECONDITION_FAILED - Invalid x-match field type array (value [{signedint,1},{longstr,<<\"x\">>}]); expected longstr",
        ),
    ] {
        let bch = channel(&conn).await;
        let r = step(
            "queue.bind",
            bch.queue_bind(
                hq.as_str().into(),
                hx.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                args(&[("x-match", mode)]),
            ),
        )
        .await;
        expect_text(&expect_code("bad x-match", r, 406), text);
    }

    // Unbinding what is not there is fine.
    let uch = channel(&conn).await;
    step(
        "unbind from a missing exchange",
        uch.queue_unbind(
            hq.as_str().into(),
            uniq("nox").as_str().into(),
            "k".into(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.unbind");
    step(
        "unbind a missing queue",
        uch.queue_unbind(
            uniq("noq").as_str().into(),
            hx.as_str().into(),
            "k".into(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.unbind");
    step(
        "exchange.unbind with missing ends",
        uch.exchange_unbind(
            uniq("nod").as_str().into(),
            uniq("nos").as_str().into(),
            "k".into(),
            ExchangeUnbindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.unbind");

    // Redeclaring with the other exclusivity is a lock error; an exclusive queue is never
    // durable, so asking for durable again changes nothing.
    let ex = uniq("excl");
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    declare_queue(&ch, &ex, exclusive, FieldTable::default()).await;
    let again = QueueDeclareOptions {
        durable: true,
        ..exclusive
    };
    try_declare(&conn, &ex, again, FieldTable::default())
        .await
        .expect("exclusive redeclared durable");
    let e = expect_code(
        "exclusive redeclared as shared",
        try_declare(
            &conn,
            &ex,
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await,
        405,
    );
    expect_text(
        &e,
        &format!("RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{ex}'"),
    );

    // Exchanges every vhost has, and what may not be done to them.
    let xch = channel(&conn).await;
    step(
        "passive declare of the trace exchange",
        xch.exchange_declare(
            "amq.rabbitmq.trace".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("amq.rabbitmq.trace exists");
    let r = step(
        "passive declare of the default exchange",
        xch.exchange_declare(
            "".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    expect_text(
        &expect_code("default exchange", r, 403),
        "ACCESS_REFUSED - operation not permitted on the default exchange",
    );
    let dch = channel(&conn).await;
    let r = step(
        "delete amq.direct",
        dch.exchange_delete("amq.direct".into(), ExchangeDeleteOptions::default()),
    )
    .await;
    expect_text(
        &expect_code("system exchange", r, 403),
        "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed",
    );
    let e = expect_code(
        "x-max-length not an integer",
        try_declare(
            &conn,
            &uniq("arg"),
            QueueDeclareOptions::default(),
            args(&[("x-max-length", lstr("5"))]),
        )
        .await,
        406,
    );
    expect_text(
        &e,
        "PRECONDITION_FAILED - invalid arg 'x-max-length' for queue '",
    );
    let reason = e.to_string();
    assert!(
        reason.contains("\"expected integer, got longstr\""),
        "{reason}"
    );

    for name in [&q, &hq] {
        step(
            "queue.delete",
            ch.queue_delete(name.as_str().into(), QueueDeleteOptions::default()),
        )
        .await
        .expect("queue.delete");
    }
    close(conn).await;
}

/// channel.flow active=false and basic.qos with a prefetch size, which RabbitMQ does not
/// implement: connection closed with 540.
async fn unimplemented_methods_refused(url: String) {
    let conn = connect(&url).await;
    let ch = channel(&conn).await;
    let r = step(
        "channel.flow false",
        ch.channel_flow(ChannelFlowOptions { active: false }),
    )
    .await;
    expect_text(
        &expect_code("channel.flow false", r.map(|_| ()), 540),
        "NOT_IMPLEMENTED - active=false",
    );

    let mut raw = Raw::connect(&url).await;
    raw.handshake(None).await;
    let open = channel_methods::AMQPMethod::Open(channel_methods::Open {});
    raw.send(&AMQPFrame::Method(1, AMQPClass::Channel(open)))
        .await;
    assert!(matches!(
        raw.method().await,
        AMQPClass::Channel(channel_methods::AMQPMethod::OpenOk(_))
    ));
    // basic.qos by hand: amq-protocol always writes a zero prefetch-size.
    let mut qos = vec![1u8, 0, 1, 0, 0, 0, 11, 0, 60, 0, 10];
    qos.extend_from_slice(&10u32.to_be_bytes());
    qos.extend_from_slice(&[0, 0, 0, 0xCE]);
    raw.send_bytes(&qos).await;
    raw.expect_connection_close(540).await;
}

// What RabbitMQ refuses, with its codes, texts and class/method ids, as clients of other
// languages show them to their users.

async fn immediate_and_recover_without_requeue_refused(url: String) {
    // immediate=true was dropped from RabbitMQ 3.0: a connection error.
    let conn = connect(&url).await;
    let mut events = Box::pin(conn.events_listener());
    let ch = channel(&conn).await;
    let q = uniq("immediate");
    plain_queue(&ch, &q).await;
    let options = BasicPublishOptions {
        immediate: true,
        ..Default::default()
    };
    let r = step(
        "basic.publish immediate",
        ch.basic_publish(
            "".into(),
            q.as_str().into(),
            options,
            b"now",
            BasicProperties::default(),
        ),
    )
    .await;
    assert!(r.is_ok(), "basic.publish is asynchronous: {r:?}");
    channel_closed_with(&ch, &mut events, 540, "NOT_IMPLEMENTED - immediate=true").await;
    let conn = connect(&url).await;
    assert_eq!(
        ready_count(&conn, &q).await,
        0,
        "the immediate publish was not queued"
    );

    // basic.recover without requeue is not implemented either.
    let ch = channel(&conn).await;
    let r = step(
        "basic.recover requeue=false",
        ch.basic_recover(BasicRecoverOptions { requeue: false }),
    )
    .await;
    expect_text(
        &expect_code("basic.recover requeue=false", r, 540),
        "NOT_IMPLEMENTED - requeue=false",
    );
}

/// Methods only a server sends, connection methods out of place, and frames on the wrong
/// channel.
async fn server_methods_and_misplaced_frames_refused(url: String) {
    let mut raw = Raw::open_channel_1(&url).await;
    let cancel_ok = basic_methods::AMQPMethod::CancelOk(basic_methods::CancelOk {
        consumer_tag: "nobody".into(),
    });
    raw.send(&AMQPFrame::Method(1, AMQPClass::Basic(cancel_ok)))
        .await;
    let c = raw.expect_connection_close(503).await;
    assert_eq!(
        (c.reply_text.as_str(), c.class_id, c.method_id),
        ("COMMAND_INVALID - unimplemented method", 60, 31)
    );
    let mut raw = Raw::open_channel_1(&url).await;
    let blocked = conn_methods::AMQPMethod::Blocked(conn_methods::Blocked {
        reason: "not yours to say".into(),
    });
    raw.send(&AMQPFrame::Method(0, AMQPClass::Connection(blocked)))
        .await;
    let c = raw.expect_connection_close(504).await;
    assert_eq!(
        (c.reply_text.as_str(), c.class_id, c.method_id),
        (
            "CHANNEL_ERROR - unexpected method in connection state running",
            10,
            60
        )
    );
    // Channel 0 is the connection's: another class's method there is out of place too.
    let mut raw = Raw::open_channel_1(&url).await;
    let open = channel_methods::AMQPMethod::Open(channel_methods::Open {});
    raw.send(&AMQPFrame::Method(0, AMQPClass::Channel(open)))
        .await;
    let c = raw.expect_connection_close(504).await;
    assert_eq!(
        (c.reply_text.as_str(), c.class_id, c.method_id),
        (
            "CHANNEL_ERROR - unexpected method in connection state running",
            20,
            10
        )
    );
    // A heartbeat belongs on channel 0.
    let mut raw = Raw::open_channel_1(&url).await;
    raw.send_bytes(b"\x08\x00\x01\x00\x00\x00\x00\xce").await;
    let c = raw.expect_connection_close(505).await;
    assert_eq!(
        c.reply_text.as_str(),
        "UNEXPECTED_FRAME - type 8, all octets = <<>>"
    );
    // A method on a channel never opened.
    let mut raw = Raw::open_channel_1(&url).await;
    let declare = queue_methods::AMQPMethod::Declare(queue_methods::Declare {
        queue: uniq("unopened").as_str().into(),
        ..Default::default()
    });
    raw.send(&AMQPFrame::Method(5, AMQPClass::Queue(declare)))
        .await;
    let c = raw.expect_connection_close(504).await;
    assert_eq!(
        (c.reply_text.as_str(), c.class_id, c.method_id),
        ("CHANNEL_ERROR - expected 'channel.open'", 50, 10)
    );
    // Arguments that do not decode: queue.declare cut short after its reserved field.
    let mut raw = Raw::open_channel_1(&url).await;
    raw.send_bytes(&[1, 0, 1, 0, 0, 0, 6, 0, 50, 0, 10, 0, 0, 0xCE])
        .await;
    let c = raw.expect_connection_close(501).await;
    assert_eq!(
        (c.reply_text.as_str(), c.class_id, c.method_id),
        ("FRAME_ERROR - cannot decode <<0,0>>", 50, 10)
    );
}

async fn names_and_arguments_refused(url: String) {
    let conn = connect(&url).await;
    // An empty queue name with no queue declared on the channel before.
    let ch = channel(&conn).await;
    let r = step(
        "basic.get ''",
        ch.basic_get("".into(), BasicGetOptions::default()),
    )
    .await;
    expect_text(
        &expect_code("basic.get ''", r.map(|_| ()), 404),
        "NOT_FOUND - no previously declared queue",
    );

    // The default exchange is no binding's destination either.
    let ch = channel(&conn).await;
    let r = step(
        "exchange.bind to ''",
        ch.exchange_bind(
            "".into(),
            "amq.fanout".into(),
            "k".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    expect_text(
        &expect_code("exchange.bind to ''", r, 403),
        "ACCESS_REFUSED - operation not permitted on the default exchange",
    );

    // x-queue-mode takes "default" or "lazy", as a string.
    let ch = channel(&conn).await;
    let lazy = uniq("lazy");
    declare_queue(
        &ch,
        &lazy,
        QueueDeclareOptions::default(),
        args(&[("x-queue-mode", lstr("lazy"))]),
    )
    .await;
    for (value, reason) in [
        (
            lstr("sleepy"),
            "\"unsupported queue mode 'sleepy'\"".to_string(),
        ),
        (
            AMQPValue::LongInt(1),
            "{unacceptable_type,signedint}".to_string(),
        ),
    ] {
        // Each refusal closes its channel.
        let ch = channel(&conn).await;
        let q = uniq("mode");
        let r = step(
            "queue.declare x-queue-mode",
            ch.queue_declare(
                q.as_str().into(),
                QueueDeclareOptions::default(),
                args(&[("x-queue-mode", value)]),
            ),
        )
        .await;
        expect_text(
            &expect_code("queue.declare x-queue-mode", r, 406),
            &format!(
                "PRECONDITION_FAILED - invalid arg 'x-queue-mode' for queue '{q}' in vhost '/': {reason}"
            ),
        );
    }
    close(conn).await;
}

/// A publish's content frames must follow it; a content header that does not parse is
/// RabbitMQ's 541 (which clients have a class for), not a parser's message.
async fn frames_out_of_place_in_a_publish(url: String) {
    let publish = || {
        let p = basic_methods::AMQPMethod::Publish(basic_methods::Publish {
            routing_key: "nowhere".into(),
            ..Default::default()
        });
        AMQPFrame::Method(1, AMQPClass::Basic(p))
    };
    let declare = || {
        let d = queue_methods::AMQPMethod::Declare(queue_methods::Declare {
            queue: uniq("mid-publish").as_str().into(),
            ..Default::default()
        });
        AMQPFrame::Method(1, AMQPClass::Queue(d))
    };
    let mut raw = Raw::open_channel_1(&url).await;
    raw.send(&publish()).await;
    raw.send(&declare()).await;
    let c = raw.expect_connection_close(505).await;
    assert_eq!(
        (c.reply_text.as_str(), c.class_id, c.method_id),
        (
            "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead",
            60,
            40
        )
    );
    let mut raw = Raw::open_channel_1(&url).await;
    raw.send(&publish()).await;
    raw.send(&AMQPFrame::Header(
        1,
        AMQPContentHeader {
            class_id: 60,
            body_size: 10,
            properties: BasicProperties::default(),
        },
    ))
    .await;
    raw.send(&declare()).await;
    let c = raw.expect_connection_close(505).await;
    assert_eq!(
        (c.reply_text.as_str(), c.class_id, c.method_id),
        (
            "UNEXPECTED_FRAME - expected content body, got non content body frame instead",
            60,
            40
        )
    );
    // Headers holding a field of type 'Z', which AMQP does not have. RabbitMQ reads a
    // message's properties when it first needs them (here: basic.get); we on arrival.
    let mut raw = Raw::open_channel_1(&url).await;
    // Property flags: headers; a table of 4 bytes: key "k", type 'Z', one byte.
    let properties = [0x20, 0, 0, 0, 0, 4, 1, b'k', b'Z', 0];
    raw.publish_raw_then_get(&uniq("bad-header"), &properties)
        .await;
    let c = raw.expect_connection_close(541).await;
    assert_eq!(c.reply_text.as_str(), "INTERNAL_ERROR");
}

/// A message's properties reach its consumers as the publisher encoded them: header order,
/// a repeated key and field types (here 'L', which a decoder might turn into 'l') stay.
async fn headers_delivered_as_published(url: String) {
    let mut raw = Raw::open_channel_1(&url).await;
    let table = [
        &[2, b'z', b'z', b'L'][..],
        &5i64.to_be_bytes(),
        &[2, b'a', b'a', b'I', 0, 0, 0, 1],
        &[2, b'a', b'a', b'I', 0, 0, 0, 2],
    ]
    .concat();
    // Property flags: content-type and headers.
    let mut properties = vec![0xA0, 0, 4];
    properties.extend_from_slice(b"text");
    properties.extend_from_slice(&u32::try_from(table.len()).expect("small").to_be_bytes());
    properties.extend_from_slice(&table);
    let payload = raw
        .publish_raw_then_get(&uniq("as-published"), &properties)
        .await;
    let (kind, _, _) = raw.raw_frame().await;
    assert_eq!(kind, 1, "get-ok");
    let (kind, channel, got) = raw.raw_frame().await;
    assert_eq!((kind, channel), (2, 1), "a content header on channel 1");
    assert_eq!(got, payload, "the content header as published");
    let (kind, _, body) = raw.raw_frame().await;
    assert_eq!((kind, body.as_slice()), (3, &b"x"[..]));
}

/// RabbitMQ answers a refused login with connection.close only to a client that
/// advertised authentication_failure_close; it closes other clients' sockets without a
/// word, and so it does for a mechanism it does not know.
async fn login_refusals(url: String) {
    let with_capability = {
        let mut caps = FieldTable::default();
        caps.insert(
            "authentication_failure_close".into(),
            AMQPValue::Boolean(true),
        );
        let mut props = FieldTable::default();
        props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
        props
    };
    let cases = [
        ("EXTERNAL", "", FieldTable::default(), None),
        ("PLAIN", "\0guest\0wrong", FieldTable::default(), None),
        ("PLAIN", "\0guest\0wrong", with_capability, Some(403)),
    ];
    for (mechanism, response, client_properties, close) in cases {
        let mut raw = Raw::connect(&url).await;
        raw.send_bytes(b"AMQP\x00\x00\x09\x01").await;
        let AMQPClass::Connection(conn_methods::AMQPMethod::Start(_)) = raw.method().await else {
            panic!("expected connection.start");
        };
        raw.send(&AMQPFrame::Method(
            0,
            AMQPClass::Connection(conn_methods::AMQPMethod::StartOk(conn_methods::StartOk {
                client_properties,
                mechanism: mechanism.into(),
                response: LongString::from(response),
                locale: "en_US".into(),
            })),
        ))
        .await;
        match close {
            Some(code) => {
                let c = raw.expect_connection_close(code).await;
                assert_eq!(
                    c.reply_text.as_str(),
                    "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile."
                );
            }
            None => {
                let got = raw.read_to_eof().await;
                assert!(
                    got.is_empty(),
                    "{mechanism} {response:?}: expected a silent close, got {got:?}"
                );
            }
        }
    }
}

/// RabbitMQ tells a consumer its queue was deleted (basic.cancel) only if its client
/// advertised consumer_cancel_notify; lapin does (`consumer_cancel_notify_on_queue_delete`),
/// a bare client does not.
async fn cancel_notify_only_when_advertised(url: String) {
    let mut raw = Raw::open_channel_1(&url).await;
    let q = uniq("no-cancel-notify");
    let declare = queue_methods::AMQPMethod::Declare(queue_methods::Declare {
        queue: q.as_str().into(),
        ..Default::default()
    });
    raw.send(&AMQPFrame::Method(1, AMQPClass::Queue(declare)))
        .await;
    let m = raw.method().await;
    assert!(
        matches!(m, AMQPClass::Queue(queue_methods::AMQPMethod::DeclareOk(_))),
        "{m:?}"
    );
    let consume = basic_methods::AMQPMethod::Consume(basic_methods::Consume {
        queue: q.as_str().into(),
        consumer_tag: "quiet-one".into(),
        ..Default::default()
    });
    raw.send(&AMQPFrame::Method(1, AMQPClass::Basic(consume)))
        .await;
    let m = raw.method().await;
    assert!(
        matches!(m, AMQPClass::Basic(basic_methods::AMQPMethod::ConsumeOk(_))),
        "{m:?}"
    );
    // Deleted from another connection, so no reply of ours is due on this one.
    let conn = connect(&url).await;
    let ch = channel(&conn).await;
    step(
        "queue.delete",
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()),
    )
    .await
    .expect("queue.delete");
    raw.quiet("a consumer whose client did not ask for basic.cancel")
        .await;
    close(conn).await;

    // A client that asks for it, deleting the queue it consumes from on the same channel:
    // queue.delete-ok first, then basic.cancel.
    let mut caps = FieldTable::default();
    caps.insert("consumer_cancel_notify".into(), AMQPValue::Boolean(true));
    let mut props = FieldTable::default();
    props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    let mut raw = Raw::connect(&url).await;
    raw.handshake_as(None, props).await;
    let open = channel_methods::AMQPMethod::Open(channel_methods::Open {});
    raw.send(&AMQPFrame::Method(1, AMQPClass::Channel(open)))
        .await;
    raw.method().await;
    let q = uniq("cancel-notify");
    let declare = queue_methods::AMQPMethod::Declare(queue_methods::Declare {
        queue: q.as_str().into(),
        ..Default::default()
    });
    raw.send(&AMQPFrame::Method(1, AMQPClass::Queue(declare)))
        .await;
    raw.method().await;
    let consume = basic_methods::AMQPMethod::Consume(basic_methods::Consume {
        queue: q.as_str().into(),
        consumer_tag: "told".into(),
        ..Default::default()
    });
    raw.send(&AMQPFrame::Method(1, AMQPClass::Basic(consume)))
        .await;
    raw.method().await;
    let delete = queue_methods::AMQPMethod::Delete(queue_methods::Delete {
        queue: q.as_str().into(),
        ..Default::default()
    });
    raw.send(&AMQPFrame::Method(1, AMQPClass::Queue(delete)))
        .await;
    let first = raw.method().await;
    assert!(
        matches!(
            first,
            AMQPClass::Queue(queue_methods::AMQPMethod::DeleteOk(_))
        ),
        "{first:?}"
    );
    let second = raw.method().await;
    assert!(
        matches!(
            &second,
            AMQPClass::Basic(basic_methods::AMQPMethod::Cancel(c)) if c.consumer_tag.as_str() == "told"
        ),
        "{second:?}"
    );
}

/// A message above RabbitMQ's default max_message_size (128 MiB) closes its channel with
/// 406, and is not queued.
async fn message_size_limit(url: String) {
    const MAX: usize = 128 << 20;
    let conn = connect(&url).await;
    let mut events = Box::pin(conn.events_listener());
    let ch = channel(&conn).await;
    let q = uniq("too-big");
    plain_queue(&ch, &q).await;
    let body = vec![b'x'; MAX + 1];
    let r = step(
        "basic.publish of 128 MiB + 1",
        ch.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default(),
        ),
    )
    .await;
    assert!(r.is_ok(), "basic.publish is asynchronous: {r:?}");
    channel_closed_with(
        &ch,
        &mut events,
        406,
        &format!(
            "PRECONDITION_FAILED - message size {} is larger than configured max size {MAX}",
            MAX + 1
        ),
    )
    .await;
    assert_eq!(ready_count(&conn, &q).await, 0);
    // Exactly the limit is taken.
    let ch = confirmed(&conn).await;
    publish(&ch, "", &q, &body[..MAX]).await;
    assert_eq!(ready_count(&conn, &q).await, 1);
    close(conn).await;
}

/// Sequences no ordinary client sends, answered as RabbitMQ answers them.
async fn edge_sequences(url: String) {
    let conn = connect(&url).await;
    // Unbinding what was never bound leaves an auto-delete exchange in place: only
    // removing its last binding deletes it.
    let x = uniq("autodel-x");
    let q = uniq("autodel-q");
    let ch = channel(&conn).await;
    declare_exchange(&ch, &x, ExchangeKind::Direct).await;
    plain_queue(&ch, &q).await;
    step(
        "exchange.unbind of nothing",
        ch.exchange_unbind(
            x.as_str().into(),
            x.as_str().into(),
            "k".into(),
            ExchangeUnbindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.unbind");
    bind(&ch, &q, &x, "k", FieldTable::default()).await;

    // The direct reply-to pseudo-queue, declared, is the queue an empty name means.
    let ch = channel(&conn).await;
    declare_queue(
        &ch,
        "amq.rabbitmq.reply-to",
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    let r = step(
        "basic.consume '' with acks",
        ch.basic_consume(
            "".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    expect_text(
        &expect_code("basic.consume ''", r, 406),
        "PRECONDITION_FAILED - reply consumer cannot acknowledge",
    );

    // A reply text too long for a short string is cut to 252 bytes and "...".
    let long = format!("{}-{}", uniq("long"), "x".repeat(200));
    let ch = channel(&conn).await;
    let r = step(
        "passive declare of a long missing name",
        ch.queue_declare(
            long.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    let e = expect_code("passive declare", r, 404);
    let full = format!("NOT_FOUND - no queue '{long}' in vhost '/'");
    let lapin::ErrorKind::ProtocolError(amqp) = e.kind() else {
        panic!("not a protocol error: {e:?}");
    };
    assert_eq!(amqp.get_message().as_str(), format!("{}...", &full[..252]));
    close(conn).await;

    // A content header of another class than basic's after basic.publish.
    let mut raw = Raw::open_channel_1(&url).await;
    let p = basic_methods::AMQPMethod::Publish(basic_methods::Publish {
        routing_key: "nowhere".into(),
        ..Default::default()
    });
    raw.send(&AMQPFrame::Method(1, AMQPClass::Basic(p))).await;
    raw.send_bytes(&[
        2, 0, 1, 0, 0, 0, 14, 0, 50, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0xCE,
    ])
    .await;
    let c = raw.expect_connection_close(505).await;
    assert_eq!(
        (c.reply_text.as_str(), c.class_id, c.method_id),
        (
            "UNEXPECTED_FRAME - expected content header for class 60, got one for class 50 instead",
            60,
            40
        )
    );
}

/// A queue that exists is only compared with a new declaration, on the arguments RabbitMQ
/// compares (their values, not their validity), and a classic queue is one whether
/// `x-queue-type: classic` is said or not.
async fn queue_redeclare_equivalence(url: String) {
    let conn = connect(&url).await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let classic = || args(&[("x-queue-type", lstr("classic"))]);
    for (first, second) in [
        (classic(), FieldTable::default()),
        (FieldTable::default(), classic()),
    ] {
        let q = uniq("classic");
        let ch = channel(&conn).await;
        declare_queue(&ch, &q, durable, first).await;
        declare_queue(&ch, &q, durable, second).await;
        step(
            "queue.delete",
            ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()),
        )
        .await
        .expect("queue.delete");
    }
    // Each case: the first declaration, the second, and the inequivalence it shows (None:
    // declare-ok).
    let ttl = || args(&[("x-message-ttl", AMQPValue::LongInt(1000))]);
    let cases: Vec<(FieldTable, FieldTable, Option<String>)> = vec![
        (
            args(&[("x-queue-version", AMQPValue::LongInt(2))]),
            FieldTable::default(),
            Some("'x-queue-version' for queue '{q}' in vhost '/': received none but current is the value '2' of type 'signedint'".into()),
        ),
        (
            FieldTable::default(),
            args(&[("x-queue-master-locator", lstr("min-masters"))]),
            Some("'x-queue-master-locator' for queue '{q}' in vhost '/': received the value 'min-masters' of type 'longstr' but current is none".into()),
        ),
        (
            classic(),
            args(&[("x-queue-type", lstr("Classic"))]),
            Some("'x-queue-type' for queue '{q}' in vhost '/': received 'Classic' but current is 'classic'".into()),
        ),
        (
            ttl(),
            args(&[("x-message-ttl", lstr("1000"))]),
            Some("'x-message-ttl' for queue '{q}' in vhost '/': received '1000' but current is '1000'".into()),
        ),
        (
            ttl(),
            args(&[("x-message-ttl", AMQPValue::Double(1000.0))]),
            Some("'x-message-ttl' for queue '{q}' in vhost '/': received '1.0e3' but current is '1000'".into()),
        ),
        // Not compared for a classic queue, so not checked either.
        (
            FieldTable::default(),
            args(&[("x-delivery-limit", AMQPValue::LongInt(5))]),
            None,
        ),
        (
            FieldTable::default(),
            args(&[("x-max-in-memory-length", AMQPValue::LongInt(5))]),
            None,
        ),
    ];
    for (first, second, inequivalent) in cases {
        let q = uniq("equiv");
        let ch = channel(&conn).await;
        declare_queue(&ch, &q, durable, first).await;
        let r = step(
            "redeclare",
            ch.queue_declare(q.as_str().into(), durable, second),
        )
        .await;
        match inequivalent {
            None => {
                r.unwrap_or_else(|e| panic!("redeclare {q}: {e}"));
            }
            Some(text) => {
                let e = expect_code("redeclare", r, 406);
                let text = text.replace("{q}", &q);
                expect_text(
                    &e,
                    &format!("PRECONDITION_FAILED - inequivalent arg {text}"),
                );
            }
        }
        let ch = channel(&conn).await;
        step(
            "queue.delete",
            ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()),
        )
        .await
        .expect("queue.delete");
    }
    close(conn).await;
}

/// Properties RabbitMQ refuses in a publish: a delivery mode other than 1 or 2, and an
/// expiration past its limit, with its reason laid out as Erlang prints it.
async fn publish_properties_refused(url: String) {
    let conn = connect(&url).await;
    let q = uniq("props");
    plain_queue(&channel(&conn).await, &q).await;
    let indent = " ".repeat(44);
    let cases = [
        (
            BasicProperties::default().with_delivery_mode(0),
            "invalid message: {delivery_mode_unknown,0}".to_string(),
        ),
        (
            BasicProperties::default().with_delivery_mode(3),
            "invalid message: {delivery_mode_unknown,3}".to_string(),
        ),
        (
            BasicProperties::default().with_expiration("315360000001".into()),
            "invalid expiration '315360000001': {value_too_large,315360000001}".to_string(),
        ),
        (
            BasicProperties::default().with_expiration("99999999999999999999".into()),
            format!(
                "invalid expiration '99999999999999999999': {{value_too_large,\n{indent}99999999999999999999}}"
            ),
        ),
    ];
    for (props, reason) in cases {
        let text = format!("PRECONDITION_FAILED - {reason}");
        publish_refused(&conn, "", &q, props, 406, &text).await;
    }
    assert_eq!(
        ready_count(&conn, &q).await,
        0,
        "nothing refused was queued"
    );
    close(conn).await;
}

/// Publishes on a fresh channel of `conn` and expects the broker to close that channel
/// with `code` and `text`.
async fn publish_refused(
    conn: &Connection,
    exchange: &str,
    key: &str,
    props: BasicProperties,
    code: u16,
    text: &str,
) {
    let mut events = Box::pin(conn.events_listener());
    let ch = channel(conn).await;
    step(
        "basic.publish",
        ch.basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            b"m",
            props,
        ),
    )
    .await
    .expect("basic.publish");
    channel_closed_with(&ch, &mut events, code, text).await;
}

/// Which missing end a bind names, consumer arguments meant for streams, and the empty
/// exchange type: RabbitMQ's codes and words.
async fn errors_name_what_rabbitmq_names(url: String) {
    let conn = connect(&url).await;
    let (missing_x, missing_q) = (uniq("no-x"), uniq("no-q"));
    let ch = channel(&conn).await;
    let r = step(
        "queue.bind, both ends missing",
        ch.queue_bind(
            missing_q.as_str().into(),
            missing_x.as_str().into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    expect_text(
        &expect_code("queue.bind", r, 404),
        &format!("NOT_FOUND - no exchange '{missing_x}' in vhost '/'"),
    );
    let ch = channel(&conn).await;
    let r = step(
        "exchange.bind, both ends missing",
        ch.exchange_bind(
            uniq("no-dest").as_str().into(),
            missing_x.as_str().into(),
            "k".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    expect_text(
        &expect_code("exchange.bind", r, 404),
        &format!("NOT_FOUND - no exchange '{missing_x}' in vhost '/'"),
    );

    for (kind, arguments, module) in [
        ("classic", FieldTable::default(), "rabbit_classic_queue"),
        ("quorum", quorum(&[]), "rabbit_quorum_queue"),
    ] {
        let q = uniq(kind);
        let ch = channel(&conn).await;
        declare_queue(&ch, &q, durable(), arguments).await;
        let r = step(
            "basic.consume x-stream-offset",
            ch.basic_consume(
                q.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                args(&[("x-stream-offset", lstr("first"))]),
            ),
        )
        .await;
        expect_text(
            &expect_code("basic.consume", r, 406),
            &format!(
                "PRECONDITION_FAILED - invalid arg 'x-stream-offset' for queue '{q}' in vhost '/' of queue type {module}"
            ),
        );
        let ch = channel(&conn).await;
        step(
            "queue.delete",
            ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()),
        )
        .await
        .expect("queue.delete");
    }

    // The order of RabbitMQ's checks shows when several fail at once. A queue's name
    // comes first, even for a queue that exists; for a new queue the dead-letter
    // exchange's type comes before the other arguments.
    let ch = channel(&conn).await;
    let server_named = step(
        "queue.declare ''",
        ch.queue_declare(
            "".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.declare ''")
    .name()
    .to_string();
    for name in [server_named.as_str(), "amq.reserved"] {
        let ch = channel(&conn).await;
        let r = step(
            "queue.declare amq.*",
            ch.queue_declare(
                name.into(),
                QueueDeclareOptions::default(),
                args(&[("x-max-length", lstr("many"))]),
            ),
        )
        .await;
        expect_text(
            &expect_code("queue.declare amq.*", r, 403),
            &format!("ACCESS_REFUSED - queue name '{name}' contains reserved prefix 'amq.*'"),
        );
    }
    let q = uniq("dlx-type");
    let ch = channel(&conn).await;
    let r = step(
        "queue.declare bad x-dead-letter-exchange",
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions::default(),
            args(&[
                ("x-max-length", lstr("many")),
                ("x-dead-letter-exchange", AMQPValue::LongInt(1)),
            ]),
        ),
    )
    .await;
    expect_text(
        &expect_code("queue.declare", r, 406),
        &format!(
            "PRECONDITION_FAILED - invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue '{q}' in vhost '/'"
        ),
    );
    // A publish to a missing exchange with a bad property: the exchange is looked up first.
    publish_refused(
        &conn,
        &missing_x,
        "k",
        BasicProperties::default().with_expiration("soon".into()),
        404,
        &format!("NOT_FOUND - no exchange '{missing_x}' in vhost '/'"),
    )
    .await;

    let ch = channel(&conn).await;
    let r = step(
        "exchange.declare amq.* with a bad alternate-exchange",
        ch.exchange_declare(
            "amq.reserved".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            args(&[("alternate-exchange", AMQPValue::LongInt(1))]),
        ),
    )
    .await;
    expect_text(
        &expect_code("exchange.declare amq.*", r, 403),
        "ACCESS_REFUSED - exchange name 'amq.reserved' contains reserved prefix 'amq.*'",
    );

    // A connection error, so last: the type is checked even before the default
    // exchange's name.
    let ch = channel(&conn).await;
    let r = step(
        "exchange.declare '' of type ''",
        ch.exchange_declare(
            "".into(),
            ExchangeKind::Custom(String::new()),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    expect_text(
        &expect_code("exchange.declare", r, 503),
        "COMMAND_INVALID - invalid exchange type ''",
    );
}

/// Limits out of range in connection.tune-ok get no connection.close: as for a refused
/// login, the socket just closes after a pause (the reason is in the broker's log).
/// Before tune-ok the largest frame is RabbitMQ's minimum frame_max (4096 bytes, 4088 of
/// payload): a bigger start-ok, like any frame error before the connection is open, gets
/// no connection.close, just a silent close after a pause.
async fn handshake_frames_over_the_minimum_refused_silently(url: String) {
    let padded = |n: usize| args(&[("padding", lstr(&"p".repeat(n)))]);
    // A start-ok that fits is fine.
    let mut raw = Raw::connect(&url).await;
    raw.until_tune(padded(3_900)).await;
    for n in [4_100, 20_000] {
        let mut raw = Raw::connect(&url).await;
        raw.send_bytes(b"AMQP\x00\x00\x09\x01").await;
        let AMQPClass::Connection(conn_methods::AMQPMethod::Start(_)) = raw.method().await else {
            panic!("expected connection.start");
        };
        raw.send(&AMQPFrame::Method(
            0,
            AMQPClass::Connection(conn_methods::AMQPMethod::StartOk(conn_methods::StartOk {
                client_properties: padded(n),
                mechanism: "PLAIN".into(),
                response: LongString::from("\0guest\0guest"),
                locale: "en_US".into(),
            })),
        ))
        .await;
        let got = raw.read_to_eof().await;
        assert!(got.is_empty(), "{n}: expected a silent close, got {got:?}");
    }
    // A malformed frame before tune-ok: the same.
    let mut raw = Raw::connect(&url).await;
    raw.send_bytes(b"AMQP\x00\x00\x09\x01").await;
    let AMQPClass::Connection(conn_methods::AMQPMethod::Start(_)) = raw.method().await else {
        panic!("expected connection.start");
    };
    raw.send_bytes(&[1, 0, 0, 0, 0, 0, 4, 0, 10, 0, 11, 0x00])
        .await;
    let got = raw.read_to_eof().await;
    assert!(
        got.is_empty(),
        "bad frame end: expected a silent close, got {got:?}"
    );
    // So are methods out of turn: connection.open for start-ok, channel.open before the
    // connection is open.
    let out_of_turn = [
        AMQPFrame::Method(
            0,
            AMQPClass::Connection(conn_methods::AMQPMethod::Open(conn_methods::Open {
                virtual_host: "/".into(),
            })),
        ),
        AMQPFrame::Method(
            1,
            AMQPClass::Channel(channel_methods::AMQPMethod::Open(channel_methods::Open {})),
        ),
    ];
    for frame in &out_of_turn {
        let mut raw = Raw::connect(&url).await;
        raw.send_bytes(b"AMQP\x00\x00\x09\x01").await;
        let AMQPClass::Connection(conn_methods::AMQPMethod::Start(_)) = raw.method().await else {
            panic!("expected connection.start");
        };
        raw.send(frame).await;
        let got = raw.read_to_eof().await;
        assert!(
            got.is_empty(),
            "{frame:?}: expected a silent close, got {got:?}"
        );
    }
}

async fn tune_ok_out_of_range_refused_silently(url: String) {
    for (channel_max, frame_max) in [(0, 131_072), (2048, 131_072), (16, 4095), (16, 1 << 20)] {
        let mut raw = Raw::connect(&url).await;
        let tune = raw.until_tune(FieldTable::default()).await;
        assert_eq!((tune.channel_max, tune.frame_max), (2047, 131_072));
        raw.send(&AMQPFrame::Method(
            0,
            AMQPClass::Connection(conn_methods::AMQPMethod::TuneOk(conn_methods::TuneOk {
                channel_max,
                frame_max,
                heartbeat: 0,
            })),
        ))
        .await;
        raw.send(&AMQPFrame::Method(
            0,
            AMQPClass::Connection(conn_methods::AMQPMethod::Open(conn_methods::Open {
                virtual_host: "/".into(),
            })),
        ))
        .await;
        raw.quiet("just after tune-ok").await;
        let got = raw.read_to_eof().await;
        assert!(
            got.is_empty(),
            "channel_max {channel_max}, frame_max {frame_max}: expected a silent close, got {got:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// policies, through the management API

/// A management API call as `guest`; returns the status and the body (JSON, or null).
async fn api(
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    api_as(base, ("guest", "guest"), method, path, body).await
}

/// [`api`] with another user's credentials.
async fn api_as(
    base: &str,
    (user, password): (&str, &str),
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .basic_auth(user, Some(password));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = step(path, request.send())
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = response.status().as_u16();
    let text = step(path, response.text()).await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or_default())
}

/// Creates `user` (password `pw`) with `tags` and every permission on the vhost
/// `vhost_path` (percent-encoded).
async fn add_user(api_base: &str, user: &str, tags: &str, vhost_path: &str) {
    use serde_json::json;
    let created = json!({"password": "pw", "tags": tags});
    let path = format!("/api/users/{user}");
    let (status, _) = api(api_base, reqwest::Method::PUT, &path, Some(created)).await;
    assert_eq!(status, 201, "create user {user}");
    let all = json!({"configure": ".*", "write": ".*", "read": ".*"});
    let grant = format!("/api/permissions/{vhost_path}/{user}");
    let (status, _) = api(api_base, reqwest::Method::PUT, &grant, Some(all)).await;
    assert_eq!(status, 201, "grant {user} on {vhost_path}");
}

/// Creates a vhost named `uniq(prefix)`, where its creator (guest) gets every
/// permission; returns its name and its percent-encoded path segment.
async fn add_vhost(api_base: &str, prefix: &str) -> (String, String) {
    let vhost = uniq(prefix);
    let encoded = percent_encode(&vhost);
    let path = format!("/api/vhosts/{encoded}");
    let created = serde_json::json!({});
    let (status, _) = api(api_base, reqwest::Method::PUT, &path, Some(created)).await;
    assert_eq!(status, 201, "create vhost {vhost}");
    (vhost, encoded)
}

/// The error the broker's connection.close gives a connection, read from its events.
async fn broker_closed(
    events: &mut (impl futures::Stream<Item = lapin::Event> + Unpin),
) -> lapin::Error {
    step("the broker's connection.close", async {
        loop {
            match events.next().await {
                Some(lapin::Event::Error(e)) => break e,
                Some(_) => continue,
                None => panic!("the connection's event stream ended"),
            }
        }
    })
    .await
}

/// Polls `check` until it holds, for at most `limit`.
async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How long RabbitMQ's management statistics may lag (it collects every 5 s).
const STATS_LAG: Duration = Duration::from_secs(15);

async fn policies(url: String, api_base: String, _metrics: String) {
    use reqwest::Method;
    use serde_json::json;
    let p = uniq("pol");
    let pattern = format!("^{}\\.(q|own)$", regex_escape(&p));
    let (q, own, dlx, dead, own_dlx, own_dead) = (
        format!("{p}.q"),
        format!("{p}.own"),
        format!("{p}.dlx"),
        format!("{p}.dead"),
        format!("{p}.own-dlx"),
        format!("{p}.own-dead"),
    );
    let path = |name: &str| format!("/api/policies/%2F/{name}");
    let limits = json!({"pattern": pattern, "apply-to": "queues", "priority": 1,
        "definition": {"max-length": 2, "dead-letter-exchange": dlx}});
    assert_eq!(
        api(&api_base, Method::PUT, &path(&p), Some(limits.clone()))
            .await
            .0,
        201
    );
    assert_eq!(
        api(&api_base, Method::PUT, &path(&p), Some(limits.clone()))
            .await
            .0,
        204
    );
    let (status, listed) = api(&api_base, Method::GET, &path(&p), None).await;
    assert_eq!(status, 200);
    for key in ["pattern", "apply-to", "priority", "definition"] {
        assert_eq!(listed[key], limits[key], "{key} of the policy read back");
    }
    assert_eq!(listed["name"], json!(p));
    // Refused as RabbitMQ refuses, in its words (HTML-escaped, as its plugin sends them).
    for (definition, reason) in [
        (
            json!({"message-ttl": -1}),
            "Validation failed\n\n-1 is not a valid message TTL\n",
        ),
        (
            json!({"foo": 1}),
            "Validation failed\n\n[{&lt;&lt;\"foo\"&gt;&gt;,1}] are not recognised policy settings\n",
        ),
        (json!({}), "Validation failed\n\nno policy provided\n"),
        // A bad value is named before an unknown key.
        (
            json!({"foo": 1, "message-ttl": -1}),
            "Validation failed\n\n-1 is not a valid message TTL\n",
        ),
    ] {
        let body = json!({"pattern": "x", "definition": definition});
        let (status, error) = api(&api_base, Method::PUT, &path(&uniq("bad")), Some(body)).await;
        assert_eq!((status, error["reason"].as_str()), (400, Some(reason)));
    }

    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    for (exchange, queue) in [(&dlx, &dead), (&own_dlx, &own_dead)] {
        declare_exchange(&ch, exchange, ExchangeKind::Fanout).await;
        plain_queue(&ch, queue).await;
        bind(&ch, queue, exchange, "", FieldTable::default()).await;
    }
    // The policy's limit and dead-letter exchange apply to a queue declared without
    // arguments: the oldest messages go, dead-lettered as `maxlen`.
    plain_queue(&ch, &q).await;
    for body in ["m0", "m1", "m2", "m3", "m4"] {
        publish(&ch, "", &q, body.as_bytes()).await;
    }
    assert_eq!(drain(&ch, &q).await, ["m3", "m4"]);
    let first = get_eventually(&ch, &dead).await;
    assert_eq!(first.delivery.data, b"m0");
    assert_eq!(
        x_death(&first.delivery).get("reason"),
        Some(&lstr("maxlen"))
    );
    eventually("the other two dead letters", STEP, || async {
        ready_count(&conn, &dead).await == 2
    })
    .await;
    assert_eq!(drain(&ch, &dead).await, ["m1", "m2"]);
    // A queue's own dead-letter exchange wins over its policy's; the limit still applies.
    declare_queue(
        &ch,
        &own,
        QueueDeclareOptions::default(),
        args(&[("x-dead-letter-exchange", lstr(&own_dlx))]),
    )
    .await;
    for body in ["o0", "o1", "o2"] {
        publish(&ch, "", &own, body.as_bytes()).await;
    }
    assert_eq!(get_eventually(&ch, &own_dead).await.delivery.data, b"o0");
    assert_eq!(ready_count(&conn, &dead).await, 0);

    // Changing the policy changes live queues: a lower limit drops at once.
    for body in ["n0", "n1"] {
        publish(&ch, "", &q, body.as_bytes()).await;
    }
    let tighter = json!({"pattern": pattern, "apply-to": "queues", "priority": 1,
        "definition": {"max-length": 1}});
    assert_eq!(
        api(&api_base, Method::PUT, &path(&p), Some(tighter))
            .await
            .0,
        204
    );
    eventually("the lower limit applied", STEP, || async {
        ready_count(&conn, &q).await == 1
    })
    .await;
    assert_eq!(drain(&ch, &q).await, ["n1"]);

    // An exchange policy's alternate exchange catches what its bindings do not route.
    let (x, ae, caught) = (format!("{p}.x"), format!("{p}.ae"), format!("{p}.caught"));
    declare_exchange(&ch, &ae, ExchangeKind::Fanout).await;
    plain_queue(&ch, &caught).await;
    bind(&ch, &caught, &ae, "", FieldTable::default()).await;
    let ae_policy = format!("{p}.ae");
    let body = json!({"pattern": format!("^{}$", regex_escape(&x)), "apply-to": "exchanges",
        "definition": {"alternate-exchange": ae}});
    assert_eq!(
        api(&api_base, Method::PUT, &path(&ae_policy), Some(body))
            .await
            .0,
        201
    );
    declare_exchange(&ch, &x, ExchangeKind::Direct).await;
    publish(&ch, &x, "nowhere", b"caught").await;
    assert_eq!(get_eventually(&ch, &caught).await.delivery.data, b"caught");

    // Listed on the queue and the exchange (RabbitMQ's statistics lag by seconds).
    let queue_path = format!("/api/queues/%2F/{q}");
    eventually("the queue lists its policy", STATS_LAG, || async {
        let (_, info) = api(&api_base, Method::GET, &queue_path, None).await;
        info["policy"] == json!(p)
            && info["effective_policy_definition"] == json!({"max-length": 1})
    })
    .await;
    let exchange_path = format!("/api/exchanges/%2F/{x}");
    eventually("the exchange lists its policy", STATS_LAG, || async {
        api(&api_base, Method::GET, &exchange_path, None).await.1["policy"] == json!(ae_policy)
    })
    .await;

    // Cleared, they stop applying; a second delete finds nothing.
    for name in [&p, &ae_policy] {
        assert_eq!(
            api(&api_base, Method::DELETE, &path(name), None).await.0,
            204
        );
        assert_eq!(
            api(&api_base, Method::DELETE, &path(name), None).await.0,
            404
        );
    }
    for body in ["a", "b", "c"] {
        publish(&ch, "", &q, body.as_bytes()).await;
    }
    assert_eq!(
        ready_count(&conn, &q).await,
        3,
        "no limit without the policy"
    );
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let confirm = step(
        "publish",
        ch.basic_publish(
            x.as_str().into(),
            "nowhere".into(),
            mandatory,
            b"returned",
            BasicProperties::default(),
        ),
    )
    .await
    .expect("publish");
    let confirmation = step("confirm", confirm).await.expect("confirm");
    assert!(
        confirmation.take_message().is_some(),
        "unroutable again without the policy's alternate exchange"
    );
    close(conn).await;
}

/// Operator policies: administrators' caps over the policies users set. Where both set a
/// limit the smaller applies, to live queues at once; only limits may be set, and only by
/// administrators; definitions list them as runtime parameters.
async fn operator_policies(url: String, api_base: String, _metrics: String) {
    use reqwest::Method;
    use serde_json::json;
    let p = uniq("oppol");
    let (q, own) = (format!("{p}.q"), format!("{p}.own"));
    let pattern = format!("^{}\\.", regex_escape(&p));
    let op_path = format!("/api/operator-policies/%2F/{p}");
    let policy_path = format!("/api/policies/%2F/{p}");
    let policy = json!({"pattern": pattern, "apply-to": "queues",
        "definition": {"max-length": 5, "message-ttl": 600000}});
    assert_eq!(
        api(&api_base, Method::PUT, &policy_path, Some(policy))
            .await
            .0,
        201
    );
    let cap = json!({"pattern": pattern, "apply-to": "queues", "priority": 0,
        "definition": {"max-length": 2, "expires": 600000}});
    assert_eq!(
        api(&api_base, Method::PUT, &op_path, Some(cap.clone()))
            .await
            .0,
        201
    );
    assert_eq!(
        api(&api_base, Method::PUT, &op_path, Some(cap.clone()))
            .await
            .0,
        204
    );
    let (status, listed) = api(&api_base, Method::GET, &op_path, None).await;
    assert_eq!(status, 200);
    for key in ["pattern", "apply-to", "priority", "definition"] {
        assert_eq!(
            listed[key], cap[key],
            "{key} of the operator policy read back"
        );
    }
    let (status, all) = api(&api_base, Method::GET, "/api/operator-policies/%2F", None).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = all
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(names.contains(&p.as_str()), "{all}");
    // Only limits, and a bad value is named before an unknown key.
    for (definition, reason) in [
        (
            json!({"dead-letter-exchange": "dlx"}),
            // Not HTML-escaped, unlike a policy's.
            "Validation failed\n\n[{<<\"dead-letter-exchange\">>,<<\"dlx\">>}] are not recognised policy settings\n",
        ),
        (
            json!({"overflow": "drop-head", "max-length": -1}),
            "Validation failed\n\n-1 is not a valid maximum length\n",
        ),
    ] {
        let body = json!({"pattern": "x", "definition": definition});
        let path = format!("/api/operator-policies/%2F/{}", uniq("bad"));
        let (status, error) = api(&api_base, Method::PUT, &path, Some(body)).await;
        assert_eq!((status, error["reason"].as_str()), (400, Some(reason)));
    }
    // A policymaker may set policies, not operator policies.
    let maker = uniq("maker");
    let user_path = format!("/api/users/{maker}");
    add_user(&api_base, &maker, "policymaker", "%2F").await;
    let (status, refused) = api_as(
        &api_base,
        (&maker, "pw"),
        Method::PUT,
        &op_path,
        Some(cap.clone()),
    )
    .await;
    assert_eq!(
        (status, refused["reason"].as_str()),
        (401, Some("Not administrator user"))
    );
    assert_eq!(
        api(&api_base, Method::DELETE, &user_path, None).await.0,
        204
    );

    // The smaller of the two limits applies, and a queue's own smaller one still wins.
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    plain_queue(&ch, &q).await;
    for body in ["m0", "m1", "m2", "m3"] {
        publish(&ch, "", &q, body.as_bytes()).await;
    }
    assert_eq!(ready_count(&conn, &q).await, 2, "the operator's cap");
    declare_queue(
        &ch,
        &own,
        QueueDeclareOptions::default(),
        args(&[("x-max-length", AMQPValue::LongInt(1))]),
    )
    .await;
    for body in ["o0", "o1"] {
        publish(&ch, "", &own, body.as_bytes()).await;
    }
    assert_eq!(drain(&ch, &own).await, ["o1"]);
    let queue_path = format!("/api/queues/%2F/{q}");
    eventually("the queue lists both policies", STATS_LAG, || async {
        let (_, info) = api(&api_base, Method::GET, &queue_path, None).await;
        info["policy"] == json!(p)
            && info["operator_policy"] == json!(p)
            && info["effective_policy_definition"]
                == json!({"max-length": 2, "message-ttl": 600000, "expires": 600000})
    })
    .await;
    // A definitions export lists it as a runtime parameter.
    let (_, exported) = api(&api_base, Method::GET, "/api/definitions", None).await;
    let parameter = exported["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["component"] == "operator_policy" && e["name"] == json!(p))
        .cloned()
        .unwrap_or_default();
    assert_eq!(parameter["vhost"], "/", "{exported}");
    assert_eq!(parameter["value"]["pattern"], cap["pattern"], "{parameter}");
    assert_eq!(
        parameter["value"]["definition"], cap["definition"],
        "{parameter}"
    );

    // Cleared, the policy's own limit is back.
    assert_eq!(api(&api_base, Method::DELETE, &op_path, None).await.0, 204);
    assert_eq!(api(&api_base, Method::DELETE, &op_path, None).await.0, 404);
    // (RabbitMQ tells a live queue of a policy change asynchronously.)
    eventually("the operator's cap lifted", STEP, || async {
        publish(&ch, "", &q, b"n").await;
        ready_count(&conn, &q).await == 5
    })
    .await;
    for body in ["n0", "n1"] {
        publish(&ch, "", &q, body.as_bytes()).await;
    }
    assert_eq!(ready_count(&conn, &q).await, 5, "the policy's limit");
    assert_eq!(
        api(&api_base, Method::DELETE, &policy_path, None).await.0,
        204
    );
    close(conn).await;
}

/// The health checks probes and monitors call, as RabbitMQ answers them on a node of its
/// own without TLS listeners.
async fn health_checks(_url: String, api_base: String, _metrics: String) {
    use reqwest::Method;
    use serde_json::json;
    for (given, canonical) in [
        ("amqp091", "amqp"),
        ("AMQP0-9-1", "amqp"),
        ("management", "http"),
    ] {
        let path = format!("/api/health/checks/protocol-listener/{given}");
        assert_eq!(
            api(&api_base, Method::GET, &path, None).await,
            (200, json!({"status": "ok", "protocol": canonical})),
            "{path}"
        );
    }
    let (status, body) = api(
        &api_base,
        Method::GET,
        "/api/health/checks/protocol-listener/stomp",
        None,
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        (&body["status"], &body["reason"], &body["missing"]),
        (
            &json!("failed"),
            &json!("No active listener"),
            &json!("stomp")
        )
    );
    let protocols = body["protocols"].as_array().cloned().unwrap_or_default();
    for listening in ["amqp", "http"] {
        assert!(protocols.contains(&json!(listening)), "{body}");
    }
    for check in ["node-is-quorum-critical", "node-is-mirror-sync-critical"] {
        let path = format!("/api/health/checks/{check}");
        assert_eq!(
            api(&api_base, Method::GET, &path, None).await,
            (
                200,
                json!({"status": "ok", "reason": "single node cluster"})
            ),
            "{path}"
        );
    }
    for (period, answer) in [
        ("1/weeks", (200, json!({"status": "ok"}))),
        ("3/MONTHS", (200, json!({"status": "ok"}))),
        (
            "soon/days",
            (
                400,
                json!({"error": "bad_request", "reason": "Invalid expiration value."}),
            ),
        ),
        (
            "1/hours",
            (
                400,
                json!({"error": "bad_request",
                "reason": "Time unit not recognised. Supported units: days, weeks, months, years."}),
            ),
        ),
    ] {
        let path = format!("/api/health/checks/certificate-expiration/{period}");
        assert_eq!(
            api(&api_base, Method::GET, &path, None).await,
            answer,
            "{path}"
        );
    }
}

/// `text` with the regular-expression metacharacters the scenario's names may hold
/// escaped (names are made of `[a-z0-9.-]`).
fn regex_escape(text: &str) -> String {
    text.replace('.', "\\.")
}

/// The cluster operations RabbitMQ's API offers for queues and vhosts, which scripts
/// call after a node restart: synchronising a queue's mirrors (a queue without any has
/// nothing to do) and starting a vhost on a node (one that runs is left running). For
/// administrators only.
async fn queue_and_vhost_actions(url: String, api_base: String, _metrics: String) {
    use reqwest::Method;
    use serde_json::json;
    let conn = connect(&url).await;
    let ch = channel(&conn).await;
    let q = uniq("actions");
    step(
        "declare",
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("declare");
    let actions = format!("/api/queues/%2F/{q}/actions");
    for action in ["sync", "cancel_sync"] {
        assert_eq!(
            api(
                &api_base,
                Method::POST,
                &actions,
                Some(json!({ "action": action }))
            )
            .await,
            (204, serde_json::Value::Null),
            "{action}"
        );
    }
    let (status, body) = api(
        &api_base,
        Method::POST,
        &actions,
        Some(json!({"action": "rebalance"})),
    )
    .await;
    let bad_request = |reason: serde_json::Value| json!({"error": "bad_request", "reason": reason});
    assert_eq!(
        (status, body),
        (400, bad_request(json!(["unknown", "rebalance"])))
    );
    assert_eq!(
        api(&api_base, Method::POST, &actions, Some(json!({}))).await,
        (400, bad_request(json!("[{key_missing,action}]")))
    );
    // A queue that does not exist: refused (RabbitMQ's handler crashes, a 500).
    let missing = format!("/api/queues/%2F/{}/actions", uniq("missing"));
    let (status, _) = api(
        &api_base,
        Method::POST,
        &missing,
        Some(json!({"action": "sync"})),
    )
    .await;
    assert!(status >= 400, "{status}");

    let (_, overview) = api(&api_base, Method::GET, "/api/overview", None).await;
    let node = percent_encode(overview["node"].as_str().unwrap_or_default());
    let start = format!("/api/vhosts/%2F/start/{node}");
    assert_eq!(
        api(&api_base, Method::POST, &start, None).await,
        (204, serde_json::Value::Null)
    );
    let nowhere = format!("/api/vhosts/{}/start/{node}", uniq("nowhere"));
    let (status, body) = api(&api_base, Method::POST, &nowhere, None).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no_such_vhost")),
        "{body}"
    );
    let other = uniq("other@host");
    let elsewhere = format!("/api/vhosts/%2F/start/{other}");
    assert_eq!(
        api(&api_base, Method::POST, &elsewhere, None).await,
        (
            400,
            bad_request(json!(format!(
                "Request to node {other} failed with nodedown"
            )))
        )
    );

    let manager = uniq("actions-manager");
    add_user(&api_base, &manager, "management", "%2F").await;
    let as_manager = (manager.as_str(), "pw");
    let refused = json!({"error": "not_authorised", "reason": "Not administrator user"});
    for (path, body) in [(&actions, Some(json!({"action": "sync"}))), (&start, None)] {
        assert_eq!(
            api_as(&api_base, as_manager, Method::POST, path, body).await,
            (401, refused.clone()),
            "{path}"
        );
    }
    let deleted = format!("/api/users/{manager}");
    assert_eq!(api(&api_base, Method::DELETE, &deleted, None).await.0, 204);
    close(conn).await;
}

/// The unlabelled value of a Prometheus family in a scrape, if it has one.
fn sample_of(text: &str, family: &str) -> Option<f64> {
    let prefix = format!("{family} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// Churn as RabbitMQ counts it, for the dashboards that chart clients reconnecting or
/// redeclaring in a loop: connections and channels opened and closed and queues declared,
/// created and deleted are in the overview's `churn_rates` (each with its rate) and in the
/// `rabbitmq_*_opened_total` family of metrics; the Overview dashboard's channel
/// counters (`rabbitmq_channel_messages_published_total`, ...) and node gauges (file
/// descriptors, sockets, disk) are scraped too.
async fn churn_and_channel_metrics(url: String, api_base: String, metrics: String) {
    use reqwest::Method;
    let scrape = || async {
        step("scrape", async {
            reqwest::get(&metrics)
                .await
                .expect("scrape")
                .text()
                .await
                .expect("text")
        })
        .await
    };
    const CHURN: [(&str, &str, u64); 7] = [
        ("connection_created", "rabbitmq_connections_opened_total", 1),
        ("connection_closed", "rabbitmq_connections_closed_total", 1),
        ("channel_created", "rabbitmq_channels_opened_total", 2),
        ("channel_closed", "rabbitmq_channels_closed_total", 2),
        ("queue_declared", "rabbitmq_queues_declared_total", 2),
        ("queue_created", "rabbitmq_queues_created_total", 1),
        ("queue_deleted", "rabbitmq_queues_deleted_total", 1),
    ];
    let churn = || async {
        let (_, overview) = api(&api_base, Method::GET, "/api/overview", None).await;
        overview["churn_rates"].clone()
    };
    let before = churn().await;
    let scraped_before = scrape().await;
    let counted = |text: &str, family: &str| sample_of(text, family).unwrap_or(0.0);

    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    let other = channel(&conn).await;
    let q = uniq("churn");
    plain_queue(&ch, &q).await;
    plain_queue(&other, &q).await;
    for body in ["a", "b", "c"] {
        publish(&ch, "", &q, body.as_bytes()).await;
    }
    assert_eq!(drain(&ch, &q).await.len(), 3);
    // While the channels are open (RabbitMQ's channel counters are those of open
    // channels), the channel families count this traffic.
    let published_before = counted(&scraped_before, "rabbitmq_channel_messages_published_total");
    let deadline = Instant::now() + STATS_LAG;
    loop {
        let text = scrape().await;
        let published = counted(&text, "rabbitmq_channel_messages_published_total");
        let got = counted(&text, "rabbitmq_channel_get_total");
        if published >= published_before + 3.0 && got >= 3.0 {
            for family in [
                "rabbitmq_channel_messages_confirmed_total",
                "rabbitmq_channel_consumers",
                "rabbitmq_channel_messages_unacked",
                "rabbitmq_process_max_fds",
                "rabbitmq_process_open_tcp_sockets",
                "rabbitmq_process_max_tcp_sockets",
                "rabbitmq_disk_space_available_bytes",
                "rabbitmq_disk_space_available_limit_bytes",
            ] {
                assert!(sample_of(&text, family).is_some(), "{family} in:\n{text}");
            }
            assert!(
                counted(&text, "rabbitmq_process_max_fds") >= 1.0,
                "max fds in:\n{text}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "published {published} (from {published_before}), got {got}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    step("channel.close", other.close(200, "done".into()))
        .await
        .expect("channel.close");
    step(
        "queue.delete",
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()),
    )
    .await
    .expect("queue.delete");
    close(conn).await;

    // Counted in the overview (with rates) and the metrics; other clients of a shared
    // node may add to them, never take away.
    let deadline = Instant::now() + STATS_LAG;
    loop {
        let after = churn().await;
        let text = scrape().await;
        let short: Vec<String> = CHURN
            .iter()
            .filter(|(key, family, at_least)| {
                let was = before[*key].as_u64().unwrap_or(0);
                let now = after[*key].as_u64().unwrap_or(0);
                let was_scraped = counted(&scraped_before, family);
                now < was + at_least
                    || !after[format!("{key}_details")]["rate"].is_number()
                    || counted(&text, family) < was_scraped + *at_least as f64
            })
            .map(|(key, _, _)| key.to_string())
            .collect();
        if short.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{short:?} not counted: {before} then {after}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The query parameters that shape any listing, as `rabbitmqadmin list queues name
/// messages`, `-S`/`-R` and paging dashboards send them: `columns` (dotted paths for
/// nested keys), `sort` and `sort_reverse`, and `page`/`page_size` with a `name` filter
/// (a substring, or a regular expression with `use_regex`), with RabbitMQ's refusals.
async fn listing_parameters(url: String, api_base: String, _metrics: String) {
    use reqwest::Method;
    use serde_json::json;
    let (_vhost, v) = add_vhost(&api_base, "listing").await;
    let conn = connect(&url.replace("/%2f", &format!("/{v}"))).await;
    let ch = confirmed(&conn).await;
    // Queues holding 0, 3, 1, 2 messages, and one whose name does not match the filter.
    let counts = [
        ("pg-a", 0),
        ("pg-b", 3),
        ("pg-c", 1),
        ("pg-d", 2),
        ("other", 0),
    ];
    for (name, n) in counts {
        plain_queue(&ch, name).await;
        for i in 0..n {
            publish(&ch, "", name, format!("{i}").as_bytes()).await;
        }
    }
    let listing = |query: &str| format!("/api/queues/{v}?{query}");
    // Sorted by message count, largest first, the names alone; RabbitMQ's counts lag.
    let by_count = listing("columns=name,messages&sort=messages&sort_reverse=true");
    let expected = json!([
        {"name": "pg-b", "messages": 3},
        {"name": "pg-d", "messages": 2},
        {"name": "pg-c", "messages": 1},
        {"name": "pg-a", "messages": 0},
        {"name": "other", "messages": 0},
    ]);
    let deadline = Instant::now() + STATS_LAG;
    loop {
        let (status, got) = api(&api_base, Method::GET, &by_count, None).await;
        if (status, &got) == (200, &expected) {
            break;
        }
        assert!(Instant::now() < deadline, "{by_count}: {status} {got}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nested keys by dotted path; an object answer is shaped too.
    let (_, one) = api(
        &api_base,
        Method::GET,
        &format!("/api/queues/{v}/pg-b?columns=name,arguments.x-none,vhost"),
        None,
    )
    .await;
    assert_eq!(
        one,
        json!({"name": "pg-b", "arguments": {}, "vhost": _vhost})
    );
    // A page of the names matching a filter, in name order.
    let (status, page) = api(
        &api_base,
        Method::GET,
        &listing("page=2&page_size=2&name=PG-&columns=name"),
        None,
    )
    .await;
    assert_eq!(
        (status, page),
        (
            200,
            json!({"total_count": 5, "item_count": 2, "filtered_count": 4, "page": 2,
                   "page_size": 2, "page_count": 2,
                   "items": [{"name": "pg-c"}, {"name": "pg-d"}]})
        )
    );
    let (_, regex) = api(
        &api_base,
        Method::GET,
        &listing("page=1&name=%5Epg-%5Bab%5D%24&use_regex=true&columns=name"),
        None,
    )
    .await;
    assert_eq!(regex["items"], json!([{"name": "pg-a"}, {"name": "pg-b"}]));
    for (query, reason) in [
        (
            "page=0",
            "Invalid pagination parameters: page number 0, page size undefined",
        ),
        (
            "page=1&page_size=501",
            "Invalid pagination parameters: page number 1, page size 501",
        ),
    ] {
        let (status, body) = api(&api_base, Method::GET, &listing(query), None).await;
        assert_eq!(
            (status, &body["error"], &body["reason"]),
            (400, &json!("invalid_pagination_parameters"), &json!(reason)),
            "{query}: {body}"
        );
    }
    close(conn).await;
    let gone = format!("/api/vhosts/{v}");
    assert_eq!(api(&api_base, Method::DELETE, &gone, None).await.0, 204);
}

/// A vhost's metadata as RabbitMQ 3.10 keeps it: a description and tags, shown at the
/// top and in `metadata`, changed by a later PUT; and a default queue type, which makes a
/// queue declared there without `x-queue-type` a quorum queue when it can be one
/// (durable, not exclusive, not auto-delete), redeclared as it was without a mismatch,
/// while an exclusive queue stays classic.
async fn vhost_metadata(url: String, api_base: String, _metrics: String) {
    use reqwest::Method;
    use serde_json::json;
    let vhost = uniq("described");
    let v = percent_encode(&vhost);
    let path = format!("/api/vhosts/{v}");
    let made =
        json!({"description": "orders", "tags": "team-a, billing", "defaultqueuetype": "quorum"});
    assert_eq!(api(&api_base, Method::PUT, &path, Some(made)).await.0, 201);
    let (status, shown) = api(&api_base, Method::GET, &path, None).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(
        (
            &shown["description"],
            &shown["tags"],
            &shown["default_queue_type"],
            &shown["metadata"]
        ),
        (
            &json!("orders"),
            &json!(["team-a", "billing"]),
            &json!("quorum"),
            &json!({"description": "orders", "tags": ["team-a", "billing"],
                    "default_queue_type": "quorum"})
        ),
        "{shown}"
    );

    let conn = connect(&url.replace("/%2f", &format!("/{v}"))).await;
    let ch = channel(&conn).await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    declare_queue(&ch, "orders", durable, FieldTable::default()).await;
    // Declared again as before: the vhost's default is applied the same way.
    declare_queue(&ch, "orders", durable, FieldTable::default()).await;
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    declare_queue(&ch, "scratch", exclusive, FieldTable::default()).await;
    for (queue, kind) in [("orders", "quorum"), ("scratch", "classic")] {
        let one = format!("/api/queues/{v}/{queue}");
        let deadline = Instant::now() + STATS_LAG;
        loop {
            let (status, q) = api(&api_base, Method::GET, &one, None).await;
            if status == 200 {
                assert_eq!(q["type"], kind, "{q}");
                break;
            }
            assert!(Instant::now() < deadline, "{one}: {status} {q}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // A later PUT sets the description and tags; the default queue type stays.
    let changed = json!({"description": "orders, v2", "tags": ["billing"]});
    assert_eq!(
        api(&api_base, Method::PUT, &path, Some(changed)).await.0,
        204
    );
    let (_, shown) = api(&api_base, Method::GET, &path, None).await;
    assert_eq!(
        (
            &shown["description"],
            &shown["tags"],
            &shown["default_queue_type"]
        ),
        (&json!("orders, v2"), &json!(["billing"]), &json!("quorum")),
        "{shown}"
    );
    close(conn).await;
    assert_eq!(api(&api_base, Method::DELETE, &path, None).await.0, 204);
}

/// The value of a trace copy's header, if it has one.
fn trace_header<'a>(d: &'a Delivery, name: &str) -> Option<&'a AMQPValue> {
    d.properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(name))
}

/// RabbitMQ's firehose, turned on for a vhost through the API (`"tracing": true`): a
/// message published there is copied to `amq.rabbitmq.trace` as `publish.EXCHANGE` and
/// its delivery as `deliver.QUEUE`, each with the body and RabbitMQ's headers (where it
/// came from and went, the publisher's properties, the connection, channel and user);
/// turned off, nothing more is copied.
async fn firehose_tracing(url: String, api_base: String, _metrics: String) {
    use reqwest::Method;
    use serde_json::json;
    let (vhost, v) = add_vhost(&api_base, "traced").await;
    let path = format!("/api/vhosts/{v}");
    let on = json!({"tracing": true});
    assert_eq!(api(&api_base, Method::PUT, &path, Some(on)).await.0, 204);
    let (_, shown) = api(&api_base, Method::GET, &path, None).await;
    assert_eq!(shown["tracing"], true, "{shown}");

    let conn = connect(&url.replace("/%2f", &format!("/{v}"))).await;
    let ch = confirmed(&conn).await;
    plain_queue(&ch, "traces").await;
    step(
        "queue.bind",
        ch.queue_bind(
            "traces".into(),
            "amq.rabbitmq.trace".into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("bind the trace queue");
    plain_queue(&ch, "work").await;
    let mut headers = FieldTable::default();
    headers.insert("k".into(), lstr("v"));
    let properties = BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_headers(headers);
    let confirm = step(
        "publish",
        ch.basic_publish(
            "".into(),
            "work".into(),
            BasicPublishOptions::default(),
            b"hello",
            properties,
        ),
    )
    .await
    .expect("publish");
    step("confirm", confirm).await.expect("confirm");
    let got = step(
        "basic.get",
        ch.basic_get("work".into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("basic.get");
    assert!(got.is_some_and(|m| m.delivery.data == b"hello"));

    // The copies, in order: the publish, then the delivery.
    let mut copies = Vec::new();
    let deadline = Instant::now() + STEP;
    while copies.len() < 2 {
        let got = step(
            "basic.get traces",
            ch.basic_get("traces".into(), BasicGetOptions { no_ack: true }),
        )
        .await
        .expect("basic.get traces");
        match got {
            Some(m) => copies.push(m.delivery),
            None => {
                assert!(Instant::now() < deadline, "{} copies", copies.len());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let (published, deliver) = (&copies[0], &copies[1]);
    assert_eq!(
        (published.routing_key.as_str(), deliver.routing_key.as_str()),
        ("publish.", "deliver.work")
    );
    for copy in [published, deliver] {
        assert_eq!(copy.exchange.as_str(), "amq.rabbitmq.trace");
        assert_eq!(copy.data, b"hello");
        assert_eq!(trace_header(copy, "exchange_name"), Some(&lstr("")));
        assert_eq!(trace_header(copy, "vhost"), Some(&lstr(&vhost)));
        assert_eq!(trace_header(copy, "user"), Some(&lstr("guest")));
        assert_eq!(
            trace_header(copy, "channel"),
            Some(&AMQPValue::LongInt(1)),
            "{copy:?}"
        );
        let Some(AMQPValue::FieldArray(keys)) = trace_header(copy, "routing_keys") else {
            panic!("no routing_keys in {copy:?}");
        };
        assert_eq!(keys.as_slice(), [lstr("work")]);
        let Some(AMQPValue::FieldTable(props)) = trace_header(copy, "properties") else {
            panic!("no properties in {copy:?}");
        };
        assert_eq!(props.inner().get("content_type"), Some(&lstr("text/plain")));
        let Some(AMQPValue::FieldTable(given)) = props.inner().get("headers") else {
            panic!("no headers in the properties of {copy:?}");
        };
        assert_eq!(given.inner().get("k"), Some(&lstr("v")));
        assert!(
            matches!(trace_header(copy, "connection"), Some(AMQPValue::LongString(c)) if c.to_string().contains(" -> ")),
            "{copy:?}"
        );
        assert!(matches!(
            trace_header(copy, "node"),
            Some(AMQPValue::LongString(_))
        ));
    }
    let Some(AMQPValue::FieldArray(routed)) = trace_header(published, "routed_queues") else {
        panic!("no routed_queues in {published:?}");
    };
    assert_eq!(routed.as_slice(), [lstr("work")]);
    assert_eq!(
        trace_header(deliver, "redelivered"),
        Some(&AMQPValue::LongInt(0))
    );

    // Off again: nothing more is copied.
    let off = json!({"tracing": false});
    assert_eq!(api(&api_base, Method::PUT, &path, Some(off)).await.0, 204);
    publish(&ch, "", "work", b"quiet").await;
    assert_eq!(drain(&ch, "work").await, ["quiet"]);
    assert!(drain(&ch, "traces").await.is_empty());
    close(conn).await;
    assert_eq!(api(&api_base, Method::DELETE, &path, None).await.0, 204);
}

/// One protocol's counters in a `/api/auth/attempts/NODE` answer: total, failed,
/// succeeded (zeros when the protocol is not listed).
fn attempts_of(list: &serde_json::Value, protocol: &str) -> [u64; 3] {
    let found = list
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["protocol"] == protocol);
    let count = |key: &str| found.and_then(|a| a[key].as_u64()).unwrap_or(0);
    [
        count("auth_attempts"),
        count("auth_attempts_failed"),
        count("auth_attempts_succeeded"),
    ]
}

/// The value of a Prometheus sample labelled with `protocol` alone, if present.
fn protocol_sample(text: &str, family: &str, protocol: &str) -> Option<f64> {
    let prefix = format!("{family}{{protocol=\"{protocol}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// Login attempts are counted per protocol as RabbitMQ counts them, for the alerts on
/// password guessing: a refused AMQP login is a failed `amqp091` attempt, a management
/// request with a wrong password a failed `http` one; the counts are in the API (for
/// monitors) and the Prometheus metrics, and an operator can reset them.
async fn auth_attempts(url: String, api_base: String, metrics: String) {
    use reqwest::Method;
    use serde_json::json;
    let (_, overview) = api(&api_base, Method::GET, "/api/overview", None).await;
    let node = overview["node"].as_str().unwrap_or_default().to_string();
    let path = format!("/api/auth/attempts/{}", percent_encode(&node));
    let conn = connect(&url).await;
    close(conn).await;
    let (status, before) = api(&api_base, Method::GET, &path, None).await;
    assert_eq!(status, 200, "{before}");
    let [_, failed_before, succeeded_before] = attempts_of(&before, "amqp091");

    let wrong = url.replace("guest:guest", "guest:wrong");
    let refused = step(
        "connect with a wrong password",
        Connection::connect(&wrong, ConnectionProperties::default()),
    )
    .await;
    expect_code("wrong password", refused, 403);
    let conn = connect(&url).await;
    close(conn).await;
    let (status, _) = api_as(&api_base, ("guest", "wrong"), Method::GET, &path, None).await;
    assert_eq!(status, 401);

    let (_, after) = api(&api_base, Method::GET, &path, None).await;
    let [total, failed, succeeded] = attempts_of(&after, "amqp091");
    assert!(failed > failed_before, "{before} then {after}");
    assert!(succeeded > succeeded_before, "{before} then {after}");
    assert_eq!(total, failed + succeeded, "{after}");
    let [http_total, http_failed, http_succeeded] = attempts_of(&after, "http");
    assert!(http_failed >= 1 && http_succeeded >= 1, "{after}");
    assert_eq!(http_total, http_failed + http_succeeded, "{after}");
    for entry in after.as_array().into_iter().flatten() {
        let mut keys: Vec<&str> = entry
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "auth_attempts",
                "auth_attempts_failed",
                "auth_attempts_succeeded",
                "protocol"
            ],
            "{after}"
        );
    }

    let text = step("scrape", async {
        reqwest::get(&metrics)
            .await
            .expect("scrape")
            .text()
            .await
            .expect("text")
    })
    .await;
    for family in [
        "rabbitmq_auth_attempts_total",
        "rabbitmq_auth_attempts_failed_total",
        "rabbitmq_auth_attempts_succeeded_total",
    ] {
        assert!(
            protocol_sample(&text, family, "amqp091").is_some_and(|n| n >= 1.0),
            "{family} in:\n{text}"
        );
    }

    // Sources are tracked only when the broker is configured to.
    let (status, sources) = api(&api_base, Method::GET, &format!("{path}/source"), None).await;
    assert_eq!((status, sources), (200, json!([])));
    let elsewhere = format!("/api/auth/attempts/{}", uniq("nowhere"));
    assert_eq!(api(&api_base, Method::GET, &elsewhere, None).await.0, 404);
    let manager = uniq("attempts-manager");
    add_user(&api_base, &manager, "management", "%2F").await;
    let as_manager = (manager.as_str(), "pw");
    assert_eq!(
        api_as(&api_base, as_manager, Method::GET, &path, None).await,
        (
            401,
            json!({"error": "not_authorised", "reason": "Not monitor user"})
        )
    );

    // Reset: counted from zero again (other logins may follow at once on a shared node,
    // but far fewer than all those since it started).
    assert_eq!(api(&api_base, Method::DELETE, &path, None).await.0, 204);
    let (_, reset) = api(&api_base, Method::GET, &path, None).await;
    let [total_after_reset, _, _] = attempts_of(&reset, "amqp091");
    assert!(total_after_reset < total, "{after} then {reset}");
    let deleted = format!("/api/users/{manager}");
    assert_eq!(api(&api_base, Method::DELETE, &deleted, None).await.0, 204);
}

/// An operator closes a client's connection through the API: the client is told with
/// 320 CONNECTION_FORCED and the operator's reason.
async fn management_closes_connections(url: String, api_base: String, _metrics: String) {
    use reqwest::Method;
    let given = uniq("named");
    let properties = ConnectionProperties::default().with_connection_name(given.as_str().into());
    let conn = step("connect", Connection::connect(&url, properties))
        .await
        .expect("connect");
    let mut events = Box::pin(conn.events_listener());
    let path = connection_path(&api_base, &given).await;
    let (status, one) = api(&api_base, Method::GET, &path, None).await;
    assert_eq!((status, one["user"].as_str()), (200, Some("guest")));
    assert_eq!(one["client_properties"]["connection_name"], given.as_str());
    // All the client said about itself, as tools that group connections by client read it.
    let client = &one["client_properties"];
    assert_eq!(client["product"], "lapin", "{client}");
    assert_eq!(
        client["capabilities"]["consumer_cancel_notify"], true,
        "{client}"
    );

    let response = step(
        "DELETE the connection",
        reqwest::Client::new()
            .delete(format!("{api_base}{path}"))
            .basic_auth("guest", Some("guest"))
            .header("X-Reason", "maintenance window")
            .send(),
    )
    .await
    .expect("request");
    assert_eq!(response.status().as_u16(), 204);
    let reason = broker_closed(&mut events).await;
    let e = expect_code("closed via the API", Err::<(), _>(reason), 320);
    expect_text(&e, "CONNECTION_FORCED - maintenance window");
    let missing = format!(
        "/api/connections/{}",
        percent_encode("127.0.0.1:1 -> 127.0.0.1:2")
    );
    assert_eq!(api(&api_base, Method::DELETE, &missing, None).await.0, 404);
}

/// `/api/connections/NAME` of the connection whose client gave it `given` as its name,
/// waiting for it to be listed (RabbitMQ lists connections with a lag).
async fn connection_path(api_base: &str, given: &str) -> String {
    let deadline = Instant::now() + STATS_LAG;
    loop {
        let (_, list) = api(api_base, reqwest::Method::GET, "/api/connections", None).await;
        let found = list
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["user_provided_name"] == given)
            .and_then(|c| c["name"].as_str());
        if let Some(name) = found {
            return format!("/api/connections/{}", percent_encode(name));
        }
        assert!(Instant::now() < deadline, "connection {given} not listed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A path segment with everything but unreserved characters percent-encoded.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Metric families RabbitMQ's Prometheus plugin exposes that dashboards and alerts use.
const PROMETHEUS_FAMILIES: &[&str] = &[
    "rabbitmq_connections",
    "rabbitmq_channels",
    "rabbitmq_consumers",
    "rabbitmq_queues",
    "rabbitmq_queue_messages_ready",
    "rabbitmq_queue_messages_unacked",
    "rabbitmq_queue_messages",
    "rabbitmq_queue_messages_bytes",
    "rabbitmq_queue_consumers",
    "rabbitmq_queue_messages_published_total",
    "rabbitmq_global_messages_received_total",
    "rabbitmq_global_messages_routed_total",
    "rabbitmq_global_messages_confirmed_total",
    "rabbitmq_global_messages_delivered_total",
    "rabbitmq_global_messages_acknowledged_total",
    "rabbitmq_global_messages_redelivered_total",
    "rabbitmq_global_messages_unroutable_dropped_total",
    "rabbitmq_global_messages_unroutable_returned_total",
    "rabbitmq_process_resident_memory_bytes",
    "rabbitmq_resident_memory_limit_bytes",
    "rabbitmq_alarms_memory_used_watermark",
    "rabbitmq_build_info",
    "rabbitmq_identity_info",
];

/// The plugin's endpoints: the families dashboards read, and per-object queue series.
async fn prometheus_metrics(url: String, _api: String, metrics: String) {
    let scrape = |path: &'static str| {
        let metrics = metrics.clone();
        async move {
            let response = step(path, reqwest::get(format!("{metrics}{path}")))
                .await
                .unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(response.status().as_u16(), 200, "{path}");
            step(path, response.text()).await.expect("text")
        }
    };
    let text = scrape("").await;
    for family in PROMETHEUS_FAMILIES {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("# TYPE {family} "))),
            "no {family} in:\n{text}"
        );
    }
    let conn = connect(&url).await;
    let ch = confirmed(&conn).await;
    let q = uniq("metrics");
    plain_queue(&ch, &q).await;
    for body in ["a", "b", "c"] {
        publish(&ch, "", &q, body.as_bytes()).await;
    }
    assert_eq!(drain(&ch, &q).await.len(), 3);
    publish(&ch, "", &q, b"waiting").await;
    // The queue's own series, its one message of 7 bytes (RabbitMQ's come from statistics that lag by seconds).
    let ready = format!("rabbitmq_queue_messages_ready{{vhost=\"/\",queue=\"{q}\"}} 1");
    let bytes = format!("rabbitmq_queue_messages_bytes{{vhost=\"/\",queue=\"{q}\"}} 7");
    let deadline = Instant::now() + STATS_LAG;
    loop {
        // Label order is the exporter's; compare series with labels sorted.
        let per_object = normalise_labels(&scrape("/per-object").await);
        if per_object.contains(&normalise_labels(&ready))
            && per_object.contains(&normalise_labels(&bytes))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no {ready} and {bytes} in:\n{per_object}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    close(conn).await;
}

/// Metric lines with each line's labels in name order.
fn normalise_labels(text: &str) -> String {
    text.lines()
        .map(|line| {
            let (Some(open), Some(close)) = (line.find('{'), line.find('}')) else {
                return line.to_string();
            };
            let mut labels: Vec<&str> = line[open + 1..close].split(',').collect();
            labels.sort_unstable();
            format!(
                "{}{{{}}}{}",
                &line[..open],
                labels.join(","),
                &line[close + 1..]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Users, vhosts and permissions made through the API are what AMQP clients get: a new
/// user logs in to a new vhost within its permissions, loses it with them, and is
/// disconnected with the vhost.
async fn management_administers_access(url: String, api_base: String, _metrics: String) {
    use reqwest::Method;
    use serde_json::json;
    let (user, vhost) = (uniq("user"), uniq("vhost"));
    let user_path = format!("/api/users/{user}");
    let vhost_path = format!("/api/vhosts/{}", percent_encode(&vhost));
    let grant_path = format!("/api/permissions/{}/{user}", percent_encode(&vhost));
    let created = json!({"password": "secret", "tags": "monitoring"});
    assert_eq!(
        api(&api_base, Method::PUT, &user_path, Some(created))
            .await
            .0,
        201
    );
    let changed = json!({"password": "pw", "tags": ""});
    assert_eq!(
        api(&api_base, Method::PUT, &user_path, Some(changed))
            .await
            .0,
        204
    );
    assert_eq!(
        api(&api_base, Method::PUT, &vhost_path, Some(json!({})))
            .await
            .0,
        201
    );
    assert_eq!(
        api(&api_base, Method::PUT, &vhost_path, Some(json!({})))
            .await
            .0,
        204
    );
    // The creator of a vhost gets every permission there.
    let creator = format!("/api/permissions/{}/guest", percent_encode(&vhost));
    let (status, guest) = api(&api_base, Method::GET, &creator, None).await;
    assert_eq!((status, guest["configure"].as_str()), (200, Some(".*")));
    let own = json!({"configure": "^own\\.", "write": ".*", "read": ".*"});
    assert_eq!(
        api(&api_base, Method::PUT, &grant_path, Some(own)).await.0,
        201
    );
    let (status, refused) = api(
        &api_base,
        Method::PUT,
        &format!("/api/permissions/{}/nobody", percent_encode(&vhost)),
        Some(json!({"configure": ".*", "write": ".*", "read": ".*"})),
    )
    .await;
    assert_eq!(
        (status, refused["reason"].as_str()),
        (400, Some("vhost_or_user_not_found"))
    );

    let user_url = |password: &str| {
        let base = url.rsplit_once('@').map_or(url.as_str(), |(_, host)| host);
        let host = base.split('/').next().unwrap_or(base);
        format!("amqp://{user}:{password}@{host}/{}", percent_encode(&vhost))
    };
    let conn = connect(&user_url("pw")).await;
    let ch = channel(&conn).await;
    plain_queue(&ch, "own.q").await;
    let other = declare_refused(&conn, FieldTable::default()).await;
    let e = expect_code("a queue outside the configure pattern", other, 403);
    expect_text(&e, "ACCESS_REFUSED - access to queue");
    let wrong = Connection::connect(&user_url("secret"), ConnectionProperties::default()).await;
    assert!(wrong.is_err(), "the old password still logs in");

    // Changed permissions apply to the connection already open.
    let changed = json!({"configure": "^changed\\.", "write": ".*", "read": ".*"});
    assert_eq!(
        api(&api_base, Method::PUT, &grant_path, Some(changed))
            .await
            .0,
        204
    );
    let open_channel = channel(&conn).await;
    plain_queue(&open_channel, "changed.q").await;
    let ch = channel(&conn).await;
    let before = step(
        "queue.declare own.q2",
        ch.queue_declare(
            "own.q2".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    let e = expect_code(
        "a queue the changed permissions no longer allow",
        before,
        403,
    );
    expect_text(&e, "ACCESS_REFUSED - access to queue 'own.q2'");

    // Without permissions, nothing on the open connection, no new connection to the vhost.
    assert_eq!(
        api(&api_base, Method::DELETE, &grant_path, None).await.0,
        204
    );
    assert_eq!(
        api(&api_base, Method::DELETE, &grant_path, None).await.0,
        404
    );
    let ch = channel(&conn).await;
    let revoked = step(
        "queue.declare after the revoke",
        ch.queue_declare(
            "changed.q2".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    let e = expect_code("a declare after the revoke", revoked, 403);
    expect_text(&e, "ACCESS_REFUSED - access to queue 'changed.q2'");
    let refused = step(
        "connect without permissions",
        Connection::connect(&user_url("pw"), ConnectionProperties::default()),
    )
    .await;
    let e = expect_code("open a vhost without permissions", refused.map(|_| ()), 530);
    expect_text(
        &e,
        &format!("NOT_ALLOWED - access to vhost '{vhost}' refused for user '{user}'"),
    );

    // Deleting the vhost disconnects its clients.
    let mut events = Box::pin(conn.events_listener());
    assert_eq!(
        api(&api_base, Method::DELETE, &vhost_path, None).await.0,
        204
    );
    let reason = broker_closed(&mut events).await;
    // Both brokers send connection.close; RabbitMQ closes the socket right after it, so
    // lapin sometimes reports the reset first. A close it did read must be this one.
    // RabbitMQ races its own vhost shutdown and sometimes says "is down" instead.
    if let lapin::ErrorKind::ProtocolError(amqp) = reason.kind() {
        assert_eq!(amqp.get_id(), 320, "{reason}");
        let text = amqp.get_message().as_str();
        assert!(
            [" is deleted", " is down"]
                .iter()
                .any(|end| text == format!("CONNECTION_FORCED - vhost '{vhost}'{end}")),
            "{text}"
        );
    }
    disconnected(&conn, "a client of a deleted vhost").await;

    // Deleting a user disconnects it too.
    assert_eq!(
        api(&api_base, Method::PUT, &vhost_path, Some(json!({})))
            .await
            .0,
        201
    );
    let all = json!({"configure": ".*", "write": ".*", "read": ".*"});
    assert_eq!(
        api(&api_base, Method::PUT, &grant_path, Some(all)).await.0,
        201
    );
    // RabbitMQ answers connection.open before it tracks the connection, and a user's
    // deletion closes only tracked connections: wait until the broker lists it.
    let given = uniq("deleted-user");
    let properties = ConnectionProperties::default().with_connection_name(given.as_str().into());
    let conn = step("connect", Connection::connect(&user_url("pw"), properties))
        .await
        .expect("connect");
    let mut events = Box::pin(conn.events_listener());
    connection_path(&api_base, &given).await;
    assert_eq!(
        api(&api_base, Method::DELETE, &user_path, None).await.0,
        204
    );
    let reason = broker_closed(&mut events).await;
    if let lapin::ErrorKind::ProtocolError(amqp) = reason.kind() {
        assert_eq!(amqp.get_id(), 320, "{reason}");
        assert_eq!(
            amqp.get_message().as_str(),
            format!("CONNECTION_FORCED - user '{user}' is deleted")
        );
    }
    disconnected(&conn, "a deleted user").await;
    assert_eq!(
        api(&api_base, Method::DELETE, &user_path, None).await.0,
        404
    );
    assert_eq!(
        api(&api_base, Method::DELETE, &vhost_path, None).await.0,
        204
    );
    assert_eq!(
        api(&api_base, Method::DELETE, &vhost_path, None).await.0,
        404
    );
}

/// RabbitMQ's topic authorisation: routing keys a user may publish and bind with on a
/// topic exchange, set through the API; other exchanges are not restricted. The API's own
/// publishes, binds and unbinds meet the same rules.
async fn topic_permissions(url: String, api_base: String, _metrics: String) {
    use reqwest::Method;
    use serde_json::json;
    let user = uniq("topics");
    let user_path = format!("/api/users/{user}");
    let topics = format!("/api/topic-permissions/%2F/{user}");
    add_user(&api_base, &user, "management", "%2F").await;
    let first = json!({"exchange": "amq.topic", "write": "^z", "read": "^b\\."});
    assert_eq!(
        api(&api_base, Method::PUT, &topics, Some(first)).await.0,
        201
    );
    let rule = json!({"exchange": "amq.topic", "write": "^a\\.", "read": "^b\\."});
    assert_eq!(
        api(&api_base, Method::PUT, &topics, Some(rule)).await.0,
        204
    );
    let (status, listed) = api(&api_base, Method::GET, &topics, None).await;
    assert_eq!(status, 200);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["write"], "^a\\.");

    let base = url.rsplit_once('@').map_or(url.as_str(), |(_, host)| host);
    let conn = connect(&format!("amqp://{user}:pw@{base}")).await;
    let mut events = Box::pin(conn.events_listener());
    let ch = confirmed(&conn).await;
    publish(&ch, "amq.topic", "a.allowed", b"ok").await;
    let other = uniq("other-topic");
    declare_exchange(&ch, &other, ExchangeKind::Topic).await;
    publish(&ch, &other, "z.unrestricted", b"ok").await;
    let q = uniq("topic-q");
    plain_queue(&ch, &q).await;
    bind(&ch, &q, "amq.topic", "b.#", FieldTable::default()).await;

    let refused = channel(&conn).await;
    let _ = step(
        "publish with a refused key",
        refused.basic_publish(
            "amq.topic".into(),
            "z.refused".into(),
            BasicPublishOptions::default(),
            b"no",
            BasicProperties::default(),
        ),
    )
    .await;
    channel_closed_with(
        &refused,
        &mut events,
        403,
        &format!(
            "ACCESS_REFUSED - access to topic 'z.refused' in exchange 'amq.topic' in vhost '/' refused for user '{user}'"
        ),
    )
    .await;
    let refused = channel(&conn).await;
    let bound = step(
        "bind with a refused key",
        refused.queue_bind(
            q.as_str().into(),
            "amq.topic".into(),
            "c.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    let e = expect_code("bind with a refused key", bound, 403);
    expect_text(
        &e,
        &format!(
            "ACCESS_REFUSED - access to topic 'c.#' in exchange 'amq.topic' in vhost '/' refused for user '{user}'"
        ),
    );

    // Through the management API, as the same user.
    let as_user = (user.as_str(), "pw");
    let message = |key: &str| json!({"properties": {}, "routing_key": key, "payload": "x", "payload_encoding": "string"});
    let publish_path = "/api/exchanges/%2F/amq.topic/publish";
    let (status, body) = api_as(
        &api_base,
        as_user,
        Method::POST,
        publish_path,
        Some(message("a.api")),
    )
    .await;
    assert_eq!((status, &body["routed"]), (200, &json!(false)), "{body}");
    let (status, body) = api_as(
        &api_base,
        as_user,
        Method::POST,
        publish_path,
        Some(message("z.api")),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["reason"],
        format!(
            "403 ACCESS_REFUSED - access to topic 'z.api' in exchange 'amq.topic' in vhost '/' refused for user '{user}'"
        )
    );
    let unrestricted = format!("/api/exchanges/%2F/{other}/publish");
    let (status, body) = api_as(
        &api_base,
        as_user,
        Method::POST,
        &unrestricted,
        Some(message("z.api")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let bindings = format!("/api/bindings/%2F/e/amq.topic/q/{q}");
    let (status, body) = api_as(
        &api_base,
        as_user,
        Method::POST,
        &bindings,
        Some(json!({"routing_key": "c.api"})),
    )
    .await;
    assert_eq!(
        (status, &body["reason"]),
        (401, &json!("Access refused.")),
        "{body}"
    );
    let (status, _) = api_as(
        &api_base,
        as_user,
        Method::POST,
        &bindings,
        Some(json!({"routing_key": "b.api"})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = api(
        &api_base,
        Method::POST,
        &bindings,
        Some(json!({"routing_key": "c.guest"})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = api_as(
        &api_base,
        as_user,
        Method::DELETE,
        &format!("{bindings}/c.guest"),
        None,
    )
    .await;
    assert_eq!(status, 401, "unbinding a key the user may not bind with");
    let (status, _) = api_as(
        &api_base,
        as_user,
        Method::DELETE,
        &format!("{bindings}/b.api"),
        None,
    )
    .await;
    assert_eq!(status, 204);

    // Cleared, they stop applying to the connection already open.
    assert_eq!(api(&api_base, Method::DELETE, &topics, None).await.0, 204);
    assert_eq!(api(&api_base, Method::DELETE, &topics, None).await.0, 404);
    let ch = confirmed(&conn).await;
    publish(&ch, "amq.topic", "z.now-allowed", b"ok").await;
    close(conn).await;
    assert_eq!(
        api(&api_base, Method::DELETE, &user_path, None).await.0,
        204
    );
}

/// User and vhost limits set through the API, and enforced as RabbitMQ enforces them:
/// connections per vhost and per user at connection.open (530), queues per vhost at
/// queue.declare (406), channels per user at channel.open (530, closing the connection).
async fn limits(url: String, api_base: String, _metrics: String) {
    use reqwest::Method;
    use serde_json::json;
    let user = uniq("limited");
    let (vhost, v) = add_vhost(&api_base, "limited-vhost").await;
    let user_path = format!("/api/users/{user}");
    let vhost_path = format!("/api/vhosts/{v}");
    let vhost_limits = format!("/api/vhost-limits/{v}");
    let user_limits = format!("/api/user-limits/{user}");
    let value = |n: i64| Some(json!({ "value": n }));
    add_user(&api_base, &user, "management", &percent_encode(&vhost)).await;
    let (status, none) = api(&api_base, Method::GET, &vhost_limits, None).await;
    assert_eq!((status, none), (200, json!([])));

    // Per vhost.
    let connections = format!("{vhost_limits}/max-connections");
    let queues = format!("{vhost_limits}/max-queues");
    assert_eq!(
        api(&api_base, Method::PUT, &connections, value(1)).await.0,
        204
    );
    assert_eq!(api(&api_base, Method::PUT, &queues, value(1)).await.0, 204);
    let (status, listed) = api(&api_base, Method::GET, &vhost_limits, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        listed,
        json!([{"vhost": vhost, "value": {"max-connections": 1, "max-queues": 1}}])
    );
    let (status, all_listed) = api(&api_base, Method::GET, "/api/vhost-limits", None).await;
    assert_eq!(status, 200);
    assert!(
        all_listed
            .as_array()
            .is_some_and(|l| l.contains(&listed[0])),
        "{all_listed}"
    );
    let url_as = |who: &str, password: &str| {
        let base = url.rsplit_once('@').map_or(url.as_str(), |(_, host)| host);
        let host = base.split('/').next().unwrap_or(base);
        format!("amqp://{who}:{password}@{host}/{}", percent_encode(&vhost))
    };
    let guest_url = url_as("guest", "guest");
    let first = connect(&guest_url).await;
    let e = refused_eventually("a connection over the vhost's limit", 530, || {
        opened_and_closed(&guest_url)
    })
    .await;
    expect_text(
        &e,
        &format!(
            "NOT_ALLOWED - access to vhost '{vhost}' refused for user 'guest': connection limit (1) is reached"
        ),
    );
    let ch = channel(&first).await;
    plain_queue(&ch, "limited.q1").await;
    let over = step(
        "a queue over the limit",
        ch.queue_declare(
            "limited.q2".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    let e = expect_code("a queue over the vhost's limit", over, 406);
    expect_text(
        &e,
        &format!(
            "PRECONDITION_FAILED - cannot declare queue 'limited.q2': queue limit in vhost '{vhost}' (1) is reached"
        ),
    );
    let ch = channel(&first).await;
    plain_queue(&ch, "limited.q1").await;
    let named = step(
        "a server-named queue over the limit",
        ch.queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    let e = expect_code("a server-named queue over the vhost's limit", named, 406);
    expect_text(&e, "PRECONDITION_FAILED - cannot declare queue 'amq.gen-");
    // A negative limit is none; deleting one that is not set is no error.
    assert_eq!(
        api(&api_base, Method::PUT, &connections, value(-1)).await.0,
        204
    );
    let second = connect(&guest_url).await;
    assert_eq!(api(&api_base, Method::DELETE, &queues, None).await.0, 204);
    assert_eq!(api(&api_base, Method::DELETE, &queues, None).await.0, 204);
    let ch = channel(&second).await;
    plain_queue(&ch, "limited.q2").await;
    let (_, listed) = api(&api_base, Method::GET, &vhost_limits, None).await;
    assert_eq!(
        listed,
        json!([{"vhost": vhost, "value": {"max-connections": -1}}])
    );
    close(first).await;
    close(second).await;

    // Per user.
    assert_eq!(
        api(
            &api_base,
            Method::PUT,
            &format!("{user_limits}/max-connections"),
            value(1)
        )
        .await
        .0,
        204
    );
    assert_eq!(
        api(
            &api_base,
            Method::PUT,
            &format!("{user_limits}/max-channels"),
            value(2)
        )
        .await
        .0,
        204
    );
    let expected = json!({"max-connections": 1, "max-channels": 2});
    let (status, listed) = api(&api_base, Method::GET, &user_limits, None).await;
    assert_eq!(
        (status, listed),
        (200, json!([{"user": user, "value": expected}]))
    );
    let (_, shown) = api(&api_base, Method::GET, &user_path, None).await;
    assert_eq!(shown["limits"], expected);
    let (_, exported) = api(&api_base, Method::GET, "/api/definitions", None).await;
    let users = exported["users"].as_array().cloned().unwrap_or_default();
    let kept = users.iter().find(|u| u["name"] == user.as_str());
    assert_eq!(kept.map(|u| &u["limits"]), Some(&expected), "{exported}");
    let parameters = exported["parameters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let limits_kept = parameters.iter().find(|p| p["vhost"] == vhost.as_str());
    assert_eq!(
        limits_kept.map(|p| (&p["component"], &p["name"], &p["value"])),
        Some((
            &json!("vhost-limits"),
            &json!("limits"),
            &json!({"max-connections": -1})
        )),
        "{exported}"
    );
    let user_url = url_as(&user, "pw");
    let mine = connect(&user_url).await;
    let e = refused_eventually("a connection over the user's limit", 530, || {
        opened_and_closed(&user_url)
    })
    .await;
    expect_text(
        &e,
        &format!(
            "NOT_ALLOWED - connection refused for user '{user}': user connection limit (1) is reached"
        ),
    );
    let _one = channel(&mine).await;
    let _two = channel(&mine).await;
    let e = refused_eventually("a channel over the user's limit", 530, || async {
        let third = step("a third channel", mine.create_channel()).await?;
        let _ = third.close(200, "over the limit".into()).await;
        Ok(())
    })
    .await;
    expect_text(
        &e,
        &format!(
            "NOT_ALLOWED - number of channels opened for user '{user}' has reached the maximum allowed user limit of (2)"
        ),
    );
    disconnected(&mine, "the user over its channel limit").await;

    // Refusals.
    let (status, body) = api(
        &api_base,
        Method::PUT,
        &format!("{vhost_limits}/max-foo"),
        value(3),
    )
    .await;
    assert_eq!(
        (status, &body["reason"]),
        (
            400,
            &json!("Validation failed\n\nUnrecognised terms [{<<\"max-foo\">>,3}] in limits\n")
        )
    );
    let (status, body) = api(
        &api_base,
        Method::PUT,
        &format!("{user_limits}/max-foo"),
        value(1),
    )
    .await;
    assert_eq!(
        (status, &body["reason"]),
        (
            400,
            &json!("Unrecognised terms [{<<\"max-foo\">>,1}] in user-limits")
        )
    );
    let text = Some(json!({"value": "x"}));
    let (status, body) = api(
        &api_base,
        Method::PUT,
        &format!("{user_limits}/max-channels"),
        text,
    )
    .await;
    assert_eq!(
        (status, &body["reason"]),
        (
            400,
            &json!("max-channels should be a number, actually was <<\"x\">>")
        )
    );
    let (status, body) = api(&api_base, Method::PUT, &connections, Some(json!({}))).await;
    assert_eq!(
        (status, &body["reason"]),
        (400, &json!("[{key_missing,value}]"))
    );
    let (status, body) = api(
        &api_base,
        Method::PUT,
        "/api/user-limits/limits-nobody/max-channels",
        value(1),
    )
    .await;
    assert_eq!(
        (status, &body["reason"]),
        (400, &json!(["no_such_user", "limits-nobody"]))
    );
    let (status, _) = api(
        &api_base,
        Method::PUT,
        "/api/vhost-limits/limits-nowhere/max-queues",
        value(1),
    )
    .await;
    assert_eq!(status, 404);
    let (status, body) = api_as(
        &api_base,
        (&user, "pw"),
        Method::PUT,
        &connections,
        value(5),
    )
    .await;
    assert_eq!(
        (status, &body["reason"]),
        (401, &json!("Not administrator user"))
    );

    assert_eq!(
        api(&api_base, Method::DELETE, &vhost_path, None).await.0,
        204
    );
    assert_eq!(
        api(&api_base, Method::DELETE, &user_path, None).await.0,
        204
    );
    let (_, listed) = api(&api_base, Method::GET, "/api/user-limits", None).await;
    assert!(!listed.to_string().contains(&user), "{listed}");
}

/// `POST /api/definitions`, as `rabbitmqadmin import` sends a file: users (with a
/// RabbitMQ password hash), a vhost, permissions, a limit, a policy, an exchange, a queue
/// and a binding arrive and work over AMQP; an existing queue is kept as it is; a file
/// that is not JSON or names a vhost nobody has is refused with RabbitMQ's reasons.
async fn definitions_import(url: String, api_base: String, _metrics: String) {
    use reqwest::Method;
    use serde_json::json;
    let (user, vhost) = (uniq("imported"), uniq("imported-vhost"));
    // RabbitMQ's salted SHA-256 of "test12".
    let hash = "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR";
    let file = json!({
        "users": [{"name": user, "password_hash": hash,
                   "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": [],
                   "limits": {"max-connections": 5}}],
        "vhosts": [{"name": vhost}],
        "permissions": [{"user": user, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}],
        "parameters": [{"vhost": vhost, "component": "vhost-limits", "name": "limits",
                        "value": {"max-queues": 5}}],
        "policies": [{"vhost": vhost, "name": "ttl", "pattern": "^imported\\.", "apply-to": "queues",
                      "definition": {"message-ttl": 60000}, "priority": 0}],
        "exchanges": [{"name": "imported.x", "vhost": vhost, "type": "fanout", "durable": true,
                       "auto_delete": false, "internal": false, "arguments": {}}],
        "queues": [{"name": "imported.q", "vhost": vhost, "durable": true, "auto_delete": false,
                    "arguments": {}}],
        "bindings": [{"source": "imported.x", "vhost": vhost, "destination": "imported.q",
                      "destination_type": "queue", "routing_key": "", "arguments": {}}]
    });
    let (status, body) = api(&api_base, Method::POST, "/api/definitions", Some(file)).await;
    assert_eq!(status, 204, "{body}");
    let vhost_path = percent_encode(&vhost);
    let queue_path = format!("/api/queues/{vhost_path}/imported.q");
    let (status, queue) = api(&api_base, Method::GET, &queue_path, None).await;
    assert_eq!((status, &queue["durable"]), (200, &json!(true)), "{queue}");
    // RabbitMQ's statistics show the policy a moment later.
    eventually("the imported policy applied", STATS_LAG, || async {
        let (_, queue) = api(&api_base, Method::GET, &queue_path, None).await;
        queue["effective_policy_definition"]["message-ttl"] == 60000
    })
    .await;
    let (_, limits) = api(
        &api_base,
        Method::GET,
        &format!("/api/vhost-limits/{vhost_path}"),
        None,
    )
    .await;
    assert_eq!(limits[0]["value"], json!({"max-queues": 5}));
    let (_, limits) = api(
        &api_base,
        Method::GET,
        &format!("/api/user-limits/{user}"),
        None,
    )
    .await;
    assert_eq!(limits[0]["value"], json!({"max-connections": 5}));
    // As with a vhost made through the API, the importer gets every permission there.
    let (status, _) = api(
        &api_base,
        Method::GET,
        &format!("/api/permissions/{vhost_path}/guest"),
        None,
    )
    .await;
    assert_eq!(status, 200);

    // The imported user logs in with the imported hash; the binding routes.
    let base = url.rsplit_once('@').map_or(url.as_str(), |(_, host)| host);
    let host = base.split('/').next().unwrap_or(base);
    let conn = connect(&format!("amqp://{user}:test12@{host}/{vhost_path}")).await;
    let ch = confirmed(&conn).await;
    publish(&ch, "imported.x", "", b"through the import").await;
    let got = step(
        "basic.get",
        ch.basic_get("imported.q".into(), BasicGetOptions { no_ack: true }),
    )
    .await;
    let body = got.ok().flatten().map(|m| m.delivery.data);
    assert_eq!(body.as_deref(), Some(&b"through the import"[..]));
    close(conn).await;

    // A queue that exists stays as it is, as RabbitMQ's import leaves it.
    let transient = json!({"queues": [{"name": "imported.q", "vhost": vhost, "durable": false,
                                       "auto_delete": false, "arguments": {}}]});
    assert_eq!(
        api(&api_base, Method::POST, "/api/definitions", Some(transient))
            .await
            .0,
        204
    );
    let (_, queue) = api(&api_base, Method::GET, &queue_path, None).await;
    assert_eq!(queue["durable"], json!(true));
    // Refusals.
    let nowhere = json!({"queues": [{"name": "q", "vhost": "import-nowhere", "durable": true,
                                     "auto_delete": false, "arguments": {}}]});
    let (status, body) = api(&api_base, Method::POST, "/api/definitions", Some(nowhere)).await;
    assert_eq!(
        (status, &body["reason"]),
        (400, &json!(["no_such_vhost", "import-nowhere"]))
    );
    let response = step(
        "a file that is not JSON",
        reqwest::Client::new()
            .post(format!("{api_base}/api/definitions"))
            .basic_auth("guest", Some("guest"))
            .header("content-type", "application/json")
            .body("garbage")
            .send(),
    )
    .await
    .expect("request");
    assert_eq!(response.status().as_u16(), 400);
    let refused: serde_json::Value = step("its body", response.json()).await.unwrap_or_default();
    assert_eq!(refused["reason"], "failed_to_parse_json");

    // Into one vhost: its objects land there whatever vhost they name, users are not
    // taken, and a vhost nobody has is a 404.
    let ignored = format!("{user}-ignored");
    let one = json!({
        "users": [{"name": ignored, "password_hash": hash, "tags": []}],
        "queues": [{"name": "imported.q2", "vhost": "elsewhere", "durable": true,
                    "auto_delete": false, "arguments": {}},
                   {"name": "imported.q3", "durable": true, "auto_delete": false, "arguments": {}}],
        "exchanges": [{"name": "imported.x2", "type": "direct", "durable": true,
                       "auto_delete": false, "internal": false, "arguments": {}}],
        "bindings": [{"source": "imported.x2", "destination": "imported.q3",
                      "destination_type": "queue", "routing_key": "k", "arguments": {}}]
    });
    let into_vhost = format!("/api/definitions/{vhost_path}");
    let (status, body) = api(&api_base, Method::POST, &into_vhost, Some(one)).await;
    assert_eq!(status, 204, "{body}");
    for queue in ["imported.q2", "imported.q3"] {
        let path = format!("/api/queues/{vhost_path}/{queue}");
        assert_eq!(
            api(&api_base, Method::GET, &path, None).await.0,
            200,
            "{queue}"
        );
    }
    let bound = format!("/api/bindings/{vhost_path}/e/imported.x2/q/imported.q3");
    let (_, bindings) = api(&api_base, Method::GET, &bound, None).await;
    assert_eq!(bindings[0]["routing_key"], "k", "{bindings}");
    // One vhost's export, as RabbitMQ shapes it, goes back in unchanged.
    let (status, exported) = api(&api_base, Method::GET, &into_vhost, None).await;
    assert_eq!(status, 200, "{exported}");
    let listed = |key: &str| exported[key].as_array().cloned().unwrap_or_default();
    let q3 = listed("queues")
        .into_iter()
        .find(|q| q["name"] == "imported.q3");
    assert_eq!(
        q3,
        Some(
            json!({"name": "imported.q3", "durable": true, "auto_delete": false, "arguments": {}})
        ),
        "{exported}"
    );
    let binding = listed("bindings")
        .into_iter()
        .find(|b| b["source"] == "imported.x2");
    assert_eq!(
        binding
            .as_ref()
            .map(|b| (&b["routing_key"], b.get("vhost"))),
        Some((&json!("k"), None)),
        "{exported}"
    );
    assert!(
        listed("policies").iter().any(|p| p["name"] == "ttl"),
        "{exported}"
    );
    assert_eq!(
        exported["parameters"][0]["value"],
        json!({"max-queues": 5}),
        "{exported}"
    );
    let (status, body) = api(&api_base, Method::POST, &into_vhost, Some(exported.clone())).await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = api(
        &api_base,
        Method::GET,
        "/api/definitions/import-nowhere",
        None,
    )
    .await;
    assert_eq!((status, &body["reason"]), (400, &json!("vhost_not_found")));
    let ignored_path = format!("/api/users/{ignored}");
    assert_eq!(
        api(&api_base, Method::GET, &ignored_path, None).await.0,
        404
    );
    let (status, body) = api(
        &api_base,
        Method::POST,
        "/api/definitions/import-nowhere",
        Some(json!({})),
    )
    .await;
    assert_eq!((status, &body["reason"]), (404, &json!("vhost_not_found")));

    let vhost_url = format!("/api/vhosts/{vhost_path}");
    assert_eq!(
        api(&api_base, Method::DELETE, &vhost_url, None).await.0,
        204
    );
    assert_eq!(
        api(
            &api_base,
            Method::DELETE,
            &format!("/api/users/{user}"),
            None
        )
        .await
        .0,
        204
    );
}

/// Repeats `attempt` (bounded) until the broker refuses it with `code`, and returns the
/// refusal. RabbitMQ counts connections and channels for its limits asynchronously, so
/// one opened just before may not count yet on a loaded machine; ours counts at once.
async fn refused_eventually<F, Fut>(what: &str, code: u16, mut attempt: F) -> lapin::Error
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), lapin::Error>>,
{
    let deadline = Instant::now() + STEP;
    loop {
        match attempt().await {
            Err(e) => return expect_code(what, Err::<(), _>(e), code),
            Ok(()) => {
                assert!(Instant::now() < deadline, "{what}: never refused");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Opens a connection to `url` and, if it opens, closes it again.
async fn opened_and_closed(url: &str) -> Result<(), lapin::Error> {
    let conn = step(
        url,
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await?;
    close(conn).await;
    Ok(())
}

/// Waits (bounded) until lapin marks `conn` closed: it reports the broker's close before
/// it changes the connection's status.
async fn disconnected(conn: &Connection, who: &str) {
    let deadline = Instant::now() + STEP;
    while conn.status().connected() {
        assert!(Instant::now() < deadline, "{who} is still connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// RabbitMQ's answer to a path naming nothing.
fn not_found() -> serde_json::Value {
    serde_json::json!({"error": "Object Not Found", "reason": "Not Found"})
}

/// RabbitMQ's answer to a non-administrator calling an administrator's endpoint.
fn not_administrator() -> serde_json::Value {
    serde_json::json!({"error": "not_authorised", "reason": "Not administrator user"})
}

/// The broker's name for the connection whose client named it `given`, once listed.
async fn connection_name(api_base: &str, given: &str) -> String {
    let path = connection_path(api_base, given).await;
    let (status, info) = api(api_base, reqwest::Method::GET, &path, None).await;
    assert_eq!(status, 200, "{path}: {info}");
    info["name"]
        .as_str()
        .unwrap_or_else(|| panic!("{path}: no name in {info}"))
        .to_string()
}

/// The scoped views operators' tools read and act on: one vhost's connections and
/// channels, one connection's channels, one channel with its prefetch and consumers, one
/// user's connections (closed all at once), users without permissions, bulk user deletion,
/// topic permissions by user and by vhost, a node's health check, the login page's
/// settings, the UI's extensions and a queue rebalance; with RabbitMQ's refusals.
async fn management_views(url: String, api_base: String, _metrics: String) {
    use reqwest::Method;
    use serde_json::json;
    let (vhost, v) = add_vhost(&api_base, "views-vhost").await;
    let vhost_path = format!("/api/vhosts/{v}");
    // `bare` has no permissions; `viewer` manages, on the vhost and on "/".
    let (bare, viewer) = (uniq("bare"), uniq("viewer"));
    let created = json!({"password": "pw", "tags": ""});
    let bare_path = format!("/api/users/{bare}");
    let (status, body) = api(&api_base, Method::PUT, &bare_path, Some(created)).await;
    assert_eq!(status, 201, "{body}");
    add_user(&api_base, &viewer, "management", &v).await;
    let all = json!({"configure": ".*", "write": ".*", "read": ".*"});
    let on_root = format!("/api/permissions/%2F/{viewer}");
    assert_eq!(
        api(&api_base, Method::PUT, &on_root, Some(all)).await.0,
        201
    );
    let as_viewer = (viewer.as_str(), "pw");

    let host = {
        let base = url.rsplit_once('@').map_or(url.as_str(), |(_, host)| host);
        base.split('/').next().unwrap_or(base).to_string()
    };
    let named = |given: &str| ConnectionProperties::default().with_connection_name(given.into());
    // guest: one connection with two channels on the vhost, a consumer on the first; one
    // connection with a channel on "/".
    let (in_vhost, in_root) = (uniq("in-vhost"), uniq("in-root"));
    let vhost_url = format!("amqp://guest:guest@{host}/{v}");
    let conn = step("connect", Connection::connect(&vhost_url, named(&in_vhost)))
        .await
        .expect("connect to the vhost");
    let first = channel(&conn).await;
    let _second = channel(&conn).await;
    let q = uniq("views-q");
    plain_queue(&first, &q).await;
    step("basic.qos", first.basic_qos(7, BasicQosOptions::default()))
        .await
        .expect("basic.qos");
    let _consumer = consume(&first, &q, false).await;
    let root = step("connect", Connection::connect(&url, named(&in_root)))
        .await
        .expect("connect to /");
    let _root_channel = channel(&root).await;
    // viewer: one connection on the vhost, one on "/".
    let viewer_given = [uniq("viewer-vhost"), uniq("viewer-root")];
    let mut viewer_conns = Vec::new();
    for (given, path) in viewer_given.iter().zip([v.as_str(), "%2F"]) {
        let viewer_url = format!("amqp://{viewer}:pw@{host}/{path}");
        let opened = step("connect", Connection::connect(&viewer_url, named(given)))
            .await
            .expect("connect as the viewer");
        viewer_conns.push(opened);
    }

    // One vhost's connections and channels, and nothing of another vhost's.
    let conn_name = connection_name(&api_base, &in_vhost).await;
    let root_name = connection_name(&api_base, &in_root).await;
    let mut viewer_names = Vec::new();
    for given in &viewer_given {
        viewer_names.push(connection_name(&api_base, given).await);
    }
    let conn_path = format!("/api/connections/{}", percent_encode(&conn_name));
    let connections_path = format!("{vhost_path}/connections");
    let (status, listed) = api(&api_base, Method::GET, &connections_path, None).await;
    assert_eq!(status, 200, "{listed}");
    let entries = listed.as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = entries.iter().filter_map(|c| c["name"].as_str()).collect();
    for present in [&conn_name, &viewer_names[0]] {
        assert!(names.contains(&present.as_str()), "{present} in {listed}");
    }
    for absent in [&root_name, &viewer_names[1]] {
        assert!(!names.contains(&absent.as_str()), "{absent} in {listed}");
    }
    assert!(entries.iter().all(|c| c["vhost"] == vhost), "{listed}");
    let channels_path = format!("{vhost_path}/channels");
    let root_channels = format!("/api/connections/{}/channels", percent_encode(&root_name));
    eventually("the channels listed", STATS_LAG, || async {
        let (_, listed) = api(&api_base, Method::GET, &channels_path, None).await;
        let (_, on_root) = api(&api_base, Method::GET, &root_channels, None).await;
        let of_conn = listed
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["connection_details"]["name"] == conn_name.as_str())
            .count();
        of_conn == 2 && on_root.as_array().is_some_and(|l| l.len() == 1)
    })
    .await;
    let (status, listed) = api(&api_base, Method::GET, &channels_path, None).await;
    assert_eq!(status, 200, "{listed}");
    let entries = listed.as_array().cloned().unwrap_or_default();
    assert!(
        entries
            .iter()
            .all(|c| c["vhost"] == vhost && c["connection_details"]["name"] != root_name.as_str()),
        "{listed}"
    );
    let nowhere = percent_encode(&uniq("nowhere"));
    for view in ["connections", "channels"] {
        let path = format!("/api/vhosts/{nowhere}/{view}");
        assert_eq!(
            api(&api_base, Method::GET, &path, None).await,
            (404, not_found()),
            "{path}"
        );
    }

    // One connection's channels.
    let (status, channels) = api(
        &api_base,
        Method::GET,
        &format!("{conn_path}/channels"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{channels}");
    let channels = channels.as_array().cloned().unwrap_or_default();
    let mut numbers: Vec<i64> = channels
        .iter()
        .filter_map(|c| c["number"].as_i64())
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, [1, 2], "{channels:?}");
    assert!(
        channels
            .iter()
            .all(|c| c["connection_details"]["name"] == conn_name.as_str()),
        "{channels:?}"
    );
    // RabbitMQ fails (500, no body) for a connection it does not have; an error either way.
    let unknown = format!(
        "/api/connections/{}/channels",
        percent_encode("127.0.0.1:1 -> 127.0.0.1:2")
    );
    let (status, body) = api(&api_base, Method::GET, &unknown, None).await;
    assert!(status >= 400, "{unknown}: {status} {body}");

    // One channel, with its prefetch and its consumer (statistics that lag).
    let first_name = channels
        .iter()
        .find(|c| c["number"] == 1)
        .and_then(|c| c["name"].as_str())
        .unwrap_or_default()
        .to_string();
    let channel_path = format!("/api/channels/{}", percent_encode(&first_name));
    eventually("the channel counts its consumer", STATS_LAG, || async {
        api(&api_base, Method::GET, &channel_path, None).await.1["consumer_count"] == 1
    })
    .await;
    let (status, one) = api(&api_base, Method::GET, &channel_path, None).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(
        (
            &one["name"],
            &one["number"],
            &one["vhost"],
            &one["user"],
            &one["connection_details"]["name"],
            &one["prefetch_count"],
            &one["consumer_count"],
        ),
        (
            &json!(first_name),
            &json!(1),
            &json!(vhost),
            &json!("guest"),
            &json!(conn_name),
            &json!(7),
            &json!(1),
        ),
        "{one}"
    );
    assert_eq!(
        one["consumer_details"][0]["queue"],
        json!({"name": q, "vhost": vhost}),
        "{one}"
    );
    let unknown = format!(
        "/api/channels/{}",
        percent_encode("127.0.0.1:1 -> 127.0.0.1:2 (1)")
    );
    assert_eq!(
        api(&api_base, Method::GET, &unknown, None).await,
        (404, not_found())
    );

    // One user's connections, as the broker tracks them, and closing them all.
    let (_, overview) = api(&api_base, Method::GET, "/api/overview", None).await;
    let node = overview["node"].as_str().unwrap_or_default().to_string();
    assert!(!node.is_empty(), "{overview}");
    let by_user = format!("/api/connections/username/{viewer}");
    eventually("the viewer's connections tracked", STATS_LAG, || async {
        let (_, tracked) = api(&api_base, Method::GET, &by_user, None).await;
        tracked.as_array().is_some_and(|l| l.len() == 2)
    })
    .await;
    let (status, tracked) = api(&api_base, Method::GET, &by_user, None).await;
    assert_eq!(status, 200, "{tracked}");
    let by_name = |list: &[serde_json::Value]| {
        let mut list = list.to_vec();
        list.sort_by_key(|c| c["name"].to_string());
        list
    };
    let expected = [
        json!({"name": viewer_names[0], "user": viewer, "vhost": vhost, "node": node}),
        json!({"name": viewer_names[1], "user": viewer, "vhost": "/", "node": node}),
    ];
    assert_eq!(
        by_name(tracked.as_array().map_or(&[], Vec::as_slice)),
        by_name(&expected),
        "{tracked}"
    );
    let nobody = format!("/api/connections/username/{}", uniq("nobody"));
    assert_eq!(
        api(&api_base, Method::GET, &nobody, None).await,
        (200, json!([]))
    );
    let mut listeners: Vec<_> = viewer_conns
        .iter()
        .map(|c| Box::pin(c.events_listener()))
        .collect();
    assert_eq!(
        api(&api_base, Method::DELETE, &by_user, None).await,
        (204, serde_json::Value::Null)
    );
    for ((events, conn), given) in listeners.iter_mut().zip(&viewer_conns).zip(&viewer_given) {
        let reason = broker_closed(events).await;
        // A close lapin read before the socket went must be this one.
        if let lapin::ErrorKind::ProtocolError(amqp) = reason.kind() {
            assert_eq!(
                (amqp.get_id(), amqp.get_message().as_str()),
                (320, "CONNECTION_FORCED - Closed via management plugin"),
                "{given}"
            );
        }
        disconnected(conn, given).await;
    }
    assert!(
        root.status().connected(),
        "another user's connection closed"
    );
    let _still = channel(&root).await;
    eventually("the viewer's connections untracked", STATS_LAG, || async {
        api(&api_base, Method::GET, &by_user, None).await == (200, json!([]))
    })
    .await;

    // Users without permissions: administrators only.
    let (status, listed) = api(
        &api_base,
        Method::GET,
        "/api/users/without-permissions",
        None,
    )
    .await;
    assert_eq!(status, 200, "{listed}");
    let names: Vec<&str> = listed
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| u["name"].as_str())
        .collect();
    assert!(names.contains(&bare.as_str()), "{bare} in {listed}");
    assert!(!names.contains(&viewer.as_str()), "{viewer} in {listed}");
    assert_eq!(
        api_as(
            &api_base,
            as_viewer,
            Method::GET,
            "/api/users/without-permissions",
            None
        )
        .await,
        (401, not_administrator())
    );

    // Topic permissions by user and by vhost.
    let topics = format!("/api/topic-permissions/{v}/{viewer}");
    let rule = json!({"exchange": "amq.topic", "write": "^a\\.", "read": "^b\\."});
    assert_eq!(
        api(&api_base, Method::PUT, &topics, Some(rule)).await.0,
        201
    );
    let entry = json!({"user": viewer, "vhost": vhost, "exchange": "amq.topic",
        "write": "^a\\.", "read": "^b\\."});
    for path in [
        format!("/api/users/{viewer}/topic-permissions"),
        format!("{vhost_path}/topic-permissions"),
    ] {
        assert_eq!(
            api(&api_base, Method::GET, &path, None).await,
            (200, json!([entry])),
            "{path}"
        );
    }
    for path in [
        format!("/api/users/{}/topic-permissions", uniq("nobody")),
        format!("/api/vhosts/{nowhere}/topic-permissions"),
    ] {
        assert_eq!(
            api(&api_base, Method::GET, &path, None).await,
            (404, not_found()),
            "{path}"
        );
    }

    // The node's health check, by the node's own name.
    let path = format!("/api/healthchecks/node/{}", percent_encode(&node));
    assert_eq!(
        api(&api_base, Method::GET, &path, None).await,
        (200, json!({"status": "ok"}))
    );
    let path = format!(
        "/api/healthchecks/node/{}",
        percent_encode("conf-nobody@nowhere")
    );
    assert_eq!(
        api(&api_base, Method::GET, &path, None).await,
        (404, not_found())
    );

    // What the login page asks before anyone logs in.
    let response = step("/api/auth", reqwest::get(format!("{api_base}/api/auth")))
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 200);
    let auth: serde_json::Value = step("its body", response.json()).await.unwrap_or_default();
    assert_eq!(
        auth,
        json!({"enable_uaa": false, "uaa_client_id": "", "uaa_location": ""})
    );
    // The scripts plugins add to the UI (which ones is up to the plugins).
    let (status, extensions) = api(&api_base, Method::GET, "/api/extensions", None).await;
    assert_eq!(status, 200, "{extensions}");
    assert!(
        extensions
            .as_array()
            .is_some_and(|l| l.iter().all(|e| e["javascript"].is_string())),
        "{extensions}"
    );
    // Rebalancing queue leaders: administrators only.
    assert_eq!(
        api(&api_base, Method::POST, "/api/rebalance/queues", None).await,
        (204, serde_json::Value::Null)
    );
    assert_eq!(
        api_as(
            &api_base,
            as_viewer,
            Method::POST,
            "/api/rebalance/queues",
            None
        )
        .await,
        (401, not_administrator())
    );

    // Bulk deletion: administrators only.
    let both = json!({"users": [bare, viewer]});
    assert_eq!(
        api_as(
            &api_base,
            as_viewer,
            Method::POST,
            "/api/users/bulk-delete",
            Some(both.clone())
        )
        .await,
        (401, not_administrator())
    );
    // A name that does not exist stops the deletion there: those before it are gone.
    let (extra, missing) = (uniq("views-extra"), uniq("views-missing"));
    let created = json!({"password": "pw", "tags": ""});
    let extra_path = format!("/api/users/{extra}");
    assert_eq!(
        api(&api_base, Method::PUT, &extra_path, Some(created))
            .await
            .0,
        201
    );
    let stopped = json!({"users": [extra, missing, bare]});
    assert_eq!(
        api(
            &api_base,
            Method::POST,
            "/api/users/bulk-delete",
            Some(stopped)
        )
        .await,
        (
            400,
            json!({"error": "bad_request", "reason": ["no_such_user", missing]})
        )
    );
    assert_eq!(api(&api_base, Method::GET, &extra_path, None).await.0, 404);
    let bare_path = format!("/api/users/{bare}");
    assert_eq!(api(&api_base, Method::GET, &bare_path, None).await.0, 200);
    assert_eq!(
        api(
            &api_base,
            Method::POST,
            "/api/users/bulk-delete",
            Some(both)
        )
        .await,
        (204, serde_json::Value::Null)
    );
    for user in [&bare, &viewer] {
        let path = format!("/api/users/{user}");
        assert_eq!(
            api(&api_base, Method::GET, &path, None).await,
            (404, not_found()),
            "{path}"
        );
    }
    close(conn).await;
    close(root).await;
    assert_eq!(
        api(&api_base, Method::DELETE, &vhost_path, None).await.0,
        204
    );
}

/// Runtime and global parameters as RabbitMQ's API lists and sets them: a vhost's limits
/// and operator policies are parameters of that vhost (its policies are not listed with
/// them) and can be set and cleared as parameters; unknown components and policies are
/// refused; policymakers read and set them, management users may not. Global parameters
/// hold the cluster's id and name and an operator's own values, which definitions export;
/// the cluster's name is readable by management users and set by administrators.
async fn runtime_parameters(_url: String, api_base: String, _metrics: String) {
    use reqwest::Method;
    use serde_json::json;
    let (vhost, v) = add_vhost(&api_base, "params-vhost").await;
    let vhost_path = format!("/api/vhosts/{v}");
    let limits_path = format!("/api/vhost-limits/{v}");
    assert_eq!(
        api(
            &api_base,
            Method::PUT,
            &format!("{limits_path}/max-connections"),
            Some(json!({"value": 10}))
        )
        .await
        .0,
        204
    );
    let op = uniq("params-op");
    let op_value = json!({"pattern": "^params\\.", "apply-to": "queues", "priority": 0,
        "definition": {"max-length": 2}});
    let (status, body) = api(
        &api_base,
        Method::PUT,
        &format!("/api/operator-policies/{v}/{op}"),
        Some(op_value.clone()),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let policy = uniq("params-policy");
    let (status, body) = api(
        &api_base,
        Method::PUT,
        &format!("/api/policies/{v}/{policy}"),
        Some(json!({"pattern": "^params\\.", "definition": {"message-ttl": 60000}})),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    // Listed whole, by component, by component and vhost, and one by one.
    let limits = json!({"vhost": vhost, "component": "vhost-limits", "name": "limits",
        "value": {"max-connections": 10}});
    let operator = json!({"vhost": vhost, "component": "operator_policy", "name": op,
        "value": op_value});
    let of_vhost = |list: &serde_json::Value| {
        let mut mine: Vec<serde_json::Value> = list
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["vhost"] == vhost)
            .cloned()
            .collect();
        mine.sort_by_key(|p| p["component"].to_string());
        mine
    };
    let (status, all) = api(&api_base, Method::GET, "/api/parameters", None).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(of_vhost(&all), [operator.clone(), limits.clone()], "{all}");
    assert!(
        all.as_array()
            .is_some_and(|l| l.iter().all(|p| p["component"] != "policy")),
        "policies listed with the parameters: {all}"
    );
    for (entry, component, name) in [
        (&limits, "vhost-limits", "limits"),
        (&operator, "operator_policy", op.as_str()),
    ] {
        let path = format!("/api/parameters/{component}");
        let (status, listed) = api(&api_base, Method::GET, &path, None).await;
        assert_eq!(
            (status, of_vhost(&listed)),
            (200, vec![entry.clone()]),
            "{path}"
        );
        let path = format!("/api/parameters/{component}/{v}");
        assert_eq!(
            api(&api_base, Method::GET, &path, None).await,
            (200, json!([entry])),
            "{path}"
        );
        let path = format!("/api/parameters/{component}/{v}/{name}");
        assert_eq!(
            api(&api_base, Method::GET, &path, None).await,
            (200, entry.clone()),
            "{path}"
        );
    }
    let nowhere = percent_encode(&uniq("nowhere"));
    for path in [
        format!("/api/parameters/vhost-limits/{nowhere}"),
        format!("/api/parameters/vhost-limits/{nowhere}/limits"),
        format!("/api/parameters/vhost-limits/{v}/other"),
    ] {
        assert_eq!(
            api(&api_base, Method::GET, &path, None).await,
            (404, not_found()),
            "{path}"
        );
    }
    // A component no plugin provides has nothing.
    let path = format!("/api/parameters/federation-upstream/{v}");
    assert_eq!(
        api(&api_base, Method::GET, &path, None).await,
        (200, json!([]))
    );

    // Set and cleared as a parameter, a vhost's limits are replaced whole.
    let param = format!("/api/parameters/vhost-limits/{v}/limits");
    let queues = json!({"value": {"max-queues": 5}});
    assert_eq!(
        api(&api_base, Method::PUT, &param, Some(queues.clone())).await,
        (204, serde_json::Value::Null)
    );
    let only_queues = json!([{"vhost": vhost, "value": {"max-queues": 5}}]);
    assert_eq!(
        api(&api_base, Method::GET, &limits_path, None).await,
        (200, only_queues.clone())
    );
    // As rabbitmqadmin sends it, naming what the path names.
    let full = json!({"vhost": vhost, "component": "vhost-limits", "name": "limits",
        "value": {"max-queues": 5}});
    assert_eq!(
        api(&api_base, Method::PUT, &param, Some(full)).await,
        (204, serde_json::Value::Null)
    );
    assert_eq!(
        api(&api_base, Method::DELETE, &param, None).await,
        (204, serde_json::Value::Null)
    );
    assert_eq!(
        api(&api_base, Method::GET, &limits_path, None).await,
        (200, json!([]))
    );
    assert_eq!(
        api(&api_base, Method::DELETE, &param, None).await,
        (404, not_found())
    );

    // Refusals.
    let bad_request = |reason: &str| json!({"error": "bad_request", "reason": reason});
    let upstream = format!("/api/parameters/federation-upstream/{v}/up");
    assert_eq!(
        api(
            &api_base,
            Method::PUT,
            &upstream,
            Some(json!({"value": {"uri": "amqp://"}}))
        )
        .await,
        (
            400,
            bad_request("Validation failed\n\ncomponent federation-upstream not found\n")
        )
    );
    // An operator policy set as a parameter names its priority.
    let unprioritised = format!("/api/parameters/operator_policy/{v}/{}", uniq("x"));
    let body = json!({"value": {"pattern": "^x", "definition": {"max-length": 1}}});
    let (status, refusal) = api(&api_base, Method::PUT, &unprioritised, Some(body)).await;
    assert_eq!(status, 400, "{refusal}");
    assert!(
        refusal["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("Validation failed\n\nKey \"priority\" not found in ")),
        "{refusal}"
    );
    let as_policy = format!("/api/parameters/policy/{v}/x");
    let body = json!({"value": {"pattern": "^x", "definition": {"max-length": 1}}});
    assert_eq!(
        api(&api_base, Method::PUT, &as_policy, Some(body)).await,
        (
            400,
            bad_request("policies may not be set using this method")
        )
    );
    assert_eq!(
        api(&api_base, Method::PUT, &param, Some(json!({}))).await,
        (400, bad_request("[{key_missing,value}]"))
    );
    // HTML-escaped, unlike the same refusal at /api/vhost-limits.
    assert_eq!(
        api(
            &api_base,
            Method::PUT,
            &param,
            Some(json!({"value": {"max-foo": 5}}))
        )
        .await,
        (
            400,
            bad_request(
                "Validation failed\n\nUnrecognised terms [{&lt;&lt;\"max-foo\"&gt;&gt;,5}] in limits\n"
            )
        )
    );
    assert_eq!(
        api(
            &api_base,
            Method::PUT,
            &format!("/api/parameters/vhost-limits/{nowhere}/limits"),
            Some(queues.clone())
        )
        .await,
        (
            404,
            json!({"error": "not_found", "reason": "vhost_not_found"})
        )
    );
    for path in [
        format!("/api/parameters/vhost-limits/{v}/missing"),
        format!("{upstream}-missing"),
    ] {
        assert_eq!(
            api(&api_base, Method::DELETE, &path, None).await,
            (404, not_found()),
            "{path}"
        );
    }

    // A policymaker with permissions on the vhost reads and sets them; a management
    // user may do neither.
    let (maker, manager) = (uniq("params-maker"), uniq("params-manager"));
    add_user(&api_base, &maker, "policymaker", &v).await;
    add_user(&api_base, &manager, "management", &v).await;
    let (as_maker, as_manager) = ((maker.as_str(), "pw"), (manager.as_str(), "pw"));
    assert_eq!(
        api_as(
            &api_base,
            as_maker,
            Method::PUT,
            &param,
            Some(queues.clone())
        )
        .await,
        (201, serde_json::Value::Null)
    );
    let entry = json!({"vhost": vhost, "component": "vhost-limits", "name": "limits",
        "value": {"max-queues": 5}});
    assert_eq!(
        api_as(&api_base, as_maker, Method::GET, &param, None).await,
        (200, entry)
    );
    assert_eq!(
        api(&api_base, Method::GET, &limits_path, None).await,
        (200, only_queues)
    );
    let not_authorised = json!({"error": "not_authorised",
        "reason": "User not authorised to access object"});
    for (method, path, body) in [
        (Method::GET, "/api/parameters".to_string(), None),
        (Method::GET, param.clone(), None),
        (Method::PUT, param.clone(), Some(queues.clone())),
        (Method::DELETE, param.clone(), None),
        (Method::GET, "/api/global-parameters".to_string(), None),
    ] {
        assert_eq!(
            api_as(&api_base, as_manager, method.clone(), &path, body).await,
            (401, not_authorised.clone()),
            "{method} {path} as a management user"
        );
    }

    // Global parameters: the cluster's id, and one of the operator's own.
    let (status, globals) = api(&api_base, Method::GET, "/api/global-parameters", None).await;
    assert_eq!(status, 200, "{globals}");
    let id = globals
        .as_array()
        .into_iter()
        .flatten()
        .find(|g| g["name"] == "internal_cluster_id")
        .and_then(|g| g["value"].as_str())
        .unwrap_or_default();
    assert!(id.starts_with("rabbitmq-cluster-id-"), "{globals}");
    let global = uniq("params-global");
    let global_path = format!("/api/global-parameters/{global}");
    let value = json!({"given": global, "enabled": true, "n": 3});
    let set = json!({ "value": value });
    assert_eq!(
        api(&api_base, Method::PUT, &global_path, Some(set.clone())).await,
        (201, serde_json::Value::Null)
    );
    assert_eq!(
        api(&api_base, Method::PUT, &global_path, Some(set.clone())).await,
        (204, serde_json::Value::Null)
    );
    let entry = json!({"name": global, "value": value});
    assert_eq!(
        api(&api_base, Method::GET, &global_path, None).await,
        (200, entry.clone())
    );
    let (_, globals) = api(&api_base, Method::GET, "/api/global-parameters", None).await;
    assert!(
        globals.as_array().is_some_and(|l| l.contains(&entry)),
        "{globals}"
    );
    let (_, exported) = api(&api_base, Method::GET, "/api/definitions", None).await;
    assert!(
        exported["global_parameters"]
            .as_array()
            .is_some_and(|l| l.contains(&entry)),
        "{exported}"
    );
    assert_eq!(
        api(&api_base, Method::PUT, &global_path, Some(json!({}))).await,
        (400, bad_request("[{key_missing,value}]"))
    );
    assert_eq!(
        api_as(&api_base, as_manager, Method::PUT, &global_path, Some(set)).await,
        (401, not_authorised.clone())
    );
    assert_eq!(
        api(&api_base, Method::DELETE, &global_path, None).await,
        (204, serde_json::Value::Null)
    );
    assert_eq!(
        api(&api_base, Method::GET, &global_path, None).await,
        (404, not_found())
    );
    assert_eq!(
        api(&api_base, Method::DELETE, &global_path, None).await,
        (404, not_found())
    );
    let (_, exported) = api(&api_base, Method::GET, "/api/definitions", None).await;
    assert!(
        !exported["global_parameters"].to_string().contains(&global),
        "{exported}"
    );

    // The cluster's name, shown in the overview and kept as a global parameter.
    let (status, named) = api(&api_base, Method::GET, "/api/cluster-name", None).await;
    assert_eq!(status, 200, "{named}");
    let original = named["name"].as_str().unwrap_or_default().to_string();
    assert!(!original.is_empty(), "{named}");
    let (_, overview) = api(&api_base, Method::GET, "/api/overview", None).await;
    assert_eq!(overview["cluster_name"], json!(original), "{overview}");
    assert_eq!(
        api_as(
            &api_base,
            as_manager,
            Method::GET,
            "/api/cluster-name",
            None
        )
        .await,
        (200, named.clone())
    );
    // Other scenarios share the node: everything is read before any assertion, so the
    // original name is back even when one fails.
    let renamed = uniq("cluster");
    let set = api(
        &api_base,
        Method::PUT,
        "/api/cluster-name",
        Some(json!({ "name": renamed })),
    )
    .await;
    let shown = api(&api_base, Method::GET, "/api/cluster-name", None).await;
    let in_overview =
        api(&api_base, Method::GET, "/api/overview", None).await.1["cluster_name"].clone();
    let as_global = api(
        &api_base,
        Method::GET,
        "/api/global-parameters/cluster_name",
        None,
    )
    .await;
    let by_manager = api_as(
        &api_base,
        as_manager,
        Method::PUT,
        "/api/cluster-name",
        Some(json!({"name": "conf.refused"})),
    )
    .await;
    let after_refusal = api(&api_base, Method::GET, "/api/cluster-name", None).await;
    let restored = api(
        &api_base,
        Method::PUT,
        "/api/cluster-name",
        Some(json!({ "name": original })),
    )
    .await;
    assert_eq!(
        restored,
        (204, serde_json::Value::Null),
        "the original name put back"
    );
    assert_eq!(set, (204, serde_json::Value::Null));
    assert_eq!(shown, (200, json!({ "name": renamed })));
    assert_eq!(in_overview, json!(renamed));
    assert_eq!(
        as_global,
        (200, json!({"name": "cluster_name", "value": renamed}))
    );
    assert_eq!(by_manager, (401, not_administrator()));
    assert_eq!(after_refusal, shown, "unchanged by the refused rename");
    assert_eq!(
        api(&api_base, Method::GET, "/api/cluster-name", None).await,
        (200, named)
    );
    let (_, overview) = api(&api_base, Method::GET, "/api/overview", None).await;
    assert_eq!(overview["cluster_name"], json!(original), "{overview}");

    assert_eq!(
        api(&api_base, Method::DELETE, &vhost_path, None).await.0,
        204
    );
    for user in [&maker, &manager] {
        let path = format!("/api/users/{user}");
        assert_eq!(api(&api_base, Method::DELETE, &path, None).await.0, 204);
    }
    let policies = format!("/api/policies/{v}");
    assert_eq!(
        api(&api_base, Method::GET, &policies, None).await.0,
        404,
        "the vhost's policy went with it"
    );
}

// ---------------------------------------------------------------------------------------
// rabbitmqadmin, RabbitMQ's own command-line tool

/// Where Debian's rabbitmq-server package installs `rabbitmqadmin` (3.10.8).
const RABBITMQADMIN: &str = "/usr/bin/rabbitmqadmin";
/// Bound on one run of the tool.
const CLI_STEP: Duration = Duration::from_secs(10);

/// `python3 /usr/bin/rabbitmqadmin -H HOST -P PORT -u guest -p guest -f raw_json`, run
/// against one broker's management API.
struct Rabbitmqadmin {
    python: std::path::PathBuf,
    host: String,
    port: String,
}

impl Rabbitmqadmin {
    /// The tool for the API at `api_base` (`http://HOST:PORT`); None when python3 or the
    /// tool is missing outside CI (in CI that fails the test).
    fn new(api_base: &str) -> Option<Self> {
        let python = which("python3");
        let Some(python) = python.filter(|_| std::path::Path::new(RABBITMQADMIN).is_file()) else {
            assert!(
                !engines_required(),
                "python3 and {RABBITMQADMIN} are required in CI (apt-get install rabbitmq-server)"
            );
            eprintln!("python3 or {RABBITMQADMIN} not installed: rabbitmqadmin scenario skipped");
            return None;
        };
        let authority = api_base.trim_start_matches("http://").trim_end_matches('/');
        let (host, port) = authority
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("no port in {api_base}"));
        Some(Self {
            python,
            host: host.to_string(),
            port: port.to_string(),
        })
    }

    /// Runs the tool with `args`, in `vhost` (`-V`) when given; returns whether it
    /// succeeded, its stdout and its stderr.
    async fn run(&self, vhost: Option<&str>, args: &[&str]) -> (bool, String, String) {
        let mut command = tokio::process::Command::new(&self.python);
        command.arg(RABBITMQADMIN).args([
            "-H", &self.host, "-P", &self.port, "-u", "guest", "-p", "guest", "-f", "raw_json",
        ]);
        if let Some(vhost) = vhost {
            command.args(["-V", vhost]);
        }
        let child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start rabbitmqadmin");
        // On a timeout the child is dropped with the future, which kills it.
        let out = timeout(CLI_STEP, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("rabbitmqadmin {args:?}: killed after {CLI_STEP:?}"))
            .expect("wait for rabbitmqadmin");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs the tool, which must succeed and print exactly `expected`.
    async fn says(&self, vhost: Option<&str>, args: &[&str], expected: &str) {
        let (ok, stdout, stderr) = self.run(vhost, args).await;
        assert!(
            ok && stdout == expected,
            "rabbitmqadmin {args:?} (vhost {vhost:?}) should print {expected:?}; \
             success {ok}, stdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }

    /// Runs the tool, which must succeed and print JSON (`-f raw_json`); returns it.
    async fn json(&self, vhost: Option<&str>, args: &[&str]) -> serde_json::Value {
        let (ok, stdout, stderr) = self.run(vhost, args).await;
        let parsed = serde_json::from_str(stdout.trim());
        match (ok, parsed) {
            (true, Ok(value)) => value,
            (ok, parsed) => panic!(
                "rabbitmqadmin {args:?} (vhost {vhost:?}) should print JSON; success {ok}, \
                 {parsed:?}, stdout:\n{stdout}\nstderr:\n{stderr}"
            ),
        }
    }

    /// Runs a listing until `holds` is true of its JSON (for at most [`STATS_LAG`]: what
    /// RabbitMQ lists comes with its statistics); returns that listing.
    async fn until(
        &self,
        vhost: Option<&str>,
        args: &[&str],
        what: &str,
        holds: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + STATS_LAG;
        loop {
            let listed = self.json(vhost, args).await;
            if holds(&listed) {
                return listed;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {STATS_LAG:?}; rabbitmqadmin {args:?} printed {listed}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The tool must fail, telling on stderr that `path` was not found (a 404).
    async fn not_found(&self, vhost: Option<&str>, args: &[&str], path: &str) {
        let (ok, stdout, stderr) = self.run(vhost, args).await;
        assert!(
            !ok && stderr == format!("*** Not found: {path}\n\n"),
            "rabbitmqadmin {args:?} (vhost {vhost:?}) should fail with Not found: {path}; \
             success {ok}, stdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
}

/// The entries of a JSON list for which `keep` holds.
fn entries(
    list: &serde_json::Value,
    keep: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter(|e| keep(e))
        .cloned()
        .collect()
}

/// Removes a file when dropped, also when the scenario fails.
struct RemovedOnDrop(std::path::PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// RabbitMQ's own command-line tool, `rabbitmqadmin` 3.10 as Debian ships it, drives the
/// broker as operators script it, with the same answers from both brokers: the overview;
/// a vhost and permissions on it; an exchange, a queue and a binding declared and listed;
/// messages published (routed or not), counted, fetched and purged; policies, operator
/// policies, vhost limits and parameters declared, listed and deleted; a user declared,
/// able to log in, listed with its permissions and deleted; a client's connection found
/// by its name and closed; the vhost's definitions exported to a file and imported back
/// after a queue was deleted; and everything deleted again, with "Not found" for what is
/// gone.
async fn rabbitmqadmin_cli(url: String, api_base: String, _metrics: String) {
    use serde_json::json;
    let Some(admin) = Rabbitmqadmin::new(&api_base) else {
        return;
    };
    let admin = &admin;
    let vhost = uniq("cli-vhost");
    let v = Some(vhost.as_str());
    let with_vhost = |e: &serde_json::Value| e["vhost"] == vhost.as_str();
    // Everything else but the user and the connection lives in that vhost, so these
    // names clash with no other scenario's.
    let (x, q, policy, op) = ("cli.x", "cli.q", "cli.p", "cli.op");
    let by_name = |list: &serde_json::Value, name: &str| entries(list, |e| e["name"] == name);

    // The overview.
    let overview = admin.json(None, &["show", "overview"]).await;
    let shown = &overview[0];
    assert_eq!(overview.as_array().map(Vec::len), Some(1), "{overview}");
    for field in [
        "management_version",
        "rabbitmq_version",
        "node",
        "cluster_name",
    ] {
        assert!(
            shown[field].as_str().is_some_and(|s| !s.is_empty()),
            "show overview: {field} in {overview}"
        );
    }
    for total in [
        "connections",
        "channels",
        "exchanges",
        "queues",
        "consumers",
    ] {
        assert!(
            shown["object_totals"][total].is_u64(),
            "show overview: object_totals.{total} in {overview}"
        );
    }

    // A vhost of its own; as through the API, its creator may already use it.
    admin
        .says(
            None,
            &["declare", "vhost", &format!("name={vhost}")],
            "vhost declared\n",
        )
        .await;
    let vhosts = admin.json(None, &["list", "vhosts", "name"]).await;
    assert_eq!(
        by_name(&vhosts, &vhost),
        [json!({"name": vhost})],
        "{vhosts}"
    );
    let all = json!({"user": "guest", "vhost": vhost, "configure": ".*", "write": ".*",
        "read": ".*"});
    let permissions = admin.json(None, &["list", "permissions"]).await;
    assert_eq!(
        entries(&permissions, with_vhost),
        std::slice::from_ref(&all),
        "{permissions}"
    );
    let grant = [
        "declare",
        "permission",
        &format!("vhost={vhost}"),
        "user=guest",
        "configure=.*",
        "write=.*",
        "read=.*",
    ];
    admin.says(None, &grant, "permission declared\n").await;
    let permissions = admin.json(None, &["list", "permissions"]).await;
    assert_eq!(entries(&permissions, with_vhost), [all], "{permissions}");

    // An exchange, a queue and a binding.
    let declare_x = ["declare", "exchange", "name=cli.x", "type=fanout"];
    admin.says(v, &declare_x, "exchange declared\n").await;
    let declare_q = ["declare", "queue", "name=cli.q", "durable=false"];
    admin.says(v, &declare_q, "queue declared\n").await;
    let bind = ["declare", "binding", "source=cli.x", "destination=cli.q"];
    admin.says(v, &bind, "binding declared\n").await;
    let exchanges = admin.json(v, &["list", "exchanges"]).await;
    let mut names: Vec<&str> = exchanges
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["name"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "",
            "amq.direct",
            "amq.fanout",
            "amq.headers",
            "amq.match",
            "amq.rabbitmq.trace",
            "amq.topic",
            x
        ],
        "{exchanges}"
    );
    let listed = by_name(&exchanges, x);
    // Of each entry, the fields that are the same on both brokers.
    let fields = |list: &[serde_json::Value], keys: &[&str]| {
        list.iter()
            .map(|e| {
                let kept = keys.iter().map(|k| ((*k).to_string(), e[*k].clone()));
                serde_json::Value::Object(kept.collect())
            })
            .collect::<Vec<_>>()
    };
    let exchange_keys = [
        "vhost",
        "type",
        "durable",
        "auto_delete",
        "internal",
        "arguments",
    ];
    assert_eq!(
        fields(&listed, &exchange_keys),
        [
            json!({"vhost": vhost, "type": "fanout", "durable": true, "auto_delete": false,
            "internal": false, "arguments": {}})
        ],
        "{exchanges}"
    );
    let queue_keys = ["vhost", "durable", "auto_delete", "exclusive", "arguments"];
    let transient = json!({"vhost": vhost, "durable": false, "auto_delete": false,
        "exclusive": false, "arguments": {}});
    let queues = admin.json(v, &["list", "queues"]).await;
    assert_eq!(
        fields(&by_name(&queues, q), &queue_keys),
        std::slice::from_ref(&transient),
        "{queues}"
    );
    let binding = json!({"source": x, "vhost": vhost, "destination": q,
        "destination_type": "queue", "routing_key": "", "arguments": {}, "properties_key": "~"});
    let bindings = admin.json(v, &["list", "bindings"]).await;
    assert_eq!(
        entries(&bindings, |b| b["source"] == x),
        std::slice::from_ref(&binding),
        "{bindings}"
    );
    // The default exchange's binding of the queue is listed too.
    assert_eq!(
        entries(&bindings, |b| b["source"] == "")
            .iter()
            .map(|b| (b["destination"].clone(), b["routing_key"].clone()))
            .collect::<Vec<_>>(),
        [(json!(q), json!(q))],
        "{bindings}"
    );

    // Policies, operator policies, vhost limits and parameters.
    let pattern = "pattern=^cli\\.q$";
    let declare_policy = [
        "declare",
        "policy",
        "name=cli.p",
        pattern,
        r#"definition={"max-length":5}"#,
        "apply-to=queues",
    ];
    admin.says(v, &declare_policy, "policy declared\n").await;
    let policies = admin.json(None, &["list", "policies"]).await;
    assert_eq!(
        entries(&policies, with_vhost),
        [
            json!({"vhost": vhost, "name": policy, "pattern": "^cli\\.q$",
            "apply-to": "queues", "definition": {"max-length": 5}, "priority": 0})
        ],
        "{policies}"
    );
    let declare_op = [
        "declare",
        "operator_policy",
        "name=cli.op",
        pattern,
        r#"definition={"max-length":3}"#,
        "apply-to=queues",
    ];
    admin
        .says(v, &declare_op, "operator_policy declared\n")
        .await;
    let operator_policies = admin.json(None, &["list", "operator_policies"]).await;
    assert_eq!(
        entries(&operator_policies, with_vhost),
        [json!({"vhost": vhost, "name": op, "pattern": "^cli\\.q$",
            "apply-to": "queues", "definition": {"max-length": 3}, "priority": 0})],
        "{operator_policies}"
    );
    let for_vhost = format!("vhost={vhost}");
    let limit = [
        "declare",
        "vhost_limit",
        &for_vhost,
        "name=max-queues",
        "value=10",
    ];
    admin.says(None, &limit, "vhost_limit declared\n").await;
    let limits = admin.json(None, &["list", "vhost_limits"]).await;
    assert_eq!(
        entries(&limits, with_vhost),
        [json!({"vhost": vhost, "value": {"max-queues": 10}})],
        "{limits}"
    );
    let declare_param = [
        "declare",
        "parameter",
        "component=vhost-limits",
        "name=limits",
        r#"value={"max-queues":10,"max-connections":20}"#,
    ];
    admin.says(v, &declare_param, "parameter declared\n").await;
    let both = json!({"max-queues": 10, "max-connections": 20});
    let parameters = admin.json(None, &["list", "parameters"]).await;
    assert_eq!(
        entries(&parameters, |p| with_vhost(p)
            && p["component"] == "vhost-limits"),
        [
            json!({"vhost": vhost, "component": "vhost-limits", "name": "limits",
            "value": both})
        ],
        "{parameters}"
    );
    let limits = admin.json(None, &["list", "vhost_limits"]).await;
    assert_eq!(
        entries(&limits, with_vhost),
        [json!({"vhost": vhost, "value": both})],
        "{limits}"
    );

    // Publish, count, get and purge.
    let publish = [
        "publish",
        "exchange=cli.x",
        "routing_key=k",
        "payload=hello",
    ];
    admin.says(v, &publish, "Message published\n").await;
    let unroutable = ["publish", "routing_key=nowhere", "payload=lost"];
    admin
        .says(v, &unroutable, "Message published but NOT routed\n")
        .await;
    // Listed with the policies that apply (RabbitMQ shows both with its statistics).
    let counted = json!({"name": q, "messages": 1, "policy": policy, "operator_policy": op});
    let columns = [
        "list",
        "queues",
        "name",
        "messages",
        "policy",
        "operator_policy",
    ];
    admin
        .until(v, &columns, "the message counted", |queues| {
            by_name(queues, q) == [counted.clone()]
        })
        .await;
    let get = ["get", "queue=cli.q", "ackmode=ack_requeue_false"];
    let got = admin.json(v, &get).await;
    let got_keys = [
        "payload",
        "payload_encoding",
        "payload_bytes",
        "exchange",
        "routing_key",
        "redelivered",
        "message_count",
    ];
    assert!(got.is_array(), "{got}");
    assert_eq!(
        fields(&entries(&got, |_| true), &got_keys),
        [
            json!({"payload": "hello", "payload_encoding": "string", "payload_bytes": 5,
            "exchange": x, "routing_key": "k", "redelivered": false, "message_count": 0})
        ],
        "{got}"
    );
    let again = [
        "publish",
        "exchange=cli.x",
        "routing_key=k",
        "payload=again",
    ];
    admin.says(v, &again, "Message published\n").await;
    admin
        .says(v, &["purge", "queue", "name=cli.q"], "queue purged\n")
        .await;
    assert_eq!(admin.json(v, &get).await, json!([]), "purged");

    // A user, who logs in with the password given; listed with its permissions.
    let user = uniq("cli-user");
    let declare_user = [
        "declare",
        "user",
        &format!("name={user}"),
        "password=pw",
        "tags=management",
    ];
    admin.says(None, &declare_user, "user declared\n").await;
    let grant_user = [
        "declare",
        "permission",
        &for_vhost,
        &format!("user={user}"),
        "configure=^cli\\.",
        "write=.*",
        "read=.*",
    ];
    admin.says(None, &grant_user, "permission declared\n").await;
    let users = admin.json(None, &["list", "users"]).await;
    assert_eq!(
        by_name(&users, &user)
            .iter()
            .map(|u| (u["tags"].clone(), u["hashing_algorithm"].clone()))
            .collect::<Vec<_>>(),
        [(
            json!(["management"]),
            json!("rabbit_password_hashing_sha256")
        )],
        "{users}"
    );
    let permissions = admin.json(None, &["list", "permissions"]).await;
    let of_user = |p: &serde_json::Value| p["user"] == user.as_str();
    assert_eq!(
        entries(&permissions, of_user),
        [
            json!({"user": user, "vhost": vhost, "configure": "^cli\\.", "write": ".*",
            "read": ".*"})
        ],
        "{permissions}"
    );
    let host = {
        let base = url.rsplit_once('@').map_or(url.as_str(), |(_, host)| host);
        base.split('/').next().unwrap_or(base).to_string()
    };
    let vhost_path = percent_encode(&vhost);
    close(connect(&format!("amqp://{user}:pw@{host}/{vhost_path}")).await).await;
    let delete_user = ["delete", "user", &format!("name={user}")];
    admin.says(None, &delete_user, "user deleted\n").await;
    let users = admin.json(None, &["list", "users"]).await;
    assert!(by_name(&users, &user).is_empty(), "{users}");
    let permissions = admin.json(None, &["list", "permissions"]).await;
    assert!(entries(&permissions, of_user).is_empty(), "{permissions}");

    // A client's connection, found by the name it gave and closed.
    let given = uniq("cli-conn");
    let properties = ConnectionProperties::default().with_connection_name(given.as_str().into());
    let vhost_url = format!("amqp://guest:guest@{host}/{vhost_path}");
    let conn = step("connect", Connection::connect(&vhost_url, properties))
        .await
        .expect("connect to the vhost");
    let mut events = Box::pin(conn.events_listener());
    let given_by = |c: &serde_json::Value| c["user_provided_name"] == given.as_str();
    let columns = ["list", "connections", "name", "user_provided_name"];
    let connections = admin
        .until(None, &columns, "the connection listed", |listed| {
            !entries(listed, given_by).is_empty()
        })
        .await;
    let found = entries(&connections, given_by);
    let name = found[0]["name"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        found,
        [json!({"name": name, "user_provided_name": given})],
        "only the columns asked for: {connections}"
    );
    let close_conn = ["close", "connection", &format!("name={name}")];
    admin.says(None, &close_conn, "connection closed\n").await;
    let reason = broker_closed(&mut events).await;
    let e = expect_code("closed by rabbitmqadmin", Err::<(), _>(reason), 320);
    expect_text(&e, "CONNECTION_FORCED - Closed via management plugin");
    disconnected(&conn, "the closed connection").await;
    let nobody = "127.0.0.1:1 -> 127.0.0.1:2";
    let close_nobody = ["close", "connection", &format!("name={nobody}")];
    let nobody_path = format!("/api/connections/{}", percent_encode(nobody));
    admin.not_found(None, &close_nobody, &nobody_path).await;

    // The vhost's definitions, exported and imported back after the queue went. Only the
    // vhost's (`-V`): the node is shared, and a whole node's definitions imported again
    // would bring back what other scenarios deleted meanwhile.
    let file = std::env::temp_dir().join(format!("{}.json", uniq("rabbitmqadmin-export")));
    let _removed = RemovedOnDrop(file.clone());
    let path = file.to_str().expect("a UTF-8 temp dir");
    let exported_to = format!("Exported definitions for 127.0.0.1 to \"{path}\"\n");
    admin.says(v, &["export", path], &exported_to).await;
    let text = std::fs::read_to_string(&file).expect("read the exported file");
    let exported: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("the exported file is not JSON ({e}):\n{text}"));
    let names_of = |key: &str| {
        let mut names: Vec<String> = exported[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["name"].as_str().map(str::to_string))
            .collect();
        names.sort_unstable();
        names
    };
    assert_eq!(names_of("queues"), [q], "{exported}");
    assert_eq!(names_of("exchanges"), [x], "{exported}");
    assert_eq!(names_of("policies"), [policy], "{exported}");
    assert!(
        exported.get("users").is_none(),
        "only the vhost's: {exported}"
    );
    assert_eq!(
        entries(&exported["bindings"], |b| b["source"] == x).len(),
        1,
        "{exported}"
    );
    admin
        .says(v, &["delete", "queue", "name=cli.q"], "queue deleted\n")
        .await;
    let queues = admin.json(v, &["list", "queues"]).await;
    assert!(by_name(&queues, q).is_empty(), "{queues}");
    let imported = format!(
        "Uploaded definitions from \"127.0.0.1\" to {path}. The import process may take \
         some time. Consult server logs to track progress.\n"
    );
    admin.says(v, &["import", path], &imported).await;
    let queues = admin.json(v, &["list", "queues"]).await;
    assert_eq!(
        fields(&by_name(&queues, q), &queue_keys),
        [transient],
        "{queues}"
    );
    let bindings = admin.json(v, &["list", "bindings"]).await;
    assert_eq!(
        entries(&bindings, |b| b["source"] == x),
        [binding],
        "{bindings}"
    );

    // Everything deleted again.
    let unlimit = ["delete", "vhost_limit", &for_vhost, "name=max-connections"];
    admin.says(None, &unlimit, "vhost_limit deleted\n").await;
    let limits = admin.json(None, &["list", "vhost_limits"]).await;
    assert_eq!(
        entries(&limits, with_vhost),
        [json!({"vhost": vhost, "value": {"max-queues": 10}})],
        "{limits}"
    );
    let delete_param = [
        "delete",
        "parameter",
        "component=vhost-limits",
        "name=limits",
    ];
    admin.says(v, &delete_param, "parameter deleted\n").await;
    let limits = admin.json(None, &["list", "vhost_limits"]).await;
    assert!(entries(&limits, with_vhost).is_empty(), "{limits}");
    let delete_op = ["delete", "operator_policy", "name=cli.op"];
    admin.says(v, &delete_op, "operator_policy deleted\n").await;
    let delete_policy = ["delete", "policy", "name=cli.p"];
    admin.says(v, &delete_policy, "policy deleted\n").await;
    for list in ["policies", "operator_policies"] {
        let listed = admin.json(None, &["list", list]).await;
        assert!(entries(&listed, with_vhost).is_empty(), "{list}: {listed}");
    }
    let unbind = [
        "delete",
        "binding",
        "source=cli.x",
        "destination_type=queue",
        "destination=cli.q",
    ];
    admin.says(v, &unbind, "binding deleted\n").await;
    let bindings = admin.json(v, &["list", "bindings"]).await;
    assert!(
        entries(&bindings, |b| b["source"] == x).is_empty(),
        "{bindings}"
    );
    admin
        .says(v, &["delete", "queue", "name=cli.q"], "queue deleted\n")
        .await;
    admin
        .says(
            v,
            &["delete", "exchange", "name=cli.x"],
            "exchange deleted\n",
        )
        .await;
    let queue_path = format!("/api/queues/{vhost_path}/{q}");
    admin
        .not_found(v, &["delete", "queue", "name=cli.q"], &queue_path)
        .await;
    admin
        .says(
            None,
            &["delete", "vhost", &format!("name={vhost}")],
            "vhost deleted\n",
        )
        .await;
    let vhosts = admin.json(None, &["list", "vhosts", "name"]).await;
    assert!(by_name(&vhosts, &vhost).is_empty(), "{vhosts}");
    let vhost_gone = format!("/api/vhosts/{vhost_path}");
    admin
        .not_found(
            None,
            &["delete", "vhost", &format!("name={vhost}")],
            &vhost_gone,
        )
        .await;
}
