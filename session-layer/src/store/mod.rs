//! Where server-side sessions live. One trait, so the layer treats this process's memory
//! and a Redis-protocol store (with or without a near-cache) the same way.
//!
//! Every write is a compare-and-set on the session's version: a save says which version
//! it started from, and the store refuses it if another request saved in between. The
//! layer then re-applies the request's changes to the newer version (see
//! [`crate::Session`]), so concurrent changes to one session all survive.

mod cached;
mod memory;
mod redis;

use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub use cached::{CachedStore, NearCacheStats};
pub use memory::MemoryStore;
pub use redis::{CompareAndSetMode, RedisStore, redact as redact_url};

use crate::events::EventKind;
use crate::{Record, SessionId};

/// Why a session could not be loaded or saved. Either way the request cannot be served
/// correctly, so the layer answers 503 rather than guess.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("session store at {url} is unavailable: {reason}")]
    Unavailable { url: String, reason: String },
    #[error("a session kept changing underneath {attempts} save attempts")]
    Contended { attempts: u32 },
}

/// A compare-and-set write of one session.
#[derive(Debug)]
pub struct Write<'a> {
    pub id: &'a SessionId,
    /// The new state; its version is the stored version plus one.
    pub record: &'a Record,
    /// The version the writer started from (0: a session never saved). The write happens
    /// only if the stored version — under `replaces` when rotating — still is this.
    pub expected: u64,
    /// Id rotation: the session's previous id, removed in the same atomic step.
    pub replaces: Option<&'a SessionId>,
    /// The stored record this write replaces (version `expected`), when the writer has
    /// it: lets a store compare-and-set by value in one round trip instead of reading the
    /// version first. A store may ignore it; it must never be needed for correctness.
    pub previous: Option<&'a Record>,
    /// Idle lifetime in the store.
    pub ttl: Duration,
}

/// How a compare-and-set write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    Done,
    /// Another request changed the session first; nothing was written.
    Conflict,
}

/// One of a user's sessions, as the per-user index lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSession {
    pub id: SessionId,
    /// Unix seconds the session began.
    pub created: u64,
}

/// Storage for server-side sessions. Methods return boxed futures so the layer can hold
/// any store as `Arc<dyn SessionStore>` and pick it at start-up from a flag.
pub trait SessionStore: Send + Sync + 'static {
    /// The session under `id`, if it exists. `min_version` is the newest version this
    /// client is known to have seen (from its cookie); a cache must not answer with an
    /// older one.
    fn load<'a>(
        &'a self,
        id: &'a SessionId,
        min_version: u64,
    ) -> BoxFuture<'a, Result<Option<Record>, StoreError>>;

    fn save<'a>(&'a self, write: Write<'a>) -> BoxFuture<'a, Result<Saved, StoreError>>;

    /// Ends a session for the stated reason; absent sessions are fine.
    fn remove<'a>(
        &'a self,
        id: &'a SessionId,
        kind: EventKind,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Restarts the idle timeout; false when the session no longer exists.
    fn touch<'a>(
        &'a self,
        id: &'a SessionId,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Records that `user` holds `session` and returns all of the user's live sessions,
    /// oldest first. `ttl` bounds the index's own life.
    fn index_add<'a>(
        &'a self,
        user: &'a str,
        session: UserSession,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Vec<UserSession>, StoreError>>;

    /// Drops sessions from `user`'s index.
    fn index_remove<'a>(
        &'a self,
        user: &'a str,
        ids: &'a [SessionId],
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// `user`'s live sessions, oldest first.
    fn index_list<'a>(
        &'a self,
        user: &'a str,
    ) -> BoxFuture<'a, Result<Vec<UserSession>, StoreError>>;
}
