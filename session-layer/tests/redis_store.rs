//! `RedisStore` against a real socket: the project's session-store in-process, a real
//! `redis-server`, and a real three-master Redis Cluster when `redis-server` and
//! `redis-cli` are installed (required with `CI=true`). All must give the same answers:
//! compare-and-set saves, rotation, removal, touch, the per-user index, and JWT
//! revocations. A save of a loaded session is one `SET … IFEQ` where the server has it
//! (the session-store, Redis 8.4, Valkey 8.1) and WATCH … EXEC where it does not (Redis
//! 7): both ways are checked.

mod support {
    pub mod cluster;
    pub mod ports;
}

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::routing::{get, post};
use http::Request;
use http::header::{COOKIE, SET_COOKIE};
use http_body_util::BodyExt;
use redis::aio::MultiplexedConnection;
use session_layer::events::EventKind;
use session_layer::jwt::{JwtCodec, JwtKey, JwtKeys};
use session_layer::store::{CompareAndSetMode, Saved, SessionStore, UserSession, Write};
use session_layer::{
    CookieKeys, Record, RedisStore, Session, SessionConfig, SessionId, SessionLayer,
};
use support::cluster::RedisCluster;
use support::ports::free_port;
use tokio::net::TcpListener;
use tokio::sync::Barrier;
use tower::ServiceExt;

const TTL: Duration = Duration::from_secs(60);

/// A real redis-server on a free port, killed on drop.
struct RealRedis(Child);

impl Drop for RealRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn embedded() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(session_store::run(
        listener,
        session_store::Config::default(),
        std::future::pending(),
    ));
    format!("redis://127.0.0.1:{port}")
}

async fn real_redis() -> Option<(RealRedis, String)> {
    let port = free_port();
    let spawned = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn();
    let child = match spawned {
        Ok(child) => RealRedis(child),
        Err(err) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("redis-server is required with CI=true: {err}")
        }
        Err(_) => {
            eprintln!("redis-server not installed: checking the embedded store only");
            return None;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "redis-server did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Some((child, format!("redis://127.0.0.1:{port}")))
}

fn record(version: u64, item: &str) -> Record {
    let mut r = Record {
        version,
        ..Record::fresh()
    };
    r.data.insert("item".into(), item.into());
    r
}

/// A save by a writer that knows only the version it started from: always WATCH … EXEC.
fn write<'a>(id: &'a SessionId, record: &'a Record, expected: u64) -> Write<'a> {
    Write {
        id,
        record,
        expected,
        replaces: None,
        previous: None,
        ttl: TTL,
    }
}

/// A save by a writer holding the record it started from, as the layer saves a session
/// it loaded: `SET … IFEQ` where the server has it.
fn change<'a>(id: &'a SessionId, record: &'a Record, previous: &'a Record) -> Write<'a> {
    Write {
        previous: Some(previous),
        ..write(id, record, previous.version)
    }
}

/// The mode a store at `url` (one server) should end up in: `SET … IFEQ` on the
/// session-store, Redis 8.4+ and Valkey 8.1+, WATCH on anything older.
async fn mode_of(url: &str) -> CompareAndSetMode {
    let info = info(url, "server").await;
    let version = |field: &str| {
        let value = info
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .unwrap_or_default();
        let mut parts = value.trim().split('.').map(|p| p.parse().unwrap_or(0u32));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
    };
    if info.contains("server_name:session-store")
        || version("redis_version:") >= (8, 4)
        || version("valkey_version:") >= (8, 1)
    {
        CompareAndSetMode::SetIfEq
    } else {
        CompareAndSetMode::Watch
    }
}

async fn info(url: &str, section: &str) -> String {
    let client = redis::Client::open(url).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    redis::cmd("INFO")
        .arg(section)
        .query_async(&mut conn)
        .await
        .expect("INFO")
}

