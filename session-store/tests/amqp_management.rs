//! The management HTTP API against a running broker: a real HTTP client (`reqwest`) reads
//! what `lapin` clients did.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::Value;
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
    http: String,
    _stop: Vec<oneshot::Sender<()>>,
}

/// The broker with vhosts `/` and `other` and a `watcher` user (tag management) who may
/// only see `other`.
async fn running() -> Running {
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
    assert_eq!(
        get(&r, "/api/overview", "guest", "wrong").await.status(),
        401
    );
    assert_eq!(
        get(&r, "/api/overview", "plain", "pw").await.status(),
        401,
        "no management tag"
    );
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
    let o = json(&r, "/api/overview").await;
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
