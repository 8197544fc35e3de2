//! Runtime parameters as RabbitMQ's management API shows them. Per vhost
//! (`/api/parameters[/COMPONENT[/VHOST[/NAME]]]`), the components this broker has: a
//! vhost's limits (`vhost-limits`, name `limits`) and operator policies
//! (`operator_policy`) — the same objects `/api/vhost-limits` and
//! `/api/operator-policies` change, under the names tools that manage parameters use. As
//! in RabbitMQ, policymakers with permissions on a vhost may read and change its
//! parameters. Node-wide (`/api/global-parameters`, `/api/cluster-name`): see
//! [`crate::amqp::globals`]; for administrators. Changes are answered once on disk.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};

use super::admin::{administrator, bad, blocking, object};
use super::policies::{self, escape_tags};
use super::write::{ApiError, created_or_not, error};
use super::{Caller, json as view, not_found, visible};
use crate::amqp::definitions::{OPERATOR_POLICY, VHOST_LIMITS};
use crate::amqp::globals::CLUSTER_NAME;
use crate::amqp::limits::{self, Limits};
use crate::amqp::node::Node;
use crate::amqp::policy::Kind;
use crate::amqp::users::User;

/// RabbitMQ's refusal of parameters to users who may not see them.
fn unauthorised() -> ApiError {
    error(
        StatusCode::UNAUTHORIZED,
        "not_authorised",
        "User not authorised to access object",
    )
}

/// RabbitMQ's rule for runtime parameters: the `policymaker` or `administrator` tag and,
/// for one vhost's, permissions there.
fn policymaker(node: &Node, user: &User, vhost: Option<&str>) -> Result<(), ApiError> {
    let tagged = user.has_tag("policymaker") || user.has_tag("administrator");
    let users = node.users();
    if tagged && vhost.is_none_or(|v| users.permissions(&user.name, v).is_some()) {
        Ok(())
    } else {
        Err(unauthorised())
    }
}

/// Global parameters are for administrators.
fn global_admin(user: &User) -> Result<(), ApiError> {
    if user.has_tag("administrator") {
        Ok(())
    } else {
        Err(unauthorised())
    }
}

/// The parameters in the vhosts `user` may see, narrowed to `component` and `vhost`.
fn listed(node: &Node, user: &User, component: Option<&str>, vhost: Option<&str>) -> Vec<Value> {
    let vhosts: Vec<_> = visible(node, user)
        .into_iter()
        .filter(|v| vhost.is_none_or(|wanted| v.name() == wanted))
        .collect();
    let names: Vec<String> = vhosts.iter().map(|v| v.name().to_string()).collect();
    let Value::Array(all) = view::parameters(node, &names, &vhosts) else {
        return Vec::new();
    };
    all.into_iter()
        .filter(|p| component.is_none_or(|c| p["component"] == c))
        .collect()
}

/// `GET /api/parameters`.
pub async fn all(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
) -> Result<Response, ApiError> {
    policymaker(&node, &user, None)?;
    Ok(axum::Json(listed(&node, &user, None, None)).into_response())
}

/// `GET /api/parameters/{component}`.
pub async fn of_component(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path(component): Path<String>,
) -> Result<Response, ApiError> {
    policymaker(&node, &user, None)?;
    Ok(axum::Json(listed(&node, &user, Some(&component), None)).into_response())
}

