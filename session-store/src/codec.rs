//! Request framing: RESP multibulk requests and inline commands in, RESP2 replies out.
//!
//! Replies are encoded and multibulk requests decoded by `redis_protocol::codec::Resp2`.
//! Two things it does not do are written here by hand, each small:
//!
//! - **Inline commands** (`PING\r\n` typed into telnet): Redis accepts any request that
//!   does not start with `*` as one line split on whitespace; `Resp2` rejects it.
//! - **Limits before buffering**: `Resp2` has no size limits and re-parses a partial frame
//!   from its start on every read. So before handing a multibulk to it, [`RespCodec`]
//!   walks the `*N` and `$len` headers itself, rejects a count or announced length over the
//!   limits *before* the bytes arrive, and remembers how far it got, so a large request is
//!   scanned once rather than once per read. `Resp2` then decodes the complete frame, which
//!   it does once, without copying the payload.
//!
//! Error texts are Redis' (`Protocol error: invalid bulk length`, ...).

use bytes::{Buf, Bytes, BytesMut};
use redis_protocol::codec::Resp2;
use redis_protocol::resp2::types::BytesFrame;
use tokio_util::codec::{Decoder, Encoder};

use crate::error::CodecError;
use crate::number::parse_i64;

/// Longest inline command or header line, as Redis' `PROTO_INLINE_MAX_SIZE`.
const MAX_LINE: usize = 64 * 1024;
/// Most arguments in one request.
const MAX_ARGS: i64 = 1024 * 1024;
/// Before AUTH, requests are kept tiny so an unauthenticated peer cannot make the server
/// buffer much (Redis has the same two limits).
const UNAUTHENTICATED_MAX_ARGS: i64 = 10;
const UNAUTHENTICATED_MAX_BULK: i64 = 16 * 1024;

/// One reply on the wire. RESP2's null array (`*-1`), which Redis sends for an EXEC
/// whose watched keys changed, has no `BytesFrame`, so it is a case of its own.
#[derive(Debug, PartialEq)]
pub(crate) enum Reply {
    Frame(BytesFrame),
    NullArray,
}

impl From<BytesFrame> for Reply {
    fn from(frame: BytesFrame) -> Reply {
        Reply::Frame(frame)
    }
}

/// Decodes requests into their arguments and encodes replies.
#[derive(Debug)]
pub(crate) struct RespCodec {
    resp2: Resp2,
    max_frame_bytes: usize,
    authenticated: bool,
    /// Progress through a multibulk request whose bytes have not all arrived.
    partial: Option<Partial>,
}

#[derive(Debug, Clone, Copy)]
struct Partial {
    /// Bytes from the start of the buffer that are already checked: the `*N` header and
    /// every complete argument.
    checked: usize,
    /// Arguments still to come.
    missing: usize,
}

enum Step {
    /// The buffer holds no complete request yet.
    NeedMore,
    /// A request that asks for nothing (an empty line, `*0`); Redis ignores it.
    Empty,
    Request(Vec<Bytes>),
}

impl RespCodec {
    pub(crate) fn new(max_frame_bytes: usize, authenticated: bool) -> RespCodec {
        RespCodec {
            resp2: Resp2::default(),
            max_frame_bytes,
            authenticated,
            partial: None,
        }
    }

    /// Lifts the pre-authentication limits once the client has authenticated.
    pub(crate) fn set_authenticated(&mut self, authenticated: bool) {
        self.authenticated = authenticated;
    }

