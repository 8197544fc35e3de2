//! The opening of a connection: protocol header, then Start → StartOk (authentication) →
//! Tune → TuneOk → Open → OpenOk, as RabbitMQ runs it: the user is authenticated at
//! StartOk, and at Open the vhost must exist and the user have permissions on it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::protocol::{AMQPClass, connection};
use amq_protocol::types::parsing::parse_field_table;
use amq_protocol::types::{AMQPValue, FieldTable};
use futures::StreamExt as _;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use tracing::{debug, info};

use super::AmqpConfig;
use super::auth_attempts::Protocol;
use super::broker::Broker;
use super::codec::{AmqpCodec, CodecError, Inbound, Outbound};
use super::error::{AmqpError, code};
use super::node::Node;
use super::permissions::Permissions;
use super::tls::{CertLogin, TlsInfo};
use super::users::{User, Users};

/// How long a client has to complete the handshake (RabbitMQ's `handshake_timeout`).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// RabbitMQ's smallest frame_max (amq-protocol's constant says 8192, the spec's 4096), and
/// the largest frame it reads before tune-ok: a client not yet logged in cannot make it
/// buffer more.
pub const FRAME_MIN_SIZE: u32 = 4096;
/// How long a client refused before its connection is open (no connection.close for it)
/// waits for its socket to close, as in RabbitMQ (`SILENT_CLOSE_DELAY`).
const SILENT_CLOSE_DELAY: Duration = Duration::from_secs(3);

/// Limits both sides agreed on.
#[derive(Debug, Clone, Copy)]
pub struct Tuned {
    pub channel_max: u16,
    pub frame_max: u32,
    pub heartbeat: u16,
    /// The client understands connection.blocked / unblocked.
    pub blocked_capable: bool,
    /// The client wants basic.cancel when its consumer's queue goes away.
    pub cancel_notify: bool,
}

/// Who opened which vhost, with what permissions there.
#[derive(Debug)]
pub struct Opened {
    pub tuned: Tuned,
    pub user: Arc<User>,
    pub vhost: Arc<Broker>,
    pub permissions: Arc<Permissions>,
    /// What the client said about itself in start-ok, shown by the management API.
    pub client_properties: FieldTable,
    /// The client's `connection_name` property, if any: a name its user chose.
    pub client_name: Option<String>,
    /// The SASL mechanism the client logged in with.
    pub mechanism: &'static str,
}

/// Why a handshake did not end with an open connection.
#[derive(Debug)]
pub enum HandshakeEnd {
    /// Refuse with connection.close and this error.
    Refuse(AmqpError),
    /// The client went away, closed politely, sent a foreign protocol header (already
    /// answered), ran out of time or was refused silently: just drop the socket.
    Gone,
}

/// How the steps of a handshake stop short.
enum Stop {
    End(HandshakeEnd),
    /// As RabbitMQ treats a client it does not trust yet (bad frames, methods out of turn,
    /// limits out of range, a failed login that did not ask for a close): no
    /// connection.close, the socket closes after a pause. The reason is only logged.
    Silent(String),
}

impl From<HandshakeEnd> for Stop {
    fn from(end: HandshakeEnd) -> Self {
        Stop::End(end)
    }
}

