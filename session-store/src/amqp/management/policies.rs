//! The management API's policies and operator policies, as RabbitMQ's plugin answers:
//! any management user lists those of the vhosts they can reach; reading one, setting and
//! clearing a policy need the `policymaker` or `administrator` tag and permissions on the
//! vhost, an operator policy the `administrator` tag. A refused policy is a 400 with
//! RabbitMQ's reason, HTML-escaped where the plugin escapes it. A change is answered once it
//! is on disk, so a policy the API accepted survives a crash.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;

use super::write::{ApiError, created_or_not, error};
use super::{Caller, json, not_found, one, visible};
use crate::amqp::broker::Broker;
use crate::amqp::node::Node;
use crate::amqp::policy::{Kind, Policy};
use crate::amqp::users::User;

/// `GET /api/policies`.
pub async fn list(node: State<Arc<Node>>, user: Caller) -> Response {
    list_kind(Kind::Policy, node, user)
}

/// `GET /api/operator-policies`.
pub async fn list_operator(node: State<Arc<Node>>, user: Caller) -> Response {
    list_kind(Kind::Operator, node, user)
}

fn list_kind(kind: Kind, State(node): State<Arc<Node>>, axum::Extension(user): Caller) -> Response {
    axum::Json(json::policies(kind, &visible(&node, &user))).into_response()
}

/// `GET /api/policies/{vhost}`.
pub async fn list_in(node: State<Arc<Node>>, user: Caller, vhost: Path<String>) -> Response {
    list_in_kind(Kind::Policy, node, user, vhost)
}

/// `GET /api/operator-policies/{vhost}`.
pub async fn list_operator_in(
    node: State<Arc<Node>>,
    user: Caller,
    vhost: Path<String>,
) -> Response {
    list_in_kind(Kind::Operator, node, user, vhost)
}

fn list_in_kind(
    kind: Kind,
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path(vhost): Path<String>,
) -> Response {
    if node.vhost(&vhost).is_none() {
        return error(StatusCode::NOT_FOUND, "not_found", "vhost_not_found").into_response();
    }
    match one(&node, &user, &vhost) {
        Some(v) => axum::Json(json::policies(kind, &v)).into_response(),
        None => unauthorised("User not authorised to access virtual host").into_response(),
    }
}

/// `GET /api/policies/{vhost}/{name}`.
pub async fn get_one(
    node: State<Arc<Node>>,
    user: Caller,
    path: Path<(String, String)>,
) -> Result<Response, ApiError> {
    get_kind(Kind::Policy, node, user, path)
}

/// `GET /api/operator-policies/{vhost}/{name}`.
pub async fn get_operator(
    node: State<Arc<Node>>,
    user: Caller,
    path: Path<(String, String)>,
) -> Result<Response, ApiError> {
    get_kind(Kind::Operator, node, user, path)
}

fn get_kind(
    kind: Kind,
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let broker = may_change(kind, &node, &user, &vhost)?;
    let policy = broker.policies(kind).into_iter().find(|p| p.name == name);
    Ok(policy.map_or_else(not_found, |p| axum::Json(p.to_json(&vhost)).into_response()))
}

/// `PUT /api/policies/{vhost}/{name}`: 201 for a new policy, 204 for a replaced one.
pub async fn put(
    node: State<Arc<Node>>,
    user: Caller,
    path: Path<(String, String)>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    put_kind(Kind::Policy, node, user, path, raw).await
}

/// `PUT /api/operator-policies/{vhost}/{name}`: as for a policy.
pub async fn put_operator(
    node: State<Arc<Node>>,
    user: Caller,
    path: Path<(String, String)>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    put_kind(Kind::Operator, node, user, path, raw).await
}

async fn put_kind(
    kind: Kind,
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path((vhost, name)): Path<(String, String)>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    let broker = may_change(kind, &node, &user, &vhost)?;
    let body: Value = serde_json::from_slice(&raw)
        .map_err(|_| error(StatusCode::BAD_REQUEST, "bad_request", "not_json"))?;
    apply(&broker, kind, &name, &body).await
}

/// Sets the policy of `kind` named `name` in `broker`'s vhost from `body`, for a caller
/// already authorised: 201 for a new one, 204 for a change, once it is on disk.
pub(super) async fn apply(
    broker: &Broker,
    kind: Kind,
    name: &str,
    body: &Value,
) -> Result<Response, ApiError> {
    let bad = |reason: &str| error(StatusCode::BAD_REQUEST, "bad_request", reason);
    // RabbitMQ's plugin HTML-escapes a policy's reasons, not an operator policy's.
    let policy = Policy::parse_as(kind, name, body).map_err(|reason| match kind {
        Kind::Policy => bad(&escape_tags(&reason)),
        Kind::Operator => bad(&reason),
    })?;
    let (existed, logged) = broker.set_policy(policy);
    broker.synced(logged).await;
    Ok(created_or_not(existed))
}

/// `DELETE /api/policies/{vhost}/{name}`.
pub async fn delete(
    node: State<Arc<Node>>,
    user: Caller,
    path: Path<(String, String)>,
) -> Result<Response, ApiError> {
    delete_kind(Kind::Policy, node, user, path).await
}

/// `DELETE /api/operator-policies/{vhost}/{name}`.
pub async fn delete_operator(
    node: State<Arc<Node>>,
    user: Caller,
    path: Path<(String, String)>,
) -> Result<Response, ApiError> {
    delete_kind(Kind::Operator, node, user, path).await
}

async fn delete_kind(
    kind: Kind,
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let broker = may_change(kind, &node, &user, &vhost)?;
    remove(&broker, kind, &name).await
}

/// Clears the policy of `kind` named `name` in `broker`'s vhost, for a caller already
/// authorised: 204 once that is on disk, 404 if there is none.
pub(super) async fn remove(broker: &Broker, kind: Kind, name: &str) -> Result<Response, ApiError> {
    Ok(match broker.clear_policy(kind, name) {
        Some(logged) => {
            broker.synced(logged).await;
            StatusCode::NO_CONTENT.into_response()
        }
        None => not_found(),
    })
}

/// The vhost's broker, if `user` may read and change its policies of `kind`: a
/// policymaker with permissions there for a policy, an administrator for an operator
/// policy.
fn may_change(kind: Kind, node: &Node, user: &User, vhost: &str) -> Result<Arc<Broker>, ApiError> {
    if kind == Kind::Operator && !user.has_tag("administrator") {
        return Err(unauthorised("Not administrator user"));
    }
    let Some(broker) = node.vhost(vhost) else {
        return Err(error(StatusCode::NOT_FOUND, "not_found", "vhost_not_found"));
    };
    if kind == Kind::Policy {
        let tagged = user.has_tag("policymaker") || user.has_tag("administrator");
        if !tagged || node.users().permissions(&user.name, vhost).is_none() {
            return Err(unauthorised("User not authorised to access object"));
        }
    }
    Ok(broker)
}

fn unauthorised(reason: &str) -> ApiError {
    error(StatusCode::UNAUTHORIZED, "not_authorised", reason)
}

/// What the management plugin does to a reason before sending it.
pub(super) fn escape_tags(reason: &str) -> String {
    reason.replace('<', "&lt;").replace('>', "&gt;")
}
