//! Robustness of the embedded AMQP broker against clients that misbehave: malformed and
//! mutated frames (a bounded, deterministic stand-in for the `fuzz/` target), idle and
//! silent connections (heartbeats), shutdown with clients connected, connections dropped
//! mid-handshake, and a consumer that never reads its socket.
//!
//! Every await is bounded, every loop counted, waits poll with a deadline, and all traffic
//! stays on 127.0.0.1.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, WriteContext, gen_frame, parse_frame};
use amq_protocol::protocol::{AMQPClass, basic, channel, connection, queue};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use futures::StreamExt as _;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties, Event};
use session_store::amqp::fuzzing::{FRAME_OVERHEAD, Outcome, decode_all};
use session_store::amqp::{AmqpConfig, run};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::timeout;

/// Bound on any single network step.
const STEP: Duration = Duration::from_secs(5);
const HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

// ---------------------------------------------------------------------------------------
// frame reader: valid frames, mutated deterministically

/// xorshift64: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
    }

    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }
}

fn encode(frame: &AMQPFrame) -> Vec<u8> {
    gen_frame(frame)(WriteContext::from(Vec::new()))
        .expect("serialise frame")
        .write
}

fn method(ch: u16, m: AMQPClass) -> AMQPFrame {
    AMQPFrame::Method(ch, m)
}

/// Valid frames a client sends, one serialised frame each, generated with amq-protocol's
/// `gen_frame`: the handshake, a queue declared with arguments, a publish with header and
/// body, an ack, a heartbeat and a close.
fn valid_frames() -> Vec<Vec<u8>> {
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), AMQPValue::LongInt(1000));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from("dlx")),
    );
    let mut nested = FieldTable::default();
    nested.insert("k".into(), AMQPValue::FieldTable(args.clone()));
    let props = basic::AMQPProperties::default()
        .with_content_type("text/plain".into())
        .with_delivery_mode(2)
        .with_headers(nested)
        .with_expiration("60000".into());
    let body = b"hello, broker".to_vec();
    let frames = vec![
        method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: args.clone(),
                mechanism: "PLAIN".into(),
                response: LongString::from("\0guest\0guest"),
                locale: "en_US".into(),
            })),
        ),
        method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 2047,
                frame_max: 131_072,
                heartbeat: 60,
            })),
        ),
        method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        ),
        method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        ),
        method(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: "q".into(),
                passive: false,
                durable: true,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments: args,
            })),
        ),
        method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "".into(),
                routing_key: "q".into(),
                mandatory: true,
                immediate: false,
            })),
        ),
        AMQPFrame::Header(
            1,
            AMQPContentHeader {
                class_id: 60,
                body_size: body.len() as u64,
                properties: props,
            },
        ),
        AMQPFrame::Body(1, body),
        AMQPFrame::Heartbeat,
        method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: 1,
                multiple: false,
            })),
        ),
        method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            })),
        ),
    ];
    frames.iter().map(encode).collect()
}

/// The protocol header then `frames`, with the offset where each frame starts.
fn stream_of(frames: &[&Vec<u8>]) -> (Vec<u8>, Vec<usize>) {
    let mut out = HEADER.to_vec();
    let mut starts = Vec::new();
    for f in frames {
        starts.push(out.len());
        out.extend_from_slice(f);
    }
    (out, starts)
}

#[test]
fn valid_frames_decode_whole() {
    let frames = valid_frames();
    let (stream, _) = stream_of(&frames.iter().collect::<Vec<_>>());
    for frame_max in [4096, 131_072] {
        let out = decode_all(&stream, frame_max);
        assert_eq!(
            out,
            Outcome {
                headers: 1,
                frames: frames.len() - 1,
                bodies: 1,
                body_bytes: 13,
                error: None,
                leftover: 0,
                max_buffered: out.max_buffered,
                max_capacity: out.max_capacity,
            }
        );
    }
}

