//! Ports for the rendezvous stores the distributed tests start.
//!
//! Binding port 0 and releasing it races: every integration test runs in this one process,
//! and another test's ephemeral listener (a ring socket, a server) can take the released
//! port before the store binds it ("Address already in use"). Ports come from below the
//! kernel's ephemeral range instead (32768-60999 by default), which `bind(0)` never hands
//! out, each at most once per process, and checked free when handed out.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

const FIRST: u32 = 20_000;
const COUNT: u32 = 12_000;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A port no other test of this process was given, free on all interfaces right now.
pub fn free_port() -> u16 {
    // A per-process starting point, so that two test processes rarely meet.
    let start = std::process::id().wrapping_mul(7919) % COUNT;
    for _ in 0..COUNT {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (start + n) % COUNT) as u16;
        if TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + COUNT);
}
