//! User and vhost limits through the management API, as RabbitMQ's plugin answers it:
//! `GET /api/user-limits[/USER]`, `GET /api/vhost-limits[/VHOST]`, and, for
//! administrators, `PUT` (`{"value": N}`) and `DELETE` of `/api/user-limits/USER/NAME`
//! and `/api/vhost-limits/VHOST/NAME`. A `PUT` or `DELETE` answers 204, once kept on disk.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};

use super::admin::{administrator, bad, blocking, object};
use super::write::{ApiError, error, not_a};
use super::{Caller, not_found, one, visible};
use crate::amqp::limits::{self, Limits};
use crate::amqp::node::Node;

/// `GET /api/user-limits`: every user's that has some.
pub async fn all_user_limits(State(node): State<Arc<Node>>) -> Response {
    let users = node.users();
    let list = users.all_user_limits();
    axum::Json(listed("user", list.into_iter())).into_response()
}

/// `GET /api/user-limits/{user}`: `[]` for a user without limits, 404 for no such user.
pub async fn user_limits(State(node): State<Arc<Node>>, Path(user): Path<String>) -> Response {
    let users = node.users();
    if users.get(&user).is_none() {
        return not_found();
    }
    let limits = users.user_limits(&user);
    let own = (!limits.is_empty()).then_some((user.as_str(), &limits));
    axum::Json(listed("user", own.into_iter())).into_response()
}

/// `GET /api/vhost-limits`: those of the vhosts the caller may see.
pub async fn all_vhost_limits(
    State(node): State<Arc<Node>>,
    axum::Extension(caller): Caller,
) -> Response {
    let seen: Vec<String> = visible(&node, &caller)
        .iter()
        .map(|v| v.name().to_string())
        .collect();
    let users = node.users();
    let list = users.all_vhost_limits();
    let shown = list
        .into_iter()
        .filter(|(vhost, _)| seen.iter().any(|s| s == vhost));
    axum::Json(listed("vhost", shown)).into_response()
}

/// `GET /api/vhost-limits/{vhost}`: `[]` for a vhost without limits.
pub async fn vhost_limits(
    State(node): State<Arc<Node>>,
    axum::Extension(caller): Caller,
    Path(vhost): Path<String>,
) -> Response {
    if one(&node, &caller, &vhost).is_none() {
        return not_found();
    }
    let limits = node.users().vhost_limits(&vhost);
    let own = (!limits.is_empty()).then_some((vhost.as_str(), &limits));
    axum::Json(listed("vhost", own.into_iter())).into_response()
}

/// `PUT /api/user-limits/{user}/{name}`.
pub async fn put_user_limit(
    State(node): State<Arc<Node>>,
    axum::Extension(caller): Caller,
    Path((user, name)): Path<(String, String)>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    administrator(&caller)?;
    let value = requested(&raw, &name, &limits::USER, "", " in user-limits")?;
    let missing = Value::from(user.as_str());
    let set = blocking(move || node.set_user_limit(&user, &name, Some(value))).await?;
    if !set {
        return Err(not_a("no_such_user", &missing));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /api/user-limits/{user}/{name}`: 204 whether or not it was set.
pub async fn delete_user_limit(
    State(node): State<Arc<Node>>,
    axum::Extension(caller): Caller,
    Path((user, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    administrator(&caller)?;
    blocking(move || node.set_user_limit(&user, &name, None)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `PUT /api/vhost-limits/{vhost}/{name}`.
pub async fn put_vhost_limit(
    State(node): State<Arc<Node>>,
    axum::Extension(caller): Caller,
    Path((vhost, name)): Path<(String, String)>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    administrator(&caller)?;
    // RabbitMQ's runtime-parameter validation wraps its reasons so.
    let value = requested(
        &raw,
        &name,
        &limits::VHOST,
        "Validation failed\n\n",
        " in limits\n",
    )?;
    let set = blocking(move || node.set_vhost_limit(&vhost, &name, Some(value))).await?;
    if !set {
        return Err(error(StatusCode::NOT_FOUND, "not_found", "vhost_not_found"));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /api/vhost-limits/{vhost}/{name}`: 204 whether or not it was set.
pub async fn delete_vhost_limit(
    State(node): State<Arc<Node>>,
    axum::Extension(caller): Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    administrator(&caller)?;
    let set = blocking(move || node.set_vhost_limit(&vhost, &name, None)).await?;
    if !set {
        return Err(error(StatusCode::NOT_FOUND, "not_found", "vhost_not_found"));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The body's `value` for the limit `name`, validated as RabbitMQ validates it, its
/// reasons framed by `prefix` and (for unknown names) `suffix`.
fn requested(
    raw: &Bytes,
    name: &str,
    allowed: &[&str],
    prefix: &str,
    suffix: &str,
) -> Result<i64, ApiError> {
    let body = object(raw)?;
    let Some(value) = body.get("value") else {
        return Err(bad("[{key_missing,value}]"));
    };
    // Checked as a whole limits object is: the name first, then the value.
    let one = serde_json::Map::from_iter([(name.to_string(), value.clone())]);
    if let Err(e) = Limits::from_json(&one, allowed) {
        let end = if e.starts_with("Unrecognised") {
            suffix
        } else {
            tail(prefix)
        };
        return Err(bad(&format!("{prefix}{e}{end}")));
    }
    limits::value_of(name, value).map_err(|e| bad(&e))
}

/// RabbitMQ ends a wrapped validation reason with a newline.
fn tail(prefix: &str) -> &'static str {
    if prefix.is_empty() { "" } else { "\n" }
}

/// `[{"user"|"vhost": name, "value": {...}}, …]`.
fn listed<'a>(key: &str, list: impl Iterator<Item = (&'a str, &'a Limits)>) -> Value {
    list.map(|(name, limits)| json!({ key: name, "value": limits.to_json() }))
        .collect()
}
