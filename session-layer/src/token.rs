//! Loading and saving sessions carried in JWTs (`jwt` mode). No server state, except —
//! when configured — a revocation list in the store, so a logout makes the token unusable
//! everywhere before it expires.

use http::{HeaderMap, HeaderValue};

use crate::jwt::{JwtCodec, Rejected};
use crate::layer::Shared;
use crate::record::unix_now;
use crate::session::{Fate, Session};
use crate::store::{RedisStore, StoreError};
use crate::{Record, SessionId};

/// The session the request's token carries, or a fresh one. Why a token was refused
/// goes to the log, never to the client.
pub(crate) async fn load(
    shared: &Shared,
    codec: &JwtCodec,
    revocations: Option<&RedisStore>,
    headers: &HeaderMap,
) -> Result<Session, StoreError> {
    let Some(token) = shared.cookies.read(headers).flatten() else {
        return Ok(Session::new(None, Record::fresh()));
    };
    // A token that can never verify is cleared. One that merely ran out (or was revoked)
    // is not: a parallel request finishing after a login response must not clear the
    // token the login set.
    let refused = || Session::new(None, Record::fresh());
    let claims = match codec.verify(&token) {
        Ok(claims) => claims,
        Err(why) => {
            tracing::info!(%why, "session token refused; starting a fresh session");
            let timing = matches!(
                why,
                Rejected::Expired | Rejected::NotYetValid | Rejected::IssuedInFuture
            );
            return Ok(if timing { refused() } else { Session::stale() });
        }
    };
    let Some(id) = SessionId::parse(&claims.sid) else {
        tracing::info!("session token refused: its sid is not a session id");
        return Ok(Session::stale());
    };
    let age = unix_now().saturating_sub(claims.created);
    if age >= shared.config.absolute_timeout.as_secs() {
        tracing::info!(
            session = id.short(),
            "session token refused: past the absolute timeout"
        );
        return Ok(refused());
    }
    if let Some(store) = revocations
        && store.is_revoked(&id).await?
    {
        tracing::info!(session = id.short(), "session token refused: logged out");
        return Ok(refused());
    }
    let record = Record {
        version: claims.ver,
        created: claims.created,
        user: claims.sub,
        data: claims.data,
    };
    Ok(Session::new(Some(id), record))
}

/// Issues the token for what the handler changed, if anything, and returns its cookie.
pub(crate) async fn commit(
    shared: &Shared,
    codec: &JwtCodec,
    revocations: Option<&RedisStore>,
    session: &Session,
    tls: bool,
) -> Result<Option<HeaderValue>, StoreError> {
    let (fate, id, stale) = {
        let state = session.lock();
        (state.fate(), state.id.clone(), state.stale_cookie)
    };
    let id = match (fate, id) {
        (Fate::Destroy, Some(id)) => {
            if let Some(store) = revocations {
                store.revoke(&id, codec.accepted_for()).await?;
            }
            return Ok(shared.cookies.clear(tls));
        }
        (Fate::Destroy, None) => return Ok(shared.cookies.clear(tls)),
        (Fate::Keep, None) => return Ok(stale.then(|| shared.cookies.clear(tls)).flatten()),
        // Rolling expiry: re-issue an unchanged token once per touch interval.
        (Fate::Keep, Some(id)) if !shared.due_for_touch(&id) => return Ok(None),
        (Fate::Keep, Some(id)) => id,
        (Fate::Save, Some(id)) => {
            session.lock().record.version += 1;
            id
        }
        (Fate::SaveRotated, Some(old)) => {
            // The token under the old id must die with it (a privilege change), where
            // revocation is on; without it, it lives until it expires.
            if let Some(store) = revocations {
                store.revoke(&old, codec.accepted_for()).await?;
            }
            session.lock().record.version += 1;
            SessionId::generate()
        }
        (Fate::Save | Fate::SaveRotated, None) => {
            session.lock().record.version += 1;
            SessionId::generate()
        }
    };
    let record = {
        let mut state = session.lock();
        state.id = Some(id.clone());
        state.record.clone()
    };
    match codec.issue(&id, &record) {
        Ok(token) => Ok(shared.cookies.set(token, codec.ttl(), tls)),
        Err(err) => {
            // Only an oversized session gets here: keep the previous token rather than
            // fail the request.
            tracing::warn!(session = id.short(), %err, "session token not issued");
            Ok(None)
        }
    }
}
