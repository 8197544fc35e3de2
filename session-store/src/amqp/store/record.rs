//! The records of the durable log and their bytes.
//!
//! On disk every record is framed as `[len: u32 LE][crc32 of payload: u32 LE][payload]`,
//! so a reader can tell a record cut short by a crash (the frame runs past the end of the
//! file, or its checksum fails at the tail) from damage in the middle. The payload is a
//! tag byte and the fields in order: integers little-endian, strings and bodies with a
//! u32 length, and field tables and message properties in their AMQP wire encoding (so
//! every header a client can send survives a restart unchanged).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use amq_protocol::protocol::basic::{AMQPProperties, gen_properties, parse_properties};
use amq_protocol::types::FieldTable;
use amq_protocol::types::generation::gen_field_table;
use amq_protocol::types::parsing::parse_field_table;
use bytes::Bytes;

use super::super::exchange::Destination;
use super::super::policy::Kind;
use super::super::queue::Message;

/// Bytes before each record's payload: its length and checksum.
pub const FRAME_HEADER: usize = 8;
/// Largest payload accepted when reading: a bigger length can only be damage.
pub const MAX_PAYLOAD: usize = 1 << 30;

/// One change to the durable state.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// Opens a compacted segment: what earlier segments said is superseded by what
    /// follows, so a crash between writing a compacted segment and deleting the old ones
    /// recovers the same state.
    Snapshot,
    DeclareExchange {
        name: String,
        kind: String,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    },
    DeleteExchange {
        name: String,
    },
    DeclareQueue {
        name: Arc<str>,
        auto_delete: bool,
        arguments: FieldTable,
    },
    DeleteQueue {
        name: Arc<str>,
    },
    Bind(BindingRecord),
    Unbind(BindingRecord),
    /// A persistent message entering durable queues; `id` names it in later records.
    Publish {
        id: u64,
        /// Wall-clock time of the publish in ms since the epoch, so TTLs keep counting
        /// across a restart.
        published_ms: u64,
        queues: Vec<Arc<str>>,
        message: Arc<Message>,
    },
    /// The message was handed to a consumer that must ack it: recovered, it is marked
    /// redelivered.
    Delivered {
        queue: Arc<str>,
        id: u64,
    },
    /// The message left the queue for good (acked, rejected, expired, dropped).
    Settle {
        queue: Arc<str>,
        id: u64,
    },
    Purge {
        queue: Arc<str>,
    },
    /// A stream's first offset, which offsets count on from after a restart: written in
    /// a snapshot before the stream's messages (and, by earlier versions, after the
    /// Settle records of what retention dropped).
    StreamStart {
        queue: Arc<str>,
        offset: u64,
    },
    /// A stream's retention dropped its oldest messages: it now starts at `offset`, and
    /// the messages it held below that are gone. One record, so that a crash cannot keep
    /// half of the change and shift every offset after it.
    StreamTrim {
        queue: Arc<str>,
        offset: u64,
    },
    /// A policy or operator policy set (or replaced), as its management API JSON.
    SetPolicy {
        kind: Kind,
        name: String,
        json: String,
    },
    ClearPolicy {
        kind: Kind,
        name: String,
    },
}

/// A binding between durable ends.
#[derive(Debug, Clone, PartialEq)]
pub struct BindingRecord {
    pub source: String,
    pub destination: Destination,
    pub key: String,
    pub arguments: FieldTable,
}

/// Why a payload could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(String);

const SNAPSHOT: u8 = 1;
const DECLARE_EXCHANGE: u8 = 2;
const DELETE_EXCHANGE: u8 = 3;
const DECLARE_QUEUE: u8 = 4;
const DELETE_QUEUE: u8 = 5;
const BIND: u8 = 6;
const UNBIND: u8 = 7;
const PUBLISH: u8 = 8;
const DELIVERED: u8 = 9;
const SETTLE: u8 = 10;
const PURGE: u8 = 11;
const SET_POLICY: u8 = 12;
const CLEAR_POLICY: u8 = 13;
const SET_OPERATOR_POLICY: u8 = 14;
const CLEAR_OPERATOR_POLICY: u8 = 15;
const STREAM_START: u8 = 16;
const STREAM_TRIM: u8 = 17;

fn policy_kind(operator: bool) -> Kind {
    if operator {
        Kind::Operator
    } else {
        Kind::Policy
    }
}

const TO_QUEUE: u8 = 0;
const TO_EXCHANGE: u8 = 1;

