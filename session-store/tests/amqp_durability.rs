//! Durability of the embedded AMQP broker, end to end: the real `session-store` binary
//! with a data directory, driven by `lapin`, stopped cleanly (SIGTERM) or killed (SIGKILL)
//! and started again on the same directory. Each vhost keeps its log in a subdirectory
//! named by its percent-encoded name (`/` is `%2F`).

use std::collections::HashSet;
use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Bound on any one broker operation.
const STEP: Duration = Duration::from_secs(10);
/// Bound on a broker starting or stopping.
const PROCESS: Duration = Duration::from_secs(20);
/// How often process and port state is polled.
const POLL: Duration = Duration::from_millis(20);

async fn step<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, fut)
        .await
        .expect("step timed out")
}

/// A `session-store` process serving AMQP on its own port and data directory.
struct Store {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Store {
    /// Starts the binary; does not wait for it to listen (see [`Store::ready`]).
    fn spawn(dir: &Path, log: &Path) -> Store {
        Store::spawn_with(dir, log, &[])
    }

    /// [`Store::spawn`] with more flags.
    fn spawn_with(dir: &Path, log: &Path, extra: &[&str]) -> Store {
        let out = fs::File::create(log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_session-store"))
            // Port 0: the broker picks a free port and logs it (see `ready`), so no other
            // socket can take it between choosing and binding.
            .args(["--bind", "127.0.0.1:0", "--amqp-bind", "127.0.0.1:0"])
            .arg("--amqp-data-dir")
            .arg(dir)
            // The management API only where a test asks for it by address.
            .args(if extra.contains(&"--amqp-management-bind") {
                &[][..]
            } else {
                &["--no-amqp-management"][..]
            })
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn session-store");
        Store {
            child,
            port: 0,
            log: log.to_path_buf(),
        }
    }

    /// Starts the binary and waits until it accepts AMQP connections.
    async fn start(dir: &Path, log: &Path) -> Store {
        let mut store = Store::spawn(dir, log);
        store.ready().await;
        store
    }

    /// Waits until the broker has logged its AMQP address and accepts connections there.
    async fn ready(&mut self) {
        let deadline = Instant::now() + PROCESS;
        loop {
            if self.port == 0 {
                self.port = self.logged_port().unwrap_or(0);
            }
            if self.port != 0
                && tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                    .await
                    .is_ok()
            {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("session-store exited with {status}:\n{}", self.output());
            }
            assert!(
                Instant::now() < deadline,
                "session-store not listening after {PROCESS:?}:\n{}",
                self.output()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// As guest, in `vhost` (percent-encoded).
    fn url_of_vhost(&self, vhost: &str) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/{vhost}", self.port)
    }

    fn url_of(&self, user: &str, vhost: &str) -> String {
        format!("amqp://{user}:{user}@127.0.0.1:{}/{vhost}", self.port)
    }

    /// The port in the log line `amqp listening on 127.0.0.1:PORT`.
    fn logged_port(&self) -> Option<u16> {
        self.port_after("amqp listening on 127.0.0.1:")
    }

    fn port_after(&self, text: &str) -> Option<u16> {
        let output = self.output();
        let (_, rest) = output.split_once(text)?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }

    /// Starts the binary with its management API on a free port; waits for both.
    async fn start_managed(dir: &Path, log: &Path) -> (Store, String) {
        let mut store = Store::spawn_with(dir, log, &["--amqp-management-bind", "127.0.0.1:0"]);
        store.ready().await;
        let deadline = Instant::now() + PROCESS;
        let port = loop {
            if let Some(port) = store.port_after("amqp management listening on 127.0.0.1:") {
                break port;
            }
            assert!(
                Instant::now() < deadline,
                "management address not logged:\n{}",
                store.output()
            );
            tokio::time::sleep(POLL).await;
        };
        (store, format!("http://127.0.0.1:{port}"))
    }

    fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) for the process to end by itself.
    async fn exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PROCESS;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "session-store did not exit");
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGTERM, as a service manager stops it; asserts a clean exit.
    async fn stop(mut self) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        kill(pid, Signal::SIGTERM).expect("SIGTERM");
        let status = self.exit().await;
        assert!(status.success(), "{status}:\n{}", self.output());
    }

    /// SIGKILL: nothing gets flushed.
    fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn channel(url: &str) -> (Connection, Channel) {
    let conn = step(Connection::connect(url, ConnectionProperties::default()))
        .await
        .expect("connect");
    let ch = step(conn.create_channel()).await.expect("channel");
    (conn, ch)
}

async fn declare(ch: &Channel, name: &str, durable: bool, arguments: FieldTable) -> u32 {
    step(ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable,
            ..QueueDeclareOptions::default()
        },
        arguments,
    ))
    .await
    .expect("declare")
    .message_count()
}

fn props(persistent: bool) -> BasicProperties {
    BasicProperties::default().with_delivery_mode(if persistent { 2 } else { 1 })
}

