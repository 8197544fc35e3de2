//! What a session is on the server side: the application's key-value data plus the few
//! fields the layer itself needs to keep stores and caches honest.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A session as stored. `version` grows by one with every change, so any two copies can be
/// ordered: near-caches, cookies and events all compare versions rather than trust arrival
/// order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    #[serde(rename = "v")]
    pub version: u64,
    /// Unix seconds when the session began: the absolute timeout counts from here, and an
    /// id rotation keeps it.
    #[serde(rename = "c")]
    pub created: u64,
    /// The signed-in user, if any: the key of the per-user index.
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(rename = "d", default)]
    pub data: Map<String, Value>,
}

impl Record {
    /// A session that has never been saved.
    pub fn fresh() -> Self {
        Record {
            version: 0,
            created: unix_now(),
            user: None,
            data: Map::new(),
        }
    }
}

/// Seconds since the Unix epoch; 0 if the clock is before it (it never is in practice, and
/// a session that then looks ancient is the safe failure).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
