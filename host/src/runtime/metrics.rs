//! The counters and latency histogram of one handler: what the dispatcher
//! records and the admin API reports.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency histogram, in seconds.
pub const BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// The counters of one handler.
#[derive(Debug, Default)]
pub struct HandlerMetrics {
    /// Messages acked.
    pub handled: AtomicU64,
    /// Retries scheduled.
    pub retried: AtomicU64,
    /// Messages dead-lettered.
    pub dead_lettered: AtomicU64,
    /// Invocations running now.
    pub in_flight: AtomicU64,
    /// Fuel consumed, for handlers with a fuel limit.
    pub fuel: AtomicU64,
    /// Log lines dropped past the tenant's `max_log_bytes`.
    pub log_lines_dropped: AtomicU64,
    /// HTTP requests sent, redirects included.
    pub http_requests: AtomicU64,
    /// Invocations that ran in a reused instance rather than a fresh one.
    pub instances_reused: AtomicU64,
    /// Invocation time, summed, in nanoseconds.
    time_ns: AtomicU64,
    /// Invocations, per latency bucket (the last is +Inf).
    buckets: [AtomicU64; BUCKETS.len() + 1],
}

impl HandlerMetrics {
    /// Record one invocation's wall time.
    pub fn observe(&self, elapsed: Duration) {
        self.time_ns.fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        let i = BUCKETS.iter().position(|b| secs <= *b).unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Invocations recorded.
    pub fn invocations(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// Invocations per latency bucket of [`BUCKETS`], the last past them all.
    pub fn bucket_counts(&self) -> Vec<u64> {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect()
    }

    /// Invocation time, summed.
    pub fn total_time(&self) -> Duration {
        Duration::from_nanos(self.time_ns.load(Ordering::Relaxed))
    }
}
