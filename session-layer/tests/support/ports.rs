//! Ports for servers the tests start and restart.

use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, PoisonError};

/// A free port on 127.0.0.1, none given twice, below the kernel's ephemeral range: a server
/// started (or restarted) on it must not find it taken by some client socket's local end,
/// which a port from inside the range could be (including by reconnect attempts).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(PoisonError::into_inner);
    let high = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|&start| start > 11_000)
        .unwrap_or(32_768);
    let low = 10_000u32;
    let random = RandomState::new();
    for attempt in 0u32..10_000 {
        let port = u16::try_from(low + (random.hash_one(attempt) % u64::from(high - low)) as u32)
            .expect("below 65536");
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port in {low}..{high}");
}
