//! Sessions for axum/tower services, in three modes that answer "the user's next request
//! lands on another server" three ways:
//!
//! - `local`: in this process ([`MemoryStore`]); needs sticky routing in front.
//! - `shared`: in a store speaking the Redis protocol ([`RedisStore`]), optionally read
//!   through a per-node near-cache that session-change events over AMQP keep coherent
//!   ([`CachedStore`]).
//! - `jwt`: in a signed token the client carries ([`jwt::JwtCodec`]).
//!
//! [`SessionLayer`] loads the session before the handler runs and saves it — only if
//! modified, compare-and-set on its version — before the response leaves; handlers take
//! a [`Session`] extractor.

pub mod config;
pub mod cookies;
pub mod events;
mod id;
pub mod jwt;
mod layer;
mod manager;
mod record;
mod session;
mod stateful;
pub mod store;
mod token;

pub use config::{CookieConfig, Secure, SessionConfig};
pub use cookies::CookieKeys;
pub use id::{SessionId, random_bytes};
pub use layer::{SessionLayer, SessionService};
pub use manager::SessionManager;
pub use record::Record;
pub use session::Session;
pub use store::{CachedStore, MemoryStore, RedisStore, SessionStore, StoreError};
