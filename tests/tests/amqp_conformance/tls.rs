//! amqps: the same scenarios over TLS, on RabbitMQ's `listeners.ssl` and on the embedded
//! broker's `--amqps-bind`, both serving the certificates of [`e2e::tls::pki`].

use std::sync::LazyLock;

use e2e::bin;
use e2e::rabbit::{amqp_url, start_embedded_with_tls, start_embedded_with_tls_and};
use e2e::tls::pki;
use futures::StreamExt as _;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use reqwest::Method;
use serde_json::json;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::{
    RABBIT, SCENARIO, STEP, api, channel, connection_path, declare_queue, expect_code, expect_text,
    python_script_with, run_with_timeout, step, uniq,
};

/// Where a TLS scenario finds its broker.
struct Target {
    /// The plain listener's URL.
    amqp: String,
    amqps: String,
    api: String,
    /// The management API over HTTPS.
    https_api: String,
}

macro_rules! tls_conformance {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rabbitmq() {
                super::on_rabbitmq(stringify!($name), super::$name).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::on_embedded(stringify!($name), super::$name).await;
            }
        }
    )*};
}

tls_conformance!(
    amqps_clients,
    amqps_refusals,
    pika_over_tls,
    external_login,
    management_over_https
);

async fn on_rabbitmq<F, Fut>(name: &str, scenario: F)
where
    F: FnOnce(Target) -> Fut,
    Fut: Future<Output = ()>,
{
    let target = tokio::task::spawn_blocking(|| {
        LazyLock::force(&RABBIT).as_ref().map(|r| Target {
            amqp: r.url(),
            amqps: r.amqps_url().expect("the node serves amqps"),
            api: r
                .management_url()
                .expect("the node runs the management plugin"),
            https_api: r.management_https_url().expect("the node serves HTTPS"),
        })
    })
    .await
    .expect("start RabbitMQ");
    let Some(target) = target else {
        eprintln!("{name}: RabbitMQ not installed, skipped");
        return;
    };
    timeout(SCENARIO, scenario(target))
        .await
        .unwrap_or_else(|_| panic!("{name} on RabbitMQ took longer than {SCENARIO:?}"));
}

async fn on_embedded<F, Fut>(name: &str, scenario: F)
where
    F: FnOnce(Target) -> Fut,
    Fut: Future<Output = ()>,
{
    let (proc, ports) = tokio::task::spawn_blocking(start_embedded_with_tls)
        .await
        .expect("start session-store");
    let target = Target {
        amqp: amqp_url(ports.amqp),
        amqps: format!("amqps://guest:guest@127.0.0.1:{}/%2f", ports.amqps),
        api: format!("http://127.0.0.1:{}", ports.management),
        https_api: format!("https://127.0.0.1:{}", ports.https),
    };
    timeout(SCENARIO, scenario(target))
        .await
        .unwrap_or_else(|_| panic!("{name} on the embedded broker took longer than {SCENARIO:?}"));
    drop(proc);
}

/// Trusts the test CA; presents the client certificate when `identity`.
fn tls_config(identity: bool) -> OwnedTLSConfig {
    let pki = pki();
    OwnedTLSConfig {
        identity: identity.then(|| OwnedIdentity::PKCS8 {
            pem: pki.client_cert_pem.clone().into_bytes(),
            key: pki.client_key_pem.clone().into_bytes(),
        }),
        cert_chain: Some(pki.ca_pem.clone()),
    }
}

async fn connect_tls(url: &str, name: &str, config: OwnedTLSConfig) -> lapin::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let runtime = lapin::runtime::default_runtime()?;
    step(
        "amqps connect",
        Connection::connect_with_config(url, properties, config, runtime),
    )
    .await
}

/// What a connection's listing says about its TLS session.
fn tls_view(c: &serde_json::Value) -> [&str; 8] {
    [
        "ssl_protocol",
        "ssl_key_exchange",
        "ssl_cipher",
        "ssl_hash",
        "peer_cert_subject",
        "peer_cert_issuer",
        "peer_cert_validity",
        "auth_mechanism",
    ]
    .map(|k| c[k].as_str().unwrap_or("(not a string)"))
}

