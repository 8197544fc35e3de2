//! The management API's JSON, with RabbitMQ's field names so its tools and dashboards
//! read it: `messages_ready`, `message_stats.publish_details.rate`, ...

use std::collections::HashMap;
use std::sync::Arc;

use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::types::{AMQPValue, FieldTable};
use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::depths::Depths;
use crate::amqp::broker::{Broker, ConnId};
use crate::amqp::churn::{self, Churn};
use crate::amqp::definitions;
use crate::amqp::node::{ConnInfo, NODE_NAME, Node};
use crate::amqp::policy::{self, Kind};
use crate::amqp::stats::{DepthRates, MessageStats, Rates};
use crate::amqp::tls::TlsInfo;
use crate::amqp::users::{User, Users};

/// The management API version whose shapes these follow; also the `rabbitmq_version`
/// reported, so tools that branch on the version see one story.
pub const MANAGEMENT_VERSION: &str = "3.12.0";
/// The node name every object reports (there is one node, no cluster).
pub const NODE: &str = NODE_NAME;

/// Counters RabbitMQ reports for channels, exchanges, vhosts and the node but not for
/// queues: publisher confirms and unroutable messages never concern a queue.
const NOT_PER_QUEUE: [&str; 3] = ["confirm", "return_unroutable", "drop_unroutable"];

/// `message_stats`: each counter but those in `skip`, and its rate under
/// `<name>_details`.
fn message_stats(stats: &MessageStats, rates: &Rates, skip: &[&str]) -> Value {
    let mut out = Map::new();
    for (i, (name, count)) in stats.fields().into_iter().enumerate() {
        if skip.contains(&name) {
            continue;
        }
        out.insert(name.to_string(), json!(count));
        out.insert(format!("{name}_details"), json!({"rate": rates[i]}));
    }
    Value::Object(out)
}

/// The `*_details` of queue lengths: `messages_details`, `messages_ready_details` and
/// `messages_unacknowledged_details`, added to `out`.
fn depth_details(out: &mut Value, rates: DepthRates) {
    if let Value::Object(map) = out {
        for (name, rate) in [
            "messages_details",
            "messages_ready_details",
            "messages_unacknowledged_details",
        ]
        .into_iter()
        .zip(rates)
        {
            map.insert(name.to_string(), json!({"rate": rate}));
        }
    }
}

/// RabbitMQ's exchange types and their descriptions, as `/api/overview` lists them.
const EXCHANGE_TYPES: [(&str, &str); 4] = [
    (
        "direct",
        "AMQP direct exchange, as per the AMQP specification",
    ),
    (
        "fanout",
        "AMQP fanout exchange, as per the AMQP specification",
    ),
    (
        "headers",
        "AMQP headers exchange, as per the AMQP specification",
    ),
    (
        "topic",
        "AMQP topic exchange, as per the AMQP specification",
    ),
];

/// `/api/overview`.
fn exchange_types() -> Vec<Value> {
    EXCHANGE_TYPES
        .iter()
        .map(|(name, description)| {
            json!({"name": name, "description": description, "enabled": true})
        })
        .collect()
}

pub fn overview(node: &Node, depths: &Depths) -> Value {
    let (total, rates) = node.overview();
    let listeners: Vec<Value> = node
        .listeners()
        .into_iter()
        .map(|(protocol, a)| {
            json!({
                "node": NODE,
                "protocol": protocol,
                "ip_address": a.ip().to_string(),
                "port": a.port(),
            })
        })
        .collect();
    let exchange_types = exchange_types();
    let mut queue_totals = json!({
        "messages": total.messages_ready + total.messages_unacknowledged,
        "messages_ready": total.messages_ready,
        "messages_unacknowledged": total.messages_unacknowledged,
    });
    depth_details(&mut queue_totals, depths.overview());
    json!({
        "management_version": MANAGEMENT_VERSION,
        "rabbitmq_version": MANAGEMENT_VERSION,
        // Rates come from samples of the counters, as in RabbitMQ's basic mode.
        "rates_mode": "basic",
        "product_name": "session-store",
        "product_version": env!("CARGO_PKG_VERSION"),
        "node": NODE,
        "cluster_name": node.cluster_name(),
        "listeners": listeners,
        "exchange_types": exchange_types,
        "object_totals": {
            "connections": node.connections().len(),
            "channels": total.channels,
            "exchanges": total.exchanges,
            "queues": total.queues,
            "consumers": total.consumers,
        },
        "queue_totals": queue_totals,
        "message_stats": message_stats(&total.stats, &rates, &[]),
        "churn_rates": churn_rates(node.churn()),
    })
}

