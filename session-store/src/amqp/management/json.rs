//! The management API's JSON, with RabbitMQ's field names so its tools and dashboards
//! read it: `messages_ready`, `message_stats.publish_details.rate`, ...

use std::collections::HashMap;
use std::sync::Arc;

use amq_protocol::types::{AMQPValue, FieldTable};
use serde_json::{Map, Value, json};

use crate::amqp::broker::{Broker, ConnId};
use crate::amqp::node::{ConnInfo, Node};
use crate::amqp::stats::{MessageStats, Rates};

/// The management API version whose shapes these follow.
const MANAGEMENT_VERSION: &str = "3.12.0";
const NODE: &str = "session-store@localhost";

/// `message_stats`: each counter, and its rate under `<name>_details`.
fn message_stats(stats: &MessageStats, rates: &Rates) -> Value {
    let mut out = Map::new();
    for (i, (name, count)) in stats.fields().into_iter().enumerate() {
        out.insert(name.to_string(), json!(count));
        out.insert(format!("{name}_details"), json!({"rate": rates[i]}));
    }
    Value::Object(out)
}

pub fn overview(node: &Node) -> Value {
    let (total, rates) = node.overview();
    json!({
        "management_version": MANAGEMENT_VERSION,
        "product_name": "session-store",
        "product_version": env!("CARGO_PKG_VERSION"),
        "node": NODE,
        "object_totals": {
            "connections": node.connections().len(),
            "channels": total.channels,
            "exchanges": total.exchanges,
            "queues": total.queues,
            "consumers": total.consumers,
        },
        "queue_totals": {
            "messages": total.messages_ready + total.messages_unacknowledged,
            "messages_ready": total.messages_ready,
            "messages_unacknowledged": total.messages_unacknowledged,
        },
        "message_stats": message_stats(&total.stats, &rates),
    })
}

pub fn vhost(node: &Node, vhost: &Broker) -> Value {
    let info = vhost.info();
    json!({
        "name": info.name,
        "description": "",
        "tags": [],
        "tracing": false,
        "messages": info.messages_ready + info.messages_unacknowledged,
        "messages_ready": info.messages_ready,
        "messages_unacknowledged": info.messages_unacknowledged,
        "message_stats": message_stats(&info.stats, &node.vhost_rates(&info.name)),
    })
}

/// Open channels per connection, over the given vhosts.
fn channel_counts(vhosts: &[Arc<Broker>]) -> HashMap<ConnId, usize> {
    let mut counts = HashMap::new();
    for v in vhosts {
        for c in v.channels() {
            *counts.entry(c.conn).or_default() += 1;
        }
    }
    counts
}

fn in_vhosts(c: &ConnInfo, vhosts: &[Arc<Broker>]) -> bool {
    vhosts.iter().any(|v| v.name() == c.vhost)
}

pub fn connections(node: &Node, vhosts: &[Arc<Broker>]) -> Value {
    let counts = channel_counts(vhosts);
    node.connections()
        .iter()
        .filter(|c| in_vhosts(c, vhosts))
        .map(|c| {
            json!({
                "name": c.name(),
                "node": NODE,
                "type": "network",
                "protocol": "AMQP 0-9-1",
                "state": "running",
                "user": c.user,
                "vhost": c.vhost,
                "host": c.local.map(|a| a.ip().to_string()),
                "port": c.local.map(|a| a.port()),
                "peer_host": c.peer.map(|a| a.ip().to_string()),
                "peer_port": c.peer.map(|a| a.port()),
                "channels": counts.get(&c.id).copied().unwrap_or(0),
                "channel_max": c.channel_max,
                "frame_max": c.frame_max,
                "timeout": c.heartbeat,
                "connected_at": c.connected_at,
                "client_properties": {"product": c.client},
            })
        })
        .collect()
}

/// The node's connections by id, to name the channels and consumers on them.
fn connections_by_id(node: &Node) -> HashMap<ConnId, ConnInfo> {
    node.connections().into_iter().map(|c| (c.id, c)).collect()
}

pub fn channels(node: &Node, vhosts: &[Arc<Broker>]) -> Value {
    let conns = connections_by_id(node);
    let mut list = Vec::new();
    for v in vhosts {
        for ch in v.channels() {
            let Some(c) = conns.get(&ch.conn) else {
                continue;
            };
            list.push(json!({
                "name": format!("{} ({})", c.name(), ch.number),
                "number": ch.number,
                "node": NODE,
                "state": "running",
                "user": c.user,
                "vhost": v.name(),
                "connection_details": {
                    "name": c.name(),
                    "peer_host": c.peer.map(|a| a.ip().to_string()),
                    "peer_port": c.peer.map(|a| a.port()),
                },
                "consumer_count": ch.consumers,
                "messages_unacknowledged": ch.messages_unacknowledged,
                "prefetch_count": ch.prefetch_count,
                "global_prefetch_count": ch.global_prefetch_count,
                "transactional": ch.transactional,
            }));
        }
    }
    Value::Array(list)
}

