//! Bytes ⇄ AMQP frames, on top of amq-protocol's generated parser and generator.
//!
//! The decoder reads the 7-byte frame header itself (type, channel, size) so that a frame
//! announcing more than the negotiated `frame_max` is refused before its payload is
//! buffered, and so that body frames become `Bytes` slices of the read buffer instead of
//! the `Vec<u8>` copies `parse_frame` makes. Method, header and heartbeat frames go
//! through `amq_protocol::frame::parse_frame` once they are complete.
//!
//! The encoder uses `gen_frame` for method frames. Content (a delivery, a get-ok, a
//! return) is written as method + header + body frames: the header frame is composed from
//! amq-protocol's generators because `gen_frame` wants an owned `AMQPContentHeader`, and
//! body frames are framed by hand (8 bytes) so a shared `Bytes` body is never copied into
//! a `Vec` first.

use std::io;
use std::sync::Arc;

use amq_protocol::frame::{
    AMQPContentHeader, AMQPFrame, BackToTheBuffer, SerializeFn, gen_frame, parse_frame,
};
use amq_protocol::protocol::AMQPClass;
use amq_protocol::protocol::basic::{AMQPProperties, gen_properties};
use amq_protocol::types::generation::{
    gen_id, gen_long_long_uint, gen_short_short_uint, gen_short_uint, gen_with_len,
};
use amq_protocol::types::{AMQPValue, FieldTable};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use cookie_factory::sequence::tuple;
use tokio_util::codec::{Decoder, Encoder};

use super::error::code;
use super::queue::Message;

/// The only protocol header accepted, and the one sent back to any other.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;
/// Type, channel and size before the payload, plus the end octet after it.
const FRAME_OVERHEAD: usize = 8;
const BASIC_CLASS_ID: u16 = 60;

/// What the client sent. Kept small (no variant holds a whole `AMQPFrame`, whose
/// inline message properties make it 320 bytes): each frame is moved several times on its
/// way from the decoder to its handler, and every move of a large value is a `memcpy`.
#[derive(Debug, PartialEq)]
pub enum Inbound {
    /// The 8 opening bytes; `supported` is false for anything but AMQP 0-9-1.
    ProtocolHeader { supported: bool },
    /// A method frame.
    Method(u16, AMQPClass),
    /// A heartbeat frame on channel 0.
    Heartbeat,
    /// A heartbeat frame on another channel, which RabbitMQ refuses.
    InvalidHeartbeat(u16),
    /// A content header, with its property bytes as the client wrote them: delivered
    /// as they came, header order, duplicate keys and field types stay the publisher's,
    /// as in RabbitMQ, and need no encoding per delivery.
    Header {
        channel: u16,
        header: Box<AMQPContentHeader>,
        raw_properties: Bytes,
    },
    /// A content body frame: channel and payload.
    Body(u16, Bytes),
}

/// What the broker sends; small for the same reason as [`Inbound`].
#[derive(Debug)]
pub enum Outbound {
    /// Our protocol header, sent when the client's was not AMQP 0-9-1.
    ProtocolHeader,
    Method(u16, AMQPClass),
    Heartbeat,
    /// A content-carrying method (deliver, get-ok, return) with the message it carries.
    Content {
        channel: u16,
        method: AMQPClass,
        message: Arc<Message>,
    },
    /// The tune-ok outcome: bodies are split to fit `frame_max` from now on, and the
    /// writer sends heartbeats every `heartbeat / 2` seconds of silence (0: never).
    Tuned {
        frame_max: u32,
        heartbeat: u16,
    },
}