/// A few thousand mutations of valid streams: flipped bytes, truncation, huge and
/// boundary sizes, wrong frame-end octets, unknown frame types, inserted garbage, spliced
/// frames. None may panic or make the decoder buffer more than one frame (both asserted
/// inside `decode_all`); the targeted ones must fail the way the connection closes.
#[test]
fn mutated_frames_never_panic_and_stay_bounded() {
    let frames = valid_frames();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut errors = 0usize;
    for i in 0..4000 {
        let frame_max = [4096u32, 8192, 131_072][i % 3];
        let picked: Vec<&Vec<u8>> = (0..1 + rng.below(12))
            .map(|_| &frames[rng.below(frames.len())])
            .collect();
        let (mut s, starts) = stream_of(&picked);
        let at = starts[rng.below(starts.len())];
        let kind = i % 9;
        let mut expect: Option<&str> = None;
        match kind {
            0 => {
                for _ in 0..1 + rng.below(8) {
                    let p = rng.below(s.len());
                    s[p] ^= 1 << rng.below(8);
                }
            }
            1 => s.truncate(rng.below(s.len())),
            2 => {
                let size = match rng.below(4) {
                    0 => u32::MAX,
                    1 => frame_max - FRAME_OVERHEAD as u32 + 1,
                    2 => 0x8000_0000,
                    _ => frame_max + u32::try_from(rng.below(1 << 20)).unwrap_or(0),
                };
                s[at + 3..at + 7].copy_from_slice(&size.to_be_bytes());
                expect = Some("frame_too_large");
            }
            3 => {
                let size = u32::from_be_bytes([s[at + 3], s[at + 4], s[at + 5], s[at + 6]]);
                let end = at + 7 + size as usize;
                s[end] = loop {
                    let b = rng.byte();
                    if b != 0xCE {
                        break b;
                    }
                };
                expect = Some("frame end octet");
            }
            4 => {
                s[at] = [0, 4, 5, 7, 9, 0x41, 0xFF][rng.below(7)];
                expect = Some("unknown frame type");
            }
            5 => {
                let p = rng.below(s.len());
                let junk: Vec<u8> = (0..rng.below(64)).map(|_| rng.byte()).collect();
                s.splice(p..p, junk);
            }
            6 => {
                let a = rng.below(s.len());
                let b = (a + rng.below(200)).min(s.len());
                let piece = s[a..b].to_vec();
                let p = rng.below(s.len());
                s.splice(p..p, piece);
            }
            7 => {
                let n = rng.below(4096);
                s.truncate(HEADER.len());
                s.extend((0..n).map(|_| rng.byte()));
            }
            _ => {
                // A body frame exactly at frame_max (accepted) or one byte over (refused).
                let over = rng.below(2);
                let size = frame_max as usize - FRAME_OVERHEAD + over;
                s.truncate(at);
                s.push(3);
                s.extend_from_slice(&1u16.to_be_bytes());
                s.extend_from_slice(&u32::try_from(size).unwrap_or(0).to_be_bytes());
                s.extend(std::iter::repeat_n(0xAB, size));
                s.push(0xCE);
                if over == 1 {
                    expect = Some("frame_too_large");
                }
            }
        }
        let out = decode_all(&s, frame_max);
        assert!(out.headers <= 1);
        if let Some(e) = &out.error {
            errors += 1;
            assert!(
                out.leftover <= s.len(),
                "case {i}: leftover {}",
                out.leftover
            );
            let _ = e;
        }
        if let Some(want) = expect {
            let got = out.error.as_deref().unwrap_or("");
            assert!(
                got.contains(want),
                "case {i} (mutation {kind}): expected an error with {want:?}, got {out:?}"
            );
        }
        if kind == 8 && expect.is_none() {
            assert_eq!(out.error, None, "case {i}: a frame of exactly frame_max");
            let before = decode_all(&s[..at], frame_max).body_bytes;
            assert_eq!(out.body_bytes, before + frame_max as usize - FRAME_OVERHEAD);
        }
    }
    assert!(errors > 1000, "only {errors} mutations were refused");
}

