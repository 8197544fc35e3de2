//! The management API's administration of users, vhosts and permissions, for
//! administrators, as RabbitMQ's plugin answers it (what `rabbitmqadmin declare user`,
//! Terraform's and Ansible's RabbitMQ modules send): `PUT`/`DELETE /api/users/NAME`,
//! `/api/vhosts/NAME`, `/api/permissions/VHOST/USER` and
//! `/api/topic-permissions/VHOST/USER`, 201 for something new, 204
//! for a change or a delete, 404 for nothing to delete. Changes are kept in the data
//! directory (see `access`) and answered once they are on disk.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};

use super::write::{ApiError, created_or_not, error, not_a};
use super::{Caller, has_queue, not_found};
use crate::amqp::definitions;
use crate::amqp::node::{NODE_NAME, Node};
use crate::amqp::permissions::{Permissions, TopicPermission};
use crate::amqp::store::StoreError;
use crate::amqp::users::{Hashing, PasswordHash, User};
use crate::amqp::vhost_meta::VHostMeta;

/// `PUT /api/users/{name}`: `tags` (a comma-separated string or a list) and `password`
/// or `password_hash` (with `hashing_algorithm`); neither makes a user who cannot log in
/// with a password, as in RabbitMQ.
pub async fn put_user(
    State(node): State<Arc<Node>>,
    axum::Extension(caller): Caller,
    Path(name): Path<String>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    administrator(&caller)?;
    let body = object(&raw)?;
    let tags = match body.get("tags") {
        Some(Value::String(s)) => s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect(),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => return Err(bad("tags_not_present")),
    };
    let hashing = match body.get("hashing_algorithm").and_then(Value::as_str) {
        None => Hashing::Sha256,
        Some(given) => Hashing::parse(given).ok_or_else(|| bad("unsupported hashing_algorithm"))?,
    };
    let password = match (body.get("password"), body.get("password_hash")) {
        (Some(Value::String(p)), _) => PasswordHash::new(p),
        (Some(_), _) => return Err(bad("password must be a string")),
        (_, Some(Value::String(h))) => PasswordHash::decode(hashing, h).map_err(|e| bad(&e))?,
        (_, Some(_)) => return Err(bad("password_hash must be a string")),
        (None, None) => PasswordHash::decode(hashing, "").map_err(|e| bad(&e))?,
    };
    let user = User {
        name,
        password,
        tags,
    };
    let existed = blocking(move || node.put_user(user)).await?;
    Ok(created_or_not(existed))
}

/// `DELETE /api/users/{name}`.
pub async fn delete_user(
    State(node): State<Arc<Node>>,
    axum::Extension(caller): Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    administrator(&caller)?;
    let deleted = blocking(move || node.delete_user(&name)).await?;
    Ok(deleted_or_not(deleted))
}

/// `PUT /api/vhosts/{name}`: creates it, giving the caller every permission there, with
/// the body's `description`, `tags` and `defaultqueuetype`; on an existing vhost, sets
/// its description and tags; `tracing` turns RabbitMQ's firehose on or off.
pub async fn put_vhost(
    State(node): State<Arc<Node>>,
    axum::Extension(caller): Caller,
    Path(name): Path<String>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    administrator(&caller)?;
    let body = if raw.iter().all(u8::is_ascii_whitespace) {
        serde_json::Map::new()
    } else {
        object(&raw)?
    };
    let meta = VHostMeta::from_fields(&body).map_err(|e| bad(&e))?;
    // RabbitMQ's firehose: absent leaves it as it is.
    let tracing = match body.get("tracing") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(on)) => Some(*on),
        Some(Value::String(s)) if s == "true" || s == "false" => Some(s == "true"),
        Some(_) => return Err(bad("tracing must be true or false")),
    };
    // connection.open names a vhost in a short string; the data directory in a file name.
    if name.len() > 255 || !node.vhost_name_fits(&name) {
        return Err(bad(
            "vhost name too long: at most 255 bytes, and 255 in the data directory once percent-encoded",
        ));
    }
    let (made, adding) = (name.clone(), node.clone());
    let existed = blocking(move || adding.add_vhost(&made, &caller.name, meta)).await?;
    if let (Some(on), Some(vhost)) = (tracing, node.vhost(&name)) {
        vhost.set_tracing(on);
    }
    Ok(created_or_not(existed))
}