/// Why the byte stream cannot be read or written as AMQP.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// RabbitMQ's words: the payload size and the most a frame_max leaves for one.
    #[error("type {kind}, all octets = <<>>: {{frame_too_large,{size},{limit}}}")]
    FrameTooLarge { kind: u8, size: usize, limit: usize },
    #[error("frame end octet is {0:#04x}, not 0xce")]
    BadFrameEnd(u8),
    #[error("unknown frame type {0}")]
    UnknownFrameType(u8),
    #[error("malformed {0}")]
    Syntax(String),
    /// A method whose arguments do not parse: RabbitMQ's 501 with the arguments as an
    /// Erlang binary, against the method.
    #[error("cannot decode <<{}>>", erlang_octets(args))]
    CannotDecode {
        class_id: u16,
        method_id: u16,
        args: Bytes,
    },
    /// A content header whose properties do not parse (a field table with an unknown
    /// type, a wrong length): RabbitMQ answers 541 INTERNAL_ERROR, which clients know.
    #[error("malformed content header on channel {0}")]
    BadContentHeader(u16),
    #[error("cannot serialise a frame: {0}")]
    Generate(String),
    /// Field tables or arrays nested deeper than [`MAX_NESTING`] levels.
    #[error("field tables nested deeper than {MAX_NESTING} levels in a frame of type {0}")]
    TooDeep(u8),
    /// basic.qos with a prefetch size, which RabbitMQ refuses (amq-protocol's parser
    /// drops the field, so the decoder reads it from the frame).
    #[error("prefetch_size!=0 ({0})")]
    PrefetchSize(u32),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl CodecError {
    /// The connection.close reply code this error calls for.
    pub fn reply_code(&self) -> u16 {
        match self {
            CodecError::Syntax(_) | CodecError::TooDeep(_) => code::SYNTAX_ERROR,
            CodecError::BadContentHeader(_) => code::INTERNAL_ERROR,
            CodecError::PrefetchSize(_) => code::NOT_IMPLEMENTED,
            _ => code::FRAME_ERROR,
        }
    }
}

/// One codec per direction of a connection.
#[derive(Debug)]
pub struct AmqpCodec {
    frame_max: u32,
    header_seen: bool,
    /// Reused serialisation buffer: cookie-factory writes into a `Vec`.
    scratch: Vec<u8>,
}

impl AmqpCodec {
    pub fn new(frame_max: u32) -> Self {
        AmqpCodec {
            frame_max,
            header_seen: false,
            scratch: Vec::new(),
        }
    }

    pub fn set_frame_max(&mut self, frame_max: u32) {
        self.frame_max = frame_max;
    }

    fn generate(
        &mut self,
        f: impl SerializeFn<Vec<u8>>,
        dst: &mut BytesMut,
    ) -> Result<(), CodecError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let scratch = cookie_factory::gen_simple(f, scratch)
            .map_err(|e| CodecError::Generate(format!("{e:?}")))?;
        dst.extend_from_slice(&scratch);
        self.scratch = scratch;
        Ok(())
    }

    fn body_chunk(&self) -> usize {
        (self.frame_max as usize)
            .saturating_sub(FRAME_OVERHEAD)
            .max(1)
    }
}

impl Decoder for AmqpCodec {
    type Item = Inbound;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, CodecError> {
        if !self.header_seen {
            if src.len() < PROTOCOL_HEADER.len() {
                return Ok(None);
            }
            let head = src.split_to(PROTOCOL_HEADER.len());
            self.header_seen = true;
            return Ok(Some(Inbound::ProtocolHeader {
                supported: head[..] == PROTOCOL_HEADER[..],
            }));
        }
        if src.len() < 7 {
            return Ok(None);
        }
        let kind = src[0];
        let channel = u16::from_be_bytes([src[1], src[2]]);
        let size = u32::from_be_bytes([src[3], src[4], src[5], src[6]]) as usize;
        let total = size.saturating_add(FRAME_OVERHEAD);
        if total > self.frame_max as usize {
            return Err(CodecError::FrameTooLarge {
                kind,
                size,
                limit: (self.frame_max as usize).saturating_sub(FRAME_OVERHEAD),
            });
        }
        if !matches!(
            kind,
            FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
        ) {
            return Err(CodecError::UnknownFrameType(kind));
        }
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        let end = src[total - 1];
        if end != FRAME_END {
            return Err(CodecError::BadFrameEnd(end));
        }
        let mut frame = src.split_to(total);
        if kind == FRAME_BODY {
            frame.advance(7);
            frame.truncate(size);
            return Ok(Some(Inbound::Body(channel, frame.freeze())));
        }
        // basic.qos (class 60, method 10): its first argument is prefetch-size.
        if kind == FRAME_METHOD && frame.len() >= 15 && frame[7..11] == [0, 60, 0, 10] {
            let size = u32::from_be_bytes([frame[11], frame[12], frame[13], frame[14]]);
            if size != 0 {
                return Err(CodecError::PrefetchSize(size));
            }
        }
        match parse_guarded(&frame[..]) {
            Err(Unparsed::TooDeep) => Err(CodecError::TooDeep(kind)),
            Ok(AMQPFrame::Header(channel, header)) => {
                // Frame header (7), class, weight and body size (12); the frame-end octet.
                // Copied: a slice would keep the whole read buffer alive with the message.
                let raw_properties = Bytes::copy_from_slice(&frame[19..total - 1]);
                Ok(Some(Inbound::Header {
                    channel,
                    header: Box::new(header),
                    raw_properties,
                }))
            }
            Ok(AMQPFrame::Method(channel, method)) => Ok(Some(Inbound::Method(channel, method))),
            Ok(AMQPFrame::Heartbeat) => Ok(Some(Inbound::Heartbeat)),
            Ok(AMQPFrame::InvalidHeartbeat(channel)) => {
                Ok(Some(Inbound::InvalidHeartbeat(channel)))
            }
            // Body frames were taken above, and a protocol header is no frame type.
            Ok(AMQPFrame::Body(..) | AMQPFrame::ProtocolHeader(_)) => {
                Err(CodecError::Syntax(format!("frame of type {kind}")))
            }
            Err(_) if kind == FRAME_HEADER => Err(CodecError::BadContentHeader(channel)),
            Err(Unparsed::Malformed) if kind == FRAME_METHOD && frame.len() >= 11 => {
                Err(CodecError::CannotDecode {
                    class_id: u16::from_be_bytes([frame[7], frame[8]]),
                    method_id: u16::from_be_bytes([frame[9], frame[10]]),
                    args: Bytes::copy_from_slice(&frame[11..total - 1]),
                })
            }
            Err(_) => Err(CodecError::Syntax(format!("frame of type {kind}"))),
        }
    }
}

