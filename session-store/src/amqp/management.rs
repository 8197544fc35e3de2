//! The management HTTP API, shaped like RabbitMQ's management plugin where that is cheap
//! (`/api/overview`, `/api/queues/%2F/q`, ...), plus one small self-refreshing page at
//! `/`. Users log in with HTTP basic auth and need a management tag (`administrator`,
//! `management`, `monitoring` or `policymaker`), as in RabbitMQ; `guest` only from
//! loopback. Only administrators and monitors see every vhost; other users see those they
//! have permissions on.

mod json;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tracing::warn;

use super::broker::Broker;
use super::node::Node;
use super::users::User;

/// The page at `/`.
const PAGE: &str = include_str!("management/page.html");

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = router(node).into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        warn!("amqp management server failed: {e}");
    }
}

/// The API's routes, every one behind basic auth.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/overview", get(overview))
        .route("/api/whoami", get(whoami))
        .route("/api/vhosts", get(vhosts))
        .route("/api/connections", get(connections))
        .route("/api/channels", get(channels))
        .route("/api/consumers", get(consumers))
        .route("/api/consumers/{vhost}", get(consumers_in))
        .route("/api/exchanges", get(exchanges))
        .route("/api/exchanges/{vhost}", get(exchanges_in))
        .route("/api/queues", get(queues))
        .route("/api/queues/{vhost}", get(queues_in))
        .route("/api/queues/{vhost}/{name}", get(queue))
        .route("/api/bindings", get(bindings))
        .route("/api/bindings/{vhost}", get(bindings_in))
        .layer(middleware::from_fn_with_state(node.clone(), authenticate))
        .with_state(node)
}

/// Admits requests with the basic-auth credentials of a user with a management tag, and
/// hands the handlers that user.
async fn authenticate(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    match basic_auth(request.headers()).and_then(|(u, p)| node.users().login(&u, &p, Some(peer))) {
        Some(user) if user.may_manage() => {
            request.extensions_mut().insert(user);
            next.run(request).await
        }
        _ => {
            let mut response = (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"error": "not_authorized", "reason": "Not_Authorized"})),
            )
                .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"RabbitMQ Management\""),
            );
            response
        }
    }
}

/// `Authorization: Basic base64(user:password)`.
fn basic_auth(headers: &HeaderMap) -> Option<(Vec<u8>, Vec<u8>)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let colon = decoded.iter().position(|b| *b == b':')?;
    Some((decoded[..colon].to_vec(), decoded[colon + 1..].to_vec()))
}

type Caller = axum::Extension<Arc<User>>;

/// The vhosts `user` may see.
fn visible(node: &Node, user: &User) -> Vec<Arc<Broker>> {
    let all = user.has_tag("administrator") || user.has_tag("monitoring");
    node.vhosts()
        .filter(|v| all || node.users().permissions(&user.name, v.name()).is_some())
        .cloned()
        .collect()
}

/// The one vhost named in the path, if the user may see it.
fn one(node: &Node, user: &User, vhost: &str) -> Option<Vec<Arc<Broker>>> {
    let found: Vec<Arc<Broker>> = visible(node, user)
        .into_iter()
        .filter(|v| v.name() == vhost)
        .collect();
    (!found.is_empty()).then_some(found)
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"error": "Object Not Found", "reason": "Not Found"})),
    )
        .into_response()
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn overview(State(node): State<Arc<Node>>) -> axum::Json<Value> {
    axum::Json(json::overview(&node))
}

async fn whoami(axum::Extension(user): Caller) -> axum::Json<Value> {
    axum::Json(json!({"name": user.name, "tags": user.tags}))
}

async fn vhosts(State(node): State<Arc<Node>>, axum::Extension(user): Caller) -> axum::Json<Value> {
    let list = visible(&node, &user)
        .iter()
        .map(|v| json::vhost(&node, v))
        .collect();
    axum::Json(Value::Array(list))
}

async fn connections(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
) -> axum::Json<Value> {
    axum::Json(json::connections(&node, &visible(&node, &user)))
}

async fn channels(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
) -> axum::Json<Value> {
    axum::Json(json::channels(&node, &visible(&node, &user)))
}

async fn consumers(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
) -> axum::Json<Value> {
    axum::Json(json::consumers(&node, &visible(&node, &user)))
}

async fn consumers_in(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path(vhost): Path<String>,
) -> Response {
    match one(&node, &user, &vhost) {
        Some(v) => axum::Json(json::consumers(&node, &v)).into_response(),
        None => not_found(),
    }
}

async fn exchanges(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
) -> axum::Json<Value> {
    axum::Json(json::exchanges(&visible(&node, &user)))
}

async fn exchanges_in(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path(vhost): Path<String>,
) -> Response {
    match one(&node, &user, &vhost) {
        Some(v) => axum::Json(json::exchanges(&v)).into_response(),
        None => not_found(),
    }
}

async fn queues(State(node): State<Arc<Node>>, axum::Extension(user): Caller) -> axum::Json<Value> {
    axum::Json(json::queues(&node, &visible(&node, &user), None))
}

async fn queues_in(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path(vhost): Path<String>,
) -> Response {
    match one(&node, &user, &vhost) {
        Some(v) => axum::Json(json::queues(&node, &v, None)).into_response(),
        None => not_found(),
    }
}

async fn queue(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> Response {
    let Some(v) = one(&node, &user, &vhost) else {
        return not_found();
    };
    match json::queues(&node, &v, Some(&name)) {
        Value::Array(mut list) if !list.is_empty() => {
            axum::Json(list.swap_remove(0)).into_response()
        }
        _ => not_found(),
    }
}

async fn bindings(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
) -> axum::Json<Value> {
    axum::Json(json::bindings(&visible(&node, &user)))
}

async fn bindings_in(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path(vhost): Path<String>,
) -> Response {
    match one(&node, &user, &vhost) {
        Some(v) => axum::Json(json::bindings(&v)).into_response(),
        None => not_found(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_basic_credentials() {
        let mut headers = HeaderMap::new();
        assert_eq!(basic_auth(&headers), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic Z3Vlc3Q6Z3U6ZXN0"),
        );
        assert_eq!(
            basic_auth(&headers),
            Some((b"guest".to_vec(), b"gu:est".to_vec()))
        );
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(basic_auth(&headers), None);
    }
}
