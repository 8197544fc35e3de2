//! `shared` mode's store: any server speaking the Redis protocol — the project's
//! session-store or a real Redis/Valkey — chosen by URL.
//!
//! Reads and unconditional commands share one multiplexed connection. Compare-and-set
//! writes need WATCH, whose state belongs to a connection, so each takes a connection of
//! its own from a small pool for the WATCH … EXEC span.
//!
//! The pool is deadpool's, with a manager of our own rather than deadpool-redis's: that
//! one sends UNWATCH + PING on every checkout, a round trip per save. Here a connection
//! is reused only after a span that ended cleanly (EXEC or UNWATCH answered, which clears
//! WATCH); after an error, or a request cancelled mid-span, it is dropped.

use std::time::Duration;

use deadpool::Runtime;
use deadpool::managed::{self, Metrics, Object, Pool, RecycleError, RecycleResult, Timeouts};
use futures::FutureExt;
use futures::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Value};

use super::{Saved, SessionStore, StoreError, UserSession, Write};
use crate::events::EventKind;
use crate::{Record, SessionId};

/// Keys are namespaced so the store can hold other data beside sessions.
const SESSION_PREFIX: &str = "session:";
const USER_PREFIX: &str = "session-user:";
const REVOKED_PREFIX: &str = "session-revoked:";
/// Short: a request should fail fast with a clear 503 rather than hang on a dead store.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const POOL_SIZE: usize = 16;
/// Attempts at the per-user index's own compare-and-set before giving up.
const INDEX_RETRIES: usize = 16;

pub struct RedisStore {
    /// The URL with any password masked, for error messages and logs.
    url: String,
    conn: ConnectionManager,
    pool: Pool<WatchConnections>,
}

/// Makes connections for WATCH … EXEC spans (see the module docs).
struct WatchConnections {
    client: redis::Client,
    config: AsyncConnectionConfig,
}

/// A pooled connection, and whether its last WATCH span ended (EXEC or UNWATCH
/// answered). A request cancelled mid-span leaves it unclean: it is then discarded
/// instead of lending a stray WATCH to the next save.
struct WatchConnection {
    conn: MultiplexedConnection,
    clean: bool,
}

impl managed::Manager for WatchConnections {
    type Type = WatchConnection;
    type Error = redis::RedisError;

    async fn create(&self) -> Result<WatchConnection, redis::RedisError> {
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        Ok(WatchConnection { conn, clean: true })
    }

    async fn recycle(
        &self,
        conn: &mut WatchConnection,
        _: &Metrics,
    ) -> RecycleResult<redis::RedisError> {
        if conn.clean {
            Ok(())
        } else {
            Err(RecycleError::message("a WATCH span did not finish"))
        }
    }
}