/// `DELETE /api/vhosts/{name}`: with everything in it; its clients are disconnected.
pub async fn delete_vhost(
    State(node): State<Arc<Node>>,
    axum::Extension(caller): Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    administrator(&caller)?;
    let deleted = blocking(move || node.delete_vhost(&name)).await?;
    Ok(deleted_or_not(deleted))
}

/// `GET /api/permissions/{vhost}/{user}`.
pub async fn get_permissions(
    State(node): State<Arc<Node>>,
    axum::Extension(caller): Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    administrator(&caller)?;
    let found = node.users().permissions(&user, &vhost);
    Ok(match found {
        Some(p) => axum::Json(json!({
            "user": user,
            "vhost": vhost,
            "configure": p.configure,
            "write": p.write,
            "read": p.read,
        }))
        .into_response(),
        None => not_found(),
    })
}

/// `GET /api/vhosts/{name}/permissions`: every user's there.
pub async fn vhost_permissions(
    State(node): State<Arc<Node>>,
    axum::Extension(caller): Caller,
    Path(vhost): Path<String>,
) -> Result<Response, ApiError> {
    administrator(&caller)?;
    if node.vhost(&vhost).is_none() {
        return Ok(not_found());
    }
    let all = definitions::permissions_json(&node.users(), std::slice::from_ref(&vhost));
    Ok(axum::Json(all).into_response())
}

/// `GET /api/users/{name}/permissions`: the user's in every vhost.
pub async fn user_permissions(
    State(node): State<Arc<Node>>,
    axum::Extension(caller): Caller,
    Path(user): Path<String>,
) -> Result<Response, ApiError> {
    administrator(&caller)?;
    let users = node.users();
    if users.get(&user).is_none() {
        return Ok(not_found());
    }
    let all = definitions::permissions_json(&users, &node.vhost_names());
    Ok(axum::Json(of_user(all, &user)).into_response())
}

/// `GET /api/vhosts/{name}/topic-permissions`: every user's there.
pub async fn vhost_topic_permissions(
    State(node): State<Arc<Node>>,
    axum::Extension(caller): Caller,
    Path(vhost): Path<String>,
) -> Result<Response, ApiError> {
    administrator(&caller)?;
    if node.vhost(&vhost).is_none() {
        return Ok(not_found());
    }
    let all = definitions::topic_permissions_json(&node.users(), std::slice::from_ref(&vhost));
    Ok(axum::Json(all).into_response())
}

/// `GET /api/users/{name}/topic-permissions`: the user's in every vhost.
pub async fn user_topic_permissions(
    State(node): State<Arc<Node>>,
    axum::Extension(caller): Caller,
    Path(user): Path<String>,
) -> Result<Response, ApiError> {
    administrator(&caller)?;
    let users = node.users();
    if users.get(&user).is_none() {
        return Ok(not_found());
    }
    let all = definitions::topic_permissions_json(&users, &node.vhost_names());
    Ok(axum::Json(of_user(all, &user)).into_response())
}

/// `GET /api/users/without-permissions`: the users no vhost admits, the ones a cleanup
/// looks for.
pub async fn users_without_permissions(
    State(node): State<Arc<Node>>,
    axum::Extension(caller): Caller,
) -> Result<Response, ApiError> {
    administrator(&caller)?;
    let users = node.users();
    let granted: HashSet<&str> = users.grants().map(|(name, _, _)| name).collect();
    let mut list: Vec<&Arc<User>> = users
        .all()
        .filter(|u| !granted.contains(u.name.as_str()))
        .collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    let listed: Vec<Value> = list
        .into_iter()
        .map(|u| definitions::user_json(u, &users.user_limits(&u.name)))
        .collect();
    Ok(axum::Json(listed).into_response())
}

