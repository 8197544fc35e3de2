//! Transactions: MULTI, EXEC, DISCARD, WATCH, UNWATCH, with Redis 7's rules.
//!
//! Inside MULTI, [`super::execute`] queues commands instead of running them; EXEC runs
//! the queue while the keyspace stays locked (the caller holds the lock for the whole
//! command), so no other client and no expiry cycle sees the transaction half done.
//! WATCH is optimistic locking: EXEC answers a null array and runs nothing if a watched
//! key changed since it was watched, by any client, this one included.

use bytes::Bytes;
use redis_protocol::resp2::types::BytesFrame;

use super::parse::Parse;
use super::{Context, error, ok};
use crate::client::Multi;
use crate::codec::Reply;
use crate::error::CommandError;

/// Most commands one transaction may queue, and their bytes: without a bound, one
/// connection could make the store hold any amount (Redis bounds it only by memory).
pub(super) const MAX_QUEUED: usize = 100_000;
pub(super) const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;
/// Most keys one connection may watch at once.
const MAX_WATCHED: usize = 10_000;

pub(super) fn multi(_p: &mut Parse, ctx: &mut Context<'_>) -> Result<BytesFrame, CommandError> {
    if ctx.client.multi.is_some() {
        return Err(CommandError::NestedMulti);
    }
    ctx.client.multi = Some(Multi::default());
    Ok(ok())
}

/// Runs the queued commands and answers with their replies; a command that fails at run
/// time (INCR of a non-number) shows as an error in the array and the others still run,
/// as in Redis, which has no rollback.
pub(super) fn exec(ctx: &mut Context<'_>) -> Result<Reply, CommandError> {
    let multi = ctx
        .client
        .multi
        .take()
        .ok_or(CommandError::ExecWithoutMulti)?;
    let intact = ctx.client.watches.intact(ctx.db);
    end(ctx);
    if multi.refused {
        return Err(CommandError::ExecAbort);
    }
    if !intact {
        return Ok(Reply::NullArray);
    }
    let replies = multi
        .queued
        .into_iter()
        .map(|(run, args)| run(&mut Parse::new(args), ctx).unwrap_or_else(|e| error(&e)))
        .collect();
    Ok(BytesFrame::Array(replies).into())
}

pub(super) fn discard(_p: &mut Parse, ctx: &mut Context<'_>) -> Result<BytesFrame, CommandError> {
    if ctx.client.multi.is_none() {
        return Err(CommandError::DiscardWithoutMulti);
    }
    end(ctx);
    Ok(ok())
}

/// `WATCH key [key ...]`. Not allowed inside MULTI: the transaction's commands are
/// already chosen, so a watch taken now could not protect the reads they were based on.
pub(super) fn watch(p: &mut Parse, ctx: &mut Context<'_>) -> Result<BytesFrame, CommandError> {
    if ctx.client.multi.is_some() {
        return Err(CommandError::WatchInsideMulti);
    }
    let keys = p.rest();
    if ctx.client.watches.len() + keys.len() > MAX_WATCHED {
        return Err(CommandError::TooManyWatched(MAX_WATCHED));
    }
    for key in keys {
        ctx.client.watches.add(ctx.db, key);
    }
    Ok(ok())
}

/// Queued like any command inside MULTI, where it only takes effect at EXEC, after the
/// watches were checked, as in Redis.
pub(super) fn unwatch(_p: &mut Parse, ctx: &mut Context<'_>) -> Result<BytesFrame, CommandError> {
    ctx.client.watches.clear(ctx.db);
    Ok(ok())
}

/// What Redis does with a command refused before it could run or be queued (unknown,
/// wrong arity, not authenticated). Inside MULTI the transaction is doomed: it lacks a
/// command the client meant it to have. A refused EXEC ends the transaction, and the
/// watches, at once.
pub(super) fn refused(args: &[Bytes], e: CommandError, ctx: &mut Context<'_>) -> CommandError {
    if args
        .first()
        .is_some_and(|name| name.eq_ignore_ascii_case(b"exec"))
    {
        end(ctx);
        return CommandError::ExecRefused(Box::new(e));
    }
    if let Some(multi) = &mut ctx.client.multi {
        multi.refused = true;
    }
    e
}

/// Leaves the transaction, if any, and ends all watches (Redis' `discardTransaction`).
fn end(ctx: &mut Context<'_>) {
    ctx.client.multi = None;
    ctx.client.watches.clear(ctx.db);
}

#[cfg(test)]
mod tests {
    use crate::cmd::tests::Harness;
    use crate::config::Config;

    const EXECABORT: &str = "-EXECABORT Transaction discarded because of previous errors.\r\n";

