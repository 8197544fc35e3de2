//! Stream queues (`x-queue-type: stream`) over AMQP 0-9-1 as RabbitMQ 3.10 has them: an
//! append-only log that consumers read from an offset of their choosing, without taking
//! messages away; the declaration rules of the type, the operations it refuses, the
//! `x-stream-offset` consumer argument, and retention by size.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicQosOptions, BasicRecoverOptions, BasicRejectOptions, QueueDeclareOptions,
    QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, Consumer, ExchangeKind};

use super::{
    STEP, api, args, bind, body, broker_closed, channel, close, confirmed, connect,
    declare_exchange, declare_queue, durable, exclusive_consume, expect_code, expect_text, header,
    lstr, next, nothing_more, on_embedded, on_managed_embedded, on_managed_rabbitmq, on_rabbitmq,
    publish_acked, publish_props, ready_count, reply_code, step, try_declare, uniq,
};

super::conformance!(
    stream_declaration_rules,
    stream_operations_refused,
    stream_offsets,
    stream_consumers_read_independently,
    stream_retention,
);

super::managed_conformance!(stream_retention_by_policy);

/// Declaration arguments of a stream queue.
fn stream(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut a = args(extra);
    a.insert("x-queue-type".into(), lstr("stream"));
    a
}

/// A consumer of `queue` on a channel of its own with `basic.qos prefetch`, manual ack,
/// reading from `offset` (the `x-stream-offset` argument; none: the broker's default).
async fn reader(
    conn: &Connection,
    queue: &str,
    offset: Option<AMQPValue>,
    prefetch: u16,
) -> (Channel, Consumer) {
    let ch = channel(conn).await;
    step(
        "basic.qos",
        ch.basic_qos(prefetch, BasicQosOptions::default()),
    )
    .await
    .expect("basic.qos");
    let arguments = match &offset {
        Some(v) => args(&[("x-stream-offset", v.clone())]),
        None => FieldTable::default(),
    };
    let consumer = try_consume(&ch, queue, BasicConsumeOptions::default(), arguments)
        .await
        .unwrap_or_else(|e| panic!("basic.consume {queue} from {offset:?}: {e}"));
    (ch, consumer)
}

/// basic.consume of `queue` on `ch`, its result kept for the refusals checked here.
async fn try_consume(
    ch: &Channel,
    queue: &str,
    options: BasicConsumeOptions,
    arguments: FieldTable,
) -> Result<Consumer, lapin::Error> {
    step(
        "basic.consume",
        ch.basic_consume(queue.into(), "".into(), options, arguments),
    )
    .await
}

/// The `x-stream-offset` header every stream delivery carries, a long (64-bit) integer.
fn offset_of(d: &Delivery) -> i64 {
    match header(&d.properties, "x-stream-offset") {
        Some(AMQPValue::LongLongInt(n)) => *n,
        other => panic!("x-stream-offset of {:?} is {other:?}, not a long", body(d)),
    }
}

/// Takes the deliveries of offsets `offsets` from `consumer` with delivery tags counting
/// from `first_tag`, checks each against `sent` (bodies by offset), and returns them.
async fn expect_offsets(
    what: &str,
    consumer: &mut Consumer,
    offsets: std::ops::RangeInclusive<i64>,
    first_tag: u64,
    sent: &[String],
) -> Vec<Delivery> {
    let mut got = Vec::new();
    for (tag, offset) in (first_tag..).zip(offsets) {
        let d = step(
            &format!("{what}: the delivery of offset {offset}"),
            consumer.next(),
        )
        .await
        .unwrap_or_else(|| panic!("{what}: the consumer ended before offset {offset}"))
        .unwrap_or_else(|e| panic!("{what}: delivery of offset {offset}: {e}"));
        assert_eq!(offset_of(&d), offset, "{what}: offset of {:?}", body(&d));
        assert_eq!(body(&d), sent[offset as usize], "{what}: body at {offset}");
        assert_eq!(d.delivery_tag, tag, "{what}: delivery tag at {offset}");
        assert!(!d.redelivered, "{what}: {offset} marked redelivered");
        got.push(d);
    }
    got
}

