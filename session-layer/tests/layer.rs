//! The layer's semantics, driven in-process through a real axum router: what is saved
//! and when, cookies, id rotation, concurrent changes, timeouts, the per-user cap, and
//! JWT mode.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::routing::{get, post};
use futures::FutureExt;
use futures::future::BoxFuture;
use http::header::{COOKIE, SET_COOKIE};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use session_layer::events::EventKind;
use session_layer::jwt::{JwtCodec, JwtKey, JwtKeys};
use session_layer::store::{Saved, UserSession, Write};
use session_layer::{
    CookieKeys, MemoryStore, Session, SessionConfig, SessionId, SessionLayer, SessionManager,
    SessionStore, StoreError,
};
use tokio::sync::{Barrier, Notify};
use tower::ServiceExt;

const KEY: &str = "a test key of at least thirty-two bytes";

fn routes(barrier: Arc<Barrier>) -> Router {
    Router::new()
        .route(
            "/",
            get(|s: Session| async move {
                format!(
                    "user={:?} n={} v={}",
                    s.user(),
                    s.get::<u64>("n").unwrap_or(0),
                    s.version()
                )
            }),
        )
        .route(
            "/inc",
            post(|s: Session| async move {
                s.update("n", |n: &mut u64| *n += 1);
            }),
        )
        .route(
            "/inc-together",
            post(|State(b): State<Arc<Barrier>>, s: Session| async move {
                s.update("n", |n: &mut u64| *n += 1);
                // Both requests have loaded the same version before either saves.
                b.wait().await;
            }),
        )
        .route(
            "/login",
            post(|s: Session| async move { s.set_user(Some("ada")) }),
        )
        .route("/logout", post(|s: Session| async move { s.destroy() }))
        .route("/rotate", post(|s: Session| async move { s.rotate_id() }))
        .route(
            "/sessions",
            get(|m: SessionManager| async move {
                m.sessions_of("ada")
                    .await
                    .map(|l| l.len().to_string())
                    .unwrap_or_default()
            }),
        )
        .with_state(barrier)
}

fn memory_app(config: SessionConfig) -> Router {
    let store = Arc::new(MemoryStore::new(config.idle_timeout));
    let layer = SessionLayer::server(store, CookieKeys::new(&[KEY]).expect("key"), config);
    routes(Arc::new(Barrier::new(2))).layer(layer)
}

/// A client: the cookie it holds, as a browser would.
#[derive(Default, Clone)]
struct Client {
    cookie: Option<String>,
}

impl Client {
    async fn send(&mut self, app: &Router, method: &str, path: &str) -> (Response<Body>, String) {
        self.send_with(app, method, path, &[]).await
    }