/// lapin over TLS: messages of every size through confirms and a consumer; the listing
/// of TLS connections (with and without a client certificate) and plain ones as RabbitMQ
/// shows them; the listener in the overview and in the protocol-listener check; the
/// certificate-expiration check with the files and dates that expire within the period.
async fn amqps_clients(t: Target) {
    let given = uniq("tls");
    let conn = connect_tls(&t.amqps, &given, tls_config(false))
        .await
        .expect("amqps connect");
    let ch = channel(&conn).await;
    step(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    let q = exclusive_queue(&ch).await;
    // Across TLS records (16 KiB) and AMQP frames (128 KiB).
    let bodies: Vec<Vec<u8>> = [0usize, 1, 1000, 16_385, 300_000, 7]
        .iter()
        .enumerate()
        .map(|(i, &n)| vec![i as u8; n])
        .collect();
    for body in &bodies {
        let confirm = step(
            "publish",
            ch.basic_publish(
                "".into(),
                q.name().clone(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default(),
            ),
        )
        .await
        .expect("publish");
        let confirmation = step("confirm", confirm).await.expect("confirm");
        assert!(confirmation.is_ack(), "{confirmation:?}");
    }
    let mut consumer = step(
        "basic.consume",
        ch.basic_consume(
            q.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("basic.consume");
    for body in &bodies {
        let delivery = step("delivery", consumer.next())
            .await
            .expect("a delivery")
            .expect("delivery");
        assert_eq!(delivery.data.len(), body.len());
        assert_eq!(&delivery.data, body);
    }

    let one = listing(&t.api, &given).await;
    assert_eq!(one["ssl"], true, "{one}");
    assert_eq!(
        tls_view(&one),
        ["tlsv1.3", "any", "aes_256_gcm", "aead", "", "", "", "PLAIN"],
        "{one}"
    );

    let with_cert = uniq("tlscert");
    let certified = connect_tls(&t.amqps, &with_cert, tls_config(true))
        .await
        .expect("amqps connect with a client certificate");
    let one = listing(&t.api, &with_cert).await;
    assert_eq!(
        tls_view(&one),
        [
            "tlsv1.3",
            "any",
            "aes_256_gcm",
            "aead",
            "O=session-store tests,CN=e2e-client",
            "O=session-store tests,CN=e2e test CA",
            "2025-01-01T00:00:00Z - 2036-01-01T00:00:00Z",
            "PLAIN",
        ],
        "{one}"
    );

    let plain = uniq("plain");
    let properties = ConnectionProperties::default().with_connection_name(plain.as_str().into());
    let plain_conn = step("connect", Connection::connect(&t.amqp, properties))
        .await
        .expect("connect");
    let one = listing(&t.api, &plain).await;
    assert_eq!(one["ssl"], false, "{one}");
    assert_eq!(
        tls_view(&one),
        ["", "", "", "", "", "", "", "PLAIN"],
        "{one}"
    );

    let tls_port = port_of(&t.amqps);
    let (_, overview) = api(&t.api, Method::GET, "/api/overview", None).await;
    let listed = overview["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|l| l["protocol"] == "amqp/ssl" && l["port"] == tls_port);
    assert!(listed, "{:#}", overview["listeners"]);
    let check = "/api/health/checks/protocol-listener/amqps";
    let (status, body) = api(&t.api, Method::GET, check, None).await;
    assert_eq!(
        (status, &body),
        (200, &json!({"status": "ok", "protocol": "amqp/ssl"}))
    );

    let expiry = |within: &str| format!("/api/health/checks/certificate-expiration/{within}");
    let (status, body) = api(&t.api, Method::GET, &expiry("1/months"), None).await;
    assert_eq!((status, &body), (200, &json!({"status": "ok"})));
    // The server's certificate expires in 2036, the CA's in 2040.
    for (within, server, ca) in [
        ("10/years", json!(["2036-01-01 0:00:00"]), json!([])),
        (
            "20/years",
            json!(["2036-01-01 0:00:00"]),
            json!(["2040-01-01 0:00:00"]),
        ),
    ] {
        let (status, body) = api(&t.api, Method::GET, &expiry(within), None).await;
        assert_eq!(status, 503, "{within}: {body}");
        assert_eq!(body["status"], "failed");
        assert_eq!(body["reason"], "Certificates expiring");
        let listener = &body["expired"][0];
        assert_eq!(body["expired"].as_array().map(Vec::len), Some(1), "{body}");
        assert_eq!(listener["protocol"], "amqp/ssl", "{body}");
        assert_eq!(listener["port"], tls_port, "{body}");
        assert_eq!(listener["interface"], "127.0.0.1", "{body}");
        assert_eq!(
            listener["certfile"],
            pki().server_cert.display().to_string()
        );
        assert_eq!(listener["cacertfile"], pki().ca.display().to_string());
        assert_eq!(listener["certfile_expires_on"], server, "{within}: {body}");
        assert_eq!(listener["cacertfile_expires_on"], ca, "{within}: {body}");
    }
    let (status, body) = api(&t.api, Method::GET, &expiry("x/years"), None).await;
    assert_eq!(
        (status, &body),
        (
            400,
            &json!({"error": "bad_request", "reason": "Invalid expiration value."})
        )
    );
    for c in [conn, certified, plain_conn] {
        let _ = step("connection.close", c.close(200, "bye".into())).await;
    }
}

/// The management API's listing of the connection its client named `given`, once listed.
async fn listing(api_base: &str, given: &str) -> serde_json::Value {
    let path = connection_path(api_base, given).await;
    let (status, one) = api(api_base, Method::GET, &path, None).await;
    assert_eq!(status, 200, "{path}: {one}");
    one
}

/// A server-named queue of this connection's.
async fn exclusive_queue(ch: &lapin::Channel) -> lapin::Queue {
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    declare_queue(ch, "", exclusive, FieldTable::default()).await
}

fn port_of(url: &str) -> u16 {
    url.rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

/// Refusals, none of which costs the broker a connection slot for long or stops it
/// serving: a client that trusts another CA, a client certificate another CA signed, the
/// plain AMQP header or garbage sent to the TLS port, and a client that opens TCP and says
/// nothing (closed by the broker's TLS handshake timeout). A good client is served after.
async fn amqps_refusals(t: Target) {
    let pki = pki();
    let distrustful = OwnedTLSConfig {
        identity: None,
        cert_chain: Some(pki.other_ca_pem.clone()),
    };
    let refused = connect_tls(&t.amqps, &uniq("wrongca"), distrustful).await;
    assert!(refused.is_err(), "connected trusting another CA");
    let stranger = OwnedTLSConfig {
        identity: Some(OwnedIdentity::PKCS8 {
            pem: pki.stranger_cert_pem.clone().into_bytes(),
            key: pki.stranger_key_pem.clone().into_bytes(),
        }),
        cert_chain: Some(pki.ca_pem.clone()),
    };
    let refused = connect_tls(&t.amqps, &uniq("stranger"), stranger).await;
    assert!(
        refused.is_err(),
        "a certificate another CA signed was accepted"
    );

    let addr = format!("127.0.0.1:{}", port_of(&t.amqps));
    // What each raw client gets back before the broker closes: never AMQP.
    let raw = |send: Vec<u8>, limit: Duration| {
        let addr = addr.clone();
        async move {
            let mut socket = step("tcp connect", TcpStream::connect(&addr))
                .await
                .expect("tcp connect");
            socket.write_all(&send).await.expect("send");
            let mut got = Vec::new();
            let read = timeout(limit, socket.read_to_end(&mut got)).await;
            assert!(read.is_ok(), "still open after {limit:?}; got {got:?}");
            got
        }
    };
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let (header, noise, silent) = tokio::join!(
        raw(b"AMQP\x00\x00\x09\x01".to_vec(), STEP),
        raw(garbage, STEP),
        // RabbitMQ's `ssl_handshake_timeout` is 5 s.
        raw(Vec::new(), Duration::from_secs(12)),
    );
    for got in [header, noise, silent] {
        assert!(
            !got.starts_with(b"AMQP"),
            "AMQP answered on the TLS port: {got:?}"
        );
    }

    let conn = connect_tls(&t.amqps, &uniq("after"), tls_config(false))
        .await
        .expect("amqps connect after the refusals");
    let ch = channel(&conn).await;
    exclusive_queue(&ch).await;
    let _ = step("connection.close", conn.close(200, "bye".into())).await;
}

/// SASL EXTERNAL (RabbitMQ's rabbitmq_auth_mechanism_ssl, here with the login name taken
/// from the certificate's common name): a client with a certificate logs in as the user
/// its certificate names, without a password; without a certificate, over plain TCP, or
/// when no such user exists, it is refused.
async fn external_login(t: Target) {
    let user = "e2e-client";
    let created = json!({"password": uniq("unused"), "tags": ""});
    let path = format!("/api/users/{user}");
    let (status, body) = api(&t.api, Method::PUT, &path, Some(created)).await;
    assert!(status == 201 || status == 204, "{status} {body}");
    let all = json!({"configure": ".*", "write": ".*", "read": ".*"});
    let grant = format!("/api/permissions/%2F/{user}");
    let (status, body) = api(&t.api, Method::PUT, &grant, Some(all)).await;
    assert!(status == 201 || status == 204, "{status} {body}");

    let external = |url: &str| {
        let (_, rest) = url.split_once('@').expect("credentials in the URL");
        let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("amqps");
        format!("{scheme}://{rest}?auth_mechanism=external")
    };
    let given = uniq("external");
    let conn = connect_tls(&external(&t.amqps), &given, tls_config(true))
        .await
        .expect("EXTERNAL login with a client certificate");
    let ch = channel(&conn).await;
    exclusive_queue(&ch).await;
    let one = listing(&t.api, &given).await;
    assert_eq!(
        (one["user"].as_str(), one["auth_mechanism"].as_str()),
        (Some(user), Some("EXTERNAL")),
        "{one}"
    );
    let _ = step("connection.close", conn.close(200, "bye".into())).await;

    let refusal = "ACCESS_REFUSED - Login was refused using authentication mechanism EXTERNAL.";
    let no_cert = connect_tls(&external(&t.amqps), &uniq("nocert"), tls_config(false)).await;
    expect_text(
        &expect_code("EXTERNAL without a certificate", no_cert, 403),
        refusal,
    );
    // Over plain TCP the mechanism is not known at all: the socket just closes.
    let plain = step(
        "connect",
        Connection::connect(&external(&t.amqp), ConnectionProperties::default()),
    )
    .await;
    let Err(e) = plain else {
        panic!("EXTERNAL over plain TCP was accepted");
    };
    assert!(
        matches!(e.kind(), lapin::ErrorKind::IOError(_)),
        "EXTERNAL over plain TCP: {e:?}"
    );

    assert_eq!(api(&t.api, Method::DELETE, &path, None).await.0, 204);
    let gone = connect_tls(&external(&t.amqps), &uniq("gone"), tls_config(true)).await;
    expect_text(
        &expect_code("EXTERNAL as a deleted user", gone, 403),
        refusal,
    );
}

/// `GET base + path` over HTTPS as guest, trusting only `ca` (PEM): the status and the
/// JSON body, or why the request failed. (hyper over tokio-rustls: the tests' reqwest is
/// built without TLS.)
async fn https_get(ca: &str, base: &str, path: &str) -> Result<(u16, serde_json::Value), String> {
    use http_body_util::BodyExt as _;
    use hyper_util::rt::TokioIo;
    use tokio_rustls::TlsConnector;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto::ring};
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots
            .add(cert.expect("a PEM certificate"))
            .expect("a CA certificate");
    }
    let config = ClientConfig::builder_with_provider(ring::default_provider().into())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let addr = base.trim_start_matches("https://").to_string();
    let request = async move {
        let tcp = TcpStream::connect(&addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from("127.0.0.1").expect("an IP server name");
        let tls = TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let request = hyper::Request::get(path)
            .header("host", addr.as_str())
            .header("authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("request");
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok((
            status,
            serde_json::from_slice(&body.to_bytes()).unwrap_or_default(),
        ))
    };
    timeout(STEP, request)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

/// The management API over HTTPS (RabbitMQ's `management.ssl`), beside its HTTP listener:
/// the same answers to a client that trusts the CA, the listener in the overview and its
/// protocol check; a client that trusts another CA, or speaks plain HTTP to the port,
/// gets nothing.
async fn management_over_https(t: Target) {
    let pki = pki();
    let https_port = port_of(&t.https_api);
    let (status, overview) = https_get(&pki.ca_pem, &t.https_api, "/api/overview")
        .await
        .expect("GET /api/overview over HTTPS");
    assert_eq!(status, 200, "{overview}");
    let listed = overview["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|l| l["protocol"] == "https" && l["port"] == https_port);
    assert!(listed, "{:#}", overview["listeners"]);
    // The same API as over HTTP.
    let (_, over_http) = api(&t.api, Method::GET, "/api/whoami", None).await;
    let whoami = https_get(&pki.ca_pem, &t.https_api, "/api/whoami").await;
    assert_eq!(whoami, Ok((200, over_http)));
    let check = "/api/health/checks/protocol-listener/https";
    assert_eq!(
        https_get(&pki.ca_pem, &t.https_api, check).await,
        Ok((200, json!({"status": "ok", "protocol": "https"})))
    );
    let refused = https_get(&pki.other_ca_pem, &t.https_api, "/api/overview").await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("UnknownIssuer")),
        "{refused:?}"
    );
    let plain = t.https_api.replacen("https://", "http://", 1);
    let request = reqwest::Client::new()
        .get(format!("{plain}/api/overview"))
        .basic_auth("guest", Some("guest"))
        .send();
    let answered = step("plain HTTP to the HTTPS port", request).await;
    assert!(answered.is_err(), "plain HTTP answered: {answered:?}");
    // And the plain HTTP listener still serves.
    assert_eq!(api(&t.api, Method::GET, "/api/overview", None).await.0, 200);
}

/// pika over Python's own TLS stack: bodies of every size, a client certificate, a client
/// that trusts another CA and a plain client on the TLS port refused.
async fn pika_over_tls(t: Target) {
    let pki = pki();
    let args = vec![
        t.amqps.clone(),
        pki.ca.display().to_string(),
        pki.client_cert.display().to_string(),
        pki.client_key.display().to_string(),
    ];
    let out = python_script_with(args, "pika", "test_pika_tls.py", Duration::from_secs(35)).await;
    if let Some((ok, out)) = out {
        assert!(ok, "pika TLS script failed:\n{out}");
    }
}

/// The embedded broker's `--amqp-tls-require-client-cert` (RabbitMQ's
/// `fail_if_no_peer_cert`): a client without a certificate is refused in the handshake,
/// one with a certificate the CA signed is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_can_be_required() {
    let (proc, ports) = tokio::task::spawn_blocking(|| {
        start_embedded_with_tls_and(&["--amqp-tls-require-client-cert"])
    })
    .await
    .expect("start session-store");
    let url = format!("amqps://guest:guest@127.0.0.1:{}/%2f", ports.amqps);
    let refused = connect_tls(&url, &uniq("nocert"), tls_config(false)).await;
    assert!(refused.is_err(), "served a client without a certificate");
    let conn = connect_tls(&url, &uniq("cert"), tls_config(true))
        .await
        .expect("amqps connect with a client certificate");
    exclusive_queue(&channel(&conn).await).await;
    drop(proc);
}

/// Unusable TLS settings stop `session-store` at start, before it serves anyone, with a
/// message naming the flag to fix.
#[tokio::test]
async fn unusable_tls_files_stop_the_start_with_the_flag_to_fix() {
    let pki = pki();
    let missing = pki.dir.join("no-such-file.pem");
    let (cert, key) = (
        pki.server_cert.display().to_string(),
        pki.server_key.display().to_string(),
    );
    let missing = missing.display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--amqp-tls-cert", &missing, "--amqp-tls-key", &key],
            "--amqp-tls-cert",
        ),
        (
            vec!["--amqp-tls-cert", &cert, "--amqp-tls-key", &missing],
            "--amqp-tls-key",
        ),
        // A certificate where the key belongs.
        (
            vec!["--amqp-tls-cert", &cert, "--amqp-tls-key", &cert],
            "--amqp-tls-key",
        ),
        (
            vec![
                "--amqp-tls-cert",
                &cert,
                "--amqp-tls-key",
                &key,
                "--amqp-tls-ca",
                &missing,
            ],
            "--amqp-tls-ca",
        ),
        // A key where the CA's certificates belong.
        (
            vec![
                "--amqp-tls-cert",
                &cert,
                "--amqp-tls-key",
                &key,
                "--amqp-tls-ca",
                &key,
            ],
            "--amqp-tls-ca",
        ),
        // A key without its certificate.
        (vec!["--amqp-tls-key", &key], "--amqp-tls-cert"),
        (
            vec![
                "--amqp-tls-cert",
                &cert,
                "--amqp-tls-key",
                &key,
                "--amqp-tls-require-client-cert",
            ],
            "--amqp-tls-ca",
        ),
    ];
    let store = tokio::task::spawn_blocking(|| bin("session-store"))
        .await
        .expect("build session-store");
    for (flags, named) in cases {
        let mut args = vec![
            "--bind",
            "127.0.0.1:0",
            "--amqp-bind",
            "127.0.0.1:0",
            "--amqps-bind",
            "127.0.0.1:0",
            "--no-amqp-management",
            "--amqp-no-persist",
        ];
        args.extend(&flags);
        let (store, argv) = (
            store.clone(),
            args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        );
        let (ok, out) = tokio::task::spawn_blocking(move || {
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            run_with_timeout(&store, &argv, Duration::from_secs(20))
        })
        .await
        .expect("run session-store");
        assert!(
            !ok && !out.contains("killed after"),
            "{flags:?} did not stop the start:\n{out}"
        );
        assert!(
            out.contains(named),
            "{flags:?}: the message does not name {named}:\n{out}"
        );
        assert!(
            !out.contains("listening on"),
            "{flags:?}: served before failing:\n{out}"
        );
        assert!(!out.contains("panicked"), "{flags:?}:\n{out}");
    }
}