/// `POST /api/users/bulk-delete` with `{"users": [...]}`: 204, their connections
/// closed. As in RabbitMQ, a name that does not exist stops the deletion there with a
/// 400 `["no_such_user", NAME]`, the users before it deleted.
pub async fn bulk_delete_users(
    State(node): State<Arc<Node>>,
    axum::Extension(caller): Caller,
    raw: Bytes,
) -> Result<Response, ApiError> {
    administrator(&caller)?;
    let body = object(&raw)?;
    let names: Vec<String> = match body.get("users") {
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("users must be a list of names"))?,
        Some(_) => return Err(bad("users must be a list of names")),
        None => return Err(bad("[{key_missing,users}]")),
    };
    match blocking(move || node.delete_users(&names)).await? {
        None => Ok(StatusCode::NO_CONTENT.into_response()),
        Some(missing) => Err(not_a("no_such_user", &Value::from(missing))),
    }
}

/// `POST /api/queues/{vhost}/{name}/actions` with `{"action": "sync"}` or
/// `"cancel_sync"`: 204. They synchronise a classic queue's mirrors; a single node has
/// none, so there is nothing to do, as RabbitMQ answers for a queue without mirrors.
pub async fn queue_action(
    State(node): State<Arc<Node>>,
    axum::Extension(caller): Caller,
    Path((vhost, name)): Path<(String, String)>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    administrator(&caller)?;
    if !node.vhost(&vhost).is_some_and(|v| has_queue(&v, &name)) {
        return Ok(not_found());
    }
    let body = object(&raw)?;
    match body.get("action") {
        Some(Value::String(action)) if action == "sync" || action == "cancel_sync" => {
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Some(other) => Err(not_a("unknown", other)),
        None => Err(bad("[{key_missing,action}]")),
    }
}

/// `POST /api/vhosts/{name}/start/{node}`: 204. A vhost runs here while it exists, so
/// starting it again, as scripts do after a node restart, changes nothing. Refusals
/// with RabbitMQ's 400 texts.
pub async fn start_vhost(
    State(node): State<Arc<Node>>,
    axum::Extension(caller): Caller,
    Path((vhost, on)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    administrator(&caller)?;
    if on != NODE_NAME {
        return Err(bad(&format!("Request to node {on} failed with nodedown")));
    }
    if node.vhost(&vhost).is_none() {
        return Err(bad(&format!(
            "Request to node {on} failed with {{no_such_vhost,<<\"{vhost}\">>}}"
        )));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/rebalance/queues`: 204. A single node has no queue leaders to move; the
/// call is accepted so that scripts written for a cluster run unchanged.
pub async fn rebalance_queues(axum::Extension(caller): Caller) -> Result<Response, ApiError> {
    administrator(&caller)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `PUT /api/permissions/{vhost}/{user}`: `configure`, `write` and `read` patterns.
pub async fn put_permissions(
    State(node): State<Arc<Node>>,
    axum::Extension(caller): Caller,
    Path((vhost, user)): Path<(String, String)>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    administrator(&caller)?;
    let body = object(&raw)?;
    let [configure, write, read] = strings(&body, ["configure", "write", "read"])?;
    let permissions = Permissions::new(configure, write, read)
        .map_err(|e| bad(&format!("invalid_regexp: {e}")))?;
    let granted = blocking(move || node.put_permissions(&user, &vhost, permissions)).await?;
    match granted {
        Some(existed) => Ok(created_or_not(existed)),
        None => Err(bad("vhost_or_user_not_found")),
    }
}

/// `GET /api/topic-permissions`: every user's in every vhost.
pub async fn all_topic_permissions(
    State(node): State<Arc<Node>>,
    axum::Extension(caller): Caller,
) -> Result<Response, ApiError> {
    administrator(&caller)?;
    let vhosts: Vec<String> = node.vhost_names();
    let all = definitions::topic_permissions_json(&node.users(), &vhosts);
    Ok(axum::Json(all).into_response())
}

/// `GET /api/topic-permissions/{vhost}/{user}`: 404 when there are none.
pub async fn get_topic_permissions(
    State(node): State<Arc<Node>>,
    axum::Extension(caller): Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    administrator(&caller)?;
    let users = node.users();
    let all = definitions::topic_permissions_json(&users, std::slice::from_ref(&vhost));
    let own = of_user(all, &user);
    if own.is_empty() {
        return Ok(not_found());
    }
    Ok(axum::Json(own).into_response())
}

/// `PUT /api/topic-permissions/{vhost}/{user}`: `exchange`, `write` and `read`; 201 for
/// the user's first in the vhost, 204 after.
pub async fn put_topic_permission(
    State(node): State<Arc<Node>>,
    axum::Extension(caller): Caller,
    Path((vhost, user)): Path<(String, String)>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    administrator(&caller)?;
    let body = object(&raw)?;
    let [exchange, write, read] = strings(&body, ["exchange", "write", "read"])?;
    let permission = TopicPermission::new(exchange, write, read, &user, &vhost)
        .map_err(|e| bad(&format!("invalid_regexp: {e}")))?;
    let granted = blocking(move || node.put_topic_permission(&user, &vhost, permission)).await?;
    match granted {
        Some(had) => Ok(created_or_not(had)),
        None => Err(bad("vhost_or_user_not_found")),
    }
}

/// `DELETE /api/topic-permissions/{vhost}/{user}`: all of them.
pub async fn delete_topic_permissions(
    State(node): State<Arc<Node>>,
    axum::Extension(caller): Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    administrator(&caller)?;
    let deleted = blocking(move || node.delete_topic_permissions(&user, &vhost)).await?;
    Ok(deleted_or_not(deleted))
}

/// `DELETE /api/permissions/{vhost}/{user}`.
pub async fn delete_permissions(
    State(node): State<Arc<Node>>,
    axum::Extension(caller): Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    administrator(&caller)?;
    let deleted = blocking(move || node.delete_permissions(&user, &vhost)).await?;
    Ok(deleted_or_not(deleted))
}

/// The rows of a permissions listing that are `user`'s.
fn of_user(all: Value, user: &str) -> Vec<Value> {
    let Value::Array(all) = all else {
        return Vec::new();
    };
    all.into_iter().filter(|p| p["user"] == user).collect()
}

/// RabbitMQ's refusal for anyone but administrators.
pub(super) fn administrator(user: &User) -> Result<(), ApiError> {
    if user.has_tag("administrator") {
        Ok(())
    } else {
        Err(error(
            StatusCode::UNAUTHORIZED,
            "not_authorised",
            "Not administrator user",
        ))
    }
}

pub(super) fn bad(reason: &str) -> ApiError {
    error(StatusCode::BAD_REQUEST, "bad_request", reason)
}

/// The string fields `keys` of a body, or RabbitMQ's `[{key_missing,K},...]` naming
/// each one missing.
fn strings<'a, const N: usize>(
    body: &'a serde_json::Map<String, Value>,
    keys: [&str; N],
) -> Result<[&'a str; N], ApiError> {
    let missing: Vec<String> = keys
        .iter()
        .filter(|k| !body.get(**k).is_some_and(Value::is_string))
        .map(|k| format!("{{key_missing,{k}}}"))
        .collect();
    if !missing.is_empty() {
        return Err(bad(&format!("[{}]", missing.join(","))));
    }
    Ok(keys.map(|k| body.get(k).and_then(Value::as_str).unwrap_or_default()))
}

/// The request body as a JSON object.
pub(super) fn object(raw: &Bytes) -> Result<serde_json::Map<String, Value>, ApiError> {
    match serde_json::from_slice(raw) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(bad("not_json")),
    }
}

fn deleted_or_not(deleted: bool) -> Response {
    if deleted {
        StatusCode::NO_CONTENT.into_response()
    } else {
        not_found()
    }
}

/// Runs a change that writes (and syncs) the data directory off the async threads; a
/// failed write is a 500 naming the file.
pub(super) async fn blocking<T: Send + 'static>(
    change: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(change).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_server_error",
            &e.to_string(),
        )),
        Err(e) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_server_error",
            &e.to_string(),
        )),
    }
}
