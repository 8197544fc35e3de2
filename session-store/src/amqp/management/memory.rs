//! `/api/nodes/NODE/memory`: the node's memory breakdown under the categories of
//! RabbitMQ's, which tools and the management UI chart. This process has none of the
//! Erlang VM's processes, tables or code areas: the messages held (queued, on their way
//! or awaiting acks, as the memory watermark counts them) show as `binary`, as RabbitMQ
//! counts message bodies, and the rest of the
//! resident memory as `other_system`; every other category is 0.

use serde_json::{Map, Value, json};

/// RabbitMQ 3.10's categories, in its order.
const CATEGORIES: [&str; 23] = [
    "connection_readers",
    "connection_writers",
    "connection_channels",
    "connection_other",
    "queue_procs",
    "queue_slave_procs",
    "quorum_queue_procs",
    "quorum_queue_dlx_procs",
    "stream_queue_procs",
    "stream_queue_replica_reader_procs",
    "stream_queue_coordinator_procs",
    "plugins",
    "other_proc",
    "metrics",
    "mgmt_db",
    "mnesia",
    "quorum_ets",
    "other_ets",
    "binary",
    "msg_index",
    "code",
    "atom",
    "other_system",
];

/// Bytes by category, of `resident` bytes of which `held` are messages.
fn bytes(resident: u64, held: u64) -> Vec<(&'static str, u64)> {
    let binary = held.min(resident);
    CATEGORIES
        .iter()
        .map(|&c| match c {
            "binary" => (c, binary),
            "other_system" => (c, resident - binary),
            _ => (c, 0),
        })
        .chain([("allocated_unused", 0), ("reserved_unallocated", 0)])
        .collect()
}

/// The breakdown in bytes, with its totals and strategy as RabbitMQ reports them.
pub fn absolute(resident: u64, held: u64) -> Value {
    let mut memory: Map<String, Value> = bytes(resident, held)
        .into_iter()
        .map(|(c, n)| (c.to_string(), json!(n)))
        .collect();
    memory.insert("strategy".into(), json!("rss"));
    memory.insert(
        "total".into(),
        json!({"erlang": resident, "rss": resident, "allocated": resident}),
    );
    json!({ "memory": memory })
}

/// The breakdown in whole percent of the resident memory (`/memory/relative`): a
/// category that holds anything shows at least 1, as in RabbitMQ's.
pub fn relative(resident: u64, held: u64) -> Value {
    let mut memory = Map::new();
    memory.insert("total".into(), json!(100));
    for (c, n) in bytes(resident, held) {
        let percent = match (n, resident) {
            (0, _) | (_, 0) => 0,
            (n, total) => ((n * 100 + total / 2) / total).max(1),
        };
        memory.insert(c.to_string(), json!(percent));
    }
    json!({ "memory": memory })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_bodies_are_binary_and_the_rest_other_system() {
        let a = absolute(10_000, 2_500);
        assert_eq!(a["memory"]["binary"], 2_500);
        assert_eq!(a["memory"]["other_system"], 7_500);
        assert_eq!(a["memory"]["code"], 0);
        assert_eq!(a["memory"]["total"]["rss"], 10_000);
        assert_eq!(a["memory"]["strategy"], "rss");
        let r = relative(10_000, 2_500);
        assert_eq!(
            (&r["memory"]["binary"], &r["memory"]["other_system"]),
            (&json!(25), &json!(75))
        );
        assert_eq!(
            relative(1_000_000, 1)["memory"]["binary"],
            1,
            "anything held shows"
        );
        assert_eq!(
            absolute(100, 500)["memory"]["other_system"],
            0,
            "never negative"
        );
    }
}