async fn ack(ch: &Channel, tag: u64, multiple: bool) {
    step("basic.ack", ch.basic_ack(tag, BasicAckOptions { multiple }))
        .await
        .expect("basic.ack");
}

/// Ends a scenario: closes `conn`, then deletes `queues` from a fresh connection. Deleting
/// first would cancel `conn`'s consumers from the broker's side while lapin closes the
/// connection, a race in which lapin's close can miss its close-ok.
async fn finish(conn: Connection, url: &str, queues: &[&str]) {
    close(conn).await;
    let conn = connect(url).await;
    let ch = channel(&conn).await;
    for queue in queues {
        step(
            &format!("queue.delete {queue}"),
            ch.queue_delete((*queue).into(), QueueDeleteOptions::default()),
        )
        .await
        .unwrap_or_else(|e| panic!("queue.delete {queue}: {e}"));
    }
    close(conn).await;
}

/// Durable, named, and only the arguments a log has: limits that drop or refuse single
/// messages, expiry, priorities and dead-lettering are refused with the argument named;
/// the retention and placement arguments are accepted and their types checked.
async fn stream_declaration_rules(url: String) {
    let conn = connect(&url).await;
    let q = uniq("s-decl");
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
        let e = expect_code(what, try_declare(&conn, &q, opts, stream(&[])).await, 406);
        expect_text(
            &e,
            &format!("PRECONDITION_FAILED - {text} for queue '{q}' in vhost '/'"),
        );
    }
    let e = expect_code(
        "server-named stream",
        try_declare(&conn, "", durable(), stream(&[])).await,
        406,
    );
    expect_text(
        &e,
        "PRECONDITION_FAILED - Cannot declare a server-named queue for type rabbit_stream_queue",
    );

    let not_for_streams = [
        ("x-max-length", AMQPValue::LongInt(10)),
        ("x-message-ttl", AMQPValue::LongInt(1000)),
        ("x-dead-letter-exchange", lstr("dlx")),
        ("x-expires", AMQPValue::LongInt(60_000)),
        ("x-overflow", lstr("reject-publish")),
        ("x-max-priority", AMQPValue::ShortShortUInt(5)),
        ("x-single-active-consumer", AMQPValue::Boolean(true)),
        ("x-delivery-limit", AMQPValue::LongInt(3)),
        ("x-queue-mode", lstr("lazy")),
        ("x-max-in-memory-length", AMQPValue::LongInt(10)),
    ];
    for (arg, value) in not_for_streams {
        let e = expect_code(
            arg,
            try_declare(&conn, &q, durable(), stream(&[(arg, value)])).await,
            406,
        );
        expect_text(
            &e,
            &format!(
                "PRECONDITION_FAILED - invalid arg '{arg}' for queue '{q}' in vhost '/' of queue type rabbit_stream_queue"
            ),
        );
    }
    let e = expect_code(
        "x-max-age as an integer",
        try_declare(
            &conn,
            &q,
            durable(),
            stream(&[("x-max-age", AMQPValue::LongInt(5))]),
        )
        .await,
        406,
    );
    expect_text(
        &e,
        &format!(
            "PRECONDITION_FAILED - invalid arg 'x-max-age' for queue '{q}' in vhost '/': {{unacceptable_type,"
        ),
    );
    let e = expect_code(
        "x-max-length-bytes as a string",
        try_declare(
            &conn,
            &q,
            durable(),
            stream(&[("x-max-length-bytes", lstr("2000"))]),
        )
        .await,
        406,
    );
    expect_text(
        &e,
        &format!(
            "PRECONDITION_FAILED - invalid arg 'x-max-length-bytes' for queue '{q}' in vhost '/': \"expected integer, got longstr\""
        ),
    );

    // None of the refusals left anything behind: the name is still free.
    let ch = channel(&conn).await;
    let e = expect_code(
        "passive declare after the refusals",
        step(
            "queue.declare passive",
            ch.queue_declare(
                q.as_str().into(),
                QueueDeclareOptions::default().passive(),
                FieldTable::default(),
            ),
        )
        .await,
        404,
    );
    expect_text(&e, &format!("NOT_FOUND - no queue '{q}' in vhost '/'"));

    let accepted = stream(&[
        ("x-max-age", lstr("7D")),
        ("x-max-length-bytes", AMQPValue::LongLongInt(10_000_000)),
        (
            "x-stream-max-segment-size-bytes",
            AMQPValue::LongInt(1_000_000),
        ),
        ("x-initial-cluster-size", AMQPValue::LongInt(1)),
        ("x-queue-leader-locator", lstr("client-local")),
    ]);
    let ch = channel(&conn).await;
    declare_queue(&ch, &q, durable(), accepted.clone()).await;
    declare_queue(&ch, &q, durable(), accepted.clone()).await;
    // Redeclaring compares the arguments in RabbitMQ's order, x-max-length-bytes before
    // x-queue-type before x-max-age.
    let mut other_age = accepted.clone();
    other_age.insert("x-max-age".into(), lstr("1D"));
    let e = expect_code(
        "redeclared with another x-max-age",
        try_declare(&conn, &q, durable(), other_age).await,
        406,
    );
    expect_text(
        &e,
        &format!(
            "PRECONDITION_FAILED - inequivalent arg 'x-max-age' for queue '{q}' in vhost '/': received '1D' but current is '7D'"
        ),
    );
    let e = expect_code(
        "redeclared without arguments",
        try_declare(&conn, &q, durable(), FieldTable::default()).await,
        406,
    );
    expect_text(
        &e,
        &format!(
            "PRECONDITION_FAILED - inequivalent arg 'x-max-length-bytes' for queue '{q}' in vhost '/': received none but current is the value '10000000' of type 'long'"
        ),
    );
    let plain = uniq("s-plain");
    declare_queue(&ch, &plain, durable(), stream(&[])).await;
    let e = expect_code(
        "redeclared without x-queue-type",
        try_declare(&conn, &plain, durable(), FieldTable::default()).await,
        406,
    );
    expect_text(
        &e,
        &format!(
            "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue '{plain}' in vhost '/': received none but current is the value 'stream' of type 'longstr'"
        ),
    );
    for name in [&q, &plain] {
        declare_queue(
            &ch,
            name,
            QueueDeclareOptions::default().passive(),
            FieldTable::default(),
        )
        .await;
    }
    finish(conn, &url, &[&plain, &q]).await;
}

