//! RabbitMQ's consumer timeout (`consumer_timeout`): a channel that holds a delivery
//! unacknowledged for longer is closed with 406 PRECONDITION_FAILED, and the message goes
//! back to its queue; a consumer that acks in time keeps its channel. RabbitMQ runs on a
//! node of its own here (the suite's shared node keeps the 30-minute default), ours with
//! `--amqp-consumer-timeout`.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use e2e::rabbit::{
    RabbitMq, amqp_url, start_embedded_with_args, start_rabbitmq_with_consumer_timeout,
};
use futures::StreamExt as _;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::time::timeout;

use super::{
    SCENARIO, body, channel, close, confirmed, connect, expect_code, expect_text, next,
    plain_queue, publish_acked, step, uniq,
};

const TIMEOUT_MS: u64 = 2000;

static RABBIT: LazyLock<Option<RabbitMq>> =
    LazyLock::new(|| start_rabbitmq_with_consumer_timeout(TIMEOUT_MS));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq() {
    let url = tokio::task::spawn_blocking(|| LazyLock::force(&RABBIT).as_ref().map(RabbitMq::url))
        .await
        .expect("start RabbitMQ");
    let Some(url) = url else {
        eprintln!("consumer_timeout: RabbitMQ not installed, skipped");
        return;
    };
    timeout(SCENARIO, late_acks_close_the_channel(url))
        .await
        .expect("the scenario on RabbitMQ took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded() {
    let (proc, port) = tokio::task::spawn_blocking(|| {
        start_embedded_with_args(&["--amqp-consumer-timeout", &TIMEOUT_MS.to_string()])
    })
    .await
    .expect("start session-store");
    timeout(SCENARIO, late_acks_close_the_channel(amqp_url(port)))
        .await
        .expect("the scenario on the embedded broker took too long");
    drop(proc);
}

/// One consumer sits on its delivery, another acks each at once: only the first loses
/// its channel, after the timeout and not before, with RabbitMQ's words; its message is
/// back in the queue, redelivered, and the connection lives on.
async fn late_acks_close_the_channel(url: String) {
    let conn = connect(&url).await;
    let mut events = Box::pin(conn.events_listener());
    let admin = channel(&conn).await;
    let (slow_q, fast_q) = (uniq("timeout-slow"), uniq("timeout-fast"));
    plain_queue(&admin, &slow_q).await;
    plain_queue(&admin, &fast_q).await;
    let publisher = confirmed(&conn).await;
    for (queue, text) in [(&slow_q, "held"), (&slow_q, "waiting"), (&fast_q, "acked")] {
        assert!(publish_acked(&publisher, queue, text.as_bytes()).await);
    }
    let consume = |ch: lapin::Channel, queue: String| async move {
        step("basic.qos", ch.basic_qos(1, BasicQosOptions::default()))
            .await
            .expect("basic.qos");
        step(
            "basic.consume",
            ch.basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .expect("basic.consume")
    };
    let fast = channel(&conn).await;
    let mut acking = consume(fast.clone(), fast_q.clone()).await;
    let acked = next(&mut acking).await;
    step("basic.ack", acked.acker.ack(BasicAckOptions::default()))
        .await
        .expect("basic.ack");

    let slow = channel(&conn).await;
    let mut holding = consume(slow.clone(), slow_q.clone()).await;
    let held = next(&mut holding).await;
    assert_eq!(body(&held), "held");
    let since = Instant::now();
    let limit = Duration::from_millis(TIMEOUT_MS);
    let reason = timeout(limit + Duration::from_secs(10), async {
        loop {
            match events.next().await {
                Some(lapin::Event::Error(e)) => break e,
                Some(_) => continue,
                None => panic!("the connection's event stream ended"),
            }
        }
    })
    .await
    .expect("the channel holding a delivery was not closed");
    let waited = since.elapsed();
    // The broker counts from the delivery, a moment before it reached the client.
    assert!(
        waited + Duration::from_millis(300) >= limit,
        "closed after {waited:?}, before the {limit:?} timeout"
    );
    let e = expect_code("the consumer timeout", Err::<(), _>(reason), 406);
    expect_text(
        &e,
        &format!(
            "PRECONDITION_FAILED - delivery acknowledgement on channel {} timed out. Timeout value used: {TIMEOUT_MS} ms. This timeout value can be configured, see consumers doc guide to learn more",
            slow.id()
        ),
    );
    assert!(
        step(
            "basic.qos on the closed channel",
            slow.basic_qos(1, BasicQosOptions::default())
        )
        .await
        .is_err(),
        "the timed-out channel still works"
    );
    // The channel that acked in time is open, past the timeout.
    step(
        "basic.qos on the acking channel",
        fast.basic_qos(1, BasicQosOptions::default()),
    )
    .await
    .expect("the channel that acked in time was closed");
    let get = |queue: String| {
        let admin = admin.clone();
        async move {
            step(
                "basic.get",
                admin.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true }),
            )
            .await
            .expect("basic.get")
            .map(|m| (body(&m.delivery), m.delivery.redelivered))
        }
    };
    assert_eq!(get(slow_q.clone()).await, Some(("held".into(), true)));
    assert_eq!(get(slow_q.clone()).await, Some(("waiting".into(), false)));
    // The queues go after the connection, so that no consumer is cancelled while lapin
    // closes it.
    close(conn).await;
    let conn = connect(&url).await;
    let admin = channel(&conn).await;
    for q in [&slow_q, &fast_q] {
        step(
            "queue.delete",
            admin.queue_delete(q.as_str().into(), Default::default()),
        )
        .await
        .expect("queue.delete");
    }
    close(conn).await;
}