pub async fn handshake<R: AsyncRead + Unpin>(
    frames: &mut FramedRead<R, AmqpCodec>,
    tx: &mpsc::Sender<Outbound>,
    node: &Node,
    peer: Option<SocketAddr>,
    tls: Option<&TlsInfo>,
) -> Result<Opened, HandshakeEnd> {
    let run = async {
        match steps(frames, tx, node, peer, tls).await {
            Ok(opened) => Ok(opened),
            Err(Stop::End(end)) => Err(end),
            Err(Stop::Silent(reason)) => {
                info!(?peer, "AMQP connection refused before it opened: {reason}");
                tokio::time::sleep(SILENT_CLOSE_DELAY).await;
                Err(HandshakeEnd::Gone)
            }
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, run)
        .await
        .unwrap_or(Err(HandshakeEnd::Gone))
}

async fn steps<R: AsyncRead + Unpin>(
    frames: &mut FramedRead<R, AmqpCodec>,
    tx: &mpsc::Sender<Outbound>,
    node: &Node,
    peer: Option<SocketAddr>,
    tls: Option<&TlsInfo>,
) -> Result<Opened, Stop> {
    let config = node.config();
    match next(frames).await? {
        Inbound::ProtocolHeader { supported: true } => {}
        Inbound::ProtocolHeader { supported: false } => {
            let _ = tx.send(Outbound::ProtocolHeader).await;
            return Err(HandshakeEnd::Gone.into());
        }
        _ => return Err(HandshakeEnd::Gone.into()),
    }
    let external = External::of(config.cert_login, tls);
    if let (
        External::Refused,
        Some(TlsInfo {
            peer_cert: Some(cert),
            ..
        }),
    ) = (&external, tls)
    {
        debug!(?peer, subject = %cert.subject, "certificate names no login: EXTERNAL not offered");
    }
    send(
        tx,
        connection::AMQPMethod::Start(start(
            &node.cluster_name(),
            matches!(external, External::As(_)),
        )),
    )
    .await;
    let start_ok = match expect(frames, tx).await? {
        connection::AMQPMethod::StartOk(s) => s,
        other => return Err(unexpected(&other)),
    };
    let login = authenticate(&start_ok, &node.users(), peer, &external);
    // As RabbitMQ counts them: an unknown mechanism is no attempt at a password.
    match &login {
        Ok(_) => node.auth_attempts().succeeded(Protocol::Amqp091),
        Err(e) if e.code != code::COMMAND_INVALID => {
            node.auth_attempts().failed(Protocol::Amqp091);
        }
        Err(_) => {}
    }
    let user = match login {
        Ok(user) => user,
        // As RabbitMQ: connection.close only to a client that asked for it; the others
        // (and any client whose start-ok RabbitMQ could not even read) see the socket
        // close after a pause that makes guessing passwords slow.
        Err(e)
            if e.code == code::ACCESS_REFUSED
                && client_capability(
                    &start_ok.client_properties,
                    "authentication_failure_close",
                ) =>
        {
            // The detail the refusal tells the client to look for in the broker's log.
            info!(?peer, "AMQP login refused: {}", e.reply_text());
            return Err(HandshakeEnd::Refuse(e).into());
        }
        Err(e) => return Err(Stop::Silent(format!("login: {}", e.reply_text()))),
    };
    send(
        tx,
        connection::AMQPMethod::Tune(connection::Tune {
            channel_max: config.channel_max,
            frame_max: config.frame_max,
            heartbeat: config.heartbeat,
        }),
    )
    .await;
    let tune_ok = match expect(frames, tx).await? {
        connection::AMQPMethod::TuneOk(t) => t,
        other => return Err(unexpected(&other)),
    };
    check_tune_ok(&tune_ok, config).map_err(|e| Stop::Silent(e.reply_text().to_string()))?;
    let tuned = Tuned {
        channel_max: tune_ok.channel_max,
        frame_max: tune_ok.frame_max,
        // The client has the last word on heartbeats: 0 in tune-ok turns them off.
        heartbeat: tune_ok.heartbeat,
        blocked_capable: client_capability(&start_ok.client_properties, "connection.blocked"),
        cancel_notify: client_capability(&start_ok.client_properties, "consumer_cancel_notify"),
    };
    frames.decoder_mut().set_frame_max(tuned.frame_max);
    let _ = tx
        .send(Outbound::Tuned {
            frame_max: tuned.frame_max,
            heartbeat: tuned.heartbeat,
        })
        .await;
    let open = match expect(frames, tx).await? {
        connection::AMQPMethod::Open(o) => o,
        other => return Err(unexpected(&other)),
    };
    let refuse = |e| Stop::End(HandshakeEnd::Refuse(e));
    let (vhost, permissions) =
        open_vhost(node, &user, open.virtual_host.as_str()).map_err(refuse)?;
    node.admit_connection(&user.name, vhost.name())
        .map_err(refuse)?;
    send(tx, connection::AMQPMethod::OpenOk(connection::OpenOk {})).await;
    let property = |key: &str| match start_ok.client_properties.inner().get(key) {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        Some(AMQPValue::ShortString(s)) => Some(s.to_string()),
        _ => None,
    };
    Ok(Opened {
        tuned,
        user,
        vhost,
        permissions,
        client_name: property("connection_name"),
        mechanism: match start_ok.mechanism.as_str() {
            "AMQPLAIN" => "AMQPLAIN",
            "EXTERNAL" => "EXTERNAL",
            _ => "PLAIN",
        },
        client_properties: start_ok.client_properties,
    })
}

/// connection.open's checks, with RabbitMQ's 530 texts: the vhost exists and the user
/// has permissions on it.
fn open_vhost(
    node: &Node,
    user: &User,
    name: &str,
) -> Result<(Arc<Broker>, Arc<Permissions>), AmqpError> {
    let Some(vhost) = node.vhost(name) else {
        return Err(AmqpError::connection(
            code::NOT_ALLOWED,
            format!("NOT_ALLOWED - vhost {name} not found"),
        )
        .during(&AMQPClass::Connection(connection::AMQPMethod::Open(
            connection::Open::default(),
        ))));
    };
    let Some(permissions) = node.users().permissions(&user.name, name) else {
        return Err(AmqpError::connection(
            code::NOT_ALLOWED,
            format!(
                "NOT_ALLOWED - access to vhost '{name}' refused for user '{}'",
                user.name
            ),
        ));
    };
    Ok((vhost, permissions))
}

/// RabbitMQ's check of tune-ok: the client may lower our limits but not raise them, and
/// 0 ("no limit") is above any limit we offered; frame_max may not go below 4096. The
/// error carries RabbitMQ's 530 NOT_ALLOWED text, which both brokers only log.
fn check_tune_ok(tune_ok: &connection::TuneOk, config: &AmqpConfig) -> Result<(), AmqpError> {
    check_limit(
        "frame_max",
        FRAME_MIN_SIZE,
        config.frame_max,
        tune_ok.frame_max,
    )?;
    check_limit(
        "channel_max",
        1,
        config.channel_max.into(),
        tune_ok.channel_max.into(),
    )
}

fn check_limit(field: &str, min: u32, server: u32, client: u32) -> Result<(), AmqpError> {
    let detail = if field == "channel_max" && client == 0 {
        " (no limit)"
    } else {
        ""
    };
    let (direction, bound, limit) = if client != 0 && client < min {
        ("lower", "minimum", min)
    } else if server != 0 && (client == 0 || client > server) {
        ("higher", "maximum", server)
    } else {
        return Ok(());
    };
    Err(AmqpError::connection(
        code::NOT_ALLOWED,
        format!(
            "NOT_ALLOWED - negotiated {field} = {client}{detail} is {direction} than the {bound} allowed value ({limit})"
        ),
    ))
}

/// Whether the client's `capabilities` table says yes to `name`.
fn client_capability(properties: &FieldTable, name: &str) -> bool {
    match properties.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(caps)) => {
            matches!(caps.inner().get(name), Some(AMQPValue::Boolean(true)))
        }
        _ => false,
    }
}