    fn decode_multibulk(&mut self, src: &mut BytesMut) -> Result<Step, CodecError> {
        let Partial {
            mut checked,
            mut missing,
        } = match self.partial {
            Some(partial) => partial,
            None => {
                let Some((line, next)) = line_at(src, 1, "too big mbulk count string")? else {
                    return Ok(Step::NeedMore);
                };
                let count = parse_i64(line).ok_or_else(|| protocol("invalid multibulk length"))?;
                if !(-1..=MAX_ARGS).contains(&count) {
                    return Err(protocol("invalid multibulk length"));
                }
                if !self.authenticated && count > UNAUTHENTICATED_MAX_ARGS {
                    return Err(protocol("unauthenticated multibulk length"));
                }
                let Ok(missing @ 1..) = usize::try_from(count) else {
                    src.advance(next);
                    return Ok(Step::Empty);
                };
                Partial {
                    checked: next,
                    missing,
                }
            }
        };
        while missing > 0 {
            self.partial = Some(Partial { checked, missing });
            let Some(&kind) = src.get(checked) else {
                return Ok(Step::NeedMore);
            };
            if kind != b'$' {
                let got = char::from(kind).escape_default();
                return Err(protocol(&format!("expected '$', got '{got}'")));
            }
            let Some((line, data_start)) = line_at(src, checked + 1, "too big bulk count string")?
            else {
                return Ok(Step::NeedMore);
            };
            let len = parse_i64(line)
                .and_then(|len| usize::try_from(len).ok())
                .ok_or_else(|| protocol("invalid bulk length"))?;
            if !self.authenticated && len > UNAUTHENTICATED_MAX_BULK as usize {
                return Err(protocol("unauthenticated bulk length"));
            }
            let end = data_start.saturating_add(len);
            if end.saturating_add(2) > self.max_frame_bytes {
                return Err(protocol("invalid bulk length"));
            }
            if src.len() < end + 2 {
                return Ok(Step::NeedMore);
            }
            if &src[end..end + 2] != b"\r\n" {
                return Err(protocol("expected CRLF after bulk data"));
            }
            checked = end + 2;
            missing -= 1;
        }
        self.partial = None;
        let mut frame = src.split_to(checked);
        match self.resp2.decode(&mut frame)? {
            Some(BytesFrame::Array(items)) => items
                .into_iter()
                .map(|item| match item {
                    BytesFrame::BulkString(arg) => Ok(arg),
                    _ => Err(protocol("expected bulk string argument")),
                })
                .collect::<Result<_, _>>()
                .map(Step::Request),
            _ => Err(protocol("unreadable multibulk request")),
        }
    }
}

impl Decoder for RespCodec {
    type Item = Vec<Bytes>;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Vec<Bytes>>, CodecError> {
        loop {
            let step = match src.first() {
                None => return Ok(None),
                Some(b'*') => self.decode_multibulk(src)?,
                Some(_) => decode_inline(src)?,
            };
            match step {
                Step::NeedMore => return Ok(None),
                Step::Empty => continue,
                Step::Request(args) => return Ok(Some(args)),
            }
        }
    }

    /// A peer that closes half-way through a request just leaves; the partial request is
    /// dropped without an error, as Redis does.
    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Vec<Bytes>>, CodecError> {
        self.decode(src)
    }
}

impl Encoder<Reply> for RespCodec {
    type Error = CodecError;

    fn encode(&mut self, reply: Reply, dst: &mut BytesMut) -> Result<(), CodecError> {
        match reply {
            Reply::Frame(frame) => Ok(self.resp2.encode(frame, dst)?),
            Reply::NullArray => {
                dst.extend_from_slice(b"*-1\r\n");
                Ok(())
            }
        }
    }
}

/// One inline command: a line up to `\n` (with or without `\r`), split into words as
/// Redis splits it (see [`split_args`]).
fn decode_inline(src: &mut BytesMut) -> Result<Step, CodecError> {
    let window = &src[..src.len().min(MAX_LINE)];
    let Some(newline) = window.iter().position(|&b| b == b'\n') else {
        return if src.len() >= MAX_LINE {
            Err(protocol("too big inline request"))
        } else {
            Ok(Step::NeedMore)
        };
    };
    let line = src.split_to(newline + 1);
    let line = line[..newline]
        .strip_suffix(b"\r")
        .unwrap_or(&line[..newline]);
    let args = split_args(line).ok_or_else(|| protocol("unbalanced quotes in request"))?;
    Ok(if args.is_empty() {
        Step::Empty
    } else {
        Step::Request(args.into_iter().map(Bytes::from).collect())
    })
}

