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
    /// The record at `base` as the store holds it, copied aside when this request first
    /// changes `record` (copy on write: a read-only request never clones it). A save hands
    /// it to the store, which can then compare-and-set by value in one round trip. None
    /// while `record` is still that record, and for a session never saved.
    original: Option<Arc<Record>>,
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

    /// This request's changes applied to `newer`, a version saved by someone else, which
    /// becomes the record the next save replaces.
    pub(crate) fn rebase(&mut self, newer: Record) {
        self.base = newer.version;
        self.record = newer;
        self.original = None;
        if !self.ops.is_empty() {
            self.keep_original();
            for op in &self.ops {
                op.apply(&mut self.record);
            }
        }
    }

    /// The record as stored at `base`, if this request changed it (see `original`).
    pub(crate) fn original(&self) -> Option<Arc<Record>> {
        self.original.clone()
    }

    /// After a save of `record` at `version`: that is now what the store holds.
    pub(crate) fn saved(&mut self, version: u64) {
        self.base = version;
        self.record.version = version;
        self.original = None;
    }

    /// Copies `record` aside before its first change, if it is a stored one.
    fn keep_original(&mut self) {
        if self.original.is_none() && self.base > 0 {
            self.original = Some(Arc::new(self.record.clone()));
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
                original: None,
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
        state.keep_original();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(version: u64) -> Record {
        let mut record = Record {
            version,
            ..Record::fresh()
        };
        record
            .data
            .insert("cart".into(), serde_json::json!(["tea"]));
        record
    }

    fn loaded(version: u64) -> Session {
        Session::new(Some(SessionId::generate()), stored(version))
    }

    #[test]
    fn a_request_that_only_reads_copies_nothing() {
        let session = loaded(3);
        assert_eq!(session.get::<Vec<String>>("cart"), Some(vec!["tea".into()]));
        assert_eq!((session.user(), session.version()), (None, 3));
        session.data();
        // Rotation changes the id, not the record: nothing to keep either.
        session.rotate_id();
        assert!(session.lock().original().is_none());
    }

    #[test]
    fn the_first_change_keeps_the_record_as_loaded() {
        let session = loaded(3);
        session.update("cart", |cart: &mut Vec<String>| cart.push("milk".into()));
        let first = session.lock().original().expect("kept on the first change");
        assert_eq!(*first, stored(3));
        assert_ne!(session.lock().record, stored(3));
        session.insert("n", 1).expect("insert");
        session.set_user(Some("ada"));
        let later = session.lock().original().expect("still kept");
        assert!(Arc::ptr_eq(&first, &later), "copied once, not per change");
    }

    #[test]
    fn a_session_never_saved_has_no_stored_record() {
        let session = Session::new(None, Record::fresh());
        session.insert("n", 1).expect("insert");
        assert!(session.lock().original().is_none());
    }

    #[test]
    fn a_rebase_replaces_the_original_with_the_newer_record() {
        let session = loaded(3);
        session.update("cart", |cart: &mut Vec<String>| cart.push("milk".into()));
        let mut newer = stored(4);
        newer
            .data
            .insert("cart".into(), serde_json::json!(["tea", "jam"]));
        session.lock().rebase(newer.clone());
        let state = session.lock();
        assert_eq!(state.original().as_deref(), Some(&newer));
        assert_eq!(state.base, 4);
        assert_eq!(
            state.record.data.get("cart"),
            Some(&serde_json::json!(["tea", "jam", "milk"]))
        );
    }

    #[test]
    fn after_a_save_the_record_is_what_the_store_holds() {
        let session = loaded(3);
        session.insert("n", 1).expect("insert");
        session.lock().saved(4);
        let state = session.lock();
        assert!(state.original().is_none());
        assert_eq!((state.base, state.record.version), (4, 4));
    }
}