/// `GET /api/parameters/{component}/{vhost}`: 404 for a vhost that does not exist.
pub async fn in_vhost(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path((component, vhost)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    if node.vhost(&vhost).is_none() {
        return Ok(not_found());
    }
    policymaker(&node, &user, Some(&vhost))?;
    Ok(axum::Json(listed(&node, &user, Some(&component), Some(&vhost))).into_response())
}

/// `GET /api/parameters/{component}/{vhost}/{name}`.
pub async fn one(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path((component, vhost, name)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    if node.vhost(&vhost).is_none() {
        return Ok(not_found());
    }
    policymaker(&node, &user, Some(&vhost))?;
    let found = listed(&node, &user, Some(&component), Some(&vhost))
        .into_iter()
        .find(|p| p["name"] == name.as_str());
    Ok(match found {
        Some(p) => axum::Json(p).into_response(),
        None => not_found(),
    })
}

/// RabbitMQ's refusal of a component it has no handler for.
fn unknown_component(component: &str) -> ApiError {
    bad(&format!(
        "Validation failed\n\ncomponent {component} not found\n"
    ))
}

/// `PUT /api/parameters/{component}/{vhost}/{name}` with `{"value": ...}`: 201 for a new
/// parameter, 204 for a change.
pub async fn put(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path((component, vhost, name)): Path<(String, String, String)>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    let Some(broker) = node.vhost(&vhost) else {
        return Err(error(StatusCode::NOT_FOUND, "not_found", "vhost_not_found"));
    };
    policymaker(&node, &user, Some(&vhost))?;
    let body = object(&raw)?;
    let Some(value) = body.get("value") else {
        return Err(bad("[{key_missing,value}]"));
    };
    match component.as_str() {
        OPERATOR_POLICY => {
            // As a runtime parameter an operator policy names every key, as RabbitMQ
            // validates it; `/api/operator-policies` fills in a missing priority.
            for key in ["pattern", "definition", "priority"] {
                if value.get(key).is_none() {
                    return Err(bad(&format!(
                        "Validation failed\n\nKey \"{key}\" not found in {name}\n"
                    )));
                }
            }
            policies::apply(&broker, Kind::Operator, &name, value).await
        }
        VHOST_LIMITS => {
            let limits = vhost_limits(&name, value)?;
            let had = blocking(move || node.replace_vhost_limits(&vhost, limits)).await?;
            match had {
                Some(had) => Ok(created_or_not(had)),
                None => Err(error(StatusCode::NOT_FOUND, "not_found", "vhost_not_found")),
            }
        }
        "policy" => Err(bad("policies may not be set using this method")),
        other => Err(unknown_component(other)),
    }
}

/// A `vhost-limits` parameter's value, validated as RabbitMQ validates it.
fn vhost_limits(name: &str, value: &Value) -> Result<Limits, ApiError> {
    if name != "limits" {
        return Err(bad(
            "a vhost's limits are the parameter named 'limits' of component vhost-limits",
        ));
    }
    let Some(map) = value.as_object() else {
        return Err(bad(&format!(
            "Validation failed\n\n{value} was expected to be a JSON object\n"
        )));
    };
    // As RabbitMQ's plugin words it: HTML-escaped, unlike the same refusal at
    // `/api/vhost-limits`.
    Limits::from_json(map, &limits::VHOST).map_err(|e| {
        let end = if e.starts_with("Unrecognised") {
            " in limits\n"
        } else {
            "\n"
        };
        bad(&escape_tags(&format!("Validation failed\n\n{e}{end}")))
    })
}

/// `DELETE /api/parameters/{component}/{vhost}/{name}`: 204, or 404 if it is not set.
pub async fn delete(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path((component, vhost, name)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let Some(broker) = node.vhost(&vhost) else {
        return Ok(not_found());
    };
    policymaker(&node, &user, Some(&vhost))?;
    match component.as_str() {
        OPERATOR_POLICY => policies::remove(&broker, Kind::Operator, &name).await,
        VHOST_LIMITS if name == "limits" => {
            let had =
                blocking(move || node.replace_vhost_limits(&vhost, Limits::default())).await?;
            Ok(match had {
                Some(true) => StatusCode::NO_CONTENT.into_response(),
                _ => not_found(),
            })
        }
        _ => Ok(not_found()),
    }
}

/// `GET /api/global-parameters`.
pub async fn globals(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
) -> Result<Response, ApiError> {
    global_admin(&user)?;
    Ok(axum::Json(node.globals().to_json()).into_response())
}

/// `GET /api/global-parameters/{name}`.
pub async fn global(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    global_admin(&user)?;
    Ok(match node.globals().one_json(&name) {
        Some(p) => axum::Json(p).into_response(),
        None => not_found(),
    })
}

/// `PUT /api/global-parameters/{name}` with `{"value": ...}`: 201 for a new one, 204 for
/// a change.
pub async fn put_global(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path(name): Path<String>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    global_admin(&user)?;
    let body = object(&raw)?;
    let Some(value) = body.get("value").cloned() else {
        return Err(bad("[{key_missing,value}]"));
    };
    let existed = blocking(move || node.set_global(&name, value)).await?;
    Ok(created_or_not(existed))
}

/// `DELETE /api/global-parameters/{name}`: 204, or 404 if it is not set.
pub async fn delete_global(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    global_admin(&user)?;
    let cleared = blocking(move || node.clear_global(&name)).await?;
    Ok(if cleared {
        StatusCode::NO_CONTENT.into_response()
    } else {
        not_found()
    })
}

/// `GET /api/cluster-name`, for any management user.
pub async fn cluster_name(State(node): State<Arc<Node>>) -> Response {
    axum::Json(json!({"name": node.cluster_name()})).into_response()
}

/// `PUT /api/cluster-name` with `{"name": ...}`: for administrators; clients that
/// connect afterwards see it in connection.start.
pub async fn put_cluster_name(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    raw: Bytes,
) -> Result<Response, ApiError> {
    administrator(&user)?;
    let body = object(&raw)?;
    let name = match body.get("name") {
        Some(Value::String(name)) => name.clone(),
        Some(_) => return Err(bad("name must be a string")),
        None => return Err(bad("[{key_missing,name}]")),
    };
    blocking(move || node.set_global(CLUSTER_NAME, json!(name))).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
