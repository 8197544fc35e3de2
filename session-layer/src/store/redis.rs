//! `shared` mode's store: any server speaking the Redis protocol — the project's
//! session-store or a real Redis/Valkey — or a Redis Cluster, chosen by URL.
//!
//! Reads and unconditional commands share one multiplexed connection (on a cluster, the
//! redis crate's cluster client, which routes each key to its slot's master). Compare-and-
//! set writes need WATCH, whose state belongs to a connection, so each takes a connection
//! of its own from a small pool for the WATCH … EXEC span; on a cluster, from a pool to the
//! master that owns the key's slot (see [`cluster`]).
//!
//! The pool is deadpool's, with a manager of our own rather than deadpool-redis's: that
//! one sends UNWATCH + PING on every checkout, a round trip per save. Here a connection
//! is reused only after a span that ended cleanly (EXEC or UNWATCH answered, which clears
//! WATCH); after an error, or a request cancelled mid-span, it is dropped.
//!
//! The common save — a change to a session the request loaded — needs neither: when the
//! writer has the record it started from, the save is one `SET key new IFEQ old EX ttl`
//! on the shared connection (Valkey 8.1, Redis 8.4, the project's store), a single round
//! trip against two. The comparison is by value: the old record re-serialized, which is
//! byte for byte what this layer stored. When it is not (written by something else, or
//! a value that re-serializes differently), the SET answers nil and the WATCH path
//! decides by version, so correctness never rests on the bytes matching. A server that
//! answers the option with an error lacks it; from then on saves go straight to WATCH.

mod cluster;

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use deadpool::Runtime;
use deadpool::managed::{
    self, BuildError, Metrics, Object, Pool, RecycleError, RecycleResult, Timeouts,
};
use futures::FutureExt;
use futures::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, ErrorKind, FromRedisValue, RedisResult, ServerErrorKind, Value,
};
use serde::Serialize;

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
/// What an invalid URL should have looked like.
const URL_FORMS: &str = "expected redis://[:password@]host:port[/db] for one server, \
                         or redis+cluster://[:password@]host1:port1,host2:port2 for a Redis Cluster";

pub struct RedisStore {
    /// The URL with any password masked, for error messages and logs.
    url: String,
    backend: Backend,
    /// A [`CompareAndSetMode`], as learnt from the server's replies.
    cas_mode: AtomicU8,
}

/// How [`RedisStore`] saves a change to a session it loaded, as far as its server's
/// replies have shown; for diagnostics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareAndSetMode {
    /// No such save yet.
    #[default]
    Unknown,
    /// `SET … IFEQ`: one round trip.
    SetIfEq,
    /// WATCH + GET, then MULTI … EXEC: the server has no `SET … IFEQ`.
    Watch,
}

impl CompareAndSetMode {
    fn from_u8(raw: u8) -> Self {
        match raw {
            1 => CompareAndSetMode::SetIfEq,
            2 => CompareAndSetMode::Watch,
            _ => CompareAndSetMode::Unknown,
        }
    }
}

