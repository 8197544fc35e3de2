//! The tower layer: load the session before the handler, save it after, set the cookie —
//! all before the response leaves, so a redirect right after a change never outruns it.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use futures::future::BoxFuture;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Request, Response, StatusCode};
use tower::{Layer, Service};

use crate::config::SessionConfig;
use crate::cookies::{CookieKeys, Cookies, forwarded_tls};
use crate::jwt::JwtCodec;
use crate::manager::SessionManager;
use crate::session::{Fate, Session};
use crate::store::{RedisStore, SessionStore, StoreError};
use crate::{stateful, token};

/// Where sessions live, chosen once at start-up.
pub(crate) enum Storage {
    /// On the server, under an id the cookie carries.
    Server(Arc<dyn SessionStore>),
    /// In a signed token the cookie carries. Boxed: keys make it several times the size
    /// of the other variant.
    Token(Box<TokenStorage>),
}

pub(crate) struct TokenStorage {
    pub(crate) codec: JwtCodec,
    /// When set, where logout records the token's session as revoked.
    pub(crate) revocations: Option<RedisStore>,
}

pub(crate) struct Shared {
    pub(crate) storage: Storage,
    pub(crate) config: SessionConfig,
    pub(crate) cookies: Cookies,
    /// Sessions whose idle deadline this node pushed out recently (see
    /// [`SessionConfig::touch_interval`]).
    pub(crate) touched: crate::id::IdCache<()>,
}

impl Shared {
    /// True when the session's idle deadline is due to be pushed out again.
    pub(crate) fn due_for_touch(&self, id: &crate::SessionId) -> bool {
        if self.touched.contains_key(id) {
            return false;
        }
        self.touched.insert(id.clone(), ());
        true
    }
}

/// Adds a [`Session`] to every request; see the crate docs.
#[derive(Clone)]
pub struct SessionLayer {
    shared: Arc<Shared>,
}

impl SessionLayer {
    /// Sessions in `store`, found by an id in a cookie signed with `keys`.
    pub fn server(store: Arc<dyn SessionStore>, keys: CookieKeys, config: SessionConfig) -> Self {
        let cookies = Cookies::new(config.cookie.clone(), Some(keys));
        Self::new(Storage::Server(store), cookies, config)
    }

    /// Sessions in JWTs. With `revocations`, logout makes a token unusable before it
    /// expires (at the price of one store read per request).
    pub fn jwt(codec: JwtCodec, revocations: Option<RedisStore>, config: SessionConfig) -> Self {
        let cookies = Cookies::new(config.cookie.clone(), None);
        Self::new(
            Storage::Token(Box::new(TokenStorage { codec, revocations })),
            cookies,
            config,
        )
    }

    fn new(storage: Storage, cookies: Cookies, config: SessionConfig) -> Self {
        let touched = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(config.touch_interval)
            .build_with_hasher(crate::id::IdHasher::default());
        SessionLayer {
            shared: Arc::new(Shared {
                storage,
                config,
                cookies,
                touched,
            }),
        }
    }

    /// Lists and revokes users' sessions, outside any request.
    pub fn manager(&self) -> SessionManager {
        SessionManager::new(self.shared.clone())
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub struct SessionService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, B> Service<Request<B>> for SessionService<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The clone that was polled ready serves this request; a fresh clone stays behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(async move {
            let tls = forwarded_tls(req.headers());
            let loaded = match &shared.storage {
                Storage::Server(store) => {
                    stateful::load(&shared, store.as_ref(), req.headers()).await
                }
                Storage::Token(t) => {
                    token::load(&shared, &t.codec, t.revocations.as_ref(), req.headers()).await
                }
            };
            let session = match loaded {
                Ok(session) => session,
                Err(err) => return Ok(unavailable(&err)),
            };
            req.extensions_mut().insert(session.clone());
            req.extensions_mut()
                .insert(SessionManager::new(shared.clone()));
            let mut res = inner.call(req).await?;
            match commit(shared, session, tls).await {
                Ok(cookie) => crate::cookies::append(res.headers_mut(), cookie),
                Err(err) => return Ok(unavailable(&err)),
            }
            Ok(res)
        })
    }
}

/// Writes the session's changes. A change runs in a task of its own, so a client that
/// hangs up mid-save cannot cut it off between the store's write and what must follow:
/// the event other nodes' caches wait for, the per-user index, the old id's removal.
async fn commit(
    shared: Arc<Shared>,
    session: Session,
    tls: bool,
) -> Result<Option<HeaderValue>, StoreError> {
    let writes = session.lock().fate() != Fate::Keep;
    let work = async move {
        match &shared.storage {
            Storage::Server(store) => {
                stateful::commit(&shared, store.as_ref(), &session, tls).await
            }
            Storage::Token(t) => {
                token::commit(&shared, &t.codec, t.revocations.as_ref(), &session, tls).await
            }
        }
    };
    if !writes {
        return work.await;
    }
    match tokio::spawn(work).await {
        Ok(committed) => committed,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // The runtime is shutting down.
        Err(e) => Err(StoreError::Unavailable {
            url: "(session layer)".into(),
            reason: format!("the save was cut short: {e}"),
        }),
    }
}

/// The store is down, or the session too busy to save: say so plainly, and that it is
/// temporary. Never a hang or a 500.
fn unavailable(err: &StoreError) -> Response<Body> {
    tracing::warn!(%err, "answering 503");
    let body = match err {
        StoreError::Unavailable { .. } => {
            "<!doctype html><title>Temporarily unavailable</title>\
             <h1>Sessions are temporarily unavailable</h1>\
             <p>This service cannot reach its session store. Try again in a moment.</p>\n"
        }
        StoreError::Contended { .. } => {
            "<!doctype html><title>Busy</title>\
             <h1>Your session is busy</h1>\
             <p>Other requests kept changing your session while this one tried to save it. \
             Try again.</p>\n"
        }
    };
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    res.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    res
}
