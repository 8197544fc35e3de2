//! Memory flow control of the embedded AMQP broker, driven in-process by `lapin`: above
//! the memory high watermark a publishing connection gets connection.blocked and is not
//! read from; consumers on other connections still work, and once they drain the queue
//! the publisher gets connection.unblocked and its held publish goes through.

use std::future::Future;
use std::time::Duration;

use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use session_store::amqp::{AmqpConfig, run};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const STEP: Duration = Duration::from_secs(10);
/// Queued bytes above which publishers are blocked.
const WATERMARK: u64 = 1000;

async fn step<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, fut)
        .await
        .expect("step timed out")
}

/// Polls `cond` every 10 ms until it holds, for at most [`STEP`].
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn open(url: &str) -> (Connection, Channel) {
    let conn = step(Connection::connect(url, ConnectionProperties::default()))
        .await
        .expect("connect");
    let ch = step(conn.create_channel()).await.expect("channel");
    (conn, ch)
}

async fn ready(ch: &Channel, queue: &str) -> u32 {
    step(ch.queue_declare(
        queue.into(),
        QueueDeclareOptions::default().passive(),
        FieldTable::default(),
    ))
    .await
    .expect("passive declare")
    .message_count()
}

async fn publish(ch: &Channel, queue: &str, size: usize) {
    step(ch.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        &vec![b'x'; size],
        BasicProperties::default(),
    ))
    .await
    .expect("publish");
}

/// A broker with this memory watermark, on a free port; it runs until the sender drops.
async fn broker(watermark: u64) -> (String, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (stop, stopped) = oneshot::channel::<()>();
    let config = AmqpConfig {
        memory_high_watermark: watermark,
        ..AmqpConfig::default()
    };
    tokio::spawn(run(listener, config, async {
        let _ = stopped.await;
    }));
    (format!("amqp://guest:guest@127.0.0.1:{port}/%2f"), stop)
}

#[tokio::test]
async fn publishers_are_blocked_above_the_memory_watermark() {
    let (url, _stop) = broker(WATERMARK).await;
    let (consumer_conn, consumer) = open(&url).await;
    let (publisher_conn, publisher) = open(&url).await;
    step(consumer.queue_declare(
        "flow".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .expect("declare");

    // One message bigger than the watermark: the alarm goes on, the publisher is blocked.
    publish(&publisher, "flow", 2000).await;
    until("connection.blocked", || publisher_conn.status().blocked()).await;
    assert!(
        !consumer_conn.status().blocked(),
        "a connection that never published is not blocked"
    );
    assert_eq!(ready(&consumer, "flow").await, 1);

    // A publish while blocked does not go through (lapin holds it; the broker would not
    // read it either).
    let held = tokio::spawn({
        let publisher = publisher.clone();
        async move { publish(&publisher, "flow", 10).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "publish completed while blocked");
    assert_eq!(ready(&consumer, "flow").await, 1, "blocked publish arrived");

    // Draining the queue clears the alarm: unblocked, and the held publish arrives.
    let got = step(consumer.basic_get("flow".into(), BasicGetOptions { no_ack: true }))
        .await
        .expect("get")
        .expect("a message");
    assert_eq!(got.delivery.data.len(), 2000);
    until("connection.unblocked", || {
        !publisher_conn.status().blocked()
    })
    .await;
    step(held).await.expect("held publish");
    for _ in 0..100 {
        if ready(&consumer, "flow").await == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the publish held while blocked never arrived");
}

/// Empty bodies still take memory: the watermark counts each message's properties and
/// the broker's bookkeeping too, so a flood of them is held back like large ones.
#[tokio::test]
async fn empty_messages_count_towards_the_watermark() {
    const SENT: u32 = 400;
    let (url, _stop) = broker(64 * 1024).await;
    let (_consumer_conn, consumer) = open(&url).await;
    let (publisher_conn, publisher) = open(&url).await;
    step(consumer.queue_declare(
        "empty".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .expect("declare");
    let flood = tokio::spawn(async move {
        for _ in 0..SENT {
            publish(&publisher, "empty", 0).await;
        }
    });
    until("connection.blocked", || publisher_conn.status().blocked()).await;
    let held = ready(&consumer, "empty").await;
    assert!(
        (64..SENT).contains(&held),
        "{held} empty messages held when blocked at 64 KiB"
    );
    flood.abort();
}