enum Backend {
    /// One server: the project's store, Redis or Valkey (`redis://`).
    Server {
        conn: ConnectionManager,
        pool: Pool<WatchConnections>,
    },
    /// A Redis Cluster (`redis+cluster://`); boxed, as it holds the slot map and a pool
    /// per master beside its connection.
    Cluster(Box<cluster::Cluster>),
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

/// A pool of connections for WATCH spans to the server `client` reaches.
fn watch_pool(client: redis::Client) -> Result<Pool<WatchConnections>, BuildError> {
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
    Pool::builder(manager)
        .max_size(POOL_SIZE)
        .timeouts(timeouts)
        .runtime(Runtime::Tokio1)
        .build()
}

impl RedisStore {
    /// Prepares connections to `url` without opening them, so a node starts while the
    /// store is down and answers 503 until it comes up.
    ///
    /// `redis://…` names one server. `redis+cluster://[:password@]host1:port1,host2:port2`
    /// names seed nodes of a Redis Cluster: the rest of the cluster is discovered from
    /// them, and every node is reached with the same credentials.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let shown = redact(url);
        let invalid = |e: &dyn std::fmt::Display| StoreError::Unavailable {
            url: shown.clone(),
            reason: format!("invalid store URL ({e}); {URL_FORMS}"),
        };
        let backend = match cluster::seeds(url) {
            Some(seeds) => {
                let seeds = seeds.map_err(|e| invalid(&e))?;
                Backend::Cluster(Box::new(
                    cluster::Cluster::new(seeds).map_err(|e| invalid(&e))?,
                ))
            }
            None => {
                let client = redis::Client::open(url).map_err(|e| invalid(&e))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(200));
                let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
                    .map_err(|e| invalid(&e))?;
                let pool = watch_pool(client).map_err(|e| invalid(&e))?;
                Backend::Server { conn, pool }
            }
        };
        Ok(RedisStore {
            url: shown,
            backend,
            cas_mode: AtomicU8::new(CompareAndSetMode::Unknown as u8),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// How saves of a loaded session are made (see the module docs): for diagnostics and
    /// tests.
    pub fn compare_and_set_mode(&self) -> CompareAndSetMode {
        CompareAndSetMode::from_u8(self.cas_mode.load(Ordering::Relaxed))
    }

    fn failed(&self, err: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable {
            url: self.url.clone(),
            reason: err.to_string(),
        }
    }

    /// Runs one command that needs no WATCH: on the shared connection, or on a cluster
    /// through the cluster client.
    async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        self.query_raw(cmd).await.map_err(|e| self.failed(e))
    }

    /// [`Self::query`], keeping the error's kind: an error reply is not a broken link.
    async fn query_raw<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> RedisResult<T> {
        match &self.backend {
            Backend::Server { conn, .. } => cmd.query_async(&mut conn.clone()).await,
            Backend::Cluster(cluster) => cmd.query_async(&mut cluster.plain()).await,
        }
    }

    /// The one-round-trip save: `SET key body IFEQ <previous as stored> EX ttl`, on the
    /// shared connection (on a cluster, through the cluster client: one key, one slot).
    /// Ok(true): written. Ok(false): nothing written, and the WATCH path must decide —
    /// the stored value is not `previous` byte for byte (another writer got there first,
    /// the session ended, or the same version was serialized differently), or the server
    /// has no IFEQ. An error that is not a reply (connection, timeout) is the store's:
    /// the write may have happened, so it is not retried another way.
    async fn set_if_equal(
        &self,
        write: &Write<'_>,
        body: &[u8],
        previous: &Record,
    ) -> Result<bool, StoreError> {
        let stored = serde_json::to_vec(previous).map_err(|e| self.failed(e))?;
        let reply = self
            .query_raw::<Value>(
                redis::cmd("SET")
                    .arg(session_key(write.id))
                    .arg(body)
                    .arg("IFEQ")
                    .arg(stored)
                    .arg("EX")
                    .arg(write.ttl.as_secs().max(1)),
            )
            .await;
        match reply {
            Ok(Value::Okay) => {
                self.has_ifeq();
                Ok(true)
            }
            Ok(Value::Nil) => {
                self.has_ifeq();
                Ok(false)
            }
            // Redis before 8.4 and Valkey before 8.1 answer `ERR syntax error`; anything
            // else than OK or nil means the option is not what the docs describe either.
            Ok(other) => {
                self.lacks_ifeq(format_args!("unexpected reply {other:?}"));
                Ok(false)
            }
            Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::ResponseError) => {
                self.lacks_ifeq(err);
                Ok(false)
            }
            Err(err) => Err(self.failed(err)),
        }
    }

