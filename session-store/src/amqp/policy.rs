//! Policies: RabbitMQ's way for operators to give queues and exchanges TTLs, length
//! limits, dead-letter and alternate exchanges from outside the applications, and to
//! change them on live queues (queue arguments are fixed at declare). A policy matches
//! names by regular expression; of those matching an object, the highest priority
//! applies. Where a queue's own `x-` argument and its policy both set a key, RabbitMQ's
//! precedence holds: the smaller limit wins, and the queue's own dead-letter settings
//! and overflow win over the policy's.
//!
//! Operator policies are RabbitMQ's caps on top: set by administrators, limited to TTLs,
//! expiry, lengths and delivery limits, and matched beside the (user) policy, so a queue
//! can have one of each. Where both set a key, the smaller value applies.
//!
//! Policies are checked as RabbitMQ 3.10 checks them, with its reasons (in its Erlang
//! notation, `<<"a">> is not a valid message TTL`), so tools that print them read the
//! same. Keys that only matter to a cluster or to RabbitMQ's storage (`ha-mode`,
//! `queue-mode`, ...) are accepted and kept, and change nothing here. Patterns are
//! `regex` crate expressions: PCRE's lookaround and backreferences are refused.

use std::sync::Arc;

use regex::Regex;
use serde_json::{Map, Value, json};

use super::queue_args::Overflow;

/// Keys RabbitMQ knows that have no effect on a single in-memory node.
const INERT_KEYS: &[&str] = &[
    "dead-letter-strategy",
    "federation-upstream",
    "federation-upstream-set",
    "ha-mode",
    "ha-params",
    "ha-promote-on-failure",
    "ha-promote-on-shutdown",
    "ha-sync-batch-size",
    "ha-sync-mode",
    "max-in-memory-bytes",
    "max-in-memory-length",
    "queue-leader-locator",
    "queue-master-locator",
    "queue-mode",
    "queue-version",
];

/// The keys an operator policy may set (RabbitMQ's `operator_policy_validator`s); each
/// merges with a policy's value as the smaller of the two.
const OPERATOR_KEYS: &[&str] = &[
    "delivery-limit",
    "expires",
    "max-in-memory-bytes",
    "max-in-memory-length",
    "max-length",
    "max-length-bytes",
    "message-ttl",
];

/// Which of a vhost's two lists a policy belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Set by users with the `policymaker` tag: any key.
    Policy,
    /// Set by administrators: only [`OPERATOR_KEYS`], merged over the policy.
    Operator,
}

/// What a policy may apply to (`apply-to`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyTo {
    Queues,
    Exchanges,
    All,
}

impl ApplyTo {
    fn as_str(self) -> &'static str {
        match self {
            ApplyTo::Queues => "queues",
            ApplyTo::Exchanges => "exchanges",
            ApplyTo::All => "all",
        }
    }
}

/// The settings of a policy this broker acts on, checked and typed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effect {
    pub message_ttl: Option<u64>,
    pub expires: Option<u64>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Option<Overflow>,
    pub dead_letter_exchange: Option<String>,
    pub dead_letter_routing_key: Option<String>,
    pub delivery_limit: Option<u64>,
    pub alternate_exchange: Option<String>,
    /// `max-age` (streams), in ms.
    pub max_age: Option<u64>,
    /// `stream-max-segment-size-bytes` (streams).
    pub max_segment_bytes: Option<u64>,
}

impl Effect {
    /// What applies to an object with `policy` and `operator` matching it: the policy's
    /// settings, with each limit the operator policy also sets lowered to the smaller
    /// (RabbitMQ's `merge_policy_value`). None when neither matches.
    pub fn merged(policy: Option<&Effect>, operator: Option<&Effect>) -> Option<Effect> {
        let Some(op) = operator else {
            return policy.cloned();
        };
        let min = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut e = policy.cloned().unwrap_or_default();
        e.message_ttl = min(e.message_ttl, op.message_ttl);
        e.expires = min(e.expires, op.expires);
        e.max_length = min(e.max_length, op.max_length);
        e.max_length_bytes = min(e.max_length_bytes, op.max_length_bytes);
        e.delivery_limit = min(e.delivery_limit, op.delivery_limit);
        Some(e)
    }
}