/// The overview's `churn_rates`: each count since the start and its rate.
fn churn_rates(churn: &Churn) -> Value {
    let mut out = serde_json::Map::new();
    for event in churn::Event::ALL {
        let name = event.overview_name();
        out.insert(name.to_string(), json!(churn.total(event)));
        out.insert(
            format!("{name}_details"),
            json!({"rate": churn.rate(event)}),
        );
    }
    Value::Object(out)
}

pub fn vhost(node: &Node, vhost: &Broker, depths: &Depths) -> Value {
    let info = vhost.info();
    let mut out = json!({
        "name": info.name,
        "tracing": vhost.tracing(),
        "messages": info.messages_ready + info.messages_unacknowledged,
        "messages_ready": info.messages_ready,
        "messages_unacknowledged": info.messages_unacknowledged,
        "message_stats": message_stats(&info.stats, &node.vhost_rates(&info.name), &[]),
    });
    if let Value::Object(fields) = &mut out {
        fields.extend(vhost.meta().json_fields());
    }
    depth_details(&mut out, depths.vhost(&info.name));
    out
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
            let mut out = json!({
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
                "auth_mechanism": c.mechanism,
            });
            tls_fields(&mut out, c.tls.as_deref());
            // RabbitMQ lists the name a client gave only when it gave one.
            if let Some(name) = &c.client_name {
                out["user_provided_name"] = json!(name);
            }
            out["client_properties"] = table(&c.client_properties);
            out
        })
        .collect()
}

/// RabbitMQ's `ssl*` and `peer_cert_*` fields: empty strings on a plain connection.
fn tls_fields(out: &mut Value, tls: Option<&TlsInfo>) {
    let cert = tls.and_then(|t| t.peer_cert.as_ref());
    let text = |s: Option<&String>| json!(s.map_or("", String::as_str));
    out["ssl"] = json!(tls.is_some());
    out["ssl_protocol"] = text(tls.map(|t| &t.protocol));
    out["ssl_key_exchange"] = text(tls.map(|t| &t.key_exchange));
    out["ssl_cipher"] = text(tls.map(|t| &t.cipher));
    out["ssl_hash"] = text(tls.map(|t| &t.hash));
    out["peer_cert_subject"] = text(cert.map(|c| &c.subject));
    out["peer_cert_issuer"] = text(cert.map(|c| &c.issuer));
    out["peer_cert_validity"] = text(cert.map(|c| &c.validity));
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
                "acks_uncommitted": ch.acks_uncommitted,
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
                let mut out = json!({
                    "name": x.name,
                    "vhost": v.name(),
                    "type": x.kind,
                    "durable": x.durable,
                    "auto_delete": x.auto_delete,
                    "internal": x.internal,
                    "arguments": table(&x.arguments),
                });
                // RabbitMQ lists the key only for an exchange a policy applies to.
                if let Some(p) = &x.policy {
                    out["policy"] = json!(p.name);
                }
                out
            })
        })
        .collect()
}

/// `/api/exchanges/{vhost}/{name}` (the default exchange is `""`), with the per-channel
/// and per-queue traffic lists RabbitMQ keeps only in its detailed rates mode, empty as
/// in its default basic mode.
pub fn exchange(vhost: &Arc<Broker>, name: &str) -> Option<Value> {
    let Value::Array(list) = exchanges(std::slice::from_ref(vhost)) else {
        return None;
    };
    let mut found = list.into_iter().find(|x| x["name"] == name)?;
    if let Value::Object(map) = &mut found {
        map.insert("incoming".into(), json!([]));
        map.insert("outgoing".into(), json!([]));
    }
    Some(found)
}

