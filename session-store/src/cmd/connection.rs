//! Connection commands: PING, ECHO, SELECT, AUTH, HELLO.

use bytes::Bytes;
use redis_protocol::resp2::types::BytesFrame;

use super::parse::{Parse, option};
use super::{Context, bulk, integer, ok};
use crate::error::CommandError;
use crate::number::parse_i64;

/// The Redis version we answer to in HELLO and INFO, so clients that gate features on it
/// enable what this server implements (the Redis 7.0 reply formats).
pub(super) const COMPATIBLE_REDIS_VERSION: &str = "7.0.0";

pub(super) fn ping(p: &mut Parse, _ctx: &mut Context<'_>) -> Result<BytesFrame, CommandError> {
    match (p.next(), p.remaining()) {
        (None, _) => Ok(BytesFrame::SimpleString(Bytes::from_static(b"PONG"))),
        (Some(message), 0) => Ok(bulk(message)),
        (Some(_), _) => Err(CommandError::WrongArity("ping")),
    }
}

pub(super) fn echo(p: &mut Parse, _ctx: &mut Context<'_>) -> Result<BytesFrame, CommandError> {
    Ok(bulk(p.bytes()?))
}

/// Only database 0 exists: sessions need one keyspace, and a store shared by many apps
/// is better split by key prefix than by a number nobody can read.
pub(super) fn select(p: &mut Parse, _ctx: &mut Context<'_>) -> Result<BytesFrame, CommandError> {
    // Redis reads the index as an int before it looks for the database.
    match p.integer()? {
        0 => Ok(ok()),
        n if i32::try_from(n).is_err() => Err(CommandError::NotAnInt),
        _ => Err(CommandError::DbIndexOutOfRange),
    }
}

/// `AUTH [username] password`; the only user is `default`, as in Redis with requirepass.
pub(super) fn auth(p: &mut Parse, ctx: &mut Context<'_>) -> Result<BytesFrame, CommandError> {
    if p.remaining() > 2 {
        return Err(CommandError::Syntax);
    }
    let first = p.bytes()?;
    let (user, password) = match p.next() {
        Some(password) => (Some(first), password),
        None => (None, first),
    };
    if user.is_none() && ctx.shared.config.requirepass.is_none() {
        return Err(CommandError::AuthNotConfigured);
    }
    check_credentials(ctx, user.as_deref(), &password)?;
    ctx.client.authenticated = true;
    Ok(ok())
}

/// `HELLO [2 [AUTH username password] [SETNAME name]]`. Only RESP2 is spoken, so
/// `HELLO 3` gets NOPROTO, which clients take as "fall back to RESP2".
pub(super) fn hello(p: &mut Parse, ctx: &mut Context<'_>) -> Result<BytesFrame, CommandError> {
    if let Some(version) = p.next() {
        match parse_i64(&version) {
            Some(2) => {}
            Some(_) => return Err(CommandError::NoProto),
            None => return Err(CommandError::BadProtocolVersion),
        }
    }
    let mut credentials = None;
    let mut name = None;
    while let Some(arg) = p.next() {
        match option(&arg).as_str() {
            "AUTH" if p.remaining() >= 2 => credentials = Some((p.bytes()?, p.bytes()?)),
            "SETNAME" if p.remaining() >= 1 => name = Some(client_name(p.bytes()?)?),
            _ => {
                return Err(CommandError::HelloSyntax(
                    String::from_utf8_lossy(&arg).into_owned(),
                ));
            }
        }
    }
    if let Some((user, password)) = credentials {
        check_credentials(ctx, Some(&user), &password)?;
        ctx.client.authenticated = true;
    }
    if !ctx.client.authenticated {
        return Err(CommandError::HelloNoAuth);
    }
    if let Some(name) = name {
        ctx.client.name = name;
    }
    // RESP2 has no map type: Redis sends HELLO's map as a flat key, value array.
    Ok(BytesFrame::Array(vec![
        bulk("server"),
        bulk("session-store"),
        bulk("version"),
        bulk(COMPATIBLE_REDIS_VERSION),
        bulk("proto"),
        integer(2),
        bulk("id"),
        integer(ctx.client.id),
        bulk("mode"),
        bulk("standalone"),
        bulk("role"),
        bulk("master"),
        bulk("modules"),
        BytesFrame::Array(Vec::new()),
    ]))
}

