//! Dead-lettering as RabbitMQ 3.10 does it: a message rejected without requeue, expired,
//! or dropped for length is republished to the queue's dead-letter exchange, with its
//! history in the `x-death` header (one table per queue and reason, newest first, with a
//! count) and the first death in `x-first-death-*`. Its `expiration` is removed (kept in
//! x-death as `original-expiration`) so it does not expire again by the same rule.

use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, ShortString};

use super::queue::Message;

/// Why a message was dead-lettered; the names are RabbitMQ's `reason` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Rejected,
    Expired,
    MaxLen,
    /// Given back more often than a quorum queue's `x-delivery-limit`.
    DeliveryLimit,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::Expired => "expired",
            Reason::MaxLen => "maxlen",
            Reason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// Where a queue sends its dead letters.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    pub exchange: &'a str,
    /// Replaces the message's routing key (and drops its CC keys) when set.
    pub routing_key: Option<&'a str>,
}

/// The message to publish to the dead-letter exchange.
pub fn dead_letter(
    message: &Message,
    reason: Reason,
    queue: &str,
    target: &Target<'_>,
    now_secs: u64,
) -> Message {
    let mut headers = message.properties().headers().clone().unwrap_or_default();
    let mut routing_keys = vec![long(message.routing_key.as_str())];
    if let Some(AMQPValue::FieldArray(cc)) = headers.inner().get("CC") {
        routing_keys.extend(cc.as_slice().iter().cloned());
    }
    let mut info = FieldTable::default();
    info.insert("reason".into(), long(reason.as_str()));
    info.insert("queue".into(), long(queue));
    info.insert("time".into(), AMQPValue::Timestamp(now_secs));
    info.insert("exchange".into(), long(message.exchange.as_str()));
    info.insert(
        "routing-keys".into(),
        AMQPValue::FieldArray(FieldArray::from(routing_keys)),
    );
    if let Some(expiration) = message.properties().expiration() {
        info.insert("original-expiration".into(), long(expiration.as_str()));
    }
    update_x_death(&mut headers, info, queue, reason, message.exchange.as_str());
    if target.routing_key.is_some() {
        remove(&mut headers, "CC");
    }
    let routing_key = target
        .routing_key
        .map_or_else(|| message.routing_key.clone(), ShortString::from);
    let letter = Message::new(
        target.exchange.into(),
        routing_key,
        without_expiration(message.properties()).with_headers(headers),
        message.body.clone(),
    );
    // With its own keys, the letter routes by its BCC keys too; a new key replaces them.
    match target.routing_key {
        None => letter.with_bcc(message.bcc()),
        Some(_) => letter,
    }
}

/// Adds a death to `x-death`: the entry for the same queue and reason counts one more and
/// moves to the front, or a new entry with count 1 goes first. The first death (no
/// `x-death` at all) also sets `x-first-death-reason`, `-queue` and `-exchange`; an
/// `x-death` that is not an array is replaced by the new entry alone, as RabbitMQ does.
fn update_x_death(
    headers: &mut FieldTable,
    mut info: FieldTable,
    queue: &str,
    reason: Reason,
    exchange: &str,
) {
    let deaths = match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(deaths)) => deaths.as_slice().to_vec(),
        invalid => {
            if invalid.is_none() {
                headers.insert("x-first-death-reason".into(), long(reason.as_str()));
                headers.insert("x-first-death-queue".into(), long(queue));
                headers.insert("x-first-death-exchange".into(), long(exchange));
            }
            info.insert("count".into(), AMQPValue::LongLongInt(1));
            headers.insert(
                "x-death".into(),
                AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(info)])),
            );
            return;
        }
    };
    let same = |d: &AMQPValue| match d {
        AMQPValue::FieldTable(t) => {
            text(t.inner().get("queue")) == Some(queue)
                && text(t.inner().get("reason")) == Some(reason.as_str())
        }
        _ => false,
    };
    let (matches, others): (Vec<AMQPValue>, Vec<AMQPValue>) = deaths.into_iter().partition(same);
    let first = match matches.into_iter().next() {
        Some(AMQPValue::FieldTable(mut previous)) => {
            // Whatever integer type a client re-encoded it as (amqplib sends a byte).
            let count = match previous.inner().get("count") {
                Some(AMQPValue::LongLongInt(n)) => *n,
                Some(AMQPValue::LongInt(n)) => i64::from(*n),
                Some(AMQPValue::LongUInt(n)) => i64::from(*n),
                Some(AMQPValue::ShortInt(n)) => i64::from(*n),
                Some(AMQPValue::ShortUInt(n)) => i64::from(*n),
                Some(AMQPValue::ShortShortInt(n)) => i64::from(*n),
                Some(AMQPValue::ShortShortUInt(n)) => i64::from(*n),
                _ => 0,
            };
            previous.insert("count".into(), AMQPValue::LongLongInt(count + 1));
            previous
        }
        _ => {
            info.insert("count".into(), AMQPValue::LongLongInt(1));
            info
        }
    };
    let mut all = vec![AMQPValue::FieldTable(first)];
    all.extend(others);
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(all)),
    );
}

