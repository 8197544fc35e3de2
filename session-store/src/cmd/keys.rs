//! Keyspace commands: DEL, EXISTS, EXPIRE / PEXPIRE, TTL / PTTL.

use redis_protocol::resp2::types::BytesFrame;

use super::expiry::{self, Unit};
use super::parse::{Parse, option};
use super::{Context, integer};
use crate::db::{ExpireCondition, Ttl};
use crate::error::CommandError;

pub(super) fn del(p: &mut Parse, ctx: &mut Context<'_>) -> Result<BytesFrame, CommandError> {
    Ok(integer(ctx.db.del(&p.rest())))
}

pub(super) fn exists(p: &mut Parse, ctx: &mut Context<'_>) -> Result<BytesFrame, CommandError> {
    Ok(integer(ctx.db.exists(&p.rest())))
}

pub(super) fn expire(p: &mut Parse, ctx: &mut Context<'_>) -> Result<BytesFrame, CommandError> {
    expire_in(p, ctx, Unit::Seconds, "expire")
}

pub(super) fn pexpire(p: &mut Parse, ctx: &mut Context<'_>) -> Result<BytesFrame, CommandError> {
    expire_in(p, ctx, Unit::Millis, "pexpire")
}

/// `EXPIRE key seconds [NX | XX | GT | LT]`: 1 if the deadline was set (or the key deleted
/// by a non-positive time), 0 if the key is missing or the condition failed.
fn expire_in(
    p: &mut Parse,
    ctx: &mut Context<'_>,
    unit: Unit,
    command: &'static str,
) -> Result<BytesFrame, CommandError> {
    let key = p.bytes()?;
    let time = p.bytes()?;
    let mut condition = ExpireCondition::default();
    while let Some(arg) = p.next() {
        match option(&arg).as_str() {
            "NX" => condition.nx = true,
            "XX" => condition.xx = true,
            "GT" => condition.gt = true,
            "LT" => condition.lt = true,
            _ => {
                return Err(CommandError::UnsupportedOption(
                    String::from_utf8_lossy(&arg).into_owned(),
                ));
            }
        }
    }
    if condition.nx && (condition.xx || condition.gt || condition.lt) {
        return Err(CommandError::ExpireNxConflict);
    }
    if condition.gt && condition.lt {
        return Err(CommandError::ExpireGtLtConflict);
    }
    let time = crate::number::parse_i64(&time).ok_or(CommandError::NotInteger)?;
    let deadline = expiry::for_expire(time, unit, command)?;
    Ok(integer(i64::from(ctx.db.expire(&key, deadline, condition))))
}

pub(super) fn ttl(p: &mut Parse, ctx: &mut Context<'_>) -> Result<BytesFrame, CommandError> {
    remaining(p, ctx, Unit::Seconds)
}

pub(super) fn pttl(p: &mut Parse, ctx: &mut Context<'_>) -> Result<BytesFrame, CommandError> {
    remaining(p, ctx, Unit::Millis)
}

/// -2 for a missing key, -1 for a key without deadline; seconds are rounded like Redis.
fn remaining(p: &mut Parse, ctx: &mut Context<'_>, unit: Unit) -> Result<BytesFrame, CommandError> {
    let key = p.bytes()?;
    Ok(match ctx.db.ttl(&key) {
        Ttl::Missing => integer(-2),
        Ttl::Persistent => integer(-1),
        Ttl::Remaining(left) => match unit {
            Unit::Millis => integer(left.as_millis()),
            Unit::Seconds => integer((left.as_millis() + 500) / 1000),
        },
    })
}

#[cfg(test)]
mod tests {
    use crate::cmd::tests::Harness;
    use crate::config::Config;

    #[tokio::test]
    async fn del_exists_ttl() {
        let mut h = Harness::new(Config::default());
        h.wire(&["set", "a", "1"]);
        h.wire(&["set", "b", "1"]);
        assert_eq!(h.wire(&["exists", "a", "a", "b", "c"]), ":3\r\n");
        assert_eq!(h.wire(&["ttl", "a"]), ":-1\r\n");
        assert_eq!(h.wire(&["pttl", "c"]), ":-2\r\n");
        assert_eq!(h.wire(&["del", "a", "b", "c", "a"]), ":2\r\n");
        assert_eq!(h.wire(&["ttl", "a"]), ":-2\r\n");
    }

    #[tokio::test]
    async fn expire_options_and_errors() {
        let mut h = Harness::new(Config::default());
        assert_eq!(h.wire(&["expire", "k", "10"]), ":0\r\n");
        h.wire(&["set", "k", "v"]);
        assert_eq!(h.wire(&["expire", "k", "10", "xx"]), ":0\r\n");
        assert_eq!(h.wire(&["expire", "k", "10", "nx"]), ":1\r\n");
        assert_eq!(h.wire(&["expire", "k", "5", "gt"]), ":0\r\n");
        assert_eq!(h.wire(&["pexpire", "k", "20000", "gt"]), ":1\r\n");
        assert_eq!(h.wire(&["ttl", "k"]), ":20\r\n");
        assert_eq!(
            h.wire(&["expire", "k", "10", "nx", "xx"]),
            "-ERR NX and XX, GT or LT options at the same time are not compatible\r\n"
        );
        assert_eq!(
            h.wire(&["expire", "k", "10", "gt", "lt"]),
            "-ERR GT and LT options at the same time are not compatible\r\n"
        );
        assert_eq!(
            h.wire(&["expire", "k", "10", "foo"]),
            "-ERR Unsupported option foo\r\n"
        );
        assert_eq!(
            h.wire(&["expire", "k", "x"]),
            "-ERR value is not an integer or out of range\r\n"
        );
        assert_eq!(
            h.wire(&["expire", "k", "99999999999999999"]),
            "-ERR invalid expire time in 'expire' command\r\n"
        );
        assert_eq!(h.wire(&["expire", "k", "-1"]), ":1\r\n");
        assert_eq!(h.wire(&["exists", "k"]), ":0\r\n");
    }
}
