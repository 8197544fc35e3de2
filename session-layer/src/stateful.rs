//! Loading and saving sessions kept on the server (`local` and `shared` modes).
//!
//! The cookie carries `<id>.<version>`, signed: the id finds the session, the version is
//! the newest one this client has seen, so a node whose near-cache is behind reads
//! through instead of showing the client its own older state.

use std::time::Duration;

use http::{HeaderMap, HeaderValue};

use crate::events::EventKind;
use crate::layer::Shared;
use crate::record::unix_now;
use crate::session::{Fate, Session};
use crate::store::{Saved, SessionStore, StoreError, UserSession, Write};
use crate::{Record, SessionId};

/// The session named by the request's cookie, or a fresh one.
pub(crate) async fn load(
    shared: &Shared,
    store: &dyn SessionStore,
    headers: &HeaderMap,
) -> Result<Session, StoreError> {
    let Some(value) = shared.cookies.read(headers) else {
        return Ok(Session::new(None, Record::fresh()));
    };
    let Some((id, seen)) = value.as_deref().and_then(parse) else {
        // Forged, tampered, signed with a retired key, or not ours: it can never become
        // valid, so clear it.
        return Ok(Session::stale());
    };
    Ok(match store.load(&id, seen).await? {
        Some(record) if expired(shared, &record) => {
            end(store, &id, record.user.as_deref(), EventKind::Expire).await?;
            Session::new(None, Record::fresh())
        }
        Some(record) => Session::new(Some(id), record),
        // Unknown or ended: anonymous, but the cookie is left alone. A request still
        // carrying a just-rotated id (a parallel fetch finishing after the login response)
        // must not clear the cookie the login set; and in `local` mode another node may
        // hold the session.
        None => Session::new(None, Record::fresh()),
    })
}

/// Writes what the handler changed and returns the cookie to send, if any.
pub(crate) async fn commit(
    shared: &Shared,
    store: &dyn SessionStore,
    session: &Session,
    tls: bool,
) -> Result<Option<HeaderValue>, StoreError> {
    let (fate, id, stale) = {
        let state = session.lock();
        (state.fate(), state.id.clone(), state.stale_cookie)
    };
    let idle = shared.config.idle_timeout;
    match (fate, id) {
        (Fate::Destroy, Some(id)) => {
            let user = session.lock().loaded_user.clone();
            end(store, &id, user.as_deref(), EventKind::Logout).await?;
            Ok(shared.cookies.clear(tls))
        }
        // A logout whose session had already ended: still this request's own choice.
        (Fate::Destroy, None) => Ok(shared.cookies.clear(tls)),
        (Fate::Keep, Some(id)) => {
            if !shared.due_for_touch(&id) {
                return Ok(None);
            }
            // Gone meanwhile: nothing to renew, and nothing to clear (see `load`).
            Ok(store
                .touch(&id, idle)
                .await?
                .then(|| {
                    shared
                        .cookies
                        .set(cookie_value(&id, session.version()), idle, tls)
                })
                .flatten())
        }
        (Fate::Keep, None) => Ok(stale.then(|| shared.cookies.clear(tls)).flatten()),
        (Fate::Save | Fate::SaveRotated, old) => {
            let rotate = fate == Fate::SaveRotated;
            let target = match (&old, rotate) {
                (Some(id), false) => id.clone(),
                _ => SessionId::generate(),
            };
            let replaces = old.as_ref().filter(|_| rotate);
            match save(shared, store, session, &target, replaces).await? {
                Some(version) => {
                    shared.touched.insert(target.clone(), ());
                    // Best effort: the session is saved (and an old id already gone), so a
                    // failed index update must not cost the client its cookie.
                    if let Err(err) = index(shared, store, session, &target, replaces).await {
                        tracing::warn!(session = target.short(), %err, "per-user session index not updated");
                    }
                    Ok(shared
                        .cookies
                        .set(cookie_value(&target, version), idle, tls))
                }
                // Ended elsewhere meanwhile: stays ended; the cookie is left alone (see
                // `load`).
                None => Ok(None),
            }
        }
    }
}