/// `/api/consumers`, as RabbitMQ's: `activity_status` is `up`, or on a single-active-
/// consumer queue `single_active` for the one that receives and `waiting` for the rest.
/// `arguments` shows the consumer's `x-priority` when it has one.
pub fn consumers(node: &Node, vhosts: &[Arc<Broker>]) -> Value {
    let conns = connections_by_id(node);
    let mut list = Vec::new();
    for v in vhosts {
        for c in v.consumers() {
            let Some(conn) = conns.get(&c.conn) else {
                continue;
            };
            let (active, status) = match c.single_active {
                None => (true, "up"),
                Some(true) => (true, "single_active"),
                Some(false) => (false, "waiting"),
            };
            let arguments = if c.priority == 0 {
                json!({})
            } else {
                json!({"x-priority": c.priority})
            };
            list.push(json!({
                "consumer_tag": c.tag,
                "queue": {"name": c.queue, "vhost": v.name()},
                "channel_details": {
                    "name": format!("{} ({})", conn.name(), c.channel),
                    "number": c.channel,
                    "node": NODE,
                    "user": conn.user,
                    "connection_name": conn.name(),
                    "peer_host": conn.peer.map(|a| a.ip().to_string()),
                    "peer_port": conn.peer.map(|a| a.port()),
                },
                "ack_required": c.ack_required,
                "exclusive": c.exclusive,
                "prefetch_count": c.prefetch_count,
                "active": active,
                "activity_status": status,
                "arguments": arguments,
            }));
        }
    }
    Value::Array(list)
}

pub fn exchanges(vhosts: &[Arc<Broker>]) -> Value {
    vhosts
        .iter()
        .flat_map(|v| {
            v.exchanges().into_iter().map(|x| {
                json!({
                    "name": x.name,
                    "vhost": v.name(),
                    "type": x.kind,
                    "durable": x.durable,
                    "auto_delete": x.auto_delete,
                    "internal": x.internal,
                    "arguments": table(&x.arguments),
                })
            })
        })
        .collect()
}

/// The queues of `vhosts`, or only the one called `only`.
pub fn queues(node: &Node, vhosts: &[Arc<Broker>], only: Option<&str>) -> Value {
    vhosts
        .iter()
        .flat_map(|v| {
            v.queues()
                .into_iter()
                .filter(|q| only.is_none_or(|name| q.name == name))
                .map(|q| {
                    let rates = node.queue_rates(v.name(), &q.name);
                    json!({
                        "name": q.name,
                        "vhost": v.name(),
                        "node": NODE,
                        "type": q.kind,
                        "state": "running",
                        "durable": q.durable,
                        "auto_delete": q.auto_delete,
                        "exclusive": q.exclusive,
                        "arguments": table(&q.arguments),
                        "messages": q.messages_ready + q.messages_unacknowledged,
                        "messages_ready": q.messages_ready,
                        "messages_unacknowledged": q.messages_unacknowledged,
                        "message_bytes_ready": q.message_bytes_ready,
                        "consumers": q.consumers,
                        "message_stats": message_stats(&q.stats, &rates),
                    })
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

pub fn bindings(vhosts: &[Arc<Broker>]) -> Value {
    vhosts
        .iter()
        .flat_map(|v| {
            v.bindings().into_iter().map(|b| {
                let properties_key = if b.routing_key.is_empty() {
                    "~".to_string()
                } else {
                    b.routing_key.clone()
                };
                json!({
                    "source": b.source,
                    "vhost": v.name(),
                    "destination": b.destination,
                    "destination_type": b.destination_type,
                    "routing_key": b.routing_key,
                    "arguments": table(&b.arguments),
                    "properties_key": properties_key,
                })
            })
        })
        .collect()
}

/// An AMQP table as JSON, the way RabbitMQ shows arguments.
fn table(t: &FieldTable) -> Value {
    Value::Object(
        t.inner()
            .iter()
            .map(|(k, v)| (k.to_string(), value(v)))
            .collect(),
    )
}

fn value(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::ShortShortInt(n) => json!(n),
        AMQPValue::ShortShortUInt(n) => json!(n),
        AMQPValue::ShortInt(n) => json!(n),
        AMQPValue::ShortUInt(n) => json!(n),
        AMQPValue::LongInt(n) => json!(n),
        AMQPValue::LongUInt(n) => json!(n),
        AMQPValue::LongLongInt(n) => json!(n),
        AMQPValue::Timestamp(n) => json!(n),
        AMQPValue::Float(f) => json!(f),
        AMQPValue::Double(f) => json!(f),
        AMQPValue::DecimalValue(d) => json!(format!("{d:?}")),
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::ByteArray(b) => json!(String::from_utf8_lossy(b.as_slice())),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value).collect()),
        AMQPValue::FieldTable(t) => table(t),
        AMQPValue::Void => Value::Null,
    }
}
