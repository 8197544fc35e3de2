//! The session store facing bytes that are not well-formed requests: each bad connection
//! gets an `-ERR` reply or is closed, promptly; oversized requests are refused from their
//! header, before their payload is buffered; and through it all, a well-behaved client on
//! its own connection keeps getting correct answers from a process that never panics.

use std::time::Duration;

use e2e::{Proc, bin};
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, cmd};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Upper bound for any single network step.
const STEP: Duration = Duration::from_secs(10);
const MAX_FRAME_BYTES: usize = 1024 * 1024;

async fn step<T>(fut: impl Future<Output = T>) -> T {
    timeout(STEP, fut).await.expect("network step timed out")
}

fn start_store() -> (Proc, u16) {
    let args = [
        // The kernel picks the port; it is read back from the log.
        "--bind".to_string(),
        "127.0.0.1:0".to_string(),
        "--max-frame-bytes".to_string(),
        MAX_FRAME_BYTES.to_string(),
        "--amqp-bind".to_string(),
        "127.0.0.1:0".to_string(),
        "--amqp-no-persist".to_string(),
    ];
    let mut proc = Proc::spawn("session-store", &bin("session-store"), &args, &[]);
    let port = proc
        .logged_addr("session-store listening", Duration::from_secs(20))
        .port();
    (proc, port)
}

async fn healthy_client(port: u16) -> MultiplexedConnection {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("url");
    step(client.get_multiplexed_async_connection())
        .await
        .expect("connect")
}

/// What the server did with a bad connection.
#[derive(Debug, PartialEq)]
enum Answer {
    /// The first reply line, without CRLF.
    Line(String),
    /// Closed (or reset) without a reply.
    Closed,
}

/// Sends `bytes` on a fresh connection and waits for the first reply line or a close.
/// A write may fail when the server closes early, which is one of the accepted outcomes.
async fn send_raw(port: u16, bytes: &[u8]) -> Answer {
    let mut stream = step(TcpStream::connect(("127.0.0.1", port)))
        .await
        .expect("connect");
    let _ = step(stream.write_all(bytes)).await;
    first_line(&mut stream).await
}

async fn first_line(stream: &mut TcpStream) -> Answer {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match step(stream.read(&mut byte)).await {
            Ok(1) => {
                line.push(byte[0]);
                if line.ends_with(b"\r\n") {
                    line.truncate(line.len() - 2);
                    return Answer::Line(String::from_utf8_lossy(&line).into_owned());
                }
            }
            // EOF or reset: closed. A reset may swallow a reply already sent; either way
            // the server did not hang on this input.
            _ if line.is_empty() => return Answer::Closed,
            _ => return Answer::Line(String::from_utf8_lossy(&line).into_owned()),
        }
    }
}

/// Deterministic noise (xorshift), so a failure can be replayed.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed.to_le_bytes()[0]
        })
        .collect()
}

async fn still_healthy(conn: &mut MultiplexedConnection, expected: i64) {
    let n: i64 = step(conn.incr("healthy", 1))
        .await
        .expect("INCR on healthy client");
    assert_eq!(n, expected);
    let v: String = step(conn.get("marker"))
        .await
        .expect("GET on healthy client");
    assert_eq!(v, "intact");
}

async fn connected_clients(conn: &mut MultiplexedConnection) -> Option<u64> {
    let info: String = step(cmd("INFO").arg("clients").query_async(conn))
        .await
        .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|n| n.trim().parse().ok())
}

#[tokio::test]
async fn garbage_gets_an_error_or_a_close_and_the_server_survives() {
    let (mut proc, port) = start_store();
    let mut healthy = healthy_client(port).await;
    let _: () = step(healthy.set("marker", "intact")).await.expect("SET");
    let baseline = connected_clients(&mut healthy).await.expect("INFO clients");

    let protocol_error = |what: &str| Some(format!("-ERR Protocol error: {what}"));
    let cases: Vec<(&str, Vec<u8>, Option<String>)> = vec![
        // 100 KiB of noise: some line in it is an unknown command, or the 64 KiB inline
        // limit trips; either way an -ERR or a close.
        ("random bytes", noise(100 * 1024, 0x5eed), None),
        ("binary line", b"\x00\xff\xfe\xfd\r\n".to_vec(), None),
        (
            "negative multibulk count",
            b"*-5\r\n".to_vec(),
            protocol_error("invalid multibulk length"),
        ),
        (
            "2^31 arguments announced",
            b"*2147483648\r\n".to_vec(),
            protocol_error("invalid multibulk length"),
        ),
        (
            "negative bulk length",
            b"*1\r\n$-2\r\n".to_vec(),
            protocol_error("invalid bulk length"),
        ),
        (
            "10 GB bulk announced",
            b"*2\r\n$3\r\nGET\r\n$10000000000\r\n".to_vec(),
            protocol_error("invalid bulk length"),
        ),
        (
            "not a bulk inside a multibulk",
            b"*1\r\n:1\r\n".to_vec(),
            protocol_error("expected '$', got ':'"),
        ),
        // Not starting with '*', these are inline commands named `$-2` and
        // `$10000000000`: unknown commands, as in Redis.
        (
            "bare bulk header",
            b"$-2\r\n".to_vec(),
            Some("-ERR unknown command '$-2', with args beginning with: ".into()),
        ),
        (
            "bare 10 GB bulk header",
            b"$10000000000\r\n".to_vec(),
            Some("-ERR unknown command '$10000000000', with args beginning with: ".into()),
        ),
        // Redis closes on `Host:` (cross-protocol defence); replies queued before that
        // may or may not get out first.
        (
            "HTTP request",
            b"GET / HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n".to_vec(),
            None,
        ),
    ];

    let mut expected_count = 0;
    for (name, bytes, exact) in cases {
        let answer = send_raw(port, &bytes).await;
        match (&answer, exact) {
            (answer, Some(line)) => assert_eq!(answer, &Answer::Line(line), "{name}"),
            (Answer::Line(line), None) => assert!(line.starts_with("-ERR"), "{name}: {line:?}"),
            (Answer::Closed, None) => {}
        }
        expected_count += 1;
        still_healthy(&mut healthy, expected_count).await;
    }

    // Empty lines are ignored, as in Redis; the connection stays usable.
    assert_eq!(
        send_raw(port, b"\r\n\r\n\n\nPING\r\n").await,
        Answer::Line("+PONG".into())
    );

    // A request cut off by a close: the server drops its half and the connection.
    let mut cut = step(TcpStream::connect(("127.0.0.1", port)))
        .await
        .expect("connect");
    step(cut.write_all(b"*2\r\n$3\r\nGET\r\n"))
        .await
        .expect("write");
    e2e::wait_for_async(
        "the half-sent connection to be counted",
        Duration::from_secs(5),
        || {
            let mut probe = healthy.clone();
            async move { (connected_clients(&mut probe).await? > baseline).then_some(()) }
        },
    )
    .await;
    drop(cut);
    e2e::wait_for_async(
        "the half-sent connection to be dropped",
        Duration::from_secs(5),
        || {
            let mut probe = healthy.clone();
            async move { (connected_clients(&mut probe).await? == baseline).then_some(()) }
        },
    )
    .await;

    still_healthy(&mut healthy, expected_count + 1).await;
    assert!(proc.is_running(), "session-store exited on bad input");
}

