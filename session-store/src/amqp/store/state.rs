//! The durable state the log describes: durable exchanges, queues and bindings, and the
//! persistent messages still in durable queues. Recovery builds it by replaying the log;
//! the writer keeps one up to date with every record it writes, which makes compaction a
//! matter of writing this state out, with no need to stop the broker to look at its own.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use amq_protocol::types::FieldTable;

use super::super::policy::Kind;
use super::super::queue::Message;
use super::record::{BindingRecord, Record};

/// A durable exchange as declared.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeDef {
    pub kind: String,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

/// A durable queue and the ids of its messages in queue order, each with whether it was
/// delivered to a consumer that did not ack it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueDef {
    pub auto_delete: bool,
    pub arguments: FieldTable,
    pub messages: BTreeMap<u64, bool>,
    /// A stream's first offset: its first message's, the others following in order.
    pub first_offset: u64,
}

/// A persistent message and how many durable queues still hold it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    pub message: Arc<Message>,
    pub published_ms: u64,
    refs: usize,
    /// Bytes of its publish record, for the live-size estimate.
    size: u64,
}

/// Everything durable, as of the last record applied.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct State {
    pub exchanges: BTreeMap<String, ExchangeDef>,
    pub queues: BTreeMap<Arc<str>, QueueDef>,
    pub bindings: Vec<BindingRecord>,
    /// Policies and operator policies by kind and name, as their JSON.
    pub policies: BTreeMap<(Kind, String), String>,
    pub messages: HashMap<u64, StoredMessage>,
    /// The highest message id seen, so new ids never repeat old ones.
    pub max_id: u64,
    /// Approximate bytes a compacted log of this state takes.
    live_bytes: u64,
}

/// Rough size of the records describing one entity, for the live-size estimate.
const ENTITY_BYTES: u64 = 64;

impl State {
    /// Applies one record. `size` is its framed size on disk.
    pub fn apply(&mut self, record: &Record, size: u64) {
        match record {
            Record::Snapshot => *self = State::default(),
            Record::DeclareExchange {
                name,
                kind,
                auto_delete,
                internal,
                arguments,
            } => {
                let def = ExchangeDef {
                    kind: kind.clone(),
                    auto_delete: *auto_delete,
                    internal: *internal,
                    arguments: arguments.clone(),
                };
                self.exchanges.insert(name.clone(), def);
            }
            Record::DeleteExchange { name } => {
                self.exchanges.remove(name);
                self.bindings.retain(|b| {
                    b.source != *name
                        && b.destination
                            != super::super::exchange::Destination::Exchange(name.clone())
                });
            }
            Record::DeclareQueue {
                name,
                auto_delete,
                arguments,
            } => {
                self.queues.entry(name.clone()).or_insert_with(|| QueueDef {
                    auto_delete: *auto_delete,
                    arguments: arguments.clone(),
                    messages: BTreeMap::new(),
                    first_offset: 0,
                });
            }
            Record::DeleteQueue { name } => {
                if let Some(q) = self.queues.remove(name) {
                    for id in q.messages.keys() {
                        self.release(*id);
                    }
                }
                let gone = super::super::exchange::Destination::Queue(name.to_string());
                self.bindings.retain(|b| b.destination != gone);
            }
            Record::Bind(b) => {
                if !self.bindings.contains(b) {
                    self.bindings.push(b.clone());
                }
            }
            Record::Unbind(b) => self.bindings.retain(|x| x != b),
            Record::Publish {
                id,
                published_ms,
                queues,
                message,
            } => {
                self.max_id = self.max_id.max(*id);
                let mut refs = 0;
                for name in queues {
                    if let Some(q) = self.queues.get_mut(name)
                        && q.messages.insert(*id, false).is_none()
                    {
                        refs += 1;
                    }
                }
                if refs > 0 {
                    self.live_bytes += size;
                    self.messages.insert(
                        *id,
                        StoredMessage {
                            message: message.clone(),
                            published_ms: *published_ms,
                            refs,
                            size,
                        },
                    );
                }
            }
            Record::Delivered { queue, id } => {
                if let Some(delivered) = self
                    .queues
                    .get_mut(queue)
                    .and_then(|q| q.messages.get_mut(id))
                {
                    *delivered = true;
                }
            }
            Record::Settle { queue, id } => {
                if self
                    .queues
                    .get_mut(queue)
                    .and_then(|q| q.messages.remove(id))
                    .is_some()
                {
                    self.release(*id);
                }
            }
            Record::Purge { queue } => {
                if let Some(q) = self.queues.get_mut(queue) {
                    let ids: Vec<u64> = std::mem::take(&mut q.messages).into_keys().collect();
                    for id in ids {
                        self.release(id);
                    }
                }
            }
            Record::StreamStart { queue, offset } => {
                if let Some(q) = self.queues.get_mut(queue) {
                    q.first_offset = *offset;
                }
            }
            Record::StreamTrim { queue, offset } => {
                let mut dropped = Vec::new();
                if let Some(q) = self.queues.get_mut(queue) {
                    // A stream's messages are in offset order by id.
                    while q.first_offset < *offset
                        && let Some((id, _)) = q.messages.pop_first()
                    {
                        dropped.push(id);
                        q.first_offset += 1;
                    }
                    q.first_offset = q.first_offset.max(*offset);
                }
                for id in dropped {
                    self.release(id);
                }
            }
            Record::SetPolicy { kind, name, json } => {
                self.policies.insert((*kind, name.clone()), json.clone());
            }
            Record::ClearPolicy { kind, name } => {
                self.policies.remove(&(*kind, name.clone()));
            }
        }
    }