/// RabbitMQ's cycle rule: a message that died in `queue` before is dropped rather than
/// dead-lettered into `queue` again, which would loop forever, when every death since
/// then (newest first, down to and including its last death in `queue`) was automatic
/// (expired, maxlen, delivery_limit). A rejection in that stretch breaks the rule; one
/// before it does not.
pub fn is_cycle(message: &Message, queue: &str) -> bool {
    let Some(AMQPValue::FieldArray(deaths)) = message
        .properties()
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-death"))
    else {
        return false;
    };
    for death in deaths.as_slice() {
        let AMQPValue::FieldTable(t) = death else {
            return false;
        };
        if text(t.inner().get("reason")) == Some("rejected") {
            return false;
        }
        if text(t.inner().get("queue")) == Some(queue) {
            return true;
        }
    }
    false
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

fn text(v: Option<&AMQPValue>) -> Option<&str> {
    match v {
        Some(AMQPValue::LongString(s)) => std::str::from_utf8(s.as_bytes()).ok(),
        Some(AMQPValue::ShortString(s)) => Some(s.as_str()),
        _ => None,
    }
}

fn remove(headers: &mut FieldTable, key: &str) {
    let mut kept = FieldTable::default();
    for (k, v) in headers.inner() {
        if k.as_str() != key {
            kept.insert(k.clone(), v.clone());
        }
    }
    *headers = kept;
}

/// The same properties without `expiration` (amq-protocol has no setter to clear one).
fn without_expiration(p: &AMQPProperties) -> AMQPProperties {
    let mut out = AMQPProperties::default();
    macro_rules! copy {
        ($($get:ident => $set:ident),*) => {$(
            if let Some(v) = p.$get().clone() {
                out = out.$set(v);
            }
        )*};
    }
    copy!(
        content_type => with_content_type,
        content_encoding => with_content_encoding,
        headers => with_headers,
        delivery_mode => with_delivery_mode,
        priority => with_priority,
        correlation_id => with_correlation_id,
        reply_to => with_reply_to,
        message_id => with_message_id,
        timestamp => with_timestamp,
        kind => with_type,
        user_id => with_user_id,
        app_id => with_app_id,
        cluster_id => with_cluster_id
    );
    out
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn message(expiration: Option<&str>) -> Message {
        let mut properties = AMQPProperties::default().with_message_id("m1".into());
        if let Some(e) = expiration {
            properties = properties.with_expiration(e.into());
        }
        Message::new(
            "".into(),
            "src".into(),
            properties,
            Bytes::from_static(b"x"),
        )
    }

    fn deaths(m: &Message) -> Vec<FieldTable> {
        match m
            .properties()
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-death"))
        {
            Some(AMQPValue::FieldArray(a)) => a
                .as_slice()
                .iter()
                .map(|v| match v {
                    AMQPValue::FieldTable(t) => t.clone(),
                    other => panic!("not a table: {other:?}"),
                })
                .collect(),
            other => panic!("no x-death: {other:?}"),
        }
    }

    const DLX: Target<'static> = Target {
        exchange: "dlx",
        routing_key: None,
    };

    #[test]
    fn first_death_sets_x_death_and_first_death_headers() {
        let dead = dead_letter(&message(Some("50")), Reason::Expired, "src", &DLX, 1000);
        assert_eq!(dead.exchange.as_str(), "dlx");
        assert_eq!(dead.routing_key.as_str(), "src");
        assert!(dead.properties().expiration().is_none());
        assert_eq!(
            dead.properties().message_id().as_ref().map(|s| s.as_str()),
            Some("m1")
        );
        let d = deaths(&dead);
        assert_eq!(d.len(), 1);
        let t = d[0].inner();
        assert_eq!(t.get("count"), Some(&AMQPValue::LongLongInt(1)));
        assert_eq!(text(t.get("reason")), Some("expired"));
        assert_eq!(text(t.get("queue")), Some("src"));
        assert_eq!(text(t.get("exchange")), Some(""));
        assert_eq!(text(t.get("original-expiration")), Some("50"));
        assert_eq!(t.get("time"), Some(&AMQPValue::Timestamp(1000)));
        let h = dead.properties().headers().clone().unwrap_or_default();
        assert_eq!(text(h.inner().get("x-first-death-reason")), Some("expired"));
        assert_eq!(text(h.inner().get("x-first-death-queue")), Some("src"));
    }

    #[test]
    fn repeated_deaths_count_up_and_move_to_the_front() {
        let once = dead_letter(&message(None), Reason::Rejected, "a", &DLX, 1);
        let twice = dead_letter(&once, Reason::Rejected, "b", &DLX, 2);
        let thrice = dead_letter(&twice, Reason::Rejected, "a", &DLX, 3);
        let d = deaths(&thrice);
        assert_eq!(d.len(), 2);
        assert_eq!(text(d[0].inner().get("queue")), Some("a"));
        assert_eq!(d[0].inner().get("count"), Some(&AMQPValue::LongLongInt(2)));
        assert_eq!(text(d[1].inner().get("queue")), Some("b"));
        let h = thrice.properties().headers().clone().unwrap_or_default();
        assert_eq!(text(h.inner().get("x-first-death-queue")), Some("a"));
        assert!(!is_cycle(&thrice, "a"), "a rejection breaks the cycle rule");
    }

    #[test]
    fn a_rejection_before_the_cycle_does_not_break_it() {
        // Rejected in r, then expired in x, y and z, on its way back to x.
        let mut m = dead_letter(&message(None), Reason::Rejected, "r", &DLX, 1);
        for queue in ["x", "y", "z"] {
            m = dead_letter(&m, Reason::Expired, queue, &DLX, 2);
        }
        assert!(is_cycle(&m, "x"), "x, y and z expired: a loop");
        assert!(!is_cycle(&m, "r"), "the way back to r passes a rejection");
        assert!(!is_cycle(&m, "elsewhere"));
    }

    #[test]
    fn routing_key_is_replaced_and_cycles_detected() {
        let target = Target {
            exchange: "dlx",
            routing_key: Some("new"),
        };
        let dead = dead_letter(&message(None), Reason::MaxLen, "q", &target, 1);
        assert_eq!(dead.routing_key.as_str(), "new");
        assert!(is_cycle(&dead, "q"));
        assert!(!is_cycle(&dead, "other"));
        assert!(!is_cycle(&message(None), "q"));
    }
}
