//! A shared in-memory session store that speaks the Redis protocol (RESP2).
//!
//! Web nodes behind a load balancer keep their sessions here so that any node can serve
//! any user. Because it speaks RESP, the same client code (the `redis` crate,
//! `redis-cli`) works against it and against a real Redis or Valkey, chosen by URL.
//!
//! It implements the string subset sessions need: GET, SET (EX/PX/EXAT/PXAT, NX/XX,
//! KEEPTTL, GET), DEL, EXISTS, EXPIRE/PEXPIRE, TTL/PTTL, the INCR family, plus the
//! connection and server commands clients send (AUTH, HELLO 2, PING, ECHO, SELECT 0,
//! CLIENT, INFO, DBSIZE, FLUSHDB, COMMAND, QUIT) and transactions (MULTI, EXEC, DISCARD,
//! WATCH, UNWATCH), with Redis 7's reply and error texts. Keys expire lazily on access and
//! actively in a background cycle.
//!
//! Beside it, in the same process, runs an AMQP 0-9-1 broker ([`amqp`]) with RabbitMQ's
//! model, for the session-change events nodes exchange.
//!
//! Layout: [`server`] accepts connections; `connection` and `codec` frame bytes into
//! requests; `cmd` checks and runs them against `db`, the keyspace, where `watch` tracks
//! the keys transactions WATCH. [`cli`] holds the flags and the `serve` entry point that
//! binaries call.

pub mod amqp;
pub mod cli;
mod client;
mod cmd;
mod codec;
pub mod config;
mod connection;
mod db;
pub mod error;
mod number;
pub mod server;
mod shared;
pub mod shutdown;
mod watch;

pub use config::Config;
pub use server::run;