/// Publishes and waits for the broker's ack.
async fn publish_confirmed(ch: &Channel, exchange: &str, key: &str, body: &[u8], persistent: bool) {
    let confirm = step(ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        props(persistent),
    ))
    .await
    .expect("publish");
    assert!(matches!(
        step(confirm).await.expect("confirm"),
        Confirmation::Ack(None)
    ));
}

/// Takes every ready message of `queue` (acked), as (body, redelivered).
async fn drain(ch: &Channel, queue: &str) -> Vec<(String, bool)> {
    let mut got = Vec::new();
    while let Some(m) = step(ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }))
        .await
        .expect("get")
    {
        got.push((
            String::from_utf8_lossy(&m.delivery.data).into_owned(),
            m.delivery.redelivered,
        ));
    }
    got
}

fn numbered(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn durable_things_and_persistent_messages_survive_a_clean_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (data, log) = (tmp.path().join("data"), tmp.path().join("log"));
    let store = Store::start(&data, &log).await;
    let (conn, ch) = channel(&store.url()).await;
    step(ch.exchange_declare(
        "orders".into(),
        lapin::ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    ))
    .await
    .expect("exchange");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1000));
    declare(&ch, "orders.q", true, args.clone()).await;
    declare(&ch, "scratch", false, FieldTable::default()).await;
    for q in ["orders.q", "scratch"] {
        step(ch.queue_bind(
            q.into(),
            "orders".into(),
            "new".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ))
        .await
        .expect("bind");
    }
    step(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .expect("confirm.select");
    for body in numbered("order-", 0..50) {
        publish_confirmed(&ch, "orders", "new", body.as_bytes(), true).await;
    }
    publish_confirmed(&ch, "orders", "new", b"transient", false).await;
    step(conn.close(200, "bye".into())).await.expect("close");
    store.stop().await;

    let store = Store::start(&data, &log).await;
    let (_conn, ch) = channel(&store.url()).await;
    assert_eq!(
        declare(&ch, "orders.q", true, args.clone()).await,
        50,
        "the persistent messages, not the transient one"
    );
    let gone = ch
        .queue_declare(
            "scratch".into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    assert!(gone.is_err(), "a non-durable queue does not survive");
    let (_conn, ch) = channel(&store.url()).await;
    step(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .expect("confirm.select");
    publish_confirmed(&ch, "orders", "new", b"after restart", true).await;
    let got: Vec<String> = drain(&ch, "orders.q")
        .await
        .into_iter()
        .map(|(body, redelivered)| {
            assert!(!redelivered, "{body} was never delivered");
            body
        })
        .collect();
    let mut expected = numbered("order-", 0..50);
    expected.push("after restart".into());
    assert_eq!(got, expected, "in order, and the binding came back too");
    store.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_priority_queue_comes_back_in_priority_order() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (data, log) = (tmp.path().join("data"), tmp.path().join("log"));
    let store = Store::start(&data, &log).await;
    let (conn, ch) = channel(&store.url()).await;
    let mut args = FieldTable::default();
    args.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(3));
    declare(&ch, "jobs", true, args.clone()).await;
    step(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .expect("confirm.select");
    for (body, priority) in [("low", 0), ("high", 3), ("mid", 1), ("high-2", 3)] {
        let confirm = step(ch.basic_publish(
            "".into(),
            "jobs".into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            props(true).with_priority(priority),
        ))
        .await
        .expect("publish");
        step(confirm).await.expect("confirm");
    }
    step(conn.close(200, "bye".into())).await.expect("close");
    store.stop().await;

    let store = Store::start(&data, &log).await;
    let (_conn, ch) = channel(&store.url()).await;
    assert_eq!(declare(&ch, "jobs", true, args).await, 4);
    let got: Vec<String> = drain(&ch, "jobs")
        .await
        .into_iter()
        .map(|(b, _)| b)
        .collect();
    assert_eq!(got, ["high", "high-2", "mid", "low"]);
    store.stop().await;
}

/// A quorum queue keeps every message, transient ones too, as RabbitMQ's do: confirmed
/// means on disk, so a kill -9 loses none. A classic durable queue beside it keeps only
/// the persistent one.
#[tokio::test(flavor = "multi_thread")]
async fn a_quorum_queue_keeps_transient_messages_through_kill_9() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (data, log) = (tmp.path().join("data"), tmp.path().join("log"));
    let store = Store::start(&data, &log).await;
    let (_conn, ch) = channel(&store.url()).await;
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    declare(&ch, "orders", true, quorum.clone()).await;
    declare(&ch, "audit", true, FieldTable::default()).await;
    step(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .expect("confirm.select");
    for (queue, body, persistent) in [
        ("orders", "transient", false),
        ("orders", "persistent", true),
        ("audit", "transient", false),
        ("audit", "persistent", true),
    ] {
        publish_confirmed(&ch, "", queue, body.as_bytes(), persistent).await;
    }
    store.kill9();

    let store = Store::start(&data, &log).await;
    let (_conn, ch) = channel(&store.url()).await;
    assert_eq!(declare(&ch, "orders", true, quorum).await, 2);
    // A quorum queue replays its log as it was: never delivered, not redelivered. The
    // classic queue marks what it recovers after a crash redelivered.
    let owned = |got: &[(&str, bool)]| {
        got.iter()
            .map(|&(b, r)| (b.to_string(), r))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        drain(&ch, "orders").await,
        owned(&[("transient", false), ("persistent", false)])
    );
    assert_eq!(drain(&ch, "audit").await, owned(&[("persistent", true)]));
    store.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn policies_and_operator_policies_the_api_accepted_survive_kill_9_and_apply_after_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (data, log) = (tmp.path().join("data"), tmp.path().join("log"));
    let http = reqwest::Client::new();
    let call = |method, url, body| as_guest(&http, method, url, body);
    let (store, api) = Store::start_managed(&data, &log).await;
    let capped = serde_json::json!({"pattern": "^capped$", "apply-to": "queues",
                                    "definition": {"max-length": 2}});
    let operator_cap = serde_json::json!({"pattern": "^(capped|op)$",
                                          "definition": {"max-length": 1}});
    for (method, path, body, status) in [
        (
            reqwest::Method::PUT,
            "policies/%2F/capped",
            Some(capped),
            201,
        ),
        (
            reqwest::Method::PUT,
            "policies/%2F/gone",
            Some(serde_json::json!({"pattern": "x",
            "definition": {"message-ttl": 5}})),
            201,
        ),
        (reqwest::Method::DELETE, "policies/%2F/gone", None, 204),
        (
            reqwest::Method::PUT,
            "operator-policies/%2F/op",
            Some(operator_cap),
            201,
        ),
        (
            reqwest::Method::PUT,
            "operator-policies/%2F/op-gone",
            Some(serde_json::json!({"pattern": "x",
            "definition": {"message-ttl": 5}})),
            201,
        ),
        (
            reqwest::Method::DELETE,
            "operator-policies/%2F/op-gone",
            None,
            204,
        ),
    ] {
        let url = format!("{api}/api/{path}");
        let response = step(call(method, url, body)).await.expect("request");
        assert_eq!(response.status().as_u16(), status, "{path}");
    }
    // Killed right after the answers: what they acknowledged must be on disk.
    store.kill9();

    let (store, api) = Store::start_managed(&data, &log).await;
    for (list, expected) in [("policies", "capped"), ("operator-policies", "op")] {
        let listed: serde_json::Value = step(async {
            call(reqwest::Method::GET, format!("{api}/api/{list}"), None)
                .await
                .expect("request")
                .json()
                .await
                .expect("json")
        })
        .await;
        let names: Vec<&str> = listed
            .as_array()
            .expect("a list")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(names, [expected], "{list}");
    }
    let (_conn, ch) = channel(&store.url()).await;
    declare(&ch, "capped", true, FieldTable::default()).await;
    step(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .expect("confirm.select");
    for body in ["1", "2", "3", "4", "5"] {
        publish_confirmed(&ch, "", "capped", body.as_bytes(), true).await;
    }
    let kept: Vec<String> = drain(&ch, "capped")
        .await
        .into_iter()
        .map(|(b, _)| b)
        .collect();
    assert_eq!(
        kept,
        ["5"],
        "the recovered operator policy's smaller max-length applies"
    );
    // Without the operator policy, the recovered policy's own limit is back.
    let response = step(call(
        reqwest::Method::DELETE,
        format!("{api}/api/operator-policies/%2F/op"),
        None,
    ))
    .await
    .expect("request");
    assert_eq!(response.status().as_u16(), 204);
    for body in ["6", "7", "8"] {
        publish_confirmed(&ch, "", "capped", body.as_bytes(), true).await;
    }
    let kept: Vec<String> = drain(&ch, "capped")
        .await
        .into_iter()
        .map(|(b, _)| b)
        .collect();
    assert_eq!(
        kept,
        ["7", "8"],
        "the recovered policy's max-length applies"
    );
    store.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn users_vhosts_and_permissions_the_api_made_survive_kill_9() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (data, log) = (tmp.path().join("data"), tmp.path().join("log"));
    let http = reqwest::Client::new();
    let put = |api: &str, path: &str, password: &str, body: serde_json::Value| {
        http.put(format!("{api}{path}"))
            .basic_auth("guest", Some(password))
            .json(&body)
            .send()
    };
    let (store, api) = Store::start_managed(&data, &log).await;
    // Names the data directory cannot hold are refused up front, not half-made.
    for long in ["%21".repeat(100), "v".repeat(256)] {
        let path = format!("/api/vhosts/{long}");
        let response = step(put(&api, &path, "guest", serde_json::json!({})))
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), 400, "{}", &long[..9]);
    }
    for (path, body) in [
        (
            "/api/users/alice",
            serde_json::json!({"password": "pw", "tags": ""}),
        ),
        ("/api/vhosts/shop", serde_json::json!({})),
        (
            "/api/permissions/shop/alice",
            serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"}),
        ),
        (
            "/api/user-limits/alice/max-connections",
            serde_json::json!({"value": 1}),
        ),
        (
            "/api/vhost-limits/shop/max-queues",
            serde_json::json!({"value": 1}),
        ),
        // guest's password changed: the default must not bring the old one back.
        (
            "/api/users/guest",
            serde_json::json!({"password": "changed", "tags": "administrator"}),
        ),
    ] {
        let response = step(put(&api, path, "guest", body)).await.expect("request");
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
    }
    let alice = |port: u16| format!("amqp://alice:pw@127.0.0.1:{port}/shop");
    let (conn, ch) = channel(&alice(store.port)).await;
    declare(&ch, "orders", true, FieldTable::default()).await;
    drop((ch, conn));
    store.kill9();

    let store = Store::start(&data, &log).await;
    let (_conn, ch) = channel(&alice(store.port)).await;
    declare(&ch, "orders", true, FieldTable::default()).await;
    // The limits came back too: alice's one connection, shop's one queue.
    let second = Connection::connect(&alice(store.port), ConnectionProperties::default()).await;
    assert!(second.is_err(), "alice's connection limit was forgotten");
    let another = ch
        .queue_declare(
            "returns".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert!(another.is_err(), "shop's queue limit was forgotten");
    let old_guest = Connection::connect(&store.url(), ConnectionProperties::default()).await;
    assert!(old_guest.is_err(), "guest's old password works again");
    let new_guest = format!("amqp://guest:changed@127.0.0.1:{}/%2f", store.port);
    step(Connection::connect(
        &new_guest,
        ConnectionProperties::default(),
    ))
    .await
    .expect("guest's new password");
    store.stop().await;

    // An explicit user given at start is applied over what was kept.
    let store = Store::spawn_with(&data, &log, &["--amqp-user", "ops:opspw"]);
    let mut store = store;
    store.ready().await;
    let ops = format!("amqp://ops:opspw@127.0.0.1:{}/%2f", store.port);
    step(Connection::connect(&ops, ConnectionProperties::default()))
        .await
        .expect("the --amqp-user");
    let (_conn, _ch) = channel(&alice(store.port)).await;
    store.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_confirmed_message_survives_kill_9() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (data, log) = (tmp.path().join("data"), tmp.path().join("log"));
    let store = Store::start(&data, &log).await;
    let (conn, ch) = channel(&store.url()).await;
    declare(&ch, "events", true, FieldTable::default()).await;
    step(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .expect("confirm.select");
    let confirmed = Arc::new(Mutex::new(HashSet::new()));
    let publisher = {
        let confirmed = confirmed.clone();
        tokio::spawn(async move {
            let mut in_flight = FuturesUnordered::new();
            for i in 0u64.. {
                let Ok(confirm) = ch
                    .basic_publish(
                        "".into(),
                        "events".into(),
                        BasicPublishOptions::default(),
                        format!("event-{i}").as_bytes(),
                        props(true),
                    )
                    .await
                else {
                    return;
                };
                in_flight.push(async move { (i, confirm.await) });
                while in_flight.len() >= 64 {
                    match in_flight.next().await {
                        Some((i, Ok(Confirmation::Ack(None)))) => {
                            confirmed.lock().expect("lock").insert(i);
                        }
                        Some(_) | None => return,
                    }
                }
            }
        })
    };
    let deadline = Instant::now() + STEP;
    while confirmed.lock().expect("lock").len() < 3000 {
        assert!(Instant::now() < deadline, "publishing too slow");
        tokio::time::sleep(POLL).await;
    }
    store.kill9();
    step(publisher)
        .await
        .expect("publisher ends with the broker");
    drop(conn);
    let confirmed = confirmed.lock().expect("lock").clone();

    let store = Store::start(&data, &log).await;
    let (_conn, ch) = channel(&store.url()).await;
    let got = drain(&ch, "events").await;
    let mut seen = HashSet::new();
    for (body, redelivered) in &got {
        // After a crash nothing says which were seen: all come back redelivered, as
        // RabbitMQ's classic queues bring them back.
        assert!(
            redelivered,
            "{body} is not marked redelivered after a crash"
        );
        assert!(seen.insert(body.clone()), "{body} recovered twice");
    }
    let missing: Vec<u64> = confirmed
        .iter()
        .filter(|i| !seen.contains(&format!("event-{i}")))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} confirmed messages lost, e.g. {:?}",
        missing.len(),
        confirmed.len(),
        &missing[..missing.len().min(5)]
    );
    let order: Vec<u64> = got
        .iter()
        .filter_map(|(b, _)| b.strip_prefix("event-")?.parse().ok())
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "queue order kept");
    store.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn acked_messages_stay_gone_and_unacked_ones_come_back_redelivered() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (data, log) = (tmp.path().join("data"), tmp.path().join("log"));
    let store = Store::start(&data, &log).await;
    let (_conn, ch) = channel(&store.url()).await;
    declare(&ch, "work", true, FieldTable::default()).await;
    declare(&ch, "marker", true, FieldTable::default()).await;
    step(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .expect("confirm.select");
    for body in numbered("job-", 0..30) {
        publish_confirmed(&ch, "", "work", body.as_bytes(), true).await;
    }
    let (_conn2, consumer) = channel(&store.url()).await;
    let mut delivered = Vec::new();
    for _ in 0..20 {
        let m = step(consumer.basic_get("work".into(), BasicGetOptions { no_ack: false }))
            .await
            .expect("get")
            .expect("a message");
        delivered.push(m);
    }
    for m in &delivered[..10] {
        step(m.delivery.ack(BasicAckOptions::default()))
            .await
            .expect("ack");
    }
    // Acks are not confirmed to anyone, so nothing says when they are on disk; but the log
    // is written in order, so a confirmed publish sent after them proves they are. The
    // get-empty round trip makes sure the acks reached the broker first.
    assert!(
        step(consumer.basic_get("marker".into(), BasicGetOptions { no_ack: true }))
            .await
            .expect("get")
            .is_none()
    );
    publish_confirmed(&ch, "", "marker", b"after the acks", true).await;
    store.kill9();

    let store = Store::start(&data, &log).await;
    let (_conn, ch) = channel(&store.url()).await;
    let got = drain(&ch, "work").await;
    let expected: Vec<(String, bool)> = (10..30).map(|i| (format!("job-{i}"), true)).collect();
    assert_eq!(got, expected, "unacked only, all redelivered after a crash");

    // After a clean shutdown only those delivered and not acked are redelivered.
    step(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .expect("confirm.select");
    for body in numbered("next-", 0..3) {
        publish_confirmed(&ch, "", "work", body.as_bytes(), true).await;
    }
    let (conn2, consumer) = channel(&store.url()).await;
    step(consumer.basic_get("work".into(), BasicGetOptions { no_ack: false }))
        .await
        .expect("get")
        .expect("a message");
    step(conn2.close(200, "bye".into())).await.expect("close");
    store.stop().await;
    let store = Store::start(&data, &log).await;
    let (_conn, ch) = channel(&store.url()).await;
    let expected = [("next-0", true), ("next-1", false), ("next-2", false)];
    let expected: Vec<(String, bool)> = expected.iter().map(|&(b, r)| (b.into(), r)).collect();
    assert_eq!(drain(&ch, "work").await, expected, "after a clean restart");
    store.kill9();
}

/// The segment files of vhost `/` in a data directory.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir.join("%2F"))
        .expect("read data dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread")]
async fn a_torn_tail_is_dropped_and_damage_stops_the_start() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (data, log) = (tmp.path().join("data"), tmp.path().join("log"));
    let store = Store::start(&data, &log).await;
    let (conn, ch) = channel(&store.url()).await;
    declare(&ch, "big", true, FieldTable::default()).await;
    step(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .expect("confirm.select");
    let body = |i: usize| format!("message-{i:03}:").repeat(300);
    for i in 0..10 {
        publish_confirmed(&ch, "", "big", body(i).as_bytes(), true).await;
    }
    step(conn.close(200, "bye".into())).await.expect("close");
    store.stop().await;
    let files = segments(&data);
    let [segment] = &files[..] else {
        panic!("one segment expected: {files:?}");
    };
    let intact = fs::read(segment).expect("read segment");

    // A crash in the middle of the last record: it goes, the rest stays.
    fs::write(segment, &intact[..intact.len() - 1000]).expect("cut");
    let store = Store::start(&data, &log).await;
    let (_conn, ch) = channel(&store.url()).await;
    let got: Vec<String> = drain(&ch, "big").await.into_iter().map(|m| m.0).collect();
    assert_eq!(got, (0..9).map(body).collect::<Vec<_>>());
    assert!(
        store.output().contains("incomplete record"),
        "{}",
        store.output()
    );
    store.stop().await;

    // One flipped byte in an acknowledged record: refuse to start, and say where.
    let mut damaged = intact.clone();
    let at = intact
        .windows(12)
        .position(|w| w == b"message-004:")
        .expect("body on disk")
        + 5;
    damaged[at] ^= 0x20;
    fs::write(segment, &damaged).expect("damage");
    let mut store = Store::spawn(&data, &log);
    let status = store.exit().await;
    let output = store.output();
    assert!(!status.success(), "{output}");
    assert_eq!(
        status.code(),
        Some(1),
        "an error exit, not a crash: {output}"
    );
    assert!(output.contains(&segment.display().to_string()), "{output}");
    assert!(output.contains("damaged at byte"), "{output}");
    assert!(!output.contains("panicked"), "{output}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_broker_on_the_same_data_directory_is_refused_at_start() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let first = Store::start(&data, &tmp.path().join("first.log")).await;
    let mut second = Store::spawn(&data, &tmp.path().join("second.log"));
    let status = second.exit().await;
    let output = second.output();
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(output.contains(&data.display().to_string()), "{output}");
    assert!(output.contains("in use by another process"), "{output}");
    assert!(output.contains("--amqp-data-dir"), "{output}");
    // The first one is unharmed, and once it is gone the directory is free again.
    let (_conn, ch) = channel(&first.url()).await;
    declare(&ch, "still-here", true, FieldTable::default()).await;
    first.stop().await;
    let third = Store::start(&data, &tmp.path().join("third.log")).await;
    third.stop().await;
}

/// Definitions with two vhosts, a user `admin` (password `admin`) allowed in both, and a
/// durable exchange, queue and binding in `orders`.
const TWO_VHOSTS: &str = r#"{
  "users": [{"name": "admin", "password": "admin", "tags": ["administrator"]}],
  "vhosts": [{"name": "/"}, {"name": "orders"}],
  "permissions": [
    {"user": "admin", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"},
    {"user": "admin", "vhost": "orders", "configure": ".*", "write": ".*", "read": ".*"}
  ],
  "exchanges": [{"name": "incoming", "vhost": "orders", "type": "direct", "durable": true, "auto_delete": false, "internal": false, "arguments": {}}],
  "queues": [{"name": "q", "vhost": "orders", "durable": true, "auto_delete": false, "arguments": {}}],
  "bindings": [{"source": "incoming", "vhost": "orders", "destination": "q", "destination_type": "queue", "routing_key": "new", "arguments": {}}]
}"#;

/// A management API request as `guest`, with a JSON body if given.
fn as_guest(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<serde_json::Value>,
) -> impl Future<Output = reqwest::Result<reqwest::Response>> {
    let mut request = http.request(method, url).basic_auth("guest", Some("guest"));
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send()
}

/// The cluster name the server sends in connection.start (read off the wire: lapin does
/// not expose the server's properties).
async fn announced_cluster_name(port: u16) -> String {
    use amq_protocol::frame::{AMQPFrame, parse_frame};
    use amq_protocol::protocol::{AMQPClass, connection};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut socket = step(tokio::net::TcpStream::connect(("127.0.0.1", port)))
        .await
        .expect("connect");
    step(socket.write_all(b"AMQP\x00\x00\x09\x01"))
        .await
        .expect("protocol header");
    let mut buf = Vec::new();
    for _ in 0..64 {
        if let Ok((_, frame)) = parse_frame(buf.as_slice()) {
            let AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Start(start))) =
                frame
            else {
                panic!("expected connection.start, got {frame:?}");
            };
            return match start.server_properties.inner().get("cluster_name") {
                Some(AMQPValue::LongString(name)) => name.to_string(),
                other => panic!("cluster_name: {other:?}"),
            };
        }
        let mut chunk = [0u8; 4096];
        let n = step(socket.read(&mut chunk)).await.expect("read");
        assert!(n > 0, "closed before connection.start");
        buf.extend_from_slice(&chunk[..n]);
    }
    panic!("no connection.start in {} bytes", buf.len());
}

