//! Vhosts, users and permissions of the embedded AMQP broker, driven by `lapin`: vhosts
//! are isolated, connection.open checks the vhost and the user's access to it, and the
//! configure/write/read expressions are checked where RabbitMQ checks them.

use std::future::Future;
use std::time::Duration;

use base64::Engine as _;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use session_store::amqp::{AmqpConfig, Definitions, run};
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const STEP: Duration = Duration::from_secs(10);

async fn step<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, fut)
        .await
        .expect("step timed out")
}

/// RabbitMQ's `rabbit_password_hashing_sha256`: base64(salt ++ sha256(salt ++ password)).
fn rabbit_hash(password: &str) -> String {
    let salt = [0x12u8, 0x34, 0x56, 0x78];
    let mut bytes = salt.to_vec();
    bytes.extend(
        Sha256::new()
            .chain_update(salt)
            .chain_update(password)
            .finalize(),
    );
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A definitions file as `rabbitmqctl export_definitions` writes it: guest on `/`, `app`
/// confined to names starting `app.` in vhost `events` (write anything, read only
/// `app.`), and `nobody` without any vhost.
fn export() -> String {
    let hash = rabbit_hash("app-secret");
    let guest = rabbit_hash("guest");
    format!(
        r#"{{
  "rabbit_version": "3.12.1",
  "users": [
    {{"name": "guest", "password_hash": "{guest}", "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["administrator"], "limits": {{}}}},
    {{"name": "app", "password_hash": "{hash}", "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": [], "limits": {{}}}},
    {{"name": "nobody", "password_hash": "{hash}", "tags": ""}}
  ],
  "vhosts": [{{"name": "/"}}, {{"name": "events"}}],
  "permissions": [
    {{"user": "guest", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}},
    {{"user": "guest", "vhost": "events", "configure": ".*", "write": ".*", "read": ".*"}},
    {{"user": "app", "vhost": "events", "configure": "^app\\.", "write": ".*", "read": "^app\\."}}
  ],
  "exchanges": [{{"name": "app.events", "vhost": "events", "type": "fanout", "durable": true, "auto_delete": false, "internal": false, "arguments": {{}}}}],
  "queues": [{{"name": "shared", "vhost": "events", "durable": true, "auto_delete": false, "arguments": {{}}}}],
  "bindings": [{{"source": "app.events", "vhost": "events", "destination": "shared", "destination_type": "queue", "routing_key": "", "arguments": {{}}}}]
}}"#
    )
}

struct Broker {
    port: u16,
    _stop: oneshot::Sender<()>,
    _file: Option<TempFile>,
}

struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn broker() -> Broker {
    let path = std::env::temp_dir().join(format!(
        "amqp-access-{}-{}.json",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::write(&path, export()).expect("write definitions");
    let definitions = Definitions::load(&path).expect("load definitions");
    let file = TempFile(path);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (stop, stopped) = oneshot::channel::<()>();
    let config = AmqpConfig {
        definitions,
        ..AmqpConfig::default()
    };
    tokio::spawn(run(listener, config, async {
        let _ = stopped.await;
    }));
    Broker {
        port,
        _stop: stop,
        _file: Some(file),
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

impl Broker {
    fn url(&self, user: &str, password: &str, vhost: &str) -> String {
        let vhost = vhost.replace('/', "%2f");
        format!("amqp://{user}:{password}@127.0.0.1:{}/{vhost}", self.port)
    }
}

async fn connect(url: &str) -> Result<Connection, lapin::Error> {
    step(Connection::connect(url, ConnectionProperties::default())).await
}

async fn channel(url: &str) -> (Connection, Channel) {
    let conn = connect(url).await.expect("connect");
    let ch = step(conn.create_channel()).await.expect("channel");
    (conn, ch)
}

fn refused_text(e: &lapin::Error) -> String {
    e.to_string()
}

async fn declare(ch: &Channel, name: &str) -> Result<(), lapin::Error> {
    step(ch.queue_declare(
        name.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .map(|_| ())
}

#[tokio::test(flavor = "multi_thread")]
async fn vhosts_are_isolated() {
    let b = broker().await;
    let (_c1, root) = channel(&b.url("guest", "guest", "/")).await;
    let (_c2, events) = channel(&b.url("guest", "guest", "events")).await;
    declare(&root, "q").await.expect("declare in /");
    step(root.basic_publish(
        "".into(),
        "q".into(),
        BasicPublishOptions::default(),
        b"in root",
        BasicProperties::default(),
    ))
    .await
    .expect("publish");
    // The same name in another vhost is another queue, and the definitions' queue
    // exists only in `events`.
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let e = step(events.queue_declare("q".into(), passive, FieldTable::default()))
        .await
        .expect_err("q is not in events");
    assert!(
        refused_text(&e).contains("no queue 'q' in vhost 'events'"),
        "{e}"
    );
    let (_c3, events) = channel(&b.url("guest", "guest", "events")).await;
    let shared = step(events.queue_declare("shared".into(), passive, FieldTable::default()))
        .await
        .expect("declared from definitions");
    assert_eq!(shared.message_count(), 0);
    let e = step(root.queue_declare("shared".into(), passive, FieldTable::default()))
        .await
        .expect_err("shared is not in /");
    assert!(refused_text(&e).contains("vhost '/'"), "{e}");
    // The definitions' binding routes app.events to shared.
    step(events.basic_publish(
        "app.events".into(),
        "".into(),
        BasicPublishOptions::default(),
        b"event",
        BasicProperties::default(),
    ))
    .await
    .expect("publish");
    let got = step(events.basic_get("shared".into(), BasicGetOptions { no_ack: true }))
        .await
        .expect("get")
        .expect("a message");
    assert_eq!(got.delivery.data, b"event");
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_open_checks_the_vhost_and_access_to_it() {
    let b = broker().await;
    let e = connect(&b.url("guest", "guest", "missing"))
        .await
        .expect_err("unknown vhost");
    assert!(refused_text(&e).contains("vhost missing not found"), "{e}");
    let e = connect(&b.url("app", "app-secret", "/"))
        .await
        .expect_err("no permissions on /");
    assert!(
        refused_text(&e).contains("access to vhost '/' refused for user 'app'"),
        "{e}"
    );
    let e = connect(&b.url("nobody", "app-secret", "events"))
        .await
        .expect_err("no permissions anywhere");
    assert!(
        refused_text(&e).contains("refused for user 'nobody'"),
        "{e}"
    );
    let e = connect(&b.url("app", "wrong", "events"))
        .await
        .expect_err("bad password");
    assert!(refused_text(&e).contains("ACCESS_REFUSED"), "{e}");
    connect(&b.url("app", "app-secret", "events"))
        .await
        .expect("hashed password from the definitions file");
}

/// Runs `op` on a fresh channel and returns the error text it closed the channel with.
async fn refused<F, Fut, T>(url: &str, op: F) -> String
where
    F: FnOnce(Channel) -> Fut,
    Fut: Future<Output = Result<T, lapin::Error>>,
{
    let (_conn, ch) = channel(url).await;
    match step(op(ch)).await {
        Ok(_) => "allowed".into(),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn configure_write_and_read_follow_the_expressions() {
    let b = broker().await;
    let url = b.url("app", "app-secret", "events");
    let (_conn, ch) = channel(&url).await;
    declare(&ch, "app.q")
        .await
        .expect("configure ^app\\. allows app.q");
    step(ch.exchange_declare(
        "app.x".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .expect("exchange app.x");
    step(ch.queue_bind(
        "app.q".into(),
        "app.x".into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .expect("write app.q, read app.x");
    step(ch.basic_publish(
        "app.x".into(),
        "k".into(),
        BasicPublishOptions::default(),
        b"m",
        BasicProperties::default(),
    ))
    .await
    .expect("publish");
    step(ch.basic_consume(
        "app.q".into(),
        "c".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .expect("read app.q");

    let text = refused(&url, |ch| async move { declare(&ch, "other").await }).await;
    assert!(
        text.contains(
            "ACCESS_REFUSED - access to queue 'other' in vhost 'events' refused for user 'app'"
        ),
        "{text}"
    );
    let text = refused(&url, |ch| async move { declare(&ch, "").await }).await;
    assert!(
        text.contains("access to queue 'amq.gen-"),
        "server-named: {text}"
    );
    let text = refused(&url, |ch| async move {
        step(ch.basic_get("shared".into(), BasicGetOptions::default())).await
    })
    .await;
    assert!(text.contains("access to queue 'shared'"), "{text}");
    let text = refused(&url, |ch| async move {
        step(ch.queue_purge("shared".into(), QueuePurgeOptions::default())).await
    })
    .await;
    assert!(
        text.contains("access to queue 'shared'"),
        "purge needs read: {text}"
    );
    let text = refused(&url, |ch| async move {
        step(ch.basic_consume(
            "shared".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ))
        .await
    })
    .await;
    assert!(text.contains("access to queue 'shared'"), "{text}");
    let text = refused(&url, |ch| async move {
        step(ch.queue_bind(
            "app.q".into(),
            "amq.fanout".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ))
        .await
    })
    .await;
    assert!(
        text.contains("access to exchange 'amq.fanout' in vhost 'events'"),
        "bind reads the source: {text}"
    );
    // Passive declarations need no permission.
    let (_c, ch) = channel(&url).await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    step(ch.queue_declare("shared".into(), passive, FieldTable::default()))
        .await
        .expect("passive declare");
}

#[tokio::test(flavor = "multi_thread")]
async fn publishing_needs_write_on_the_exchange() {
    let path = std::env::temp_dir().join(format!("amqp-access-w-{}.json", rand_suffix()));
    let hash = rabbit_hash("pw");
    std::fs::write(
        &path,
        format!(
            r#"{{"users": [{{"name": "ro", "password_hash": "{hash}", "tags": []}}],
                "vhosts": [{{"name": "/"}}],
                "permissions": [{{"user": "ro", "vhost": "/", "configure": ".*", "write": "^ro\\.", "read": ".*"}}]}}"#
        ),
    )
    .expect("write");
    let definitions = Definitions::load(&path).expect("load");
    let _file = TempFile(path);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(run(
        listener,
        AmqpConfig {
            definitions,
            ..AmqpConfig::default()
        },
        async {
            let _ = stopped.await;
        },
    ));
    let url = format!("amqp://ro:pw@127.0.0.1:{port}/%2f");
    let (_conn, ch) = channel(&url).await;
    declare(&ch, "ro.q").await.expect("declare");
    let confirm = ch.confirm_select(Default::default());
    step(confirm).await.expect("confirm mode");
    let sent = step(ch.basic_publish(
        "".into(),
        "ro.q".into(),
        BasicPublishOptions::default(),
        b"m",
        BasicProperties::default(),
    ))
    .await
    .expect("send");
    let e = step(sent).await.expect_err("the channel is closed");
    assert!(
        e.to_string()
            .contains("access to exchange 'amq.default' in vhost '/' refused for user 'ro'"),
        "{e}"
    );
    let e = connect(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f"))
        .await
        .expect_err("guest is not defined in this file");
    assert!(e.to_string().contains("ACCESS_REFUSED"), "{e}");
}
