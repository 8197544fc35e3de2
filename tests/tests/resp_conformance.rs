//! The session store against a real `redis-server`: the same client code, the same
//! commands, the same answers. Each scenario runs on both servers; exact reply lines are
//! compared byte for byte over raw sockets, everything else through the `redis` crate.
//!
//! Without redis-server installed (and outside CI) the reference half is skipped and the
//! store is still checked against the expected values written here.
//!
//! Transactions (MULTI/EXEC/DISCARD, WATCH/UNWATCH) are checked reply by reply over raw
//! sockets, and as client code uses them: pipelined atomic batches and a WATCH-based
//! compare-and-set loop under contention.

use std::time::Duration;

use e2e::{Proc, bin, engines_required, start_redis_server, which};
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, RedisResult, cmd};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Upper bound for any single network step, so a broken server fails the test instead of
/// hanging it.
const STEP: Duration = Duration::from_secs(10);
const PASSWORD: &str = "s3cret-pass";

struct Server {
    name: &'static str,
    port: u16,
    _proc: Proc,
}

fn start_store(password: Option<&str>) -> Server {
    let mut args = vec![
        // The kernel picks the port; it is read back from the log.
        "--bind".to_string(),
        "127.0.0.1:0".to_string(),
        "--amqp-bind".to_string(),
        "127.0.0.1:0".to_string(),
        "--amqp-no-persist".to_string(),
    ];
    if let Some(password) = password {
        args.extend(["--requirepass".to_string(), password.to_string()]);
    }
    let mut proc = Proc::spawn("session-store", &bin("session-store"), &args, &[]);
    let port = proc
        .logged_addr("session-store listening", Duration::from_secs(20))
        .port();
    Server {
        name: "session-store",
        port,
        _proc: proc,
    }
}

/// The reference server, with `requirepass` set through CONFIG SET when asked.
async fn start_redis(password: Option<&str>) -> Option<Server> {
    let (proc, port) = start_redis_server()?;
    if let Some(password) = password {
        let mut conn = connect(port, None).await.expect("connect to redis-server");
        let _: () = step(
            cmd("CONFIG")
                .arg("SET")
                .arg("requirepass")
                .arg(password)
                .query_async(&mut conn),
        )
        .await
        .expect("CONFIG SET requirepass");
    }
    Some(Server {
        name: "redis-server",
        port,
        _proc: proc,
    })
}

async fn step<T>(fut: impl Future<Output = T>) -> T {
    timeout(STEP, fut).await.expect("network step timed out")
}

async fn connect(port: u16, password: Option<&str>) -> RedisResult<MultiplexedConnection> {
    let auth = password.map(|p| format!(":{p}@")).unwrap_or_default();
    let client = redis::Client::open(format!("redis://{auth}127.0.0.1:{port}/"))?;
    step(client.get_multiplexed_async_connection()).await
}

/// A raw RESP connection, for byte-exact reply lines.
struct Raw {
    stream: BufReader<TcpStream>,
}

impl Raw {
    async fn connect(port: u16) -> Raw {
        let stream = step(TcpStream::connect(("127.0.0.1", port)))
            .await
            .expect("raw connect");
        Raw {
            stream: BufReader::new(stream),
        }
    }

    /// Sends `args` as a multibulk request and returns the first reply line, without CRLF.
    async fn line(&mut self, args: &[&str]) -> String {
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        step(self.stream.get_mut().write_all(request.as_bytes()))
            .await
            .expect("raw write");
        let mut reply = String::new();
        step(self.stream.read_line(&mut reply))
            .await
            .expect("raw read");
        reply.trim_end_matches("\r\n").to_string()
    }

    async fn lines(&mut self, requests: &[&[&str]]) -> Vec<String> {
        let mut replies = Vec::new();
        for args in requests {
            replies.push(self.line(args).await);
        }
        replies
    }

    /// Sends `args` and returns the whole reply, arrays included, CRLFs kept.
    async fn request(&mut self, args: &[&str]) -> String {
        self.pipeline(&[args]).await.remove(0)
    }

    /// Sends all `requests` in one write, as a pipelining client does, and returns each
    /// whole reply.
    async fn pipeline(&mut self, requests: &[&[&str]]) -> Vec<String> {
        let mut batch = String::new();
        for args in requests {
            batch.push_str(&format!("*{}\r\n", args.len()));
            for arg in *args {
                batch.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
            }
        }
        step(self.stream.get_mut().write_all(batch.as_bytes()))
            .await
            .expect("raw write");
        let mut replies = Vec::new();
        for _ in requests {
            replies.push(self.reply().await);
        }
        replies
    }

    /// One complete reply: a line, plus the payload of bulk strings and the elements of
    /// arrays, however nested.
    async fn reply(&mut self) -> String {
        let mut reply = String::new();
        let mut pending = 1;
        while pending > 0 {
            pending -= 1;
            let mut line = String::new();
            step(self.stream.read_line(&mut line))
                .await
                .expect("raw read");
            assert!(
                line.ends_with("\r\n"),
                "reply cut short: {reply:?} {line:?}"
            );
            let count = line
                .get(1..line.len() - 2)
                .and_then(|n| n.parse::<usize>().ok());
            match (line.as_bytes().first(), count) {
                (Some(b'*'), Some(n)) => pending += n,
                (Some(b'$'), Some(n)) => {
                    let mut data = vec![0; n + 2];
                    step(self.stream.read_exact(&mut data))
                        .await
                        .expect("raw read");
                    line.push_str(&String::from_utf8_lossy(&data));
                }
                _ => {}
            }
            reply.push_str(&line);
        }
        reply
    }
}

