//! The management API's writes, as RabbitMQ's management plugin answers them: declare and
//! delete queues and exchanges, bind and unbind, purge, publish, get. Each goes through
//! the vhost's broker like an AMQP client's method, under the caller's permissions on
//! the vhost (which RabbitMQ requires of administrators too): configure to declare and
//! delete, write and read to bind, write to publish, read to get and purge.
//!
//! Answers: 201 for something new, 204 for something already there or done, 404 for a
//! missing vhost or object, 401 "Access refused." for a permission refusal, 400 with the
//! broker's reason for anything else it refuses.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::protocol::{exchange as amqp_exchange, queue as amqp_queue};
use amq_protocol::types::ShortString;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Caller, not_found};
use crate::amqp::broker::{Broker, ConnId};
use crate::amqp::definitions;
use crate::amqp::error::{AmqpError, code};
use crate::amqp::exchange::{Destination, ExchangeKind};
use crate::amqp::node::Node;
use crate::amqp::permissions::{Perm, Permissions, Resource};
use crate::amqp::queue::Message;
use crate::amqp::users::User;

/// The connection id the API acts under for basic.get (the node numbers client
/// connections from 1; the aliveness test uses channel 0).
const API_CONN: ConnId = 0;
const API_CHANNEL: u16 = 1;

/// One API get at a time: they share the API's channel.
static GETTING: Mutex<()> = Mutex::new(());

/// The vhost's broker and the caller's permissions there; a vhost without permissions
/// for the caller is refused as RabbitMQ refuses it.
fn target(
    node: &Node,
    user: &User,
    vhost: &str,
) -> Result<(Arc<Broker>, Arc<Permissions>), ApiError> {
    let Some(broker) = node.vhost(vhost) else {
        return Err(error(StatusCode::NOT_FOUND, "not_found", "vhost_not_found"));
    };
    match node.users().permissions(&user.name, vhost) {
        Some(perms) => Ok((broker, perms)),
        None => Err(refused()),
    }
}

/// A refused request: its status and the management plugin's `{"error", "reason"}`.
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    /// Text mostly; a term such as `["not_boolean", "yes"]` where RabbitMQ sends one.
    reason: Value,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.kind, "reason": self.reason});
        (self.status, axum::Json(body)).into_response()
    }
}

pub(super) fn error(status: StatusCode, kind: &'static str, reason: &str) -> ApiError {
    ApiError {
        status,
        kind,
        reason: Value::from(reason),
    }
}

/// A 400 for a field whose value is not of its type, as the management plugin words it:
/// `{"error": "bad_request", "reason": ["not_boolean", VALUE]}`.
pub(super) fn not_a(what: &'static str, value: &Value) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        kind: "bad_request",
        reason: json!([what, value]),
    }
}

/// A boolean field as the management plugin reads one: JSON `true`/`false` or the strings
/// `"true"`/`"false"`, which is what `rabbitmqadmin` sends.
fn boolean(value: Option<&Value>, default: bool) -> Result<bool, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" => Ok(true),
        Some(Value::String(s)) if s == "false" => Ok(false),
        Some(other) => Err(not_a("not_boolean", other)),
    }
}

/// A count as the management plugin reads one: a JSON number or a string of digits.
fn count(value: Option<&Value>, default: usize) -> Result<usize, ApiError> {
    let parsed = match value {
        None | Some(Value::Null) => return Ok(default),
        Some(Value::Number(n)) => n.as_u64().and_then(|n| usize::try_from(n).ok()),
        Some(Value::String(s)) => s.parse().ok(),
        Some(_) => None,
    };
    parsed.ok_or_else(|| not_a("not_integer", value.unwrap_or(&Value::Null)))
}

fn refused() -> ApiError {
    error(
        StatusCode::UNAUTHORIZED,
        "not_authorised",
        "Access refused.",
    )
}

