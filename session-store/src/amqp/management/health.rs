//! The health checks Kubernetes probes and monitors call, answered as RabbitMQ's are:
//! `{"status":"ok"}`, or HTTP 503 with `"status":"failed"`, the reason and what the check
//! found. This node is a cluster of one, so the checks about quorum and mirrors pass as
//! RabbitMQ's do on such a node.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::json::NODE;
use super::{memory_alarm, not_found};
use crate::amqp::node::{Node, now_millis};
use crate::amqp::tls;

/// A health check that passed.
pub async fn status_ok() -> axum::Json<Value> {
    axum::Json(json!({"status": "ok"}))
}

/// `/api/healthchecks/node/{node}`: this node's check, 404 for any other node.
pub async fn node_named(Path(name): Path<String>) -> Response {
    if name == NODE {
        status_ok().await.into_response()
    } else {
        not_found()
    }
}

/// A health check that failed: 503 with RabbitMQ's `status`, `reason` and whatever else
/// the check reports.
pub fn check_failed(reason: &str, extra: Value) -> Response {
    let mut body = json!({"status": "failed", "reason": reason});
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

/// RabbitMQ's alarm check: 503 with each alarm's node and resource while one is on.
fn alarm_check(node: &Node, reason: &str) -> Response {
    if memory_alarm(node) {
        check_failed(
            reason,
            json!({"alarms": [{"node": NODE, "resource": "memory"}]}),
        )
    } else {
        axum::Json(json!({"status": "ok"})).into_response()
    }
}

/// `/api/health/checks/alarms`; with one node, the cluster's alarms are the node's.
pub async fn alarms(State(node): State<Arc<Node>>) -> Response {
    alarm_check(&node, "There are alarms in effect in the cluster")
}

pub async fn local_alarms(State(node): State<Arc<Node>>) -> Response {
    alarm_check(&node, "There are alarms in effect on the node")
}

/// Whether this node listens on the port: its AMQP listener or this API's, as RabbitMQ
/// counts all of its listeners.
pub async fn port_listener(State(node): State<Arc<Node>>, Path(port): Path<String>) -> Response {
    let Ok(port) = port.parse::<i64>() else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "bad_request", "reason": "Invalid port"})),
        )
            .into_response();
    };
    let ports: Vec<u16> = node.listeners().iter().map(|(_, a)| a.port()).collect();
    if ports.iter().any(|p| i64::from(*p) == port) {
        axum::Json(json!({"status": "ok", "port": port})).into_response()
    } else {
        check_failed(
            "No active listener",
            json!({"missing": port, "ports": ports}),
        )
    }
}

/// `/api/health/checks/protocol-listener/{protocol}`: whether the node listens for the
/// protocol, under any of the names RabbitMQ takes for it (`amqp091`, `management`, ...).
pub async fn protocol_listener(
    State(node): State<Arc<Node>>,
    Path(protocol): Path<String>,
) -> Response {
    let protocol = canonical_protocol(&protocol);
    let protocols: Vec<&str> = node.listeners().iter().map(|(p, _)| *p).collect();
    if protocols.contains(&protocol.as_str()) {
        axum::Json(json!({"status": "ok", "protocol": protocol})).into_response()
    } else {
        check_failed(
            "No active listener",
            json!({"missing": protocol, "protocols": protocols}),
        )
    }
}

/// The listener name RabbitMQ's check compares for a protocol named `given`; names it
/// does not know are compared as given, lower-cased.
fn canonical_protocol(given: &str) -> String {
    let given = given.to_lowercase();
    let name = match given.as_str() {
        "amqp091" | "amqp0.9.1" | "amqp0-9-1" | "amqp0_9_1" | "amqp10" | "amqp1.0" | "amqp1-0"
        | "amqp1_0" => "amqp",
        "amqps" => "amqp/ssl",
        "http1" | "http1.1" | "http_api" | "management" | "management_ui" | "ui" => "http",
        "cli" | "distribution" => "clustering",
        other => other,
    };
    name.to_string()
}

/// `node-is-quorum-critical` and `node-is-mirror-sync-critical`: a single node can be
/// stopped without costing another node a quorum or a mirror.
pub async fn single_node() -> axum::Json<Value> {
    axum::Json(json!({"status": "ok", "reason": "single node cluster"}))
}

/// `/api/health/checks/certificate-expiration/{within}/{unit}`: fails, naming the
/// listener and the dates, when a certificate of the amqps listener (its own, or a CA it
/// checks clients against) expires within the period, as RabbitMQ's does.
pub async fn certificate_expiration(
    State(node): State<Arc<Node>>,
    Path((within, unit)): Path<(String, String)>,
) -> Response {
    let bad = |reason: &str| {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "bad_request", "reason": reason})),
        )
            .into_response()
    };
    let Ok(within) = within.parse::<i64>() else {
        return bad("Invalid expiration value.");
    };
    let unit = unit.to_lowercase();
    if !["days", "weeks", "months", "years"].contains(&unit.as_str()) {
        return bad("Time unit not recognised. Supported units: days, weeks, months, years.");
    }
    let Some((addr, files)) = node.tls_listener() else {
        return status_ok().await.into_response();
    };
    let now = i64::try_from(now_millis() / 1000).unwrap_or(i64::MAX);
    // Past the calendar's reach every certificate expires within the period.
    let deadline = tls::later_by(now, within, &unit).unwrap_or(i64::MAX);
    let expiring = |dates: &[i64]| -> Vec<String> {
        dates
            .iter()
            .filter(|&&at| at < deadline)
            .map(|&at| tls::erlang_datetime(at))
            .collect()
    };
    let (own, cas) = (
        expiring(&files.certfile_expiry),
        expiring(&files.cacertfile_expiry),
    );
    if own.is_empty() && cas.is_empty() {
        return status_ok().await.into_response();
    }
    let mut listener = json!({
        "node": NODE,
        "protocol": "amqp/ssl",
        "interface": addr.ip().to_string(),
        "port": addr.port(),
        "certfile": files.certfile.display().to_string(),
        "certfile_expires_on": own,
    });
    if let Some(ca) = &files.cacertfile {
        listener["cacertfile"] = json!(ca.display().to_string());
        listener["cacertfile_expires_on"] = json!(cas);
    }
    check_failed("Certificates expiring", json!({"expired": [listener]}))
}
