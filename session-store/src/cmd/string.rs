//! String commands: GET, SET and its older forms (SETEX, PSETEX, SETNX), MGET, GETDEL and
//! the INCR family.

use std::mem::discriminant;

use redis_protocol::resp2::types::BytesFrame;

use super::expiry::{self, Base, Unit};
use super::parse::{Parse, option};
use super::{Context, bulk, integer, ok};
use crate::db::{SetCondition, SetTtl};
use crate::error::CommandError;

pub(super) fn get(p: &mut Parse, ctx: &mut Context<'_>) -> Result<BytesFrame, CommandError> {
    let key = p.bytes()?;
    Ok(ctx.db.get(&key).map_or(BytesFrame::Null, bulk))
}

/// `SET key value [NX | XX | IFEQ value | IFNE value] [GET] [EX s | PX ms | EXAT s |
/// PXAT ms | KEEPTTL]`
///
/// IFEQ and IFNE as Redis 8.4 documents them (IFEQ also as Valkey 8.1 has it): IFEQ
/// writes only over an existing value equal to the one given (a missing key is not
/// created), IFNE unless the existing value equals it (a missing key is created). Not
/// written: nil, or with GET the old value all the same. The conditions exclude each
/// other; naming two is a syntax error. Only strings are stored here, so the WRONGTYPE
/// Redis answers for IFEQ over a list or hash cannot arise.
pub(super) fn set(p: &mut Parse, ctx: &mut Context<'_>) -> Result<BytesFrame, CommandError> {
    let key = p.bytes()?;
    let value = p.bytes()?;
    let mut condition = SetCondition::Always;
    let mut get = false;
    let mut keep_ttl = false;
    let mut expire = None;
    // All options are read before the time is parsed: a bad option is a syntax error
    // even when the time is not a number, as in Redis.
    while let Some(arg) = p.next() {
        let opt = option(&arg);
        match opt.as_str() {
            "NX" | "XX" | "IFEQ" | "IFNE" => {
                let next = match opt.as_str() {
                    "NX" => SetCondition::IfMissing,
                    "XX" => SetCondition::IfExists,
                    "IFEQ" => SetCondition::IfEqual(p.bytes()?),
                    _ => SetCondition::IfNotEqual(p.bytes()?),
                };
                // Repeating one condition is accepted, as Redis accepts `NX NX`; a
                // repeated IFEQ or IFNE compares with the last value given.
                if condition != SetCondition::Always
                    && discriminant(&condition) != discriminant(&next)
                {
                    return Err(CommandError::Syntax);
                }
                condition = next;
            }
            "GET" => get = true,
            "KEEPTTL" if expire.is_none() => keep_ttl = true,
            "EX" | "PX" | "EXAT" | "PXAT" if !keep_ttl => {
                let unit = if opt.starts_with('E') {
                    Unit::Seconds
                } else {
                    Unit::Millis
                };
                let base = if opt.ends_with("AT") {
                    Base::Absolute
                } else {
                    Base::Relative
                };
                // The same option again is accepted and the last value wins, as in
                // Redis; two different ones are a syntax error.
                if expire
                    .as_ref()
                    .is_some_and(|(u, b, _)| (*u, *b) != (unit, base))
                {
                    return Err(CommandError::Syntax);
                }
                expire = Some((unit, base, p.bytes()?));
            }
            _ => return Err(CommandError::Syntax),
        }
    }
    let ttl = match expire {
        Some((unit, base, raw)) => {
            let raw = crate::number::parse_i64(&raw).ok_or(CommandError::NotInteger)?;
            SetTtl::Expire(expiry::for_set(raw, unit, base, "set")?)
        }
        None if keep_ttl => SetTtl::Keep,
        None => SetTtl::Clear,
    };
    let outcome = ctx.db.set(&key, &value, condition, ttl);
    Ok(match (get, outcome.written) {
        (true, _) => outcome.previous.map_or(BytesFrame::Null, bulk),
        (false, true) => ok(),
        (false, false) => BytesFrame::Null,
    })
}

/// `SETEX key seconds value`: what many clients (the `redis` crate's `set_ex` among them)
/// send for SET with EX.
pub(super) fn setex(p: &mut Parse, ctx: &mut Context<'_>) -> Result<BytesFrame, CommandError> {
    set_with_ttl(p, ctx, Unit::Seconds, "setex")
}

