//! The management HTTP API, shaped like RabbitMQ's management plugin where that is cheap
//! (`/api/overview`, `/api/queues/%2F/q`, ...), plus one small self-refreshing page at
//! `/`. Users log in with HTTP basic auth and need a management tag (`administrator`,
//! `management`, `monitoring` or `policymaker`), as in RabbitMQ; `guest` only from
//! loopback. Only administrators and monitors see every vhost; other users see those they
//! have permissions on. Users, permissions and definitions (which carry password
//! hashes) are for administrators only, as in RabbitMQ.
//!
//! The health checks Kubernetes probes and monitors call are in [`health`].

mod admin;
mod connections;
mod depths;
mod feature_flags;
mod health;
mod https;
mod import;
mod json;
mod limits;
mod memory;
mod metrics;
mod parameters;
mod policies;
mod shape;
mod write;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::serve::ListenerExt as _;
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::protocol::queue as amqp_queue;
use amq_protocol::types::FieldTable;

use self::depths::Depths;
use self::https::HttpsListener;
use super::auth_attempts::Protocol;
use super::broker::{Broker, ConnId};
use super::node::Node;
use super::queue::Message;
use super::users::User;

/// The page at `/`.
const PAGE: &str = include_str!("management/page.html");

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    serve_with_https(listener, None, node, shutdown).await;
}

/// [`serve`], also serving the API over HTTPS on `https` (RabbitMQ's `management.ssl`),
/// with the same routes and samples.
pub async fn serve_with_https(
    listener: TcpListener,
    https: Option<(TcpListener, TlsAcceptor)>,
    node: Arc<Node>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    if let Ok(addr) = listener.local_addr() {
        node.add_listener("http", addr);
    }
    let https = match https {
        Some((listener, acceptor)) => match HttpsListener::new(listener, acceptor) {
            Ok(https) => {
                node.add_listener("https", https.local());
                Some(https)
            }
            Err(e) => {
                warn!("amqp management API not served over HTTPS: {e}");
                None
            }
        },
        None => None,
    };
    let depths = Arc::new(Depths::default());
    let router = app(node.clone(), depths.clone());
    let stop = CancellationToken::new();
    let plain = axum::serve(
        listener,
        router
            .clone()
            .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop.clone().cancelled_owned());
    let secure = async {
        let Some(https) = https else {
            return Ok(());
        };
        // Tapped, so that the client's address reaches handlers as over plain HTTP.
        axum::serve(
            https.tap_io(|_| {}),
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stop.clone().cancelled_owned())
        .await
    };
    let sampling = async {
        let mut every = tokio::time::interval(depths::INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            depths.sample(&node);
        }
    };
    let served = async {
        let (plain, secure) = tokio::join!(plain.into_future(), secure);
        for (scheme, result) in [("http", plain), ("https", secure)] {
            if let Err(e) = result {
                warn!("amqp management server ({scheme}) failed: {e}");
            }
        }
    };
    let trigger = async {
        shutdown.await;
        stop.cancel();
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = served => {}
        () = sampling => {}
        () = trigger => {}
    }
}