impl Record {
    /// Charges a freshly decoded message's body to the broker's memory count `memory`;
    /// other records hold no message.
    pub fn charge(&mut self, memory: &Arc<AtomicU64>) {
        if let Record::Publish { message, .. } = self
            && let Some(m) = Arc::get_mut(message)
        {
            m.charge(memory);
        }
    }

    /// Appends the framed record (header and payload) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; FRAME_HEADER]);
        self.encode_payload(out);
        let payload = &out[start + FRAME_HEADER..];
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        let crc = crc32fast::hash(payload);
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    fn encode_payload(&self, out: &mut Vec<u8>) {
        match self {
            Record::Snapshot => out.push(SNAPSHOT),
            Record::DeclareExchange {
                name,
                kind,
                auto_delete,
                internal,
                arguments,
            } => {
                out.push(DECLARE_EXCHANGE);
                put_str(out, name);
                put_str(out, kind);
                out.push(u8::from(*auto_delete));
                out.push(u8::from(*internal));
                put_table(out, arguments);
            }
            Record::DeleteExchange { name } => {
                out.push(DELETE_EXCHANGE);
                put_str(out, name);
            }
            Record::DeclareQueue {
                name,
                auto_delete,
                arguments,
            } => {
                out.push(DECLARE_QUEUE);
                put_str(out, name);
                out.push(u8::from(*auto_delete));
                put_table(out, arguments);
            }
            Record::DeleteQueue { name } => {
                out.push(DELETE_QUEUE);
                put_str(out, name);
            }
            Record::Bind(b) | Record::Unbind(b) => {
                out.push(if matches!(self, Record::Bind(_)) {
                    BIND
                } else {
                    UNBIND
                });
                put_str(out, &b.source);
                match &b.destination {
                    Destination::Queue(q) => {
                        out.push(TO_QUEUE);
                        put_str(out, q);
                    }
                    Destination::Exchange(x) => {
                        out.push(TO_EXCHANGE);
                        put_str(out, x);
                    }
                }
                put_str(out, &b.key);
                put_table(out, &b.arguments);
            }
            Record::Publish {
                id,
                published_ms,
                queues,
                message,
            } => {
                out.push(PUBLISH);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&published_ms.to_le_bytes());
                put_len(out, queues.len());
                for q in queues {
                    put_str(out, q);
                }
                put_str(out, message.exchange.as_str());
                put_str(out, message.routing_key.as_str());
                // As the publisher encoded them, when unchanged: the same wire format.
                match message.raw_properties() {
                    Some(raw) => put_bytes(out, raw),
                    None => put_properties(out, message.properties()),
                }
                put_bytes(out, &message.body);
            }
            Record::Delivered { queue, id } | Record::Settle { queue, id } => {
                out.push(if matches!(self, Record::Delivered { .. }) {
                    DELIVERED
                } else {
                    SETTLE
                });
                put_str(out, queue);
                out.extend_from_slice(&id.to_le_bytes());
            }
            Record::Purge { queue } => {
                out.push(PURGE);
                put_str(out, queue);
            }
            Record::StreamStart { queue, offset } | Record::StreamTrim { queue, offset } => {
                out.push(if matches!(self, Record::StreamStart { .. }) {
                    STREAM_START
                } else {
                    STREAM_TRIM
                });
                put_str(out, queue);
                out.extend_from_slice(&offset.to_le_bytes());
            }
            Record::SetPolicy { kind, name, json } => {
                out.push(match kind {
                    Kind::Policy => SET_POLICY,
                    Kind::Operator => SET_OPERATOR_POLICY,
                });
                put_str(out, name);
                put_str(out, json);
            }
            Record::ClearPolicy { kind, name } => {
                out.push(match kind {
                    Kind::Policy => CLEAR_POLICY,
                    Kind::Operator => CLEAR_OPERATOR_POLICY,
                });
                put_str(out, name);
            }
        }
    }

    /// Reads one payload (without its frame). Bodies are slices of `payload`, not copies.
    pub fn decode(payload: Bytes) -> Result<Record, DecodeError> {
        let mut r = Reader { buf: payload };
        let record = match r.u8()? {
            SNAPSHOT => Record::Snapshot,
            DECLARE_EXCHANGE => Record::DeclareExchange {
                name: r.string()?,
                kind: r.string()?,
                auto_delete: r.flag()?,
                internal: r.flag()?,
                arguments: r.table()?,
            },
            DELETE_EXCHANGE => Record::DeleteExchange { name: r.string()? },
            DECLARE_QUEUE => Record::DeclareQueue {
                name: r.string()?.into(),
                auto_delete: r.flag()?,
                arguments: r.table()?,
            },
            DELETE_QUEUE => Record::DeleteQueue {
                name: r.string()?.into(),
            },
            tag @ (BIND | UNBIND) => {
                let source = r.string()?;
                let destination = match r.u8()? {
                    TO_QUEUE => Destination::Queue(r.string()?),
                    TO_EXCHANGE => Destination::Exchange(r.string()?),
                    other => return Err(bad(format!("unknown binding destination {other}"))),
                };
                let b = BindingRecord {
                    source,
                    destination,
                    key: r.string()?,
                    arguments: r.table()?,
                };
                if tag == BIND {
                    Record::Bind(b)
                } else {
                    Record::Unbind(b)
                }
            }
            PUBLISH => {
                let id = r.u64()?;
                let published_ms = r.u64()?;
                let count = r.len()?;
                let mut queues = Vec::with_capacity(count.min(1024));
                for _ in 0..count {
                    queues.push(Arc::from(r.string()?));
                }
                let exchange = r.short()?;
                let routing_key = r.short()?;
                let (properties, raw) = r.properties()?;
                let body = r.bytes()?;
                let message =
                    Message::new(exchange, routing_key, properties, body).with_raw_properties(raw);
                Record::Publish {
                    id,
                    published_ms,
                    queues,
                    message: Arc::new(message),
                }
            }
            tag @ (DELIVERED | SETTLE) => {
                let queue = Arc::from(r.string()?);
                let id = r.u64()?;
                if tag == DELIVERED {
                    Record::Delivered { queue, id }
                } else {
                    Record::Settle { queue, id }
                }
            }
            PURGE => Record::Purge {
                queue: r.string()?.into(),
            },
            STREAM_START => Record::StreamStart {
                queue: r.string()?.into(),
                offset: r.u64()?,
            },
            STREAM_TRIM => Record::StreamTrim {
                queue: r.string()?.into(),
                offset: r.u64()?,
            },
            tag @ (SET_POLICY | SET_OPERATOR_POLICY) => Record::SetPolicy {
                kind: policy_kind(tag == SET_OPERATOR_POLICY),
                name: r.string()?,
                json: r.string()?,
            },
            tag @ (CLEAR_POLICY | CLEAR_OPERATOR_POLICY) => Record::ClearPolicy {
                kind: policy_kind(tag == CLEAR_OPERATOR_POLICY),
                name: r.string()?,
            },
            other => return Err(bad(format!("unknown record type {other}"))),
        };
        if !r.buf.is_empty() {
            return Err(bad(format!("{} bytes after the record", r.buf.len())));
        }
        Ok(record)
    }
}