/// Splits an inline command line by Redis' rules (its `sdssplitargs`): words separated
/// by blanks; "double quotes" with the escapes `\n \r \t \b \a \xHH` and `\` before
/// any other byte; 'single quotes' with only `\'`; a quote may open inside a word, and a
/// closing quote must be followed by a blank or the end. `None` for unbalanced quotes.
/// Written here because these are Redis' own rules: quoting crates such as `shlex` or
/// `shell-words` follow a shell's, which differ on escapes and on closing quotes.
fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let blank = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
    let closes = |next: Option<&u8>| next.is_none_or(|&b| blank(b));
    let hex = |b: Option<&u8>| b.and_then(|&b| char::from(b).to_digit(16));
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while line.get(i).is_some_and(|&b| blank(b)) {
            i += 1;
        }
        if i == line.len() {
            return Some(args);
        }
        let mut word = Vec::new();
        let (mut double, mut single) = (false, false);
        loop {
            let c = line.get(i).copied();
            if double {
                match c {
                    None => return None,
                    Some(b'\\') if line.get(i + 1) == Some(&b'x') => {
                        if let (Some(high), Some(low)) =
                            (hex(line.get(i + 2)), hex(line.get(i + 3)))
                        {
                            word.push((high * 16 + low) as u8);
                            i += 4;
                            continue;
                        }
                        i += 1;
                        word.push(b'x');
                    }
                    Some(b'\\') if i + 1 < line.len() => {
                        i += 1;
                        word.push(match line[i] {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            other => other,
                        });
                    }
                    Some(b'"') if closes(line.get(i + 1)) => {
                        i += 1;
                        break;
                    }
                    Some(b'"') => return None,
                    Some(other) => word.push(other),
                }
            } else if single {
                match c {
                    None => return None,
                    Some(b'\\') if line.get(i + 1) == Some(&b'\'') => {
                        i += 1;
                        word.push(b'\'');
                    }
                    Some(b'\'') if closes(line.get(i + 1)) => {
                        i += 1;
                        break;
                    }
                    Some(b'\'') => return None,
                    Some(other) => word.push(other),
                }
            } else {
                match c {
                    None | Some(b' ' | b'\n' | b'\r' | b'\t') => break,
                    Some(b'"') => double = true,
                    Some(b'\'') => single = true,
                    Some(other) => word.push(other),
                }
            }
            i += 1;
        }
        args.push(word);
    }
}