/// Inline commands (typed into `nc` or telnet) with Redis' quoting, and what each
/// server then holds; an unbalanced quote is a protocol error that closes the connection.
async fn inline_quoting(server: &Server) -> Vec<String> {
    let name = server.name;
    let mut raw = Raw::connect(server.port).await;
    let mut seen = Vec::new();
    for line in [
        "set k \"a b\"\r\n",
        "get k\r\n",
        "set k 'it\\'s'\r\n",
        "get k\r\n",
        "set k \"a\\x41\\n\"\r\n",
        "get k\r\n",
        "set k \"\"\r\n",
        "get k\r\n",
    ] {
        step(raw.stream.get_mut().write_all(line.as_bytes()))
            .await
            .expect("raw write");
        seen.push(raw.reply().await);
    }
    step(raw.stream.get_mut().write_all(b"set k \"abc\r\n"))
        .await
        .expect("raw write");
    seen.push(raw.reply().await);
    let mut rest = Vec::new();
    let read = step(raw.stream.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "{name}: connection still open after unbalanced quotes: {rest:?}"
    );
    seen
}

#[tokio::test]
async fn inline_commands_quote_like_redis() {
    let store = start_store(None);
    let ours = inline_quoting(&store).await;
    assert_eq!(
        ours,
        [
            "+OK\r\n",
            "$3\r\na b\r\n",
            "+OK\r\n",
            "$4\r\nit's\r\n",
            "+OK\r\n",
            "$3\r\naA\n\r\n",
            "+OK\r\n",
            "$0\r\n\r\n",
            "-ERR Protocol error: unbalanced quotes in request\r\n",
        ]
    );
    if let Some(redis) = start_redis(None).await {
        assert_eq!(inline_quoting(&redis).await, ours);
    }
}

