//! RabbitMQ's feature flags, as a RabbitMQ 3.10 node lists them at `/api/feature-flags`
//! for tools and the management UI to learn what a node can do. Every 3.10 flag is
//! enabled here, as on a node first started at 3.10: this broker has what each one
//! stands for (or, for mirrored queues, nothing it would change), so enabling one again
//! changes nothing and any other name is refused, as RabbitMQ refuses it.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Caller, admin_only, not_authorized};

/// Name, description and providing application of each of RabbitMQ 3.10's flags.
const FLAGS: [(&str, &str, &str); 9] = [
    (
        "classic_mirrored_queue_version",
        "Support setting version for classic mirrored queues",
        "rabbit",
    ),
    (
        "drop_unroutable_metric",
        "Count unroutable publishes to be dropped in stats",
        "rabbitmq_management_agent",
    ),
    (
        "empty_basic_get_metric",
        "Count AMQP `basic.get` on empty queues in stats",
        "rabbitmq_management_agent",
    ),
    (
        "implicit_default_bindings",
        "Default bindings are now implicit, instead of being stored in the database",
        "rabbit",
    ),
    (
        "maintenance_mode_status",
        "Maintenance mode status",
        "rabbit",
    ),
    ("quorum_queue", "Support queues of type `quorum`", "rabbit"),
    ("stream_queue", "Support queues of type `stream`", "rabbit"),
    (
        "user_limits",
        "Configure connection and channel limits for a user",
        "rabbit",
    ),
    (
        "virtual_host_metadata",
        "Virtual host metadata (description, tags, etc)",
        "rabbit",
    ),
];

/// `GET /api/feature-flags`, for administrators.
pub async fn all(axum::Extension(user): Caller) -> Response {
    admin_only(&user, || {
        FLAGS
            .iter()
            .map(|(name, desc, provided_by)| {
                json!({
                    "name": name,
                    "desc": desc,
                    "doc_url": "",
                    "state": "enabled",
                    "stability": "stable",
                    "provided_by": provided_by,
                })
            })
            .collect::<Vec<Value>>()
            .into()
    })
}

/// `PUT /api/feature-flags/NAME/enable`: 204 for a flag this node has (already
/// enabled), 400 `unsupported` for any other name, as RabbitMQ answers.
pub async fn enable(axum::Extension(user): Caller, Path(name): Path<String>) -> Response {
    if !user.has_tag("administrator") {
        return not_authorized("Not administrator user");
    }
    if FLAGS.iter().any(|(known, _, _)| *known == name) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "bad_request", "reason": "unsupported"})),
        )
            .into_response()
    }
}
