//! The handle a handler gets: read and change the session; the layer saves it after the
//! handler returns and before the response leaves.
//!
//! Concurrent requests on one session: every change is recorded as an operation as well
//! as applied. If another request saved the session in between, the save is refused
//! (compare-and-set on the version) and the layer replays this request's operations on
//! the newer version, so two cart additions made at once on two nodes both survive. A
//! session ended meanwhile (logout elsewhere) stays ended: the replay does not bring it
//! back.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::FromRequestParts;
use http::StatusCode;
use http::request::Parts;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::{Record, SessionId};

/// One recorded change; replayed on a newer version when a save conflicts.
#[derive(Clone)]
enum Op {
    Set(String, Value),
    Remove(String),
    Update(
        String,
        Arc<dyn Fn(Option<Value>) -> Option<Value> + Send + Sync>,
    ),
    User(Option<String>),
}

impl Op {
    fn apply(&self, record: &mut Record) {
        match self {
            Op::Set(k, v) => {
                record.data.insert(k.clone(), v.clone());
            }
            Op::Remove(k) => {
                record.data.remove(k);
            }
            Op::Update(k, f) => {
                if let Some(v) = f(record.data.remove(k)) {
                    record.data.insert(k.clone(), v);
                }
            }
            Op::User(u) => record.user.clone_from(u),
        }
    }
}

/// What the layer does with the session once the handler is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Unchanged: nothing to write (beyond keeping it alive).
    Keep,
    Save,
    /// Save under a fresh id and drop the old one.
    SaveRotated,
    Destroy,
}

pub(crate) struct State {
    pub(crate) id: Option<SessionId>,
    pub(crate) record: Record,
    /// The stored version this request started from (0: never saved).
    pub(crate) base: u64,
    /// The user the session had when loaded: the index entry to move on rotation.
    pub(crate) loaded_user: Option<String>,
    /// The request carried a session cookie that led nowhere (forged, expired, unknown):
    /// it is cleared unless a new session replaces it.
    pub(crate) stale_cookie: bool,
    ops: Vec<Op>,
    rotate: bool,
    destroy: bool,
}

impl State {
    pub(crate) fn fate(&self) -> Fate {
        if self.destroy {
            Fate::Destroy
        } else if self.rotate && self.id.is_some() {
            Fate::SaveRotated
        } else if self.rotate || !self.ops.is_empty() {
            Fate::Save
        } else {
            Fate::Keep
        }
    }

    /// This request's changes applied to `newer`, a version saved by someone else.
    pub(crate) fn rebase(&mut self, newer: Record) {
        self.base = newer.version;
        self.record = newer;
        for op in &self.ops {
            op.apply(&mut self.record);
        }
    }
}

/// The current request's session. Cheap to clone; all clones are the same session.
#[derive(Clone)]
pub struct Session {
    state: Arc<Mutex<State>>,
}

impl Session {
    pub(crate) fn new(id: Option<SessionId>, record: Record) -> Self {
        Session {
            state: Arc::new(Mutex::new(State {
                base: record.version,
                loaded_user: record.user.clone(),
                stale_cookie: false,
                id,
                record,
                ops: Vec::new(),
                rotate: false,
                destroy: false,
            })),
        }
    }

    /// A fresh session for a request whose cookie must be cleared (forged, tampered,
    /// expired).
    pub(crate) fn stale() -> Self {
        let session = Session::new(None, Record::fresh());
        session.lock().stale_cookie = true;
        session
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, op: Op) {
        let mut state = self.lock();
        op.apply(&mut state.record);
        state.ops.push(op);
    }

    /// The value under `key`, if present and of type `T`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        let state = self.lock();
        T::deserialize(state.record.data.get(key)?).ok()
    }

    /// Stores `value` under `key`.
    pub fn insert<T: Serialize>(&self, key: &str, value: T) -> Result<(), serde_json::Error> {
        let value = serde_json::to_value(value)?;
        self.record(Op::Set(key.to_string(), value));
        Ok(())
    }

    pub fn remove(&self, key: &str) {
        self.record(Op::Remove(key.to_string()));
    }

    /// Changes the value under `key` in place (starting from `T::default()` when absent).
    /// Prefer this to get-then-insert for anything concurrent requests may both change:
    /// on a conflicting save `change` is applied again to the newer value, where an
    /// insert would overwrite it.
    pub fn update<T, F>(&self, key: &str, change: F)
    where
        T: Serialize + DeserializeOwned + Default,
        F: Fn(&mut T) + Send + Sync + 'static,
    {
        let f = move |old: Option<Value>| {
            let mut value = old.and_then(|v| T::deserialize(v).ok()).unwrap_or_default();
            change(&mut value);
            serde_json::to_value(value).ok()
        };
        self.record(Op::Update(key.to_string(), Arc::new(f)));
    }

    /// The signed-in user, if any.
    pub fn user(&self) -> Option<String> {
        self.lock().record.user.clone()
    }

    /// Signs a user in or out of this session. A privilege change: the session moves to
    /// a fresh id (an id planted before login is worthless after it) and the per-user
    /// index learns of it.
    pub fn set_user(&self, user: Option<&str>) {
        self.record(Op::User(user.map(str::to_string)));
        self.lock().rotate = true;
    }

    /// Moves the session to a fresh id, keeping its data.
    pub fn rotate_id(&self) {
        self.lock().rotate = true;
    }

    /// Ends the session: it is deleted, every node forgets it, the cookie is cleared.
    pub fn destroy(&self) {
        self.lock().destroy = true;
    }

    /// The first characters of the id, enough to tell sessions apart on a page or in a
    /// log without handing out the whole secret. None before the first save.
    pub fn short_id(&self) -> Option<String> {
        self.lock().id.as_ref().map(|id| id.short().to_string())
    }

    /// How many times the session has been saved.
    pub fn version(&self) -> u64 {
        self.lock().record.version
    }

    /// Unix seconds when the session began.
    pub fn created(&self) -> u64 {
        self.lock().record.created
    }

    /// The whole data map, for display.
    pub fn data(&self) -> Map<String, Value> {
        self.lock().record.data.clone()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Session>().cloned().ok_or((
            StatusCode::INTERNAL_SERVER_ERROR,
            "the session layer is missing: add SessionLayer to this router",
        ))
    }
}