/// The definition listed as a queue's `effective_policy_definition`: the keys of both,
/// the smaller value where both set one (an operator policy's values are whole numbers).
pub fn merged_definition(policy: Option<&Policy>, operator: Option<&Policy>) -> Map<String, Value> {
    let mut out = policy.map_or_else(Map::new, |p| p.definition.clone());
    for (key, value) in operator.into_iter().flat_map(|o| &o.definition) {
        let smaller = match (out.get(key).and_then(Value::as_u64), value.as_u64()) {
            (Some(own), Some(op)) if own < op => continue,
            _ => value.clone(),
        };
        out.insert(key.clone(), smaller);
    }
    out
}

/// One policy of a vhost.
#[derive(Debug, Clone)]
pub struct Policy {
    pub kind: Kind,
    pub name: String,
    pub pattern: String,
    regex: Regex,
    pub apply_to: ApplyTo,
    /// As given (RabbitMQ takes any number), for listing it back unchanged.
    priority: serde_json::Number,
    pub definition: Map<String, Value>,
    pub effect: Effect,
}

impl Policy {
    /// Reads a policy from its JSON (the management API's PUT body, a definitions file
    /// entry), refusing it with RabbitMQ's reason.
    pub fn parse(name: &str, body: &Value) -> Result<Policy, String> {
        Policy::parse_as(Kind::Policy, name, body)
    }

    /// As [`Policy::parse`], for a policy of `kind`.
    pub fn parse_as(kind: Kind, name: &str, body: &Value) -> Result<Policy, String> {
        let Some(body) = body.as_object() else {
            return Err("not_json".to_string());
        };
        let Some(pattern) = body.get("pattern") else {
            return Err("[{key_missing,pattern}]".to_string());
        };
        let Some(definition) = body.get("definition") else {
            return Err("[{key_missing,definition}]".to_string());
        };
        let failed = |reason: String| format!("Validation failed\n\n{reason}\n");
        let priority = match body.get("priority") {
            None => serde_json::Number::from(0),
            Some(Value::Number(n)) => n.clone(),
            Some(other) => {
                return Err(failed(format!(
                    "priority should be a number, actually was {}",
                    erlang(other)
                )));
            }
        };
        let apply_to = match body.get("apply-to") {
            None => ApplyTo::All,
            Some(v) => match v.as_str() {
                Some("queues") => ApplyTo::Queues,
                Some("exchanges") => ApplyTo::Exchanges,
                Some("all") => ApplyTo::All,
                _ => {
                    let shown = v.as_str().map_or_else(|| erlang(v), str::to_string);
                    return Err(failed(format!(
                        "apply-to '{shown}' unrecognised; should be 'queues', 'exchanges' or 'all'"
                    )));
                }
            },
        };
        let Some(pattern) = pattern.as_str() else {
            return Err(failed(format!(
                "pattern should be regular expression but is invalid: {}",
                erlang(pattern)
            )));
        };
        let regex = Regex::new(pattern).map_err(|e| {
            failed(format!(
                "pattern should be regular expression but is invalid: {e}"
            ))
        })?;
        let Some(definition) = definition.as_object() else {
            return Err(failed(format!(
                "definition should be an object, actually was {}",
                erlang(definition)
            )));
        };
        let effect = effect(kind, definition).map_err(failed)?;
        Ok(Policy {
            kind,
            name: name.to_string(),
            pattern: pattern.to_string(),
            regex,
            apply_to,
            priority,
            definition: definition.clone(),
            effect,
        })
    }