/// A frame header announcing 4 GiB followed by megabytes of payload: refused on its
/// header, before any of the payload is buffered.
#[test]
fn huge_frame_refused_before_its_payload_is_buffered() {
    let mut s = HEADER.to_vec();
    s.extend_from_slice(&[3, 0, 1, 0xFF, 0xFF, 0xFF, 0xF0]);
    s.extend(std::iter::repeat_n(0u8, 8 << 20));
    let out = decode_all(&s, 131_072);
    assert!(
        out.error
            .as_deref()
            .is_some_and(|e| e.contains("frame_too_large")),
        "{out:?}"
    );
    assert!(out.max_capacity < 1 << 20, "{out:?}");
    // A frame just under frame_max, announced and then trickled in: the buffer holds it
    // and no more.
    let mut s = HEADER.to_vec();
    let size = 131_072 - FRAME_OVERHEAD;
    s.push(3);
    s.extend_from_slice(&1u16.to_be_bytes());
    s.extend_from_slice(&u32::try_from(size).unwrap_or(0).to_be_bytes());
    s.extend(std::iter::repeat_n(1u8, size));
    s.push(0xCE);
    let out = decode_all(&s, 131_072);
    assert_eq!((out.error, out.bodies, out.body_bytes), (None, 1, size));
}

/// Writes the fuzz target's seed corpus (`fuzz/corpus/amqp_frames/seed-*`): each valid
/// frame after the protocol header, and the whole valid stream. The first byte picks
/// frame_max in the target (1: 128 KiB).
#[test]
#[ignore = "writes files: run by hand to refresh the fuzz corpus"]
fn write_fuzz_seeds() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/amqp_frames");
    std::fs::create_dir_all(&dir).expect("create corpus dir");
    let frames = valid_frames();
    let mut seeds: Vec<Vec<u8>> = frames.iter().map(|f| stream_of(&[f]).0).collect();
    seeds.push(stream_of(&frames.iter().collect::<Vec<_>>()).0);
    for (i, seed) in seeds.iter().enumerate() {
        let mut data = vec![1u8];
        data.extend_from_slice(seed);
        std::fs::write(dir.join(format!("seed-{i:02}")), data).expect("write seed");
    }
}

// ---------------------------------------------------------------------------------------
// raw protocol access

struct Raw {
    sock: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(port: u16) -> Raw {
        let sock = step("tcp connect", TcpStream::connect(("127.0.0.1", port)))
            .await
            .expect("tcp connect");
        Raw {
            sock,
            buf: Vec::new(),
        }
    }

    async fn send_bytes(&mut self, bytes: &[u8]) {
        step("write", self.sock.write_all(bytes))
            .await
            .expect("write");
    }

    async fn send(&mut self, frame: &AMQPFrame) {
        self.send_bytes(&encode(frame)).await;
    }

    /// The next frame within `limit`: Ok(None) when the peer closed, Err on timeout.
    async fn frame_within(&mut self, limit: Duration) -> Result<Option<AMQPFrame>, ()> {
        let deadline = Instant::now() + limit;
        let mut chunk = [0u8; 65536];
        for _ in 0..10_000 {
            if !self.buf.is_empty() {
                match parse_frame(self.buf.as_slice()) {
                    Ok((rest, frame)) => {
                        let used = self.buf.len() - rest.len();
                        self.buf.drain(..used);
                        return Ok(Some(frame));
                    }
                    Err(e) if e.is_incomplete() => {}
                    Err(e) => panic!("unparsable frame from broker: {e:?}"),
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, self.sock.read(&mut chunk)).await {
                Err(_) => return Err(()),
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
        panic!("no complete frame after 10000 reads");
    }

    async fn method(&mut self) -> AMQPClass {
        for _ in 0..100 {
            match self.frame_within(STEP).await {
                Ok(Some(AMQPFrame::Method(_, m))) => return m,
                Ok(Some(AMQPFrame::Heartbeat)) => continue,
                other => panic!("expected a method frame, got {other:?}"),
            }
        }
        panic!("only heartbeats");
    }

    /// connection.start .. open-ok as guest, asking for `heartbeat` seconds.
    async fn handshake(&mut self, heartbeat: u16) {
        self.send_bytes(HEADER).await;
        let AMQPClass::Connection(connection::AMQPMethod::Start(_)) = self.method().await else {
            panic!("expected connection.start");
        };
        self.send(&method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: FieldTable::default(),
                mechanism: "PLAIN".into(),
                response: LongString::from("\0guest\0guest"),
                locale: "en_US".into(),
            })),
        ))
        .await;
        let AMQPClass::Connection(connection::AMQPMethod::Tune(tune)) = self.method().await else {
            panic!("expected connection.tune");
        };
        self.send(&method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: tune.channel_max,
                frame_max: tune.frame_max,
                heartbeat,
            })),
        ))
        .await;
        self.send(&method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        ))
        .await;
        let AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) = self.method().await else {
            panic!("expected connection.open-ok");
        };
    }

    /// Expects connection.close with `code` (skipping other frames), answers close-ok.
    /// Answers connection.close `code` with close-ok; returns its reply text.
    async fn expect_connection_close(&mut self, code: u16) -> String {
        for _ in 0..10_000 {
            match self.frame_within(STEP).await {
                Ok(Some(AMQPFrame::Method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Close(c)),
                ))) => {
                    assert_eq!(c.reply_code, code, "reply code ({})", c.reply_text);
                    self.send(&method(
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                            connection::CloseOk {},
                        )),
                    ))
                    .await;
                    return c.reply_text.to_string();
                }
                Ok(Some(_)) => continue,
                other => panic!("expected connection.close {code}, got {other:?}"),
            }
        }
        panic!("no connection.close among 10000 frames");
    }
}