/// The broker's refusal as the management plugin reports it.
fn refusal(e: &AmqpError) -> ApiError {
    match e.code {
        code::ACCESS_REFUSED => refused(),
        code::NOT_FOUND => error(
            StatusCode::NOT_FOUND,
            "not_found",
            e.text.strip_prefix("NOT_FOUND - ").unwrap_or(&e.text),
        ),
        _ => {
            // "PRECONDITION_FAILED - inequivalent arg …" → "inequivalent arg …".
            let reason = e.text.split_once(" - ").map_or(e.text.as_str(), |(_, r)| r);
            error(StatusCode::BAD_REQUEST, "bad_request", reason)
        }
    }
}

fn allow(perms: &Permissions, perm: Perm, resource: Resource, name: &str) -> Result<(), ApiError> {
    if perms.allows(perm, resource, name) {
        Ok(())
    } else {
        Err(refused())
    }
}

/// The request body as JSON of type `T`; an empty body reads as `{}`.
fn body<T: for<'de> Deserialize<'de>>(bytes: &Bytes) -> Result<T, ApiError> {
    let bytes: &[u8] = if bytes.is_empty() { b"{}" } else { bytes };
    serde_json::from_slice(bytes)
        .map_err(|_| error(StatusCode::BAD_REQUEST, "bad_request", "not_json"))
}

/// 204 when the thing was already there (an equivalent redeclaration), 201 when new.
pub(super) fn created_or_not(existed: bool) -> Response {
    if existed {
        StatusCode::NO_CONTENT.into_response()
    } else {
        StatusCode::CREATED.into_response()
    }
}

/// An AMQP short string from request text; longer than the 255 bytes AMQP allows is a
/// bad request, not a truncation.
fn short(what: &str, text: &str) -> Result<ShortString, ApiError> {
    if text.len() > 255 {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("{what} longer than 255 bytes"),
        ));
    }
    Ok(ShortString::from(text))
}

fn flag(query: &HashMap<String, String>, name: &str) -> bool {
    query.get(name).is_some_and(|v| v == "true")
}

#[derive(Deserialize)]
pub struct QueueBody {
    durable: Option<Value>,
    auto_delete: Option<Value>,
    #[serde(default)]
    arguments: Map<String, Value>,
}

/// `PUT /api/queues/{vhost}/{name}`.
pub async fn put_queue(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path((vhost, name)): Path<(String, String)>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    let (broker, perms) = target(&node, &user, &vhost)?;
    let b: QueueBody = body(&raw)?;
    let (durable, auto_delete) = (
        boolean(b.durable.as_ref(), false)?,
        boolean(b.auto_delete.as_ref(), false)?,
    );
    let arguments = definitions::table(&b.arguments);
    let existed = broker.queues().iter().any(|q| q.name == name);
    let declare = amqp_queue::Declare {
        queue: short("queue name", &name)?,
        passive: false,
        durable,
        exclusive: false,
        auto_delete,
        nowait: false,
        arguments: arguments.clone(),
    };
    let authorize = |queue: &str| perms.check_declare(queue, &arguments, &vhost, &user.name);
    broker
        .queue_declare(API_CONN, &declare, node.max_queues(&vhost), authorize)
        .map_err(|e| refusal(&e))?;
    Ok(created_or_not(existed))
}

