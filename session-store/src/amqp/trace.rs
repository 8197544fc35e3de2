//! RabbitMQ's firehose: in a vhost with tracing on, every message a client publishes is
//! copied to `amq.rabbitmq.trace` with the routing key `publish.EXCHANGE`, and every
//! message delivered to a client with `deliver.QUEUE`, each with RabbitMQ's headers
//! saying where it came from and went, so that a queue bound there sees the vhost's
//! traffic as it happens. Off by default, as it doubles the work of every message;
//! turned on and off with `PUT /api/vhosts/V` (`"tracing": true`), and, as in RabbitMQ,
//! not kept across restarts.

use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString};

use super::node::NODE_NAME;
use super::queue::Message;

/// The exchange the copies go to; the broker declares it in every vhost.
pub const EXCHANGE: &str = "amq.rabbitmq.trace";

/// Who published or received a message.
#[derive(Debug, Clone, Copy)]
pub struct Party<'a> {
    /// The connection's name (`peer -> local`).
    pub connection: &'a str,
    pub channel: u16,
    pub user: &'a str,
}

/// The copy of `message`, published by `by` and routed to `routed`.
pub fn published(
    message: &Message,
    routing_keys: &[&str],
    routed: &[String],
    vhost: &str,
    by: Party<'_>,
) -> Message {
    let mut headers = about(message, routing_keys);
    headers.insert("vhost".into(), text(vhost));
    headers.insert("connection".into(), text(by.connection));
    headers.insert("channel".into(), AMQPValue::LongInt(i32::from(by.channel)));
    headers.insert("user".into(), text(by.user));
    let queues: Vec<AMQPValue> = routed.iter().map(|q| text(q)).collect();
    headers.insert(
        "routed_queues".into(),
        AMQPValue::FieldArray(FieldArray::from(queues)),
    );
    copy(message, &format!("publish.{}", message.exchange), headers)
}

/// The copy of `message`, delivered from `queue` to `to`.
pub fn delivered(
    message: &Message,
    queue: &str,
    redelivered: bool,
    vhost: &str,
    to: Party<'_>,
) -> Message {
    let keys = routing_keys(message);
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let mut headers = about(message, &keys);
    headers.insert(
        "redelivered".into(),
        AMQPValue::LongInt(i32::from(redelivered)),
    );
    headers.insert("vhost".into(), text(vhost));
    headers.insert("connection".into(), text(to.connection));
    headers.insert("channel".into(), AMQPValue::LongInt(i32::from(to.channel)));
    headers.insert("user".into(), text(to.user));
    copy(message, &format!("deliver.{queue}"), headers)
}

/// Whether `message` is itself a copy, which is never copied again.
pub fn is_copy(message: &Message) -> bool {
    message.exchange.as_str() == EXCHANGE
}

fn copy(message: &Message, key: &str, headers: FieldTable) -> Message {
    Message::new(
        EXCHANGE.into(),
        key.into(),
        AMQPProperties::default().with_headers(headers),
        message.body.clone(),
    )
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// A delivered message's routing keys: its own, then its `CC` header's.
fn routing_keys(message: &Message) -> Vec<String> {
    let mut keys = vec![message.routing_key.to_string()];
    if let Some(AMQPValue::FieldArray(cc)) = message
        .properties()
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("CC"))
    {
        keys.extend(cc.as_slice().iter().filter_map(|v| match v {
            AMQPValue::LongString(s) => Some(s.to_string()),
            _ => None,
        }));
    }
    keys
}

/// The headers every copy has: the original exchange, routing keys and properties, and
/// the node.
fn about(message: &Message, routing_keys: &[&str]) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert("exchange_name".into(), text(message.exchange.as_str()));
    let keys: Vec<AMQPValue> = routing_keys.iter().map(|k| text(k)).collect();
    headers.insert(
        "routing_keys".into(),
        AMQPValue::FieldArray(FieldArray::from(keys)),
    );
    headers.insert(
        "properties".into(),
        AMQPValue::FieldTable(properties(message.properties())),
    );
    headers.insert("node".into(), text(NODE_NAME));
    headers
}

/// The properties that are set, as RabbitMQ lists them in a copy: numbers as signed
/// 32-bit integers, the headers as a table, everything else as text.
fn properties(p: &AMQPProperties) -> FieldTable {
    let mut out = FieldTable::default();
    let mut put = |name: &str, value: AMQPValue| {
        out.insert(name.into(), value);
    };
    let number = |n: u64| AMQPValue::LongInt(i32::try_from(n).unwrap_or(i32::MAX));
    if let Some(v) = p.content_type() {
        put("content_type", text(v.as_str()));
    }
    if let Some(v) = p.content_encoding() {
        put("content_encoding", text(v.as_str()));
    }
    if let Some(v) = p.headers() {
        put("headers", AMQPValue::FieldTable(v.clone()));
    }
    if let Some(v) = p.delivery_mode() {
        put("delivery_mode", number(u64::from(*v)));
    }
    if let Some(v) = p.priority() {
        put("priority", number(u64::from(*v)));
    }
    if let Some(v) = p.correlation_id() {
        put("correlation_id", text(v.as_str()));
    }
    if let Some(v) = p.reply_to() {
        put("reply_to", text(v.as_str()));
    }
    if let Some(v) = p.expiration() {
        put("expiration", text(v.as_str()));
    }
    if let Some(v) = p.message_id() {
        put("message_id", text(v.as_str()));
    }
    if let Some(v) = p.timestamp() {
        put("timestamp", number(*v));
    }
    if let Some(v) = p.kind() {
        put("type", text(v.as_str()));
    }
    if let Some(v) = p.user_id() {
        put("user_id", text(v.as_str()));
    }
    if let Some(v) = p.app_id() {
        put("app_id", text(v.as_str()));
    }
    if let Some(v) = p.cluster_id() {
        put("cluster_id", text(v.as_str()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn header<'a>(m: &'a Message, name: &str) -> Option<&'a AMQPValue> {
        m.properties()
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(name))
    }

    #[test]
    fn copies_say_where_a_message_came_from_and_went() {
        let original = Message::new(
            "orders".into(),
            "new".into(),
            AMQPProperties::default()
                .with_content_type("text/plain".into())
                .with_delivery_mode(2),
            Bytes::from_static(b"hello"),
        );
        let by = Party {
            connection: "127.0.0.1:1 -> 127.0.0.1:2",
            channel: 3,
            user: "guest",
        };
        let copy = published(&original, &["new"], &["q".to_string()], "/", by);
        assert_eq!(
            (copy.exchange.as_str(), copy.routing_key.as_str()),
            (EXCHANGE, "publish.orders")
        );
        assert_eq!(copy.body, original.body);
        assert_eq!(header(&copy, "channel"), Some(&AMQPValue::LongInt(3)));
        assert_eq!(header(&copy, "user"), Some(&text("guest")));
        let Some(AMQPValue::FieldTable(props)) = header(&copy, "properties") else {
            panic!("no properties table");
        };
        assert_eq!(
            props.inner().get("delivery_mode"),
            Some(&AMQPValue::LongInt(2))
        );
        assert!(is_copy(&copy));

        let out = delivered(&original, "q", true, "/", by);
        assert_eq!(out.routing_key.as_str(), "deliver.q");
        assert_eq!(header(&out, "redelivered"), Some(&AMQPValue::LongInt(1)));
        assert!(header(&out, "routed_queues").is_none());
    }
}