async fn step<T>(what: &str, fut: impl Future<Output = T>) -> T {
    timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {STEP:?}: {what}"))
}

/// The broker in this process on an ephemeral loopback port; stops when the returned
/// sender is dropped or fired.
async fn in_process(config: AmqpConfig) -> (u16, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(run(listener, config, async {
        let _ = stopped.await;
    }));
    (port, stop)
}

// ---------------------------------------------------------------------------------------
// heartbeats

#[tokio::test]
async fn server_sends_heartbeats_on_an_idle_connection() {
    let (port, _stop) = in_process(AmqpConfig::default()).await;
    let mut raw = Raw::connect(port).await;
    raw.handshake(1).await;
    // heartbeat=1: the broker speaks after 0.5 s of silence. Keep our side alive and see
    // several heartbeats over ~3 s (longer than the 2 s the broker tolerates silence).
    let start = Instant::now();
    let mut beats = 0;
    while start.elapsed() < Duration::from_secs(3) {
        match raw.frame_within(Duration::from_millis(1500)).await {
            Ok(Some(AMQPFrame::Heartbeat)) => {
                beats += 1;
                raw.send(&AMQPFrame::Heartbeat).await;
            }
            other => panic!("expected a heartbeat within 1.5 s, got {other:?}"),
        }
    }
    assert!(beats >= 3, "{beats} heartbeats in 3 s");
}

#[tokio::test]
async fn silent_client_is_disconnected_after_missed_heartbeats() {
    let (port, _stop) = in_process(AmqpConfig::default()).await;
    let mut raw = Raw::connect(port).await;
    raw.handshake(1).await;
    let start = Instant::now();
    for _ in 0..100 {
        match raw.frame_within(Duration::from_secs(5)).await {
            Ok(Some(AMQPFrame::Heartbeat)) => continue,
            Ok(None) => break,
            other => panic!("expected heartbeats then a closed socket, got {other:?}"),
        }
    }
    let took = start.elapsed();
    // RabbitMQ drops the socket after two missed heartbeats (2 s here), without a close.
    assert!(
        took >= Duration::from_millis(1500) && took <= Duration::from_secs(3),
        "disconnected after {took:?}"
    );
}

// ---------------------------------------------------------------------------------------
// the binary

/// `session-store` with its AMQP listener on an ephemeral port, killed when dropped.
struct Store {
    child: Child,
    port: u16,
}