/// `DELETE /api/queues/{vhost}/{name}`, with `if-empty` and `if-unused` as query flags.
pub async fn delete_queue(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (broker, perms) = target(&node, &user, &vhost)?;
    allow(&perms, Perm::Configure, Resource::Queue, &name)?;
    if !broker.queues().iter().any(|q| q.name == name) {
        return Ok(not_found());
    }
    let delete = amqp_queue::Delete {
        queue: short("queue name", &name)?,
        if_unused: flag(&query, "if-unused"),
        if_empty: flag(&query, "if-empty"),
        nowait: false,
    };
    broker
        .queue_delete(API_CONN, &delete)
        .map_err(|e| refusal(&e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /api/queues/{vhost}/{name}/contents`: purge.
pub async fn purge_queue(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (broker, perms) = target(&node, &user, &vhost)?;
    allow(&perms, Perm::Read, Resource::Queue, &name)?;
    broker
        .queue_purge(API_CONN, &name)
        .map_err(|e| refusal(&e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
pub struct ExchangeBody {
    #[serde(rename = "type", default = "direct")]
    kind: String,
    durable: Option<Value>,
    auto_delete: Option<Value>,
    internal: Option<Value>,
    #[serde(default)]
    arguments: Map<String, Value>,
}

fn direct() -> String {
    "direct".to_string()
}

/// `PUT /api/exchanges/{vhost}/{name}`.
pub async fn put_exchange(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path((vhost, name)): Path<(String, String)>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    let (broker, perms) = target(&node, &user, &vhost)?;
    let b: ExchangeBody = body(&raw)?;
    let name = super::exchange_name(&name);
    allow(&perms, Perm::Configure, Resource::Exchange, name)?;
    let existed = broker.exchanges().iter().any(|x| x.name == name);
    let declare = amqp_exchange::Declare {
        exchange: short("exchange name", name)?,
        kind: short("exchange type", &b.kind)?,
        passive: false,
        durable: boolean(b.durable.as_ref(), false)?,
        auto_delete: boolean(b.auto_delete.as_ref(), false)?,
        internal: boolean(b.internal.as_ref(), false)?,
        nowait: false,
        arguments: definitions::table(&b.arguments),
    };
    broker.exchange_declare(&declare).map_err(|e| refusal(&e))?;
    Ok(created_or_not(existed))
}

/// `DELETE /api/exchanges/{vhost}/{name}`, with `if-unused` as a query flag.
pub async fn delete_exchange(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (broker, perms) = target(&node, &user, &vhost)?;
    let name = super::exchange_name(&name);
    allow(&perms, Perm::Configure, Resource::Exchange, name)?;
    if !broker.exchanges().iter().any(|x| x.name == name) {
        return Ok(not_found());
    }
    let delete = amqp_exchange::Delete {
        exchange: short("exchange name", name)?,
        if_unused: flag(&query, "if-unused"),
        nowait: false,
    };
    broker.exchange_delete(&delete).map_err(|e| refusal(&e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
pub struct BindingBody {
    #[serde(default)]
    routing_key: String,
    #[serde(default)]
    arguments: Map<String, Value>,
}

/// `POST /api/bindings/{vhost}/e/{source}/q/{queue}`: 201 with the new binding's
/// location (queue and properties key), as RabbitMQ answers.
pub async fn bind_queue(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path((vhost, source, queue)): Path<(String, String, String)>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    bind(
        &node,
        &user,
        &vhost,
        &source,
        Destination::Queue(queue),
        &raw,
    )
}

/// `POST /api/bindings/{vhost}/e/{source}/e/{destination}`: exchange to exchange.
pub async fn bind_exchange(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path((vhost, source, destination)): Path<(String, String, String)>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    let destination = super::exchange_name(&destination).to_string();
    bind(
        &node,
        &user,
        &vhost,
        &source,
        Destination::Exchange(destination),
        &raw,
    )
}

/// `DELETE /api/bindings/{vhost}/e/{source}/q/{queue}/{props}`: the binding whose
/// properties key is `props`.
pub async fn unbind_queue(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path((vhost, source, queue, props)): Path<(String, String, String, String)>,
) -> Result<Response, ApiError> {
    unbind(
        &node,
        &user,
        &vhost,
        &source,
        Destination::Queue(queue),
        &props,
    )
}

/// `DELETE /api/bindings/{vhost}/e/{source}/e/{destination}/{props}`.
pub async fn unbind_exchange(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path((vhost, source, destination, props)): Path<(String, String, String, String)>,
) -> Result<Response, ApiError> {
    let destination = super::exchange_name(&destination).to_string();
    unbind(
        &node,
        &user,
        &vhost,
        &source,
        Destination::Exchange(destination),
        &props,
    )
}

/// Binding needs write on the destination and read on the source, as over AMQP.
fn allow_binding(
    perms: &Permissions,
    source: &str,
    destination: &Destination,
) -> Result<(), ApiError> {
    match destination {
        Destination::Queue(q) => allow(perms, Perm::Write, Resource::Queue, q)?,
        Destination::Exchange(x) => allow(perms, Perm::Write, Resource::Exchange, x)?,
    }
    allow(perms, Perm::Read, Resource::Exchange, source)
}

/// RabbitMQ's topic authorisation, which the management plugin's requests meet on its
/// internal channel as AMQP clients do: on a topic exchange where the caller has a topic
/// permission, that permission governs the routing key.
fn allow_topic(
    node: &Node,
    broker: &Broker,
    user: &User,
    perm: Perm,
    exchange: &str,
    key: &str,
) -> Result<(), AmqpError> {
    let rules = node.users().topic_permissions(&user.name, broker.name());
    match rules.iter().find(|rule| rule.exchange == exchange) {
        Some(rule) if broker.exchange_kind(exchange) == Some(ExchangeKind::Topic) => {
            rule.check(perm, key, broker.name(), &user.name)
        }
        _ => Ok(()),
    }
}

fn destination_name(destination: &Destination) -> (&str, &'static str) {
    match destination {
        Destination::Queue(q) => (q, "queue"),
        Destination::Exchange(x) => (x, "exchange"),
    }
}

fn bind(
    node: &Node,
    user: &User,
    vhost: &str,
    source: &str,
    destination: Destination,
    raw: &Bytes,
) -> Result<Response, ApiError> {
    let (broker, perms) = target(node, user, vhost)?;
    let b: BindingBody = body(raw)?;
    let source = super::exchange_name(source);
    allow_binding(&perms, source, &destination)?;
    short("routing key", &b.routing_key)?;
    allow_topic(node, &broker, user, Perm::Read, source, &b.routing_key).map_err(|_| refused())?;
    let arguments = definitions::table(&b.arguments);
    let (name, _) = destination_name(&destination);
    let name = name.to_string();
    broker
        .bind(
            API_CONN,
            source,
            destination,
            &b.routing_key,
            &arguments,
            false,
        )
        .map_err(|e| refusal(&e))?;
    let key = super::json::properties_key(&b.routing_key, &arguments);
    let location = format!("{name}/{}", utf8_percent_encode(&key));
    Ok((StatusCode::CREATED, [(header::LOCATION, location)]).into_response())
}

fn unbind(
    node: &Node,
    user: &User,
    vhost: &str,
    source: &str,
    destination: Destination,
    props: &str,
) -> Result<Response, ApiError> {
    let (broker, perms) = target(node, user, vhost)?;
    let source = super::exchange_name(source);
    allow_binding(&perms, source, &destination)?;
    let (name, kind) = destination_name(&destination);
    // The path's last segment arrives percent-decoded: `a.%23` names the key `a.#`,
    // whose properties key is `a.%23` again.
    let found = broker.bindings().into_iter().find(|b| {
        let key = super::json::properties_key(&b.routing_key, &b.arguments);
        b.source == source
            && b.destination == name
            && b.destination_type == kind
            && (key == props || key == super::json::properties_key(props, &b.arguments))
    });
    let Some(b) = found else {
        return Ok(not_found());
    };
    allow_topic(node, &broker, user, Perm::Read, source, &b.routing_key).map_err(|_| refused())?;
    broker
        .bind(
            API_CONN,
            source,
            destination,
            &b.routing_key,
            &b.arguments,
            true,
        )
        .map_err(|e| refusal(&e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
pub struct PublishBody {
    #[serde(default)]
    properties: Map<String, Value>,
    #[serde(default)]
    routing_key: String,
    #[serde(default)]
    payload: String,
    #[serde(default = "string_encoding")]
    payload_encoding: String,
}

fn string_encoding() -> String {
    "string".to_string()
}

/// `POST /api/exchanges/{vhost}/{name}/publish`: `{"routed": bool}`.
pub async fn publish(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path((vhost, name)): Path<(String, String)>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    let (broker, perms) = target(&node, &user, &vhost)?;
    let b: PublishBody = body(&raw)?;
    let name = super::exchange_name(&name);
    allow(&perms, Perm::Write, Resource::Exchange, name)?;
    let payload = match b.payload_encoding.as_str() {
        "string" => Bytes::from(b.payload.into_bytes()),
        "base64" => match base64::engine::general_purpose::STANDARD.decode(&b.payload) {
            Ok(bytes) => Bytes::from(bytes),
            Err(_) => return Err(error(StatusCode::BAD_REQUEST, "bad_request", "not_base64")),
        },
        _ => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "invalid_encoding",
            ));
        }
    };
    let properties = properties(&b.properties, &user.name)
        .map_err(|reason| error(StatusCode::BAD_REQUEST, "bad_request", &reason))?;
    // RabbitMQ answers a refused or failed publish with the AMQP code in front.
    let amqp_refusal = |e: AmqpError| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("{} {}", e.code, e.text),
        )
    };
    allow_topic(&node, &broker, &user, Perm::Write, name, &b.routing_key).map_err(amqp_refusal)?;
    let message = Message::new(
        short("exchange name", name)?,
        short("routing key", &b.routing_key)?,
        properties,
        payload,
    );
    let published = broker.publish(message, None).map_err(amqp_refusal)?;
    Ok(axum::Json(json!({"routed": published.routed})).into_response())
}