/// `PSETEX key milliseconds value`.
pub(super) fn psetex(p: &mut Parse, ctx: &mut Context<'_>) -> Result<BytesFrame, CommandError> {
    set_with_ttl(p, ctx, Unit::Millis, "psetex")
}

fn set_with_ttl(
    p: &mut Parse,
    ctx: &mut Context<'_>,
    unit: Unit,
    command: &'static str,
) -> Result<BytesFrame, CommandError> {
    let key = p.bytes()?;
    let raw = p.integer()?;
    let value = p.bytes()?;
    let deadline = expiry::for_set(raw, unit, Base::Relative, command)?;
    ctx.db
        .set(&key, &value, SetCondition::Always, SetTtl::Expire(deadline));
    Ok(ok())
}

/// `SETNX key value`: 1 if it was set, 0 if the key existed.
pub(super) fn setnx(p: &mut Parse, ctx: &mut Context<'_>) -> Result<BytesFrame, CommandError> {
    let key = p.bytes()?;
    let value = p.bytes()?;
    let outcome = ctx
        .db
        .set(&key, &value, SetCondition::IfMissing, SetTtl::Clear);
    Ok(integer(i64::from(outcome.written)))
}

/// `MGET key [key ...]`: nil for each missing key.
pub(super) fn mget(p: &mut Parse, ctx: &mut Context<'_>) -> Result<BytesFrame, CommandError> {
    let mut values = Vec::new();
    while let Some(key) = p.next() {
        values.push(ctx.db.get(&key).map_or(BytesFrame::Null, bulk));
    }
    Ok(BytesFrame::Array(values))
}

/// `GETDEL key`: the value, and the key is gone.
pub(super) fn getdel(p: &mut Parse, ctx: &mut Context<'_>) -> Result<BytesFrame, CommandError> {
    let key = p.bytes()?;
    Ok(ctx.db.take(&key).map_or(BytesFrame::Null, bulk))
}

pub(super) fn incr(p: &mut Parse, ctx: &mut Context<'_>) -> Result<BytesFrame, CommandError> {
    incr_by(p, ctx, 1)
}

pub(super) fn decr(p: &mut Parse, ctx: &mut Context<'_>) -> Result<BytesFrame, CommandError> {
    incr_by(p, ctx, -1)
}

pub(super) fn incrby(p: &mut Parse, ctx: &mut Context<'_>) -> Result<BytesFrame, CommandError> {
    let key = p.bytes()?;
    let delta = p.integer()?;
    Ok(integer(ctx.db.incr_by(&key, delta)?))
}

pub(super) fn decrby(p: &mut Parse, ctx: &mut Context<'_>) -> Result<BytesFrame, CommandError> {
    let key = p.bytes()?;
    let delta = p.integer()?;
    let delta = delta.checked_neg().ok_or(CommandError::DecrementOverflow)?;
    Ok(integer(ctx.db.incr_by(&key, delta)?))
}

fn incr_by(p: &mut Parse, ctx: &mut Context<'_>, delta: i64) -> Result<BytesFrame, CommandError> {
    let key = p.bytes()?;
    Ok(integer(ctx.db.incr_by(&key, delta)?))
}

#[cfg(test)]
mod tests {
    use crate::cmd::tests::Harness;
    use crate::config::Config;

