//! Error types of the store. Their `Display` texts are the exact Redis 7 error lines, so a
//! reply is just `-{error}` and users comparing with Redis see the same words.

use std::io;

/// A command that cannot run; sent to the client as an error reply, the connection stays.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("ERR unknown command '{name}', with args beginning with: {args}")]
    UnknownCommand { name: String, args: String },
    #[error("ERR unknown subcommand '{sub}'. Try {command} HELP.")]
    UnknownSubcommand { command: &'static str, sub: String },
    #[error("ERR wrong number of arguments for '{0}' command")]
    WrongArity(&'static str),
    #[error(
        "ERR this transaction holds too much (at most {commands} commands, {bytes} bytes); \
         EXEC will refuse it: DISCARD and send smaller transactions"
    )]
    TransactionTooLarge { commands: usize, bytes: usize },
    #[error("ERR too many watched keys on this connection (at most {0}); UNWATCH first")]
    TooManyWatched(usize),
    #[error("ERR syntax error")]
    Syntax,
    #[error("ERR value is not an integer or out of range")]
    NotInteger,
    #[error("ERR increment or decrement would overflow")]
    Overflow,
    #[error("ERR decrement would overflow")]
    DecrementOverflow,
    #[error("ERR invalid expire time in '{0}' command")]
    InvalidExpireTime(&'static str),
    #[error("ERR NX and XX, GT or LT options at the same time are not compatible")]
    ExpireNxConflict,
    #[error("ERR GT and LT options at the same time are not compatible")]
    ExpireGtLtConflict,
    #[error("ERR Unsupported option {0}")]
    UnsupportedOption(String),
    #[error("ERR Unrecognized option '{0}'")]
    UnrecognizedOption(String),
    #[error("ERR DB index is out of range")]
    DbIndexOutOfRange,
    #[error("ERR value is out of range, value must between -2147483648 and 2147483647")]
    NotAnInt,
    #[error("ERR Client names cannot contain spaces, newlines or special characters.")]
    BadClientName,
    #[error("ERR Protocol version is not an integer or out of range")]
    BadProtocolVersion,
    #[error("ERR Syntax error in HELLO option '{0}'")]
    HelloSyntax(String),
    #[error("NOPROTO unsupported protocol version")]
    NoProto,
    #[error("NOAUTH Authentication required.")]
    NoAuth,
    #[error(
        "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time"
    )]
    HelloNoAuth,
    #[error("WRONGPASS invalid username-password pair or user is disabled.")]
    WrongPass,
    #[error("ERR MULTI calls can not be nested")]
    NestedMulti,
    #[error("ERR EXEC without MULTI")]
    ExecWithoutMulti,
    #[error("ERR DISCARD without MULTI")]
    DiscardWithoutMulti,
    #[error("ERR WATCH inside MULTI is not allowed")]
    WatchInsideMulti,
    #[error("EXECABORT Transaction discarded because of previous errors.")]
    ExecAbort,
    /// EXEC itself refused (wrong arity, not authenticated): Redis names the reason
    /// without its `ERR` code.
    #[error("EXECABORT Transaction discarded because of: {}", reason(.0))]
    ExecRefused(Box<CommandError>),
    #[error(
        "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"
    )]
    AuthNotConfigured,
}

fn reason(e: &CommandError) -> String {
    let text = e.to_string();
    text.strip_prefix("ERR ").unwrap_or(&text).to_string()
}

/// A request that breaks the wire protocol. Like Redis, the server replies
/// `-ERR Protocol error: ...` and closes the connection, because it can no longer tell
/// where the next request starts.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("Protocol error: {0}")]
    Protocol(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<redis_protocol::error::RedisProtocolError> for CodecError {
    fn from(e: redis_protocol::error::RedisProtocolError) -> Self {
        CodecError::Protocol(e.to_string())
    }
}

/// Why [`crate::server::run`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot read the listener's local address: {0}")]
    LocalAddr(#[source] io::Error),
}