    /// Only from Unknown: once a server has refused IFEQ, a late answer from before
    /// (or from another node of a cluster mid-upgrade) does not bring it back.
    fn has_ifeq(&self) {
        let _ = self.cas_mode.compare_exchange(
            CompareAndSetMode::Unknown as u8,
            CompareAndSetMode::SetIfEq as u8,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Saves use WATCH from now on; said once, when it is learnt.
    fn lacks_ifeq(&self, reply: impl std::fmt::Display) {
        let before = self
            .cas_mode
            .swap(CompareAndSetMode::Watch as u8, Ordering::Relaxed);
        if before != CompareAndSetMode::Watch as u8 {
            tracing::info!(url = %self.url, %reply, "store has no SET IFEQ; saves use WATCH/MULTI");
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.query(redis::cmd("GET").arg(key)).await
    }

    /// Removes the session, returning the version it had (0 if there was none).
    pub(crate) async fn take(&self, id: &SessionId) -> Result<u64, StoreError> {
        let raw: Option<Vec<u8>> = self
            .query(redis::cmd("GETDEL").arg(session_key(id)))
            .await?;
        Ok(raw.as_deref().and_then(decode).map_or(0, |r| r.version))
    }

    /// WATCH `key`, read it, and let `next` decide what to write; the write goes through
    /// only if nobody changed `key` in between. `next` returns None to write nothing.
    /// Ok(None): `key` changed underneath. On a cluster, the write must touch `key` only
    /// (a transaction cannot span slots), and `next` may be asked again if the span had to
    /// start over on another node before anything was written.
    async fn compare_and_set<T>(
        &self,
        key: &str,
        next: impl Fn(Option<Vec<u8>>) -> Option<(redis::Pipeline, T)>,
    ) -> Result<Option<T>, StoreError> {
        let pool = match &self.backend {
            Backend::Server { pool, .. } => pool,
            Backend::Cluster(cluster) => {
                return cluster
                    .compare_and_set(key, &next)
                    .await
                    .map_err(|e| self.failed(e));
            }
        };
        let mut conn = pool.get().await.map_err(|e| self.failed(e))?;
        conn.clean = false;
        let current = match watch_and_get(&mut conn.conn, key, false).await {
            Ok(current) => current,
            Err(err) => {
                // Nothing ran yet, so one retry is safe. A broken connection usually means
                // the store restarted and broke every pooled one: drop them all, and retry
                // on a fresh connection.
                discard_all(conn);
                conn = pool.get().await.map_err(|e| self.failed(e))?;
                conn.clean = false;
                match watch_and_get(&mut conn.conn, key, false).await {
                    Ok(current) => current,
                    Err(_) => {
                        discard_all(conn);
                        return Err(self.failed(err));
                    }
                }
            }
        };
        // No retry past this point: the write may have happened.
        match finish(&mut conn.conn, next(current), false).await {
            Ok(done) => {
                conn.clean = true;
                Ok(done)
            }
            Err(e) => {
                discard_all(conn);
                Err(self.failed(e))
            }
        }
    }

    /// Marks a token-carried session as logged out until its tokens have expired anyway.
    pub(crate) async fn revoke(&self, id: &SessionId, ttl: Duration) -> Result<(), StoreError> {
        self.query(
            redis::cmd("SET")
                .arg(revoked_key(id))
                .arg(1)
                .arg("EX")
                .arg(ttl.as_secs().max(1)),
        )
        .await
    }

    pub(crate) async fn is_revoked(&self, id: &SessionId) -> Result<bool, StoreError> {
        let found: i64 = self
            .query(redis::cmd("EXISTS").arg(revoked_key(id)))
            .await?;
        Ok(found == 1)
    }

    async fn read_index(&self, user: &str) -> Result<Vec<UserSession>, StoreError> {
        Ok(parse_index(self.get(&user_key(user)).await?.as_deref()))
    }

    /// Keeps the entries whose session still exists. On a cluster the sessions live in
    /// many slots; the cluster client splits the MGET by slot and puts the answers back
    /// in the order asked.
    async fn live(&self, list: Vec<UserSession>) -> Result<Vec<UserSession>, StoreError> {
        if list.is_empty() {
            return Ok(list);
        }
        let mut cmd = redis::cmd("MGET");
        for s in &list {
            cmd.arg(session_key(&s.id));
        }
        let found: Vec<Option<Vec<u8>>> = self.query(&cmd).await?;
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
                        pipe.set_ex(&key, &body, ttl.as_secs().max(1));
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

    /// Id rotation on a cluster. The new and the old key almost always hash to different
    /// slots, which no transaction can span, so the move takes two steps. The new key is
    /// written first: nobody knows its id until this response carries it, so it stays
    /// invisible. Then the old key is deleted by a compare-and-set on its version — the
    /// step where the session moves, as atomic as on one server: the old id works until
    /// that delete and never after. On a conflict the unused new key is deleted again.
    async fn rotate_across_slots(
        &self,
        write: &Write<'_>,
        old: &SessionId,
        body: &[u8],
    ) -> Result<Saved, StoreError> {
        let new_key = session_key(write.id);
        self.query::<()>(
            redis::cmd("SET")
                .arg(&new_key)
                .arg(body)
                .arg("EX")
                .arg(write.ttl.as_secs().max(1)),
        )
        .await?;
        let old_key = session_key(old);
        let moved = self
            .compare_and_set(&old_key, |current| {
                (version(current.as_deref()) == write.expected).then(|| {
                    let mut pipe = redis::pipe();
                    pipe.del(&old_key);
                    (pipe, ())
                })
            })
            .await?;
        if moved.is_some() {
            return Ok(Saved::Done);
        }
        // Best effort: its id was never handed out, so a key left behind only waits out
        // its TTL.
        if let Err(err) = self.query::<()>(redis::cmd("DEL").arg(&new_key)).await {
            tracing::debug!(session = write.id.short(), %err, "unused rotation target not deleted");
        }
        Ok(Saved::Conflict)
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
            if let (Some(old), Backend::Cluster(_)) = (write.replaces, &self.backend) {
                return self.rotate_across_slots(&write, old, &body).await;
            }
            // A change to a stored session, not a rotation: one round trip when the server
            // has IFEQ. Rotations and first saves compare versions under WATCH.
            if let Some(previous) = write.previous
                && write.expected > 0
                && previous.version == write.expected
                && write.replaces.is_none()
                && self.compare_and_set_mode() != CompareAndSetMode::Watch
                && self.set_if_equal(&write, &body, previous).await?
            {
                return Ok(Saved::Done);
            }
            let key = session_key(write.id);
            let watched = session_key(write.replaces.unwrap_or(write.id));
            let done = self
                .compare_and_set(&watched, |current| {
                    if version(current.as_deref()) != write.expected {
                        return None;
                    }
                    let mut pipe = redis::pipe();
                    pipe.set_ex(&key, &body, write.ttl.as_secs().max(1));
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
            let set: i64 = self
                .query(
                    redis::cmd("EXPIRE")
                        .arg(session_key(id))
                        .arg(ttl.as_secs().max(1)),
                )
                .await?;
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
            let ttl: i64 = self.query(redis::cmd("TTL").arg(user_key(user))).await?;
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

/// The version of a stored session; 0 when there is none.
fn version(raw: Option<&[u8]>) -> u64 {
    raw.and_then(decode).map_or(0, |r| r.version)
}

/// WATCH `key` and read it, in one round trip. `asking`: the key's slot is being
/// imported by this node, which serves each command only right after an ASKING.
async fn watch_and_get(
    conn: &mut MultiplexedConnection,
    key: &str,
    asking: bool,
) -> RedisResult<Option<Vec<u8>>> {
    let mut pipe = redis::pipe();
    if asking {
        pipe.cmd("ASKING").ignore();
    }
    pipe.cmd("WATCH").arg(key).ignore();
    if asking {
        pipe.cmd("ASKING").ignore();
    }
    let (current,): (Option<Vec<u8>>,) = pipe.get(key).query_async(conn).await?;
    Ok(current)
}

/// Ends a WATCH span: MULTI … EXEC for the write `step` holds, or UNWATCH when there is
/// none. Ok(None) also when EXEC found the watched key changed. `asking` as for
/// [`watch_and_get`]: one ASKING before MULTI covers the whole transaction.
async fn finish<T>(
    conn: &mut MultiplexedConnection,
    step: Option<(redis::Pipeline, T)>,
    asking: bool,
) -> RedisResult<Option<T>> {
    match step {
        None => redis::cmd("UNWATCH")
            .query_async::<()>(conn)
            .await
            .map(|()| None),
        Some((mut pipe, result)) => {
            if asking {
                redis::cmd("ASKING").query_async::<()>(conn).await?;
            }
            pipe.atomic()
                .query_async::<Option<Value>>(conn)
                .await
                .map(|executed| executed.map(|_| result))
        }
    }
}

/// Drops `conn` and every idle connection of its pool: after an error, their WATCH state
/// and their link to the server are in doubt.
fn discard_all(conn: Object<WatchConnections>) {
    let pool = Object::pool(&conn);
    drop(Object::take(conn));
    if let Some(pool) = pool {
        pool.retain(|_, _| false);
    }
}

/// `url` with the password replaced, so it can be logged. Whatever precedes the last `@`
/// after the scheme is the user information, even in a URL too garbled to parse.
pub fn redact(url: &str) -> String {
    let Some(at) = url.rfind('@') else {
        return url.to_string();
    };
    match url.find("://") {
        Some(scheme) if scheme < at => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => format!("***@{}", &url[at + 1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::{RedisStore, redact};

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("redis://:s3cret@10.0.0.1:6379/0"),
            "redis://***@10.0.0.1:6379/0"
        );
        assert_eq!(redact("redis://127.0.0.1:7379"), "redis://127.0.0.1:7379");
        assert_eq!(
            redact("redis+cluster://admin:s3cret@10.0.0.1:7000,10.0.0.2:7000"),
            "redis+cluster://***@10.0.0.1:7000,10.0.0.2:7000"
        );
        assert_eq!(
            redact("redis+cluster://:p@ss@10.0.0.1:7000"),
            "redis+cluster://***@10.0.0.1:7000"
        );
        assert_eq!(redact("redis:/:s3cret@10.0.0.1"), "***@10.0.0.1");
        // Nor do they reach the error for a URL that does not parse.
        for url in [
            "redis+cluster://:s3cret@",
            "redis+cluster://:s3cret@10.0.0.1:7000/3",
            "rediss+cluster://:s3cret@10.0.0.1:7000",
            "redis://:s3cret@10.0.0.1:notaport",
            "redis+clustr://:s3cret@10.0.0.1:7000",
        ] {
            let err = RedisStore::connect(url).err().expect(url).to_string();
            assert!(!err.contains("s3cret"), "{err}");
            assert!(
                err.contains("redis+cluster://"),
                "says what to write: {err}"
            );
        }
    }
}