/// The common scenario; the expected values are Redis' own, so passing on both servers
/// means answering alike.
async fn basics(server: &Server) {
    let name = server.name;
    let c = &mut connect(server.port, None).await.expect("connect");
    let _: () = step(cmd("FLUSHDB").query_async(c)).await.expect("FLUSHDB");

    let pong: String = step(cmd("PING").query_async(c)).await.expect("PING");
    assert_eq!(pong, "PONG", "{name}");
    let echo: Vec<u8> = step(cmd("ECHO").arg(b"a\r\nb\0".as_slice()).query_async(c))
        .await
        .expect("ECHO");
    assert_eq!(echo, b"a\r\nb\0", "{name}");

    // SET / GET, binary-safe.
    let key: &[u8] = b"bin\r\nkey\0\xff";
    let value: &[u8] = b"\x00\x01\r\n\xfe";
    let _: () = step(c.set(key, value)).await.expect("SET");
    let got: Vec<u8> = step(c.get(key)).await.expect("GET");
    assert_eq!(got, value, "{name}");
    let missing: Option<String> = step(c.get("missing")).await.expect("GET missing");
    assert_eq!(missing, None, "{name}");

    // SET EX, TTL, PTTL, and the -1 / -2 answers.
    let _: () = step(
        cmd("SET")
            .arg("ttl")
            .arg("v")
            .arg("EX")
            .arg(100)
            .query_async(c),
    )
    .await
    .expect("SET EX");
    let ttl: i64 = step(c.ttl("ttl")).await.expect("TTL");
    assert!((1..=100).contains(&ttl), "{name}: TTL {ttl}");
    let pttl: i64 = step(c.pttl("ttl")).await.expect("PTTL");
    assert!((1..=100_000).contains(&pttl), "{name}: PTTL {pttl}");
    let ttl: i64 = step(c.ttl(key)).await.expect("TTL persistent");
    assert_eq!(ttl, -1, "{name}");
    let ttl: i64 = step(c.ttl("missing")).await.expect("TTL missing");
    assert_eq!(ttl, -2, "{name}");
    let pttl: i64 = step(c.pttl("missing")).await.expect("PTTL missing");
    assert_eq!(pttl, -2, "{name}");
    let set: bool = step(c.pexpire("ttl", 50_000)).await.expect("PEXPIRE");
    assert!(set, "{name}");
    let pttl: i64 = step(c.pttl("ttl")).await.expect("PTTL after PEXPIRE");
    assert!((1..=50_000).contains(&pttl), "{name}: PTTL {pttl}");

    // NX / XX / GET.
    let set = |args: &[&str]| {
        let mut command = cmd("SET");
        for a in args {
            command.arg(*a);
        }
        command
    };
    let r: Option<String> = step(set(&["nx", "1", "NX"]).query_async(c))
        .await
        .expect("NX");
    assert_eq!(r.as_deref(), Some("OK"), "{name}");
    let r: Option<String> = step(set(&["nx", "2", "NX"]).query_async(c))
        .await
        .expect("NX");
    assert_eq!(r, None, "{name}");
    let r: Option<String> = step(set(&["xx-missing", "1", "XX"]).query_async(c))
        .await
        .expect("XX");
    assert_eq!(r, None, "{name}");
    let r: Option<String> = step(set(&["nx", "3", "XX"]).query_async(c))
        .await
        .expect("XX");
    assert_eq!(r.as_deref(), Some("OK"), "{name}");
    let r: Option<String> = step(set(&["nx", "4", "GET"]).query_async(c))
        .await
        .expect("GET");
    assert_eq!(r.as_deref(), Some("3"), "{name}");
    let r: Option<String> = step(set(&["fresh", "1", "GET"]).query_async(c))
        .await
        .expect("GET");
    assert_eq!(r, None, "{name}");
    let exists: i64 = step(c.exists("xx-missing")).await.expect("EXISTS");
    assert_eq!(exists, 0, "{name}");

    // DEL and EXISTS count.
    let n: i64 = step(
        cmd("EXISTS")
            .arg("nx")
            .arg("nx")
            .arg("fresh")
            .arg("no")
            .query_async(c),
    )
    .await
    .expect("EXISTS");
    assert_eq!(n, 3, "{name}");
    let n: i64 = step(c.del(&["nx", "fresh", "no", "nx"]))
        .await
        .expect("DEL");
    assert_eq!(n, 2, "{name}");

    // INCR and its errors.
    let n: i64 = step(c.incr("counter", 1)).await.expect("INCR");
    assert_eq!(n, 1, "{name}");
    let n: i64 = step(cmd("INCR").arg("counter").query_async(c))
        .await
        .expect("INCR");
    assert_eq!(n, 2, "{name}");
    let n: i64 = step(c.decr("counter", 5)).await.expect("DECRBY");
    assert_eq!(n, -3, "{name}");
    let _: () = step(c.set("text", "abc")).await.expect("SET");
    let err = step(cmd("INCR").arg("text").query_async::<i64>(c))
        .await
        .expect_err("INCR on text");
    assert_eq!(err.code(), Some("ERR"), "{name}");
    assert_eq!(
        err.detail(),
        Some("value is not an integer or out of range"),
        "{name}"
    );

    // Lazy expiry: the key is gone for readers once due.
    let _: () = step(c.set("short", "v")).await.expect("SET");
    let set: bool = step(c.pexpire("short", 100)).await.expect("PEXPIRE");
    assert!(set, "{name}");
    let mut probe = c.clone();
    e2e::wait_for_async(
        &format!("{name}: key expired"),
        Duration::from_secs(5),
        || {
            let mut probe = probe.clone();
            async move {
                let v: Option<String> = step(probe.get("short")).await.ok()?;
                let n: i64 = step(probe.exists("short")).await.ok()?;
                (v.is_none() && n == 0).then_some(())
            }
        },
    )
    .await;

    // Active expiry: keys nobody reads still leave DBSIZE.
    let _: () = step(cmd("FLUSHDB").query_async(c)).await.expect("FLUSHDB");
    let _: () = step(c.set("keeper", "v")).await.expect("SET");
    for i in 0..20 {
        let _: () = step(
            cmd("SET")
                .arg(format!("volatile:{i}"))
                .arg("v")
                .arg("PX")
                .arg(100)
                .query_async(c),
        )
        .await
        .expect("SET PX");
    }
    let size: i64 = step(cmd("DBSIZE").query_async(c)).await.expect("DBSIZE");
    assert_eq!(size, 21, "{name}");
    e2e::wait_for_async(
        &format!("{name}: active expiry"),
        Duration::from_secs(5),
        || {
            let mut probe = probe.clone();
            async move {
                let size: i64 = step(cmd("DBSIZE").query_async(&mut probe)).await.ok()?;
                (size == 1).then_some(())
            }
        },
    )
    .await;

    let _: () = step(cmd("FLUSHDB").query_async(&mut probe))
        .await
        .expect("FLUSHDB");
    let size: i64 = step(cmd("DBSIZE").query_async(c)).await.expect("DBSIZE");
    assert_eq!(size, 0, "{name}");
}

#[tokio::test]
async fn commands_answer_like_redis() {
    let store = start_store(None);
    match start_redis(None).await {
        Some(redis) => {
            tokio::join!(basics(&store), basics(&redis));
        }
        None => basics(&store).await,
    }
}

