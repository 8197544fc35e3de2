//! Commands: a table of what exists, the checks Redis makes before running any command
//! (unknown name, arity, authentication, in that order), queuing inside MULTI, and one
//! file per family.

mod client;
mod connection;
mod expiry;
mod keys;
mod parse;
mod server;
mod string;
mod transaction;

use bytes::Bytes;
use redis_protocol::resp2::types::BytesFrame;

use crate::client::Client;
use crate::codec::Reply;
use crate::db::Keyspace;
use crate::error::CommandError;
use crate::shared::Shared;
use parse::Parse;

/// What a command may read and change. The keyspace is locked for the whole command.
pub(crate) struct Context<'a> {
    pub db: &'a mut Keyspace,
    pub shared: &'a Shared,
    pub client: &'a mut Client,
}

/// What the connection should do after a request.
#[derive(Debug, PartialEq)]
pub(crate) enum Outcome {
    Reply(Reply),
    /// QUIT: reply `+OK`, then close.
    Quit,
    /// Close at once without a reply: the peer is not a Redis client (see `attack`).
    Drop,
}

/// A command's implementation: its arguments after the name, checked for arity.
pub(crate) type Run = fn(&mut Parse, &mut Context<'_>) -> Result<BytesFrame, CommandError>;

/// How a command runs, and so what it does inside MULTI.
enum Handler {
    /// Runs now, or is queued until EXEC inside MULTI.
    Run(Run),
    /// Runs now even inside MULTI: the commands that steer the transaction (MULTI,
    /// DISCARD, WATCH), as in Redis.
    Now(Run),
    /// EXEC, the one command whose reply can be a null array.
    Exec,
    Quit,
    Drop,
}

struct Spec {
    /// Lower case, as Redis names commands in its error messages.
    name: &'static str,
    /// Redis' convention: `n` means exactly `n` words with the name, `-n` at least `n`.
    arity: i32,
    /// Allowed before authentication.
    no_auth: bool,
    handler: Handler,
    /// A container command's subcommands, checked before it runs or is queued.
    subcommands: Option<&'static Subcommands>,
}

/// The subcommands of a container command such as CLIENT: Redis 7 looks each one up, with
/// its own arity, before running or queuing the command, so an unknown subcommand inside
/// MULTI aborts the transaction.
struct Subcommands {
    /// As Redis writes it in "Try CLIENT HELP.".
    command: &'static str,
    /// Each subcommand as Redis names it in errors (`client|setname`) with its arity,
    /// counting both words.
    table: &'static [(&'static str, i32)],
}

const fn spec(name: &'static str, arity: i32, run: Run) -> Spec {
    Spec {
        name,
        arity,
        no_auth: false,
        handler: Handler::Run(run),
        subcommands: None,
    }
}

/// A container command and its subcommands.
const fn container(name: &'static str, run: Run, subcommands: &'static Subcommands) -> Spec {
    Spec {
        subcommands: Some(subcommands),
        ..spec(name, -2, run)
    }
}

const CLIENT: Subcommands = Subcommands {
    command: "CLIENT",
    table: &[
        ("client|setname", 3),
        ("client|getname", 2),
        ("client|id", 2),
        ("client|setinfo", 4),
        ("client|help", 2),
    ],
};

const COMMAND: Subcommands = Subcommands {
    command: "COMMAND",
    table: &[
        ("command|count", 2),
        ("command|docs", -2),
        ("command|help", 2),
    ],
};

/// A command that is not queued inside MULTI.
const fn now(name: &'static str, arity: i32, run: Run) -> Spec {
    Spec {
        handler: Handler::Now(run),
        ..spec(name, arity, run)
    }
}