/// Commands the server behind `conn` has run so far.
async fn commands_processed(conn: &mut MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(conn)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|line| line.strip_prefix("total_commands_processed:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("total_commands_processed in INFO stats")
}

/// Ids for the contract: the session, its rotation target, and three indexed sessions.
type Ids = [SessionId; 5];

fn random_ids() -> Ids {
    std::array::from_fn(|_| SessionId::generate())
}

fn key(id: &SessionId) -> String {
    format!("session:{}", id.as_str())
}

async fn behaves_like_a_session_store(store: &RedisStore, ids: &Ids) {
    let [id, new_id, indexed @ ..] = ids;
    assert_eq!(store.load(id, 0).await.expect("load"), None);

    let v1 = record(1, "a");
    assert_eq!(
        store.save(write(id, &v1, 0)).await.expect("save"),
        Saved::Done
    );
    assert_eq!(store.load(id, 0).await.expect("load"), Some(v1.clone()));
    // Someone else saved version 1 first: a second writer starting from 0 is refused.
    let stale = record(1, "b");
    assert_eq!(
        store.save(write(id, &stale, 0)).await.expect("save"),
        Saved::Conflict
    );
    assert_eq!(store.load(id, 0).await.expect("load"), Some(v1.clone()));

    // Concurrent writers on one version, holding the record they started from (SET …
    // IFEQ where the server has it, else WATCH) or not (WATCH): exactly one wins.
    let attempts: Vec<Record> = (0..8).map(|i| record(2, &format!("w{i}"))).collect();
    let outcomes = futures::future::join_all(attempts.iter().enumerate().map(|(i, r)| {
        store.save(if i % 2 == 0 {
            change(id, r, &v1)
        } else {
            write(id, r, 1)
        })
    }))
    .await;
    let won = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(Saved::Done)))
        .count();
    assert_eq!(won, 1, "{outcomes:?}");

    // Rotation from a stale version is refused and leaves both ids as they were.
    let v3 = record(3, "rotated");
    let rotate = |expected| Write {
        id: new_id,
        record: &v3,
        expected,
        replaces: Some(id),
        previous: None,
        ttl: TTL,
    };
    assert_eq!(
        store.save(rotate(1)).await.expect("rotate"),
        Saved::Conflict
    );
    assert_eq!(store.load(new_id, 0).await.expect("load"), None);
    assert_eq!(
        store.load(id, 0).await.expect("load").map(|r| r.version),
        Some(2)
    );
    // Rotation: the new id has the data, the old one is gone, in one step.
    assert_eq!(store.save(rotate(2)).await.expect("rotate"), Saved::Done);
    assert_eq!(store.load(id, 0).await.expect("load"), None);
    assert_eq!(store.load(new_id, 0).await.expect("load"), Some(v3.clone()));

    assert!(store.touch(new_id, TTL).await.expect("touch"));
    store
        .remove(new_id, EventKind::Logout)
        .await
        .expect("remove");
    assert!(!store.touch(new_id, TTL).await.expect("touch"));

    // The per-user index lists live sessions only, oldest first.
    let user = format!("user-{}", SessionId::generate().as_str());
    for (n, sid) in indexed.iter().enumerate() {
        let r = record(1, "x");
        assert_eq!(
            store.save(write(sid, &r, 0)).await.expect("save"),
            Saved::Done
        );
        let entry = UserSession {
            id: sid.clone(),
            created: n as u64,
        };
        let listed = store.index_add(&user, entry, TTL).await.expect("index");
        assert_eq!(listed.len(), n + 1);
    }
    store
        .remove(&indexed[1], EventKind::Revoke)
        .await
        .expect("remove");
    let listed: Vec<SessionId> = store
        .index_list(&user)
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed, vec![indexed[0].clone(), indexed[2].clone()]);
    store
        .index_remove(&user, &indexed[..1])
        .await
        .expect("unindex");
    let listed = store.index_list(&user).await.expect("list");
    assert_eq!(listed.len(), 1);
}

/// One request through `app`, carrying `cookie`; the cookie it sets, and the body.
async fn call(
    app: &Router,
    method: &str,
    path: &str,
    cookie: Option<&str>,
) -> (Option<String>, String) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(cookie) = cookie {
        req = req.header(COOKIE, cookie);
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let set = res
        .headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_string);
    let body = res.into_body().collect().await.expect("body").to_bytes();
    (set, String::from_utf8_lossy(&body).into_owned())
}

