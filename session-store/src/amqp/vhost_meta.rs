//! A vhost's metadata, as RabbitMQ keeps it: a description and tags that tools label
//! vhosts with, and a default queue type, which makes the queues clients declare there
//! without `x-queue-type` queues of that type where they can be (a quorum queue or a
//! stream must be durable, not exclusive and not auto-delete; other declarations stay
//! classic). Set
//! through the management API or a definitions file, kept with the users and vhosts.

use serde_json::{Map, Value, json};

/// The queue types a vhost may default to.
const QUEUE_TYPES: [&str; 3] = ["classic", "quorum", "stream"];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VHostMeta {
    pub description: String,
    pub tags: Vec<String>,
    pub default_queue_type: Option<String>,
}

impl VHostMeta {
    /// From the fields RabbitMQ's API and definitions files carry: `description`, `tags`
    /// (a comma-separated string or a list) and the default queue type (`defaultqueuetype`,
    /// as RabbitMQ 3.10's API names it, or `default_queue_type`), each also read inside a
    /// `metadata` object. Err names a default queue type this broker does not have.
    pub fn from_fields(fields: &Map<String, Value>) -> Result<Self, String> {
        let nested = fields.get("metadata").and_then(Value::as_object);
        let get = |key: &str| {
            fields
                .get(key)
                .or_else(|| nested.and_then(|m| m.get(key)))
                .filter(|v| !v.is_null())
        };
        let description = get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let tags = get("tags").map(tags).unwrap_or_default();
        let default_queue_type = match get("defaultqueuetype").or_else(|| get("default_queue_type"))
        {
            None => None,
            Some(Value::String(t)) if t.is_empty() || t == "undefined" => None,
            Some(Value::String(t)) if QUEUE_TYPES.contains(&t.as_str()) => Some(t.clone()),
            Some(other) => {
                return Err(format!(
                    "invalid default queue type {other}: this broker has classic, quorum and stream queues"
                ));
            }
        };
        Ok(VHostMeta {
            description,
            tags,
            default_queue_type,
        })
    }

    /// Whether these fields of a vhost say anything about its metadata (a file that
    /// names a vhost alone leaves an existing one's as it is).
    pub fn carried_by(fields: &Map<String, Value>) -> bool {
        [
            "description",
            "tags",
            "metadata",
            "defaultqueuetype",
            "default_queue_type",
        ]
        .iter()
        .any(|k| fields.contains_key(*k))
    }

    /// The fields a vhost lists them in, as RabbitMQ 3.10 shows them: at the top and in
    /// `metadata`; a vhost without a default queue type shows `"undefined"`.
    pub fn json_fields(&self) -> Map<String, Value> {
        let mut metadata = json!({"description": self.description, "tags": self.tags});
        if let Some(t) = &self.default_queue_type {
            metadata["default_queue_type"] = json!(t);
        }
        let mut out = Map::new();
        out.insert("description".into(), json!(self.description));
        out.insert("tags".into(), json!(self.tags));
        out.insert("metadata".into(), metadata);
        out.insert(
            "default_queue_type".into(),
            json!(self.default_queue_type.as_deref().unwrap_or("undefined")),
        );
        out
    }

    /// The `x-queue-type` a declaration without one gets here, if any: the default type
    /// when the declaration suits it, as RabbitMQ decides.
    pub fn queue_type_for(
        &self,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
    ) -> Option<&str> {
        let t = self.default_queue_type.as_deref()?;
        let fits = t == "classic" || (durable && !exclusive && !auto_delete);
        fits.then_some(t)
    }
}

/// Tags from a comma-separated string or a list, trimmed, empty ones dropped.
fn tags(value: &Value) -> Vec<String> {
    let listed: Vec<&str> = match value {
        Value::String(s) => s.split(',').collect(),
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    listed
        .into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(value: Value) -> Result<VHostMeta, String> {
        VHostMeta::from_fields(value.as_object().expect("an object"))
    }

    #[test]
    fn reads_the_api_and_definitions_forms() {
        let api =
            meta(json!({"description": "orders", "tags": "a, b,,", "defaultqueuetype": "quorum"}));
        let expected = VHostMeta {
            description: "orders".into(),
            tags: vec!["a".into(), "b".into()],
            default_queue_type: Some("quorum".into()),
        };
        assert_eq!(api, Ok(expected.clone()));
        let exported = json!({"name": "v", "metadata": {"description": "orders", "tags": ["a", "b"],
                                                       "default_queue_type": "quorum"}});
        assert!(VHostMeta::carried_by(exported.as_object().expect("object")));
        assert_eq!(meta(exported), Ok(expected.clone()));
        // RabbitMQ 3.10's own exports name a vhost and its limits only.
        let bare = json!({"name": "v", "limits": []});
        assert!(!VHostMeta::carried_by(bare.as_object().expect("object")));
        assert_eq!(meta(json!({})), Ok(VHostMeta::default()));
        assert!(meta(json!({"defaultqueuetype": "log"})).is_err());
        let streams = meta(json!({"defaultqueuetype": "stream"})).expect("streams");
        assert_eq!(streams.queue_type_for(true, false, false), Some("stream"));
        assert_eq!(streams.queue_type_for(true, true, false), None, "exclusive");
        let shown = expected.json_fields();
        assert_eq!(shown["default_queue_type"], "quorum");
        assert_eq!(shown["metadata"]["tags"], json!(["a", "b"]));
        assert_eq!(
            VHostMeta::default().json_fields()["default_queue_type"],
            "undefined"
        );
    }

    #[test]
    fn a_quorum_default_applies_only_where_a_quorum_queue_can_be() {
        let quorum = meta(json!({"default_queue_type": "quorum"})).expect("valid");
        assert_eq!(quorum.queue_type_for(true, false, false), Some("quorum"));
        assert_eq!(quorum.queue_type_for(false, false, false), None);
        assert_eq!(quorum.queue_type_for(true, true, false), None);
        assert_eq!(quorum.queue_type_for(true, false, true), None);
        assert_eq!(
            VHostMeta::default().queue_type_for(true, false, false),
            None
        );
    }
}