/// The API's routes, every one but `/metrics` behind basic auth; `depths` holds the queue-length
/// samples its rates come from.
fn app(node: Arc<Node>, depths: Arc<Depths>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/overview", get(overview))
        .route("/api/whoami", get(whoami))
        .route("/api/aliveness-test/{vhost}", get(aliveness_test))
        .route("/api/healthchecks/node", get(health::status_ok))
        .route("/api/healthchecks/node/{node}", get(health::node_named))
        .route(
            "/api/auth/attempts/{node}",
            get(auth_attempts).delete(reset_auth_attempts),
        )
        .route(
            "/api/auth/attempts/{node}/source",
            get(auth_attempts_by_source),
        )
        .route("/api/health/checks/alarms", get(health::alarms))
        .route("/api/health/checks/local-alarms", get(health::local_alarms))
        .route("/api/health/checks/virtual-hosts", get(health::status_ok))
        .route(
            "/api/health/checks/port-listener/{port}",
            get(health::port_listener),
        )
        .route(
            "/api/health/checks/protocol-listener/{protocol}",
            get(health::protocol_listener),
        )
        .route(
            "/api/health/checks/node-is-quorum-critical",
            get(health::single_node),
        )
        .route(
            "/api/health/checks/node-is-mirror-sync-critical",
            get(health::single_node),
        )
        .route(
            "/api/health/checks/certificate-expiration/{within}/{unit}",
            get(health::certificate_expiration),
        )
        .route("/api/users", get(users))
        .route(
            "/api/users/without-permissions",
            get(admin::users_without_permissions),
        )
        .route("/api/users/bulk-delete", post(admin::bulk_delete_users))
        .route(
            "/api/users/{name}/topic-permissions",
            get(admin::user_topic_permissions),
        )
        .route(
            "/api/users/{name}",
            get(user).put(admin::put_user).delete(admin::delete_user),
        )
        .route(
            "/api/users/{name}/permissions",
            get(admin::user_permissions),
        )
        .route("/api/topic-permissions", get(admin::all_topic_permissions))
        .route(
            "/api/topic-permissions/{vhost}/{user}",
            get(admin::get_topic_permissions)
                .put(admin::put_topic_permission)
                .delete(admin::delete_topic_permissions),
        )
        .route("/api/permissions", get(permissions))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(admin::get_permissions)
                .put(admin::put_permissions)
                .delete(admin::delete_permissions),
        )
        .route("/api/user-limits", get(limits::all_user_limits))
        .route("/api/user-limits/{user}", get(limits::user_limits))
        .route(
            "/api/user-limits/{user}/{name}",
            put(limits::put_user_limit).delete(limits::delete_user_limit),
        )
        .route("/api/vhost-limits", get(limits::all_vhost_limits))
        .route("/api/vhost-limits/{vhost}", get(limits::vhost_limits))
        .route(
            "/api/vhost-limits/{vhost}/{name}",
            put(limits::put_vhost_limit).delete(limits::delete_vhost_limit),
        )
        .route(
            "/api/definitions",
            get(definitions).post(import::definitions),
        )
        .route(
            "/api/definitions/{vhost}",
            get(vhost_definitions).post(import::vhost_definitions),
        )
        // RabbitMQ's older name for the definitions.
        .route(
            "/api/all-configuration",
            get(definitions).post(import::definitions),
        )
        .route("/api/vhosts", get(vhosts))
        .route(
            "/api/vhosts/{name}",
            get(vhost).put(admin::put_vhost).delete(admin::delete_vhost),
        )
        .route(
            "/api/vhosts/{name}/permissions",
            get(admin::vhost_permissions),
        )
        .route(
            "/api/vhosts/{name}/topic-permissions",
            get(admin::vhost_topic_permissions),
        )
        .route("/api/rebalance/queues", post(admin::rebalance_queues))
        .route("/api/vhosts/{name}/start/{node}", post(admin::start_vhost))
        .route("/api/extensions", get(extensions))
        .route("/api/connections", get(connections::all))
        .route(
            "/api/connections/{name}",
            get(connections::named).delete(connections::close),
        )
        .route(
            "/api/connections/{name}/channels",
            get(connections::channels_of),
        )
        .route(
            "/api/connections/username/{user}",
            get(connections::of_user).delete(connections::close_of_user),
        )
        .route("/api/channels", get(connections::all_channels))
        .route("/api/channels/{name}", get(connections::channel))
        .route("/api/vhosts/{name}/connections", get(connections::in_vhost))
        .route(
            "/api/vhosts/{name}/channels",
            get(connections::channels_in_vhost),
        )
        .route("/api/consumers", get(consumers))
        .route("/api/consumers/{vhost}", get(consumers_in))
        .route("/api/exchanges", get(exchanges))
        .route("/api/exchanges/{vhost}", get(exchanges_in))
        .route(
            "/api/exchanges/{vhost}/{name}",
            get(exchange)
                .put(write::put_exchange)
                .delete(write::delete_exchange),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/publish",
            post(write::publish),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/source",
            get(exchange_bindings_source),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/destination",
            get(exchange_bindings_destination),
        )
        .route("/api/nodes", get(nodes))
        .route("/api/nodes/{name}", get(node_named))
        .route("/api/nodes/{name}/memory", get(node_memory))
        .route(
            "/api/nodes/{name}/memory/relative",
            get(node_memory_relative),
        )
        .route("/api/feature-flags", get(feature_flags::all))
        .route(
            "/api/feature-flags/{name}/enable",
            put(feature_flags::enable),
        )
        .route("/api/parameters", get(parameters::all))
        .route("/api/parameters/{component}", get(parameters::of_component))
        .route(
            "/api/parameters/{component}/{vhost}",
            get(parameters::in_vhost),
        )
        .route(
            "/api/parameters/{component}/{vhost}/{name}",
            get(parameters::one)
                .put(parameters::put)
                .delete(parameters::delete),
        )
        .route("/api/global-parameters", get(parameters::globals))
        .route(
            "/api/global-parameters/{name}",
            get(parameters::global)
                .put(parameters::put_global)
                .delete(parameters::delete_global),
        )
        .route(
            "/api/cluster-name",
            get(parameters::cluster_name).put(parameters::put_cluster_name),
        )
        .route("/api/operator-policies", get(policies::list_operator))
        .route(
            "/api/operator-policies/{vhost}",
            get(policies::list_operator_in),
        )
        .route(
            "/api/operator-policies/{vhost}/{name}",
            get(policies::get_operator)
                .put(policies::put_operator)
                .delete(policies::delete_operator),
        )
        .route("/api/policies", get(policies::list))
        .route("/api/policies/{vhost}", get(policies::list_in))
        .route(
            "/api/policies/{vhost}/{name}",
            get(policies::get_one)
                .put(policies::put)
                .delete(policies::delete),
        )
        .route("/api/queues", get(queues))
        .route("/api/queues/{vhost}", get(queues_in))
        .route(
            "/api/queues/{vhost}/{name}",
            get(queue).put(write::put_queue).delete(write::delete_queue),
        )
        .route(
            "/api/queues/{vhost}/{name}/contents",
            axum::routing::delete(write::purge_queue),
        )
        .route("/api/queues/{vhost}/{name}/get", post(write::get_messages))
        .route(
            "/api/queues/{vhost}/{name}/actions",
            post(admin::queue_action),
        )
        .route("/api/queues/{vhost}/{name}/bindings", get(queue_bindings))
        .route("/api/bindings", get(bindings))
        .route("/api/bindings/{vhost}", get(bindings_in))
        .route(
            "/api/bindings/{vhost}/e/{source}/q/{destination}",
            get(bindings_to_queue).post(write::bind_queue),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/q/{destination}/{props}",
            axum::routing::delete(write::unbind_queue),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/e/{destination}",
            get(bindings_to_exchange).post(write::bind_exchange),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/e/{destination}/{props}",
            axum::routing::delete(write::unbind_exchange),
        )
        .layer(middleware::from_fn(shape::reply))
        .layer(middleware::from_fn_with_state(node.clone(), authenticate))
        .layer(axum::Extension(depths))
        // Without a login, as RabbitMQ's Prometheus endpoint and login settings.
        .route("/metrics", get(metrics::aggregated))
        .route("/api/auth", get(auth_settings))
        .route("/metrics/per-object", get(metrics::per_object))
        .with_state(node)
}