/// Octets as Erlang's `~w` prints a binary's: `0,0,21,102`.
fn erlang_octets(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(u8::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The deepest nesting of field tables and arrays a frame may carry. amq-protocol parses,
/// clones, encodes and drops nested values recursively, with about 2 KiB of stack a level
/// (16 KiB in a debug build), and connections run on threads with 2 MiB stacks; a
/// frame_max of payload can nest some 26,000 levels. RabbitMQ has no such limit; no
/// client comes near this one.
pub const MAX_NESTING: usize = 64;

/// Stack allowed per level of nesting when a frame is parsed on a stack of its own.
const STACK_PER_LEVEL: usize = if cfg!(debug_assertions) {
    32 << 10
} else {
    4 << 10
};

/// Why [`parse_guarded`] gave no frame.
enum Unparsed {
    Malformed,
    TooDeep,
}

/// Parses a complete method or header frame without letting its nesting overflow the
/// thread's stack. Each level of nesting needs a type tag, 'F' or 'A': a frame with no
/// more of those bytes than [`MAX_NESTING`] is parsed as it is. Any other (strings with
/// capital A and F in them included) is parsed where there is stack for the deepest
/// nesting its tags and length allow: on the thread's own stack when that much is left
/// (so headers carrying, say, uppercase hex pay no stack switch), else on a stack of its
/// own; and refused there, dropped on that stack, if it nests deeper than [`MAX_NESTING`].
fn parse_guarded(frame: &[u8]) -> Result<AMQPFrame, Unparsed> {
    let tags = frame.iter().filter(|&&b| b == b'F' || b == b'A').count();
    let parse = || {
        parse_frame(frame)
            .map(|(_, parsed)| parsed)
            .map_err(|_| Unparsed::Malformed)
    };
    if tags <= MAX_NESTING {
        return parse();
    }
    // A level takes one of the tags and at least 5 bytes (a tag and a length).
    let levels = tags.min(frame.len() / 5);
    let needed = levels.saturating_mul(STACK_PER_LEVEL);
    // Room to spare for the callers' frames; a stack of its own gets 1 MiB for them.
    let red_zone = needed.saturating_add(256 << 10);
    stacker::maybe_grow(red_zone, needed.saturating_add(1 << 20), || {
        let parsed = parse()?;
        if frame_nesting(&parsed) > MAX_NESTING {
            drop(parsed);
            return Err(Unparsed::TooDeep);
        }
        Ok(parsed)
    })
}

/// How deep the field tables of a parsed frame nest, counted up to `MAX_NESTING + 1`.
fn frame_nesting(frame: &AMQPFrame) -> usize {
    use amq_protocol::protocol::{connection, exchange, queue};
    let table = match frame {
        AMQPFrame::Header(_, header) => header.properties.headers().as_ref(),
        AMQPFrame::Method(_, method) => match method {
            AMQPClass::Connection(connection::AMQPMethod::Start(m)) => Some(&m.server_properties),
            AMQPClass::Connection(connection::AMQPMethod::StartOk(m)) => Some(&m.client_properties),
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(m)) => Some(&m.arguments),
            AMQPClass::Exchange(exchange::AMQPMethod::Bind(m)) => Some(&m.arguments),
            AMQPClass::Exchange(exchange::AMQPMethod::Unbind(m)) => Some(&m.arguments),
            AMQPClass::Queue(queue::AMQPMethod::Declare(m)) => Some(&m.arguments),
            AMQPClass::Queue(queue::AMQPMethod::Bind(m)) => Some(&m.arguments),
            AMQPClass::Queue(queue::AMQPMethod::Unbind(m)) => Some(&m.arguments),
            AMQPClass::Basic(amq_protocol::protocol::basic::AMQPMethod::Consume(m)) => {
                Some(&m.arguments)
            }
            // No other AMQP 0-9-1 method carries a field table.
            _ => None,
        },
        _ => None,
    };
    table.map_or(0, |t| table_nesting(t, 1))
}

/// Nesting below `table`, which is at `depth`; stops counting past [`MAX_NESTING`], so
/// the recursion itself stays shallow.
fn table_nesting(table: &FieldTable, depth: usize) -> usize {
    table
        .inner()
        .values()
        .map(|v| value_nesting(v, depth))
        .max()
        .unwrap_or(depth)
}

fn value_nesting(value: &AMQPValue, depth: usize) -> usize {
    if depth > MAX_NESTING {
        return depth;
    }
    match value {
        AMQPValue::FieldTable(t) => table_nesting(t, depth + 1),
        AMQPValue::FieldArray(a) => a
            .as_slice()
            .iter()
            .map(|v| value_nesting(v, depth + 1))
            .max()
            .unwrap_or(depth + 1),
        _ => depth,
    }
}

impl Encoder<Outbound> for AmqpCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Outbound, dst: &mut BytesMut) -> Result<(), CodecError> {
        match item {
            Outbound::ProtocolHeader => dst.extend_from_slice(PROTOCOL_HEADER),
            Outbound::Method(channel, method) => {
                self.generate(gen_frame(&AMQPFrame::Method(channel, method)), dst)?;
            }
            Outbound::Heartbeat => self.generate(gen_frame(&AMQPFrame::Heartbeat), dst)?,
            Outbound::Tuned { frame_max, .. } => self.frame_max = frame_max,
            Outbound::Content {
                channel,
                method,
                message,
            } => {
                self.generate(gen_frame(&AMQPFrame::Method(channel, method)), dst)?;
                let body = &message.body;
                match message.raw_properties() {
                    Some(raw) => {
                        dst.reserve(raw.len() + 12 + FRAME_OVERHEAD);
                        dst.put_u8(FRAME_HEADER);
                        dst.put_u16(channel);
                        // Properties come from one frame, so they fit a u32 with room.
                        dst.put_u32(u32::try_from(raw.len() + 12).unwrap_or(u32::MAX));
                        dst.put_u16(BASIC_CLASS_ID);
                        dst.put_u16(0);
                        dst.put_u64(body.len() as u64);
                        dst.extend_from_slice(raw);
                        dst.put_u8(FRAME_END);
                    }
                    None => self.generate(
                        gen_content_header(channel, body.len() as u64, message.properties()),
                        dst,
                    )?,
                }
                let chunk = self.body_chunk();
                for part in body.chunks(chunk) {
                    dst.reserve(part.len() + FRAME_OVERHEAD);
                    dst.put_u8(FRAME_BODY);
                    dst.put_u16(channel);
                    // A chunk is at most frame_max (a u32) bytes.
                    dst.put_u32(u32::try_from(part.len()).unwrap_or(u32::MAX));
                    dst.extend_from_slice(part);
                    dst.put_u8(FRAME_END);
                }
            }
        }
        Ok(())
    }
}

