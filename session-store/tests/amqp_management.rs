//! The management HTTP API against a running broker: a real HTTP client (`reqwest`) reads
//! what `lapin` clients did.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::{Value, json as js};
use session_store::amqp::{AmqpConfig, Definitions, Node, management, serve};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const STEP: Duration = Duration::from_secs(10);

async fn step<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, fut)
        .await
        .expect("step timed out")
}

struct Running {
    amqp: u16,
    http_port: u16,
    http: String,
    _stop: Vec<oneshot::Sender<()>>,
}

/// The broker with vhosts `/` and `other` and a `watcher` user (tag management) who may
/// only see `other`.
async fn running() -> Running {
    running_with(session_store::amqp::default_watermark()).await
}

/// [`running`] with this memory high watermark, in bytes.
async fn running_with(memory_high_watermark: u64) -> Running {
    let mut definitions = Definitions::default();
    definitions.vhosts.push("other".into());
    definitions.users.grant(
        "guest",
        "other",
        session_store::amqp::permissions::Permissions::all(),
    );
    definitions.users.add(session_store::amqp::users::User {
        name: "watcher".into(),
        password: session_store::amqp::users::PasswordHash::new("pw"),
        tags: vec!["management".into()],
    });
    definitions.users.grant(
        "watcher",
        "other",
        session_store::amqp::permissions::Permissions::all(),
    );
    definitions.add_admin("plain", "pw");
    definitions.users.add(session_store::amqp::users::User {
        name: "plain".into(),
        password: session_store::amqp::users::PasswordHash::new("pw"),
        tags: Vec::new(),
    });
    let node = Node::new(AmqpConfig {
        definitions,
        memory_high_watermark,
        ..AmqpConfig::default()
    })
    .expect("node");
    let amqp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let http = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let amqp_port = amqp.local_addr().expect("addr").port();
    let http_addr = http.local_addr().expect("addr");
    let (stop_amqp, amqp_stopped) = oneshot::channel::<()>();
    let (stop_http, http_stopped) = oneshot::channel::<()>();
    tokio::spawn(serve(amqp, Arc::clone(&node), async {
        let _ = amqp_stopped.await;
    }));
    tokio::spawn(management::serve(http, node, async {
        let _ = http_stopped.await;
    }));
    Running {
        amqp: amqp_port,
        http_port: http_addr.port(),
        http: format!("http://{http_addr}"),
        _stop: vec![stop_amqp, stop_http],
    }
}

async fn get(r: &Running, path: &str, user: &str, password: &str) -> reqwest::Response {
    step(
        reqwest::Client::new()
            .get(format!("{}{path}", r.http))
            .basic_auth(user, Some(password))
            .send(),
    )
    .await
    .expect("request")
}

async fn json(r: &Running, path: &str) -> Value {
    let response = get(r, path, "guest", "guest").await;
    assert_eq!(response.status(), 200, "{path}");
    step(response.json()).await.expect("json")
}

async fn channel(r: &Running, vhost: &str) -> (Connection, Channel) {
    let url = format!("amqp://guest:guest@127.0.0.1:{}/{vhost}", r.amqp);
    let conn = step(Connection::connect(&url, ConnectionProperties::default()))
        .await
        .expect("connect");
    let ch = step(conn.create_channel()).await.expect("channel");
    (conn, ch)
}

async fn publish(ch: &Channel, queue: &str, n: usize) {
    for _ in 0..n {
        step(ch.basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            b"m",
            BasicProperties::default(),
        ))
        .await
        .expect("publish");
    }
}

/// The status and JSON body of a GET as guest.
async fn status_and_json(r: &Running, path: &str) -> (u16, Value) {
    let response = get(r, path, "guest", "guest").await;
    let status = response.status().as_u16();
    (status, step(response.json()).await.expect("json"))
}