/// The cluster's name, the global parameters and a vhost's metadata set through the API
/// are kept: they are there after a kill -9, clients are told the name, the vhost's
/// default queue type still applies, and the cluster's id stays the one it was given at
/// first start.
#[tokio::test(flavor = "multi_thread")]
async fn cluster_name_global_parameters_and_vhost_metadata_survive_kill_9() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (data, log) = (tmp.path().join("data"), tmp.path().join("log"));
    let http = reqwest::Client::new();
    let call = |method, url, body| as_guest(&http, method, url, body);
    let get = |url: String| async {
        let response = step(call(reqwest::Method::GET, url, None))
            .await
            .expect("request");
        let status = response.status().as_u16();
        let body: serde_json::Value = step(response.json()).await.unwrap_or_default();
        (status, body)
    };
    let (store, api) = Store::start_managed(&data, &log).await;
    let (_, first) = get(format!("{api}/api/global-parameters/internal_cluster_id")).await;
    let id = first["value"].as_str().unwrap_or_default().to_string();
    assert!(id.starts_with("rabbitmq-cluster-id-"), "{first}");
    for (method, path, body, status) in [
        (
            reqwest::Method::PUT,
            "cluster-name",
            Some(serde_json::json!({"name": "edge-1"})),
            204,
        ),
        (
            reqwest::Method::PUT,
            "global-parameters/region",
            Some(serde_json::json!({"value": {"zone": "b"}})),
            201,
        ),
        (
            reqwest::Method::PUT,
            "global-parameters/gone",
            Some(serde_json::json!({"value": 1})),
            201,
        ),
        (reqwest::Method::DELETE, "global-parameters/gone", None, 204),
        (
            reqwest::Method::PUT,
            "vhosts/shop",
            Some(serde_json::json!({"description": "the shop", "tags": "a,b",
                                    "defaultqueuetype": "quorum"})),
            201,
        ),
    ] {
        let url = format!("{api}/api/{path}");
        let response = step(call(method, url, body)).await.expect("request");
        assert_eq!(response.status().as_u16(), status, "{path}");
    }
    assert_eq!(announced_cluster_name(store.port).await, "edge-1");
    store.kill9();

    let (store, api) = Store::start_managed(&data, &log).await;
    assert_eq!(
        get(format!("{api}/api/cluster-name")).await,
        (200, serde_json::json!({"name": "edge-1"}))
    );
    assert_eq!(announced_cluster_name(store.port).await, "edge-1");
    let (_, globals) = get(format!("{api}/api/global-parameters")).await;
    assert_eq!(
        globals,
        serde_json::json!([
            {"name": "cluster_name", "value": "edge-1"},
            {"name": "internal_cluster_id", "value": id},
            {"name": "region", "value": {"zone": "b"}},
        ])
    );
    let (_, shop) = get(format!("{api}/api/vhosts/shop")).await;
    assert_eq!(
        shop["metadata"],
        serde_json::json!({"description": "the shop", "tags": ["a", "b"],
                           "default_queue_type": "quorum"}),
        "{shop}"
    );
    let (_conn, ch) = channel(&store.url_of_vhost("shop")).await;
    declare(&ch, "orders", true, FieldTable::default()).await;
    let (_, orders) = get(format!("{api}/api/queues/shop/orders")).await;
    assert_eq!(orders["type"], "quorum", "{orders}");
    store.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_vhost_has_its_own_journal_and_defined_entities_are_journaled() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (data, log) = (tmp.path().join("data"), tmp.path().join("log"));
    let definitions = tmp.path().join("definitions.json");
    fs::write(&definitions, TWO_VHOSTS).expect("write definitions");
    let defs = definitions.to_str().expect("utf-8 path");
    let flags = ["--amqp-definitions", defs];
    let mut store = Store::spawn_with(&data, &log, &flags);
    store.ready().await;
    let (_conn, orders) = channel(&store.url_of("admin", "orders")).await;
    let (_conn2, root) = channel(&store.url_of("admin", "%2f")).await;
    declare(&root, "q", true, FieldTable::default()).await;
    for ch in [&orders, &root] {
        step(ch.confirm_select(ConfirmSelectOptions::default()))
            .await
            .expect("confirm.select");
    }
    for body in numbered("order-", 0..3) {
        publish_confirmed(&orders, "incoming", "new", body.as_bytes(), true).await;
    }
    publish_confirmed(&root, "", "q", b"root", true).await;
    store.stop().await;
    for dir in ["%2F", "orders"] {
        assert!(
            data.join(dir).is_dir(),
            "{dir} in {:?}",
            fs::read_dir(&data)
        );
    }

    // Without the definitions, `orders` is not loaded (and its directory is kept); `/`
    // comes back on its own.
    let store = Store::start(&data, &log).await;
    let (_conn, ch) = channel(&store.url()).await;
    assert_eq!(drain(&ch, "q").await, vec![("root".to_string(), false)]);
    assert!(store.output().contains("not defined"), "{}", store.output());
    store.stop().await;
    assert!(data.join("orders").is_dir());

    // With them, what the definitions declared was journaled like any declaration: the
    // messages routed through the defined exchange and binding are all still there.
    let mut store = Store::spawn_with(&data, &log, &flags);
    store.ready().await;
    let (_conn, orders) = channel(&store.url_of("admin", "orders")).await;
    let got: Vec<String> = drain(&orders, "q").await.into_iter().map(|m| m.0).collect();
    assert_eq!(got, numbered("order-", 0..3));
    store.stop().await;
}