    #[tokio::test]
    async fn set_options() {
        let mut h = Harness::new(Config::default());
        assert_eq!(h.wire(&["set", "k", "v"]), "+OK\r\n");
        assert_eq!(h.wire(&["set", "k", "w", "nx"]), "$-1\r\n");
        assert_eq!(h.wire(&["set", "k", "w", "NX", "GET"]), "$1\r\nv\r\n");
        assert_eq!(h.wire(&["set", "k", "w", "xx", "get"]), "$1\r\nv\r\n");
        assert_eq!(h.wire(&["get", "k"]), "$1\r\nw\r\n");
        assert_eq!(h.wire(&["set", "n", "1", "xx"]), "$-1\r\n");
        assert_eq!(
            h.wire(&["set", "k", "v", "ex", "10", "px", "10"]),
            "-ERR syntax error\r\n"
        );
        assert_eq!(
            h.wire(&["set", "k", "v", "nx", "xx"]),
            "-ERR syntax error\r\n"
        );
        assert_eq!(
            h.wire(&["set", "k", "v", "keepttl", "ex", "1"]),
            "-ERR syntax error\r\n"
        );
        assert_eq!(h.wire(&["set", "k", "v", "ex"]), "-ERR syntax error\r\n");
        assert_eq!(
            h.wire(&["set", "k", "v", "ex", "abc"]),
            "-ERR value is not an integer or out of range\r\n"
        );
        assert_eq!(
            h.wire(&["set", "k", "v", "ex", "0"]),
            "-ERR invalid expire time in 'set' command\r\n"
        );
        assert_eq!(
            h.wire(&["set", "k", "v", "px", "9223372036854775807"]),
            "-ERR invalid expire time in 'set' command\r\n"
        );
        assert_eq!(h.wire(&["set", "k", "v", "exat", "1"]), "+OK\r\n");
        assert_eq!(h.wire(&["get", "k"]), "$-1\r\n");
        assert_eq!(h.wire(&["set", "k", "v", "ex", "100"]), "+OK\r\n");
        assert_eq!(h.wire(&["ttl", "k"]), ":100\r\n");
        assert_eq!(h.wire(&["set", "k", "v2", "keepttl"]), "+OK\r\n");
        assert_eq!(h.wire(&["ttl", "k"]), ":100\r\n");
    }

    #[tokio::test]
    async fn set_ifeq_writes_only_over_an_equal_value() {
        let mut h = Harness::new(Config::default());
        h.wire(&["set", "k", "v1"]);
        assert_eq!(
            h.wire(&["set", "k", "v2", "ifeq", "v1", "ex", "100"]),
            "+OK\r\n"
        );
        assert_eq!(h.wire(&["get", "k"]), "$2\r\nv2\r\n");
        assert_eq!(h.wire(&["ttl", "k"]), ":100\r\n");
        // Compared byte for byte: another value, or the same in another case, is refused.
        assert_eq!(h.wire(&["set", "k", "v3", "IFEQ", "v1"]), "$-1\r\n");
        assert_eq!(h.wire(&["set", "k", "v3", "IFEQ", "V2"]), "$-1\r\n");
        assert_eq!(h.wire(&["get", "k"]), "$2\r\nv2\r\n");
        assert_eq!(h.wire(&["ttl", "k"]), ":100\r\n");
        // A missing key is not created.
        assert_eq!(h.wire(&["set", "n", "v", "ifeq", ""]), "$-1\r\n");
        assert_eq!(h.wire(&["exists", "n"]), ":0\r\n");
        // GET answers the old value whether or not the write happened.
        assert_eq!(
            h.wire(&["set", "k", "v3", "ifeq", "x", "get"]),
            "$2\r\nv2\r\n"
        );
        assert_eq!(
            h.wire(&["set", "k", "v3", "get", "ifeq", "v2"]),
            "$2\r\nv2\r\n"
        );
        assert_eq!(h.wire(&["get", "k"]), "$2\r\nv3\r\n");
        assert_eq!(h.wire(&["set", "n", "v", "ifeq", "x", "get"]), "$-1\r\n");
        assert_eq!(h.wire(&["exists", "n"]), ":0\r\n");
        // Without an expiry option the write clears the TTL, as any SET; KEEPTTL keeps it.
        h.wire(&["expire", "k", "100"]);
        assert_eq!(
            h.wire(&["set", "k", "v4", "ifeq", "v3", "keepttl"]),
            "+OK\r\n"
        );
        assert_eq!(h.wire(&["ttl", "k"]), ":100\r\n");
        assert_eq!(h.wire(&["set", "k", "v5", "ifeq", "v4"]), "+OK\r\n");
        assert_eq!(h.wire(&["ttl", "k"]), ":-1\r\n");
    }

    #[tokio::test]
    async fn set_ifne_writes_unless_the_value_is_equal() {
        let mut h = Harness::new(Config::default());
        h.wire(&["set", "k", "v1"]);
        assert_eq!(h.wire(&["set", "k", "v2", "ifne", "v1"]), "$-1\r\n");
        assert_eq!(h.wire(&["get", "k"]), "$2\r\nv1\r\n");
        assert_eq!(
            h.wire(&["set", "k", "v2", "ifne", "x", "px", "100000"]),
            "+OK\r\n"
        );
        assert_eq!(h.wire(&["get", "k"]), "$2\r\nv2\r\n");
        assert_eq!(h.wire(&["ttl", "k"]), ":100\r\n");
        // A missing key is created.
        assert_eq!(h.wire(&["set", "n", "v", "ifne", "x"]), "+OK\r\n");
        assert_eq!(h.wire(&["get", "n"]), "$1\r\nv\r\n");
        assert_eq!(h.wire(&["set", "m", "v", "ifne", "x", "get"]), "$-1\r\n");
        assert_eq!(h.wire(&["get", "m"]), "$1\r\nv\r\n");
        assert_eq!(
            h.wire(&["set", "m", "w", "ifne", "v", "get"]),
            "$1\r\nv\r\n"
        );
        assert_eq!(h.wire(&["get", "m"]), "$1\r\nv\r\n");
    }