    async fn send_with(
        &mut self,
        app: &Router,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (Response<Body>, String) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(c) = &self.cookie {
            req = req.header(COOKIE, c);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = app
            .clone()
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        if let Some(set) = set_cookie(&res) {
            let pair = set.split(';').next().unwrap_or_default().to_string();
            self.cookie = (!pair.ends_with('=')).then_some(pair);
        }
        let (parts, body) = res.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes();
        (
            Response::from_parts(parts, Body::empty()),
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }
}

fn set_cookie(res: &Response<Body>) -> Option<String> {
    res.headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[tokio::test]
async fn nothing_is_saved_until_something_changes() {
    let app = memory_app(SessionConfig::default());
    let mut c = Client::default();
    let (res, body) = c.send(&app, "GET", "/").await;
    assert_eq!(body, "user=None n=0 v=0");
    assert!(
        set_cookie(&res).is_none(),
        "an untouched session sets no cookie"
    );
    c.send(&app, "POST", "/inc").await;
    c.send(&app, "POST", "/inc").await;
    let (_, body) = c.send(&app, "GET", "/").await;
    assert_eq!(body, "user=None n=2 v=2");
}

#[tokio::test]
async fn forged_and_tampered_cookies_give_a_fresh_session_and_are_cleared() {
    let app = memory_app(SessionConfig::default());
    let mut c = Client::default();
    c.send(&app, "POST", "/inc").await;
    let good = c.cookie.clone().expect("cookie");
    let tampered = good.replacen("sid=", "sid=A", 1);
    for bad in [
        tampered.as_str(),
        "sid=x.1",
        "sid=",
        "sid=%%%",
        "sid=AAAAAAAAAAAAAAAAAAAAAA.1",
    ] {
        let mut forger = Client {
            cookie: Some(bad.to_string()),
        };
        let (res, body) = forger.send(&app, "GET", "/").await;
        assert_eq!(res.status(), StatusCode::OK, "{bad}");
        assert_eq!(body, "user=None n=0 v=0", "{bad}");
        let cleared = set_cookie(&res).unwrap_or_default();
        assert!(cleared.contains("Max-Age=0"), "{bad}: {cleared}");
    }
    let (_, body) = c.send(&app, "GET", "/").await;
    assert_eq!(body, "user=None n=1 v=1", "the real session is untouched");
}

#[tokio::test]
async fn login_moves_the_session_to_a_fresh_id_and_kills_the_old_one() {
    let app = memory_app(SessionConfig::default());
    let mut c = Client::default();
    c.send(&app, "POST", "/inc").await;
    let mut before = c.clone();
    c.send(&app, "POST", "/login").await;
    assert_ne!(before.cookie, c.cookie);
    let (_, body) = c.send(&app, "GET", "/").await;
    assert_eq!(
        body, "user=Some(\"ada\") n=1 v=2",
        "data survives the rotation"
    );
    let (_, body) = before.send(&app, "GET", "/").await;
    assert_eq!(body, "user=None n=0 v=0", "the pre-login id is worthless");
}

#[tokio::test]
async fn a_request_still_carrying_a_rotated_away_id_leaves_the_new_cookie_alone() {
    let app = memory_app(SessionConfig::default());
    let mut c = Client::default();
    c.send(&app, "POST", "/inc").await;
    let mut parallel = c.clone();
    c.send(&app, "POST", "/login").await;
    // A fetch sent before the login response, answered after it.
    let (res, body) = parallel.send(&app, "GET", "/").await;
    assert_eq!(body, "user=None n=0 v=0");
    assert!(
        set_cookie(&res).is_none(),
        "must not clear the login's cookie"
    );
    // An explicit rotation keeps the data under a fresh id.
    let before = c.cookie.clone();
    c.send(&app, "POST", "/rotate").await;
    assert_ne!(c.cookie, before);
    let (_, body) = c.send(&app, "GET", "/").await;
    assert_eq!(body, "user=Some(\"ada\") n=1 v=3");
}

#[tokio::test]
async fn concurrent_changes_to_one_session_both_survive() {
    let app = memory_app(SessionConfig::default());
    let mut c = Client::default();
    c.send(&app, "POST", "/inc").await;
    for round in 0..20 {
        let (mut a, mut b) = (c.clone(), c.clone());
        let (app_a, app_b) = (app.clone(), app.clone());
        let (ra, rb) = tokio::join!(
            async move { a.send(&app_a, "POST", "/inc-together").await.0.status() },
            async move { b.send(&app_b, "POST", "/inc-together").await.0.status() },
        );
        assert_eq!((ra, rb), (StatusCode::OK, StatusCode::OK));
        let (_, body) = c.send(&app, "GET", "/").await;
        let want = 1 + 2 * (round + 1);
        assert!(
            body.contains(&format!(" n={want} ")),
            "round {round}: {body}"
        );
    }
}

#[tokio::test]
async fn logout_ends_the_session_for_every_holder_of_the_cookie() {
    let app = memory_app(SessionConfig::default());
    let mut c = Client::default();
    c.send(&app, "POST", "/login").await;
    let mut copy = c.clone();
    let (res, _) = c.send(&app, "POST", "/logout").await;
    assert!(set_cookie(&res).unwrap_or_default().contains("Max-Age=0"));
    let (res, body) = copy.send(&app, "GET", "/").await;
    assert_eq!(body, "user=None n=0 v=0");
    // Signed but unknown to a per-process store: left alone (another node may hold it).
    assert!(set_cookie(&res).is_none());
}

#[tokio::test]
async fn a_session_ends_at_its_absolute_timeout_however_busy() {
    let config = SessionConfig {
        absolute_timeout: Duration::from_secs(1),
        ..SessionConfig::default()
    };
    let app = memory_app(config);
    let mut c = Client::default();
    c.send(&app, "POST", "/inc").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    // Busy: every request changes it; it must still end once it is a second old.
    loop {
        let (_, body) = c.clone().send(&app, "GET", "/").await;
        if body == "user=None n=0 v=0" {
            break;
        }
        assert!(Instant::now() < deadline, "still alive after 10 s: {body}");
        c.send(&app, "POST", "/inc").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn logging_in_past_the_cap_ends_the_oldest_session() {
    let config = SessionConfig {
        max_sessions_per_user: 2,
        ..SessionConfig::default()
    };
    let app = memory_app(config);
    let mut clients = vec![Client::default(), Client::default(), Client::default()];
    for c in &mut clients {
        c.send(&app, "POST", "/login").await;
    }
    let (_, listed) = clients[2].send(&app, "GET", "/sessions").await;
    assert_eq!(listed, "2");
    let (_, oldest) = clients[0].send(&app, "GET", "/").await;
    assert_eq!(oldest, "user=None n=0 v=0", "the oldest session was ended");
    let (_, newest) = clients[2].send(&app, "GET", "/").await;
    assert!(newest.starts_with("user=Some(\"ada\")"), "{newest}");
}

#[tokio::test]
async fn the_cookie_is_secure_when_the_proxy_says_tls() {
    let app = memory_app(SessionConfig::default());
    let (plain, _) = Client::default().send(&app, "POST", "/inc").await;
    assert!(!set_cookie(&plain).unwrap_or_default().contains("Secure"));
    let (tls, _) = Client::default()
        .send_with(&app, "POST", "/inc", &[("x-forwarded-proto", "https")])
        .await;
    let tls = set_cookie(&tls).unwrap_or_default();
    assert!(
        tls.contains("Secure") && tls.contains("HttpOnly") && tls.contains("SameSite=Lax"),
        "{tls}"
    );
}

/// A memory store whose saves hold their answer back until released, as a store's reply
/// still in flight would: the write has happened, the caller does not know it yet.
struct HeldReplies {
    inner: MemoryStore,
    written: Notify,
    release: Notify,
}

impl SessionStore for HeldReplies {
    fn load<'a>(
        &'a self,
        id: &'a SessionId,
        min_version: u64,
    ) -> BoxFuture<'a, Result<Option<session_layer::Record>, StoreError>> {
        self.inner.load(id, min_version)
    }

    fn save<'a>(&'a self, write: Write<'a>) -> BoxFuture<'a, Result<Saved, StoreError>> {
        async move {
            let saved = self.inner.save(write).await;
            self.written.notify_one();
            self.release.notified().await;
            saved
        }
        .boxed()
    }

    fn remove<'a>(
        &'a self,
        id: &'a SessionId,
        kind: EventKind,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.remove(id, kind)
    }

    fn touch<'a>(
        &'a self,
        id: &'a SessionId,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.inner.touch(id, ttl)
    }

    fn index_add<'a>(
        &'a self,
        user: &'a str,
        session: UserSession,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Vec<UserSession>, StoreError>> {
        self.inner.index_add(user, session, ttl)
    }

    fn index_remove<'a>(
        &'a self,
        user: &'a str,
        ids: &'a [SessionId],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.index_remove(user, ids)
    }

