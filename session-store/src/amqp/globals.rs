//! Global runtime parameters: node-wide settings as RabbitMQ keeps them. Two have a
//! meaning here: `cluster_name`, the name clients see in connection.start and the
//! management API shows (the node's name until one is set), and `internal_cluster_id`,
//! which monitoring uses to tell clusters apart. Operators may keep others of their own
//! through the API; they travel in definitions files as `global_parameters` and are kept
//! in the data directory with users and vhosts. The id is the node's own: made once, kept
//! in a file of its own, never taken from a definitions file.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::Path;

use base64::Engine as _;
use serde_json::{Value, json};

use super::store::StoreError;

pub const CLUSTER_NAME: &str = "cluster_name";
pub const CLUSTER_ID: &str = "internal_cluster_id";

/// Every global parameter, by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Globals(BTreeMap<String, Value>);

impl Globals {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    /// Sets one; true if it was set before.
    pub fn set(&mut self, name: &str, value: Value) -> bool {
        self.0.insert(name.to_string(), value).is_some()
    }

    /// Clears one; false if it was not set.
    pub fn remove(&mut self, name: &str) -> bool {
        self.0.remove(name).is_some()
    }

    /// The name set for the cluster, if any.
    pub fn cluster_name(&self) -> Option<&str> {
        self.get(CLUSTER_NAME).and_then(Value::as_str)
    }

    /// Sets every parameter `other` has, keeping the rest.
    pub fn merge(&mut self, other: &Globals) {
        for (name, value) in &other.0 {
            self.0.insert(name.clone(), value.clone());
        }
    }

    /// `[{"name": ..., "value": ...}, …]`, by name, as RabbitMQ lists them.
    pub fn to_json(&self) -> Value {
        self.0
            .iter()
            .map(|(name, value)| json!({"name": name, "value": value}))
            .collect()
    }

    /// One, as RabbitMQ shows it.
    pub fn one_json(&self, name: &str) -> Option<Value> {
        self.get(name)
            .map(|value| json!({"name": name, "value": value}))
    }
}

/// The file under the data directory that keeps the id; the dot keeps it apart from the
/// vhosts' directories, whose names escape dots.
const ID_FILE: &str = "internal_cluster_id.txt";

/// The node's cluster id: the one kept in `data` (made and kept there the first time), or
/// a new one for a node without a data directory.
pub fn cluster_id(data: Option<&Path>) -> Result<String, StoreError> {
    let Some(data) = data else {
        return Ok(new_cluster_id());
    };
    let path = data.join(ID_FILE);
    match fs::read_to_string(&path) {
        Ok(kept) if !kept.trim().is_empty() => return Ok(kept.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::io(&path, e)),
    }
    let id = new_cluster_id();
    let write = || -> std::io::Result<()> {
        let mut file = fs::File::create(&path)?;
        file.write_all(id.as_bytes())?;
        file.sync_all()?;
        fs::File::open(data)?.sync_all()
    };
    write().map_err(|e| StoreError::io(&path, e))?;
    Ok(id)
}

/// An id in RabbitMQ's form, `rabbitmq-cluster-id-` and 16 random bytes in URL-safe
/// base64, so that tools which parse it find what they expect.
fn new_cluster_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // Without the OS's randomness, the clock still tells nodes apart.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        bytes = now.to_le_bytes();
    }
    let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    format!("rabbitmq-cluster-id-{id}")
}

impl FromIterator<(String, Value)> for Globals {
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(items: I) -> Self {
        Globals(items.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_id_is_made_once_in_rabbitmq_form_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = cluster_id(Some(dir.path())).expect("made");
        assert!(id.starts_with("rabbitmq-cluster-id-"), "{id}");
        assert_eq!(id.len(), "rabbitmq-cluster-id-".len() + 22, "{id}");
        assert_eq!(cluster_id(Some(dir.path())).expect("read back"), id);
        assert_ne!(cluster_id(None).expect("in memory"), id);
    }

    #[test]
    fn merged_parameters_replace_those_of_the_same_name() {
        let mut g: Globals = [
            (CLUSTER_NAME.to_string(), json!("a")),
            ("kept".to_string(), json!(1)),
        ]
        .into_iter()
        .collect();
        let other: Globals = [(CLUSTER_NAME.to_string(), json!("b"))]
            .into_iter()
            .collect();
        g.merge(&other);
        assert_eq!(g.cluster_name(), Some("b"));
        assert_eq!(
            g.to_json(),
            json!([{"name": "cluster_name", "value": "b"}, {"name": "kept", "value": 1}])
        );
        assert!(g.remove("kept"));
        assert!(!g.remove("kept"));
    }
}