impl Store {
    fn start(extra: &[&str]) -> Store {
        let mut child = Command::new(env!("CARGO_BIN_EXE_session-store"))
            .args(["--bind", "127.0.0.1:0", "--amqp-bind", "127.0.0.1:0"])
            .arg("--amqp-no-persist")
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start session-store");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.split("amqp listening on ").nth(1) {
                    let _ = tx.send(addr.trim().to_string());
                }
                eprintln!("[session-store] {line}");
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("session-store logs `amqp listening on ADDR`");
        let port = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        Store { child, port }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// VmRSS in bytes.
    fn rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .expect("VmRSS")
            * 1024
    }

    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Waits for the process to exit by itself; its exit code.
    fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(Instant::now() < deadline, "no exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const MIB: u64 = 1 << 20;

async fn connect(url: &str) -> Connection {
    step(
        "connect",
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

fn reply_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

/// A client can still connect, declare, publish and get.
async fn still_serves(url: &str, queue: &str) {
    round_trip(url, queue, BasicProperties::default()).await;
}

/// Declares `queue`, publishes "ping" with `properties` (confirmed) and gets it back;
/// returns the properties it came back with.
async fn round_trip(url: &str, queue: &str, properties: BasicProperties) -> BasicProperties {
    let conn = connect(url).await;
    let ch = step("channel", conn.create_channel())
        .await
        .expect("channel");
    step(
        "declare",
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("declare");
    step(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm");
    let confirm = step(
        "publish",
        ch.basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            b"ping",
            properties,
        ),
    )
    .await
    .expect("publish");
    step("confirm", confirm).await.expect("confirmed");
    let got = step(
        "get",
        ch.basic_get(
            queue.into(),
            lapin::options::BasicGetOptions { no_ack: true },
        ),
    )
    .await
    .expect("get");
    let got = got.expect("a message");
    assert_eq!(got.delivery.data, b"ping".to_vec());
    let _ = step("close", conn.close(200, "bye".into())).await;
    got.delivery.properties
}

/// A field table with `depth` tables nested in it: `{n: {n: … {}}}`. Small ones only:
/// building and dropping it recurses as deep as it nests.
fn nested_table(depth: usize) -> FieldTable {
    let mut table = FieldTable::default();
    for _ in 0..depth {
        let mut outer = FieldTable::default();
        outer.insert("n".into(), AMQPValue::FieldTable(table));
        table = outer;
    }
    table
}

/// [`nested_table`] as wire bytes (length first), written byte by byte for any depth.
fn nested_table_bytes(depth: usize) -> Vec<u8> {
    let mut content: Vec<u8> = Vec::new();
    for _ in 0..depth {
        let mut outer = vec![1, b'n', b'F'];
        outer.extend_from_slice(&u32::try_from(content.len()).expect("small").to_be_bytes());
        outer.extend_from_slice(&content);
        content = outer;
    }
    let mut table = u32::try_from(content.len())
        .expect("small")
        .to_be_bytes()
        .to_vec();
    table.extend_from_slice(&content);
    table
}

/// A frame of `kind` on `channel` around `payload`.
fn raw_frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![kind];
    frame.extend_from_slice(&channel.to_be_bytes());
    frame.extend_from_slice(&u32::try_from(payload.len()).expect("small").to_be_bytes());
    frame.extend_from_slice(payload);
    frame.push(0xCE);
    frame
}

/// Field tables nested thousands deep (a few bytes a level) would overflow the stack of
/// the thread that parses, clones or drops them, and abort the whole store: before login
/// (start-ok's client properties), in a method's arguments and in a message's headers,
/// such a frame closes its connection with 502 and the store serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_field_tables_are_refused() {
    let store = Store::start(&[]);
    // connection.start-ok: client properties, mechanism, response, locale. Before login a
    // frame has at most 4088 bytes, which still nest 570 deep; refused, like any bad frame
    // then, with a silent close after RabbitMQ's pause.
    let mut start_ok = vec![0, 10, 0, 11];
    start_ok.extend_from_slice(&nested_table_bytes(570));
    start_ok.extend_from_slice(b"\x05PLAIN\x00\x00\x00\x0c\x00guest\x00guest\x05en_US");
    assert!(start_ok.len() <= 4088, "{}", start_ok.len());
    let mut raw = Raw::connect(store.port).await;
    raw.send_bytes(HEADER).await;
    let AMQPClass::Connection(connection::AMQPMethod::Start(_)) = raw.method().await else {
        panic!("expected connection.start");
    };
    raw.send_bytes(&raw_frame(1, 0, &start_ok)).await;
    assert_eq!(raw.frame_within(STEP).await, Ok(None), "a silent close");

    let deep = nested_table_bytes(5000);

    // queue.declare: reserved, queue "deep", no flags, arguments.
    let mut declare = b"\x00\x32\x00\x0a\x00\x00\x04deep\x00".to_vec();
    declare.extend_from_slice(&deep);
    // A content header (class 60, body size 0) with only headers (flag bit 13).
    let mut header = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20, 0];
    header.extend_from_slice(&deep);
    let publish = encode(&method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            routing_key: "deep".into(),
            ..Default::default()
        })),
    ));
    for frames in [
        raw_frame(1, 1, &declare),
        [publish, raw_frame(2, 1, &header)].concat(),
    ] {
        let mut raw = Raw::connect(store.port).await;
        raw.handshake(0).await;
        raw.send(&method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        ))
        .await;
        raw.method().await;
        raw.send_bytes(&frames).await;
        raw.expect_connection_close(502).await;
    }

    still_serves(&store.url(), "after-deep-tables").await;
    // Nesting up to the limit (64 tables, the headers table among them) is a message
    // like any other.
    let headers = nested_table(63);
    let got = round_trip(
        &store.url(),
        "nested",
        BasicProperties::default().with_headers(headers.clone()),
    )
    .await;
    assert_eq!(got.headers(), &Some(headers));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_clients_with_320_and_exits_0() {
    serve_then_shut_down(Store::start(&[])).await;
}