/// Bytes of what came out of turn quoted in the log.
const EXCERPT: usize = 200;

fn unexpected(what: &dyn std::fmt::Debug) -> Stop {
    let text: String = format!("{what:?}").chars().take(EXCERPT).collect();
    Stop::Silent(format!("out of turn in the handshake: {text}"))
}

async fn send(tx: &mpsc::Sender<Outbound>, method: connection::AMQPMethod) {
    let _ = tx
        .send(Outbound::Method(0, AMQPClass::Connection(method)))
        .await;
}

async fn next<R: AsyncRead + Unpin>(
    frames: &mut FramedRead<R, AmqpCodec>,
) -> Result<Inbound, Stop> {
    match frames.next().await {
        Some(Ok(inbound)) => Ok(inbound),
        Some(Err(CodecError::Io(_))) | None => Err(HandshakeEnd::Gone.into()),
        Some(Err(e)) => Err(Stop::Silent(e.to_string())),
    }
}

/// The next connection method on channel 0, skipping heartbeats. A client close is
/// answered here.
async fn expect<R: AsyncRead + Unpin>(
    frames: &mut FramedRead<R, AmqpCodec>,
    tx: &mpsc::Sender<Outbound>,
) -> Result<connection::AMQPMethod, Stop> {
    loop {
        match next(frames).await? {
            Inbound::Heartbeat => continue,
            Inbound::Method(0, AMQPClass::Connection(m)) => {
                if let connection::AMQPMethod::Close(_) = m {
                    send(tx, connection::AMQPMethod::CloseOk(connection::CloseOk {})).await;
                    return Err(HandshakeEnd::Gone.into());
                }
                return Ok(m);
            }
            other => return Err(unexpected(&other)),
        }
    }
}