    #[tokio::test]
    async fn set_conditions_exclude_each_other() {
        let mut h = Harness::new(Config::default());
        h.wire(&["set", "k", "v"]);
        for args in [
            &["set", "k", "w", "ifeq", "v", "xx"][..],
            &["set", "k", "w", "ifeq", "v", "nx"],
            &["set", "k", "w", "nx", "ifeq", "v"],
            &["set", "k", "w", "xx", "ifne", "v"],
            &["set", "k", "w", "ifeq", "v", "ifne", "x"],
            &["set", "k", "w", "ifne", "x", "ifeq", "v"],
            &["set", "k", "w", "ifeq"],
            &["set", "k", "w", "ifne"],
            &["set", "k", "w", "ifeq", "v", "ex"],
        ] {
            assert_eq!(h.wire(args), "-ERR syntax error\r\n", "{args:?}");
        }
        // Nothing was written by any of them.
        assert_eq!(h.wire(&["get", "k"]), "$1\r\nv\r\n");
        // A bad expiry is reported after the options parse, as for any SET.
        assert_eq!(
            h.wire(&["set", "k", "w", "ifeq", "v", "ex", "abc"]),
            "-ERR value is not an integer or out of range\r\n"
        );
        assert_eq!(h.wire(&["get", "k"]), "$1\r\nv\r\n");
    }

    #[tokio::test]
    async fn older_set_forms_mget_getdel() {
        let mut h = Harness::new(Config::default());
        assert_eq!(h.wire(&["setex", "k", "100", "v"]), "+OK\r\n");
        assert_eq!(h.wire(&["ttl", "k"]), ":100\r\n");
        assert_eq!(
            h.wire(&["setex", "k", "0", "v"]),
            "-ERR invalid expire time in 'setex' command\r\n"
        );
        assert_eq!(
            h.wire(&["psetex", "k", "x", "v"]),
            "-ERR value is not an integer or out of range\r\n"
        );
        assert_eq!(h.wire(&["psetex", "p", "100000", "v"]), "+OK\r\n");
        assert_eq!(h.wire(&["ttl", "p"]), ":100\r\n");
        assert_eq!(h.wire(&["setnx", "k", "w"]), ":0\r\n");
        assert_eq!(h.wire(&["setnx", "n", "w"]), ":1\r\n");
        assert_eq!(h.wire(&["ttl", "n"]), ":-1\r\n");
        assert_eq!(
            h.wire(&["mget", "k", "missing", "n"]),
            "*3\r\n$1\r\nv\r\n$-1\r\n$1\r\nw\r\n"
        );
        assert_eq!(h.wire(&["getdel", "k"]), "$1\r\nv\r\n");
        assert_eq!(h.wire(&["getdel", "k"]), "$-1\r\n");
    }

    #[tokio::test]
    async fn incr_family() {
        let mut h = Harness::new(Config::default());
        assert_eq!(h.wire(&["incr", "n"]), ":1\r\n");
        assert_eq!(h.wire(&["incrby", "n", "10"]), ":11\r\n");
        assert_eq!(h.wire(&["decrby", "n", "20"]), ":-9\r\n");
        assert_eq!(h.wire(&["decr", "n"]), ":-10\r\n");
        assert_eq!(
            h.wire(&["incrby", "n", "+1"]),
            "-ERR value is not an integer or out of range\r\n"
        );
        assert_eq!(
            h.wire(&["decrby", "n", "-9223372036854775808"]),
            "-ERR decrement would overflow\r\n"
        );
        h.wire(&["set", "s", "1.5"]);
        assert_eq!(
            h.wire(&["incr", "s"]),
            "-ERR value is not an integer or out of range\r\n"
        );
    }
}
