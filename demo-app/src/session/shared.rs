//! `shared` mode: sessions in a store that speaks the Redis protocol — the project's
//! `session-store`, or a real Redis/Valkey at the same kind of URL. Every node reads the
//! same copy, so routing no longer matters; the price is one store round trip per request.

use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Session, SessionData, SessionId};
use crate::error::AppError;

/// Keys are namespaced so the store can hold other data beside sessions.
const KEY_PREFIX: &str = "session:";

pub struct SharedSessions {
    conn: ConnectionManager,
    url: String,
    ttl: Duration,
}

impl SharedSessions {
    /// Prepares a connection to `url` without opening it, so a node starts even while the
    /// store is down and serves 503s until it comes up. Timeouts are short: a request
    /// should fail fast with a clear page rather than hang on a dead store.
    pub fn connect(url: &str, ttl: Duration) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(SharedSessions {
            conn,
            url: url.to_string(),
            ttl,
        })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn key(id: &SessionId) -> String {
        format!("{KEY_PREFIX}{}", id.as_str())
    }

    fn failed(&self, err: redis::RedisError) -> AppError {
        AppError::Store {
            url: self.url.clone(),
            source: err,
        }
    }

    pub async fn load(&self, id: Option<SessionId>) -> Result<Session, AppError> {
        let Some(id) = id else {
            return Ok(Session::default());
        };
        let mut conn = self.conn.clone();
        let raw: Option<Vec<u8>> = conn.get(Self::key(&id)).await.map_err(|e| self.failed(e))?;
        let Some(raw) = raw else {
            return Ok(Session::default());
        };
        match serde_json::from_slice(&raw) {
            Ok(data) => Ok(Session { id: Some(id), data }),
            Err(err) => {
                tracing::warn!(session = id.short(), %err, "unreadable session in the store; starting a fresh one");
                Ok(Session::default())
            }
        }
    }

    pub async fn save(
        &self,
        id: &SessionId,
        data: &SessionData,
        replaces: Option<&SessionId>,
    ) -> Result<(), AppError> {
        let value = serde_json::to_vec(data).map_err(AppError::Encode)?;
        let mut pipe = redis::pipe();
        pipe.set_ex(Self::key(id), value, self.ttl.as_secs().max(1))
            .ignore();
        if let Some(old) = replaces {
            pipe.del(Self::key(old)).ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.failed(e))
    }

    pub async fn delete(&self, id: &SessionId) -> Result<(), AppError> {
        let mut conn = self.conn.clone();
        conn.del::<_, ()>(Self::key(id))
            .await
            .map_err(|e| self.failed(e))
    }
}