    /// One queue less holds message `id`; the last one frees it.
    fn release(&mut self, id: u64) {
        if let Some(m) = self.messages.get_mut(&id) {
            m.refs -= 1;
            if m.refs == 0 {
                self.live_bytes -= m.size;
                self.messages.remove(&id);
            }
        }
    }

    /// Approximate bytes of [`State::snapshot`]'s records.
    pub fn live_bytes(&self) -> u64 {
        let entities =
            self.exchanges.len() + self.queues.len() + self.bindings.len() + self.policies.len();
        self.live_bytes + ENTITY_BYTES * entities as u64
    }

    /// The records that rebuild this state from nothing, starting with
    /// [`Record::Snapshot`]; messages in id order, so each queue keeps its order.
    pub fn snapshot(&self) -> Vec<Record> {
        let mut out = vec![Record::Snapshot];
        for ((kind, name), json) in &self.policies {
            out.push(Record::SetPolicy {
                kind: *kind,
                name: name.clone(),
                json: json.clone(),
            });
        }
        for (name, x) in &self.exchanges {
            out.push(Record::DeclareExchange {
                name: name.clone(),
                kind: x.kind.clone(),
                auto_delete: x.auto_delete,
                internal: x.internal,
                arguments: x.arguments.clone(),
            });
        }
        for (name, q) in &self.queues {
            out.push(Record::DeclareQueue {
                name: name.clone(),
                auto_delete: q.auto_delete,
                arguments: q.arguments.clone(),
            });
            if q.first_offset > 0 {
                out.push(Record::StreamStart {
                    queue: name.clone(),
                    offset: q.first_offset,
                });
            }
        }
        out.extend(self.bindings.iter().cloned().map(Record::Bind));
        let mut holders: BTreeMap<u64, Vec<(Arc<str>, bool)>> = BTreeMap::new();
        for (name, q) in &self.queues {
            for (id, delivered) in &q.messages {
                holders
                    .entry(*id)
                    .or_default()
                    .push((name.clone(), *delivered));
            }
        }
        for (id, queues) in holders {
            let Some(m) = self.messages.get(&id) else {
                continue;
            };
            out.push(Record::Publish {
                id,
                published_ms: m.published_ms,
                queues: queues.iter().map(|(q, _)| q.clone()).collect(),
                message: m.message.clone(),
            });
            for (queue, delivered) in queues {
                if delivered {
                    out.push(Record::Delivered { queue, id });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::amqp::exchange::Destination;

    fn message(body: &'static [u8]) -> Arc<Message> {
        Arc::new(Message::new(
            "".into(),
            "q".into(),
            Default::default(),
            Bytes::from_static(body),
        ))
    }

    fn publish(id: u64, queues: &[&str]) -> Record {
        Record::Publish {
            id,
            published_ms: 0,
            queues: queues.iter().map(|q| Arc::from(*q)).collect(),
            message: message(b"body"),
        }
    }

    fn queue(name: &str) -> Record {
        Record::DeclareQueue {
            name: name.into(),
            auto_delete: false,
            arguments: FieldTable::default(),
        }
    }

    fn settle(queue: &str, id: u64) -> Record {
        Record::Settle {
            queue: queue.into(),
            id,
        }
    }

    fn replay(records: &[Record]) -> State {
        let mut s = State::default();
        for r in records {
            s.apply(r, 100);
        }
        s
    }

    #[test]
    fn messages_live_until_every_queue_settles_them() {
        let s = replay(&[
            queue("a"),
            queue("b"),
            publish(1, &["a", "b", "transient"]),
            publish(2, &["a"]),
            settle("a", 1),
            Record::Delivered {
                queue: "b".into(),
                id: 1,
            },
            publish(3, &["b"]),
            Record::Purge { queue: "b".into() },
            publish(4, &["b"]),
        ]);
        assert_eq!(s.queues["a"].messages, BTreeMap::from([(2, false)]));
        assert_eq!(s.queues["b"].messages, BTreeMap::from([(4, false)]));
        let mut ids: Vec<u64> = s.messages.keys().copied().collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![2, 4]);
        assert_eq!(s.max_id, 4);
        assert_eq!(s.live_bytes(), 200 + 2 * ENTITY_BYTES);
    }

    #[test]
    fn a_stream_trim_drops_the_oldest_messages_and_moves_the_first_offset() {
        let mut records = vec![
            queue("s"),
            queue("c"),
            Record::StreamStart {
                queue: "s".into(),
                offset: 10,
            },
        ];
        records.extend((1..=5).map(|id| publish(id, &["s", "c"])));
        // Offsets 10..=14; the stream now starts at 13, so ids 1 to 3 go from it.
        records.push(Record::StreamTrim {
            queue: "s".into(),
            offset: 13,
        });
        let s = replay(&records);
        assert_eq!(s.queues["s"].first_offset, 13);
        assert_eq!(
            s.queues["s"].messages.keys().copied().collect::<Vec<_>>(),
            vec![4, 5]
        );
        assert_eq!(s.messages.len(), 5, "queue c still holds all five");

        // Trimmed past everything held: the stream is empty and starts at the offset.
        let mut records = records.clone();
        records.push(Record::StreamTrim {
            queue: "s".into(),
            offset: 20,
        });
        records.push(Record::Purge { queue: "c".into() });
        let s = replay(&records);
        assert!(s.queues["s"].messages.is_empty());
        assert_eq!(s.queues["s"].first_offset, 20);
        assert!(s.messages.is_empty(), "nothing is left holding a message");
    }

    #[test]
    fn a_snapshot_rebuilds_exactly_the_live_state() {
        let binding = BindingRecord {
            source: "x".into(),
            destination: Destination::Queue("a".into()),
            key: "k".into(),
            arguments: FieldTable::default(),
        };
        let s = replay(&[
            Record::DeclareExchange {
                name: "x".into(),
                kind: "direct".into(),
                auto_delete: false,
                internal: false,
                arguments: FieldTable::default(),
            },
            Record::DeclareExchange {
                name: "gone".into(),
                kind: "fanout".into(),
                auto_delete: false,
                internal: false,
                arguments: FieldTable::default(),
            },
            Record::DeleteExchange {
                name: "gone".into(),
            },
            queue("a"),
            queue("b"),
            queue("c"),
            Record::StreamStart {
                queue: "a".into(),
                offset: 12,
            },
            Record::Bind(binding),
            publish(1, &["a", "b"]),
            publish(2, &["a"]),
            publish(3, &["c"]),
            Record::Delivered {
                queue: "a".into(),
                id: 2,
            },
            settle("b", 1),
            Record::DeleteQueue { name: "c".into() },
            Record::SetPolicy {
                kind: Kind::Policy,
                name: "kept".into(),
                json: "{}".into(),
            },
            Record::SetPolicy {
                kind: Kind::Operator,
                name: "kept".into(),
                json: "{}".into(),
            },
            Record::SetPolicy {
                kind: Kind::Policy,
                name: "cleared".into(),
                json: "{}".into(),
            },
            Record::ClearPolicy {
                kind: Kind::Policy,
                name: "cleared".into(),
            },
        ]);
        let snapshot = s.snapshot();
        assert_eq!(snapshot[0], Record::Snapshot);
        let rebuilt = replay(&snapshot);
        let kept = [
            (Kind::Policy, "kept".to_string()),
            (Kind::Operator, "kept".to_string()),
        ];
        assert_eq!(
            rebuilt.policies.keys().collect::<Vec<_>>(),
            kept.iter().collect::<Vec<_>>()
        );
        assert_eq!(rebuilt.exchanges, s.exchanges);
        assert_eq!(rebuilt.queues, s.queues);
        assert_eq!(
            rebuilt.queues["a"].first_offset, 12,
            "a stream's first offset"
        );
        assert_eq!(rebuilt.bindings, s.bindings);
        assert_eq!(rebuilt.messages.len(), 2, "message 3 went with queue c");
        assert_eq!(
            rebuilt.queues["a"].messages,
            BTreeMap::from([(1, false), (2, true)])
        );
        assert!(rebuilt.queues["b"].messages.is_empty());
        let publishes = snapshot
            .iter()
            .filter(|r| matches!(r, Record::Publish { .. }))
            .count();
        assert_eq!(publishes, 2);
    }
}