/// Compare-and-set save, rebasing on conflicts. Some(new version) once written; None if
/// the session was ended by someone else meanwhile.
async fn save(
    shared: &Shared,
    store: &dyn SessionStore,
    session: &Session,
    target: &SessionId,
    replaces: Option<&SessionId>,
) -> Result<Option<u64>, StoreError> {
    let stored_under = replaces.unwrap_or(target);
    for _ in 0..=shared.config.max_save_retries {
        let (mut record, base, previous) = {
            let state = session.lock();
            (state.record.clone(), state.base, state.original())
        };
        record.version = base + 1;
        let write = Write {
            id: target,
            record: &record,
            expected: base,
            replaces,
            previous: previous.as_deref(),
            ttl: shared.config.idle_timeout,
        };
        match store.save(write).await? {
            Saved::Done => {
                let mut state = session.lock();
                state.id = Some(target.clone());
                state.saved(record.version);
                return Ok(Some(record.version));
            }
            Saved::Conflict if base == 0 && replaces.is_none() => {
                // A fresh id cannot be taken: only a store that lost our write of it.
                return Err(StoreError::Contended { attempts: 1 });
            }
            Saved::Conflict => match store.load(stored_under, base + 1).await? {
                Some(newer) => session.lock().rebase(newer),
                None => return Ok(None),
            },
        }
    }
    Err(StoreError::Contended {
        attempts: shared.config.max_save_retries + 1,
    })
}

/// Keeps the per-user index in step with a save, and enforces the per-user cap.
async fn index(
    shared: &Shared,
    store: &dyn SessionStore,
    session: &Session,
    target: &SessionId,
    replaces: Option<&SessionId>,
) -> Result<(), StoreError> {
    let (before, now, created) = {
        let state = session.lock();
        (
            state.loaded_user.clone(),
            state.record.user.clone(),
            state.record.created,
        )
    };
    if before == now && replaces.is_none() {
        return Ok(());
    }
    if let Some(user) = &before {
        let gone = [replaces.unwrap_or(target).clone()];
        store.index_remove(user, &gone).await?;
    }
    if let Some(user) = &now {
        let entry = UserSession {
            id: target.clone(),
            created,
        };
        let live = store
            .index_add(user, entry, shared.config.absolute_timeout)
            .await?;
        let cap = shared.config.max_sessions_per_user;
        if cap > 0 && live.len() > cap {
            let excess: Vec<SessionId> = live
                .iter()
                .filter(|s| &s.id != target)
                .take(live.len() - cap)
                .map(|s| s.id.clone())
                .collect();
            for id in &excess {
                store.remove(id, EventKind::Revoke).await?;
            }
            store.index_remove(user, &excess).await?;
        }
    }
    session.lock().loaded_user = now;
    Ok(())
}

/// Removes a session and its index entry.
pub(crate) async fn end(
    store: &dyn SessionStore,
    id: &SessionId,
    user: Option<&str>,
    kind: EventKind,
) -> Result<(), StoreError> {
    store.remove(id, kind).await?;
    if let Some(user) = user {
        store.index_remove(user, std::slice::from_ref(id)).await?;
    }
    Ok(())
}

fn expired(shared: &Shared, record: &Record) -> bool {
    let age = Duration::from_secs(unix_now().saturating_sub(record.created));
    age >= shared.config.absolute_timeout
}

fn cookie_value(id: &SessionId, version: u64) -> String {
    format!("{}.{version}", id.as_str())
}

/// `<id>.<version>` from a verified cookie; anything else is no session.
fn parse(value: &str) -> Option<(SessionId, u64)> {
    let (id, version) = value.rsplit_once('.')?;
    Some((SessionId::parse(id)?, version.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_values_round_trip_and_reject_junk() {
        let id = SessionId::generate();
        assert_eq!(parse(&cookie_value(&id, 7)), Some((id, 7)));
        for junk in [
            "",
            ".",
            "abc.1",
            "x.y",
            &format!("{}.-1", SessionId::generate().as_str()),
        ] {
            assert_eq!(parse(junk), None, "{junk:?}");
        }
    }
}