fn gen_content_header<'a, W: io::Write + BackToTheBuffer + 'a>(
    channel: u16,
    body_size: u64,
    properties: &'a AMQPProperties,
) -> impl SerializeFn<W> + 'a {
    tuple((
        gen_short_short_uint(FRAME_HEADER),
        gen_id(channel),
        gen_with_len(tuple((
            gen_id(BASIC_CLASS_ID),
            gen_short_uint(0),
            gen_long_long_uint(body_size),
            gen_properties(properties),
        ))),
        gen_short_short_uint(FRAME_END),
    ))
}

#[cfg(test)]
mod tests {
    use amq_protocol::protocol::basic;

    use super::*;

    fn opened() -> AmqpCodec {
        let mut codec = AmqpCodec::new(4096);
        codec.header_seen = true;
        codec
    }

    fn encode(codec: &mut AmqpCodec, item: Outbound) -> BytesMut {
        let mut buf = BytesMut::new();
        codec.encode(item, &mut buf).expect("encode");
        buf
    }

    /// A content header frame (channel 1) whose headers table has `depth` tables nested
    /// in it, or holds one long string: written byte by byte, as building and dropping
    /// such a `FieldTable` recurses as deep as it nests.
    fn header_frame(depth: usize, string: Option<&str>) -> Vec<u8> {
        let mut table: Vec<u8> = Vec::new();
        if let Some(s) = string {
            table.extend_from_slice(&[1, b's', b'S']);
            table.extend_from_slice(&u32::try_from(s.len()).expect("short").to_be_bytes());
            table.extend_from_slice(s.as_bytes());
        }
        for _ in 0..depth {
            let mut outer = vec![1, b'n', b'F'];
            outer.extend_from_slice(&u32::try_from(table.len()).expect("short").to_be_bytes());
            outer.extend_from_slice(&table);
            table = outer;
        }
        let mut payload = vec![0, 60, 0, 0];
        payload.extend_from_slice(&1u64.to_be_bytes());
        payload.extend_from_slice(&0x2000u16.to_be_bytes());
        payload.extend_from_slice(&u32::try_from(table.len()).expect("short").to_be_bytes());
        payload.extend_from_slice(&table);
        let mut frame = vec![FRAME_HEADER, 0, 1];
        frame.extend_from_slice(&u32::try_from(payload.len()).expect("short").to_be_bytes());
        frame.extend_from_slice(&payload);
        frame.push(FRAME_END);
        frame
    }