    #[tokio::test]
    async fn transactions_and_watches_are_bounded() {
        let mut h = Harness::new(Config::default());
        assert_eq!(h.wire(&["multi"]), "+OK\r\n");
        let big = "x".repeat(1024 * 1024);
        for _ in 0..super::MAX_QUEUED_BYTES / big.len() - 1 {
            assert_eq!(h.wire(&["set", "k", &big]), "+QUEUED\r\n");
        }
        let refused = h.wire(&["set", "k", &big]);
        assert!(
            refused.starts_with("-ERR this transaction holds too much"),
            "{refused}"
        );
        assert_eq!(h.wire(&["exec"]), EXECABORT);
        let keys: Vec<String> = (0..=super::MAX_WATCHED).map(|i| format!("k{i}")).collect();
        let mut watch = vec!["watch"];
        watch.extend(keys.iter().map(String::as_str));
        assert_eq!(
            h.wire(&watch),
            "-ERR too many watched keys on this connection (at most 10000); UNWATCH first\r\n"
        );
        assert_eq!(h.wire(&watch[..watch.len() - 1]), "+OK\r\n");
    }

    #[tokio::test]
    async fn queue_then_exec_with_runtime_errors_in_the_array() {
        let mut h = Harness::new(Config::default());
        assert_eq!(h.wire(&["exec"]), "-ERR EXEC without MULTI\r\n");
        assert_eq!(h.wire(&["discard"]), "-ERR DISCARD without MULTI\r\n");
        assert_eq!(h.wire(&["multi"]), "+OK\r\n");
        assert_eq!(h.wire(&["multi"]), "-ERR MULTI calls can not be nested\r\n");
        assert_eq!(
            h.wire(&["watch", "k"]),
            "-ERR WATCH inside MULTI is not allowed\r\n"
        );
        assert_eq!(h.wire(&["set", "s", "x"]), "+QUEUED\r\n");
        assert_eq!(h.wire(&["incr", "s"]), "+QUEUED\r\n");
        assert_eq!(h.wire(&["get", "s"]), "+QUEUED\r\n");
        assert_eq!(h.wire(&["get", "s"]), "+QUEUED\r\n");
        // Nothing ran yet.
        let mut other = h.connect(2);
        assert_eq!(h.wire_as(&mut other, &["exists", "s"]), ":0\r\n");
        assert_eq!(
            h.wire(&["exec"]),
            "*4\r\n+OK\r\n-ERR value is not an integer or out of range\r\n$1\r\nx\r\n$1\r\nx\r\n"
        );
        assert_eq!(h.wire(&["exec"]), "-ERR EXEC without MULTI\r\n");
    }

    #[tokio::test]
    async fn a_refused_command_aborts_the_transaction() {
        let mut h = Harness::new(Config::default());
        h.wire(&["multi"]);
        h.wire(&["set", "k", "v"]);
        assert!(h.wire(&["nope"]).starts_with("-ERR unknown command 'nope'"));
        assert_eq!(h.wire(&["exec"]), EXECABORT);
        assert_eq!(h.wire(&["get", "k"]), "$-1\r\n");
        h.wire(&["multi"]);
        h.wire(&["set"]);
        assert_eq!(h.wire(&["discard"]), "+OK\r\n");
        h.wire(&["multi"]);
        assert_eq!(h.wire(&["exec"]), "*0\r\n", "DISCARD cleared the flag");
        h.wire(&["multi"]);
        assert_eq!(
            h.wire(&["exec", "now"]),
            "-EXECABORT Transaction discarded because of: wrong number of arguments for 'exec' command\r\n"
        );
        assert_eq!(h.wire(&["exec"]), "-ERR EXEC without MULTI\r\n");
        h.wire(&["multi"]);
        assert_eq!(h.wire(&["quit"]), "Quit", "QUIT is not queued");
    }

    #[tokio::test]
    async fn watch_refuses_exec_after_any_change() {
        let mut h = Harness::new(Config::default());
        let mut other = h.connect(2);
        h.wire(&["set", "k", "1"]);
        assert_eq!(h.wire(&["watch", "k", "missing"]), "+OK\r\n");
        // Reads and writes that change nothing do not count.
        h.wire_as(&mut other, &["get", "k"]);
        h.wire_as(&mut other, &["set", "k", "2", "nx"]);
        h.wire_as(&mut other, &["del", "missing"]);
        h.wire(&["multi"]);
        h.wire(&["incr", "k"]);
        assert_eq!(h.wire(&["exec"]), "*1\r\n:2\r\n");

        h.wire(&["watch", "k"]);
        h.wire(&["multi"]);
        h.wire(&["incr", "k"]);
        h.wire_as(&mut other, &["set", "k", "10"]);
        assert_eq!(h.wire(&["exec"]), "*-1\r\n");
        assert_eq!(h.wire(&["get", "k"]), "$2\r\n10\r\n");

        // Its own change counts too; UNWATCH forgets.
        h.wire(&["watch", "k"]);
        h.wire(&["expire", "k", "100"]);
        h.wire(&["multi"]);
        assert_eq!(h.wire(&["exec"]), "*-1\r\n");
        h.wire(&["watch", "k"]);
        h.wire(&["unwatch"]);
        h.wire_as(&mut other, &["flushdb"]);
        h.wire(&["multi"]);
        assert_eq!(h.wire(&["exec"]), "*0\r\n");
    }
}