/// `(major, minor)` from INFO's `redis_version`; (0, 0) when absent or garbled.
fn redis_version(info: &str) -> (u32, u32) {
    let version = info
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .unwrap_or_default();
    let mut parts = version.trim().split('.').map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// `SET … IFEQ`, the one-round-trip compare-and-set the session layer uses when the
/// server has it. The store has it, as Redis 8.4 documents it: written only over an equal
/// value, nil and nothing changed otherwise, a missing key not created. Redis before 8.4
/// does not know the option and must refuse the command with an `ERR` and change nothing:
/// that refusal is what sends the layer back to WATCH … EXEC.
async fn set_ifeq(server: &Server) {
    let name = server.name;
    let c = &mut connect(server.port, None).await.expect("connect");
    let _: () = step(cmd("FLUSHDB").query_async(c)).await.expect("FLUSHDB");
    let info: String = step(cmd("INFO").arg("server").query_async(c))
        .await
        .expect("INFO");
    // The store reports the Redis version whose replies it copies (7), not its commands.
    let knows_ifeq = name == "session-store" || redis_version(&info) >= (8, 4);
    let _: () = step(c.set("cas", "v1")).await.expect("SET");
    let ifeq = |key: &str, value: &str, compared: &str| {
        let mut command = cmd("SET");
        command.arg(key).arg(value).arg("IFEQ").arg(compared);
        command
    };

    if knows_ifeq {
        let r: Option<String> = step(ifeq("cas", "v2", "v1").arg("EX").arg(100).query_async(c))
            .await
            .expect("SET IFEQ, equal");
        assert_eq!(r.as_deref(), Some("OK"), "{name}");
        let got: String = step(c.get("cas")).await.expect("GET");
        assert_eq!(got, "v2", "{name}");
        let ttl: i64 = step(c.ttl("cas")).await.expect("TTL");
        assert!((1..=100).contains(&ttl), "{name}: TTL {ttl}");

        let r: Option<String> = step(ifeq("cas", "v3", "v1").query_async(c))
            .await
            .expect("SET IFEQ, different");
        assert_eq!(r, None, "{name}");
        let got: String = step(c.get("cas")).await.expect("GET");
        assert_eq!(got, "v2", "{name}: a refused IFEQ changed the value");
        let ttl: i64 = step(c.ttl("cas")).await.expect("TTL");
        assert!(
            (1..=100).contains(&ttl),
            "{name}: a refused IFEQ changed the TTL"
        );

        let r: Option<String> = step(ifeq("missing", "v", "v").query_async(c))
            .await
            .expect("SET IFEQ, missing key");
        assert_eq!(r, None, "{name}");
    } else {
        for (key, compared) in [("cas", "v1"), ("cas", "other"), ("missing", "v")] {
            let err = step(
                ifeq(key, "v2", compared)
                    .arg("EX")
                    .arg(100)
                    .query_async::<Option<String>>(c),
            )
            .await
            .expect_err("Redis before 8.4 refuses IFEQ");
            assert_eq!(err.code(), Some("ERR"), "{name}: {err}");
        }
        let got: String = step(c.get("cas")).await.expect("GET");
        assert_eq!(got, "v1", "{name}: a refused IFEQ changed the value");
        let ttl: i64 = step(c.ttl("cas")).await.expect("TTL");
        assert_eq!(ttl, -1, "{name}: a refused IFEQ set a TTL");
    }
    let exists: i64 = step(c.exists("missing")).await.expect("EXISTS");
    assert_eq!(exists, 0, "{name}: IFEQ created a missing key");
}

#[tokio::test]
async fn set_ifeq_is_a_compare_and_set_or_refused() {
    let store = start_store(None);
    match start_redis(None).await {
        Some(redis) => {
            tokio::join!(set_ifeq(&store), set_ifeq(&redis));
        }
        None => set_ifeq(&store).await,
    }
}

/// Requests whose one-line replies (mostly errors) must match Redis 7 byte for byte.
/// Left out on purpose: `HELLO 3` (Redis speaks RESP3, the store answers NOPROTO) and
/// `SELECT 1` (Redis has 16 databases, the store one).
const ONE_LINE_REPLIES: &[&[&str]] = &[
    &["GET"],
    &["GET", "a", "b"],
    &["SET", "k"],
    &["FOO", "a", "b"],
    &["foo"],
    &["SET", "k", "v", "EX", "0"],
    &["SET", "k", "v", "EX", "abc"],
    &["SET", "k", "v", "PX", "9223372036854775807"],
    &["SET", "k", "v", "NX", "XX"],
    &["SET", "k", "v", "PX", "10", "EX", "10"],
    &["SET", "k", "v", "KEEPTTL", "EX", "10"],
    &["SET", "k", "v", "EX"],
    &["SET", "k", "v", "EX", "10", "EX", "20"],
    &["TTL", "k"],
    &["SET", "k", "v", "PX", "10", "PX", "x"],
    &["SET", "k", "v", "EX", "10", "PXAT", "10"],
    &["SELECT", "99999999999"],
    &["COMMAND", "NOPE"],
    &["CLIENT", "GETNAME", "x"],
    &["SET", "s", "abc"],
    &["INCR", "s"],
    &["INCRBY", "n", "x"],
    &["INCRBY", "n", "+1"],
    &["DECRBY", "n", "-9223372036854775808"],
    &["SET", "n", "9223372036854775807"],
    &["INCR", "n"],
    &["SET", "k", "v"],
    &["EXPIRE", "k", "10", "NX", "XX"],
    &["EXPIRE", "k", "10", "GT", "LT"],
    &["EXPIRE", "k", "10", "FOO"],
    &["EXPIRE", "k", "x"],
    &["EXPIRE", "k", "99999999999999999"],
    &["EXPIRE", "k", "100", "GT"],
    &["EXPIRE", "k", "100", "LT"],
    &["EXPIRE", "k", "200", "GT"],
    &["EXPIRE", "k", "300", "NX"],
    &["PEXPIRE", "missing", "100"],
    &["SELECT", "99"],
    &["SELECT", "x"],
    &["SELECT", "0"],
    &["HELLO", "x"],
    &["HELLO", "2", "FOO"],
    &["HELLO", "2", "AUTH", "default"],
    &["CLIENT", "SETNAME", "a b"],
    &["CLIENT", "SETNAME"],
    &["CLIENT", "NOPE"],
    &["CLIENT", "SETNAME", "web-1"],
    &["AUTH", "x"],
    &["AUTH", "a", "b", "c"],
    &["AUTH", "nobody", "x"],
    &["ECHO"],
    &["PING", "a", "b"],
    &["FLUSHDB", "NOW"],
    &["DEL"],
    &["EXISTS"],
    &["TTL"],
    &["TTL", "k"],
    &["DBSIZE"],
    &["FLUSHDB"],
];

#[tokio::test]
async fn reply_lines_match_redis() {
    let store = start_store(None);
    let ours = Raw::connect(store.port).await.lines(ONE_LINE_REPLIES).await;
    assert_eq!(ours[0], "-ERR wrong number of arguments for 'get' command");
    assert_eq!(
        ours[3],
        "-ERR unknown command 'FOO', with args beginning with: 'a' 'b' "
    );
    assert_eq!(ours[6], "-ERR value is not an integer or out of range");
    let mut raw = Raw::connect(store.port).await;
    assert_eq!(
        raw.line(&["HELLO", "3"]).await,
        "-NOPROTO unsupported protocol version"
    );
    assert_eq!(
        raw.line(&["SELECT", "1"]).await,
        "-ERR DB index is out of range"
    );

    if let Some(redis) = start_redis(None).await {
        let theirs = Raw::connect(redis.port).await.lines(ONE_LINE_REPLIES).await;
        for ((request, ours), theirs) in ONE_LINE_REPLIES.iter().zip(&ours).zip(&theirs) {
            assert_eq!(ours, theirs, "reply to {request:?}");
        }
    }
}

/// Requests on a connection that has not authenticated yet, then AUTH.
const AUTH_FLOW: &[&[&str]] = &[
    &["GET", "k"],
    &["PING"],
    &["FOO"],
    &["GET"],
    &["HELLO", "2"],
    &["AUTH", "wrong"],
    &["AUTH", "nobody", PASSWORD],
    &["AUTH", "default", "wrong"],
    &["HELLO", "2", "AUTH", "default", "wrong"],
    &["GET", "k"],
    &["MULTI"],
    &["EXEC"],
    &["AUTH", PASSWORD],
    &["PING"],
    &["AUTH", "default", PASSWORD],
    &["SET", "k", "v"],
];

async fn auth_client_view(server: &Server) -> Vec<String> {
    let name = server.name;
    let mut seen = Vec::new();
    // The redis crate authenticates from the URL; a wrong password fails the connect.
    let err = connect(server.port, Some("wrong"))
        .await
        .expect_err("wrong password must fail");
    seen.push(format!("{:?} {:?}", err.code(), err.detail()));
    // Without a password it connects (its CLIENT SETINFO errors are ignored), and then
    // commands get NOAUTH.
    let mut anonymous = connect(server.port, None).await.expect("connect");
    let err = step(anonymous.get::<_, Option<String>>("k"))
        .await
        .expect_err("NOAUTH");
    seen.push(format!("{:?} {:?}", err.code(), err.detail()));
    let mut c = connect(server.port, Some(PASSWORD)).await.expect("auth");
    let _: () = step(c.set("k", "v")).await.expect("SET");
    let v: String = step(c.get("k")).await.expect("GET");
    assert_eq!(v, "v", "{name}");
    seen
}

#[tokio::test]
async fn authentication_matches_redis() {
    let store = start_store(Some(PASSWORD));
    let ours = Raw::connect(store.port).await.lines(AUTH_FLOW).await;
    assert_eq!(ours[0], "-NOAUTH Authentication required.");
    assert_eq!(
        ours[5],
        "-WRONGPASS invalid username-password pair or user is disabled."
    );
    assert_eq!(
        ours[11],
        "-EXECABORT Transaction discarded because of: NOAUTH Authentication required."
    );
    assert_eq!(&ours[12..], ["+OK", "+PONG", "+OK", "+OK"]);
    let our_client_view = auth_client_view(&store).await;
    assert!(our_client_view[1].contains("NOAUTH"), "{our_client_view:?}");

    if let Some(redis) = start_redis(Some(PASSWORD)).await {
        let theirs = Raw::connect(redis.port).await.lines(AUTH_FLOW).await;
        for ((request, ours), theirs) in AUTH_FLOW.iter().zip(&ours).zip(&theirs) {
            assert_eq!(ours, theirs, "reply to {request:?}");
        }
        assert_eq!(our_client_view, auth_client_view(&redis).await);
    }
}

async fn redis_cli(port: u16, args: &[&str], stdin: Option<Vec<u8>>) -> String {
    let cli = which("redis-cli").expect("redis-cli on PATH");
    let mut command = tokio::process::Command::new(cli);
    command
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("start redis-cli");
    let mut input = child.stdin.take().expect("stdin");
    step(input.write_all(&stdin.unwrap_or_default()))
        .await
        .expect("feed redis-cli");
    drop(input);
    let out = step(child.wait_with_output()).await.expect("redis-cli ran");
    assert!(out.status.success(), "redis-cli {args:?} failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What redis-cli prints for a small session, including a `--pipe` mass insert.
async fn redis_cli_session(port: u16) -> Vec<String> {
    let mut mass = Vec::new();
    for i in 0..300 {
        let (k, v) = (format!("mass:{i}"), format!("value-{i}"));
        mass.extend_from_slice(
            format!(
                "*3\r\n$3\r\nSET\r\n${}\r\n{k}\r\n${}\r\n{v}\r\n",
                k.len(),
                v.len()
            )
            .as_bytes(),
        );
    }
    let piped = redis_cli(port, &["--pipe"], Some(mass)).await;
    assert!(piped.contains("errors: 0, replies: 300"), "{piped}");
    vec![
        redis_cli(port, &["SET", "k", "v"], None).await,
        redis_cli(port, &["GET", "k"], None).await,
        redis_cli(port, &["GET", "mass:299"], None).await,
        redis_cli(port, &["DBSIZE"], None).await,
        redis_cli(port, &["GET", "nothing"], None).await,
    ]
}

#[tokio::test]
async fn redis_cli_works_unchanged() {
    if which("redis-cli").is_none() {
        assert!(
            !engines_required(),
            "redis-cli is required in CI (it ships with redis-server)"
        );
        eprintln!("redis-cli not installed: test skipped");
        return;
    }
    let store = start_store(None);
    let ours = redis_cli_session(store.port).await;
    assert_eq!(ours, ["OK\n", "v\n", "value-299\n", "301\n", "\n"]);
    if let Some(redis) = start_redis(None).await {
        assert_eq!(ours, redis_cli_session(redis.port).await);
    }
}

/// The two connections of [`TRANSACTIONS`].
const A: usize = 0;
const B: usize = 1;
const EXECABORT: &str = "-EXECABORT Transaction discarded because of previous errors.\r\n";

/// Transactions seen from two connections: who sends what, and Redis 7's whole reply.
const TRANSACTIONS: &[(usize, &[&str], &str)] = &[
    (A, &["FLUSHDB"], "+OK\r\n"),
    (A, &["EXEC"], "-ERR EXEC without MULTI\r\n"),
    (A, &["DISCARD"], "-ERR DISCARD without MULTI\r\n"),
    (A, &["UNWATCH"], "+OK\r\n"),
    (
        A,
        &["WATCH"],
        "-ERR wrong number of arguments for 'watch' command\r\n",
    ),
    // Commands are queued, run together at EXEC; a failure at run time is one element
    // of the array and the others still run.
    (A, &["MULTI"], "+OK\r\n"),
    (A, &["MULTI"], "-ERR MULTI calls can not be nested\r\n"),
    (
        A,
        &["WATCH", "k"],
        "-ERR WATCH inside MULTI is not allowed\r\n",
    ),
    (A, &["SET", "k", "v"], "+QUEUED\r\n"),
    (A, &["INCR", "k"], "+QUEUED\r\n"),
    (A, &["GET", "k"], "+QUEUED\r\n"),
    (B, &["EXISTS", "k"], ":0\r\n"),
    (
        A,
        &["EXEC"],
        "*3\r\n+OK\r\n-ERR value is not an integer or out of range\r\n$1\r\nv\r\n",
    ),
    (A, &["MULTI"], "+OK\r\n"),
    (A, &["EXEC"], "*0\r\n"),
    // A command refused while queuing dooms the whole transaction.
    (A, &["MULTI"], "+OK\r\n"),
    (A, &["SET", "k", "lost"], "+QUEUED\r\n"),
    (
        A,
        &["SET", "k"],
        "-ERR wrong number of arguments for 'set' command\r\n",
    ),
    (A, &["EXEC"], EXECABORT),
    (A, &["MULTI"], "+OK\r\n"),
    (
        A,
        &["NOPE", "x"],
        "-ERR unknown command 'NOPE', with args beginning with: 'x' \r\n",
    ),
    (A, &["EXEC"], EXECABORT),
    // So does an unknown subcommand, or one with the wrong number of arguments.
    (A, &["MULTI"], "+OK\r\n"),
    (
        A,
        &["CLIENT", "FOO"],
        "-ERR unknown subcommand 'FOO'. Try CLIENT HELP.\r\n",
    ),
    (A, &["EXEC"], EXECABORT),
    (A, &["MULTI"], "+OK\r\n"),
    (
        A,
        &["CLIENT", "SETNAME"],
        "-ERR wrong number of arguments for 'client|setname' command\r\n",
    ),
    (A, &["EXEC"], EXECABORT),
    (A, &["MULTI"], "+OK\r\n"),
    (
        A,
        &["EXEC", "x"],
        "-EXECABORT Transaction discarded because of: wrong number of arguments for 'exec' command\r\n",
    ),
    (A, &["EXEC"], "-ERR EXEC without MULTI\r\n"),
    (A, &["GET", "k"], "$1\r\nv\r\n"),
    // DISCARD drops the queue.
    (A, &["MULTI"], "+OK\r\n"),
    (A, &["SET", "k", "discarded"], "+QUEUED\r\n"),
    (A, &["DISCARD"], "+OK\r\n"),
    (A, &["GET", "k"], "$1\r\nv\r\n"),
    // A watched key changed by another connection: EXEC runs nothing.
    (A, &["WATCH", "k"], "+OK\r\n"),
    (A, &["GET", "k"], "$1\r\nv\r\n"),
    (B, &["SET", "k", "theirs"], "+OK\r\n"),
    (A, &["MULTI"], "+OK\r\n"),
    (A, &["SET", "k", "mine"], "+QUEUED\r\n"),
    (A, &["EXEC"], "*-1\r\n"),
    (A, &["GET", "k"], "$6\r\ntheirs\r\n"),
    // Reads and writes that change nothing are no conflict.
    (A, &["WATCH", "k", "missing"], "+OK\r\n"),
    (B, &["GET", "k"], "$6\r\ntheirs\r\n"),
    (B, &["SET", "k", "x", "NX"], "$-1\r\n"),
    (B, &["DEL", "missing"], ":0\r\n"),
    (B, &["EXPIRE", "k", "100", "XX"], ":0\r\n"),
    (A, &["MULTI"], "+OK\r\n"),
    (A, &["SET", "k", "mine"], "+QUEUED\r\n"),
    (A, &["EXEC"], "*1\r\n+OK\r\n"),
    // The watcher's own change counts too.
    (A, &["WATCH", "k"], "+OK\r\n"),
    (A, &["EXPIRE", "k", "100"], ":1\r\n"),
    (A, &["MULTI"], "+OK\r\n"),
    (A, &["EXEC"], "*-1\r\n"),
    // FLUSHDB changes the watched keys that existed, not the others.
    (A, &["WATCH", "k"], "+OK\r\n"),
    (B, &["FLUSHDB"], "+OK\r\n"),
    (A, &["MULTI"], "+OK\r\n"),
    (A, &["EXEC"], "*-1\r\n"),
    (A, &["WATCH", "k"], "+OK\r\n"),
    (B, &["FLUSHALL"], "+OK\r\n"),
    (A, &["MULTI"], "+OK\r\n"),
    (A, &["EXEC"], "*0\r\n"),
    // Creating a missing watched key is a change.
    (A, &["WATCH", "k"], "+OK\r\n"),
    (B, &["INCR", "k"], ":1\r\n"),
    (A, &["MULTI"], "+OK\r\n"),
    (A, &["EXEC"], "*-1\r\n"),
    // UNWATCH, DISCARD and EXEC end the watches...
    (A, &["WATCH", "k"], "+OK\r\n"),
    (A, &["UNWATCH"], "+OK\r\n"),
    (B, &["INCR", "k"], ":2\r\n"),
    (A, &["MULTI"], "+OK\r\n"),
    (A, &["EXEC"], "*0\r\n"),
    (A, &["WATCH", "k"], "+OK\r\n"),
    (A, &["MULTI"], "+OK\r\n"),
    (A, &["DISCARD"], "+OK\r\n"),
    (B, &["INCR", "k"], ":3\r\n"),
    (A, &["MULTI"], "+OK\r\n"),
    (A, &["EXEC"], "*0\r\n"),
    // ...but a queued UNWATCH acts only at EXEC, after the check.
    (A, &["WATCH", "k"], "+OK\r\n"),
    (A, &["MULTI"], "+OK\r\n"),
    (A, &["UNWATCH"], "+QUEUED\r\n"),
    (B, &["GETDEL", "k"], "$1\r\n3\r\n"),
    (A, &["EXEC"], "*-1\r\n"),
    // QUIT is not queued: it answers and closes, and the transaction is gone.
    (A, &["MULTI"], "+OK\r\n"),
    (A, &["SET", "k", "never"], "+QUEUED\r\n"),
    (A, &["QUIT"], "+OK\r\n"),
    (B, &["EXISTS", "k"], ":0\r\n"),
];

/// A pipelined transaction in one write, replies read after.
const PIPELINED: &[&[&str]] = &[
    &["MULTI"],
    &["SET", "p", "1"],
    &["INCR", "p"],
    &["EXEC"],
    &["GET", "p"],
];
const PIPELINED_REPLIES: &[&str] = &[
    "+OK\r\n",
    "+QUEUED\r\n",
    "+QUEUED\r\n",
    "*2\r\n+OK\r\n:2\r\n",
    "$1\r\n2\r\n",
];

async fn transaction_replies(server: &Server) {
    let name = server.name;
    let mut conns = [
        Raw::connect(server.port).await,
        Raw::connect(server.port).await,
    ];
    for (who, request, want) in TRANSACTIONS {
        let got = conns[*who].request(request).await;
        assert_eq!(
            got, *want,
            "{name}: reply to {request:?} on connection {who}"
        );
    }
    let mut raw = Raw::connect(server.port).await;
    assert_eq!(raw.pipeline(PIPELINED).await, PIPELINED_REPLIES, "{name}");
}

#[tokio::test]
async fn transactions_answer_like_redis() {
    let store = start_store(None);
    match start_redis(None).await {
        Some(redis) => {
            transaction_replies(&redis).await;
            transaction_replies(&store).await;
        }
        None => transaction_replies(&store).await,
    }
}

/// A watched key that expires before EXEC counts as changed (Redis 7).
async fn watched_key_expiry(server: &Server) {
    let name = server.name;
    let mut a = Raw::connect(server.port).await;
    let mut b = Raw::connect(server.port).await;
    assert_eq!(a.request(&["SET", "e", "v", "PX", "500"]).await, "+OK\r\n");
    assert_eq!(a.request(&["WATCH", "e"]).await, "+OK\r\n");
    // A key already expired when watched would not count: make sure it was alive.
    let pttl = a.request(&["PTTL", "e"]).await;
    assert!(
        pttl.starts_with(':') && !pttl.starts_with(":-"),
        "{name}: key expired before it was watched ({pttl:?}); machine too slow?"
    );
    // Polling from another connection, which also removes the key once due.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while b.request(&["EXISTS", "e"]).await != ":0\r\n" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}: watched key never expired"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(a.request(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(a.request(&["SET", "e", "new"]).await, "+QUEUED\r\n");
    assert_eq!(a.request(&["EXEC"]).await, "*-1\r\n", "{name}");
    assert_eq!(a.request(&["GET", "e"]).await, "$-1\r\n", "{name}");
}

#[tokio::test]
async fn a_watched_key_that_expires_aborts_exec_like_redis() {
    let store = start_store(None);
    match start_redis(None).await {
        Some(redis) => {
            tokio::join!(watched_key_expiry(&store), watched_key_expiry(&redis));
        }
        None => watched_key_expiry(&store).await,
    }
}

const COUNTER: &str = "cas:counter";
const INCREMENTS: usize = 200;
/// Upper bound for all of a writer's increments.
const WRITERS: Duration = Duration::from_secs(120);

/// One optimistic increment of a JSON counter: WATCH, read, write in MULTI/EXEC, and
/// start over when EXEC reports that another writer got there first. Returns how many
/// attempts lost that race.
async fn cas_increment(c: &mut MultiplexedConnection) -> usize {
    let mut conflicts = 0;
    loop {
        let _: () = step(cmd("WATCH").arg(COUNTER).query_async(c))
            .await
            .expect("WATCH");
        let raw: String = step(c.get(COUNTER)).await.expect("GET");
        let doc: serde_json::Value = serde_json::from_str(&raw).expect("counter is JSON");
        let count = doc["count"].as_i64().expect("count is a number");
        let next = serde_json::json!({ "count": count + 1 }).to_string();
        let done: Option<()> = step(
            redis::pipe()
                .atomic()
                .set(COUNTER, next)
                .ignore()
                .query_async(c),
        )
        .await
        .expect("MULTI/SET/EXEC");
        if done.is_some() {
            return conflicts;
        }
        conflicts += 1;
        assert!(
            conflicts < 10_000,
            "no progress after {conflicts} conflicts"
        );
    }
}

/// Two writers, each on its own connection, increment one counter with [`cas_increment`];
/// none of the 400 increments may be lost. Also an atomic pipeline's replies.
async fn cas_counter(server: &Server) {
    let name = server.name;
    let c = &mut connect(server.port, None).await.expect("connect");
    let (n, v): (i64, String) = step(
        redis::pipe()
            .atomic()
            .set("atomic", 41)
            .ignore()
            .incr("atomic", 1)
            .get("atomic")
            .query_async(c),
    )
    .await
    .expect("atomic pipeline");
    assert_eq!((n, v.as_str()), (42, "42"), "{name}");

    let _: () = step(c.set(COUNTER, r#"{"count":0}"#))
        .await
        .expect("SET counter");
    let writers: Vec<_> = (0..2)
        .map(|_| {
            let port = server.port;
            tokio::spawn(async move {
                let mut own = connect(port, None).await.expect("connect");
                let mut conflicts = 0;
                for _ in 0..INCREMENTS {
                    conflicts += cas_increment(&mut own).await;
                }
                conflicts
            })
        })
        .collect();
    let mut conflicts = 0;
    for writer in writers {
        conflicts += timeout(WRITERS, writer)
            .await
            .expect("writers finished in time")
            .expect("writer finished");
    }
    let raw: String = step(c.get(COUNTER)).await.expect("GET counter");
    let doc: serde_json::Value = serde_json::from_str(&raw).expect("counter is JSON");
    assert_eq!(doc["count"], 2 * INCREMENTS, "{name}");
    eprintln!("{name}: {conflicts} EXECs refused for a concurrent change");
}

#[tokio::test]
async fn watch_based_compare_and_set_works_like_redis() {
    let store = start_store(None);
    match start_redis(None).await {
        Some(redis) => {
            tokio::join!(cas_counter(&store), cas_counter(&redis));
        }
        None => cas_counter(&store).await,
    }
}
