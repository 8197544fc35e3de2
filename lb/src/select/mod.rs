//! Choosing backends for a request that is not pinned by a cookie.
//!
//! A [`Selector`] returns an ordered list of candidates rather than one backend, like
//! pingora's `select(key, max_iterations)`: the first is the choice, the rest are where a
//! request goes when connecting to the first fails. Weighted or least-connections
//! algorithms are further implementations of the same trait.

mod round_robin;

pub use round_robin::RoundRobin;

use crate::backend::Backend;
use crate::config::Algorithm;

/// A load-balancing algorithm.
pub trait Selector: Send + Sync {
    /// Indices into `backends` of up to `max_iterations` healthy backends, best first.
    /// `key` identifies the client (its IP address) for algorithms that hash it; it is
    /// empty when there is none.
    fn select(&self, backends: &[Backend], key: &[u8], max_iterations: usize) -> Vec<usize>;
}

/// The selector for `algorithm`.
pub fn selector(algorithm: Algorithm) -> Box<dyn Selector> {
    match algorithm {
        Algorithm::RoundRobin => Box::new(RoundRobin::default()),
    }
}
