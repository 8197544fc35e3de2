//! The `x-` arguments of queue.declare that change how a queue behaves, parsed and checked
//! the way RabbitMQ 3.10 does: a wrong type or value is 406 PRECONDITION_FAILED with
//! RabbitMQ's Erlang-flavoured reason (`{unacceptable_type,longstr}`), so users see the
//! same words whichever broker they run. Unknown arguments are kept but ignored.

use std::time::Duration;

use amq_protocol::types::{AMQPValue, FieldTable};

use super::error::AmqpError;
use super::policy::Effect;
use super::stream::interval_ms;

/// RabbitMQ's largest TTL or expiry, in milliseconds: ten years. (Celery's delayed
/// delivery declares queues with TTLs past the 32-bit range.)
const MAX_EXPIRY_MS: u64 = 315_360_000_000;

/// What a full queue does with one more message (`x-overflow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Drop (and dead-letter) the oldest messages to make room.
    #[default]
    DropHead,
    /// Refuse the new message: basic.nack in confirm mode, else silently dropped.
    RejectPublish,
    /// Like `RejectPublish`, and dead-letter the refused message.
    RejectPublishDlx,
}

/// `x-queue-type`: what kind of queue RabbitMQ would make. Classic and quorum queues are
/// served by the same in-memory queue with an optional journal; a quorum queue adds
/// RabbitMQ's rules for its kind (always durable, every message persisted,
/// `x-delivery-limit`, `x-delivery-count` headers, no priorities or global QoS). A
/// stream keeps its messages in a log read by offset (see `stream`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    #[default]
    Classic,
    Quorum,
    Stream,
}

impl QueueType {
    /// RabbitMQ's module name for the type, as its errors print it.
    pub fn module(self) -> &'static str {
        match self {
            QueueType::Classic => "rabbit_classic_queue",
            QueueType::Quorum => "rabbit_quorum_queue",
            QueueType::Stream => "rabbit_stream_queue",
        }
    }

    /// The name management tools show.
    pub fn name(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
            QueueType::Stream => "stream",
        }
    }

    /// Arguments RabbitMQ knows but this type refuses ("invalid arg … of queue type").
    fn unsupported(self) -> &'static [&'static str] {
        match self {
            QueueType::Classic => &[
                "x-delivery-limit",
                "x-dead-letter-strategy",
                "x-quorum-initial-group-size",
                "x-max-in-memory-length",
                "x-max-in-memory-bytes",
                "x-queue-leader-locator",
                "x-max-age",
                "x-stream-max-segment-size-bytes",
                "x-initial-cluster-size",
            ],
            QueueType::Quorum => &[
                "x-max-priority",
                "x-queue-mode",
                "x-queue-version",
                "x-queue-master-locator",
                "x-max-age",
                "x-stream-max-segment-size-bytes",
                "x-initial-cluster-size",
            ],
            QueueType::Stream => &[
                "x-max-length",
                "x-message-ttl",
                "x-dead-letter-exchange",
                "x-dead-letter-routing-key",
                "x-expires",
                "x-overflow",
                "x-max-priority",
                "x-single-active-consumer",
                "x-delivery-limit",
                "x-dead-letter-strategy",
                "x-queue-mode",
                "x-queue-version",
                "x-queue-master-locator",
                "x-max-in-memory-length",
                "x-max-in-memory-bytes",
                "x-quorum-initial-group-size",
            ],
        }
    }

    /// Whether the type is one of RabbitMQ's replicated ones, which must be durable,
    /// named, neither exclusive nor auto-delete.
    pub fn replicated(self) -> bool {
        self != QueueType::Classic
    }
}