fn check_credentials(
    ctx: &Context<'_>,
    user: Option<&[u8]>,
    password: &[u8],
) -> Result<(), CommandError> {
    let user_ok = user.is_none_or(|user| user == b"default");
    let password_ok = ctx
        .shared
        .config
        .requirepass
        .as_ref()
        .is_none_or(|expected| same_secret(expected.as_bytes(), password));
    if user_ok && password_ok {
        Ok(())
    } else {
        Err(CommandError::WrongPass)
    }
}

/// Compares without stopping at the first difference, so response times do not reveal
/// how much of a guessed password was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// A valid client name (printable ASCII, no spaces), or `None` for the empty name, which
/// clears it.
pub(super) fn client_name(name: Bytes) -> Result<Option<Bytes>, CommandError> {
    if !name.iter().all(|b| (b'!'..=b'~').contains(b)) {
        return Err(CommandError::BadClientName);
    }
    Ok((!name.is_empty()).then_some(name))
}

#[cfg(test)]
mod tests {
    use crate::cmd::tests::Harness;
    use crate::config::Config;

    fn with_password() -> Harness {
        Harness::new(Config {
            requirepass: Some("sekret".into()),
            ..Config::default()
        })
    }

    #[tokio::test]
    async fn auth_flow() {
        let mut h = with_password();
        assert_eq!(h.wire(&["ping"]), "-NOAUTH Authentication required.\r\n");
        let wrongpass = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";
        assert_eq!(h.wire(&["auth", "nope"]), wrongpass);
        assert_eq!(h.wire(&["auth", "bob", "sekret"]), wrongpass);
        assert_eq!(h.wire(&["auth", "a", "b", "c"]), "-ERR syntax error\r\n");
        assert!(
            h.wire(&["hello", "2"])
                .starts_with("-NOAUTH HELLO must be called")
        );
        assert_eq!(h.wire(&["auth", "default", "sekret"]), "+OK\r\n");
        assert_eq!(h.wire(&["ping", "hi"]), "$2\r\nhi\r\n");
    }

    #[tokio::test]
    async fn auth_without_password_configured() {
        let mut h = Harness::new(Config::default());
        assert!(
            h.wire(&["auth", "x"])
                .starts_with("-ERR AUTH <password> called without")
        );
        assert_eq!(h.wire(&["auth", "default", "anything"]), "+OK\r\n");
    }

    #[tokio::test]
    async fn hello() {
        let mut h = with_password();
        assert_eq!(
            h.wire(&["hello", "3"]),
            "-NOPROTO unsupported protocol version\r\n"
        );
        assert_eq!(
            h.wire(&["hello", "x"]),
            "-ERR Protocol version is not an integer or out of range\r\n"
        );
        assert_eq!(
            h.wire(&["hello", "2", "auth", "default"]),
            "-ERR Syntax error in HELLO option 'auth'\r\n"
        );
        let reply = h.wire(&["hello", "2", "AUTH", "default", "sekret", "SETNAME", "me"]);
        assert!(reply.starts_with("*14\r\n$6\r\nserver\r\n"), "{reply}");
        assert_eq!(h.wire(&["client", "getname"]), "$2\r\nme\r\n");
    }

    #[tokio::test]
    async fn select_and_ping() {
        let mut h = Harness::new(Config::default());
        assert_eq!(h.wire(&["select", "0"]), "+OK\r\n");
        assert_eq!(
            h.wire(&["select", "1"]),
            "-ERR DB index is out of range\r\n"
        );
        assert_eq!(
            h.wire(&["ping", "a", "b"]),
            "-ERR wrong number of arguments for 'ping' command\r\n"
        );
        assert_eq!(h.wire(&["PING"]), "+PONG\r\n");
    }
}
