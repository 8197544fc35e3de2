//! Stream queues (`x-queue-type: stream`) as RabbitMQ 3.10 serves them to AMQP 0-9-1
//! clients: an append-only log whose messages are numbered by offset from 0 and stay
//! after they are read. Each consumer reads from where it asked (`x-stream-offset`) at
//! its own pace, within its prefetch; an ack only gives its credit back. Messages leave
//! by retention only (`x-max-length-bytes`, `x-max-age`), a whole segment
//! (`x-stream-max-segment-size-bytes`) at a time, as RabbitMQ's segment files do, and
//! never the segment being written.
//!
//! A stream is held in memory like every queue here (and in the journal, so it survives
//! restarts with its offsets): retention, or else the memory watermark, bounds it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::types::{AMQPValue, FieldTable};

use super::queue::Message;
use super::queue_args::{erlang_binary, int, unacceptable};

/// RabbitMQ's default segment size.
pub const DEFAULT_SEGMENT_BYTES: u64 = 500_000_000;

/// The header each delivery from a stream carries: the message's offset.
pub const OFFSET_HEADER: &str = "x-stream-offset";

/// A message in a stream.
#[derive(Debug)]
pub struct Entry {
    pub offset: u64,
    pub message: Arc<Message>,
    /// Publish time in ms since the epoch: what timestamp offsets and `x-max-age` compare.
    pub published_ms: u64,
}

/// A run of consecutive entries that retention drops together.
#[derive(Debug, Clone, Copy)]
struct Segment {
    first: u64,
    bytes: u64,
    newest_ms: u64,
}

/// The log of one stream queue.
#[derive(Debug, Default)]
pub struct Stream {
    entries: VecDeque<Entry>,
    segments: VecDeque<Segment>,
    /// Offset of the oldest entry kept (the next one's, when empty).
    first: u64,
    bytes: u64,
}

/// Where a consumer starts reading, from its `x-stream-offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    First,
    /// The newest message (RabbitMQ: the newest chunk, the messages written together).
    Last,
    /// What is published from now on: the default.
    Next,
    Offset(u64),
    /// The first message published at or after this time (ms since the epoch).
    Timestamp(u64),
}

impl Start {
    /// Reads basic.consume's `x-stream-offset` at `now_ms`: `first`, `last`, `next`, an
    /// offset (a negative one means the first), an AMQP timestamp, or an interval back
    /// from now such as `1h` or `7D`. The error is the reason for 406.
    pub fn parse(arguments: &FieldTable, now_ms: u64) -> Result<Start, String> {
        let Some(value) = arguments.inner().get(OFFSET_HEADER) else {
            return Ok(Start::Next);
        };
        let named = |name: &[u8]| match name {
            b"first" => Some(Start::First),
            b"last" => Some(Start::Last),
            b"next" => Some(Start::Next),
            _ => None,
        };
        match value {
            AMQPValue::LongString(s) => named(s.as_bytes()).map_or_else(
                || {
                    let text = String::from_utf8_lossy(s.as_bytes());
                    interval_ms(&text)
                        .map(|back| Start::Timestamp(now_ms.saturating_sub(back)))
                        .ok_or_else(|| {
                            let shown = erlang_binary(s.as_bytes());
                            format!("{{invalid_stream_offset_arg,{{longstr,{shown}}}}}")
                        })
                },
                Ok,
            ),
            // RabbitMQ reads the names whatever the field type (pika sends bytes as `x`).
            AMQPValue::ByteArray(b) => named(b.as_slice()).ok_or_else(|| unacceptable(value)),
            AMQPValue::Timestamp(secs) => Ok(Start::Timestamp(secs.saturating_mul(1000))),
            other => int(other).map(|n| u64::try_from(n).map_or(Start::First, Start::Offset)),
        }
    }
}

