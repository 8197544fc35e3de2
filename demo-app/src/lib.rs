//! Demo web-app node for comparing session strategies behind a load balancer.
//!
//! A node serves a small shop page (log in, add to cart, log out) and shows which node
//! answered and whether the visitor's session was there. Its sessions live in one of
//! three places (see [`sessions::SessionMode`]), so the same page shows what sticky
//! routing, a shared store and JWTs each cost. [`up`] starts the whole topology.

pub mod app;
pub mod cli;
pub mod error;
pub mod html;
pub mod metrics;
pub mod node;
pub mod routes;
pub mod sessions;
pub mod up;
