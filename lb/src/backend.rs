//! Backends and their health, shared lock-free between requests and the health checker.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use http::uri::Authority;

use crate::config::BackendSpec;

/// A change of a backend's state, returned so the caller can log it once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Up,
    Down,
}

/// One backend: where it is, and whether traffic should go to it.
#[derive(Debug)]
pub struct Backend {
    /// Unique name, used in the affinity cookie, the backend header and logs.
    pub id: String,
    /// `host:port` to connect to.
    pub authority: Authority,
    up: AtomicBool,
    passed: AtomicU32,
    failed: AtomicU32,
}

impl Backend {
    /// A backend that starts up, as in HAProxy: checks and traffic take it out if needed.
    pub fn new(spec: &BackendSpec) -> Self {
        Backend {
            id: spec.id.clone(),
            authority: spec.authority.clone(),
            up: AtomicBool::new(true),
            passed: AtomicU32::new(0),
            failed: AtomicU32::new(0),
        }
    }

    /// Whether new requests may go here.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Records one health probe; the state flips only after `rise` passes in a row (when
    /// down) or `fall` failures in a row (when up), so one lost probe does not flap it.
    pub fn record_check(&self, ok: bool, rise: u32, fall: u32) -> Option<Transition> {
        if ok {
            self.failed.store(0, Ordering::Release);
            let streak = self.passed.fetch_add(1, Ordering::AcqRel).saturating_add(1);
            (streak >= rise && !self.up.swap(true, Ordering::AcqRel)).then_some(Transition::Up)
        } else {
            self.passed.store(0, Ordering::Release);
            let streak = self.failed.fetch_add(1, Ordering::AcqRel).saturating_add(1);
            (streak >= fall && self.up.swap(false, Ordering::AcqRel)).then_some(Transition::Down)
        }
    }

    /// Takes the backend out at once, after real traffic could not connect to it. It comes
    /// back only after `rise` passed probes. Returns whether it was up until now.
    pub fn mark_down(&self) -> bool {
        self.passed.store(0, Ordering::Release);
        self.up.swap(false, Ordering::AcqRel)
    }
}

/// The configured backends, in configuration order; indices into it are stable.
#[derive(Debug)]
pub struct Backends {
    list: Box<[Backend]>,
}

impl Backends {
    /// One [`Backend`] per spec, all starting up.
    pub fn new(specs: &[BackendSpec]) -> Self {
        Backends {
            list: specs.iter().map(Backend::new).collect(),
        }
    }

    /// All backends, healthy or not.
    pub fn all(&self) -> &[Backend] {
        &self.list
    }

    /// The index of the backend called `id`.
    pub fn position(&self, id: &str) -> Option<usize> {
        self.list.iter().position(|b| b.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> Backend {
        Backend::new(&"a=http://127.0.0.1:1".parse().expect("valid spec"))
    }

    #[test]
    fn falls_after_fall_failures_and_rises_after_rise_passes() {
        let b = backend();
        assert!(b.is_up());
        assert_eq!(b.record_check(false, 2, 3), None);
        assert_eq!(b.record_check(false, 2, 3), None);
        assert_eq!(b.record_check(true, 2, 3), None);
        assert_eq!(b.record_check(false, 2, 3), None);
        assert_eq!(b.record_check(false, 2, 3), None);
        assert_eq!(b.record_check(false, 2, 3), Some(Transition::Down));
        assert!(!b.is_up());
        assert_eq!(b.record_check(false, 2, 3), None);
        assert_eq!(b.record_check(true, 2, 3), None);
        assert_eq!(b.record_check(true, 2, 3), Some(Transition::Up));
        assert_eq!(b.record_check(true, 2, 3), None);
    }

    #[test]
    fn mark_down_is_immediate_and_needs_fresh_passes() {
        let b = backend();
        assert_eq!(b.record_check(true, 2, 2), None);
        assert!(b.mark_down());
        assert!(!b.mark_down());
        assert!(!b.is_up());
        assert_eq!(b.record_check(true, 2, 2), None);
        assert_eq!(b.record_check(true, 2, 2), Some(Transition::Up));
    }
}
