//! Users' sessions as a whole: list them, revoke them ("sign out everywhere", an admin
//! ending a compromised account's sessions). Revocation goes through the store and the
//! event bus like a logout, so every node forgets the sessions at once.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use http::StatusCode;
use http::request::Parts;

use crate::events::EventKind;
use crate::layer::{Shared, Storage};
use crate::session::Session;
use crate::stateful::end;
use crate::store::{StoreError, UserSession};

/// Handle on every user's sessions; also an extractor inside the layer.
#[derive(Clone)]
pub struct SessionManager {
    shared: Arc<Shared>,
}

impl SessionManager {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        SessionManager { shared }
    }

    /// `user`'s live sessions, oldest first. Tokens are not indexed: empty in JWT mode.
    pub async fn sessions_of(&self, user: &str) -> Result<Vec<UserSession>, StoreError> {
        match &self.shared.storage {
            Storage::Server(store) => store.index_list(user).await,
            Storage::Token(_) => Ok(Vec::new()),
        }
    }

    /// Ends all of `user`'s sessions except `keep`'s, returning how many ended.
    pub async fn revoke_user(
        &self,
        user: &str,
        keep: Option<&Session>,
    ) -> Result<usize, StoreError> {
        let Storage::Server(store) = &self.shared.storage else {
            return Ok(0);
        };
        let keep = keep.and_then(|s| s.lock().id.clone());
        let mut ended = 0;
        for s in store.index_list(user).await? {
            if Some(&s.id) != keep.as_ref() {
                end(store.as_ref(), &s.id, Some(user), EventKind::Revoke).await?;
                ended += 1;
            }
        }
        Ok(ended)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for SessionManager {
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<SessionManager>().cloned().ok_or((
            StatusCode::INTERNAL_SERVER_ERROR,
            "the session layer is missing: add SessionLayer to this router",
        ))
    }
}
