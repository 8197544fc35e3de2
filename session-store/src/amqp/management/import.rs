//! `POST /api/definitions[/VHOST]`: imports a definitions file over what the broker has,
//! as `rabbitmqadmin [-V VHOST] import` and provisioning pipelines send one (a `rabbitmqctl
//! export_definitions` file, or this API's own `GET /api/definitions`). For
//! administrators; 204 once applied and kept on disk, 400 with RabbitMQ's reason for a
//! file it would refuse.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;

use super::Caller;
use super::admin::{administrator, bad, blocking};
use super::write::{ApiError, error, not_a};
use crate::amqp::definitions::{Definitions, ImportError};
use crate::amqp::node::{Node, NodeError};

pub async fn definitions(
    State(node): State<Arc<Node>>,
    axum::Extension(caller): Caller,
    raw: Bytes,
) -> Result<Response, ApiError> {
    administrator(&caller)?;
    let text = std::str::from_utf8(&raw).map_err(|_| bad("failed_to_parse_json"))?;
    let parsed = Definitions::parse_import(text, &node.vhost_names()).map_err(refusal)?;
    import(node, parsed, caller.name.clone()).await
}

/// `POST /api/definitions/{vhost}`: the file's policies, vhost limits, exchanges, queues
/// and bindings, into that vhost (RabbitMQ's import of one vhost: users and permissions
/// are not taken).
pub async fn vhost_definitions(
    State(node): State<Arc<Node>>,
    axum::Extension(caller): Caller,
    Path(vhost): Path<String>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    administrator(&caller)?;
    if node.vhost(&vhost).is_none() {
        return Err(error(StatusCode::NOT_FOUND, "not_found", "vhost_not_found"));
    }
    let text = std::str::from_utf8(&raw).map_err(|_| bad("failed_to_parse_json"))?;
    let parsed = Definitions::parse_vhost_import(text, &vhost).map_err(refusal)?;
    import(node, parsed, caller.name.clone()).await
}

fn refusal(e: ImportError) -> ApiError {
    match e {
        ImportError::NotJson => bad("failed_to_parse_json"),
        ImportError::NoSuchVhost(vhost) => not_a("no_such_vhost", &Value::from(vhost)),
        ImportError::Invalid(problem) => bad(&problem),
    }
}

async fn import(
    node: Arc<Node>,
    parsed: Definitions,
    creator: String,
) -> Result<Response, ApiError> {
    for what in &parsed.ignored {
        tracing::warn!(
            "imported definitions: {what} not applied: this broker does not support them"
        );
    }
    // A disk failure is the 500 `blocking` makes of it; a file the broker refuses, a 400.
    let imported = blocking(move || match node.import(&parsed, &creator) {
        Ok(()) => Ok(Ok(())),
        Err(NodeError::Definitions(e)) => Ok(Err(e)),
        Err(NodeError::Store(e)) => Err(e),
    })
    .await?;
    imported.map_err(|e| bad(&e.to_string()))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
