//! Server commands: DBSIZE, FLUSHDB / FLUSHALL, INFO, COMMAND.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use redis_protocol::resp2::types::BytesFrame;

use super::connection::COMPATIBLE_REDIS_VERSION;
use super::parse::{Parse, option};
use super::{Context, bulk, integer, ok};
use crate::error::CommandError;

pub(super) fn dbsize(_p: &mut Parse, ctx: &mut Context<'_>) -> Result<BytesFrame, CommandError> {
    Ok(integer(ctx.db.stats().keys))
}

/// FLUSHDB and FLUSHALL (one database, so the same); ASYNC and SYNC are accepted and
/// both flush at once.
pub(super) fn flush(p: &mut Parse, ctx: &mut Context<'_>) -> Result<BytesFrame, CommandError> {
    if let Some(mode) = p.next()
        && !matches!(option(&mode).as_str(), "ASYNC" | "SYNC")
    {
        return Err(CommandError::Syntax);
    }
    p.finish()?;
    ctx.db.flush();
    Ok(ok())
}

const SECTIONS: [&str; 5] = ["server", "clients", "memory", "stats", "keyspace"];

/// `INFO [section ...]`: Redis' `field:value` text, with the fields monitoring tools read
/// most. Unknown sections are skipped, as in Redis.
pub(super) fn info(p: &mut Parse, ctx: &mut Context<'_>) -> Result<BytesFrame, CommandError> {
    let asked: Vec<String> = p
        .rest()
        .iter()
        .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase())
        .collect();
    let all = asked.is_empty()
        || asked
            .iter()
            .any(|s| matches!(s.as_str(), "all" | "default" | "everything"));
    let mut text = String::new();
    for section in SECTIONS {
        if !all && !asked.iter().any(|s| s == section) {
            continue;
        }
        if !text.is_empty() {
            text.push_str("\r\n");
        }
        write_section(&mut text, section, ctx);
    }
    Ok(bulk(text))
}

fn write_section(out: &mut String, section: &str, ctx: &Context<'_>) {
    let shared = ctx.shared;
    let db = ctx.db.stats();
    let uptime = shared.started.elapsed().as_secs();
    let lines: Vec<(&str, String)> = match section {
        "server" => vec![
            ("redis_version", COMPATIBLE_REDIS_VERSION.to_string()),
            ("server_name", "session-store".to_string()),
            ("server_version", env!("CARGO_PKG_VERSION").to_string()),
            ("redis_mode", "standalone".to_string()),
            ("arch_bits", (usize::BITS).to_string()),
            ("process_id", std::process::id().to_string()),
            ("tcp_port", shared.port.to_string()),
            ("uptime_in_seconds", uptime.to_string()),
            ("uptime_in_days", (uptime / 86_400).to_string()),
            ("hz", shared.config.expiry_hz.to_string()),
        ],
        "clients" => vec![
            (
                "connected_clients",
                shared.connected_clients.load(Ordering::Relaxed).to_string(),
            ),
            ("maxclients", shared.config.max_connections.to_string()),
        ],
        "memory" => vec![("used_memory", db.used_bytes.to_string())],
        "stats" => vec![
            (
                "total_connections_received",
                shared.total_connections.load(Ordering::Relaxed).to_string(),
            ),
            (
                "total_commands_processed",
                shared
                    .commands_processed
                    .load(Ordering::Relaxed)
                    .to_string(),
            ),
            ("expired_keys", db.expired_keys.to_string()),
        ],
        // Redis lists only non-empty databases.
        _ if db.keys == 0 => Vec::new(),
        _ => vec![(
            "db0",
            format!("keys={},expires={},avg_ttl=0", db.keys, db.expires),
        )],
    };
    let mut title = section.to_string();
    title[..1].make_ascii_uppercase();
    let _ = write!(out, "# {title}\r\n");
    for (field, value) in lines {
        let _ = write!(out, "{field}:{value}\r\n");
    }
}

/// `COMMAND COUNT` and `HELP`; the rest of introspection is not implemented: `COMMAND`
/// and `COMMAND DOCS` answer with empty lists, which clients such as redis-cli take as
/// "no hints" and carry on. Subcommands were checked before this runs.
pub(super) fn command(p: &mut Parse, _ctx: &mut Context<'_>) -> Result<BytesFrame, CommandError> {
    let Some(sub) = p.next() else {
        return Ok(BytesFrame::Array(Vec::new()));
    };
    Ok(match option(&sub).as_str() {
        "COUNT" => integer(super::command_count()),
        "HELP" => BytesFrame::Array(
            [
                "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "(no subcommand)",
                "    Return an empty list: this server does not describe its commands.",
                "COUNT",
                "    Return the total number of commands in this server.",
                "DOCS [<command-name> ...]",
                "    Return an empty list.",
                "HELP",
                "    Print this help.",
            ]
            .into_iter()
            .map(|line| BytesFrame::SimpleString(line.into()))
            .collect(),
        ),
        _ => BytesFrame::Array(Vec::new()),
    })
}

#[cfg(test)]
mod tests {
    use crate::cmd::tests::Harness;
    use crate::config::Config;

    #[tokio::test]
    async fn info_sections() {
        let mut h = Harness::new(Config::default());
        h.wire(&["set", "a", "1", "ex", "100"]);
        h.wire(&["set", "b", "1"]);
        let all = h.wire(&["info"]);
        for needle in [
            "# Server\r\nredis_version:7.0.0\r\n",
            "server_name:session-store\r\n",
            "tcp_port:7379\r\n",
            "\r\n# Clients\r\nconnected_clients:",
            "# Memory\r\nused_memory:",
            "total_commands_processed:",
            "# Keyspace\r\ndb0:keys=2,expires=1,avg_ttl=0\r\n",
        ] {
            assert!(all.contains(needle), "{needle:?} missing from {all:?}");
        }
        let keyspace = h.wire(&["info", "KEYSPACE"]);
        assert!(keyspace.contains("# Keyspace") && !keyspace.contains("# Server"));
        assert_eq!(h.wire(&["flushall", "async"]), "+OK\r\n");
        assert_eq!(h.wire(&["dbsize"]), ":0\r\n");
        assert_eq!(h.wire(&["flushdb", "now"]), "-ERR syntax error\r\n");
    }

    #[tokio::test]
    async fn command_docs_is_empty() {
        let mut h = Harness::new(Config::default());
        assert_eq!(h.wire(&["command", "docs"]), "*0\r\n");
        assert_eq!(h.wire(&["command"]), "*0\r\n");
    }
}