    #[test]
    fn nesting_is_bounded_without_overflowing_the_stack() {
        // On a thread with a runtime worker's 2 MiB stack.
        let run = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(|| {
                let decode = |bytes: Vec<u8>| {
                    let mut codec = AmqpCodec::new(131_072);
                    codec.header_seen = true;
                    codec.decode(&mut BytesMut::from(&bytes[..]))
                };
                // The headers table counts as the first level.
                assert!(matches!(
                    decode(header_frame(MAX_NESTING - 1, None)),
                    Ok(Some(Inbound::Header { .. }))
                ));
                for depth in [MAX_NESTING, 18_000] {
                    assert!(
                        matches!(
                            decode(header_frame(depth, None)),
                            Err(CodecError::TooDeep(FRAME_HEADER))
                        ),
                        "depth {depth}"
                    );
                }
                // Many capital A and F in a string nest nothing, whether the frame is
                // parsed on this stack or on one of its own.
                for pairs in [40, 200, 5000] {
                    assert!(
                        matches!(
                            decode(header_frame(0, Some(&"AF".repeat(pairs)))),
                            Ok(Some(Inbound::Header { .. }))
                        ),
                        "{pairs} pairs"
                    );
                }
            })
            .expect("spawn");
        run.join().expect("no overflow, no panic");
    }

    #[test]
    fn accepts_0_9_1_and_flags_other_headers() {
        let mut codec = AmqpCodec::new(4096);
        let mut buf = BytesMut::from(&b"AMQP\x00\x00\x09"[..]);
        assert_eq!(codec.decode(&mut buf).expect("decode"), None);
        buf.put_u8(1);
        assert_eq!(
            codec.decode(&mut buf).expect("decode"),
            Some(Inbound::ProtocolHeader { supported: true })
        );
        let mut codec = AmqpCodec::new(4096);
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert_eq!(
            codec.decode(&mut buf).expect("decode"),
            Some(Inbound::ProtocolHeader { supported: false })
        );
    }