fn start(cluster_name: &str, external: bool) -> connection::Start {
    let mut capabilities = FieldTable::default();
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ] {
        capabilities.insert(cap.into(), AMQPValue::Boolean(true));
    }
    let mut props = FieldTable::default();
    props.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    props.insert("product".into(), long("session-store"));
    props.insert("version".into(), long(env!("CARGO_PKG_VERSION")));
    props.insert("platform".into(), long("Rust"));
    // The keys RabbitMQ sends, so clients that read them find them.
    props.insert("cluster_name".into(), long(cluster_name));
    props.insert(
        "copyright".into(),
        long("The session-store authors; MIT OR Apache-2.0"),
    );
    props.insert(
        "information".into(),
        long("An AMQP 0-9-1 broker embedded in session-store, RabbitMQ-compatible"),
    );
    connection::Start {
        version_major: 0,
        version_minor: 9,
        server_properties: props,
        mechanisms: if external {
            "PLAIN AMQPLAIN EXTERNAL"
        } else {
            "PLAIN AMQPLAIN"
        }
        .into(),
        locales: "en_US".into(),
    }
}

fn long(text: &str) -> AMQPValue {
    AMQPValue::LongString(text.into())
}

/// Checks StartOk's credentials. The guest user may only log in from loopback, as in
/// RabbitMQ.
fn authenticate(
    start_ok: &connection::StartOk,
    users: &Users,
    peer: Option<SocketAddr>,
    external: &External,
) -> Result<Arc<User>, AmqpError> {
    let mechanism = start_ok.mechanism.as_str();
    let refused = || {
        AmqpError::connection(
            code::ACCESS_REFUSED,
            format!(
                "ACCESS_REFUSED - Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
            ),
        )
    };
    let credentials = match (mechanism, external) {
        ("PLAIN", _) => plain(start_ok.response.as_bytes()),
        ("AMQPLAIN", _) => amqplain(start_ok.response.as_bytes()),
        ("EXTERNAL", External::As(name)) => {
            return users.login_external(name, peer).ok_or_else(refused);
        }
        ("EXTERNAL", External::Refused) => return Err(refused()),
        (other, _) => {
            return Err(AmqpError::connection(
                code::COMMAND_INVALID,
                format!("COMMAND_INVALID - unknown authentication mechanism '{other}'"),
            ));
        }
    };
    let Some((user, pass)) = credentials else {
        return Err(AmqpError::connection(
            code::SYNTAX_ERROR,
            format!("SYNTAX_ERROR - malformed {mechanism} response"),
        ));
    };
    users.login(&user, &pass, peer).ok_or_else(refused)
}

/// Where SASL EXTERNAL stands for one connection, as RabbitMQ's
/// rabbitmq_auth_mechanism_ssl decides it.
#[derive(Debug)]
enum External {
    /// Not enabled, or not a TLS connection: an unknown mechanism.
    Unknown,
    /// Enabled on a TLS connection without a certificate that names a user: not offered,
    /// and refused if chosen anyway.
    Refused,
    /// Offered: the client logs in, with no password, as the user its certificate names.
    As(String),
}

impl External {
    fn of(from: Option<CertLogin>, tls: Option<&TlsInfo>) -> External {
        let (Some(from), Some(tls)) = (from, tls) else {
            return External::Unknown;
        };
        match tls.peer_cert.as_ref().and_then(|c| c.login_name(from)) {
            Some(name) => External::As(name),
            None => External::Refused,
        }
    }
}

/// SASL PLAIN: `authzid \0 user \0 password`.
fn plain(response: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut parts = response.split(|b| *b == 0);
    let _authzid = parts.next()?;
    let user = parts.next()?;
    let pass = parts.next()?;
    parts
        .next()
        .is_none()
        .then(|| (user.to_vec(), pass.to_vec()))
}