const COMMANDS: &[Spec] = &[
    spec("get", 2, string::get),
    spec("set", -3, string::set),
    spec("setex", 4, string::setex),
    spec("psetex", 4, string::psetex),
    spec("setnx", 3, string::setnx),
    spec("mget", -2, string::mget),
    spec("getdel", 2, string::getdel),
    spec("incr", 2, string::incr),
    spec("decr", 2, string::decr),
    spec("incrby", 3, string::incrby),
    spec("decrby", 3, string::decrby),
    spec("del", -2, keys::del),
    spec("exists", -2, keys::exists),
    spec("expire", -3, keys::expire),
    spec("pexpire", -3, keys::pexpire),
    spec("ttl", 2, keys::ttl),
    spec("pttl", 2, keys::pttl),
    spec("dbsize", 1, server::dbsize),
    spec("flushdb", -1, server::flush),
    spec("flushall", -1, server::flush),
    spec("info", -1, server::info),
    Spec {
        arity: -1,
        ..container("command", server::command, &COMMAND)
    },
    spec("ping", -1, connection::ping),
    spec("echo", 2, connection::echo),
    spec("select", 2, connection::select),
    container("client", client::client, &CLIENT),
    now("multi", 1, transaction::multi),
    now("discard", 1, transaction::discard),
    now("watch", -2, transaction::watch),
    spec("unwatch", 1, transaction::unwatch),
    Spec {
        name: "exec",
        arity: 1,
        no_auth: false,
        handler: Handler::Exec,
        subcommands: None,
    },
    Spec {
        no_auth: true,
        ..spec("auth", -2, connection::auth)
    },
    Spec {
        no_auth: true,
        ..spec("hello", -1, connection::hello)
    },
    Spec {
        name: "quit",
        arity: -1,
        no_auth: true,
        handler: Handler::Quit,
        subcommands: None,
    },
    // An HTTP request sent to the store arrives as inline commands `POST ...` and
    // `Host: ...`. Redis closes such connections at once (cross-protocol scripting
    // defence); so do we.
    Spec {
        name: "post",
        arity: -1,
        no_auth: true,
        handler: Handler::Drop,
        subcommands: None,
    },
    Spec {
        name: "host:",
        arity: -1,
        no_auth: true,
        handler: Handler::Drop,
        subcommands: None,
    },
];

/// Runs one request (`args[0]` is the command name), or queues it inside MULTI, and says
/// how to answer it.
pub(crate) fn execute(args: Vec<Bytes>, ctx: &mut Context<'_>) -> Outcome {
    let spec = match lookup(&args, ctx.client.authenticated) {
        Ok(spec) => spec,
        Err(e) => return reply(Err(transaction::refused(&args, e, ctx))),
    };
    match spec.handler {
        Handler::Run(run) => match &mut ctx.client.multi {
            Some(multi) => {
                let bytes = args.iter().map(Bytes::len).sum::<usize>();
                if multi.queued.len() >= transaction::MAX_QUEUED
                    || multi.bytes + bytes > transaction::MAX_QUEUED_BYTES
                {
                    multi.refused = true;
                    return reply(Err(CommandError::TransactionTooLarge {
                        commands: transaction::MAX_QUEUED,
                        bytes: transaction::MAX_QUEUED_BYTES,
                    }));
                }
                multi.bytes += bytes;
                multi.queued.push((run, args));
                reply(Ok(BytesFrame::SimpleString(Bytes::from_static(b"QUEUED"))))
            }
            None => reply(run(&mut Parse::new(args), ctx)),
        },
        Handler::Now(run) => reply(run(&mut Parse::new(args), ctx)),
        Handler::Exec => {
            Outcome::Reply(transaction::exec(ctx).unwrap_or_else(|e| error(&e).into()))
        }
        Handler::Quit => Outcome::Quit,
        Handler::Drop => Outcome::Drop,
    }
}

/// The reply to a command that ran (or was refused): its frame, or its error.
fn reply(result: Result<BytesFrame, CommandError>) -> Outcome {
    Outcome::Reply(result.unwrap_or_else(|e| error(&e)).into())
}

/// The commands this server runs, for `COMMAND COUNT` (not the names it only recognises
/// to drop the connection).
fn command_count() -> usize {
    COMMANDS
        .iter()
        .filter(|spec| !matches!(spec.handler, Handler::Drop))
        .count()
}

fn lookup(args: &[Bytes], authenticated: bool) -> Result<&'static Spec, CommandError> {
    let name = args
        .first()
        .map(|n| n.to_ascii_lowercase())
        .unwrap_or_default();
    let spec = COMMANDS
        .iter()
        .find(|spec| spec.name.as_bytes() == name)
        .ok_or_else(|| unknown_command(args))?;
    let argc = i32::try_from(args.len()).unwrap_or(i32::MAX);
    let arity_fits = |arity: i32| (arity > 0 && argc == arity) || (arity < 0 && argc >= -arity);
    if !arity_fits(spec.arity) {
        return Err(CommandError::WrongArity(spec.name));
    }
    if let (Some(subcommands), Some(sub)) = (spec.subcommands, args.get(1)) {
        let sub_lower = sub.to_ascii_lowercase();
        let (name, arity) = subcommands
            .table
            .iter()
            .find(|(name, _)| name.split('|').nth(1).map(str::as_bytes) == Some(&sub_lower[..]))
            .ok_or_else(|| CommandError::UnknownSubcommand {
                command: subcommands.command,
                sub: clip(sub, 128),
            })?;
        if !arity_fits(*arity) {
            return Err(CommandError::WrongArity(name));
        }
    }
    if !authenticated && !spec.no_auth {
        return Err(CommandError::NoAuth);
    }
    Ok(spec)
}