fn bad(text: String) -> DecodeError {
    DecodeError(text)
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_len(out, b.len());
    out.extend_from_slice(b);
}

/// The table in AMQP encoding, which carries its own length.
fn put_table(out: &mut Vec<u8>, table: &FieldTable) {
    match cookie_factory::gen_simple(gen_field_table(table), Vec::new()) {
        Ok(encoded) => out.extend_from_slice(&encoded),
        // Writing to a Vec cannot run out of room; should it ever fail, an empty table
        // (length 0) keeps the record readable.
        Err(_) => out.extend_from_slice(&0u32.to_be_bytes()),
    }
}

/// The properties in AMQP encoding behind a u32 length (the encoding has none).
fn put_properties(out: &mut Vec<u8>, properties: &AMQPProperties) {
    match cookie_factory::gen_simple(gen_properties(properties), Vec::new()) {
        Ok(encoded) => put_bytes(out, &encoded),
        // As for tables: no property flags set is a valid, empty encoding.
        Err(_) => put_bytes(out, &[0, 0]),
    }
}

/// A cursor over a payload.
struct Reader {
    buf: Bytes,
}

impl Reader {
    fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if self.buf.len() < n {
            return Err(bad(format!(
                "record ends early: {n} bytes wanted, {} left",
                self.buf.len()
            )));
        }
        Ok(self.buf.split_to(n))
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn flag(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(bad(format!("flag byte {other}"))),
        }
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(&b);
        Ok(u64::from_le_bytes(a))
    }

    fn len(&mut self) -> Result<usize, DecodeError> {
        let b = self.take(4)?;
        let mut a = [0; 4];
        a.copy_from_slice(&b);
        usize::try_from(u32::from_le_bytes(a)).map_err(|_| bad("length overflow".into()))
    }

    fn bytes(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.len()?;
        self.take(n)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| bad("a name is not UTF-8".into()))
    }

    fn short(&mut self) -> Result<amq_protocol::types::ShortString, DecodeError> {
        let s = self.string()?;
        if s.len() > amq_protocol::types::MAX_SHORT_STRING_LENGTH {
            return Err(bad("a short string is longer than 255 bytes".into()));
        }
        Ok(s.into())
    }

    fn table(&mut self) -> Result<FieldTable, DecodeError> {
        let (rest, table) =
            parse_field_table(&self.buf[..]).map_err(|e| bad(format!("bad field table: {e}")))?;
        let used = self.buf.len() - rest.len();
        self.take(used)?;
        Ok(table)
    }

    /// The properties, and their encoding (delivered as it is).
    fn properties(&mut self) -> Result<(AMQPProperties, Bytes), DecodeError> {
        let encoded = self.bytes()?;
        let (rest, properties) = parse_properties(&encoded[..])
            .map_err(|e| bad(format!("bad message properties: {e}")))?;
        if !rest.is_empty() {
            return Err(bad("bytes after the message properties".into()));
        }
        Ok((properties, encoded))
    }
}