    fn index_list<'a>(
        &'a self,
        user: &'a str,
    ) -> BoxFuture<'a, Result<Vec<UserSession>, StoreError>> {
        self.inner.index_list(user)
    }
}

#[tokio::test]
async fn a_client_hanging_up_mid_save_does_not_cut_the_save_short() {
    let config = SessionConfig::default();
    let store = Arc::new(HeldReplies {
        inner: MemoryStore::new(config.idle_timeout),
        written: Notify::new(),
        release: Notify::new(),
    });
    let layer = SessionLayer::server(store.clone(), CookieKeys::new(&[KEY]).expect("key"), config);
    let app = routes(Arc::new(Barrier::new(2))).layer(layer);
    // A login: the save, then the per-user index entry that must follow it.
    let login = tokio::spawn(async move {
        Client::default().send(&app, "POST", "/login").await;
    });
    tokio::time::timeout(Duration::from_secs(5), store.written.notified())
        .await
        .expect("the login's save reached the store");
    // The client hangs up while the store's answer is on its way: the server drops the
    // request's future.
    login.abort();
    assert!(login.await.is_err_and(|e| e.is_cancelled()));
    store.release.notify_one();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let listed = store.index_list("ada").await.expect("index");
        if listed.len() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the save's follow-up never ran: index {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn jwt_app() -> Router {
    let keys = JwtKeys::new(JwtKey::generate_ed25519("ed1"), vec![]).expect("keys");
    let codec = JwtCodec::new(keys, Duration::from_secs(600), Duration::from_secs(5));
    let config = SessionConfig {
        cookie: session_layer::CookieConfig {
            name: "token".into(),
            ..Default::default()
        },
        ..SessionConfig::default()
    };
    routes(Arc::new(Barrier::new(2))).layer(SessionLayer::jwt(codec, None, config))
}

#[tokio::test]
async fn jwt_mode_carries_the_session_in_the_token_and_refuses_tampering() {
    let app = jwt_app();
    let mut c = Client::default();
    c.send(&app, "POST", "/login").await;
    c.send(&app, "POST", "/inc").await;
    let (_, body) = c.send(&app, "GET", "/").await;
    assert_eq!(body, "user=Some(\"ada\") n=1 v=2");
    let token = c.cookie.clone().expect("token cookie");
    assert!(token.starts_with("token=ey"), "{token}");
    let mut flipped = token.into_bytes();
    let at = flipped.len() - 3;
    flipped[at] = if flipped[at] == b'A' { b'B' } else { b'A' };
    let mut forger = Client {
        cookie: Some(String::from_utf8(flipped).expect("ascii")),
    };
    let (res, body) = forger.send(&app, "GET", "/").await;
    assert_eq!(
        (res.status(), body.as_str()),
        (StatusCode::OK, "user=None n=0 v=0")
    );
    let (res, _) = c.send(&app, "POST", "/logout").await;
    assert!(set_cookie(&res).unwrap_or_default().contains("Max-Age=0"));
}