/// The queues of `vhosts`, or only the one called `only`. `memory` is the body bytes a
/// queue holds (ready and awaiting acks), a lower bound of what RabbitMQ reports (its
/// queue process's memory). `consumer_capacity` and `consumer_utilisation` are sampled
/// now (1 when some consumer could take a delivery at once, else 0) rather than
/// averaged over time. RabbitMQ's `idle_since`, `messages_persistent` and
/// `head_message_timestamp` are left out: nothing here knows them.
pub fn queues(node: &Node, depths: &Depths, vhosts: &[Arc<Broker>], only: Option<&str>) -> Value {
    vhosts
        .iter()
        .flat_map(|v| {
            v.queues()
                .into_iter()
                .filter(|q| only.is_none_or(|name| q.name == name))
                .map(|q| {
                    let rates = node.queue_rates(v.name(), &q.name);
                    let capacity = if q.consumer_ready { 1.0 } else { 0.0 };
                    let message_bytes = q.message_bytes_ready + q.message_bytes_unacknowledged;
                    let mut out = json!({
                        "name": q.name,
                        "vhost": v.name(),
                        "node": NODE,
                        "type": q.kind,
                        "state": "running",
                        "durable": q.durable,
                        "auto_delete": q.auto_delete,
                        "exclusive": q.exclusive,
                        "arguments": table(&q.arguments),
                        "policy": q.policy.as_ref().map(|p| p.name.as_str()),
                        "operator_policy":
                            q.operator_policy.as_ref().map(|p| p.name.as_str()),
                        "effective_policy_definition": policy::merged_definition(
                            q.policy.as_deref(),
                            q.operator_policy.as_deref(),
                        ),
                        "messages": q.messages_ready + q.messages_unacknowledged,
                        "messages_ready": q.messages_ready,
                        "messages_unacknowledged": q.messages_unacknowledged,
                        "message_bytes": message_bytes,
                        "message_bytes_ready": q.message_bytes_ready,
                        "message_bytes_unacknowledged": q.message_bytes_unacknowledged,
                        "memory": message_bytes,
                        "consumers": q.consumers,
                        "consumer_capacity": capacity,
                        "consumer_utilisation": capacity,
                        "exclusive_consumer_tag": q.exclusive_consumer_tag,
                        "single_active_consumer_tag": q.single_active_consumer_tag,
                        "message_stats": message_stats(&q.stats, &rates, &NOT_PER_QUEUE),
                    });
                    depth_details(&mut out, depths.queue(v.name(), &q.name));
                    out
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `/api/queues/{vhost}/{name}`: the listing's fields and the queue's consumers, shaped
/// like `/api/consumers` entries.
pub fn queue(node: &Node, depths: &Depths, vhost: &Arc<Broker>, name: &str) -> Option<Value> {
    let Value::Array(mut found) = queues(node, depths, std::slice::from_ref(vhost), Some(name))
    else {
        return None;
    };
    let mut out = found.pop()?;
    let details: Vec<Value> = match consumers(node, std::slice::from_ref(vhost)) {
        Value::Array(list) => list
            .into_iter()
            .filter(|c| c["queue"]["name"] == name)
            .collect(),
        _ => Vec::new(),
    };
    if let Value::Object(map) = &mut out {
        map.insert("consumer_details".into(), Value::Array(details));
    }
    Some(out)
}

/// Every binding of `vhosts` (the default exchange's implicit ones included, as
/// RabbitMQ lists them).
pub fn bindings(vhosts: &[Arc<Broker>]) -> Value {
    bindings_where(vhosts, |_| true)
}

/// The bindings of `vhosts` that `keep` selects, by their JSON.
pub fn bindings_where(vhosts: &[Arc<Broker>], keep: impl Fn(&Value) -> bool) -> Value {
    vhosts
        .iter()
        .flat_map(|v| {
            v.bindings()
                .into_iter()
                .map(|b| {
                    json!({
                        "source": b.source,
                        "vhost": v.name(),
                        "destination": b.destination,
                        "destination_type": b.destination_type,
                        "routing_key": b.routing_key,
                        "arguments": table(&b.arguments),
                        "properties_key": properties_key(&b.routing_key, &b.arguments),
                    })
                })
                .filter(|b| keep(b))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// What names a binding in RabbitMQ's URLs: `~` for an empty routing key without
/// arguments, else the routing key form-encoded (`a.#` is `a.%23`, a space `+`). With
/// arguments RabbitMQ appends `~` and a hash of the Erlang terms; this appends `~` and a
/// short hash of our own (FNV-1a of the arguments' JSON, base64url), so keys tell
/// bindings apart the same way without matching RabbitMQ's digits.
pub fn properties_key(routing_key: &str, arguments: &FieldTable) -> String {
    if arguments.inner().is_empty() {
        return if routing_key.is_empty() {
            "~".to_string()
        } else {
            quote_plus(routing_key)
        };
    }
    let mut hash: u32 = 0x811c_9dc5;
    for byte in table(arguments).to_string().bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    let digest = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(hash.to_be_bytes());
    format!("{}~{}", quote_plus(routing_key), quote_plus(&digest))
}

/// Form encoding as RabbitMQ's `quote_plus`: letters, digits, `.`, `-` and `_` stay, a
/// space becomes `+`, every other byte `%XX`.
fn quote_plus(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' => {
                out.push(char::from(byte));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// A user as `/api/users` and definitions list it.
pub fn user(users: &Users, u: &User) -> Value {
    definitions::user_json(u, &users.user_limits(&u.name))
}

/// Every user, by name.
pub fn users(node: &Node) -> Value {
    let users = node.users();
    let mut list: Vec<&Arc<User>> = users.all().collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    list.into_iter().map(|u| user(&users, u)).collect()
}

/// Every user's permissions in every vhost, by user then vhost.
pub fn permissions(node: &Node) -> Value {
    definitions::permissions_json(&node.users(), &node.vhost_names())
}

/// `/api/definitions`: what `rabbitmqctl export_definitions` writes, and what
/// `--amqp-definitions` loads. Exchanges are the declared ones (not the default or the
/// predeclared `amq.*`), bindings the explicit ones; exclusive queues, and bindings to
/// them, are left out as RabbitMQ leaves them out, since they die with their connection.
pub fn definitions(node: &Node) -> Value {
    let vhost_names = node.vhost_names();
    let [queues, exchanges, bindings] = topology(&node.vhosts());
    let vhosts: Vec<Value> = node
        .vhosts()
        .iter()
        .map(|v| definitions::vhost_json(v.name(), &v.meta()))
        .collect();
    json!({
        "rabbit_version": MANAGEMENT_VERSION,
        "rabbitmq_version": MANAGEMENT_VERSION,
        "product_name": "session-store",
        "product_version": env!("CARGO_PKG_VERSION"),
        "users": users(node),
        "vhosts": vhosts,
        "permissions": permissions(node),
        "topic_permissions": definitions::topic_permissions_json(&node.users(), &vhost_names),
        "parameters": parameters(node, &vhost_names, &node.vhosts()),
        "global_parameters": node.globals().to_json(),
        "policies": policies(Kind::Policy, &node.vhosts()),
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
    })
}

/// A definitions file's runtime parameters: the vhosts' limits and operator policies, as
/// RabbitMQ keeps them (components `vhost-limits` and `operator_policy`).
pub fn parameters(node: &Node, names: &[String], vhosts: &[Arc<Broker>]) -> Value {
    let mut list = match definitions::vhost_limits_json(&node.users(), names) {
        Value::Array(list) => list,
        _ => Vec::new(),
    };
    for v in vhosts {
        for p in v.policies(Kind::Operator) {
            let mut value = p.to_json(v.name());
            if let Value::Object(fields) = &mut value {
                fields.remove("vhost");
                fields.remove("name");
            }
            list.push(json!({
                "value": value,
                "vhost": v.name(),
                "component": definitions::OPERATOR_POLICY,
                "name": p.name,
            }));
        }
    }
    Value::Array(list)
}

/// `/api/definitions/{vhost}`: one vhost's part, as RabbitMQ exports it (what
/// `rabbitmqadmin -V VHOST export` writes and `POST /api/definitions/VHOST` takes back):
/// its limits, policies, exchanges, queues and bindings, the last three without `vhost`.
pub fn vhost_definitions(node: &Node, vhost: &Arc<Broker>) -> Value {
    let here = [vhost.name().to_string()];
    let [queues, exchanges, bindings] = topology(std::slice::from_ref(vhost)).map(|list| {
        list.into_iter()
            .map(|mut item| {
                if let Value::Object(fields) = &mut item {
                    fields.remove("vhost");
                }
                item
            })
            .collect::<Vec<_>>()
    });
    json!({
        "rabbit_version": MANAGEMENT_VERSION,
        "parameters": parameters(node, &here, std::slice::from_ref(vhost)),
        "policies": policies(Kind::Policy, std::slice::from_ref(vhost)),
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
    })
}

/// The queues, exchanges and bindings of `vhosts` that a definitions export lists.
fn topology(vhosts: &[Arc<Broker>]) -> [Vec<Value>; 3] {
    let mut queues = Vec::new();
    let mut exchanges = Vec::new();
    let mut bindings = Vec::new();
    for v in vhosts {
        let mut exclusive = Vec::new();
        for q in v.queues() {
            if q.exclusive {
                exclusive.push(q.name);
                continue;
            }
            queues.push(json!({
                "name": q.name,
                "vhost": v.name(),
                "durable": q.durable,
                "auto_delete": q.auto_delete,
                "arguments": table(&q.arguments),
            }));
        }
        for x in v.exchanges() {
            if x.name.is_empty() || x.name.starts_with("amq.") {
                continue;
            }
            exchanges.push(json!({
                "name": x.name,
                "vhost": v.name(),
                "type": x.kind,
                "durable": x.durable,
                "auto_delete": x.auto_delete,
                "internal": x.internal,
                "arguments": table(&x.arguments),
            }));
        }
        for b in v.bindings() {
            if b.source.is_empty()
                || (b.destination_type == "queue" && exclusive.contains(&b.destination))
            {
                continue;
            }
            bindings.push(json!({
                "source": b.source,
                "vhost": v.name(),
                "destination": b.destination,
                "destination_type": b.destination_type,
                "routing_key": b.routing_key,
                "arguments": table(&b.arguments),
            }));
        }
    }
    [queues, exchanges, bindings]
}

/// A message's properties as the management plugin shows a fetched message's: the set
/// ones by their JSON names, and `[]` (RabbitMQ's empty list) when none is set.
pub fn properties(p: &AMQPProperties) -> Value {
    let mut out = Map::new();
    let mut text = |key: &str, v: &Option<amq_protocol::types::ShortString>| {
        if let Some(v) = v {
            out.insert(key.to_string(), json!(v.as_str()));
        }
    };
    text("content_type", p.content_type());
    text("content_encoding", p.content_encoding());
    text("correlation_id", p.correlation_id());
    text("reply_to", p.reply_to());
    text("expiration", p.expiration());
    text("message_id", p.message_id());
    text("type", p.kind());
    text("user_id", p.user_id());
    text("app_id", p.app_id());
    if let Some(v) = p.delivery_mode() {
        out.insert("delivery_mode".into(), json!(v));
    }
    if let Some(v) = p.priority() {
        out.insert("priority".into(), json!(v));
    }
    if let Some(v) = p.timestamp() {
        out.insert("timestamp".into(), json!(v));
    }
    if let Some(h) = p.headers() {
        out.insert("headers".into(), table(h));
    }
    if out.is_empty() {
        Value::Array(Vec::new())
    } else {
        Value::Object(out)
    }
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

/// `/api/nodes`: this one node, with the fields monitors and `rabbitmqadmin list nodes`
/// read. `mem_used` is the process's resident memory; `mem_limit` is the watermark of
/// held message bytes that raises `mem_alarm`.
pub fn nodes(node: &Node, mem_alarm: bool) -> Value {
    let fd_used = std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count);
    let processors = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    json!([{
        "name": NODE,
        "type": "disc",
        "running": true,
        "os_pid": std::process::id().to_string(),
        "uptime": u64::try_from(node.uptime().as_millis()).unwrap_or(u64::MAX),
        "processors": processors,
        "mem_used": resident_bytes(),
        "mem_limit": node.config().memory_high_watermark,
        "mem_alarm": mem_alarm,
        "disk_free_alarm": false,
        "fd_used": fd_used,
        "partitions": [],
        "rates_mode": "basic",
        "exchange_types": exchange_types(),
    }])
}

/// Resident memory of this process (`VmRSS`), 0 where `/proc` does not say.
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb * 1024)
        })
        .unwrap_or(0)
}

/// `/api/policies` or `/api/operator-policies`: the given vhosts' policies of `kind`, each
/// vhost's highest priority first.
pub fn policies<'a>(kind: Kind, vhosts: impl IntoIterator<Item = &'a Arc<Broker>>) -> Value {
    vhosts
        .into_iter()
        .flat_map(|v| {
            v.policies(kind)
                .into_iter()
                .map(|p| p.to_json(v.name()))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_keys_encode_like_rabbitmq() {
        let none = FieldTable::default();
        // What RabbitMQ 3.10 answers for these routing keys.
        for (key, expected) in [
            ("", "~"),
            ("a.#", "a.%23"),
            ("a b", "a+b"),
            ("a/b", "a%2Fb"),
            ("a~b", "a%7Eb"),
            ("a-b_c.d", "a-b_c.d"),
            ("a'b(c)!", "a%27b%28c%29%21"),
            ("é", "%C3%A9"),
        ] {
            assert_eq!(properties_key(key, &none), expected, "{key}");
        }
        let mut args = FieldTable::default();
        args.insert("k".into(), AMQPValue::LongString("v".into()));
        let with_args = properties_key("a b", &args);
        assert!(with_args.starts_with("a+b~"), "{with_args}");
        assert_eq!(with_args, properties_key("a b", &args), "stable");
        let mut other = FieldTable::default();
        other.insert("k".into(), AMQPValue::LongString("w".into()));
        assert_ne!(with_args, properties_key("a b", &other));
    }
}