#[tokio::test]
async fn inline_commands_work() {
    let (_proc, port) = start_store();
    let mut stream = step(TcpStream::connect(("127.0.0.1", port)))
        .await
        .expect("connect");
    step(stream.write_all(b"PING\r\nSET greeting hello\nGET greeting\r\n"))
        .await
        .expect("write");
    let mut reply = vec![0u8; b"+PONG\r\n+OK\r\n$5\r\nhello\r\n".len()];
    step(stream.read_exact(&mut reply)).await.expect("read");
    assert_eq!(reply, b"+PONG\r\n+OK\r\n$5\r\nhello\r\n");

    // `printf 'PING\r\n' | nc`: the client half-closes right after its request and
    // still gets the answer.
    let mut stream = step(TcpStream::connect(("127.0.0.1", port)))
        .await
        .expect("connect");
    step(stream.write_all(b"PING\r\n")).await.expect("write");
    step(stream.shutdown()).await.expect("half-close");
    let mut reply = Vec::new();
    step(stream.read_to_end(&mut reply)).await.expect("read");
    assert_eq!(reply, b"+PONG\r\n");
}

/// Resident memory of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

#[tokio::test]
async fn oversized_values_are_refused_before_they_are_buffered() {
    let (mut proc, port) = start_store();
    let mut healthy = healthy_client(port).await;

    // Just under the cap still works.
    let fits = vec![b'x'; MAX_FRAME_BYTES - 1024];
    let _: () = step(healthy.set("fits", fits.as_slice()))
        .await
        .expect("SET just under the cap");
    let got: Vec<u8> = step(healthy.get("fits")).await.expect("GET");
    assert_eq!(got.len(), fits.len());

    let before = rss_kib(proc.pid());
    for announced in [
        MAX_FRAME_BYTES + 1,
        512 * 1024 * 1024,
        4 * 1024 * 1024 * 1024,
    ] {
        // Only the header is sent: the refusal must come from the announced length,
        // without waiting for (or making room for) the payload.
        let header = format!("*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n${announced}\r\n");
        let mut stream = step(TcpStream::connect(("127.0.0.1", port)))
            .await
            .expect("connect");
        step(stream.write_all(header.as_bytes()))
            .await
            .expect("write header");
        assert_eq!(
            first_line(&mut stream).await,
            Answer::Line("-ERR Protocol error: invalid bulk length".into()),
            "announced {announced} bytes"
        );
        // Then the server closes the connection, as Redis does on protocol errors.
        let mut rest = Vec::new();
        let read = step(stream.read_to_end(&mut rest)).await;
        assert!(read.is_err() || rest.is_empty(), "connection closed");
    }

    // A real oversized value sent in full by a client: refused, nothing stored.
    let mut stream = step(TcpStream::connect(("127.0.0.1", port)))
        .await
        .expect("connect");
    let value = vec![b'y'; 2 * MAX_FRAME_BYTES];
    let mut request = format!("*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n${}\r\n", value.len()).into_bytes();
    request.extend_from_slice(&value);
    request.extend_from_slice(b"\r\n");
    let _ = step(stream.write_all(&request)).await;
    let answer = first_line(&mut stream).await;
    assert!(
        matches!(&answer, Answer::Line(l) if l == "-ERR Protocol error: invalid bulk length")
            || answer == Answer::Closed,
        "{answer:?}"
    );

    let after = rss_kib(proc.pid());
    assert!(
        after < before + 16 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    let exists: i64 = step(healthy.exists("big")).await.expect("EXISTS");
    assert_eq!(exists, 0);
    let got: Vec<u8> = step(healthy.get("fits")).await.expect("GET after refusals");
    assert_eq!(got.len(), fits.len());
    assert!(proc.is_running(), "session-store exited");
}
