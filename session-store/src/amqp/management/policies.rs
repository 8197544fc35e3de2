//! The management API's policies, as RabbitMQ's plugin answers: any management user lists
//! those of the vhosts they can reach; reading one, setting and clearing need the
//! `policymaker` or `administrator` tag and permissions on the vhost. A refused policy
//! is a 400 with RabbitMQ's reason, HTML-escaped as the plugin sends it. A change is
//! answered once it is on disk, so a policy the API accepted survives a crash.

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
use crate::amqp::policy::Policy;
use crate::amqp::users::User;

/// `GET /api/policies`.
pub async fn list(State(node): State<Arc<Node>>, axum::Extension(user): Caller) -> Response {
    axum::Json(json::policies(&visible(&node, &user))).into_response()
}

/// `GET /api/policies/{vhost}`.
pub async fn list_in(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path(vhost): Path<String>,
) -> Response {
    if node.vhost(&vhost).is_none() {
        return error(StatusCode::NOT_FOUND, "not_found", "vhost_not_found").into_response();
    }
    match one(&node, &user, &vhost) {
        Some(v) => axum::Json(json::policies(&v)).into_response(),
        None => unauthorised("User not authorised to access virtual host").into_response(),
    }
}

/// `GET /api/policies/{vhost}/{name}`.
pub async fn get_one(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let broker = policymaker(&node, &user, &vhost)?;
    let policy = broker.policies().into_iter().find(|p| p.name == name);
    Ok(policy.map_or_else(not_found, |p| axum::Json(p.to_json(&vhost)).into_response()))
}

/// `PUT /api/policies/{vhost}/{name}`: 201 for a new policy, 204 for a replaced one.
pub async fn put(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path((vhost, name)): Path<(String, String)>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    let broker = policymaker(&node, &user, &vhost)?;
    let bad = |reason: &str| error(StatusCode::BAD_REQUEST, "bad_request", reason);
    let body: Value = serde_json::from_slice(&raw).map_err(|_| bad("not_json"))?;
    let policy = Policy::parse(&name, &body).map_err(|reason| bad(&escape_tags(&reason)))?;
    let (existed, logged) = broker.set_policy(policy);
    broker.synced(logged).await;
    Ok(created_or_not(existed))
}

/// `DELETE /api/policies/{vhost}/{name}`.
pub async fn delete(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let broker = policymaker(&node, &user, &vhost)?;
    Ok(match broker.clear_policy(&name) {
        Some(logged) => {
            broker.synced(logged).await;
            StatusCode::NO_CONTENT.into_response()
        }
        None => not_found(),
    })
}

/// The vhost's broker, if `user` may change its policies.
fn policymaker(node: &Node, user: &User, vhost: &str) -> Result<Arc<Broker>, ApiError> {
    let Some(broker) = node.vhost(vhost) else {
        return Err(error(StatusCode::NOT_FOUND, "not_found", "vhost_not_found"));
    };
    let tagged = user.has_tag("policymaker") || user.has_tag("administrator");
    if !tagged || node.users().permissions(&user.name, vhost).is_none() {
        return Err(unauthorised("User not authorised to access object"));
    }
    Ok(broker)
}

fn unauthorised(reason: &str) -> ApiError {
    error(StatusCode::UNAUTHORIZED, "not_authorised", reason)
}

/// What the management plugin does to a reason before sending it.
fn escape_tags(reason: &str) -> String {
    reason.replace('<', "&lt;").replace('>', "&gt;")
}