/// AMQPLAIN: a field table without its length prefix, with LOGIN and PASSWORD.
fn amqplain(response: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let len = u32::try_from(response.len()).ok()?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(response);
    let (_, table) = parse_field_table(&framed[..]).ok()?;
    let text = |key: &str| match table.inner().get(key)? {
        AMQPValue::LongString(s) => Some(s.as_bytes().to_vec()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes().to_vec()),
        _ => None,
    };
    Some((text("LOGIN")?, text("PASSWORD")?))
}

#[cfg(test)]
mod tests {
    use amq_protocol::auth::{Credentials, SASLMechanism};
    use amq_protocol::types::LongString;

    use super::*;

    #[test]
    fn parses_plain_and_amqplain_responses() {
        let creds = Credentials::new("u".into(), "p".into());
        for mechanism in [SASLMechanism::Plain, SASLMechanism::AMQPlain] {
            let response: LongString = creds.sasl_auth_string(mechanism);
            let parsed = match mechanism {
                SASLMechanism::Plain => plain(response.as_bytes()),
                _ => amqplain(response.as_bytes()),
            };
            assert_eq!(parsed, Some((b"u".to_vec(), b"p".to_vec())));
        }
        assert_eq!(plain(b"no separators"), None);
        assert_eq!(amqplain(b"\xff\xff"), None);
    }

    #[test]
    fn guest_only_from_loopback() {
        let users = AmqpConfig::default().definitions.users;
        let start_ok = connection::StartOk {
            client_properties: FieldTable::default(),
            mechanism: "PLAIN".into(),
            response: "\0guest\0guest".into(),
            locale: "en_US".into(),
        };
        let local = Some(SocketAddr::from(([127, 0, 0, 1], 1)));
        let remote = Some(SocketAddr::from(([10, 0, 0, 1], 1)));
        assert!(authenticate(&start_ok, &users, local, &External::Unknown).is_ok());
        assert_eq!(
            authenticate(&start_ok, &users, remote, &External::Unknown)
                .map(|u| u.name.clone())
                .map_err(|e| e.code),
            Err(code::ACCESS_REFUSED)
        );
    }

    #[test]
    fn external_logs_in_as_the_certificate_names_only_where_offered() {
        let users = AmqpConfig::default().definitions.users;
        let start_ok = connection::StartOk {
            client_properties: FieldTable::default(),
            mechanism: "EXTERNAL".into(),
            response: "".into(),
            locale: "en_US".into(),
        };
        let local = Some(SocketAddr::from(([127, 0, 0, 1], 1)));
        let remote = Some(SocketAddr::from(([10, 0, 0, 1], 1)));
        let code = |external: External, peer| {
            authenticate(&start_ok, &users, peer, &external)
                .map(|u| u.name.clone())
                .map_err(|e| e.code)
        };
        assert_eq!(
            code(External::As("guest".into()), local),
            Ok("guest".into())
        );
        // guest stays loopback-only, and unknown users are refused.
        assert_eq!(
            code(External::As("guest".into()), remote),
            Err(code::ACCESS_REFUSED)
        );
        assert_eq!(
            code(External::As("nobody".into()), local),
            Err(code::ACCESS_REFUSED)
        );
        assert_eq!(code(External::Refused, local), Err(code::ACCESS_REFUSED));
        assert_eq!(code(External::Unknown, local), Err(code::COMMAND_INVALID));
    }

    #[test]
    fn tune_ok_may_lower_limits_but_not_raise_them() {
        let config = AmqpConfig::default();
        let tune_ok = |channel_max, frame_max| connection::TuneOk {
            channel_max,
            frame_max,
            heartbeat: 0,
        };
        assert!(check_tune_ok(&tune_ok(10, 4096), &config).is_ok());
        assert!(check_tune_ok(&tune_ok(2047, 131_072), &config).is_ok());
        let refused = |t| check_tune_ok(&t, &config).map_err(|e| (e.code, e.text));
        assert_eq!(
            refused(tune_ok(0, 131_072)),
            Err((
                code::NOT_ALLOWED,
                "NOT_ALLOWED - negotiated channel_max = 0 (no limit) is higher than the maximum allowed value (2047)".into()
            ))
        );
        assert!(refused(tune_ok(2048, 131_072)).is_err());
        assert!(refused(tune_ok(1, 4095)).is_err());
        assert!(refused(tune_ok(1, 0)).is_err());
        assert!(refused(tune_ok(1, 131_073)).is_err());
    }
}