/// The same on a broker of one thread, the single-threaded runtime's path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_on_one_thread_serves_and_shuts_down_the_same() {
    serve_then_shut_down(Store::start(&["--amqp-threads", "1"])).await;
}

/// Serves a client, then on SIGTERM closes every client with 320 and exits 0.
async fn serve_then_shut_down(mut store: Store) {
    still_serves(&store.url(), "before-shutdown").await;
    let conn = connect(&store.url()).await;
    let mut events = conn.events_listener();
    let mut raw = Raw::connect(store.port).await;
    raw.handshake(0).await;
    let status = Command::new("kill")
        .args(["-TERM", &store.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    // RabbitMQ's words when it stops.
    assert_eq!(
        raw.expect_connection_close(320).await,
        "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
    );
    let code = step("lapin reports the broker's close", async {
        for _ in 0..100 {
            match events.next().await {
                Some(Event::Error(e)) => return reply_code(&e),
                Some(_) => continue,
                None => return None,
            }
        }
        None
    })
    .await;
    assert_eq!(code, Some(320), "lapin's error for the broker's close");
    assert!(!conn.status().connected());
    // Drain timeout is 5 s; both clients answered, so this is quick.
    let code = tokio::task::spawn_blocking(move || store.wait_exit(Duration::from_secs(7)))
        .await
        .expect("wait");
    assert_eq!(code, Some(0), "exit code after SIGTERM");
}

/// 1,000 connections that go away mid-handshake (before the header, after part of it,
/// after the header, half-way through start-ok, some with a reset): the broker forgets
/// them all (its open descriptors come back), keeps serving, and its memory stays put.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_dropped_mid_handshake_leave_nothing_behind() {
    let store = Store::start(&[]);
    still_serves(&store.url(), "warm-up").await;
    let (rss0, fds0) = (store.rss(), store.open_fds());
    let start_ok = encode(&method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: FieldTable::default(),
            mechanism: "PLAIN".into(),
            response: LongString::from("\0guest\0guest"),
            locale: "en_US".into(),
        })),
    ));
    for batch in 0..10u32 {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..100u32 {
            let start_ok = start_ok.clone();
            let port = store.port;
            tasks.spawn(async move {
                let socket = TcpSocket::new_v4().expect("socket");
                if i % 2 == 0 {
                    // A reset instead of a FIN on drop.
                    #[allow(deprecated)]
                    let _ = socket.set_linger(Some(Duration::ZERO));
                }
                let mut s = step(
                    "connect",
                    socket.connect(std::net::SocketAddr::from(([127, 0, 0, 1], port))),
                )
                .await
                .expect("connect");
                match (batch + i) % 5 {
                    0 => {}
                    1 => {
                        let _ = s.write_all(&HEADER[..5]).await;
                    }
                    2 => {
                        let _ = s.write_all(HEADER).await;
                    }
                    3 => {
                        let _ = s.write_all(HEADER).await;
                        let mut b = [0u8; 512];
                        let _ = timeout(STEP, s.read(&mut b)).await;
                        let _ = s.write_all(&start_ok[..start_ok.len() / 2]).await;
                    }
                    _ => {
                        let _ = s.write_all(HEADER).await;
                        let _ = s.write_all(&start_ok).await;
                    }
                }
                drop(s);
            });
        }
        let all = async {
            while let Some(r) = tasks.join_next().await {
                r.expect("connection task");
            }
        };
        timeout(Duration::from_secs(30), all)
            .await
            .expect("a batch of 100 connections within 30 s");
    }
    still_serves(&store.url(), "after-drops").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let fds = loop {
        let fds = store.open_fds();
        if fds <= fds0 + 2 || Instant::now() >= deadline {
            break fds;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let rss = store.rss();
    eprintln!(
        "1000 aborted handshakes: fds {fds0} -> {fds}, VmRSS {} KiB -> {} KiB",
        rss0 / 1024,
        rss / 1024
    );
    assert!(
        fds <= fds0 + 2,
        "broker still holds {fds} descriptors (was {fds0})"
    );
    assert!(
        rss < rss0 + 32 * MIB,
        "VmRSS grew from {rss0} to {rss} bytes"
    );
}

/// What [`slow_consumer`] saw.
#[derive(Debug)]
struct SlowRun {
    sent: usize,
    blocked: bool,
    rss0: u64,
    peak: u64,
}

/// A raw consumer with prefetch 0 (unlimited) and a 4 KiB receive buffer that never reads,
/// while a lapin producer publishes 50 MB in 32 KiB messages to its queue for at most
/// 20 s, on a broker with this memory watermark. Samples the broker's VmRSS meanwhile.
async fn slow_consumer(watermark: u64) -> SlowRun {
    const TOTAL: usize = 50_000_000;
    const SIZE: usize = 32 * 1024;
    let store = Store::start(&["--amqp-memory-high-watermark", &watermark.to_string()]);
    let queue = "slow-consumer";
    still_serves(&store.url(), queue).await;
    let rss0 = store.rss();

    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let sock = step(
        "connect",
        socket.connect(std::net::SocketAddr::from(([127, 0, 0, 1], store.port))),
    )
    .await
    .expect("connect");
    let mut consumer = Raw {
        sock,
        buf: Vec::new(),
    };
    consumer.handshake(0).await;
    consumer
        .send(&method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        ))
        .await;
    let AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)) = consumer.method().await else {
        panic!("expected channel.open-ok");
    };
    consumer
        .send(&method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: 0,
                global: false,
            })),
        ))
        .await;
    let AMQPClass::Basic(basic::AMQPMethod::QosOk(_)) = consumer.method().await else {
        panic!("expected basic.qos-ok");
    };
    consumer
        .send(&method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: queue.into(),
                consumer_tag: "slow".into(),
                no_local: false,
                no_ack: false,
                exclusive: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        ))
        .await;
    let AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)) = consumer.method().await else {
        panic!("expected basic.consume-ok");
    };

    let producer = connect(&store.url()).await;
    let mut events = producer.events_listener();
    let ch = step("channel", producer.create_channel())
        .await
        .expect("channel");
    let publishing = tokio::spawn(async move {
        let body = vec![0x5A; SIZE];
        let mut sent = 0usize;
        let deadline = Instant::now() + Duration::from_secs(20);
        while sent < TOTAL && Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            let r = timeout(
                left,
                ch.basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default(),
                ),
            )
            .await;
            match r {
                Ok(Ok(_)) => sent += SIZE,
                Ok(Err(e)) => panic!("publish failed after {sent} bytes: {e}"),
                Err(_) => break,
            }
        }
        (sent, ch)
    });
    let mut peak = rss0;
    let mut blocked = false;
    let deadline = Instant::now() + Duration::from_secs(25);
    while !publishing.is_finished() && Instant::now() < deadline {
        peak = peak.max(store.rss());
        while let Ok(Some(ev)) = timeout(Duration::from_millis(100), events.next()).await {
            if let Event::ConnectionBlocked(_) = ev {
                blocked = true;
            }
        }
    }
    let (sent, _ch) = step("publisher", publishing).await.expect("publisher task");
    // Let the broker settle what it read, sampling meanwhile.
    for _ in 0..20 {
        peak = peak.max(store.rss());
        if let Ok(Some(Event::ConnectionBlocked(_))) =
            timeout(Duration::from_millis(50), events.next()).await
        {
            blocked = true;
        }
    }
    let run = SlowRun {
        sent,
        blocked,
        rss0,
        peak,
    };
    eprintln!(
        "slow consumer, watermark {} MiB: published {} MB, blocked: {}, VmRSS {} MiB -> peak {} MiB",
        watermark / MIB,
        run.sent / 1_000_000,
        run.blocked,
        run.rss0 / MIB,
        run.peak / MIB
    );
    drop(consumer);
    drop(producer);
    run
}

