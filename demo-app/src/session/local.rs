//! `local` mode: sessions in this node's memory. Fast and simple, and exactly as durable
//! as the process: another node, or this one after a restart, has never heard of them.

use std::time::Duration;

use moka::future::Cache;

use super::{Session, SessionData, SessionId};

/// Bounded so a flood of new visitors evicts the idlest sessions instead of growing
/// without limit.
const MAX_SESSIONS: u64 = 100_000;

pub struct LocalSessions {
    cache: Cache<SessionId, SessionData>,
    ttl: Duration,
}

impl LocalSessions {
    /// `ttl` is an idle timeout: every read or write restarts it.
    pub fn new(ttl: Duration) -> Self {
        let cache = Cache::builder()
            .max_capacity(MAX_SESSIONS)
            .time_to_idle(ttl)
            .build();
        LocalSessions { cache, ttl }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub async fn load(&self, id: Option<SessionId>) -> Session {
        let Some(id) = id else {
            return Session::default();
        };
        match self.cache.get(&id).await {
            Some(data) => Session { id: Some(id), data },
            None => Session::default(),
        }
    }

    pub async fn save(&self, id: &SessionId, data: &SessionData, replaces: Option<&SessionId>) {
        self.cache.insert(id.clone(), data.clone()).await;
        if let Some(old) = replaces {
            self.cache.invalidate(old).await;
        }
    }

    pub async fn delete(&self, id: &SessionId) {
        self.cache.invalidate(id).await;
    }
}
