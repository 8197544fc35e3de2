//! Fuzz target for the AMQP frame reader (issue: "A fuzz target for the frame reader").
//!
//! Every byte a client sends to the embedded broker goes through `AmqpCodec`'s decoder
//! before anything else looks at it, on a connection nobody has authenticated yet. This
//! target feeds arbitrary bytes through that decoder exactly as a connection's
//! `FramedRead` does (via `session_store::amqp::fuzzing::decode_all`: chunked reads,
//! decode until an error or "need more") and defends against:
//!
//! - panics in the decoder or in amq-protocol's parser (arithmetic overflow on sizes,
//!   slicing past the end, unchecked field tables, deep nesting) — a panic would kill the
//!   connection task, and with `panic = "abort"` the whole store;
//! - unbounded buffering: a frame header announcing a huge size must be refused before
//!   its payload is buffered, so the read buffer never grows past frame_max + 8 bytes
//!   (asserted inside `decode_all`);
//! - a decoder that yields items without consuming input (an endless loop).
//!
//! The first input byte picks the negotiated frame_max (tiny, RabbitMQ's minimum 4096,
//! or the default 128 KiB); the rest is the byte stream. Seeds (valid frames) live in
//! `corpus/amqp_frames/seed-*`; regenerate them with
//! `cargo test -p session-store --test amqp_robustness write_fuzz_seeds -- --ignored`.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run amqp_frames -- -max_total_time=60`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use session_store::amqp::fuzzing::decode_all;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, stream)) = data.split_first() else {
        return;
    };
    let frame_max = match pick % 4 {
        0 => 4096,
        1 => 131_072,
        2 => 16,
        _ => 8192 + u32::from(pick),
    };
    let out = decode_all(stream, frame_max);
    assert!(out.headers <= 1, "the protocol header is read once");
    assert!(out.leftover <= stream.len());
});
