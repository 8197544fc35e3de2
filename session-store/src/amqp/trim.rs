//! Gives the memory a burst of traffic used back to the OS once the broker goes quiet.
//! glibc's allocator keeps freed pages for reuse, so a broker that once buffered many
//! messages would otherwise stay at that resident size while idle. One `malloc_trim` after
//! each busy spell returns them; it runs on the management sampling tick, never on the
//! message path.

/// Watches a counter that grows with traffic and trims once after it stops growing.
#[derive(Debug, Default)]
pub(super) struct QuietTrim {
    last: u64,
    trimmed: bool,
}

impl QuietTrim {
    /// Called on every sampling tick with the node's traffic counter. True when it
    /// trimmed: one tick without traffic after some.
    pub(super) fn observe(&mut self, traffic: u64) -> bool {
        if traffic != self.last {
            self.last = traffic;
            self.trimmed = false;
            return false;
        }
        if self.trimmed {
            return false;
        }
        self.trimmed = true;
        release_free_memory();
        true
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release_free_memory() {
    // SAFETY: malloc_trim takes no pointers and locks each arena it walks; glibc documents
    // it as safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators return memory on their own terms.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}

#[cfg(test)]
mod tests {
    use super::QuietTrim;

    #[test]
    fn trims_once_per_quiet_spell() {
        let mut trim = QuietTrim::default();
        // Quiet from the start: one trim, then nothing until traffic comes and goes.
        assert!(trim.observe(0));
        assert!(!trim.observe(0));
        assert!(!trim.observe(10));
        assert!(!trim.observe(25));
        assert!(trim.observe(25));
        assert!(!trim.observe(25));
        assert!(!trim.observe(26));
        assert!(trim.observe(26));
    }
}