    /// The policy as the management API and definitions export list it.
    pub fn to_json(&self, vhost: &str) -> Value {
        json!({
            "vhost": vhost,
            "name": self.name,
            "pattern": self.pattern,
            "apply-to": self.apply_to.as_str(),
            "definition": self.definition,
            "priority": self.priority,
        })
    }

    fn priority(&self) -> f64 {
        self.priority.as_f64().unwrap_or(0.0)
    }

    fn matches(&self, exchange: bool, name: &str) -> bool {
        let kind = if exchange {
            ApplyTo::Exchanges
        } else {
            ApplyTo::Queues
        };
        (self.apply_to == ApplyTo::All || self.apply_to == kind) && self.regex.is_match(name)
    }
}

/// A vhost's policies.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    /// Highest priority first; among equal priorities, by name.
    list: Vec<Arc<Policy>>,
}

impl Policies {
    /// Adds or replaces `policy`; true if one of that name existed.
    pub fn set(&mut self, policy: Policy) -> bool {
        let existed = self.remove(&policy.name);
        let at = self
            .list
            .partition_point(|p| outranks(p, &policy) != std::cmp::Ordering::Greater);
        self.list.insert(at, Arc::new(policy));
        existed
    }

    /// Removes the policy `name`; false if there was none.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.list.len();
        self.list.retain(|p| p.name != name);
        self.list.len() != before
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Policy>> {
        self.list.iter()
    }

    /// The policy that applies to the queue `name`, if any.
    pub fn for_queue(&self, name: &str) -> Option<Arc<Policy>> {
        self.list.iter().find(|p| p.matches(false, name)).cloned()
    }

    /// The policy that applies to the exchange `name`, if any.
    pub fn for_exchange(&self, name: &str) -> Option<Arc<Policy>> {
        self.list.iter().find(|p| p.matches(true, name)).cloned()
    }
}

/// Ordering of the list: `Less` when `a` comes before `b`.
fn outranks(a: &Policy, b: &Policy) -> std::cmp::Ordering {
    b.priority()
        .total_cmp(&a.priority())
        .then_with(|| a.name.cmp(&b.name))
}

/// Checks a definition key by key as RabbitMQ does: each known key in key order, then
/// the unknown keys (all of them, sorted). Which keys are known depends on the `kind`.
fn effect(kind: Kind, definition: &Map<String, Value>) -> Result<Effect, String> {
    if definition.is_empty() {
        return Err("no policy provided".to_string());
    }
    let mut keys: Vec<&String> = definition.keys().collect();
    keys.sort();
    let known = |k: &str| match kind {
        Kind::Policy => INERT_KEYS.contains(&k) || is_effective(k),
        Kind::Operator => OPERATOR_KEYS.contains(&k),
    };
    let (keys, unknown): (Vec<&String>, Vec<&String>) = keys.into_iter().partition(|k| known(k));
    let mut e = Effect::default();
    for key in keys {
        let v = &definition[key.as_str()];
        let bad = |what: &str| format!("{} is not a valid {what}", erlang(v));
        let count =
            |min: u64, what: &str| v.as_u64().filter(|n| *n >= min).ok_or_else(|| bad(what));
        let text = |what: &str| v.as_str().map(str::to_string).ok_or_else(|| bad(what));
        match key.as_str() {
            "message-ttl" => e.message_ttl = Some(count(0, "message TTL")?),
            "expires" => e.expires = Some(count(1, "queue expiry")?),
            "max-length" => e.max_length = Some(count(0, "maximum length")?),
            "max-length-bytes" => e.max_length_bytes = Some(count(0, "maximum length in bytes")?),
            "delivery-limit" => e.delivery_limit = Some(count(0, "delivery limit")?),
            "overflow" => {
                e.overflow = Some(match v.as_str() {
                    Some("drop-head") => Overflow::DropHead,
                    Some("reject-publish") => Overflow::RejectPublish,
                    Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
                    _ => return Err(bad("overflow value")),
                });
            }
            "dead-letter-exchange" => {
                e.dead_letter_exchange = Some(text("dead letter exchange name")?);
            }
            "dead-letter-routing-key" => {
                e.dead_letter_routing_key = Some(text("dead letter routing key")?);
            }
            "alternate-exchange" => e.alternate_exchange = Some(text("alternate exchange name")?),
            "max-age" => {
                let age = v.as_str().and_then(super::stream::interval_ms);
                e.max_age = Some(age.ok_or_else(|| bad("max age"))?);
            }
            "stream-max-segment-size-bytes" => {
                e.max_segment_bytes = Some(count(0, "segment size")?);
            }
            "max-in-memory-length" | "max-in-memory-bytes" => {
                count(0, "maximum memory in bytes")?;
            }
            _ => {}
        }
    }
    if !unknown.is_empty() {
        let listed: Vec<String> = unknown
            .iter()
            .map(|k| {
                format!(
                    "{{{},{}}}",
                    erlang_binary(k),
                    erlang(&definition[k.as_str()])
                )
            })
            .collect();
        return Err(format!(
            "[{}] are not recognised policy settings",
            listed.join(",")
        ));
    }
    Ok(e)
}