#[cfg(test)]
mod tests {
    use amq_protocol::types::AMQPValue;

    use super::*;

    fn table() -> FieldTable {
        let mut t = FieldTable::default();
        t.insert("x-max-length".into(), AMQPValue::LongLongInt(10));
        t.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("dlx".into()),
        );
        t
    }

    pub fn samples() -> Vec<Record> {
        let message = Arc::new(Message::new(
            "ex".into(),
            "rk".into(),
            AMQPProperties::default()
                .with_delivery_mode(2)
                .with_headers(table())
                .with_message_id("m-1".into()),
            Bytes::from_static(b"hello\x00world"),
        ));
        let binding = BindingRecord {
            source: "ex".into(),
            destination: Destination::Exchange("other".into()),
            key: "a.#".into(),
            arguments: table(),
        };
        vec![
            Record::Snapshot,
            Record::DeclareExchange {
                name: "ex".into(),
                kind: "topic".into(),
                auto_delete: false,
                internal: true,
                arguments: table(),
            },
            Record::DeleteExchange { name: "ex".into() },
            Record::DeclareQueue {
                name: "q".into(),
                auto_delete: true,
                arguments: table(),
            },
            Record::DeleteQueue { name: "q".into() },
            Record::Bind(binding.clone()),
            Record::Unbind(BindingRecord {
                destination: Destination::Queue("q".into()),
                ..binding
            }),
            Record::Publish {
                id: 7,
                published_ms: 1_700_000_000_000,
                queues: vec!["q".into(), "r".into()],
                message,
            },
            Record::Delivered {
                queue: "q".into(),
                id: 7,
            },
            Record::Settle {
                queue: "r".into(),
                id: u64::MAX,
            },
            Record::Purge { queue: "q".into() },
            Record::StreamStart {
                queue: "s".into(),
                offset: 40,
            },
            Record::StreamTrim {
                queue: "s".into(),
                offset: 52,
            },
            Record::SetPolicy {
                kind: Kind::Policy,
                name: "ttl".into(),
                json: r#"{"pattern":"^q","definition":{"message-ttl":5}}"#.into(),
            },
            Record::ClearPolicy {
                kind: Kind::Policy,
                name: "ttl".into(),
            },
            Record::SetPolicy {
                kind: Kind::Operator,
                name: "cap".into(),
                json: r#"{"pattern":".*","definition":{"max-length":9}}"#.into(),
            },
            Record::ClearPolicy {
                kind: Kind::Operator,
                name: "cap".into(),
            },
        ]
    }

    #[test]
    fn every_record_reads_back_as_written() {
        for record in samples() {
            let mut out = Vec::new();
            record.encode(&mut out);
            let len = u32::from_le_bytes([out[0], out[1], out[2], out[3]]) as usize;
            assert_eq!(len + FRAME_HEADER, out.len());
            let crc = u32::from_le_bytes([out[4], out[5], out[6], out[7]]);
            assert_eq!(crc, crc32fast::hash(&out[FRAME_HEADER..]));
            let back =
                Record::decode(Bytes::copy_from_slice(&out[FRAME_HEADER..])).expect("decodes");
            assert_eq!(back, record);
        }
    }

    #[test]
    fn damaged_payloads_are_errors_not_panics() {
        for record in samples() {
            let mut out = Vec::new();
            record.encode(&mut out);
            let payload = &out[FRAME_HEADER..];
            for cut in 0..payload.len() {
                assert!(Record::decode(Bytes::copy_from_slice(&payload[..cut])).is_err());
            }
        }
        assert!(Record::decode(Bytes::from_static(&[200])).is_err());
    }
}
