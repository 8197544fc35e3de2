//! `local` mode: sessions in this process. Fast, and exactly as durable as the process —
//! another node, or this one after a restart, has never heard of them, so it needs
//! sticky routing in front.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use moka::sync::Cache;

use super::{Saved, SessionStore, StoreError, UserSession, Write};
use crate::events::EventKind;
use crate::id::{IdCache, IdHasher};
use crate::{Record, SessionId};

/// Bounded so a flood of new visitors cannot grow memory without limit; past it, moka's
/// admission policy decides which sessions stay (rarely used ones go first).
const MAX_SESSIONS: u64 = 100_000;

pub struct MemoryStore {
    sessions: IdCache<Arc<Record>>,
    /// Per-user index; entries whose session has gone are pruned whenever it is read.
    users: Mutex<HashMap<String, Vec<UserSession>>>,
    /// Serialises compare-and-set writes: check and insert must be one step.
    writes: Mutex<()>,
}

impl MemoryStore {
    /// `idle_timeout`: a session not read or written for this long is dropped.
    pub fn new(idle_timeout: Duration) -> Self {
        MemoryStore {
            sessions: Cache::builder()
                .max_capacity(MAX_SESSIONS)
                .time_to_idle(idle_timeout)
                .build_with_hasher(IdHasher::default()),
            users: Mutex::new(HashMap::new()),
            writes: Mutex::new(()),
        }
    }

    fn version(&self, id: &SessionId) -> u64 {
        self.sessions.get(id).map_or(0, |r| r.version)
    }

    fn save_now(&self, write: &Write<'_>) -> Saved {
        let _guard = self.writes.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.version(write.replaces.unwrap_or(write.id));
        if current != write.expected {
            return Saved::Conflict;
        }
        self.sessions
            .insert(write.id.clone(), Arc::new(write.record.clone()));
        if let Some(old) = write.replaces {
            self.sessions.invalidate(old);
        }
        Saved::Done
    }

    fn live(&self, list: &mut Vec<UserSession>) {
        list.retain(|s| self.sessions.contains_key(&s.id));
    }
}

impl SessionStore for MemoryStore {
    fn load<'a>(
        &'a self,
        id: &'a SessionId,
        _min_version: u64,
    ) -> BoxFuture<'a, Result<Option<Record>, StoreError>> {
        let found = self.sessions.get(id).map(|r| Record::clone(&r));
        async move { Ok(found) }.boxed()
    }

    fn save<'a>(&'a self, write: Write<'a>) -> BoxFuture<'a, Result<Saved, StoreError>> {
        let saved = self.save_now(&write);
        async move { Ok(saved) }.boxed()
    }

    fn remove<'a>(
        &'a self,
        id: &'a SessionId,
        _kind: EventKind,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        // Under the write lock: a save that checked the version just before must not
        // bring the session back after it.
        let _guard = self.writes.lock().unwrap_or_else(PoisonError::into_inner);
        self.sessions.invalidate(id);
        async { Ok(()) }.boxed()
    }

    fn touch<'a>(
        &'a self,
        id: &'a SessionId,
        _ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let live = self.sessions.get(id).is_some();
        async move { Ok(live) }.boxed()
    }

    fn index_add<'a>(
        &'a self,
        user: &'a str,
        session: UserSession,
        _ttl: Duration,
    ) -> BoxFuture<'a, Result<Vec<UserSession>, StoreError>> {
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        let list = users.entry(user.to_string()).or_default();
        self.live(list);
        list.push(session);
        let list = list.clone();
        async move { Ok(list) }.boxed()
    }

    fn index_remove<'a>(
        &'a self,
        user: &'a str,
        ids: &'a [SessionId],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(list) = users.get_mut(user) {
            list.retain(|s| !ids.contains(&s.id));
            self.live(list);
            if list.is_empty() {
                users.remove(user);
            }
        }
        async { Ok(()) }.boxed()
    }

    fn index_list<'a>(
        &'a self,
        user: &'a str,
    ) -> BoxFuture<'a, Result<Vec<UserSession>, StoreError>> {
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        let list = users.get_mut(user).map_or_else(Vec::new, |list| {
            self.live(list);
            list.clone()
        });
        async move { Ok(list) }.boxed()
    }
}