/// Admits requests with the basic-auth credentials of a user with a management tag, and
/// hands the handlers that user. Refusals as RabbitMQ's: no credentials, an empty 401
/// with the challenge; wrong ones, "Login failed" with it; a user without a management
/// tag, "Not management user".
async fn authenticate(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some((name, password)) = basic_auth(request.headers()) else {
        return challenge(StatusCode::UNAUTHORIZED.into_response());
    };
    let login = node.users().login(&name, &password, Some(peer));
    let attempts = node.auth_attempts();
    if !login.as_ref().is_some_and(|u| u.may_manage()) {
        attempts.failed(Protocol::Http);
    }
    match login {
        Some(user) if user.may_manage() => {
            attempts.succeeded(Protocol::Http);
            request.extensions_mut().insert(user);
            let response = next.run(request).await;
            // RabbitMQ counts a login its route refuses as a failed attempt.
            if response.status() == StatusCode::UNAUTHORIZED {
                attempts.refused_after_all(Protocol::Http);
            }
            response
        }
        Some(_) => not_authorized("Not management user"),
        None => challenge(
            (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"error": "not_authorized", "reason": "Login failed"})),
            )
                .into_response(),
        ),
    }
}

/// Adds the challenge that makes clients send credentials.
fn challenge(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"RabbitMQ Management\""),
    );
    response
}

/// RabbitMQ's 401 for a logged-in user whose tags do not allow the request.
fn not_authorized(reason: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({"error": "not_authorised", "reason": reason})),
    )
        .into_response()
}

