//! The embedded AMQP broker, driven in-process by `lapin` over a real socket on port 0.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicRejectOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use session_store::amqp::{AmqpConfig, run};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const STEP: Duration = Duration::from_secs(10);

async fn step<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, fut)
        .await
        .expect("step timed out")
}

struct Broker {
    url: String,
    _stop: oneshot::Sender<()>,
}

async fn broker() -> Broker {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(run(listener, AmqpConfig::default(), async {
        let _ = stopped.await;
    }));
    Broker {
        url: format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
        _stop: stop,
    }
}

async fn channel(url: &str) -> (Connection, Channel) {
    let conn = step(Connection::connect(url, ConnectionProperties::default()))
        .await
        .expect("connect");
    let ch = step(conn.create_channel()).await.expect("channel");
    (conn, ch)
}

async fn declare(ch: &Channel, name: &str) -> String {
    step(ch.queue_declare(
        name.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .expect("declare")
    .name()
    .to_string()
}

async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    step(ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default(),
    ))
    .await
    .expect("publish");
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_consume_ack_and_confirms() {
    let b = broker().await;
    let (_conn, ch) = channel(&b.url).await;
    let q = declare(&ch, "").await;
    assert!(q.starts_with("amq.gen-") && q.len() == 8 + 22, "{q}");
    step(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .expect("confirm.select");
    let big = vec![b'x'; 300_000];
    let confirm = step(ch.basic_publish(
        "".into(),
        q.as_str().into(),
        BasicPublishOptions::default(),
        &big,
        BasicProperties::default().with_content_type("text/plain".into()),
    ))
    .await
    .expect("publish");
    assert!(matches!(
        step(confirm).await.expect("confirm"),
        Confirmation::Ack(None)
    ));
    let mut consumer = step(ch.basic_consume(
        q.as_str().into(),
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .expect("consume");
    assert!(consumer.tag().as_str().starts_with("amq.ctag-"));
    let delivery = step(consumer.next())
        .await
        .expect("a delivery")
        .expect("ok");
    assert_eq!(delivery.data, big, "a body split over frames arrives whole");
    assert_eq!(
        delivery
            .properties
            .content_type()
            .as_ref()
            .map(|s| s.as_str()),
        Some("text/plain")
    );
    step(delivery.ack(BasicAckOptions::default()))
        .await
        .expect("ack");
}

#[tokio::test(flavor = "multi_thread")]
async fn fanout_reaches_every_bound_queue() {
    let b = broker().await;
    let (_conn, ch) = channel(&b.url).await;
    step(ch.exchange_declare(
        "events".into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .expect("exchange");
    for q in ["n1", "n2", "n3"] {
        declare(&ch, q).await;
        step(ch.queue_bind(
            q.into(),
            "events".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ))
        .await
        .expect("bind");
    }
    publish(&ch, "events", "ignored", b"evict s1").await;
    for q in ["n1", "n2", "n3"] {
        let got = step(ch.basic_get(q.into(), BasicGetOptions { no_ack: true }))
            .await
            .expect("get")
            .expect("a message");
        assert_eq!(got.delivery.data, b"evict s1");
        assert_eq!(got.message_count, 0);
    }
    let empty = step(ch.basic_get("n1".into(), BasicGetOptions { no_ack: true }))
        .await
        .expect("get");
    assert!(empty.is_none(), "get-empty");
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_with_requeue_comes_back_redelivered() {
    let b = broker().await;
    let (_conn, ch) = channel(&b.url).await;
    declare(&ch, "work").await;
    publish(&ch, "", "work", b"job").await;
    let first = step(ch.basic_get("work".into(), BasicGetOptions::default()))
        .await
        .expect("get")
        .expect("a message");
    assert!(!first.delivery.redelivered);
    step(first.delivery.reject(BasicRejectOptions { requeue: true }))
        .await
        .expect("reject");
    let again = step(ch.basic_get("work".into(), BasicGetOptions::default()))
        .await
        .expect("get")
        .expect("requeued");
    assert!(again.delivery.redelivered);
    assert_eq!(again.delivery.data, b"job");
}

#[tokio::test(flavor = "multi_thread")]
async fn publishing_to_a_missing_exchange_closes_the_channel_with_404() {
    let b = broker().await;
    let (conn, ch) = channel(&b.url).await;
    step(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .expect("confirm.select");
    let result = step(async {
        ch.basic_publish(
            "nowhere".into(),
            "k".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await?
        .await
    })
    .await;
    let err = result.expect_err("the channel closes");
    let text = err.to_string();
    assert!(
        text.contains("NOT_FOUND - no exchange 'nowhere' in vhost '/'"),
        "{text}"
    );
    let other = step(conn.create_channel())
        .await
        .expect("connection survives");
    declare(&other, "still-works").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_is_refused() {
    let b = broker().await;
    let url = b.url.replace("guest:guest", "guest:wrong");
    let err = step(Connection::connect(&url, ConnectionProperties::default()))
        .await
        .expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("ACCESS_REFUSED") || text.contains("403"),
        "{text}"
    );
}
