//! The demo node's router, built as a plain function so tests can drive it in-process.

use axum::Router;
use axum::middleware::map_response_with_state;
use axum::routing::{get, post};
use session_layer::SessionLayer;

use crate::metrics;
use crate::routes::{self, AppState};

/// Session routes sit behind `sessions`; health and statistics don't touch a session.
pub fn app(state: AppState, sessions: SessionLayer) -> Router {
    Router::new()
        .route("/", get(routes::index))
        .route("/api/session", get(routes::api_session))
        .route("/api/sessions", get(routes::api_sessions))
        .route("/login", post(routes::login))
        .route("/cart", post(routes::add_to_cart))
        .route("/logout", post(routes::logout))
        .route("/logout-everywhere", post(routes::logout_everywhere))
        .layer(sessions)
        .route("/healthz", get(routes::healthz))
        .route("/api/near-cache", get(routes::near_cache))
        .route("/metrics", get(metrics::metrics))
        .layer(map_response_with_state(state.clone(), routes::tag_node))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use session_layer::{CookieKeys, MemoryStore, SessionConfig};

    use axum::body::Body;
    use axum::http::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
    use axum::http::{Request, Response, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::sessions::SessionMode;

    fn local_app() -> Router {
        let layer = SessionLayer::server(
            Arc::new(MemoryStore::new(Duration::from_secs(60))),
            CookieKeys::new(&["a test key of at least thirty-two bytes"]).expect("key"),
            SessionConfig::default(),
        );
        let state = AppState {
            node: "test-node".into(),
            mode: SessionMode::Local,
            near_cache: None,
        };
        app(state, layer)
    }

    fn form(path: &str, body: &str, cookie: Option<&str>) -> Request<Body> {
        let mut req = Request::post(path).header(CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(c) = cookie {
            req = req.header(COOKIE, c);
        }
        req.body(Body::from(body.to_string())).expect("request")
    }

    fn sid(res: &Response<Body>) -> String {
        res.headers()
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.strip_prefix("sid="))
            .and_then(|v| v.split(';').next())
            .expect("a sid cookie")
            .to_string()
    }

    #[tokio::test]
    async fn metrics_name_the_mode_and_need_no_session() {
        let res = local_app()
            .oneshot(
                Request::get("/metrics")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("response");
        assert_eq!(res.status(), StatusCode::OK);
        assert!(
            res.headers().get(SET_COOKIE).is_none(),
            "no session for a scrape"
        );
        let body = text(res).await;
        assert!(
            body.contains(r#"sessions_mode_info{mode="local",node="test-node"} 1"#),
            "{body}"
        );
        assert!(
            !body.contains("near_cache"),
            "local mode has no near-cache: {body}"
        );
    }

    async fn text(res: Response<Body>) -> String {
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[tokio::test]
    async fn login_redirects_home_and_rotates_the_session_id() {
        let app = local_app();
        let res = app
            .clone()
            .oneshot(form("/cart", "item=tea", None))
            .await
            .expect("cart");
        assert_eq!(res.status(), StatusCode::SEE_OTHER);
        let before = sid(&res);

        let cookie = format!("sid={before}");
        let res = app
            .clone()
            .oneshot(form("/login", "name=ada", Some(&cookie)))
            .await
            .expect("login");
        assert_eq!(res.status(), StatusCode::SEE_OTHER);
        assert_eq!(res.headers()[LOCATION], "/");
        let after = sid(&res);
        assert_ne!(before, after, "login must issue a new id");

        let get = |c: String| {
            Request::get("/api/session")
                .header(COOKIE, c)
                .body(Body::empty())
        };
        let body = text(
            app.clone()
                .oneshot(get(format!("sid={after}")).expect("req"))
                .await
                .expect("get"),
        )
        .await;
        assert!(
            body.contains(r#""user":"ada""#) && body.contains("tea"),
            "{body}"
        );
        let old = text(app.oneshot(get(cookie).expect("req")).await.expect("get")).await;
        assert!(
            old.contains(r#""user":null"#),
            "the pre-login id is dead: {old}"
        );
    }

    #[tokio::test]
    async fn user_input_is_escaped_on_the_page() {
        let app = local_app();
        let res = app
            .clone()
            .oneshot(form(
                "/login",
                "name=%3Cscript%3Ealert(1)%3C%2Fscript%3E",
                None,
            ))
            .await
            .expect("login");
        let cookie = format!("sid={}", sid(&res));
        let page = Request::get("/")
            .header(COOKIE, cookie)
            .body(Body::empty())
            .expect("req");
        let html = text(app.oneshot(page).await.expect("page")).await;
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!html.contains("<script>alert(1)"));
    }

    #[tokio::test]
    async fn bad_form_input_is_a_400_with_a_reason() {
        let app = local_app();
        let long = format!("name={}", "x".repeat(65));
        for body in [
            "name=",
            "name=%20%20",
            long.as_str(),
            "name=a%0Ab",
            "nothing=here",
        ] {
            let res = app
                .clone()
                .oneshot(form("/login", body, None))
                .await
                .expect("login");
            let status = res.status();
            assert!(status.is_client_error(), "{body}: {status}");
            assert!(!text(res).await.is_empty(), "{body}: the reply says why");
        }
    }
}