    #[test]
    fn refuses_an_oversized_frame_before_its_payload_arrives() {
        let mut codec = opened();
        let mut buf = BytesMut::new();
        buf.put_u8(FRAME_BODY);
        buf.put_u16(1);
        buf.put_u32(1_000_000);
        match codec.decode(&mut buf) {
            Err(e @ CodecError::FrameTooLarge { .. }) => {
                assert_eq!(e.reply_code(), code::FRAME_ERROR)
            }
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
    }

    #[test]
    fn rejects_bad_frame_end_unknown_type_and_garbage_methods() {
        let mut codec = opened();
        let mut buf = BytesMut::from(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, 0x00][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::BadFrameEnd(0))
        ));
        let mut buf = BytesMut::from(&[9, 0, 0, 0, 0, 0, 0, FRAME_END][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::UnknownFrameType(9))
        ));
        let mut buf = BytesMut::from(&[FRAME_METHOD, 0, 1, 0, 0, 0, 2, 0xff, 0xff, FRAME_END][..]);
        let err = codec.decode(&mut buf).expect_err("garbage method");
        assert_eq!(err.reply_code(), code::SYNTAX_ERROR);
        // queue.declare cut short after its reserved field.
        let mut buf = BytesMut::from(
            &[
                FRAME_METHOD,
                0,
                1,
                0,
                0,
                0,
                6,
                0,
                50,
                0,
                10,
                0,
                0,
                FRAME_END,
            ][..],
        );
        let err = codec.decode(&mut buf).expect_err("truncated arguments");
        assert_eq!(err.reply_code(), code::FRAME_ERROR);
        assert_eq!(err.to_string(), "cannot decode <<0,0>>");
    }

    fn deliver() -> AMQPClass {
        AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
            consumer_tag: "c".into(),
            delivery_tag: 1,
            redelivered: false,
            exchange: "".into(),
            routing_key: "q".into(),
        }))
    }

    /// A content header's properties are delivered byte for byte: header order, a
    /// duplicate key and a field type the parser would rewrite ('L' read as 'l') stay.
    #[test]
    fn content_header_properties_pass_through_unchanged() {
        let mut properties = vec![0x20, 0]; // property flags: headers only
        let table = [
            &[2, b'z', b'z', b'L'][..],
            &5i64.to_be_bytes(),
            &[2, b'a', b'a', b'I', 0, 0, 0, 1],
            &[2, b'a', b'a', b'I', 0, 0, 0, 2],
        ]
        .concat();
        properties.extend_from_slice(&u32::try_from(table.len()).expect("small").to_be_bytes());
        properties.extend_from_slice(&table);
        let mut payload = vec![0, 60, 0, 0];
        payload.extend_from_slice(&3u64.to_be_bytes());
        payload.extend_from_slice(&properties);
        let header_frame = [
            &[FRAME_HEADER, 0, 1][..],
            &u32::try_from(payload.len()).expect("small").to_be_bytes(),
            &payload,
            &[FRAME_END],
        ]
        .concat();
        let mut buf = BytesMut::from(&header_frame[..]);
        let mut codec = opened();
        let Some(Inbound::Header {
            header,
            raw_properties,
            ..
        }) = codec.decode(&mut buf).expect("decode")
        else {
            panic!("expected a content header");
        };
        assert_eq!(raw_properties, properties);
        let message = Message::new("".into(), "q".into(), header.properties, "abc".into())
            .with_raw_properties(raw_properties);
        let out = encode(
            &mut codec,
            Outbound::Content {
                channel: 1,
                method: deliver(),
                message: Arc::new(message),
            },
        );
        assert!(
            out.windows(header_frame.len()).any(|w| w == header_frame),
            "the delivery carries the publisher's header frame"
        );
    }

    #[test]
    fn body_frames_are_split_by_frame_max_and_reassemble() {
        let mut codec = AmqpCodec::new(4096);
        codec.set_frame_max(4096);
        let message = Arc::new(Message::new(
            "".into(),
            "q".into(),
            basic::AMQPProperties::default().with_content_type("text/plain".into()),
            Bytes::from(vec![7u8; 10_000]),
        ));
        let method = deliver();
        let mut buf = encode(
            &mut codec,
            Outbound::Content {
                channel: 3,
                method: method.clone(),
                message,
            },
        );
        let mut reader = opened();
        let mut frames = Vec::new();
        while let Some(frame) = reader.decode(&mut buf).expect("decode") {
            frames.push(frame);
        }
        assert_eq!(frames.len(), 2 + 3, "method, header, three bodies");
        assert_eq!(frames[0], Inbound::Method(3, method));
        match &frames[1] {
            Inbound::Header {
                channel: 3, header, ..
            } => assert_eq!((header.class_id, header.body_size), (60, 10_000)),
            other => panic!("expected a header, got {other:?}"),
        }
        let total: usize = frames[2..]
            .iter()
            .map(|f| match f {
                Inbound::Body(3, b) => {
                    assert!(b.len() + FRAME_OVERHEAD <= 4096);
                    b.len()
                }
                other => panic!("expected a body, got {other:?}"),
            })
            .sum();
        assert_eq!(total, 10_000);
    }
}
