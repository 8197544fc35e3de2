//! `session_store::run` in-process: served by a real socket, driven by the `redis` crate,
//! stopped through its shutdown future.

use std::time::Duration;

use session_store::{Config, run};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(10);

struct Server {
    port: u16,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), session_store::error::ServerError>>,
}

async fn start(config: Config) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(run(listener, config, async {
        let _ = stopped.await;
    }));
    Server { port, stop, task }
}

#[tokio::test]
async fn serves_redis_clients_and_shuts_down_gracefully() {
    let server = start(Config::default()).await;
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/", server.port)).expect("url");
    let mut conn = timeout(LIMIT, client.get_multiplexed_async_connection())
        .await
        .expect("connect in time")
        .expect("connect");
    let mut pipe = redis::pipe();
    for i in 0..500 {
        pipe.set(format!("k{i}"), i).ignore();
    }
    pipe.get("k499").cmd("DBSIZE");
    let (last, size): (i64, i64) = timeout(LIMIT, pipe.query_async(&mut conn))
        .await
        .expect("reply in time")
        .expect("pipeline");
    assert_eq!((last, size), (499, 500));

    server.stop.send(()).expect("server still running");
    timeout(LIMIT, server.task)
        .await
        .expect("drained in time")
        .expect("task")
        .expect("run");
    assert!(
        TcpStream::connect(("127.0.0.1", server.port))
            .await
            .is_err(),
        "listener closed after shutdown"
    );
}

#[tokio::test]
async fn refuses_connections_over_the_cap() {
    let server = start(Config {
        max_connections: 1,
        ..Config::default()
    })
    .await;
    let mut first = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .expect("connect");
    first.write_all(b"PING\r\n").await.expect("write");
    let mut reply = [0u8; 7];
    timeout(LIMIT, first.read_exact(&mut reply))
        .await
        .expect("reply in time")
        .expect("read");
    assert_eq!(&reply, b"+PONG\r\n");

    let mut second = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .expect("connect");
    let mut refused = Vec::new();
    timeout(LIMIT, second.read_to_end(&mut refused))
        .await
        .expect("closed in time")
        .expect("read");
    assert_eq!(refused, b"-ERR max number of clients reached\r\n");
    drop(server.stop);
}
