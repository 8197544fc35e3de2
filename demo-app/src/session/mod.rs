//! Where a visitor's session lives, chosen per node by `--session-mode`.
//!
//! The three modes are the three answers to "a user's next request lands on another
//! server": keep it in this node's memory and rely on sticky routing (`local`), keep it in
//! one store every node reads (`shared`), or let the client carry it in a signed token
//! (`jwt`). Handlers see only [`Sessions`] and [`SessionData`], so the modes compare fairly.

mod cookies;
mod id;
mod jwt;
mod local;
mod shared;

use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};

pub use cookies::SetCookie;
pub use id::{SessionId, random_bytes};
pub use jwt::JwtSessions;
pub use local::LocalSessions;
pub use shared::SharedSessions;

use crate::error::AppError;

/// Which of the three approaches a node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionMode {
    /// In this node's memory: survives only while requests keep coming back here.
    Local,
    /// In the shared store over the Redis protocol: every node sees it.
    Shared,
    /// In a signed JWT cookie: no server state at all.
    Jwt,
}

impl std::fmt::Display for SessionMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SessionMode::Local => "local",
            SessionMode::Shared => "shared",
            SessionMode::Jwt => "jwt",
        })
    }
}

/// What the demo keeps per visitor. `version` counts the writes, so a reader can tell
/// which of two copies is newer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionData {
    pub user: Option<String>,
    pub cart: Vec<String>,
    pub version: u64,
}

/// A visitor's session as loaded for one request. `id` is None for a visitor with no
/// (valid) session yet; in JWT mode it is the token's own `sid` claim.
#[derive(Debug, Clone, Default)]
pub struct Session {
    pub id: Option<SessionId>,
    pub data: SessionData,
}

/// The session backend a node runs with. An enum, not a trait object: the set is closed
/// and each request dispatches once.
pub enum Sessions {
    Local(LocalSessions),
    Shared(SharedSessions),
    /// Boxed: its keys make it several times the size of the other variants.
    Jwt(Box<JwtSessions>),
}

impl Sessions {
    pub fn mode(&self) -> SessionMode {
        match self {
            Sessions::Local(_) => SessionMode::Local,
            Sessions::Shared(_) => SessionMode::Shared,
            Sessions::Jwt(_) => SessionMode::Jwt,
        }
    }

    /// Reads the visitor's session from the request's cookies. A missing, malformed,
    /// forged, expired or unknown cookie all give an anonymous session: never an error.
    /// Only an unreachable store is an error.
    pub async fn load(&self, headers: &HeaderMap) -> Result<Session, AppError> {
        match self {
            Sessions::Local(s) => Ok(s.load(cookies::session_id(headers)).await),
            Sessions::Shared(s) => s.load(cookies::session_id(headers)).await,
            Sessions::Jwt(s) => Ok(s.load(cookies::token(headers))),
        }
    }

    /// Stores `session` (bumping its version) and returns the cookie to send, if any.
    /// With `rotate`, the session moves to a fresh id and the old one is deleted: login
    /// does this so an id planted before login is worthless after it.
    pub async fn save(&self, session: &mut Session, rotate: bool) -> Result<SetCookie, AppError> {
        session.data.version += 1;
        let old = if rotate { session.id.take() } else { None };
        let id = session.id.get_or_insert_with(SessionId::generate).clone();
        match self {
            Sessions::Local(s) => {
                s.save(&id, &session.data, old.as_ref()).await;
                Ok(cookies::set_session_id(&id, s.ttl()))
            }
            Sessions::Shared(s) => {
                s.save(&id, &session.data, old.as_ref()).await?;
                Ok(cookies::set_session_id(&id, s.ttl()))
            }
            Sessions::Jwt(s) => Ok(cookies::set_token(&s.issue(&id, &session.data)?, s.ttl())),
        }
    }

    /// Ends the session and returns the cookie that clears it in the browser.
    pub async fn destroy(&self, session: &Session) -> Result<SetCookie, AppError> {
        match (self, &session.id) {
            (Sessions::Local(s), Some(id)) => s.delete(id).await,
            (Sessions::Shared(s), Some(id)) => s.delete(id).await?,
            _ => {}
        }
        Ok(match self {
            Sessions::Jwt(_) => cookies::clear_token(),
            _ => cookies::clear_session_id(),
        })
    }
}
