//! `RedisStore` against a real socket: the project's session-store in-process, and a real
//! `redis-server` when one is installed (required with `CI=true`). Both must give the same
//! answers: compare-and-set saves, rotation, removal, touch, the per-user index.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use session_layer::events::EventKind;
use session_layer::store::{Saved, SessionStore, UserSession, Write};
use session_layer::{Record, RedisStore, SessionId};
use tokio::net::TcpListener;

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
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
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

fn write<'a>(id: &'a SessionId, record: &'a Record, expected: u64) -> Write<'a> {
    Write {
        id,
        record,
        expected,
        replaces: None,
        ttl: TTL,
    }
}

async fn behaves_like_a_session_store(url: &str) {
    let store = RedisStore::connect(url).expect("url");
    let id = SessionId::generate();
    assert_eq!(store.load(&id, 0).await.expect("load"), None);

    let v1 = record(1, "a");
    assert_eq!(
        store.save(write(&id, &v1, 0)).await.expect("save"),
        Saved::Done
    );
    assert_eq!(store.load(&id, 0).await.expect("load"), Some(v1.clone()));
    // Someone else saved version 1 first: a second writer starting from 0 is refused.
    let stale = record(1, "b");
    assert_eq!(
        store.save(write(&id, &stale, 0)).await.expect("save"),
        Saved::Conflict
    );
    assert_eq!(store.load(&id, 0).await.expect("load"), Some(v1));

    // Concurrent writers on one version: exactly one wins.
    let attempts: Vec<Record> = (0..8).map(|i| record(2, &format!("w{i}"))).collect();
    let outcomes =
        futures::future::join_all(attempts.iter().map(|r| store.save(write(&id, r, 1)))).await;
    let won = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(Saved::Done)))
        .count();
    assert_eq!(won, 1, "{outcomes:?}");

    // Rotation: the new id has the data, the old one is gone, in one step.
    let new_id = SessionId::generate();
    let v3 = record(3, "rotated");
    let rotate = Write {
        id: &new_id,
        record: &v3,
        expected: 2,
        replaces: Some(&id),
        ttl: TTL,
    };
    assert_eq!(store.save(rotate).await.expect("rotate"), Saved::Done);
    assert_eq!(store.load(&id, 0).await.expect("load"), None);
    assert_eq!(store.load(&new_id, 0).await.expect("load"), Some(v3));

    assert!(store.touch(&new_id, TTL).await.expect("touch"));
    store
        .remove(&new_id, EventKind::Logout)
        .await
        .expect("remove");
    assert!(!store.touch(&new_id, TTL).await.expect("touch"));

    // The per-user index lists live sessions only, oldest first.
    let user = format!("user-{}", SessionId::generate().as_str());
    let ids: Vec<SessionId> = (0..3).map(|_| SessionId::generate()).collect();
    for (n, sid) in ids.iter().enumerate() {
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
        .remove(&ids[1], EventKind::Revoke)
        .await
        .expect("remove");
    let listed: Vec<SessionId> = store
        .index_list(&user)
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed, vec![ids[0].clone(), ids[2].clone()]);
    store.index_remove(&user, &ids[..1]).await.expect("unindex");
    let listed = store.index_list(&user).await.expect("list");
    assert_eq!(listed.len(), 1);
}

#[tokio::test]
async fn the_embedded_store_and_redis_give_the_same_answers() {
    behaves_like_a_session_store(&embedded().await).await;
    if let Some((_redis, url)) = real_redis().await {
        behaves_like_a_session_store(&url).await;
    }
}

#[tokio::test]
async fn an_unreachable_store_is_an_error_not_a_hang() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let store = RedisStore::connect(&format!("redis://:secret@127.0.0.1:{port}")).expect("url");
    // Bounded connect and response timeouts: an answer, not a hang.
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        store.load(&SessionId::generate(), 0),
    )
    .await
    .expect("an answer instead of a hang")
    .expect_err("nobody listens");
    let text = err.to_string();
    assert!(
        text.contains("unavailable") && !text.contains("secret"),
        "{text}"
    );
}