/// A duration as RabbitMQ writes `x-max-age`: a positive count and one unit of `Y`
/// (365 days), `M` (30 days), `D`, `h`, `m` or `s`; in ms.
pub fn interval_ms(text: &str) -> Option<u64> {
    let unit = text.chars().last()?;
    let digits = &text[..text.len() - unit.len_utf8()];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Any count is a count (RabbitMQ's integers have no bound): a huge one saturates.
    let count: u64 = digits.parse().unwrap_or(u64::MAX);
    let second = 1000;
    let day = 24 * 3600 * second;
    let ms = match unit {
        'Y' => 365 * day,
        'M' => 30 * day,
        'D' => day,
        'h' => 3600 * second,
        'm' => 60 * second,
        's' => second,
        _ => return None,
    };
    (count > 0).then(|| count.saturating_mul(ms))
}

impl Stream {
    /// An empty stream whose next message gets offset `first` (non-zero once retention
    /// dropped messages before a restart).
    pub fn starting_at(first: u64) -> Self {
        Stream {
            first,
            ..Stream::default()
        }
    }

    /// Offset of the oldest message kept.
    pub fn first(&self) -> u64 {
        self.first
    }

    /// Offset the next message will get.
    pub fn next(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Body bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn get(&self, offset: u64) -> Option<&Entry> {
        let index = usize::try_from(offset.checked_sub(self.first)?).ok()?;
        self.entries.get(index)
    }

    /// Appends a message; returns whether it began a new segment, the moment RabbitMQ
    /// applies retention.
    pub fn append(&mut self, message: Arc<Message>, published_ms: u64, segment_bytes: u64) -> bool {
        let offset = self.next();
        let size = message.content_bytes();
        let rolled = match self.segments.back_mut() {
            Some(s) if s.bytes + size <= segment_bytes => {
                s.bytes += size;
                s.newest_ms = published_ms;
                false
            }
            _ => {
                self.segments.push_back(Segment {
                    first: offset,
                    bytes: size,
                    newest_ms: published_ms,
                });
                self.segments.len() > 1
            }
        };
        self.bytes += size;
        self.entries.push_back(Entry {
            offset,
            message,
            published_ms,
        });
        rolled
    }

    /// Drops the oldest segments, never the newest, while the stream is over
    /// `max_bytes` or their newest message is older than `max_age`; returns what went.
    pub fn retain(
        &mut self,
        max_bytes: Option<u64>,
        max_age: Option<Duration>,
        now_ms: u64,
    ) -> Vec<Entry> {
        let max_age_ms = max_age.map(|a| u64::try_from(a.as_millis()).unwrap_or(u64::MAX));
        let mut dropped = Vec::new();
        while self.segments.len() > 1 {
            let oldest = self.segments[0];
            let too_big = max_bytes.is_some_and(|max| self.bytes > max);
            let too_old =
                max_age_ms.is_some_and(|age| now_ms.saturating_sub(oldest.newest_ms) > age);
            if !too_big && !too_old {
                break;
            }
            self.segments.pop_front();
            let until = self.segments[0].first;
            while self.entries.front().is_some_and(|e| e.offset < until) {
                dropped.extend(self.entries.pop_front());
            }
            self.bytes -= oldest.bytes;
            self.first = until;
        }
        dropped
    }

    /// The offset a consumer starting at `start` reads first.
    pub fn resolve(&self, start: Start) -> u64 {
        match start {
            Start::First => self.first,
            Start::Last => self.next().saturating_sub(1).max(self.first),
            Start::Next => self.next(),
            // Past the end, the consumer waits for that offset, as RabbitMQ's does.
            Start::Offset(n) => n.max(self.first),
            Start::Timestamp(ms) => self
                .entries
                .iter()
                .find(|e| e.published_ms >= ms)
                .map_or(self.next(), |e| e.offset),
        }
    }
}

#[cfg(test)]
mod tests {
    use amq_protocol::protocol::basic::AMQPProperties;
    use bytes::Bytes;

    use super::*;

    fn message(size: usize) -> Arc<Message> {
        Arc::new(Message::new(
            "".into(),
            "s".into(),
            AMQPProperties::default(),
            Bytes::from(vec![b'x'; size]),
        ))
    }

    fn spec(v: AMQPValue) -> Result<Start, String> {
        let mut t = FieldTable::default();
        t.insert(OFFSET_HEADER.into(), v);
        Start::parse(&t, 10_000_000)
    }

    #[test]
    fn offset_specs_read_as_rabbitmq_reads_them() {
        assert_eq!(Start::parse(&FieldTable::default(), 0), Ok(Start::Next));
        assert_eq!(
            spec(AMQPValue::LongString("first".into())),
            Ok(Start::First)
        );
        assert_eq!(spec(AMQPValue::LongString("last".into())), Ok(Start::Last));
        assert_eq!(spec(AMQPValue::LongLongInt(5)), Ok(Start::Offset(5)));
        assert_eq!(spec(AMQPValue::ShortInt(-1)), Ok(Start::First));
        assert_eq!(spec(AMQPValue::Timestamp(7)), Ok(Start::Timestamp(7000)));
        assert_eq!(
            spec(AMQPValue::LongString("1h".into())),
            Ok(Start::Timestamp(10_000_000 - 3_600_000))
        );
        assert_eq!(
            spec(AMQPValue::LongString("2".into())),
            Err("{invalid_stream_offset_arg,{longstr,<<\"2\">>}}".into())
        );
        assert!(spec(AMQPValue::Double(1.5)).is_err());
        assert_eq!(
            spec(AMQPValue::ByteArray(b"first".to_vec().into())),
            Ok(Start::First)
        );
        assert!(spec(AMQPValue::ByteArray(b"5".to_vec().into())).is_err());
        assert_eq!(
            spec(AMQPValue::LongString("99999999999999999999s".into())),
            Ok(Start::Timestamp(0)),
            "further back than the epoch: the first"
        );
        assert_eq!(interval_ms("+5s"), None);
        assert_eq!(interval_ms("1.5h"), None);
        assert_eq!(interval_ms("7D"), Some(7 * 86_400_000));
        assert_eq!(interval_ms("1Y"), Some(365 * 86_400_000));
        assert_eq!(interval_ms("0s"), None, "RabbitMQ wants a positive count");
        assert_eq!(interval_ms("h"), None);
        assert_eq!(interval_ms("5"), None);
    }

    #[test]
    fn offsets_count_on_and_resolve_within_what_is_kept() {
        let mut s = Stream::default();
        assert_eq!(s.resolve(Start::Last), 0, "empty: the next message");
        for ms in [100, 200, 300] {
            s.append(message(1), ms, DEFAULT_SEGMENT_BYTES);
        }
        assert_eq!((s.first(), s.next(), s.len()), (0, 3, 3));
        assert_eq!(s.resolve(Start::First), 0);
        assert_eq!(s.resolve(Start::Last), 2);
        assert_eq!(s.resolve(Start::Next), 3);
        assert_eq!(s.resolve(Start::Offset(1)), 1);
        assert_eq!(
            s.resolve(Start::Offset(99)),
            99,
            "past the end: waits for it"
        );
        assert_eq!(s.resolve(Start::Timestamp(150)), 1);
        assert_eq!(s.resolve(Start::Timestamp(400)), 3);
        assert_eq!(s.get(2).map(|e| e.published_ms), Some(300));
        assert!(s.get(3).is_none());
    }

    #[test]
    fn retention_drops_whole_old_segments_never_the_newest() {
        let mut s = Stream::starting_at(10);
        let mut rolls = 0;
        // 100 bytes of body and 2 of property flags.
        let each = message(100).content_bytes();
        assert_eq!(each, 102);
        for i in 0..10u64 {
            if s.append(message(100), i, 250) {
                rolls += 1;
            }
        }
        // Segments of two messages: [10,11] [12,13] … [18,19].
        assert_eq!(rolls, 4);
        assert!(
            s.retain(None, None, 0).is_empty(),
            "no limits, nothing goes"
        );
        let dropped = s.retain(Some(450), None, 0);
        let offsets: Vec<u64> = dropped.iter().map(|e| e.offset).collect();
        assert_eq!(offsets, (10..16).collect::<Vec<_>>());
        assert_eq!((s.first(), s.bytes()), (16, 4 * each));
        assert_eq!(
            s.resolve(Start::Offset(3)),
            16,
            "before the first: the first"
        );
        let old = s.retain(None, Some(Duration::from_millis(5)), 100);
        assert_eq!(old.len(), 2, "all but the newest segment are too old");
        assert_eq!((s.first(), s.next()), (18, 20));
        assert!(s.retain(Some(0), Some(Duration::ZERO), 1000).is_empty());
    }

    #[test]
    fn empty_bodies_fill_segments_too() {
        let mut s = Stream::default();
        let rolls = (0..100u64).filter(|&i| s.append(message(0), i, 20)).count();
        // Two bytes of property flags each: segments of ten.
        assert_eq!(rolls, 9);
        assert_eq!(s.retain(Some(40), None, 0).len(), 80);
        assert_eq!((s.first(), s.next()), (80, 100));
    }
}