/// The message properties of a publish request, in RabbitMQ's JSON names.
fn properties(json: &Map<String, Value>, user: &str) -> Result<AMQPProperties, String> {
    let mut p = AMQPProperties::default();
    let text = |key: &str| -> Result<Option<ShortString>, String> {
        match json.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.len() <= 255 => Ok(Some(ShortString::from(s.as_str()))),
            Some(_) => Err(format!("invalid property '{key}'")),
        }
    };
    let number = |key: &str| -> Result<Option<u64>, String> {
        match json.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("invalid property '{key}'")),
        }
    };
    if let Some(v) = text("content_type")? {
        p = p.with_content_type(v);
    }
    if let Some(v) = text("content_encoding")? {
        p = p.with_content_encoding(v);
    }
    if let Some(v) = number("delivery_mode")? {
        p = p.with_delivery_mode(u8::try_from(v).map_err(|_| "invalid property 'delivery_mode'")?);
    }
    if let Some(v) = number("priority")? {
        p = p.with_priority(u8::try_from(v).map_err(|_| "invalid property 'priority'")?);
    }
    if let Some(v) = text("correlation_id")? {
        p = p.with_correlation_id(v);
    }
    if let Some(v) = text("reply_to")? {
        p = p.with_reply_to(v);
    }
    if let Some(v) = text("expiration")? {
        p = p.with_expiration(v);
    }
    if let Some(v) = text("message_id")? {
        p = p.with_message_id(v);
    }
    if let Some(v) = number("timestamp")? {
        p = p.with_timestamp(v);
    }
    if let Some(v) = text("type")? {
        p = p.with_type(v);
    }
    if let Some(v) = text("user_id")? {
        if v.as_str() != user {
            return Err(format!(
                "user_id property set to '{v}' but authenticated user was '{user}'"
            ));
        }
        p = p.with_user_id(v);
    }
    if let Some(v) = text("app_id")? {
        p = p.with_app_id(v);
    }
    match json.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(h)) => p = p.with_headers(definitions::table(h)),
        Some(_) => return Err("invalid property 'headers'".to_string()),
    }
    Ok(p)
}