/// The behaviour-changing arguments of a queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueArgs {
    /// `x-message-ttl`: how long a message may wait in the queue.
    pub message_ttl: Option<Duration>,
    /// `x-expires`: the queue is deleted after being unused this long.
    pub expires: Option<Duration>,
    /// `x-max-length`: most ready messages.
    pub max_length: Option<u64>,
    /// `x-max-length-bytes`: most bytes of ready message bodies.
    pub max_length_bytes: Option<u64>,
    pub overflow: Overflow,
    /// `x-dead-letter-exchange`.
    pub dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key`: replaces the message's keys when dead-lettering.
    pub dead_letter_routing_key: Option<String>,
    /// `x-max-priority`: the highest message priority the queue orders by.
    pub max_priority: Option<u8>,
    /// `x-single-active-consumer`: only the oldest consumer receives messages; the next
    /// takes over when it goes.
    pub single_active_consumer: bool,
    pub kind: QueueType,
    /// `x-delivery-limit` (quorum queues): a message given back more often than this is
    /// dead-lettered (or dropped) instead. Only an integer limits, as in RabbitMQ.
    pub delivery_limit: Option<i64>,
    /// `x-max-age` (streams): segments whose newest message is older go.
    pub max_age: Option<Duration>,
    /// `x-stream-max-segment-size-bytes` (streams): what retention drops at once.
    pub max_segment_bytes: Option<u64>,
}

impl QueueArgs {
    /// Parses and checks `table` for the queue `name` in `vhost`.
    pub fn parse(table: &FieldTable, name: &str, vhost: &str) -> Result<Self, AmqpError> {
        let mut args = QueueArgs::default();
        let fail = |key: &str, reason: String| {
            AmqpError::precondition(format_args!(
                "invalid arg '{key}' for queue '{name}' in vhost '{vhost}': {reason}"
            ))
        };
        let get = |key: &str| table.inner().get(key);
        if let Some(v) = get("x-queue-type") {
            args.kind = match text(v).map_err(|r| fail("x-queue-type", r))?.as_str() {
                "classic" => QueueType::Classic,
                "quorum" => QueueType::Quorum,
                "stream" => QueueType::Stream,
                // Anything else is refused in RabbitMQ's words for an unknown type rather
                // than quietly made a classic queue.
                other => {
                    return Err(fail(
                        "x-queue-type",
                        format!("\"unsupported queue type '{other}'\""),
                    ));
                }
            };
        }
        if args.kind == QueueType::Classic
            && let Some(v) = get("x-queue-mode")
        {
            match text(v).map_err(|r| fail("x-queue-mode", r))?.as_str() {
                // Lazy queues keep messages on disk in RabbitMQ; here both are kept alike.
                "default" | "lazy" => {}
                other => {
                    return Err(fail(
                        "x-queue-mode",
                        format!("\"unsupported queue mode '{other}'\""),
                    ));
                }
            }
        }
        if let Some(key) = args
            .kind
            .unsupported()
            .iter()
            .find(|key| table.inner().contains_key(**key))
        {
            return Err(AmqpError::precondition(format_args!(
                "invalid arg '{key}' for queue '{name}' in vhost '{vhost}' of queue type {}",
                args.kind.module()
            )));
        }
        if let Some(v) = get("x-dead-letter-strategy") {
            let strategy = text(v).map_err(|r| fail("x-dead-letter-strategy", r))?;
            if !matches!(strategy.as_str(), "at-most-once" | "at-least-once") {
                return Err(fail(
                    "x-dead-letter-strategy",
                    "invalid_dlx_strategy".into(),
                ));
            }
        }
        args.delivery_limit = get("x-delivery-limit").and_then(|v| int(v).ok());
        if let Some(v) = get("x-message-ttl") {
            let ms = integer(v)
                .and_then(non_negative)
                .and_then(at_most_max)
                .map_err(|r| fail("x-message-ttl", r))?;
            args.message_ttl = Some(Duration::from_millis(ms));
        }
        if let Some(v) = get("x-expires") {
            let ms = integer(v)
                .and_then(|n| {
                    if n == 0 {
                        Err("{value_zero,0}".to_string())
                    } else {
                        non_negative(n)
                    }
                })
                .and_then(at_most_max)
                .map_err(|r| fail("x-expires", r))?;
            args.expires = Some(Duration::from_millis(ms));
        }
        if let Some(v) = get("x-max-length") {
            let n = integer(v)
                .and_then(non_negative)
                .map_err(|r| fail("x-max-length", r))?;
            args.max_length = Some(n);
        }
        if let Some(v) = get("x-max-length-bytes") {
            let n = integer(v)
                .and_then(non_negative)
                .map_err(|r| fail("x-max-length-bytes", r))?;
            args.max_length_bytes = Some(n);
        }
        if let Some(v) = get("x-max-age") {
            let ms = text(v)
                .and_then(|t| interval_ms(&t).ok_or_else(|| "invalid_max_age".to_string()))
                .map_err(|r| fail("x-max-age", r))?;
            args.max_age = Some(Duration::from_millis(ms));
        }
        if let Some(v) = get("x-stream-max-segment-size-bytes") {
            let n = integer(v)
                .and_then(non_negative)
                .map_err(|r| fail("x-stream-max-segment-size-bytes", r))?;
            args.max_segment_bytes = Some(n);
        }
        // Placement and in-memory limits have no effect on one node, but their values are
        // checked as RabbitMQ checks them.
        for key in ["x-quorum-initial-group-size", "x-initial-cluster-size"] {
            if let Some(v) = get(key) {
                integer(v)
                    .and_then(non_negative)
                    .and_then(|n| match n {
                        0 => Err("{value_zero,0}".to_string()),
                        n => Ok(n),
                    })
                    .map_err(|r| fail(key, r))?;
            }
        }
        for key in ["x-max-in-memory-length", "x-max-in-memory-bytes"] {
            if let Some(v) = get(key) {
                integer(v)
                    .and_then(non_negative)
                    .map_err(|r| fail(key, r))?;
            }
        }
        if let Some(v) = get("x-queue-leader-locator") {
            let AMQPValue::LongString(locator) = v else {
                return Err(fail("x-queue-leader-locator", unacceptable(v)));
            };
            if !matches!(
                locator.as_bytes(),
                b"client-local" | b"balanced" | b"random" | b"least-leaders"
            ) {
                return Err(fail(
                    "x-queue-leader-locator",
                    "invalid_queue_locator_arg".into(),
                ));
            }
        }
        if let Some(v) = get("x-max-priority") {
            let n = integer(v)
                .and_then(non_negative)
                .and_then(|n| u8::try_from(n).map_err(|_| format!("{{max_value_exceeded,{n}}}")))
                .map_err(|r| fail("x-max-priority", r))?;
            args.max_priority = Some(n);
        }
        if let Some(v) = get("x-single-active-consumer") {
            args.single_active_consumer = match v {
                AMQPValue::Boolean(b) => *b,
                other => return Err(fail("x-single-active-consumer", unacceptable(other))),
            };
        }
        if let Some(v) = get("x-overflow") {
            args.overflow = match text(v).map_err(|r| fail("x-overflow", r))?.as_str() {
                "drop-head" => Overflow::DropHead,
                "reject-publish" => Overflow::RejectPublish,
                "reject-publish-dlx" => Overflow::RejectPublishDlx,
                _ => return Err(fail("x-overflow", "invalid_overflow".into())),
            };
        }
        if let Some(v) = get("x-dead-letter-exchange") {
            let AMQPValue::LongString(dlx) = v else {
                return Err(AmqpError::precondition(format_args!(
                    "invalid type '{}' for arg 'x-dead-letter-exchange' in queue '{name}' in vhost '{vhost}'",
                    type_name(v)
                )));
            };
            args.dead_letter_exchange = Some(String::from_utf8_lossy(dlx.as_bytes()).into_owned());
        }
        if let Some(v) = get("x-dead-letter-routing-key") {
            let key = text(v).map_err(|r| fail("x-dead-letter-routing-key", r))?;
            if args.dead_letter_exchange.is_none() {
                return Err(fail(
                    "x-dead-letter-routing-key",
                    "routing_key_but_no_dlx_defined".into(),
                ));
            }
            args.dead_letter_routing_key = Some(key);
        }
        Ok(args)
    }

    /// These (declared) arguments under a policy's `effect`, with RabbitMQ's precedence:
    /// the smaller of two TTLs, expiries, lengths and delivery limits; the queue's own
    /// dead-letter exchange and routing key; its own overflow on a classic queue, the
    /// policy's overflow and expiry on a quorum queue; a stream takes only its retention
    /// settings. `declared` is the declare's table, which tells an explicit `x-overflow`
    /// from the default.
    pub fn with_policy(&self, declared: &FieldTable, effect: Option<&Effect>) -> QueueArgs {
        let Some(e) = effect else {
            return self.clone();
        };
        let min = |own: Option<u64>, policy: Option<u64>| match (own, policy) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let ms = |d: Option<Duration>| d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let quorum = self.kind == QueueType::Quorum;
        let mut args = self.clone();
        if self.kind == QueueType::Stream {
            // A stream's retention, the smaller of the queue's and the policy's, as
            // RabbitMQ's; the other keys mean nothing to a stream.
            args.max_length_bytes = min(self.max_length_bytes, e.max_length_bytes);
            args.max_age = min(ms(self.max_age), e.max_age).map(Duration::from_millis);
            args.max_segment_bytes = min(self.max_segment_bytes, e.max_segment_bytes);
            return args;
        }
        args.message_ttl = min(ms(self.message_ttl), e.message_ttl).map(Duration::from_millis);
        args.expires = if quorum && e.expires.is_some() {
            e.expires.map(Duration::from_millis)
        } else {
            min(ms(self.expires), e.expires).map(Duration::from_millis)
        };
        args.max_length = min(self.max_length, e.max_length);
        args.max_length_bytes = min(self.max_length_bytes, e.max_length_bytes);
        let own_limit = self.delivery_limit.and_then(|n| u64::try_from(n).ok());
        args.delivery_limit =
            min(own_limit, e.delivery_limit).map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        if let Some(overflow) = e.overflow
            && (quorum || !declared.inner().contains_key("x-overflow"))
        {
            args.overflow = overflow;
        }
        if args.dead_letter_exchange.is_none() {
            args.dead_letter_exchange
                .clone_from(&e.dead_letter_exchange);
        }
        if args.dead_letter_routing_key.is_none() {
            args.dead_letter_routing_key
                .clone_from(&e.dead_letter_routing_key);
        }
        args
    }

    /// Whether a queue holding `len` messages of `bytes` bytes is over its limits.
    pub fn over_limit(&self, len: usize, bytes: u64) -> bool {
        self.max_length.is_some_and(|max| len as u64 > max)
            || self.max_length_bytes.is_some_and(|max| bytes > max)
    }

    /// Whether a queue holding `len` messages of `bytes` bytes is at or below 80% of each
    /// of its limits: where a quorum queue that refused publishes takes them again
    /// (RabbitMQ's `rabbit_fifo` low limit).
    pub fn below_soft_limit(&self, len: usize, bytes: u64) -> bool {
        let soft = |max: u64| max * 4 / 5;
        self.max_length.is_none_or(|max| len as u64 <= soft(max))
            && self.max_length_bytes.is_none_or(|max| bytes <= soft(max))
    }
}

/// basic.consume's `x-priority` for a consumer of `queue` (0 without one): any integer
/// type, as RabbitMQ takes it.
pub fn consumer_priority(
    arguments: &FieldTable,
    queue: &str,
    vhost: &str,
) -> Result<i64, AmqpError> {
    let Some(v) = arguments.inner().get("x-priority") else {
        return Ok(0);
    };
    int(v).map_err(|_| {
        AmqpError::precondition(format_args!(
            "invalid arg 'x-priority' for queue '{queue}' in vhost '{vhost}': \"expected integer, got {}\"",
            type_name(v)
        ))
    })
}

/// The arguments RabbitMQ compares when a queue is declared again; others may differ.
const EQUIVALENCE_KEYS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-version",
    "x-queue-type",
    "x-single-active-consumer",
    "x-queue-master-locator",
];

/// The arguments RabbitMQ also compares when a stream is declared again.
const STREAM_EQUIVALENCE_KEYS: &[&str] = &[
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
    "x-queue-leader-locator",
];

/// RabbitMQ's check that a redeclaration asks for the same queue: each argument that
/// matters must be absent from both or equal in value (integers of any width compare
/// as numbers). A queue declared without `x-queue-type` is a classic one, so leaving
/// it out and saying `classic` are the same either way round.
pub fn check_equivalent(
    received: &FieldTable,
    current: &FieldTable,
    name: &str,
    vhost: &str,
) -> Result<(), AmqpError> {
    let classic = |t: &FieldTable| {
        t.inner()
            .get("x-queue-type")
            .is_none_or(|v| text(v).is_ok_and(|t| t == "classic"))
    };
    let stream = current
        .inner()
        .get("x-queue-type")
        .is_some_and(|v| text(v).is_ok_and(|t| t == "stream"));
    let keys: Vec<&str> = EQUIVALENCE_KEYS
        .iter()
        .copied()
        .filter(|&k| k != "x-queue-type" || !(classic(received) && classic(current)))
        .chain(STREAM_EQUIVALENCE_KEYS.iter().copied().filter(|_| stream))
        .collect();
    check_args_equivalent(
        received,
        current,
        &keys,
        &format!("queue '{name}' in vhost '{vhost}'"),
    )
}

/// [`check_equivalent`] over `keys` for any resource (`exchange 'x' in vhost '/'`), with
/// RabbitMQ's wording: values alone when both sides have one, value and type when one
/// side has none.
pub fn check_args_equivalent(
    received: &FieldTable,
    current: &FieldTable,
    keys: &[&str],
    resource: &str,
) -> Result<(), AmqpError> {
    let typed = |v: Option<&AMQPValue>| match v {
        None => "none".to_string(),
        Some(v) => format!(
            "the value '{}' of type '{}'",
            display_value(v),
            type_name(v)
        ),
    };
    for key in keys {
        let (r, c) = (received.inner().get(*key), current.inner().get(*key));
        let (r, c) = match (r, c) {
            (Some(r), Some(c)) if same_value(r, c) => continue,
            (None, None) => continue,
            (Some(r), Some(c)) => (
                format!("'{}'", display_value(r)),
                format!("'{}'", display_value(c)),
            ),
            (r, c) => (typed(r), typed(c)),
        };
        return Err(AmqpError::precondition(format_args!(
            "inequivalent arg '{key}' for {resource}: received {r} but current is {c}"
        )));
    }
    Ok(())
}

/// Equal as RabbitMQ compares arguments: integers of any width by value.
fn same_value(a: &AMQPValue, b: &AMQPValue) -> bool {
    if let (Some(x), Some(y)) = (binary(a), binary(b)) {
        return x == y;
    }
    match (int(a), int(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// The bytes of a value Erlang decodes to a binary: short and long strings, byte arrays.
fn binary(v: &AMQPValue) -> Option<&[u8]> {
    match v {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        AMQPValue::ByteArray(b) => Some(b.as_slice()),
        _ => None,
    }
}

/// A value as RabbitMQ prints it in errors (`~s`): strings and numbers plainly, anything
/// else as the Erlang term it decodes to.
pub fn display_value(v: &AMQPValue) -> String {
    match v {
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::Double(f) => erlang_float(*f),
        AMQPValue::Float(f) => erlang_float(f64::from(*f)),
        other => match (binary(other), int(other)) {
            (Some(bytes), _) => String::from_utf8_lossy(bytes).into_owned(),
            (None, Ok(n)) => n.to_string(),
            (None, Err(_)) => erlang_term(other),
        },
    }
}

/// A value as Erlang's `~p` prints what RabbitMQ decodes it to: binaries as `<<"text">>`
/// (or their byte values when not printable), tables as `[{<<"key">>,type,value}]`,
/// arrays as `[{type,value}]`, void as `undefined`, a decimal as `{scale,value}`.
pub fn erlang_term(v: &AMQPValue) -> String {
    let typed = |v: &AMQPValue| format!("{},{}", type_name(v), erlang_term(v));
    match v {
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::Double(f) => erlang_float(*f),
        AMQPValue::Float(f) => erlang_float(f64::from(*f)),
        AMQPValue::Void => "undefined".to_string(),
        AMQPValue::DecimalValue(d) => format!("{{{},{}}}", d.scale, d.value),
        AMQPValue::FieldTable(t) => {
            let entries: Vec<String> = t
                .inner()
                .iter()
                .map(|(k, v)| format!("{{{},{}}}", erlang_binary(k.as_str().as_bytes()), typed(v)))
                .collect();
            format!("[{}]", entries.join(","))
        }
        AMQPValue::FieldArray(a) => {
            let items: Vec<String> = a
                .as_slice()
                .iter()
                .map(|v| format!("{{{}}}", typed(v)))
                .collect();
            format!("[{}]", items.join(","))
        }
        other => match (binary(other), int(other)) {
            (Some(bytes), _) => erlang_binary(bytes),
            (None, Ok(n)) => n.to_string(),
            (None, Err(_)) => type_name(other).to_string(),
        },
    }
}

/// A binary as `~p` prints it: `<<"text">>` when every byte is printable ASCII (or one
/// of the escapes Erlang writes), else the byte values, `<<97,1,98>>`.
pub fn erlang_binary(bytes: &[u8]) -> String {
    let escape = |b: u8| match b {
        b'\n' => Some("\\n"),
        b'\r' => Some("\\r"),
        b'\t' => Some("\\t"),
        0x0b => Some("\\v"),
        0x08 => Some("\\b"),
        0x0c => Some("\\f"),
        0x1b => Some("\\e"),
        b'"' => Some("\\\""),
        b'\\' => Some("\\\\"),
        _ => None,
    };
    if bytes
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) || escape(b).is_some())
    {
        let text: String = bytes
            .iter()
            .map(|&b| escape(b).map_or_else(|| char::from(b).to_string(), str::to_string))
            .collect();
        format!("<<\"{text}\">>")
    } else {
        let values: Vec<String> = bytes.iter().map(u8::to_string).collect();
        format!("<<{}>>", values.join(","))
    }
}

/// A float as Erlang prints it: the shortest digits that read back the same, placed
/// as a plain decimal unless the exponent form is shorter (`100.0`, `1.0e3`, `1.0e-5`).
fn erlang_float(f: f64) -> String {
    if !f.is_finite() {
        return f.to_string();
    }
    // `{:e}` gives the shortest round-trip digits: "-1.2345e3", "1e-5".
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let len = i32::try_from(digits.len()).unwrap_or(i32::MAX);
    let place = exp + 1;
    let zeros = |n: i32| "0".repeat(usize::try_from(n).unwrap_or(0));
    let plain = if place <= 0 {
        format!("0.{}{digits}", zeros(-place))
    } else if place < len {
        let (int, frac) = digits.split_at(usize::try_from(place).unwrap_or(0));
        format!("{int}.{frac}")
    } else {
        format!("{digits}{}.0", zeros(place - len))
    };
    let (first, rest) = digits.split_at(1);
    let rest = if rest.is_empty() { "0" } else { rest };
    let exponent = format!("{first}.{rest}e{exp}");
    let sign = if f.is_sign_negative() { "-" } else { "" };
    if plain.len() <= exponent.len() {
        format!("{sign}{plain}")
    } else {
        format!("{sign}{exponent}")
    }
}

/// The name RabbitMQ gives a field's AMQP type in its error reasons.
pub fn type_name(v: &AMQPValue) -> &'static str {
    match v {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) => "byte",
        AMQPValue::ShortShortUInt(_) => "unsignedbyte",
        AMQPValue::ShortInt(_) => "short",
        AMQPValue::ShortUInt(_) => "unsignedshort",
        AMQPValue::LongInt(_) => "signedint",
        AMQPValue::LongUInt(_) => "unsignedint",
        AMQPValue::LongLongInt(_) => "long",
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        AMQPValue::ShortString(_) => "shortstr",
        AMQPValue::LongString(_) => "longstr",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "binary",
        AMQPValue::Void => "void",
    }
}

pub(super) fn unacceptable(v: &AMQPValue) -> String {
    format!("{{unacceptable_type,{}}}", type_name(v))
}

/// An integer of any AMQP width; RabbitMQ's reason for another type.
pub(super) fn int(v: &AMQPValue) -> Result<i64, String> {
    match v {
        AMQPValue::ShortShortInt(n) => Ok(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Ok(i64::from(*n)),
        AMQPValue::ShortInt(n) => Ok(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Ok(i64::from(*n)),
        AMQPValue::LongInt(n) => Ok(i64::from(*n)),
        AMQPValue::LongUInt(n) => Ok(i64::from(*n)),
        AMQPValue::LongLongInt(n) => Ok(*n),
        other => Err(unacceptable(other)),
    }
}

/// An integer argument (TTLs, lengths, priority), with RabbitMQ's reason for another type.
fn integer(v: &AMQPValue) -> Result<i64, String> {
    int(v).map_err(|_| format!("\"expected integer, got {}\"", type_name(v)))
}

fn non_negative(n: i64) -> Result<u64, String> {
    u64::try_from(n).map_err(|_| format!("{{value_negative,{n}}}"))
}

fn at_most_max(n: u64) -> Result<u64, String> {
    if n > MAX_EXPIRY_MS {
        Err(format!("{{value_too_large,{n}}}"))
    } else {
        Ok(n)
    }
}

fn text(v: &AMQPValue) -> Result<String, String> {
    match v {
        AMQPValue::LongString(s) => Ok(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        other => Err(unacceptable(other)),
    }
}

/// A message's `expiration` property as RabbitMQ reads it: a decimal count of
/// milliseconds, of any length. The error is the reason for 406 "invalid expiration
/// '{expiration}': {reason}", laid out as Erlang prints it there.
pub fn parse_expiration(expiration: &str) -> Result<Duration, String> {
    let digits_end = expiration
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || (i == 0 && (c == '-' || c == '+'))))
        .map_or(expiration.len(), |(i, _)| i);
    let (number, rest) = expiration.split_at(digits_end);
    let digits = number.trim_start_matches(['-', '+']);
    if digits.is_empty() {
        return Err("no_integer".to_string());
    }
    if !rest.is_empty() {
        return Err(format!("{{leftover_string,\"{rest}\"}}"));
    }
    let digits = match digits.trim_start_matches('0') {
        "" => "0",
        significant => significant,
    };
    // Where the reason starts in the message: after "invalid expiration '…': ".
    let column = expiration.chars().count() + 23;
    if number.starts_with('-') && digits != "0" {
        return Err(erlang_pair(column, "value_negative", &format!("-{digits}")));
    }
    match digits.parse::<u64>() {
        Ok(ms) if ms <= MAX_EXPIRY_MS => Ok(Duration::from_millis(ms)),
        _ => Err(erlang_pair(column, "value_too_large", digits)),
    }
}

/// `{tag,value}` as Erlang's `~p` prints it from `column` on: when it would not fit
/// the line, the value goes on a line of its own, under the tag.
fn erlang_pair(column: usize, tag: &str, value: &str) -> String {
    let one_line = format!("{{{tag},{value}}}");
    if column + one_line.len() <= 78 {
        one_line
    } else {
        format!("{{{tag},\n{}{value}}}", " ".repeat(column + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in entries {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn s(v: &str) -> AMQPValue {
        AMQPValue::LongString(v.into())
    }

    #[test]
    fn policies_merge_with_rabbitmqs_precedence() {
        let declared = table(&[
            ("x-message-ttl", AMQPValue::LongInt(5000)),
            ("x-max-length", AMQPValue::LongInt(2)),
            ("x-overflow", s("reject-publish")),
            ("x-dead-letter-exchange", s("own")),
        ]);
        let own = QueueArgs::parse(&declared, "q", "/").expect("valid");
        let effect = Effect {
            message_ttl: Some(1000),
            max_length: Some(10),
            max_length_bytes: Some(64),
            expires: Some(60_000),
            overflow: Some(Overflow::DropHead),
            dead_letter_exchange: Some("policy".into()),
            dead_letter_routing_key: Some("rk".into()),
            ..Effect::default()
        };
        let merged = own.with_policy(&declared, Some(&effect));
        // The smaller limit wins either way.
        assert_eq!(merged.message_ttl, Some(Duration::from_millis(1000)));
        assert_eq!(merged.max_length, Some(2));
        assert_eq!(merged.max_length_bytes, Some(64));
        assert_eq!(merged.expires, Some(Duration::from_millis(60_000)));
        // The queue's own overflow and dead-letter exchange win; a routing key it lacks
        // comes from the policy.
        assert_eq!(merged.overflow, Overflow::RejectPublish);
        assert_eq!(merged.dead_letter_exchange.as_deref(), Some("own"));
        assert_eq!(merged.dead_letter_routing_key.as_deref(), Some("rk"));
        // Without a declared overflow the policy's applies; without a policy, the
        // declared arguments are all there is.
        let bare = QueueArgs::default();
        let reject = Effect {
            overflow: Some(Overflow::RejectPublish),
            ..Effect::default()
        };
        let merged = bare.with_policy(&FieldTable::default(), Some(&reject));
        assert_eq!(merged.overflow, Overflow::RejectPublish);
        assert_eq!(own.with_policy(&declared, None), own);
        // A stream takes the length in bytes only: no TTL, expiry or dead-lettering.
        let stream = QueueArgs {
            kind: QueueType::Stream,
            ..QueueArgs::default()
        };
        let retention = Effect {
            max_age: Some(3_600_000),
            max_segment_bytes: Some(1000),
            ..effect.clone()
        };
        let merged = stream.with_policy(&FieldTable::default(), Some(&retention));
        assert_eq!(merged.max_length_bytes, Some(64));
        assert_eq!(merged.max_age, Some(Duration::from_secs(3600)));
        assert_eq!(merged.max_segment_bytes, Some(1000));
        assert_eq!((merged.message_ttl, merged.expires), (None, None));
        assert_eq!(merged.dead_letter_exchange, None);
    }

    #[test]
    fn queue_types_and_their_arguments() {
        let quorum = |extra: &[(&str, AMQPValue)]| {
            let mut entries = vec![("x-queue-type", s("quorum"))];
            entries.extend_from_slice(extra);
            QueueArgs::parse(&table(&entries), "q", "/")
        };
        let args = quorum(&[("x-delivery-limit", AMQPValue::ShortInt(3))]).expect("quorum");
        assert_eq!(args.kind, QueueType::Quorum);
        assert_eq!(args.delivery_limit, Some(3));
        // A limit that is not an integer limits nothing, as in RabbitMQ.
        let args = quorum(&[("x-delivery-limit", s("3"))]).expect("quorum");
        assert_eq!(args.delivery_limit, None);
        let classic = QueueArgs::parse(&table(&[("x-queue-type", s("classic"))]), "q", "/");
        assert_eq!(classic.expect("classic").kind, QueueType::Classic);
        // An unknown type is refused, not quietly made classic.
        let e = QueueArgs::parse(&table(&[("x-queue-type", s("log"))]), "q", "/")
            .expect_err("unknown type refused");
        assert!(
            e.reply_text()
                .as_str()
                .ends_with("\"unsupported queue type 'log'\""),
            "{e:?}"
        );
        let stream = |extra: &[(&str, AMQPValue)]| {
            let mut entries = vec![("x-queue-type", s("stream"))];
            entries.extend_from_slice(extra);
            QueueArgs::parse(&table(&entries), "q", "/")
        };
        let args = stream(&[
            ("x-max-age", s("7D")),
            ("x-stream-max-segment-size-bytes", AMQPValue::LongInt(500)),
            ("x-max-length-bytes", AMQPValue::LongInt(2000)),
        ])
        .expect("stream");
        assert_eq!(args.kind, QueueType::Stream);
        assert_eq!(args.max_age, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(args.max_segment_bytes, Some(500));
        assert_eq!(args.max_length_bytes, Some(2000));
        for (key, value, reason) in [
            (
                "x-max-length",
                AMQPValue::LongInt(1),
                "of queue type rabbit_stream_queue",
            ),
            (
                "x-message-ttl",
                AMQPValue::LongInt(1),
                "of queue type rabbit_stream_queue",
            ),
            (
                "x-max-age",
                AMQPValue::LongInt(5),
                "{unacceptable_type,signedint}",
            ),
            ("x-max-age", s("0h"), "invalid_max_age"),
        ] {
            let e = stream(&[(key, value)]).expect_err(key);
            assert!(e.reply_text().as_str().ends_with(reason), "{e:?}");
        }
        let e = quorum(&[("x-queue-mode", s("lazy"))]).expect_err("x-queue-mode refused");
        assert!(
            e.reply_text()
                .as_str()
                .ends_with("of queue type rabbit_quorum_queue"),
            "{e:?}"
        );
    }

    #[test]
    fn parses_every_supported_argument() {
        let args = QueueArgs::parse(
            &table(&[
                ("x-message-ttl", AMQPValue::LongInt(200)),
                ("x-expires", AMQPValue::LongLongInt(1000)),
                ("x-max-length", AMQPValue::ShortInt(2)),
                ("x-max-length-bytes", AMQPValue::LongUInt(10)),
                ("x-overflow", s("reject-publish-dlx")),
                ("x-dead-letter-exchange", s("dlx")),
                ("x-dead-letter-routing-key", s("k")),
                ("x-unknown", s("kept, ignored")),
            ]),
            "q",
            "/",
        )
        .expect("valid");
        assert_eq!(args.message_ttl, Some(Duration::from_millis(200)));
        assert_eq!(args.expires, Some(Duration::from_secs(1)));
        assert_eq!(args.max_length, Some(2));
        assert_eq!(args.overflow, Overflow::RejectPublishDlx);
        assert_eq!(args.dead_letter_routing_key.as_deref(), Some("k"));
        assert!(!args.over_limit(2, 10));
        assert!(args.over_limit(3, 0));
        assert!(args.over_limit(1, 11));
    }

    #[test]
    fn refuses_bad_types_and_values_with_rabbitmq_texts() {
        let err = |entries: &[(&str, AMQPValue)]| {
            QueueArgs::parse(&table(entries), "q", "/")
                .map_err(|e| (e.code, e.text))
                .expect_err("invalid")
        };
        assert_eq!(
            err(&[("x-max-length", s("2"))]),
            (
                406,
                "PRECONDITION_FAILED - invalid arg 'x-max-length' for queue 'q' in vhost '/': \"expected integer, got longstr\"".into()
            )
        );
        assert!(
            err(&[("x-message-ttl", AMQPValue::LongInt(-1))])
                .1
                .ends_with("{value_negative,-1}")
        );
        assert!(
            err(&[("x-expires", AMQPValue::LongInt(0))])
                .1
                .ends_with("{value_zero,0}")
        );
        assert!(
            err(&[("x-overflow", s("nope"))])
                .1
                .ends_with("invalid_overflow")
        );
        assert!(
            err(&[("x-dead-letter-routing-key", s("k"))])
                .1
                .ends_with("routing_key_but_no_dlx_defined")
        );
    }

    #[test]
    fn redeclare_compares_only_known_arguments() {
        let current = table(&[
            ("x-message-ttl", AMQPValue::LongInt(100)),
            ("custom", s("a")),
        ]);
        let same = table(&[
            ("x-message-ttl", AMQPValue::LongInt(100)),
            ("custom", s("b")),
        ]);
        assert!(check_equivalent(&same, &current, "q", "/").is_ok());
        let e = check_equivalent(&FieldTable::default(), &current, "q", "/").expect_err("differs");
        assert_eq!(
            e.text,
            "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received none but current is the value '100' of type 'signedint'"
        );
        let other = table(&[("x-message-ttl", AMQPValue::LongInt(5))]);
        assert!(check_equivalent(&other, &current, "q", "/").is_err());
        // A stream's retention settings count too, and only for a stream.
        let stream = table(&[("x-queue-type", s("stream")), ("x-max-age", s("7D"))]);
        let shorter = table(&[("x-queue-type", s("stream")), ("x-max-age", s("1D"))]);
        let e = check_equivalent(&shorter, &stream, "s", "/").expect_err("differs");
        assert_eq!(
            e.text,
            "PRECONDITION_FAILED - inequivalent arg 'x-max-age' for queue 's' in vhost '/': received '1D' but current is '7D'"
        );
        let aged = table(&[("x-max-age", s("1D"))]);
        assert!(check_equivalent(&aged, &FieldTable::default(), "q", "/").is_ok());
    }

    #[test]
    fn reads_expiration_like_rabbitmq() {
        assert_eq!(parse_expiration("100"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_expiration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_expiration("soon"), Err("no_integer".into()));
        assert_eq!(parse_expiration(""), Err("no_integer".into()));
        assert_eq!(parse_expiration("-5"), Err("{value_negative,-5}".into()));
        assert_eq!(
            parse_expiration("10s"),
            Err("{leftover_string,\"s\"}".into())
        );
        assert_eq!(parse_expiration("-0"), Ok(Duration::ZERO));
        assert_eq!(
            parse_expiration("315360000001"),
            Err("{value_too_large,315360000001}".into())
        );
        // Too long for one line after "invalid expiration '…': ", as RabbitMQ prints it.
        let indent = " ".repeat(44);
        assert_eq!(
            parse_expiration("99999999999999999999"),
            Err(format!(
                "{{value_too_large,\n{indent}99999999999999999999}}"
            ))
        );
        assert_eq!(
            parse_expiration("-99999999999999999999"),
            Err(format!(
                "{{value_negative,\n {indent}-99999999999999999999}}"
            ))
        );
        assert_eq!(
            parse_expiration("-0099999999999999999"),
            Err("{value_negative,-99999999999999999}".into())
        );
        assert_eq!(
            parse_expiration("+00315360000001"),
            Err("{value_too_large,315360000001}".into())
        );
    }

    #[test]
    fn floats_print_as_in_erlang() {
        let cases = [
            (100.0, "100.0"),
            (1000.0, "1.0e3"),
            (123_456.0, "123456.0"),
            (12_500.0, "1.25e4"),
            (0.001, "0.001"),
            (0.0001, "0.0001"),
            (0.000_12, "1.2e-4"),
            (1.0e-5, "1.0e-5"),
            (12_345.678, "12345.678"),
            (-2.5, "-2.5"),
            (0.0, "0.0"),
            (3.0e100, "3.0e100"),
        ];
        for (f, printed) in cases {
            assert_eq!(erlang_float(f), printed, "{f}");
        }
        assert_eq!(
            display_value(&AMQPValue::Float(1.1)),
            "1.100000023841858",
            "a 32-bit float widens first"
        );
    }
}
