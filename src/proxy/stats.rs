//! Counters live on the pool they describe, as relaxed atomics, so the
//! hot path never sends a message or takes a lock to count. A snapshot
//! reads them when someone asks.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Totals and gauges of one (pool, user).
#[derive(Debug, Default)]
pub struct PoolStats {
    pub xact_count: AtomicU64,
    pub query_count: AtomicU64,
    pub server_assignment_count: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub xact_time_us: AtomicU64,
    pub wait_time_us: AtomicU64,
    pub client_logins: AtomicU64,
    pub errors: AtomicU64,
    /// Clients logged in.
    pub clients: AtomicI64,
    /// Clients waiting for a server connection right now.
    pub clients_waiting: AtomicI64,
    /// Clients holding a server connection right now.
    pub clients_active: AtomicI64,
}

impl PoolStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Adds one to a gauge now and takes it back when dropped, so early
/// returns cannot leave a gauge wrong.
pub struct GaugeGuard<'a>(&'a AtomicI64);

impl<'a> GaugeGuard<'a> {
    pub fn new(gauge: &'a AtomicI64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