impl RedisStore {
    /// Prepares connections to `url` without opening them, so a node starts while the
    /// store is down and answers 503 until it comes up.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let shown = redact(url);
        let invalid = |e: &dyn std::fmt::Display| StoreError::Unavailable {
            url: shown.clone(),
            reason: format!("invalid store URL ({e}); expected redis://[:password@]host:port[/db]"),
        };
        let client = redis::Client::open(url).map_err(|e| invalid(&e))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| invalid(&e))?;
        let manager = WatchConnections {
            client,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT)),
        };
        let timeouts = Timeouts {
            wait: Some(RESPONSE_TIMEOUT),
            create: Some(CONNECT_TIMEOUT),
            recycle: Some(RESPONSE_TIMEOUT),
        };
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .timeouts(timeouts)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| invalid(&e))?;
        Ok(RedisStore {
            url: shown,
            conn,
            pool,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn failed(&self, err: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable {
            url: self.url.clone(),
            reason: err.to_string(),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))
    }

    /// Removes the session, returning the version it had (0 if there was none).
    pub(crate) async fn take(&self, id: &SessionId) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let raw: Option<Vec<u8>> = redis::cmd("GETDEL")
            .arg(session_key(id))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(raw.as_deref().and_then(decode).map_or(0, |r| r.version))
    }

    /// WATCH `key`, read it, and let `next` decide what to write; the write goes through
    /// only if nobody changed `key` in between. `next` returns None to write nothing.
    /// Ok(None): `key` changed underneath.
    async fn compare_and_set<T>(
        &self,
        key: &str,
        next: impl FnOnce(Option<Vec<u8>>) -> Option<(redis::Pipeline, T)>,
    ) -> Result<Option<T>, StoreError> {
        let mut conn = self.pool.get().await.map_err(|e| self.failed(e))?;
        conn.clean = false;
        let current = match watch_and_get(&mut conn.conn, key).await {
            Ok(current) => current,
            Err(err) => {
                // Nothing ran yet, so one retry is safe. A broken connection usually means
                // the store restarted and broke every pooled one: drop them all, and retry
                // on a fresh connection.
                self.discard_all(conn);
                conn = self.pool.get().await.map_err(|e| self.failed(e))?;
                conn.clean = false;
                match watch_and_get(&mut conn.conn, key).await {
                    Ok(current) => current,
                    Err(_) => {
                        self.discard_all(conn);
                        return Err(self.failed(err));
                    }
                }
            }
        };
        let finished = match next(current) {
            None => redis::cmd("UNWATCH")
                .query_async::<()>(&mut conn.conn)
                .await
                .map(|()| None),
            Some((mut pipe, result)) => pipe
                .atomic()
                .query_async::<Option<Value>>(&mut conn.conn)
                .await
                .map(|executed| executed.map(|_| result)),
        };
        // No retry past this point: the write may have happened.
        match finished {
            Ok(done) => {
                conn.clean = true;
                Ok(done)
            }
            Err(e) => {
                self.discard_all(conn);
                Err(self.failed(e))
            }
        }
    }

    /// Drops `conn` and every idle pooled connection: after an error, their WATCH state
    /// and their link to the store are in doubt.
    fn discard_all(&self, conn: Object<WatchConnections>) {
        drop(Object::take(conn));
        self.pool.retain(|_, _| false);
    }

    /// Marks a token-carried session as logged out until its tokens have expired anyway.
    pub(crate) async fn revoke(&self, id: &SessionId, ttl: Duration) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("SET")
            .arg(revoked_key(id))
            .arg(1)
            .arg("EX")
            .arg(ttl.as_secs().max(1))
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.failed(e))
    }

    pub(crate) async fn is_revoked(&self, id: &SessionId) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let found: i64 = redis::cmd("EXISTS")
            .arg(revoked_key(id))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(found == 1)
    }

    async fn read_index(&self, user: &str) -> Result<Vec<UserSession>, StoreError> {
        Ok(parse_index(self.get(&user_key(user)).await?.as_deref()))
    }

    /// Keeps the entries whose session still exists.
    async fn live(&self, list: Vec<UserSession>) -> Result<Vec<UserSession>, StoreError> {
        if list.is_empty() {
            return Ok(list);
        }
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("MGET");
        for s in &list {
            cmd.arg(session_key(&s.id));
        }
        let found: Vec<Option<Vec<u8>>> = cmd
            .query_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(list
            .into_iter()
            .zip(found)
            .filter_map(|(s, f)| f.map(|_| s))
            .collect())
    }

    /// Rewrites `user`'s index with `change` applied, retrying on concurrent changes.
    async fn update_index(
        &self,
        user: &str,
        ttl: Duration,
        change: impl Fn(&mut Vec<UserSession>),
    ) -> Result<Vec<UserSession>, StoreError> {
        let key = user_key(user);
        for _ in 0..INDEX_RETRIES {
            let expected = self.get(&key).await?;
            let mut list = self.live(parse_index(expected.as_deref())).await?;
            change(&mut list);
            let body = serde_json::to_vec(&list).map_err(|e| self.failed(e))?;
            let written = self
                .compare_and_set(&key, |now| {
                    if now != expected {
                        return None;
                    }
                    let mut pipe = redis::pipe();
                    if list.is_empty() {
                        pipe.del(&key);
                    } else {
                        pipe.set_ex(&key, body, ttl.as_secs().max(1));
                    }
                    Some((pipe, ()))
                })
                .await?;
            if written.is_some() {
                return Ok(list);
            }
        }
        Err(self.failed(format!(
            "the session index of one user changed {INDEX_RETRIES} times while being updated"
        )))
    }
}