#[derive(Deserialize)]
pub struct GetBody {
    count: Option<Value>,
    ackmode: String,
    #[serde(default = "auto")]
    encoding: String,
    truncate: Option<Value>,
}

fn auto() -> String {
    "auto".to_string()
}

/// Most messages one get request takes.
const MAX_GET: usize = 1000;

/// `POST /api/queues/{vhost}/{name}/get`: up to `count` messages, acked (gone) or given
/// back (`ack_requeue_true`, `reject_requeue_true`: requeued, marked redelivered) or
/// rejected without requeue (dead-lettered where the queue says so).
pub async fn get_messages(
    State(node): State<Arc<Node>>,
    axum::Extension(user): Caller,
    Path((vhost, name)): Path<(String, String)>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    let (broker, perms) = target(&node, &user, &vhost)?;
    let b: GetBody = body(&raw)?;
    let wanted = count(b.count.as_ref(), 1)?;
    let truncate = match b.truncate.as_ref() {
        None | Some(Value::Null) => None,
        given => Some(count(given, 0)?),
    };
    allow(&perms, Perm::Read, Resource::Queue, &name)?;
    // (manual ack, settle with `Some(requeue)` as a reject)
    let (manual, reject) = match b.ackmode.as_str() {
        "ack_requeue_false" => (false, None),
        "ack_requeue_true" | "reject_requeue_true" => (true, Some(true)),
        "reject_requeue_false" => (true, Some(false)),
        _ => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "invalid_ackmode",
            ));
        }
    };
    let base64 = match b.encoding.as_str() {
        "auto" => false,
        "base64" => true,
        _ => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "invalid_encoding",
            ));
        }
    };
    let _one_at_a_time = GETTING.lock().unwrap_or_else(PoisonError::into_inner);
    broker.open_channel(API_CONN, API_CHANNEL);
    let mut out = Vec::new();
    let mut failed = None;
    for _ in 0..wanted.min(MAX_GET) {
        match broker.get(API_CONN, API_CHANNEL, &name, !manual) {
            Ok(Some(got)) => {
                out.push(message_json(
                    &got.message,
                    got.redelivered,
                    got.message_count,
                    base64,
                    truncate,
                ));
                if let Some(requeue) = reject
                    && !requeue
                    && let Err(e) =
                        broker.ack(API_CONN, API_CHANNEL, got.delivery_tag, false, Some(false))
                {
                    failed = Some(e);
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    // Closing the channel gives back whatever it still holds.
    broker.close_channel(API_CONN, API_CHANNEL);
    match failed {
        Some(e) => Err(refusal(&e)),
        None => Ok(axum::Json(Value::Array(out)).into_response()),
    }
}

/// A fetched message as the management plugin shows it: the payload as text when it is
/// UTF-8 (unless base64 was asked for), else base64.
fn message_json(
    message: &Message,
    redelivered: bool,
    message_count: u32,
    base64: bool,
    truncate: Option<usize>,
) -> Value {
    let body = &message.body[..truncate.unwrap_or(usize::MAX).min(message.body.len())];
    let (payload, encoding) = match std::str::from_utf8(body) {
        Ok(text) if !base64 => (text.to_string(), "string"),
        _ => (
            base64::engine::general_purpose::STANDARD.encode(body),
            "base64",
        ),
    };
    json!({
        "payload_bytes": message.body.len(),
        "redelivered": redelivered,
        "exchange": message.exchange.as_str(),
        "routing_key": message.routing_key.as_str(),
        "message_count": message_count,
        "properties": super::json::properties(message.properties()),
        "payload": payload,
        "payload_encoding": encoding,
    })
}

/// Percent-encodes what RabbitMQ's Location header escapes in a properties key.
fn utf8_percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b'~' => {
                out.push(char::from(byte));
            }
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}
