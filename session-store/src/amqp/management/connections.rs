//! Connections and channels as the management API lists them: all of them, one vhost's,
//! one connection's channels, one channel, one user's connections, and closing them. As
//! in RabbitMQ, users without the `monitoring` (or `administrator`) tag see only their
//! own connections and channels, and only in vhosts they have permissions on.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::json as view;
use super::write::{ApiError, error};
use super::{Caller, monitor, not_found, one, visible};
use crate::amqp::node::Node;
use crate::amqp::users::User;

/// The reason a client is told when the request gives no `X-Reason`, as in RabbitMQ.
const DEFAULT_REASON: &str = "Closed via management plugin";

/// The items of `list` that `user` may see: all for monitors, their own for the rest.
fn own(user: &User, list: Value) -> Vec<Value> {
    let Value::Array(list) = list else {
        return Vec::new();
    };
    if monitor(user) {
        return list;
    }
    list.into_iter()
        .filter(|item| item["user"] == user.name.as_str())
        .collect()
}

fn listed(items: Vec<Value>) -> Response {
    axum::Json(Value::Array(items)).into_response()
}

/// `GET /api/connections`.
pub async fn all(State(node): State<Arc<Node>>, axum::Extension(user): Caller) -> Response {
    listed(own(&user, view::connections(&node, &visible(&node, &user))))
}

/// `GET /api/vhosts/{vhost}/connections`: 404 for a vhost the user cannot see.
pub async fn in_vhost(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path(vhost): Path<String>,
) -> Response {
    match one(&node, &user, &vhost) {
        Some(v) => listed(own(&user, view::connections(&node, &v))),
        None => not_found(),
    }
}

/// RabbitMQ's 401 for an object of another user's.
fn not_yours() -> ApiError {
    error(
        StatusCode::UNAUTHORIZED,
        "not_authorised",
        "User not authorised to access object",
    )
}

fn missing() -> ApiError {
    error(StatusCode::NOT_FOUND, "Object Not Found", "Not Found")
}

/// The connection named `name` among those in vhosts `user` may see; Err when there is
/// none or it is someone else's (monitors and administrators see all).
fn the_connection(node: &Node, user: &User, name: &str) -> Result<Value, ApiError> {
    let Value::Array(list) = view::connections(node, &visible(node, user)) else {
        return Err(missing());
    };
    match list.into_iter().find(|c| c["name"] == name) {
        Some(c) if c["user"] == user.name.as_str() || monitor(user) => Ok(c),
        Some(_) => Err(not_yours()),
        None => Err(missing()),
    }
}

/// `GET /api/connections/{name}`.
pub async fn named(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(the_connection(&node, &user, &name)?).into_response())
}

/// The reason in the request's `X-Reason`, or RabbitMQ's default.
fn reason(headers: &HeaderMap) -> &str {
    headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or(DEFAULT_REASON)
}

/// `DELETE /api/connections/{name}`: closes it with CONNECTION_FORCED and the request's
/// `X-Reason`, as RabbitMQ does. For the connection's own user and administrators.
pub async fn close(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(owner) = node
        .connections()
        .into_iter()
        .find(|c| c.name() == name)
        .map(|c| c.user)
    else {
        return Err(missing());
    };
    if owner != user.name && !user.has_tag("administrator") {
        return Err(not_yours());
    }
    if node.close_connection(&name, reason(&headers)) {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(missing())
    }
}

/// `GET /api/connections/{name}/channels`.
pub async fn channels_of(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    the_connection(&node, &user, &name)?;
    let Value::Array(list) = view::channels(&node, &visible(&node, &user)) else {
        return Ok(listed(Vec::new()));
    };
    Ok(listed(
        list.into_iter()
            .filter(|ch| ch["connection_details"]["name"] == name.as_str())
            .collect(),
    ))
}

/// `GET /api/channels`.
pub async fn all_channels(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
) -> Response {
    listed(own(&user, view::channels(&node, &visible(&node, &user))))
}

/// `GET /api/vhosts/{vhost}/channels`: 404 for a vhost the user cannot see.
pub async fn channels_in_vhost(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path(vhost): Path<String>,
) -> Response {
    match one(&node, &user, &vhost) {
        Some(v) => listed(own(&user, view::channels(&node, &v))),
        None => not_found(),
    }
}

/// `GET /api/channels/{name}`, with its `consumer_details`: RabbitMQ names a channel
/// `<connection name> (<number>)`.
pub async fn channel(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let Value::Array(list) = view::channels(&node, &visible(&node, &user)) else {
        return Err(missing());
    };
    match list.into_iter().find(|ch| ch["name"] == name.as_str()) {
        Some(mut ch) if ch["user"] == user.name.as_str() || monitor(&user) => {
            ch["consumer_details"] = consumers_on(&node, &user, &name).into();
            Ok(axum::Json(ch).into_response())
        }
        Some(_) => Err(not_yours()),
        None => Err(missing()),
    }
}

/// The consumers on the channel named `channel`, as its own listing shows them (without
/// the channel's details, which the listing already gives).
fn consumers_on(node: &Node, user: &User, channel: &str) -> Vec<Value> {
    let Value::Array(all) = view::consumers(node, &visible(node, user)) else {
        return Vec::new();
    };
    all.into_iter()
        .filter(|c| c["channel_details"]["name"] == channel)
        .map(|mut c| {
            if let Value::Object(fields) = &mut c {
                fields.remove("channel_details");
            }
            c
        })
        .collect()
}

/// `user`'s connections, or the refusal when the caller may not see them.
fn connections_of_user(node: &Node, caller: &User, user: &str) -> Result<Vec<Value>, ApiError> {
    if user != caller.name && !monitor(caller) {
        return Err(not_yours());
    }
    Ok(node
        .connections()
        .into_iter()
        .filter(|c| c.user == user)
        .map(|c| {
            json!({
                "name": c.name(),
                "user": c.user,
                "vhost": c.vhost,
                "node": view::NODE,
            })
        })
        .collect())
}

/// `GET /api/connections/username/{user}`: the connections a user has open, in every
/// vhost, as RabbitMQ's connection tracking lists them (name, user, vhost, node).
pub async fn of_user(
    State(node): State<Arc<Node>>,
    axum::Extension(caller): Caller,
    Path(user): Path<String>,
) -> Result<Response, ApiError> {
    Ok(listed(connections_of_user(&node, &caller, &user)?))
}

/// `DELETE /api/connections/username/{user}`: closes every connection of the user with
/// CONNECTION_FORCED and the request's `X-Reason`; 204 also when there were none.
pub async fn close_of_user(
    State(node): State<Arc<Node>>,
    axum::Extension(caller): Caller,
    Path(user): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    for c in connections_of_user(&node, &caller, &user)? {
        if let Some(name) = c["name"].as_str() {
            node.close_connection(name, reason(&headers));
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