impl SessionStore for RedisStore {
    fn load<'a>(
        &'a self,
        id: &'a SessionId,
        _min_version: u64,
    ) -> BoxFuture<'a, Result<Option<Record>, StoreError>> {
        async move {
            let raw = self.get(&session_key(id)).await?;
            Ok(raw.as_deref().and_then(|r| {
                let record = decode(r);
                if record.is_none() {
                    tracing::warn!(
                        session = id.short(),
                        "unreadable session in the store; treating it as absent"
                    );
                }
                record
            }))
        }
        .boxed()
    }

    fn save<'a>(&'a self, write: Write<'a>) -> BoxFuture<'a, Result<Saved, StoreError>> {
        async move {
            let body = serde_json::to_vec(write.record).map_err(|e| self.failed(e))?;
            let watched = session_key(write.replaces.unwrap_or(write.id));
            let done = self
                .compare_and_set(&watched, |current| {
                    let version = current.as_deref().and_then(decode).map_or(0, |r| r.version);
                    if version != write.expected {
                        return None;
                    }
                    let mut pipe = redis::pipe();
                    pipe.set_ex(session_key(write.id), body, write.ttl.as_secs().max(1));
                    if let Some(old) = write.replaces {
                        pipe.del(session_key(old));
                    }
                    Some((pipe, ()))
                })
                .await?;
            Ok(if done.is_some() {
                Saved::Done
            } else {
                Saved::Conflict
            })
        }
        .boxed()
    }

    fn remove<'a>(
        &'a self,
        id: &'a SessionId,
        _kind: EventKind,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move { self.take(id).await.map(|_| ()) }.boxed()
    }

    fn touch<'a>(
        &'a self,
        id: &'a SessionId,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        async move {
            let mut conn = self.conn.clone();
            let set: i64 = redis::cmd("EXPIRE")
                .arg(session_key(id))
                .arg(ttl.as_secs().max(1))
                .query_async(&mut conn)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(set == 1)
        }
        .boxed()
    }

    fn index_add<'a>(
        &'a self,
        user: &'a str,
        session: UserSession,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Vec<UserSession>, StoreError>> {
        async move {
            self.update_index(user, ttl, |list| {
                if !list.iter().any(|s| s.id == session.id) {
                    list.push(session.clone());
                }
            })
            .await
        }
        .boxed()
    }

    fn index_remove<'a>(
        &'a self,
        user: &'a str,
        ids: &'a [SessionId],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let mut conn = self.conn.clone();
            let ttl: i64 = redis::cmd("TTL")
                .arg(user_key(user))
                .query_async(&mut conn)
                .await
                .map_err(|e| self.failed(e))?;
            let ttl = Duration::from_secs(u64::try_from(ttl).unwrap_or(1));
            self.update_index(user, ttl, |list| list.retain(|s| !ids.contains(&s.id)))
                .await
                .map(|_| ())
        }
        .boxed()
    }

    fn index_list<'a>(
        &'a self,
        user: &'a str,
    ) -> BoxFuture<'a, Result<Vec<UserSession>, StoreError>> {
        async move {
            let list = self.read_index(user).await?;
            self.live(list).await
        }
        .boxed()
    }
}

pub(crate) fn session_key(id: &SessionId) -> String {
    format!("{SESSION_PREFIX}{}", id.as_str())
}

fn revoked_key(id: &SessionId) -> String {
    format!("{REVOKED_PREFIX}{}", id.as_str())
}

fn user_key(user: &str) -> String {
    format!("{USER_PREFIX}{user}")
}

/// An unreadable index is treated as empty: it only lists sessions, it holds none.
fn parse_index(raw: Option<&[u8]>) -> Vec<UserSession> {
    raw.and_then(|r| serde_json::from_slice(r).ok())
        .unwrap_or_default()
}

fn decode(raw: &[u8]) -> Option<Record> {
    serde_json::from_slice(raw).ok()
}

/// WATCH `key` and read it, in one round trip.
async fn watch_and_get(
    conn: &mut MultiplexedConnection,
    key: &str,
) -> Result<Option<Vec<u8>>, redis::RedisError> {
    let (current,): (Option<Vec<u8>>,) = redis::pipe()
        .cmd("WATCH")
        .arg(key)
        .ignore()
        .get(key)
        .query_async(conn)
        .await?;
    Ok(current)
}

/// `url` with the password replaced, so it can be logged.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("redis://:s3cret@10.0.0.1:6379/0"),
            "redis://***@10.0.0.1:6379/0"
        );
        assert_eq!(redact("redis://127.0.0.1:7379"), "redis://127.0.0.1:7379");
    }
}