/// JWT mode with a revocation list in `store`: a logged-out token is refused.
async fn logout_revokes_the_token(store: RedisStore) {
    let keys = JwtKeys::new(JwtKey::generate_ed25519("ed1"), vec![]).expect("keys");
    let codec = JwtCodec::new(keys, Duration::from_secs(600), Duration::from_secs(5));
    let app = Router::new()
        .route(
            "/",
            get(|s: Session| async move { format!("{:?}", s.user()) }),
        )
        .route(
            "/login",
            post(|s: Session| async move { s.set_user(Some("ada")) }),
        )
        .route("/logout", post(|s: Session| async move { s.destroy() }))
        .layer(SessionLayer::jwt(
            codec,
            Some(store),
            SessionConfig::default(),
        ));
    let (token, _) = call(&app, "POST", "/login", None).await;
    let token = token.expect("a token cookie");
    let (_, user) = call(&app, "GET", "/", Some(&token)).await;
    assert_eq!(user, "Some(\"ada\")");
    call(&app, "POST", "/logout", Some(&token)).await;
    let (_, user) = call(&app, "GET", "/", Some(&token)).await;
    assert_eq!(user, "None", "a revoked token still works");
}

/// Saves of a loaded session: one command where the server has `SET … IFEQ`, and right
/// either way — refused when another writer got there first or the session ended, and
/// written when the stored value is the same version in other bytes (which only the
/// WATCH fallback can tell).
async fn saves_a_loaded_session(store: &RedisStore, url: &str, mode: CompareAndSetMode) {
    let client = redis::Client::open(url).expect("url");
    let mut raw = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let id = SessionId::generate();
    let v1 = record(1, "a");
    assert_eq!(
        store.save(write(&id, &v1, 0)).await.expect("save"),
        Saved::Done
    );
    assert_eq!(
        store.compare_and_set_mode(),
        CompareAndSetMode::Unknown,
        "a first save has no stored record to compare with"
    );
    // Loaded, as the layer loads a session before it changes it (this also opens the
    // shared connection, outside the count below).
    assert_eq!(store.load(&id, 0).await.expect("load"), Some(v1.clone()));

    let v2 = record(2, "b");
    // INFO on one connection counts itself once: the rest is the save's.
    let before = commands_processed(&mut raw).await;
    assert_eq!(
        store.save(change(&id, &v2, &v1)).await.expect("save"),
        Saved::Done
    );
    let commands = commands_processed(&mut raw).await - before - 1;
    assert_eq!(store.compare_and_set_mode(), mode);
    if mode == CompareAndSetMode::SetIfEq {
        assert_eq!(commands, 1, "a save of a loaded session is one SET … IFEQ");
    } else {
        assert!(commands >= 5, "WATCH, GET, MULTI, SET, EXEC: {commands}");
    }
    assert_eq!(store.load(&id, 0).await.expect("load"), Some(v2.clone()));

    // Another writer saved version 2 first.
    let late = record(2, "late");
    assert_eq!(
        store.save(change(&id, &late, &v1)).await.expect("save"),
        Saved::Conflict
    );
    assert_eq!(store.load(&id, 0).await.expect("load"), Some(v2.clone()));

    // Version 2 as something else wrote it: the same record, other bytes. The IFEQ
    // misses, the fallback sees the version it expects, and the save goes through.
    let spaced = serde_json::to_string_pretty(&v2).expect("json");
    assert_ne!(spaced.as_bytes(), serde_json::to_vec(&v2).expect("json"));
    let () = redis::cmd("SET")
        .arg(key(&id))
        .arg(&spaced)
        .arg("EX")
        .arg(60)
        .query_async(&mut raw)
        .await
        .expect("SET");
    let v3 = record(3, "c");
    assert_eq!(
        store.save(change(&id, &v3, &v2)).await.expect("save"),
        Saved::Done
    );
    assert_eq!(store.load(&id, 0).await.expect("load"), Some(v3.clone()));
    let ttl: i64 = redis::cmd("TTL")
        .arg(key(&id))
        .query_async(&mut raw)
        .await
        .expect("TTL");
    assert!(ttl > 0 && ttl <= 60, "the save keeps a TTL: {ttl}");

    // Ended meanwhile: refused, and not brought back.
    store.remove(&id, EventKind::Logout).await.expect("remove");
    let v4 = record(4, "d");
    assert_eq!(
        store.save(change(&id, &v4, &v3)).await.expect("save"),
        Saved::Conflict
    );
    assert_eq!(store.load(&id, 0).await.expect("load"), None);
    assert_eq!(store.compare_and_set_mode(), mode);
}