/// The CRLF-terminated line starting at `start`, and where the next one starts.
fn line_at<'a>(
    src: &'a [u8],
    start: usize,
    too_long: &str,
) -> Result<Option<(&'a [u8], usize)>, CodecError> {
    let rest = src.get(start..).unwrap_or_default();
    let window = &rest[..rest.len().min(MAX_LINE + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(end) => Ok(Some((&rest[..end], start + end + 2))),
        None if rest.len() > MAX_LINE => Err(protocol(too_long)),
        None => Ok(None),
    }
}

fn protocol(what: &str) -> CodecError {
    CodecError::Protocol(what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec() -> RespCodec {
        RespCodec::new(1024 * 1024, true)
    }

    fn args(v: &[&str]) -> Vec<Bytes> {
        v.iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect()
    }

    fn decode_all(codec: &mut RespCodec, input: &[u8]) -> Result<Vec<Vec<Bytes>>, CodecError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(req) = codec.decode(&mut buf)? {
            out.push(req);
        }
        Ok(out)
    }

    fn protocol_error(result: Result<impl std::fmt::Debug, CodecError>) -> String {
        match result {
            Err(CodecError::Protocol(msg)) => msg,
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    #[test]
    fn multibulk_and_pipelining() {
        let got = decode_all(
            &mut codec(),
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n",
        );
        assert_eq!(got.ok(), Some(vec![args(&["GET", "k"]), args(&["PING"])]));
    }

    #[test]
    fn binary_safe_arguments() {
        let got = decode_all(&mut codec(), b"*1\r\n$4\r\n\r\n\0\xff\r\n");
        assert_eq!(
            got.ok(),
            Some(vec![vec![Bytes::from_static(b"\r\n\0\xff")]])
        );
    }

    #[test]
    fn byte_by_byte_arrival() {
        let input = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\nPING\r\n";
        let mut codec = codec();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for &b in input {
            buf.extend_from_slice(&[b]);
            if let Some(req) = codec.decode(&mut buf).ok().flatten() {
                out.push(req);
            }
        }
        assert_eq!(out, vec![args(&["SET", "k", "hello"]), args(&["PING"])]);
        assert!(buf.is_empty());
    }

    #[test]
    fn inline_commands() {
        let got = decode_all(&mut codec(), b"PING\r\n\r\n  set  k\tv \nECHO x\r\n");
        assert_eq!(
            got.ok(),
            Some(vec![
                args(&["PING"]),
                args(&["set", "k", "v"]),
                args(&["ECHO", "x"])
            ])
        );
        let mut buf = BytesMut::from(&b"PING"[..]);
        assert!(codec().decode(&mut buf).ok().flatten().is_none());
    }

    #[test]
    fn inline_quotes_as_redis_reads_them() {
        let split = |line: &[u8]| split_args(line).map(|words| words.join(&b'|'));
        assert_eq!(split(b"set k \"a b\""), Some(b"set|k|a b".to_vec()));
        assert_eq!(split(b"set k 'a b'"), Some(b"set|k|a b".to_vec()));
        assert_eq!(
            split(br#"set k "a\x41\n\q\"""#),
            Some(b"set|k|aA\nq\"".to_vec())
        );
        assert_eq!(split(br"set k 'it\'s'"), Some(b"set|k|it's".to_vec()));
        assert_eq!(split(b"set k \"\""), Some(b"set|k|".to_vec()));
        assert_eq!(
            split(b"a\"b c\"d"),
            None,
            "a closing quote needs a blank after it"
        );
        assert_eq!(split(b"ab\"c d\" e"), Some(b"abc d|e".to_vec()));
        assert_eq!(split(b"set k \"abc"), None);
        assert_eq!(split(b"set k 'abc"), None);
        assert_eq!(split(b"echo\x0chello"), Some(b"echo\x0chello".to_vec()));
        assert_eq!(split(b" \t"), Some(Vec::new()));
        let got = decode_all(&mut codec(), b"set k \"abc\r\n");
        assert_eq!(protocol_error(got), "unbalanced quotes in request");
    }

    #[test]
    fn too_long_inline_line() {
        let long = vec![b'a'; MAX_LINE + 1];
        assert_eq!(
            protocol_error(decode_all(&mut codec(), &long)),
            "too big inline request"
        );
    }

    #[test]
    fn empty_and_null_multibulk_are_ignored() {
        let got = decode_all(&mut codec(), b"*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n");
        assert_eq!(got.ok(), Some(vec![args(&["PING"])]));
    }

    #[test]
    fn bad_counts_and_lengths() {
        for (input, want) in [
            (&b"*-5\r\n"[..], "invalid multibulk length"),
            (b"*x\r\n", "invalid multibulk length"),
            (b"*2147483648\r\n", "invalid multibulk length"),
            (b"*1\r\n$-1\r\n", "invalid bulk length"),
            (b"*1\r\n$-2\r\n", "invalid bulk length"),
            (b"*1\r\n:1\r\n", "expected '$', got ':'"),
            (b"*1\r\n$4\r\nPINGxx\r\n", "expected CRLF after bulk data"),
        ] {
            assert_eq!(protocol_error(decode_all(&mut codec(), input)), want);
        }
    }

    #[test]
    fn oversized_bulk_is_refused_on_its_header() {
        // Only the header has arrived; the refusal must not wait for the payload.
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nSET\r\n$10000000000\r\n"[..]);
        assert_eq!(
            protocol_error(codec().decode(&mut buf)),
            "invalid bulk length"
        );
        let mut small = RespCodec::new(100, true);
        let mut buf = BytesMut::from(&b"*1\r\n$97\r\n"[..]);
        assert_eq!(
            protocol_error(small.decode(&mut buf)),
            "invalid bulk length"
        );
    }

    #[test]
    fn unauthenticated_limits() {
        let mut codec = RespCodec::new(1024 * 1024, false);
        assert_eq!(
            protocol_error(decode_all(&mut codec, b"*11\r\n")),
            "unauthenticated multibulk length"
        );
        let mut codec = RespCodec::new(1024 * 1024, false);
        assert_eq!(
            protocol_error(decode_all(&mut codec, b"*1\r\n$16385\r\n")),
            "unauthenticated bulk length"
        );
        codec.set_authenticated(true);
        let mut buf = BytesMut::from(&b"*1\r\n$16385\r\n"[..]);
        assert!(matches!(codec.decode(&mut buf), Ok(None)));
    }

    #[test]
    fn partial_request_at_eof_is_dropped() {
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n"[..]);
        assert!(matches!(codec().decode_eof(&mut buf), Ok(None)));
    }

    #[test]
    fn encodes_replies() {
        let mut out = BytesMut::new();
        let mut codec = codec();
        for reply in [
            BytesFrame::SimpleString(Bytes::from_static(b"OK")).into(),
            BytesFrame::Null.into(),
            Reply::NullArray,
            BytesFrame::Integer(-2).into(),
            BytesFrame::Error("ERR x".into()).into(),
        ] {
            assert!(codec.encode(reply, &mut out).is_ok());
        }
        assert_eq!(&out[..], b"+OK\r\n$-1\r\n*-1\r\n:-2\r\n-ERR x\r\n");
    }
}