/// A consumer that never reads its socket must not grow the broker without bound: it
/// holds at most what was published (messages are kept until acked) plus bounded
/// per-connection buffers, with no copies per frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_that_never_reads_does_not_grow_the_broker_without_bound() {
    let run = slow_consumer(session_store_default_watermark()).await;
    let bound = run.rss0 + 2 * run.sent as u64 + 64 * MIB;
    assert!(run.peak < bound, "{run:?}: VmRSS above {bound}");
}

fn session_store_default_watermark() -> u64 {
    session_store::amqp::default_watermark()
}

/// The memory watermark counts every message body the broker holds, not only those ready
/// in queues: messages handed to a consumer that does not read (up to 1,024 whole
/// deliveries queued for its connection) and those unacked under prefetch 0 count too,
/// so a 16 MiB watermark blocks a 50 MB publisher and VmRSS stays near the watermark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermark_counts_messages_held_for_a_slow_consumer() {
    let watermark = 16 * MIB;
    let run = slow_consumer(watermark).await;
    assert!(run.blocked, "{run:?}: publisher never blocked");
    assert!(
        run.peak < run.rss0 + watermark + 16 * MIB,
        "{run:?}: VmRSS well above the watermark"
    );
}

/// Probe: tiny messages published one read at a time (confirm each) and kept in a queue.
/// Body frames are `Bytes` slices of the connection's read buffer, so each retained
/// message may pin the whole buffer allocation it arrived in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_retained_messages_do_not_pin_read_buffers() {
    const COUNT: usize = 3000;
    let store = Store::start(&[]);
    let queue = "tiny";
    still_serves(&store.url(), queue).await;
    let rss0 = store.rss();
    let conn = connect(&store.url()).await;
    let ch = step("channel", conn.create_channel())
        .await
        .expect("channel");
    step(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm");
    let start = Instant::now();
    for i in 0..COUNT {
        let confirm = step(
            "publish",
            ch.basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                format!("{i:016}").as_bytes(),
                BasicProperties::default(),
            ),
        )
        .await
        .expect("publish");
        step("confirm", confirm).await.expect("confirmed");
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "publishing too slow"
        );
    }
    let rss = store.rss();
    let per_message = (rss.saturating_sub(rss0)) / COUNT as u64;
    eprintln!(
        "{COUNT} retained 16-byte messages: VmRSS {} KiB -> {} KiB ({per_message} bytes each)",
        rss0 / 1024,
        rss / 1024
    );
    assert!(
        per_message < 4096,
        "each 16-byte message costs {per_message} bytes of RSS"
    );
    let _ = step("close", conn.close(200, "bye".into())).await;
}