/// What a log cannot do: take a message away (basic.get, purge, reject, nack),
/// deliver without acks or without a consumer prefetch, or prioritise consumers. Some
/// close the channel (406), the others the connection (540).
async fn stream_operations_refused(url: String) {
    let conn = connect(&url).await;
    let q = uniq("s-refuse");
    let ch = confirmed(&conn).await;
    declare_queue(&ch, &q, durable(), stream(&[])).await;
    assert!(
        publish_acked(&ch, &q, b"kept").await,
        "publish to a stream nacked"
    );

    // Connection errors, each on a connection of its own.
    let other = connect(&url).await;
    let och = channel(&other).await;
    let e = expect_code(
        "basic.get",
        step(
            "basic.get",
            och.basic_get(q.as_str().into(), BasicGetOptions { no_ack: false }),
        )
        .await
        .map(|m| m.map(|m| body(&m.delivery))),
        540,
    );
    expect_text(
        &e,
        &format!(
            "NOT_IMPLEMENTED - basic.get not supported by stream queues queue '{q}' in vhost '/'"
        ),
    );
    let other = connect(&url).await;
    let och = channel(&other).await;
    let e = expect_code(
        "queue.purge",
        step(
            "queue.purge",
            och.queue_purge(q.as_str().into(), QueuePurgeOptions::default()),
        )
        .await,
        540,
    );
    expect_text(
        &e,
        &format!(
            "NOT_IMPLEMENTED - queue.purge not supported by stream queues queue '{q}' in vhost '/'"
        ),
    );
    let other = connect(&url).await;
    let och = channel(&other).await;
    step("basic.qos", och.basic_qos(10, BasicQosOptions::default()))
        .await
        .expect("basic.qos");
    let e = expect_code(
        "basic.consume no-ack",
        try_consume(
            &och,
            &q,
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            args(&[("x-stream-offset", lstr("first"))]),
        )
        .await
        .map(|c| c.tag()),
        540,
    );
    expect_text(
        &e,
        &format!(
            "NOT_IMPLEMENTED - automatic acknowledgement not supported by stream queues queue '{q}' in vhost '/'"
        ),
    );

    // Channel errors: no prefetch (none, or only a global one), a consumer priority.
    let no_prefetch = format!(
        "PRECONDITION_FAILED - consumer prefetch count is not set for 'queue '{q}' in vhost '/''"
    );
    for global in [None, Some(10)] {
        let ch = channel(&conn).await;
        if let Some(n) = global {
            step(
                "global basic.qos",
                ch.basic_qos(n, BasicQosOptions { global: true }),
            )
            .await
            .expect("basic.qos");
        }
        let e = expect_code(
            &format!("basic.consume with global prefetch {global:?}"),
            try_consume(
                &ch,
                &q,
                BasicConsumeOptions::default(),
                args(&[("x-stream-offset", lstr("first"))]),
            )
            .await
            .map(|c| c.tag()),
            406,
        );
        expect_text(&e, &no_prefetch);
    }
    let ch = channel(&conn).await;
    step("basic.qos", ch.basic_qos(10, BasicQosOptions::default()))
        .await
        .expect("basic.qos");
    let e = expect_code(
        "basic.consume x-priority",
        try_consume(
            &ch,
            &q,
            BasicConsumeOptions::default(),
            args(&[("x-priority", AMQPValue::LongInt(5))]),
        )
        .await
        .map(|c| c.tag()),
        406,
    );
    expect_text(
        &e,
        &format!(
            "PRECONDITION_FAILED - invalid arg 'x-priority' for queue '{q}' in vhost '/' of queue type rabbit_stream_queue"
        ),
    );

    // The checks come in RabbitMQ's order: the offset first (before the prefetch, a
    // consumer priority or automatic acks), then the arguments a stream has no use for,
    // then the prefetch, automatic acks and a channel-wide prefetch.
    let bad_offset = format!(
        "PRECONDITION_FAILED - invalid arg 'x-stream-offset' for queue '{q}' in vhost '/': {{invalid_stream_offset_arg,{{longstr,<<\"2\">>}}}}"
    );
    let failover = format!(
        "PRECONDITION_FAILED - invalid arg 'x-cancel-on-ha-failover' for queue '{q}' in vhost '/' of queue type rabbit_stream_queue"
    );
    let two = ("x-stream-offset", lstr("2"));
    for (what, prefetch, no_ack, arguments, code, text) in [
        (
            "offset '2'",
            true,
            false,
            vec![two.clone()],
            406,
            &bad_offset,
        ),
        (
            "offset '2', no prefetch",
            false,
            false,
            vec![two.clone()],
            406,
            &bad_offset,
        ),
        (
            "offset '2', no-ack",
            true,
            true,
            vec![two.clone()],
            406,
            &bad_offset,
        ),
        (
            "offset '2', x-priority",
            true,
            false,
            vec![two.clone(), ("x-priority", AMQPValue::LongInt(1))],
            406,
            &bad_offset,
        ),
        (
            "x-cancel-on-ha-failover",
            true,
            false,
            vec![("x-cancel-on-ha-failover", AMQPValue::Boolean(true))],
            406,
            &failover,
        ),
    ] {
        let other = connect(&url).await;
        let och = channel(&other).await;
        if prefetch {
            step("basic.qos", och.basic_qos(10, BasicQosOptions::default()))
                .await
                .expect("basic.qos");
        }
        let e = expect_code(
            what,
            try_consume(
                &och,
                &q,
                BasicConsumeOptions {
                    no_ack,
                    ..Default::default()
                },
                args(&arguments),
            )
            .await
            .map(|c| c.tag()),
            code,
        );
        expect_text(&e, text);
        close(other).await;
    }
    {
        // A channel-wide prefetch in force beside the consumer's: 540.
        let other = connect(&url).await;
        let och = channel(&other).await;
        for global in [false, true] {
            step("basic.qos", och.basic_qos(10, BasicQosOptions { global }))
                .await
                .expect("basic.qos");
        }
        let e = expect_code(
            "basic.consume under a global prefetch",
            try_consume(
                &och,
                &q,
                BasicConsumeOptions::default(),
                args(&[("x-stream-offset", lstr("first"))]),
            )
            .await
            .map(|c| c.tag()),
            540,
        );
        expect_text(
            &e,
            &format!("NOT_IMPLEMENTED - queue '{q}' in vhost '/' does not support global qos"),
        );
    }
    {
        // The names of the offsets as bytes (type `x`, as pika sends a Python bytes).
        let other = connect(&url).await;
        let first = AMQPValue::ByteArray(b"first".to_vec().into());
        let (_och, mut consumer) = reader(&other, &q, Some(first), 10).await;
        let d = next(&mut consumer).await;
        assert_eq!((body(&d), offset_of(&d)), ("kept".into(), 0), "b\"first\"");
        close(other).await;
    }

    // basic.recover cannot give a stream's deliveries back either: RabbitMQ 3.10.8's
    // channel crashes on it (541 INTERNAL_ERROR), this broker refuses it (540) as it
    // refuses nack and reject. Either way the connection goes, nothing redelivered.
    {
        let other = connect(&url).await;
        let mut events = Box::pin(other.events_listener());
        let (och, mut consumer) = reader(&other, &q, Some(lstr("first")), 10).await;
        let d = next(&mut consumer).await;
        assert_eq!(
            (body(&d), offset_of(&d)),
            ("kept".into(), 0),
            "before basic.recover"
        );
        let _ = och
            .basic_recover(BasicRecoverOptions { requeue: true })
            .await;
        let e = broker_closed(&mut events).await;
        let code = reply_code(&e);
        assert!(
            matches!(code, Some(540 | 541)),
            "basic.recover on a stream's delivery: {e}"
        );
        if code == Some(540) {
            expect_text(
                &e,
                &format!(
                    "NOT_IMPLEMENTED - basic.recover not supported by stream queues queue '{q}' in vhost '/'"
                ),
            );
        }
    }

    // Giving a delivery back, either way, closes the connection.
    for (what, nack, requeue) in [
        ("basic.reject requeue", false, true),
        ("basic.reject", false, false),
        ("basic.nack requeue", true, true),
        ("basic.nack", true, false),
    ] {
        let other = connect(&url).await;
        let mut events = Box::pin(other.events_listener());
        let (och, mut consumer) = reader(&other, &q, Some(lstr("first")), 10).await;
        let d = next(&mut consumer).await;
        assert_eq!((body(&d), offset_of(&d)), ("kept".into(), 0), "{what}");
        let tag = d.delivery_tag;
        let sent = if nack {
            let multiple = false;
            step(
                what,
                och.basic_nack(tag, BasicNackOptions { multiple, requeue }),
            )
            .await
        } else {
            step(what, och.basic_reject(tag, BasicRejectOptions { requeue })).await
        };
        sent.unwrap_or_else(|e| panic!("send {what}: {e}"));
        let e = expect_code(what, Err::<(), _>(broker_closed(&mut events).await), 540);
        expect_text(
            &e,
            &format!(
                "NOT_IMPLEMENTED - basic.nack and basic.reject not supported by stream queues queue '{q}' in vhost '/'"
            ),
        );
    }

    // A nack that also covers a classic queue's delivery is refused all the same, and
    // takes nothing with it: the classic message is back once the connection is gone.
    let classic = uniq("s-classic");
    let cch = confirmed(&conn).await;
    declare_queue(&cch, &classic, QueueDeclareOptions::default(), args(&[])).await;
    assert!(publish_acked(&cch, &classic, b"classic").await, "nacked");
    {
        let other = connect(&url).await;
        let mut events = Box::pin(other.events_listener());
        let (och, mut from_classic) = reader(&other, &classic, None, 10).await;
        let d = next(&mut from_classic).await;
        assert_eq!((body(&d), d.delivery_tag), ("classic".into(), 1));
        let mut from_stream = try_consume(
            &och,
            &q,
            BasicConsumeOptions::default(),
            args(&[("x-stream-offset", lstr("first"))]),
        )
        .await
        .expect("basic.consume");
        let d = next(&mut from_stream).await;
        assert_eq!((body(&d), d.delivery_tag), ("kept".into(), 2));
        let multiple = true;
        step(
            "basic.nack multiple",
            och.basic_nack(
                2,
                BasicNackOptions {
                    multiple,
                    requeue: true,
                },
            ),
        )
        .await
        .expect("send basic.nack");
        expect_code(
            "basic.nack over both queues",
            Err::<(), _>(broker_closed(&mut events).await),
            540,
        );
    }
    let deadline = Instant::now() + STEP;
    while ready_count(&conn, &classic).await != 1 {
        assert!(
            Instant::now() < deadline,
            "the classic queue's message did not come back within {STEP:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The message is still there for a consumer that acks.
    let (rch, mut consumer) = reader(&conn, &q, Some(lstr("first")), 10).await;
    let d = next(&mut consumer).await;
    assert_eq!((body(&d), offset_of(&d)), ("kept".into(), 0));
    ack(&rch, d.delivery_tag, false).await;
    nothing_more(&mut consumer).await;
    finish(conn, &url, &[&q, &classic]).await;
}

/// Each value of `x-stream-offset` picks where a consumer starts; every delivery says its
/// offset in the `x-stream-offset` header, keeps the publisher's headers and its exchange
/// and routing key.
async fn stream_offsets(url: String) {
    let conn = connect(&url).await;
    let (q, x) = (uniq("s-offsets"), uniq("s-offsets-x"));
    let pch = confirmed(&conn).await;
    declare_queue(&pch, &q, durable(), stream(&[])).await;
    declare_exchange(&pch, &x, ExchangeKind::Direct).await;
    bind(&pch, &q, &x, "k", FieldTable::default()).await;
    let mut sent: Vec<String> = Vec::new();
    // One at a time, each confirmed before the next: each message is a chunk of its own,
    // which is what "last" starts from.
    let send = async |sent: &mut Vec<String>| {
        let n = sent.len();
        let text = format!("m{n}");
        let props = BasicProperties::default()
            .with_content_type("text/plain".into())
            .with_headers(args(&[("h", lstr(&format!("v{n}")))]));
        publish_props(&pch, &x, "k", text.as_bytes(), props).await;
        sent.push(text);
    };
    for _ in 0..5 {
        send(&mut sent).await;
    }

    let (fch, mut first) = reader(&conn, &q, Some(lstr("first")), 10).await;
    for (i, d) in expect_offsets("first", &mut first, 0..=4, 1, &sent)
        .await
        .iter()
        .enumerate()
    {
        assert_eq!(d.exchange.as_str(), x);
        assert_eq!(d.routing_key.as_str(), "k");
        assert_eq!(
            header(&d.properties, "h"),
            Some(&lstr(&format!("v{i}"))),
            "the publisher's header at {i}"
        );
        assert_eq!(
            d.properties.content_type().as_ref().map(|c| c.as_str()),
            Some("text/plain")
        );
    }
    nothing_more(&mut first).await;

    // Starting after the end: only what is published from now on. An offset past the
    // end waits for that offset, skipping what comes before it.
    let future = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    let mut only_new = Vec::new();
    for (what, offset, from) in [
        ("next", Some(lstr("next")), 5),
        ("no x-stream-offset", None, 5),
        ("a timestamp to come", Some(AMQPValue::Timestamp(future)), 5),
        ("offset 7, past the end", Some(AMQPValue::LongLongInt(7)), 7),
    ] {
        only_new.push((what, from, reader(&conn, &q, offset, 10).await));
    }
    for (_, _, (_, consumer)) in &mut only_new {
        nothing_more(consumer).await;
    }
    for _ in 0..3 {
        send(&mut sent).await;
    }
    for (what, from, (_, consumer)) in &mut only_new {
        expect_offsets(what, consumer, *from..=7, 1, &sent).await;
        nothing_more(consumer).await;
    }
    expect_offsets("first, what came after", &mut first, 5..=7, 6, &sent).await;
    ack(&fch, 8, true).await;

    // Starting in the log.
    for (what, offset, from) in [
        ("offset 2 (long)", AMQPValue::LongLongInt(2), 2),
        ("offset 3 (signed int)", AMQPValue::LongInt(3), 3),
        ("a negative offset", AMQPValue::LongLongInt(-5), 0),
        ("last", lstr("last"), 7),
        ("a timestamp long past", AMQPValue::Timestamp(1), 0),
        ("the last hour", lstr("1h"), 0),
    ] {
        let (ch, mut consumer) = reader(&conn, &q, Some(offset), 10).await;
        expect_offsets(what, &mut consumer, from..=7, 1, &sent).await;
        nothing_more(&mut consumer).await;
        ack(&ch, 8 - from as u64, true).await;
    }
    drop(only_new);
    finish(conn, &url, &[&q]).await;
}

/// A consumer gets at most its prefetch of unacked messages; acks make room and take
/// nothing away, so every consumer reads the whole log at its own pace. `exclusive` does
/// not keep others out; basic.cancel stops one consumer only.
async fn stream_consumers_read_independently(url: String) {
    let conn = connect(&url).await;
    let q = uniq("s-readers");
    let pch = confirmed(&conn).await;
    declare_queue(&pch, &q, durable(), stream(&[])).await;
    let mut sent: Vec<String> = Vec::new();
    for i in 0..10 {
        let text = format!("r{i}");
        assert!(
            publish_acked(&pch, &q, text.as_bytes()).await,
            "{text} nacked"
        );
        sent.push(text);
    }

    let (ach, mut a) = reader(&conn, &q, Some(lstr("first")), 3).await;
    expect_offsets("prefetch 3", &mut a, 0..=2, 1, &sent).await;
    nothing_more(&mut a).await;
    ack(&ach, 1, false).await;
    expect_offsets("after one ack", &mut a, 3..=3, 4, &sent).await;
    nothing_more(&mut a).await;
    ack(&ach, 4, true).await;
    expect_offsets("after a multiple ack", &mut a, 4..=6, 5, &sent).await;
    nothing_more(&mut a).await;

    // Another reader from the start gets everything, the acked ones too.
    let (bch, mut b) = reader(&conn, &q, Some(lstr("first")), 20).await;
    expect_offsets("a second reader", &mut b, 0..=9, 1, &sent).await;
    nothing_more(&mut b).await;
    ack(&bch, 10, true).await;

    // An exclusive consumer (from "next") beside a plain one from the start.
    let xch = channel(&conn).await;
    step("basic.qos", xch.basic_qos(5, BasicQosOptions::default()))
        .await
        .expect("basic.qos");
    let mut exclusive = exclusive_consume(&xch, &q)
        .await
        .unwrap_or_else(|e| panic!("exclusive basic.consume on a stream: {e}"));
    let (_cch, mut c) = reader(&conn, &q, Some(lstr("first")), 20).await;
    expect_offsets("beside an exclusive consumer", &mut c, 0..=9, 1, &sent).await;

    step(
        "basic.cancel",
        bch.basic_cancel(b.tag(), BasicCancelOptions::default()),
    )
    .await
    .expect("basic.cancel");
    let text = "r10".to_string();
    assert!(
        publish_acked(&pch, &q, text.as_bytes()).await,
        "{text} nacked"
    );
    sent.push(text);
    expect_offsets("exclusive, from next", &mut exclusive, 10..=10, 1, &sent).await;
    expect_offsets("the plain one", &mut c, 10..=10, 11, &sent).await;
    nothing_more(&mut b).await;
    // A still holds 3 unacked; acking them lets it go on to the end.
    ack(&ach, 7, true).await;
    expect_offsets("the first reader, on", &mut a, 7..=9, 8, &sent).await;
    nothing_more(&mut a).await;
    ack(&ach, 10, true).await;
    expect_offsets("the first reader, at the end", &mut a, 10..=10, 11, &sent).await;
    finish(conn, &url, &[&q]).await;
}

/// `x-max-length-bytes` drops the oldest segments of the log: a reader from "first" then
/// starts past offset 0, offsets stay as they were given, and the newest is kept.
async fn stream_retention(url: String) {
    let conn = connect(&url).await;
    let q = uniq("s-retain");
    let pch = confirmed(&conn).await;
    declare_queue(
        &pch,
        &q,
        durable(),
        stream(&[
            ("x-max-length-bytes", AMQPValue::LongInt(2000)),
            ("x-stream-max-segment-size-bytes", AMQPValue::LongInt(500)),
        ]),
    )
    .await;
    let sent: Vec<String> = (0..40).map(|i| format!("{i:0>100}")).collect();
    for text in &sent {
        assert!(publish_acked(&pch, &q, text.as_bytes()).await, "nacked");
    }

    // Old segments go once newer ones fill up, in RabbitMQ a moment after the write; on a
    // loaded machine its first delivery to a new reader can take seconds, so a reader
    // that gets nothing in time is replaced too.
    let patience = 3 * STEP;
    let deadline = Instant::now() + patience;
    let (ch, mut consumer, first) = loop {
        let (ch, mut consumer) = reader(&conn, &q, Some(lstr("first")), 100).await;
        if let Ok(Some(Ok(d))) = tokio::time::timeout(STEP, consumer.next()).await
            && offset_of(&d) > 0
        {
            break (ch, consumer, d);
        }
        assert!(
            Instant::now() < deadline,
            "offset 0 still in a stream of 4000 bytes limited to 2000 after {patience:?}"
        );
        let _ = step("channel.close", ch.close(200, "again".into())).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // What is left is the newest messages, in order, under increasing offsets. RabbitMQ's
    // offsets may skip a number where a segment starts, so only their order is checked.
    let from = offset_of(&first);
    let oldest = sent
        .iter()
        .position(|m| *m == body(&first))
        .unwrap_or_else(|| panic!("{:?} at {from} was never sent", body(&first)));
    assert!(oldest > 0, "the oldest message is kept, at offset {from}");
    let mut last = from;
    for (tag, expected) in (2..).zip(&sent[oldest + 1..]) {
        let d = next(&mut consumer).await;
        assert_eq!(body(&d), *expected, "after offset {last}");
        assert!(
            offset_of(&d) > last,
            "offset {} after {last}",
            offset_of(&d)
        );
        assert_eq!(d.delivery_tag, tag);
        last = offset_of(&d);
    }
    nothing_more(&mut consumer).await;
    ack(&ch, (sent.len() - oldest) as u64, true).await;
    finish(conn, &url, &[&q]).await;
}

/// A policy's `max-age` applies to a stream declared without one: once its oldest
/// segments are older than that, the next segment the stream starts drops them.
async fn stream_retention_by_policy(url: String, api_base: String, _metrics: String) {
    use reqwest::Method;
    use serde_json::json;

    let conn = connect(&url).await;
    let q = uniq("s-aged");
    let pch = confirmed(&conn).await;
    declare_queue(
        &pch,
        &q,
        durable(),
        stream(&[("x-stream-max-segment-size-bytes", AMQPValue::LongInt(500))]),
    )
    .await;
    let policy = format!("/api/policies/%2F/{q}");
    let definition = json!({"pattern": format!("^{q}$"), "apply-to": "queues",
                            "definition": {"max-age": "1s"}});
    let (status, answer) = api(&api_base, Method::PUT, &policy, Some(definition)).await;
    assert!(status == 201 || status == 204, "{status} {answer}");
    let publish = |range: std::ops::Range<usize>| {
        let pch = pch.clone();
        let q = q.clone();
        async move {
            for i in range {
                let text = format!("{i:0>100}");
                assert!(publish_acked(&pch, &q, text.as_bytes()).await, "nacked");
            }
        }
    };
    publish(0..10).await;
    // Age is the point here: the first messages must be older than the policy's second
    // before newer segments are written.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    publish(10..20).await;

    let newest = format!("{:0>100}", 19);
    let deadline = Instant::now() + STEP;
    loop {
        let (ch, mut consumer) = reader(&conn, &q, Some(lstr("first")), 100).await;
        let d = next(&mut consumer).await;
        if offset_of(&d) > 0 {
            // What is left runs on to the newest.
            let mut last = d;
            while body(&last) != newest {
                last = next(&mut consumer).await;
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "offset 0 still in the stream {STEP:?} after its messages aged past the policy's max-age"
        );
        let _ = step("channel.close", ch.close(200, "again".into())).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _) = api(&api_base, Method::DELETE, &policy, None).await;
    assert_eq!(status, 204, "delete the policy");
    finish(conn, &url, &[&q]).await;
}