/// Two requests add to one counter at once through the layer: one save conflicts, is
/// replayed on the other's version, and both additions are kept.
async fn concurrent_changes_both_survive(store: RedisStore) {
    let keys = CookieKeys::new(&["a test key of at least thirty-two bytes"]).expect("key");
    let app = Router::new()
        .route(
            "/",
            get(|s: Session| async move { s.get::<u64>("n").unwrap_or(0).to_string() }),
        )
        .route(
            "/inc",
            post(|s: Session| async move { s.update("n", |n: &mut u64| *n += 1) }),
        )
        .route(
            "/inc-together",
            post(|State(b): State<Arc<Barrier>>, s: Session| async move {
                s.update("n", |n: &mut u64| *n += 1);
                // Both requests have loaded the same version before either saves.
                b.wait().await;
            }),
        )
        .with_state(Arc::new(Barrier::new(2)))
        .layer(SessionLayer::server(
            Arc::new(store),
            keys,
            SessionConfig::default(),
        ));
    let (cookie, _) = call(&app, "POST", "/inc", None).await;
    let cookie = cookie.expect("a session cookie");
    for round in 1..=10 {
        let (a, b) = tokio::join!(
            call(&app, "POST", "/inc-together", Some(&cookie)),
            call(&app, "POST", "/inc-together", Some(&cookie)),
        );
        assert!(a.0.is_some() && b.0.is_some(), "both saved: {a:?} {b:?}");
        let (_, n) = call(&app, "GET", "/", Some(&cookie)).await;
        assert_eq!(n, (1 + 2 * round).to_string(), "round {round}");
    }
}

#[tokio::test]
async fn the_embedded_store_and_redis_give_the_same_answers() {
    let url = embedded().await;
    let store = RedisStore::connect(&url).expect("url");
    behaves_like_a_session_store(&store, &random_ids()).await;
    logout_revokes_the_token(store).await;
    if let Some((_redis, url)) = real_redis().await {
        let store = RedisStore::connect(&url).expect("url");
        behaves_like_a_session_store(&store, &random_ids()).await;
        logout_revokes_the_token(store).await;
    }
}

#[tokio::test]
async fn a_loaded_session_saves_in_one_round_trip_where_the_server_can() {
    let url = embedded().await;
    assert_eq!(mode_of(&url).await, CompareAndSetMode::SetIfEq);
    saves_a_loaded_session(
        &RedisStore::connect(&url).expect("url"),
        &url,
        CompareAndSetMode::SetIfEq,
    )
    .await;
    concurrent_changes_both_survive(RedisStore::connect(&url).expect("url")).await;
    if let Some((_redis, url)) = real_redis().await {
        let mode = mode_of(&url).await;
        saves_a_loaded_session(&RedisStore::connect(&url).expect("url"), &url, mode).await;
        let store = RedisStore::connect(&url).expect("url");
        concurrent_changes_both_survive(store).await;
    }
}

/// Session ids whose keys land on the masters in turn, so that a rotation moves a
/// session between masters and the index's sessions span all three.
async fn ids_on_every_master(cluster: &RedisCluster) -> Ids {
    let masters = cluster.ports();
    let mut ids = Vec::new();
    while ids.len() < 5 {
        let id = SessionId::generate();
        if cluster.owner(&key(&id)).await == masters[ids.len() % masters.len()] {
            ids.push(id);
        }
    }
    ids.try_into().expect("five ids")
}