fn stream_args(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    for (key, value) in extra {
        args.insert((*key).into(), value.clone());
    }
    args
}

/// Reads stream `queue` from its first offset up to the message `last`, acking as it
/// goes: (offset, body) in order.
async fn read_stream(url: &str, queue: &str, last: &str) -> Vec<(i64, String)> {
    let (conn, ch) = channel(url).await;
    step(ch.basic_qos(100, BasicQosOptions::default()))
        .await
        .expect("basic.qos");
    let mut from_first = FieldTable::default();
    from_first.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let mut consumer = step(ch.basic_consume(
        queue.into(),
        "".into(),
        BasicConsumeOptions::default(),
        from_first,
    ))
    .await
    .expect("basic.consume");
    let mut got = Vec::new();
    for _ in 0..10_000 {
        let d = step(consumer.next())
            .await
            .expect("consumer ended")
            .expect("delivery");
        let offset = match d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-stream-offset").cloned())
        {
            Some(AMQPValue::LongLongInt(n)) => n,
            other => panic!("x-stream-offset {other:?}"),
        };
        let body = String::from_utf8_lossy(&d.data).into_owned();
        step(d.acker.ack(BasicAckOptions::default()))
            .await
            .expect("ack");
        let done = body == last;
        got.push((offset, body));
        if done {
            step(conn.close(200, "bye".into())).await.expect("close");
            return got;
        }
    }
    panic!("{last:?} not in {queue} after 10000 messages");
}