/// Redis' message quotes the name and the first arguments, up to 128 bytes each.
fn unknown_command(args: &[Bytes]) -> CommandError {
    const LIMIT: usize = 128;
    let name = args.first().map(|n| clip(n, LIMIT)).unwrap_or_default();
    let mut quoted = String::new();
    for arg in args.iter().skip(1) {
        if quoted.len() >= LIMIT {
            break;
        }
        quoted.push_str(&format!("'{}' ", clip(arg, LIMIT - quoted.len())));
    }
    CommandError::UnknownCommand { name, args: quoted }
}

/// At most `max` bytes of `b` as text, for error messages; like Redis' `%.128s`, it stops
/// at a NUL byte.
fn clip(b: &[u8], max: usize) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len()).min(max);
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// An error reply. Line breaks would end the reply early, so they become spaces, as in
/// Redis.
pub(crate) fn error(e: &CommandError) -> BytesFrame {
    BytesFrame::Error(e.to_string().replace(['\r', '\n'], " ").into())
}

fn ok() -> BytesFrame {
    BytesFrame::SimpleString(Bytes::from_static(b"OK"))
}

fn bulk(value: impl Into<Bytes>) -> BytesFrame {
    BytesFrame::BulkString(value.into())
}

fn integer(n: impl TryInto<i64>) -> BytesFrame {
    BytesFrame::Integer(n.try_into().unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::db::{Db, DbDropGuard};

    /// Runs `words` on a fresh server with `config` and returns the reply.
    pub(super) struct Harness {
        _guard: DbDropGuard,
        db: Db,
        shared: Shared,
        client: Client,
    }

    impl Harness {
        pub(super) fn new(config: Config) -> Harness {
            let guard = DbDropGuard::new(10);
            let authenticated = config.requirepass.is_none();
            Harness {
                db: guard.db(),
                client: Client::new(1, authenticated, guard.db()),
                _guard: guard,
                shared: Shared::new(config, 7379),
            }
        }

        pub(super) fn run(&mut self, words: &[&str]) -> Outcome {
            run(&self.db, &self.shared, &mut self.client, words)
        }

        /// The reply as RESP text, for compact assertions.
        pub(super) fn wire(&mut self, words: &[&str]) -> String {
            wire(self.run(words))
        }

        /// Another connection to the same server.
        pub(super) fn connect(&self, id: u64) -> Client {
            Client::new(id, self.client.authenticated, self.db.clone())
        }

        /// [`Harness::wire`] for a client from [`Harness::connect`].
        pub(super) fn wire_as(&self, client: &mut Client, words: &[&str]) -> String {
            wire(run(&self.db, &self.shared, client, words))
        }
    }

    fn run(db: &Db, shared: &Shared, client: &mut Client, words: &[&str]) -> Outcome {
        let args = words
            .iter()
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect();
        let mut ctx = Context {
            db: &mut db.lock(),
            shared,
            client,
        };
        execute(args, &mut ctx)
    }

    fn wire(outcome: Outcome) -> String {
        match outcome {
            Outcome::Reply(reply) => {
                let mut out = bytes::BytesMut::new();
                let mut codec = crate::codec::RespCodec::new(1024, true);
                tokio_util::codec::Encoder::encode(&mut codec, reply, &mut out)
                    .expect("encode reply");
                String::from_utf8_lossy(&out).into_owned()
            }
            other => format!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn checks_come_in_redis_order() {
        let mut h = Harness::new(Config {
            requirepass: Some("pw".into()),
            ..Config::default()
        });
        assert_eq!(
            h.wire(&["foo", "a", "b"]),
            "-ERR unknown command 'foo', with args beginning with: 'a' 'b' \r\n"
        );
        assert_eq!(
            h.wire(&["GET"]),
            "-ERR wrong number of arguments for 'get' command\r\n"
        );
        assert_eq!(
            h.wire(&["get", "k"]),
            "-NOAUTH Authentication required.\r\n"
        );
        assert_eq!(h.wire(&["quit"]), "Quit");
        assert_eq!(h.wire(&["Host:", "x"]), "Drop");
    }

    #[tokio::test]
    async fn unknown_command_message_is_clipped_and_single_line() {
        let mut h = Harness::new(Config::default());
        let long = "x".repeat(300);
        let reply = h.wire(&["nope", &long, "b\r\nc"]);
        assert!(reply.starts_with("-ERR unknown command 'nope', with args beginning with: 'xxx"));
        assert_eq!(reply.matches('x').count(), 128);
        assert_eq!(reply.matches("\r\n").count(), 1);
    }
}
