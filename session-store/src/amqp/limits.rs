//! Per-user and per-vhost limits, as RabbitMQ's operators set them to keep one tenant or
//! one runaway client from taking the whole broker: a user's `max-connections` and
//! `max-channels` (over all its connections), a vhost's `max-connections` and
//! `max-queues`. A negative value means no limit, as in RabbitMQ; 0 refuses every new one.
//! Lowering a limit closes nothing already open, as in RabbitMQ.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// The limits a user may have.
pub const USER: [&str; 2] = ["max-connections", "max-channels"];
/// The limits a vhost may have.
pub const VHOST: [&str; 2] = ["max-connections", "max-queues"];

/// One user's or one vhost's limits, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits(BTreeMap<String, i64>);

impl Limits {
    /// The limit named `name`, unless it is unset or negative (no limit).
    pub fn get(&self, name: &str) -> Option<u64> {
        self.0.get(name).and_then(|&v| u64::try_from(v).ok())
    }

    pub fn set(&mut self, name: &str, value: i64) {
        self.0.insert(name.to_string(), value);
    }

    /// True if there was one.
    pub fn remove(&mut self, name: &str) -> bool {
        self.0.remove(name).is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `{"max-connections": 10, …}`, as the management API and definitions show them.
    pub fn to_json(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(name, &value)| (name.clone(), Value::from(value)))
                .collect(),
        )
    }

    /// Reads `{"max-connections": 10, …}` as RabbitMQ validates it: only names in
    /// `allowed`, and whole numbers. Errors are RabbitMQ's texts.
    pub fn from_json(map: &Map<String, Value>, allowed: &[&str]) -> Result<Self, String> {
        let unknown: Vec<String> = map
            .iter()
            .filter(|(name, _)| !allowed.contains(&name.as_str()))
            .map(|(name, value)| format!("{{<<\"{name}\">>,{value}}}"))
            .collect();
        if !unknown.is_empty() {
            return Err(format!("Unrecognised terms [{}]", unknown.join(",")));
        }
        let mut limits = Limits::default();
        for (name, value) in map {
            limits.set(name, value_of(name, value)?);
        }
        Ok(limits)
    }
}

/// A limit's value: a whole number, or RabbitMQ's complaint about what it is instead.
pub fn value_of(name: &str, value: &Value) -> Result<i64, String> {
    value.as_i64().ok_or_else(|| {
        let shown = match value {
            Value::String(s) => format!("<<\"{s}\">>"),
            other => other.to_string(),
        };
        format!("{name} should be a number, actually was {shown}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn negative_means_unlimited_and_zero_refuses_all() {
        let limits = Limits::from_json(
            &map(json!({"max-connections": -1, "max-queues": 0})),
            &VHOST,
        )
        .expect("valid");
        assert_eq!(limits.get("max-connections"), None);
        assert_eq!(limits.get("max-queues"), Some(0));
        assert_eq!(
            limits.to_json(),
            json!({"max-connections": -1, "max-queues": 0})
        );
    }

    #[test]
    fn refuses_what_rabbitmq_refuses() {
        let unknown = Limits::from_json(&map(json!({"max-foo": 3})), &USER);
        assert_eq!(
            unknown.expect_err("unknown"),
            "Unrecognised terms [{<<\"max-foo\">>,3}]"
        );
        let text = Limits::from_json(&map(json!({"max-channels": "x"})), &USER);
        assert_eq!(
            text.expect_err("text"),
            "max-channels should be a number, actually was <<\"x\">>"
        );
        let fraction = value_of("max-queues", &json!(1.5));
        assert_eq!(
            fraction.expect_err("fraction"),
            "max-queues should be a number, actually was 1.5"
        );
    }
}