/// A stream is a log on disk that keeps every confirmed message, transient or not: after
/// a clean restart and after kill -9, a reader from the start gets the same messages under
/// the same offsets, and new messages continue the numbering. What retention dropped
/// stays dropped: the oldest offset left stays above 0, the offsets after it unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_keeps_its_offsets_through_a_restart_and_kill_9() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (data, log) = (tmp.path().join("data"), tmp.path().join("log"));
    let mut store = Store::start(&data, &log).await;
    let (conn, ch) = channel(&store.url()).await;
    let plain = stream_args(&[]);
    let trimmed = stream_args(&[
        ("x-max-length-bytes", AMQPValue::LongInt(2000)),
        ("x-stream-max-segment-size-bytes", AMQPValue::LongInt(500)),
    ]);
    declare(&ch, "log", true, plain.clone()).await;
    declare(&ch, "trimmed", true, trimmed.clone()).await;
    step(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .expect("confirm.select");
    let mut log_expected = Vec::new();
    for (offset, body) in (0..).zip(numbered("log-", 0..20)) {
        publish_confirmed(&ch, "", "log", body.as_bytes(), false).await;
        log_expected.push((offset, body));
    }
    // 40 messages of 100 bytes: twice the limit, in segments of a few messages each.
    let padded = |i: usize| format!("{i:0>100}");
    for i in 0..40 {
        publish_confirmed(&ch, "", "trimmed", padded(i).as_bytes(), false).await;
    }
    step(conn.close(200, "bye".into())).await.expect("close");
    assert_eq!(
        read_stream(&store.url(), "log", "log-19").await,
        log_expected
    );
    let mut trimmed_next = 40;
    let deadline = Instant::now() + STEP;
    let mut trimmed_seen = loop {
        let got = read_stream(&store.url(), "trimmed", &padded(39)).await;
        if got[0].0 > 0 {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "retention kept offset 0 of 4000 bytes limited to 2000"
        );
        tokio::time::sleep(POLL).await;
    };
    // What is left is the newest messages, in order, under increasing offsets.
    let in_order = |got: &[(i64, String)], newest: usize| {
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "offsets {got:?}");
        let oldest = newest + 1 - got.len();
        let bodies: Vec<String> = got.iter().map(|(_, b)| b.clone()).collect();
        let expected: Vec<String> = (oldest..=newest).map(padded).collect();
        assert_eq!(bodies, expected);
    };
    in_order(&trimmed_seen, 39);

    for how in ["a clean restart", "kill -9"] {
        if how == "kill -9" {
            store.kill9();
        } else {
            store.stop().await;
        }
        store = Store::start(&data, &log).await;
        let url = store.url();
        let (last_log, last_trimmed) = (
            log_expected.last().expect("a message").1.clone(),
            padded(trimmed_next - 1),
        );
        assert_eq!(
            read_stream(&url, "log", &last_log).await,
            log_expected,
            "after {how}"
        );
        let got = read_stream(&url, "trimmed", &last_trimmed).await;
        assert!(got[0].0 > 0, "after {how}, offset 0 is back: {got:?}");
        assert!(
            trimmed_seen.ends_with(&got),
            "after {how}, {got:?} is not what was left before: {trimmed_seen:?}"
        );

        // The streams are still streams with their arguments, and number on.
        let (conn, ch) = channel(&url).await;
        declare(&ch, "log", true, plain.clone()).await;
        declare(&ch, "trimmed", true, trimmed.clone()).await;
        step(ch.confirm_select(ConfirmSelectOptions::default()))
            .await
            .expect("confirm.select");
        let body = format!("log-{}", log_expected.len());
        publish_confirmed(&ch, "", "log", body.as_bytes(), false).await;
        log_expected.push((log_expected.len() as i64, body.clone()));
        publish_confirmed(&ch, "", "trimmed", padded(trimmed_next).as_bytes(), false).await;
        step(conn.close(200, "bye".into())).await.expect("close");
        assert_eq!(
            read_stream(&url, "log", &body).await,
            log_expected,
            "published after {how}"
        );
        let highest = got.last().expect("a message").0;
        trimmed_seen = read_stream(&url, "trimmed", &padded(trimmed_next)).await;
        assert_eq!(
            trimmed_seen.last(),
            Some(&(highest + 1, padded(trimmed_next))),
            "published after {how}, next to offset {highest}"
        );
        in_order(&trimmed_seen, trimmed_next);
        trimmed_next += 1;
    }
    store.stop().await;
}