fn is_effective(key: &str) -> bool {
    matches!(
        key,
        "message-ttl"
            | "expires"
            | "max-length"
            | "max-length-bytes"
            | "delivery-limit"
            | "overflow"
            | "dead-letter-exchange"
            | "dead-letter-routing-key"
            | "alternate-exchange"
            | "max-age"
            | "stream-max-segment-size-bytes"
    )
}

/// A JSON value as RabbitMQ prints the Erlang term it decodes to.
fn erlang(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => erlang_binary(s),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(erlang).collect::<Vec<_>>().join(",")
        ),
        Value::Object(map) => format!(
            "[{}]",
            map.iter()
                .map(|(k, v)| format!("{{{},{}}}", erlang_binary(k), erlang(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

fn erlang_binary(s: &str) -> String {
    format!("<<{s:?}>>")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(body: Value) -> Result<Policy, String> {
        Policy::parse("p", &body)
    }

    #[test]
    fn refusals_read_as_rabbitmq_words_them() {
        let reason = |body: Value| policy(body).err().unwrap_or_default();
        assert_eq!(
            reason(json!({"pattern": "x", "definition": {"foo": 1, "bar": "b"}})),
            "Validation failed\n\n[{<<\"bar\">>,<<\"b\">>},{<<\"foo\">>,1}] are not recognised policy settings\n"
        );
        assert_eq!(
            reason(json!({"pattern": "x", "definition": {"message-ttl": -1, "expires": 0}})),
            "Validation failed\n\n0 is not a valid queue expiry\n"
        );
        assert_eq!(
            reason(json!({"pattern": "x", "definition": {"message-ttl": "a"}})),
            "Validation failed\n\n<<\"a\">> is not a valid message TTL\n"
        );
        assert_eq!(
            reason(json!({"pattern": "x", "definition": {"message-ttl": 1.5}})),
            "Validation failed\n\n1.5 is not a valid message TTL\n"
        );
        assert_eq!(
            reason(json!({"pattern": "x", "definition": {}})),
            "Validation failed\n\nno policy provided\n"
        );
        assert_eq!(
            reason(json!({"definition": {"message-ttl": 1}})),
            "[{key_missing,pattern}]"
        );
        assert_eq!(
            reason(json!({"pattern": "x", "definition": {"max-length": 1}, "apply-to": "bogus"})),
            "Validation failed\n\napply-to 'bogus' unrecognised; should be 'queues', 'exchanges' or 'all'\n"
        );
        assert!(
            reason(json!({"pattern": "(", "definition": {"max-length": 1}})).starts_with(
                "Validation failed\n\npattern should be regular expression but is invalid: "
            )
        );
    }

    #[test]
    fn the_highest_priority_match_applies() {
        let mut all = Policies::default();
        let low = json!({"pattern": "^q", "definition": {"max-length": 5}, "priority": 0});
        let high = json!({"pattern": "^q\\.", "definition": {"max-length": 1}, "priority": 2,
                          "apply-to": "queues"});
        all.set(Policy::parse("low", &low).expect("low"));
        assert!(!all.set(Policy::parse("high", &high).expect("high")));
        let name = |p: Option<Arc<Policy>>| p.map(|p| p.name.clone());
        assert_eq!(name(all.for_queue("q.1")), Some("high".to_string()));
        assert_eq!(name(all.for_queue("qq")), Some("low".to_string()));
        assert_eq!(name(all.for_exchange("q.1")), Some("low".to_string()));
        assert_eq!(name(all.for_queue("other")), None);
        assert!(all.remove("high"));
        assert!(!all.remove("high"));
        assert_eq!(name(all.for_queue("q.1")), Some("low".to_string()));
    }

    #[test]
    fn operator_policies_take_only_limits() {
        let reason = |definition: Value| {
            Policy::parse_as(
                Kind::Operator,
                "op",
                &json!({"pattern": ".*", "definition": definition}),
            )
            .err()
            .unwrap_or_default()
        };
        assert_eq!(
            reason(json!({"dead-letter-exchange": "dlx", "max-length": 5})),
            "Validation failed\n\n[{<<\"dead-letter-exchange\">>,<<\"dlx\">>}] are not recognised policy settings\n"
        );
        // A bad value is reported before an unknown key, as RabbitMQ validates.
        assert_eq!(
            reason(json!({"overflow": "drop-head", "max-in-memory-length": -1})),
            "Validation failed\n\n-1 is not a valid maximum memory in bytes\n"
        );
        let op = Policy::parse_as(
            Kind::Operator,
            "op",
            &json!({"pattern": ".*",
            "definition": {"max-length": 5, "message-ttl": 1000, "max-in-memory-length": 3}}),
        )
        .expect("limits are operator settings");
        assert_eq!(op.kind, Kind::Operator);
        assert_eq!(
            (op.effect.max_length, op.effect.message_ttl),
            (Some(5), Some(1000))
        );
    }

    #[test]
    fn operator_limits_lower_the_policy_s() {
        let policy = Policy::parse(
            "p",
            &json!({"pattern": ".*", "definition":
            {"max-length": 3, "message-ttl": 60000, "dead-letter-exchange": "dlx"}}),
        )
        .expect("policy");
        let op = Policy::parse_as(
            Kind::Operator,
            "op",
            &json!({"pattern": ".*",
            "definition": {"max-length": 10, "message-ttl": 500, "expires": 9000}}),
        )
        .expect("operator policy");
        let e = Effect::merged(Some(&policy.effect), Some(&op.effect)).expect("both apply");
        assert_eq!(e.max_length, Some(3), "the policy's smaller limit stays");
        assert_eq!(
            e.message_ttl,
            Some(500),
            "the operator's smaller TTL applies"
        );
        assert_eq!(e.expires, Some(9000));
        assert_eq!(e.dead_letter_exchange.as_deref(), Some("dlx"));
        assert_eq!(Effect::merged(None, None), None);
        assert_eq!(
            Effect::merged(None, Some(&op.effect)),
            Some(op.effect.clone())
        );
        assert_eq!(
            Value::Object(merged_definition(Some(&policy), Some(&op))),
            json!({"max-length": 3, "message-ttl": 500, "expires": 9000, "dead-letter-exchange": "dlx"})
        );
        assert_eq!(
            Value::Object(merged_definition(None, Some(&op))),
            json!({"max-length": 10,
            "message-ttl": 500, "expires": 9000})
        );
    }

    #[test]
    fn inert_keys_are_kept_without_effect() {
        let p = policy(
            json!({"pattern": ".*", "definition": {"ha-mode": "all", "queue-mode": "lazy"}}),
        )
        .expect("inert keys are valid");
        assert_eq!(p.effect, Effect::default());
        assert_eq!(p.to_json("/")["definition"]["ha-mode"], "all");
    }
}