/// `body` for administrators; RabbitMQ's refusal for everyone else.
fn admin_only(user: &User, body: impl FnOnce() -> Value) -> Response {
    if user.has_tag("administrator") {
        axum::Json(body()).into_response()
    } else {
        not_authorized("Not administrator user")
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
    let users = node.users();
    node.vhosts()
        .into_iter()
        .filter(|v| all || users.permissions(&user.name, v.name()).is_some())
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

/// `/api/auth`, which RabbitMQ's login page reads before anyone logs in: no OAuth 2
/// (UAA) sign-in here, only users and passwords.
async fn auth_settings() -> axum::Json<Value> {
    axum::Json(json!({"enable_uaa": false, "uaa_client_id": "", "uaa_location": ""}))
}

/// RabbitMQ's refusal of a node's figures to a user without the `monitoring` tag, or
/// its 404 for a node that is not this one.
fn refuse_node_view(user: &User, node: &str) -> Option<Response> {
    if !monitor(user) {
        Some(not_authorized("Not monitor user"))
    } else if node != json::NODE {
        Some(not_found())
    } else {
        None
    }
}

/// `GET /api/auth/attempts/{node}` (monitors): logins tried per protocol since the start
/// or the last reset.
async fn auth_attempts(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path(name): Path<String>,
) -> Response {
    if let Some(refusal) = refuse_node_view(&user, &name) {
        return refusal;
    }
    let counts: Vec<Value> = node
        .auth_attempts()
        .counts()
        .into_iter()
        .map(|c| {
            json!({
                "protocol": c.protocol.name(),
                "auth_attempts": c.total(),
                "auth_attempts_failed": c.failed,
                "auth_attempts_succeeded": c.succeeded,
            })
        })
        .collect();
    axum::Json(Value::Array(counts)).into_response()
}

/// `GET /api/auth/attempts/{node}/source`: empty, as RabbitMQ's is unless it is
/// configured to track each attempt's source (`track_auth_attempt_source`).
async fn auth_attempts_by_source(
    axum::Extension(user): Caller,
    Path(name): Path<String>,
) -> Response {
    if let Some(refusal) = refuse_node_view(&user, &name) {
        return refusal;
    }
    axum::Json(json!([])).into_response()
}

/// `DELETE /api/auth/attempts/{node}`: counts from zero again.
async fn reset_auth_attempts(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path(name): Path<String>,
) -> Response {
    if let Some(refusal) = refuse_node_view(&user, &name) {
        return refusal;
    }
    node.auth_attempts().reset();
    StatusCode::NO_CONTENT.into_response()
}

/// `/api/extensions`: the management UI's plugin extensions; there are none.
async fn extensions() -> axum::Json<Value> {
    axum::Json(json!([]))
}

type Lengths = axum::Extension<Arc<Depths>>;

async fn overview(
    State(node): State<Arc<Node>>,
    axum::Extension(depths): Lengths,
) -> axum::Json<Value> {
    axum::Json(json::overview(&node, &depths))
}

/// Whether `user` may see node-wide figures (RabbitMQ's `monitoring` tag or above).
fn monitor(user: &User) -> bool {
    user.has_tag("administrator") || user.has_tag("monitoring")
}

async fn nodes(State(node): State<Arc<Node>>, axum::Extension(user): Caller) -> Response {
    if !monitor(&user) {
        return not_authorized("Not monitor user");
    }
    axum::Json(json::nodes(&node, memory_alarm(&node))).into_response()
}

async fn node_named(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path(name): Path<String>,
) -> Response {
    if !monitor(&user) {
        return not_authorized("Not monitor user");
    }
    match json::nodes(&node, memory_alarm(&node)) {
        Value::Array(mut list) if name == json::NODE => {
            axum::Json(list.swap_remove(0)).into_response()
        }
        _ => not_found(),
    }
}

/// `/api/nodes/NODE/memory`, for monitors.
async fn node_memory(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path(name): Path<String>,
) -> Response {
    node_breakdown(&node, &user, &name, memory::absolute)
}

/// `/api/nodes/NODE/memory/relative`, for monitors.
async fn node_memory_relative(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path(name): Path<String>,
) -> Response {
    node_breakdown(&node, &user, &name, memory::relative)
}

fn node_breakdown(
    node: &Node,
    user: &User,
    name: &str,
    breakdown: fn(u64, u64) -> Value,
) -> Response {
    if !monitor(user) {
        return not_authorized("Not monitor user");
    }
    if name != json::NODE {
        return not_found();
    }
    axum::Json(breakdown(json::resident_bytes(), node.held_bytes())).into_response()
}

async fn whoami(axum::Extension(user): Caller) -> axum::Json<Value> {
    axum::Json(json!({"name": user.name, "tags": user.tags}))
}

async fn vhosts(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    axum::Extension(depths): Lengths,
) -> axum::Json<Value> {
    let list = visible(&node, &user)
        .iter()
        .map(|v| json::vhost(&node, v, &depths))
        .collect();
    axum::Json(Value::Array(list))
}

async fn vhost(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    axum::Extension(depths): Lengths,
    Path(name): Path<String>,
) -> Response {
    match the_vhost(&node, &user, &name) {
        Some(v) => axum::Json(json::vhost(&node, &v, &depths)).into_response(),
        None => not_found(),
    }
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

async fn queues(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    axum::Extension(depths): Lengths,
) -> axum::Json<Value> {
    axum::Json(json::queues(&node, &depths, &visible(&node, &user), None))
}

async fn queues_in(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    axum::Extension(depths): Lengths,
    Path(vhost): Path<String>,
) -> Response {
    match one(&node, &user, &vhost) {
        Some(v) => axum::Json(json::queues(&node, &depths, &v, None)).into_response(),
        None => not_found(),
    }
}

async fn queue(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    axum::Extension(depths): Lengths,
    Path((vhost, name)): Path<(String, String)>,
) -> Response {
    match the_vhost(&node, &user, &vhost).and_then(|v| json::queue(&node, &depths, &v, &name)) {
        Some(q) => axum::Json(q).into_response(),
        None => not_found(),
    }
}

/// The vhost named in the path, if the user may see it.
fn the_vhost(node: &Node, user: &User, vhost: &str) -> Option<Arc<Broker>> {
    one(node, user, vhost)?.into_iter().next()
}

/// RabbitMQ's URLs name the default exchange `amq.default`.
fn exchange_name(name: &str) -> &str {
    if name == "amq.default" { "" } else { name }
}

fn has_queue(v: &Broker, name: &str) -> bool {
    v.queues().iter().any(|q| q.name == name)
}

async fn exchange(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> Response {
    match the_vhost(&node, &user, &vhost).and_then(|v| json::exchange(&v, exchange_name(&name))) {
        Some(x) => axum::Json(x).into_response(),
        None => not_found(),
    }
}

/// The bindings of one vhost that `keep` selects, if `exists` holds for that vhost; 404
/// otherwise. As in RabbitMQ, the binding listings of exchanges answer an empty list
/// for an exchange that does not exist; a queue's listing answers 404 (where RabbitMQ
/// would show the default exchange's binding to the missing queue).
fn bindings_of(
    node: &Node,
    user: &User,
    vhost: &str,
    exists: impl FnOnce(&Broker) -> bool,
    keep: impl Fn(&Value) -> bool,
) -> Response {
    match the_vhost(node, user, vhost) {
        Some(v) if exists(&v) => {
            axum::Json(json::bindings_where(std::slice::from_ref(&v), keep)).into_response()
        }
        _ => not_found(),
    }
}

/// `/api/queues/{vhost}/{name}/bindings`: the default exchange's implicit binding first,
/// then the explicit ones.
async fn queue_bindings(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> Response {
    bindings_of(
        &node,
        &user,
        &vhost,
        |v| has_queue(v, &name),
        |b| b["destination_type"] == "queue" && b["destination"] == name.as_str(),
    )
}

async fn exchange_bindings_source(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> Response {
    let name = exchange_name(&name);
    bindings_of(&node, &user, &vhost, |_| true, |b| b["source"] == name)
}

async fn exchange_bindings_destination(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> Response {
    let name = exchange_name(&name);
    bindings_of(
        &node,
        &user,
        &vhost,
        |_| true,
        |b| b["destination_type"] == "exchange" && b["destination"] == name,
    )
}

async fn bindings_to_queue(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path((vhost, source, destination)): Path<(String, String, String)>,
) -> Response {
    let source = exchange_name(&source);
    bindings_of(
        &node,
        &user,
        &vhost,
        |_| true,
        |b| {
            b["source"] == source
                && b["destination_type"] == "queue"
                && b["destination"] == destination.as_str()
        },
    )
}

async fn bindings_to_exchange(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path((vhost, source, destination)): Path<(String, String, String)>,
) -> Response {
    let (source, destination) = (exchange_name(&source), exchange_name(&destination));
    bindings_of(
        &node,
        &user,
        &vhost,
        |_| true,
        |b| {
            b["source"] == source
                && b["destination_type"] == "exchange"
                && b["destination"] == destination
        },
    )
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

async fn users(State(node): State<Arc<Node>>, axum::Extension(user): Caller) -> Response {
    admin_only(&user, || json::users(&node))
}

async fn user(
    State(node): State<Arc<Node>>,
    axum::Extension(caller): Caller,
    Path(name): Path<String>,
) -> Response {
    if !caller.has_tag("administrator") {
        return not_authorized("Not administrator user");
    }
    let users = node.users();
    match users.get(&name) {
        Some(u) => axum::Json(json::user(&users, u)).into_response(),
        None => not_found(),
    }
}

async fn permissions(State(node): State<Arc<Node>>, axum::Extension(user): Caller) -> Response {
    admin_only(&user, || json::permissions(&node))
}

async fn definitions(State(node): State<Arc<Node>>, axum::Extension(user): Caller) -> Response {
    admin_only(&user, || json::definitions(&node))
}

async fn vhost_definitions(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path(vhost): Path<String>,
) -> Response {
    if !user.has_tag("administrator") {
        return not_authorized("Not administrator user");
    }
    let Some(broker) = node.vhost(&vhost) else {
        // RabbitMQ's answer here is a 400, not the 404 of other paths.
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "bad_request", "reason": "vhost_not_found"})),
        )
            .into_response();
    };
    axum::Json(json::vhost_definitions(&node, &broker)).into_response()
}

/// Whether the memory alarm is on. The vhosts share one memory monitor, so any of them
/// tells; a node without vhosts holds no messages and raises no alarm.
fn memory_alarm(node: &Node) -> bool {
    node.vhosts()
        .first()
        .is_some_and(|v| *v.memory_alarm().borrow())
}

/// The queue RabbitMQ's aliveness test declares, publishes to and reads from.
const ALIVENESS_QUEUE: &str = "aliveness-test";

/// Serializes aliveness tests, as each borrows the same internal channel.
static ALIVENESS: Mutex<()> = Mutex::new(());

/// A connection id no client has (the node numbers connections from 1), under which the
/// aliveness test opens its channel.
const INTERNAL_CONN: ConnId = 0;

/// RabbitMQ's aliveness test: declares the `aliveness-test` queue, publishes a message
/// to it through the default exchange and gets it back, all through the vhost's broker.
async fn aliveness_test(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path(vhost): Path<String>,
) -> Response {
    let Some(v) = the_vhost(&node, &user, &vhost) else {
        return not_found();
    };
    match round_trip(&v) {
        Ok(()) => axum::Json(json!({"status": "ok"})).into_response(),
        Err(reason) => health::check_failed(&reason, json!({})),
    }
}

fn round_trip(v: &Broker) -> Result<(), String> {
    let _one_at_a_time = ALIVENESS.lock().unwrap_or_else(PoisonError::into_inner);
    let declare = amqp_queue::Declare {
        queue: ALIVENESS_QUEUE.into(),
        passive: false,
        durable: false,
        exclusive: false,
        auto_delete: false,
        nowait: false,
        arguments: FieldTable::default(),
    };
    v.queue_declare(INTERNAL_CONN, &declare, None, |_| Ok(()))
        .map_err(|e| e.text)?;
    v.publish(
        Message::new(
            "".into(),
            ALIVENESS_QUEUE.into(),
            AMQPProperties::default(),
            Bytes::from_static(b"test_message"),
        ),
        None,
    )
    .map_err(|e| e.text)?;
    v.open_channel(INTERNAL_CONN, 0);
    let got = v.get(INTERNAL_CONN, 0, ALIVENESS_QUEUE, true);
    v.close_channel(INTERNAL_CONN, 0);
    match got {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err("aliveness-test queue is empty".to_string()),
        Err(e) => Err(e.text),
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