/// Polls `path` until its status is `status`; returns the body then.
async fn until_status(r: &Running, path: &str, status: u16) -> Value {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let (got, body) = status_and_json(r, path).await;
        if got == status {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path}: {got} {body:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The entries of a JSON list.
fn list(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

/// Polls `path` until `ok` holds for its JSON.
async fn until(r: &Running, path: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let v = json(r, path).await;
        if ok(&v) {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{path}: {v:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn requires_a_management_user() {
    let r = running().await;
    let anonymous = step(reqwest::get(format!("{}/api/overview", r.http)))
        .await
        .expect("request");
    assert_eq!(anonymous.status(), 401);
    assert!(
        anonymous
            .headers()
            .get("www-authenticate")
            .is_some_and(|v| v.to_str().is_ok_and(|s| s.starts_with("Basic"))),
    );
    // RabbitMQ's words for each refusal.
    for (user, password, error, reason) in [
        ("guest", "wrong", "not_authorized", "Login failed"),
        ("plain", "pw", "not_authorised", "Not management user"),
    ] {
        let refused = get(&r, "/api/overview", user, password).await;
        assert_eq!(refused.status(), 401, "{user}");
        let body: Value = step(refused.json()).await.expect("json");
        assert_eq!(body, js!({"error": error, "reason": reason}));
    }
    // Node figures are for monitors and administrators.
    let watched = get(&r, "/api/nodes", "watcher", "pw").await;
    assert_eq!(watched.status(), 401);
    let nodes = json(&r, "/api/nodes").await;
    let node = &list(&nodes)[0];
    assert_eq!(node["running"], true);
    assert_eq!(node["mem_alarm"], false);
    assert!(node["mem_used"].as_u64().is_some_and(|m| m > 0), "{node}");
    let name = node["name"].as_str().expect("a name");
    assert_eq!(json(&r, &format!("/api/nodes/{name}")).await["name"], name);
    let me = json(&r, "/api/whoami").await;
    assert_eq!(me["name"], "guest");
    assert_eq!(me["tags"][0], "administrator");
}

#[tokio::test(flavor = "multi_thread")]
async fn overview_and_queues_follow_publishing_and_consuming() {
    let r = running().await;
    let (_conn, ch) = channel(&r, "%2f").await;
    step(ch.queue_declare(
        "work".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .expect("declare");
    publish(&ch, "work", 5).await;
    let o = until(&r, "/api/overview", |o| {
        o["queue_totals"]["messages_ready"] == 5
    })
    .await;
    assert_eq!(o["object_totals"]["queues"], 1);
    assert_eq!(o["object_totals"]["connections"], 1);
    assert_eq!(o["object_totals"]["channels"], 1);
    assert_eq!(o["message_stats"]["publish"], 5);
    assert!(o["message_stats"]["publish_details"]["rate"].is_number());
    assert_eq!(o["product_name"], "session-store");

    // Two deliveries held unacked by a consumer with prefetch 2, one taken by get.
    let (_c2, consumer) = channel(&r, "%2f").await;
    step(consumer.basic_qos(2, BasicQosOptions::default()))
        .await
        .expect("qos");
    let _deliveries = step(consumer.basic_consume(
        "work".into(),
        "c1".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .expect("consume");
    step(ch.basic_get("work".into(), BasicGetOptions { no_ack: true }))
        .await
        .expect("get");
    let q = until(&r, "/api/queues/%2F/work", |q| {
        q["messages_unacknowledged"] == 2 && q["messages_ready"] == 2
    })
    .await;
    assert_eq!(q["consumers"], 1);
    assert_eq!(q["vhost"], "/");
    assert_eq!(q["durable"], false);
    assert_eq!(q["message_stats"]["publish"], 5);
    assert_eq!(q["message_stats"]["deliver_get"], 3);
    assert_eq!(q["message_stats"]["get_no_ack"], 1);
    assert_eq!(q["message_bytes_ready"], 2);
    assert_eq!(q["message_bytes_unacknowledged"], 2);
    assert_eq!(q["message_bytes"], 4);
    assert!(q["messages_details"]["rate"].is_number());
    assert!(q["messages_unacknowledged_details"]["rate"].is_number());
    assert_eq!(q["exclusive_consumer_tag"], Value::Null);
    assert_eq!(q["policy"], Value::Null);
    assert_eq!(
        q["consumer_capacity"], 0.0,
        "the one consumer is at its prefetch"
    );
    for not_per_queue in ["confirm", "return_unroutable", "drop_unroutable"] {
        assert!(
            q["message_stats"].get(not_per_queue).is_none(),
            "{not_per_queue}"
        );
    }
    let details = list(&q["consumer_details"]);
    assert_eq!(details.len(), 1, "{q:#}");
    assert_eq!(details[0]["consumer_tag"], "c1");
    assert_eq!(details[0]["prefetch_count"], 2);
    let listed = json(&r, "/api/queues/%2F").await;
    assert!(
        listed[0].get("consumer_details").is_none(),
        "only the single queue lists its consumers"
    );
    let o = json(&r, "/api/overview").await;
    assert!(o["queue_totals"]["messages_details"]["rate"].is_number());
    assert_eq!(o["rabbitmq_version"], o["management_version"]);
    let types: Vec<&str> = list(&o["exchange_types"])
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(types, ["direct", "fanout", "headers", "topic"]);
    for (protocol, port) in [("http", r.http_port), ("amqp", r.amqp)] {
        assert!(
            list(&o["listeners"])
                .iter()
                .any(|l| l["protocol"] == protocol && l["port"] == port),
            "{protocol} listener in {o:#}"
        );
    }
    assert_eq!(o["object_totals"]["consumers"], 1);
    assert_eq!(o["queue_totals"]["messages"], 4);
    assert_eq!(o["message_stats"]["deliver_get"], 3);
    let conns = json(&r, "/api/connections").await;
    assert_eq!(conns.as_array().map(Vec::len), Some(2));
    assert_eq!(conns[0]["user"], "guest");
    let channels = json(&r, "/api/channels").await;
    assert!(
        channels
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["messages_unacknowledged"] == 2))
    );
    let bindings = json(&r, "/api/bindings/%2F").await;
    assert_eq!(bindings[0]["destination"], "work", "the default binding");
    assert_eq!(
        get(&r, "/api/queues/%2F/missing", "guest", "guest")
            .await
            .status(),
        404
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn listings_filter_by_vhost_and_by_what_the_user_may_see() {
    let r = running().await;
    let (_c1, root) = channel(&r, "%2f").await;
    let (_c2, other) = channel(&r, "other").await;
    for (ch, name) in [(&root, "in-root"), (&other, "in-other")] {
        step(ch.queue_declare(
            name.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ))
        .await
        .expect("declare");
    }
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|q| q["name"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        names(&json(&r, "/api/queues").await),
        vec!["in-root", "in-other"]
    );
    assert_eq!(
        names(&json(&r, "/api/queues/other").await),
        vec!["in-other"]
    );
    assert_eq!(names(&json(&r, "/api/queues/%2F").await), vec!["in-root"]);
    assert_eq!(names(&json(&r, "/api/vhosts").await), vec!["/", "other"]);
    let exchanges = json(&r, "/api/exchanges/other").await;
    assert!(names(&exchanges).contains(&"amq.topic".to_string()));
    assert!(
        exchanges
            .as_array()
            .is_some_and(|a| a.iter().all(|x| x["vhost"] == "other"))
    );
    assert_eq!(
        get(&r, "/api/queues/nowhere", "guest", "guest")
            .await
            .status(),
        404
    );
    let watcher: Value = step(get(&r, "/api/queues", "watcher", "pw").await.json())
        .await
        .expect("json");
    assert_eq!(
        names(&watcher),
        vec!["in-other"],
        "management users see their vhosts"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn consumers_list_their_queue_channel_and_standing() {
    let r = running().await;
    let (_c1, ch) = channel(&r, "%2f").await;
    let (_c2, other) = channel(&r, "other").await;
    let mut sac = FieldTable::default();
    sac.insert(
        "x-single-active-consumer".into(),
        lapin::types::AMQPValue::Boolean(true),
    );
    step(ch.queue_declare("sac".into(), QueueDeclareOptions::default(), sac))
        .await
        .expect("declare sac");
    step(other.queue_declare(
        "plain".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .expect("declare plain");
    step(ch.basic_qos(7, BasicQosOptions::default()))
        .await
        .expect("qos");
    let mut priority = FieldTable::default();
    priority.insert("x-priority".into(), lapin::types::AMQPValue::LongInt(5));
    // Held: lapin cancels a consumer when it is dropped.
    let mut consumers = Vec::new();
    for (tag, args) in [("first", priority), ("second", FieldTable::default())] {
        consumers.push(
            step(ch.basic_consume(
                "sac".into(),
                tag.into(),
                BasicConsumeOptions::default(),
                args,
            ))
            .await
            .expect("consume sac"),
        );
    }
    let _auto = step(other.basic_consume(
        "plain".into(),
        "auto".into(),
        BasicConsumeOptions {
            no_ack: true,
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .expect("consume plain");

    let all = json(&r, "/api/consumers").await;
    let by_tag = |tag: &str| -> Value {
        all.as_array()
            .and_then(|a| a.iter().find(|c| c["consumer_tag"] == tag))
            .cloned()
            .unwrap_or_else(|| panic!("no consumer {tag} in {all:#}"))
    };
    let first = by_tag("first");
    assert_eq!(first["queue"]["name"], "sac");
    assert_eq!(first["queue"]["vhost"], "/");
    assert_eq!(first["ack_required"], true);
    assert_eq!(first["prefetch_count"], 7);
    assert_eq!(first["arguments"]["x-priority"], 5);
    assert_eq!(first["active"], true);
    assert_eq!(first["activity_status"], "single_active");
    assert_eq!(first["channel_details"]["number"], 1);
    assert_eq!(first["channel_details"]["user"], "guest");
    let second = by_tag("second");
    assert_eq!(second["active"], false);
    assert_eq!(second["activity_status"], "waiting");
    assert_eq!(second["arguments"], serde_json::json!({}));
    let auto = by_tag("auto");
    assert_eq!(auto["queue"]["vhost"], "other");
    assert_eq!(auto["ack_required"], false);
    assert_eq!(auto["exclusive"], true);
    assert_eq!(auto["activity_status"], "up");

    let sac_queue = json(&r, "/api/queues/%2F/sac").await;
    assert_eq!(sac_queue["single_active_consumer_tag"], "first");
    assert_eq!(sac_queue["exclusive_consumer_tag"], Value::Null);
    assert_eq!(list(&sac_queue["consumer_details"]).len(), 2);
    assert_eq!(
        json(&r, "/api/queues/other/plain").await["exclusive_consumer_tag"],
        "auto"
    );
    let in_other = json(&r, "/api/consumers/other").await;
    assert_eq!(in_other.as_array().map(Vec::len), Some(1), "{in_other:#}");
    assert_eq!(
        get(&r, "/api/consumers/nowhere", "guest", "guest")
            .await
            .status(),
        404
    );
    // The single active consumer leaves; the waiting one takes over.
    step(ch.basic_cancel("first".into(), Default::default()))
        .await
        .expect("cancel");
    until(&r, "/api/consumers/%2F", |v| {
        v.as_array().is_some_and(|a| {
            a.len() == 1
                && a[0]["consumer_tag"] == "second"
                && a[0]["activity_status"] == "single_active"
        })
    })
    .await;
    assert_eq!(
        json(&r, "/api/queues/%2F/sac").await["single_active_consumer_tag"],
        "second"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_loads() {
    let r = running().await;
    let page = get(&r, "/", "guest", "guest").await;
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()
            .get("content-type")
            .is_some_and(|v| v.to_str().is_ok_and(|s| s.starts_with("text/html")))
    );
    let body = step(page.text()).await.expect("body");
    assert!(body.contains("api/overview"));
    assert!(body.contains("textContent"));
    assert!(!body.contains("innerHTML"));
    assert!(!body.contains("src=\"http"), "no external assets");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_checks_pass_on_a_healthy_broker() {
    let r = running().await;
    for path in [
        "/api/healthchecks/node",
        "/api/health/checks/alarms",
        "/api/health/checks/local-alarms",
        "/api/health/checks/virtual-hosts",
        "/api/aliveness-test/%2F",
        "/api/aliveness-test/other",
    ] {
        assert_eq!(json(&r, path).await, js!({"status": "ok"}), "{path}");
    }
    // The round trip leaves RabbitMQ's queue behind, empty, and counts the publish.
    let q = json(&r, "/api/queues/%2F/aliveness-test").await;
    assert_eq!(q["messages"], 0);
    assert_eq!(q["message_stats"]["publish"], 1);
    assert_eq!(q["message_stats"]["get_no_ack"], 1);
    assert_eq!(
        json(&r, "/api/aliveness-test/%2F").await["status"],
        "ok",
        "a second run finds the queue declared"
    );
    let (status, body) = status_and_json(&r, "/api/aliveness-test/nowhere").await;
    assert_eq!(status, 404);
    assert_eq!(body["reason"], "Not Found");
    let watcher = get(&r, "/api/aliveness-test/%2F", "watcher", "pw").await;
    assert_eq!(watcher.status(), 404, "a vhost the user may not see");

    let (status, body) = status_and_json(&r, "/api/health/checks/port-listener/abc").await;
    assert_eq!(status, 400);
    assert_eq!(body["reason"], "Invalid port");
    for port in [r.amqp, r.http_port] {
        let ok = json(&r, &format!("/api/health/checks/port-listener/{port}")).await;
        assert_eq!(ok, js!({"status": "ok", "port": port}));
    }
    let (status, body) = status_and_json(&r, "/api/health/checks/port-listener/1").await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], "failed");
    assert_eq!(body["reason"], "No active listener");
    assert_eq!(body["missing"], 1);
    assert!(
        list(&body["ports"]).iter().any(|p| *p == r.amqp),
        "{body:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_memory_alarm_fails_the_alarm_checks_until_it_clears() {
    // One byte: the first message body held trips the alarm.
    let r = running_with(1).await;
    let (_publisher, ch) = channel(&r, "%2f").await;
    step(ch.queue_declare(
        "held".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .expect("declare");
    step(ch.basic_publish(
        "".into(),
        "held".into(),
        BasicPublishOptions::default(),
        b"twelve bytes",
        BasicProperties::default(),
    ))
    .await
    .expect("publish");
    let body = until_status(&r, "/api/health/checks/alarms", 503).await;
    assert_eq!(
        body,
        js!({
            "status": "failed",
            "reason": "There are alarms in effect in the cluster",
            "alarms": [{"node": "session-store@localhost", "resource": "memory"}],
        })
    );
    let (status, local) = status_and_json(&r, "/api/health/checks/local-alarms").await;
    assert_eq!(status, 503);
    assert_eq!(local["reason"], "There are alarms in effect on the node");
    assert_eq!(local["alarms"][0]["resource"], "memory");
    assert_eq!(
        json(&r, "/api/healthchecks/node").await["status"],
        "ok",
        "the node itself is up"
    );

    // Taking the message (on a connection that never published, so is not blocked)
    // releases its bytes and the alarm clears.
    let (_reader, reader) = channel(&r, "%2f").await;
    let got = step(reader.basic_get("held".into(), BasicGetOptions { no_ack: true }))
        .await
        .expect("get");
    assert!(got.is_some(), "the held message");
    drop(got);
    assert_eq!(
        until_status(&r, "/api/health/checks/alarms", 200).await,
        js!({"status": "ok"})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn single_objects_and_binding_listings() {
    let r = running().await;
    let (_conn, ch) = channel(&r, "%2f").await;
    for (name, kind) in [("ex", ExchangeKind::Topic), ("ex2", ExchangeKind::Fanout)] {
        step(ch.exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ))
        .await
        .expect("exchange");
    }
    step(ch.queue_declare(
        "q1".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .expect("queue");
    let mut args = FieldTable::default();
    args.insert("k".into(), AMQPValue::LongString("v".into()));
    for (key, args) in [("a.#", FieldTable::default()), ("", args)] {
        step(ch.queue_bind(
            "q1".into(),
            "ex".into(),
            key.into(),
            QueueBindOptions::default(),
            args,
        ))
        .await
        .expect("bind");
    }
    step(ch.exchange_bind(
        "ex2".into(),
        "ex".into(),
        "a b".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .expect("exchange bind");

    let x = json(&r, "/api/exchanges/%2F/ex").await;
    assert_eq!(x["name"], "ex");
    assert_eq!(x["type"], "topic");
    assert_eq!(x["vhost"], "/");
    assert_eq!(x["incoming"], js!([]));
    let default = json(&r, "/api/exchanges/%2F/amq.default").await;
    assert_eq!(default["name"], "");
    assert_eq!(default["type"], "direct");
    assert_eq!(
        get(&r, "/api/exchanges/%2F/nope", "guest", "guest")
            .await
            .status(),
        404
    );

    let v = json(&r, "/api/vhosts/other").await;
    assert_eq!(v["name"], "other");
    assert!(v["messages_details"]["rate"].is_number());
    assert_eq!(
        get(&r, "/api/vhosts/nope", "guest", "guest").await.status(),
        404
    );
    assert_eq!(
        get(&r, "/api/vhosts/%2F", "watcher", "pw").await.status(),
        404,
        "a vhost the user may not see"
    );

    let q = json(&r, "/api/queues/%2F/q1/bindings").await;
    let keys: Vec<(&str, &str, &str)> = list(&q)
        .iter()
        .map(|b| {
            (
                b["source"].as_str().unwrap_or("?"),
                b["routing_key"].as_str().unwrap_or("?"),
                b["properties_key"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    assert_eq!(keys.len(), 3, "{q:#}");
    assert_eq!(keys[0], ("", "q1", "q1"), "the default exchange's first");
    assert_eq!(keys[2], ("ex", "a.#", "a.%23"));
    let (source, key, with_args) = keys[1];
    assert_eq!((source, key), ("ex", ""));
    assert!(
        with_args.starts_with('~') && with_args.len() > 1,
        "arguments add a hash: {with_args}"
    );
    assert_eq!(
        get(&r, "/api/queues/%2F/missing/bindings", "guest", "guest")
            .await
            .status(),
        404
    );

    let source = json(&r, "/api/exchanges/%2F/ex/bindings/source").await;
    assert_eq!(list(&source).len(), 3, "{source:#}");
    let destination = json(&r, "/api/exchanges/%2F/ex2/bindings/destination").await;
    assert_eq!(list(&destination).len(), 1, "{destination:#}");
    assert_eq!(destination[0]["source"], "ex");
    assert_eq!(destination[0]["destination_type"], "exchange");
    assert_eq!(destination[0]["properties_key"], "a+b");
    assert_eq!(
        json(&r, "/api/exchanges/%2F/ex2/bindings/source").await,
        js!([])
    );
    assert_eq!(
        list(&json(&r, "/api/bindings/%2F/e/ex/q/q1").await).len(),
        2
    );
    assert_eq!(
        json(&r, "/api/bindings/%2F/e/ex/e/ex2").await,
        destination,
        "the same binding"
    );
    assert_eq!(json(&r, "/api/bindings/%2F/e/ex2/q/q1").await, js!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn users_permissions_and_definitions_are_for_administrators() {
    let r = running().await;
    for path in [
        "/api/users",
        "/api/users/guest",
        "/api/permissions",
        "/api/definitions",
    ] {
        let refused = get(&r, path, "watcher", "pw").await;
        assert_eq!(refused.status(), 401, "{path}");
        let body: Value = step(refused.json()).await.expect("json");
        assert_eq!(body["reason"], "Not administrator user");
    }
    let users = json(&r, "/api/users").await;
    let names: Vec<&str> = list(&users)
        .iter()
        .filter_map(|u| u["name"].as_str())
        .collect();
    assert_eq!(names, ["guest", "plain", "watcher"]);
    let watcher = json(&r, "/api/users/watcher").await;
    assert_eq!(watcher["tags"], js!(["management"]));
    assert_eq!(
        watcher["hashing_algorithm"],
        "rabbit_password_hashing_sha256"
    );
    assert_eq!(watcher["limits"], js!({}));
    assert!(
        watcher["password_hash"]
            .as_str()
            .is_some_and(|h| h.len() == 48),
        "base64 of 4 bytes of salt and a SHA-256 digest"
    );
    assert_eq!(
        get(&r, "/api/users/nobody", "guest", "guest")
            .await
            .status(),
        404
    );
    let permissions = json(&r, "/api/permissions").await;
    assert!(
        list(&permissions).contains(&js!({
            "user": "watcher", "vhost": "other", "configure": ".*", "write": ".*", "read": ".*"
        })),
        "{permissions:#}"
    );
    let users_of = |v: &Value| -> Vec<String> {
        list(v)
            .iter()
            .map(|p| {
                format!(
                    "{}@{}",
                    p["user"].as_str().unwrap_or("?"),
                    p["vhost"].as_str().unwrap_or("?")
                )
            })
            .collect()
    };
    assert_eq!(
        users_of(&json(&r, "/api/vhosts/other/permissions").await),
        ["guest@other", "watcher@other"]
    );
    assert_eq!(
        users_of(&json(&r, "/api/users/watcher/permissions").await),
        ["watcher@other"]
    );
    for missing in [
        "/api/vhosts/nowhere/permissions",
        "/api/users/nobody/permissions",
    ] {
        assert_eq!(
            get(&r, missing, "guest", "guest").await.status(),
            404,
            "{missing}"
        );
    }

    // Declared topology, an exclusive queue and a binding to it, which are left out.
    let (_conn, ch) = channel(&r, "%2f").await;
    step(ch.exchange_declare(
        "orders".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .expect("exchange");
    for (name, exclusive) in [("orders.new", false), ("mine", true)] {
        step(ch.queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: !exclusive,
                exclusive,
                ..Default::default()
            },
            FieldTable::default(),
        ))
        .await
        .expect("queue");
        step(ch.queue_bind(
            name.into(),
            "orders".into(),
            "new".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ))
        .await
        .expect("bind");
    }
    let d = json(&r, "/api/definitions").await;
    for empty in ["topic_permissions", "parameters", "policies"] {
        assert_eq!(d[empty], js!([]), "{empty}");
    }
    // As RabbitMQ's: the node's cluster id is the one global parameter of a fresh node.
    let globals = d["global_parameters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(globals.len(), 1, "{globals:?}");
    assert_eq!(globals[0]["name"], "internal_cluster_id");
    let id = globals[0]["value"].as_str().unwrap_or_default();
    assert!(id.starts_with("rabbitmq-cluster-id-"), "{id}");
    assert_eq!(
        d["exchanges"],
        js!([{
            "name": "orders", "vhost": "/", "type": "direct", "durable": true,
            "auto_delete": false, "internal": false, "arguments": {}
        }]),
        "only declared exchanges"
    );
    assert_eq!(
        d["queues"],
        js!([{
            "name": "orders.new", "vhost": "/", "durable": true, "auto_delete": false,
            "arguments": {}
        }])
    );
    assert_eq!(
        d["bindings"],
        js!([{
            "source": "orders", "vhost": "/", "destination": "orders.new",
            "destination_type": "queue", "routing_key": "new", "arguments": {}
        }])
    );

    // What is exported loads as definitions, users' passwords included.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("definitions.json");
    std::fs::write(&file, d.to_string()).expect("write");
    let loaded = Definitions::load(&file).expect("exported definitions load");
    assert_eq!(loaded.vhosts, ["/", "other"]);
    assert_eq!(loaded.exchanges.len(), 1);
    assert_eq!(loaded.queues.len(), 1);
    assert_eq!(loaded.bindings.len(), 1);
    assert!(
        loaded
            .users
            .login(b"watcher", b"pw", None)
            .is_some_and(|u| u.has_tag("management"))
    );
    assert!(loaded.users.permissions("watcher", "other").is_some());
    assert!(loaded.users.permissions("watcher", "/").is_none());
}

/// A write to the API as `user`: (status, Location header, JSON body or Null).
async fn send(
    r: &Running,
    method: reqwest::Method,
    path: &str,
    user: (&str, &str),
    body: Option<&str>,
) -> (u16, Option<String>, Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("{}{path}", r.http))
        .basic_auth(user.0, Some(user.1))
        .header("content-type", "application/json");
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let response = step(request.send()).await.expect("request");
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = step(response.text()).await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, location, json)
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_declare_bind_publish_get_and_delete_as_rabbitmq_answers() {
    use reqwest::Method;
    let r = running().await;
    let guest = ("guest", "guest");
    let put = |path: &'static str, body: &'static str| {
        let r = &r;
        async move { send(r, Method::PUT, path, guest, Some(body)).await }
    };
    // A password that is not a string is refused, not turned into no password.
    let (status, _, _) = send(
        &r,
        Method::PUT,
        "/api/users/odd",
        guest,
        Some(r#"{"password": 5, "tags": ""}"#),
    )
    .await;
    assert_eq!(status, 400);
    // Flags and counts as rabbitmqadmin sends them, as strings; anything else is named.
    let (status, _, _) = send(
        &r,
        Method::PUT,
        "/api/queues/%2F/strings",
        guest,
        Some(r#"{"durable": "true", "auto_delete": "false"}"#),
    )
    .await;
    assert_eq!(status, 201);
    let strings = json(&r, "/api/queues/%2F/strings").await;
    assert_eq!(
        (&strings["durable"], &strings["auto_delete"]),
        (&js!(true), &js!(false))
    );
    let (status, _, refused) = send(
        &r,
        Method::PUT,
        "/api/queues/%2F/yes",
        guest,
        Some(r#"{"durable": "yes"}"#),
    )
    .await;
    assert_eq!(
        (status, refused["reason"].clone()),
        (400, js!(["not_boolean", "yes"]))
    );
    let (status, _, got) = send(
        &r,
        Method::POST,
        "/api/queues/%2F/strings/get",
        guest,
        Some(r#"{"count": "5", "ackmode": "ack_requeue_false"}"#),
    )
    .await;
    assert_eq!((status, got), (200, js!([])));
    // Queues: 201 new, 204 again, 400 with the broker's reason when inequivalent.
    let q = r#"{"durable": true, "arguments": {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "wdead"}}"#;
    assert_eq!(put("/api/queues/%2F/wq", q).await.0, 201);
    assert_eq!(put("/api/queues/%2F/wq", q).await.0, 204);
    let (status, _, body) = put("/api/queues/%2F/wq", r#"{"durable": false}"#).await;
    assert_eq!(status, 400);
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("inequivalent arg 'durable' for queue 'wq'")),
        "{body}"
    );
    assert_eq!(put("/api/queues/%2F/wdead", "{}").await.0, 201);
    assert_eq!(
        put("/api/queues/%2F/amq.x", "{}").await.0,
        401,
        "reserved name"
    );
    assert_eq!(
        put("/api/queues/%2F/bad", "not json").await.2["reason"],
        "not_json"
    );
    assert_eq!(
        put("/api/queues/nowhere/q", "{}").await.2["reason"],
        "vhost_not_found"
    );
    let watcher = send(
        &r,
        Method::PUT,
        "/api/queues/%2F/w",
        ("watcher", "pw"),
        Some("{}"),
    )
    .await;
    assert_eq!(watcher.0, 401, "no permissions on the vhost");
    assert_eq!(watcher.2["reason"], "Access refused.");
    let listed = json(&r, "/api/queues/%2F/wq").await;
    assert_eq!(listed["durable"], true);
    assert_eq!(listed["arguments"]["x-dead-letter-routing-key"], "wdead");

    // Exchanges and a binding; the Location names the binding by its properties key.
    assert_eq!(
        put("/api/exchanges/%2F/wx", r#"{"type": "topic"}"#).await.0,
        201
    );
    assert_eq!(
        put("/api/exchanges/%2F/wx", r#"{"type": "topic"}"#).await.0,
        204
    );
    let (status, _, body) = put("/api/exchanges/%2F/wy", r#"{"type": "nope"}"#).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (400, Some("unknown exchange type 'nope'"))
    );
    let (status, location, _) = send(
        &r,
        Method::POST,
        "/api/bindings/%2F/e/wx/q/wq",
        guest,
        Some(r#"{"routing_key": "a.#"}"#),
    )
    .await;
    assert_eq!((status, location.as_deref()), (201, Some("wq/a.%2523")));
    let (status, _, body) = send(
        &r,
        Method::POST,
        "/api/bindings/%2F/e/nox/q/wq",
        guest,
        Some("{}"),
    )
    .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (404, Some("no exchange 'nox' in vhost '/'"))
    );

    // Publish: routed or not; a publish as someone else is refused.
    let publish = |exchange: &'static str, body: &'static str| {
        let r = &r;
        async move {
            send(
                r,
                Method::POST,
                &format!("/api/exchanges/%2F/{exchange}/publish"),
                guest,
                Some(body),
            )
            .await
        }
    };
    let routed = publish(
        "wx",
        r#"{"routing_key": "a.b", "payload": "hello", "payload_encoding": "string",
            "properties": {"delivery_mode": 2, "headers": {"h": 1}, "message_id": "m1"}}"#,
    )
    .await;
    assert_eq!((routed.0, routed.2.clone()), (200, js!({"routed": true})));
    let nowhere = publish("wx", r#"{"routing_key": "zz", "payload": "x"}"#).await;
    assert_eq!(nowhere.2, js!({"routed": false}));
    let default = publish(
        "amq.default",
        r#"{"routing_key": "wq", "payload": "/w==", "payload_encoding": "base64"}"#,
    )
    .await;
    assert_eq!(default.2, js!({"routed": true}));
    let spoofed = publish(
        "wx",
        r#"{"routing_key": "a.b", "payload": "x", "properties": {"user_id": "mallory"}}"#,
    )
    .await;
    assert_eq!(spoofed.0, 400);

    // Get: requeued (then redelivered), acked away, rejected into the dead-letter queue.
    let get = |body: &'static str| {
        let r = &r;
        async move { send(r, Method::POST, "/api/queues/%2F/wq/get", guest, Some(body)).await }
    };
    let (status, _, first) =
        get(r#"{"count": 5, "ackmode": "ack_requeue_true", "encoding": "auto"}"#).await;
    assert_eq!(status, 200);
    assert_eq!(first[0]["payload"], "hello");
    assert_eq!(first[0]["payload_encoding"], "string");
    assert_eq!(first[0]["redelivered"], false);
    assert_eq!(first[0]["message_count"], 1);
    assert_eq!(first[0]["properties"]["message_id"], "m1");
    assert_eq!(first[0]["properties"]["headers"]["h"], 1);
    assert_eq!(first[1]["payload"], "/w==", "not UTF-8: base64");
    assert_eq!(first[1]["payload_encoding"], "base64");
    assert_eq!(
        first[1]["properties"],
        js!([]),
        "RabbitMQ's empty properties"
    );
    let (_, _, again) = get(r#"{"count": 1, "ackmode": "ack_requeue_false"}"#).await;
    assert_eq!(
        (
            again[0]["payload"].as_str(),
            again[0]["redelivered"].as_bool()
        ),
        (Some("hello"), Some(true))
    );
    let (_, _, rejected) = get(r#"{"count": 1, "ackmode": "reject_requeue_false"}"#).await;
    assert_eq!(rejected[0]["payload_bytes"], 1);
    let (_, _, dead) = send(
        &r,
        Method::POST,
        "/api/queues/%2F/wdead/get",
        guest,
        Some(r#"{"count": 5, "ackmode": "ack_requeue_false"}"#),
    )
    .await;
    assert_eq!(dead.as_array().map(Vec::len), Some(1), "{dead}");
    assert_eq!(json(&r, "/api/queues/%2F/wq").await["messages_ready"], 0);
    assert_eq!(get(r#"{"ackmode": "sometimes"}"#).await.0, 400);

    // Purge, unbind, delete; what is gone is 404.
    publish("amq.default", r#"{"routing_key": "wq", "payload": "p"}"#).await;
    let del = |path: &'static str| {
        let r = &r;
        async move { send(r, Method::DELETE, path, guest, None).await.0 }
    };
    assert_eq!(del("/api/queues/%2F/wq/contents").await, 204);
    assert_eq!(json(&r, "/api/queues/%2F/wq").await["messages_ready"], 0);
    assert_eq!(del("/api/bindings/%2F/e/wx/q/wq/a.%2523").await, 204);
    assert_eq!(del("/api/bindings/%2F/e/wx/q/wq/a.%2523").await, 404);
    assert_eq!(del("/api/exchanges/%2F/amq.direct").await, 401);
    assert_eq!(del("/api/exchanges/%2F/wx?if-unused=true").await, 204);
    assert_eq!(del("/api/exchanges/%2F/wx").await, 404);
    publish("amq.default", r#"{"routing_key": "wq", "payload": "p"}"#).await;
    assert_eq!(del("/api/queues/%2F/wq?if-empty=true").await, 400);
    assert_eq!(del("/api/queues/%2F/wq").await, 204);
    assert_eq!(del("/api/queues/%2F/wq").await, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_refuse_names_longer_than_amqp_allows() {
    let r = running().await;
    let long = "q".repeat(300);
    let (status, _, body) = send(
        &r,
        reqwest::Method::PUT,
        &format!("/api/queues/%2F/{long}"),
        ("guest", "guest"),
        Some("{}"),
    )
    .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (400, Some("queue name longer than 255 bytes"))
    );
    let body = format!(r#"{{"routing_key": "{long}", "payload": "x"}}"#);
    let (status, _, _) = send(
        &r,
        reqwest::Method::POST,
        "/api/exchanges/%2F/amq.default/publish",
        ("guest", "guest"),
        Some(&body),
    )
    .await;
    assert_eq!(status, 400);
    // The API still answers.
    assert_eq!(json(&r, "/api/whoami").await["name"], "guest");
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_bind_exchanges_to_exchanges() {
    use reqwest::Method;
    let r = running().await;
    let guest = ("guest", "guest");
    for x in ["src", "dst"] {
        let path = format!("/api/exchanges/%2F/{x}");
        let (status, _, _) =
            send(&r, Method::PUT, &path, guest, Some(r#"{"type": "direct"}"#)).await;
        assert_eq!(status, 201, "{x}");
    }
    let (status, _, _) = send(&r, Method::PUT, "/api/queues/%2F/end", guest, Some("{}")).await;
    assert_eq!(status, 201);
    for (path, body) in [
        ("/api/bindings/%2F/e/src/e/dst", r#"{"routing_key": "k"}"#),
        ("/api/bindings/%2F/e/dst/q/end", r#"{"routing_key": "k"}"#),
    ] {
        let (status, location, _) = send(&r, Method::POST, path, guest, Some(body)).await;
        assert_eq!(status, 201, "{path}");
        assert!(location.is_some_and(|l| l.ends_with("/k")), "{path}");
    }
    let listed = json(&r, "/api/bindings/%2F/e/src/e/dst").await;
    assert_eq!(listed[0]["destination_type"], "exchange");
    // Through both bindings to the queue.
    let (_, _, routed) = send(
        &r,
        Method::POST,
        "/api/exchanges/%2F/src/publish",
        guest,
        Some(r#"{"routing_key": "k", "payload": "via"}"#),
    )
    .await;
    assert_eq!(routed, js!({"routed": true}));
    let (status, _, _) = send(
        &r,
        Method::DELETE,
        "/api/bindings/%2F/e/src/e/dst/k",
        guest,
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, _, _) = send(
        &r,
        Method::DELETE,
        "/api/bindings/%2F/e/src/e/dst/k",
        guest,
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (_, _, unrouted) = send(
        &r,
        Method::POST,
        "/api/exchanges/%2F/src/publish",
        guest,
        Some(r#"{"routing_key": "k", "payload": "lost"}"#),
    )
    .await;
    assert_eq!(unrouted, js!({"routed": false}));
}

#[tokio::test(flavor = "multi_thread")]
async fn policies_need_a_policymaker_and_round_trip_through_definitions() {
    use reqwest::Method;
    let r = running().await;
    let body = r#"{"pattern": "^capped", "apply-to": "queues", "priority": 3,
                   "definition": {"max-length": 1}}"#;
    // Listing is for any management user, in the vhosts they can see; changing a policy
    // takes the policymaker (or administrator) tag, as in RabbitMQ.
    let (status, _, refused) = send(
        &r,
        Method::PUT,
        "/api/policies/other/cap",
        ("watcher", "pw"),
        Some(body),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(refused["reason"], "User not authorised to access object");
    let guest = ("guest", "guest");
    for (vhost, status) in [("other", 201), ("other", 204), ("%2F", 201)] {
        let path = format!("/api/policies/{vhost}/cap");
        assert_eq!(
            send(&r, Method::PUT, &path, guest, Some(body)).await.0,
            status
        );
    }
    let seen: Value = step(
        get(&r, "/api/policies", "watcher", "pw")
            .await
            .json::<Value>(),
    )
    .await
    .expect("json");
    let vhosts: Vec<&str> = list(&seen)
        .iter()
        .filter_map(|p| p["vhost"].as_str())
        .collect();
    assert_eq!(vhosts, ["other"], "only the vhosts the watcher may see");
    assert_eq!(
        send(
            &r,
            Method::PUT,
            "/api/policies/nowhere/cap",
            guest,
            Some(body)
        )
        .await
        .0,
        404
    );

    // In force on a queue declared afterwards, and listed on it.
    let (_conn, ch) = channel(&r, "other").await;
    step(ch.queue_declare(
        "capped".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .expect("declare");
    publish(&ch, "capped", 3).await;
    let queue = until(&r, "/api/queues/other/capped", |q| q["messages"] == 1).await;
    assert_eq!(queue["policy"], "cap");
    assert_eq!(queue["effective_policy_definition"], js!({"max-length": 1}));

    // The export carries them in the shape a definitions file loads back.
    let exported = json(&r, "/api/definitions").await;
    let policies = list(&exported["policies"]);
    assert_eq!(policies.len(), 2);
    assert!(
        policies
            .iter()
            .all(|p| p["definition"] == js!({"max-length": 1})
                && p["priority"] == 3
                && p["apply-to"] == "queues")
    );
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), exported.to_string()).expect("write");
    let loaded = Definitions::load(file.path()).expect("the export loads");
    let names: Vec<(&str, &str)> = loaded
        .policies
        .iter()
        .map(|(vhost, p)| (vhost.as_str(), p.name.as_str()))
        .collect();
    assert_eq!(names, [("/", "cap"), ("other", "cap")]);

    let path = "/api/policies/other/cap";
    assert_eq!(send(&r, Method::DELETE, path, guest, None).await.0, 204);
    assert_eq!(send(&r, Method::GET, path, guest, None).await.0, 404);
}
