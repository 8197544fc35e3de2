//! `lb`: an HTTP/1.1 reverse proxy that spreads requests over backends, keeps clients on
//! one backend with a signed cookie when asked to, checks backend health and retries
//! requests that never reached a backend.
//!
//! A request goes through a few phases (see [`proxy`]): pick the backend (affinity cookie,
//! then the [`select`] algorithm), filter the upstream request (`X-Forwarded-*`, hop-by-hop
//! headers, the LB's own cookie), forward it with retries on connect failures, then filter
//! the response (affinity cookie, backend header). [`health`] keeps each backend's state
//! up to date in the background, and [`server`] runs the accept loop and graceful drain.
//!
//! The LB keeps no state worth sharing: the affinity cookie names its backend and is
//! signed, so replicas that share `--cookie-key` route a client the same way.

pub mod affinity;
pub mod backend;
pub mod cli;
pub mod config;
pub mod error;
pub mod health;
pub mod proxy;
pub mod select;
pub mod server;

pub use config::Config;
