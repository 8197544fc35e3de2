//! Round-robin over the backends that are up right now.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::Selector;
use crate::backend::Backend;

/// Hands out healthy backends in turn. The turn is taken among the healthy ones only, so a
/// down backend's share spreads evenly instead of all going to its successor.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Selector for RoundRobin {
    fn select(&self, backends: &[Backend], _key: &[u8], max_iterations: usize) -> Vec<usize> {
        let healthy: Vec<usize> = backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.is_up())
            .map(|(i, _)| i)
            .collect();
        if healthy.is_empty() {
            return healthy;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % healthy.len();
        healthy
            .iter()
            .cycle()
            .skip(start)
            .take(max_iterations.min(healthy.len()))
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backends;
    use crate::config::BackendSpec;

    fn backends(n: usize) -> Backends {
        let specs: Vec<BackendSpec> = (0..n)
            .map(|i| format!("b{i}=http://127.0.0.1:{}", 1000 + i))
            .map(|s| s.parse().expect("valid spec"))
            .collect();
        Backends::new(&specs)
    }

    #[test]
    fn takes_turns_with_fallbacks_in_order() {
        let all = backends(3);
        let rr = RoundRobin::default();
        assert_eq!(rr.select(all.all(), b"", 3), [0, 1, 2]);
        assert_eq!(rr.select(all.all(), b"", 3), [1, 2, 0]);
        assert_eq!(rr.select(all.all(), b"", 2), [2, 0]);
        assert_eq!(rr.select(all.all(), b"", 1), [0]);
    }

    #[test]
    fn skips_down_backends_and_stays_even() {
        let all = backends(3);
        all.all()[1].mark_down();
        let rr = RoundRobin::default();
        let firsts: Vec<usize> = (0..4).map(|_| rr.select(all.all(), b"", 3)[0]).collect();
        assert_eq!(firsts, [0, 2, 0, 2]);
        assert_eq!(rr.select(all.all(), b"", 5), [0, 2]);
    }

    #[test]
    fn nothing_when_all_are_down() {
        let all = backends(2);
        all.all().iter().for_each(|b| {
            b.mark_down();
        });
        assert!(RoundRobin::default().select(all.all(), b"", 3).is_empty());
    }
}