#[tokio::test]
async fn a_redis_cluster_gives_the_same_answers() {
    let Some(cluster) = RedisCluster::spawn().await else {
        return;
    };
    // Made before the cluster has formed, as a node started first would be: an error
    // until then, not a hang, and it recovers by itself.
    let store = RedisStore::connect(&cluster.url()).expect("url");
    let probe = SessionId::generate();
    let early = tokio::time::timeout(Duration::from_secs(30), store.load(&probe, 0))
        .await
        .expect("an answer instead of a hang");
    assert!(early.is_err(), "no slot is served yet: {early:?}");
    cluster.join().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(err) = store.load(&probe, 0).await {
        assert!(
            Instant::now() < deadline,
            "the store never recovered: {err}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let ids = ids_on_every_master(&cluster).await;
    let mut owners = Vec::new();
    for id in &ids {
        owners.push(cluster.owner(&key(id)).await);
    }
    assert_ne!(
        owners[0], owners[1],
        "a rotation must move the session to another master"
    );
    owners.sort_unstable();
    owners.dedup();
    assert_eq!(owners.len(), 3, "the sessions must span every master");
    behaves_like_a_session_store(&store, &ids).await;
    let node = format!("redis://127.0.0.1:{}", cluster.ports()[0]);
    assert_eq!(store.compare_and_set_mode(), mode_of(&node).await);
    logout_revokes_the_token(store).await;
}

#[tokio::test]
async fn a_save_follows_its_slot_to_another_master() {
    let Some(cluster) = RedisCluster::start().await else {
        return;
    };
    let store = RedisStore::connect(&cluster.url()).expect("url");
    let id = SessionId::generate();
    let key = key(&id);
    // The first save makes the store fetch the slot map: `from` owns the key.
    let v1 = record(1, "a");
    assert_eq!(
        store.save(write(&id, &v1, 0)).await.expect("save"),
        Saved::Done
    );
    let from = cluster.owner(&key).await;
    let to = *cluster
        .ports()
        .iter()
        .find(|&&p| p != from)
        .expect("another master");
    let slot = cluster.keyslot(&key).await;

    // Resharding in progress, the key already moved: `from` answers ASK.
    cluster.migrate_key(&key, slot, from, to).await;
    let v2 = record(2, "b");
    assert_eq!(
        store
            .save(write(&id, &v2, 1))
            .await
            .expect("save during migration"),
        Saved::Done
    );
    let stale = record(2, "c");
    assert_eq!(
        store.save(write(&id, &stale, 1)).await.expect("save"),
        Saved::Conflict,
        "compare-and-set holds on the importing master"
    );

    // Resharding done: the store's map still names `from`, which answers MOVED.
    cluster.assign_slot(slot, to).await;
    assert_eq!(cluster.owner(&key).await, to);
    let v3 = record(3, "d");
    assert_eq!(
        store
            .save(write(&id, &v3, 2))
            .await
            .expect("save after MOVED"),
        Saved::Done
    );
    assert_eq!(store.load(&id, 0).await.expect("load"), Some(v3));
    let stale = record(3, "e");
    assert_eq!(
        store.save(write(&id, &stale, 2)).await.expect("save"),
        Saved::Conflict
    );
}

#[tokio::test]
async fn an_unreachable_store_is_an_error_not_a_hang() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    for url in [
        format!("redis://:secret@127.0.0.1:{port}"),
        format!("redis+cluster://:secret@127.0.0.1:{port}"),
    ] {
        let store = RedisStore::connect(&url).expect("url");
        let id = SessionId::generate();
        let v1 = record(1, "a");
        // Bounded connect and response timeouts: an answer, not a hang.
        let errors = [
            tokio::time::timeout(Duration::from_secs(30), store.load(&id, 0))
                .await
                .expect("an answer instead of a hang")
                .expect_err("nobody listens"),
            tokio::time::timeout(Duration::from_secs(30), store.save(write(&id, &v1, 0)))
                .await
                .expect("an answer instead of a hang")
                .expect_err("nobody listens"),
        ];
        for err in errors {
            let text = err.to_string();
            assert!(
                text.contains("unavailable") && !text.contains("secret"),
                "{text}"
            );
        }
    }
}
