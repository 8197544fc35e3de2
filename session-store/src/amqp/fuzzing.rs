//! Entry points for fuzzing and robustness tests: drive the broker's real frame decoder
//! ([`AmqpCodec`]) over arbitrary bytes exactly as a connection's `FramedRead` does, and
//! report what it made of them. Not part of the broker's API.

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use super::codec::{AmqpCodec, Inbound};

/// The 7-byte frame header plus the frame-end octet.
pub const FRAME_OVERHEAD: usize = 8;

/// The largest chunk [`decode_all`] appends at once (a typical socket read).
const MAX_CHUNK: usize = 65_536;

/// What [`decode_all`] saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Protocol headers decoded (at most one: the codec reads it once).
    pub headers: usize,
    /// Method, content-header and heartbeat frames decoded.
    pub frames: usize,
    /// Body frames decoded, and their payload bytes.
    pub bodies: usize,
    pub body_bytes: usize,
    /// The decoder's error, if it stopped on one (as the connection would, closing it).
    pub error: Option<String>,
    /// Bytes left undecoded when input ran out (an incomplete frame).
    pub leftover: usize,
    /// The largest the read buffer's length ever was.
    pub max_buffered: usize,
    /// The largest the read buffer's allocation ever was.
    pub max_capacity: usize,
}

/// Feeds `bytes` to a fresh decoder negotiated at `frame_max`, in chunks of varying size
/// (as reads off a socket arrive), decoding after each chunk until the decoder errs or
/// needs more input, the way `FramedRead` does. Stops at the first error.
///
/// Panics if the decoder ever holds more than one frame's worth of undecoded bytes beyond
/// the chunk just read: a decoder that waits for a frame never needs more than
/// `frame_max + FRAME_OVERHEAD` buffered, so a connection's read buffer stays bounded.
pub fn decode_all(bytes: &[u8], frame_max: u32) -> Outcome {
    let mut codec = AmqpCodec::new(frame_max);
    let mut buf = BytesMut::new();
    let mut out = Outcome::default();
    // Chunk sizes cycle through small and large reads so frames straddle chunk borders.
    const CHUNKS: [usize; 6] = [1, 7, 3, 64, 4096, MAX_CHUNK];
    let bound = (frame_max as usize).max(super::codec::PROTOCOL_HEADER.len()) + FRAME_OVERHEAD;
    let mut rest = bytes;
    let mut turn = 0usize;
    while !rest.is_empty() {
        let take = CHUNKS[turn % CHUNKS.len()].min(rest.len());
        turn += 1;
        let (chunk, tail) = rest.split_at(take);
        rest = tail;
        buf.extend_from_slice(chunk);
        out.max_buffered = out.max_buffered.max(buf.len());
        // Each successful decode consumes at least one byte, so this ends.
        loop {
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(Some(item)) => {
                    assert!(buf.len() < before, "decoder produced an item without input");
                    match item {
                        Inbound::ProtocolHeader { .. } => out.headers += 1,
                        Inbound::Method(..)
                        | Inbound::Heartbeat
                        | Inbound::InvalidHeartbeat(_)
                        | Inbound::Header { .. } => out.frames += 1,
                        Inbound::Body(_, body) => {
                            assert!(
                                body.len() + FRAME_OVERHEAD <= bound,
                                "body frame of {} bytes beyond frame_max {frame_max}",
                                body.len()
                            );
                            out.bodies += 1;
                            out.body_bytes += body.len();
                        }
                    }
                }
                Ok(None) => {
                    // Waiting for more: what is held must fit in one frame, and what was
                    // reserved for it too (with the allocator's doubling as slack).
                    assert!(
                        buf.len() < bound,
                        "decoder waits with {} bytes buffered, more than a frame (frame_max {frame_max})",
                        buf.len()
                    );
                    out.max_capacity = out.max_capacity.max(buf.capacity());
                    assert!(
                        buf.capacity() <= 2 * (bound + MAX_CHUNK),
                        "decoder reserved {} bytes for a frame of at most {bound}",
                        buf.capacity()
                    );
                    break;
                }
                Err(e) => {
                    out.error = Some(e.to_string());
                    out.leftover = buf.len();
                    return out;
                }
            }
        }
    }
    out.leftover = buf.len();
    out
}
