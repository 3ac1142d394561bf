//! Counters for the live progress line and the run summary, and the latest
//! dead letters for the dashboard.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Host-wide message counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Deliveries received from sources.
    pub received: AtomicU64,
    /// Messages acked after their handler returned ok.
    pub handled: AtomicU64,
    /// Retries scheduled.
    pub retried: AtomicU64,
    /// Messages dead-lettered.
    pub dead_lettered: AtomicU64,
    /// Deliveries received and not yet settled, including those waiting to retry.
    pub pending: AtomicU64,
    /// Messages each at-most-once source knows it lost, by source.
    lost: std::sync::Mutex<Vec<(String, std::sync::Arc<AtomicU64>)>>,
    /// The latest dead letters, newest last, for the dashboard.
    recent_dead_letters: std::sync::Mutex<std::collections::VecDeque<DeadLetterNote>>,
}

/// How many dead letters [`Stats::recent_dead_letters`] keeps.
pub const RECENT_DEAD_LETTERS: usize = 200;

/// One dead letter as the dashboard lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetterNote {
    /// The source it came from, whose dead-letter place now holds it.
    pub source: String,
    /// The tenant whose handler it was routed to.
    pub tenant: String,
    /// The handler.
    pub handler: String,
    /// The message id.
    pub message_id: String,
    /// Its topic.
    pub topic: String,
    /// Why it was dead-lettered, as in its `switchyard-dead-letter-reason` header.
    pub reason: String,
    /// When, in milliseconds since the epoch.
    pub at_ms: u64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// See [`Stats::received`].
    pub received: u64,
    /// See [`Stats::handled`].
    pub handled: u64,
    /// See [`Stats::retried`].
    pub retried: u64,
    /// Messages sources lost, summed (see [`Stats::lost`]).
    pub lost: u64,
    /// See [`Stats::dead_lettered`].
    pub dead_lettered: u64,
    /// See [`Stats::pending`].
    pub pending: u64,
}

impl Stats {
    /// Read every counter.
    pub fn snapshot(&self) -> Snapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            received: get(&self.received),
            handled: get(&self.handled),
            retried: get(&self.retried),
            dead_lettered: get(&self.dead_lettered),
            pending: get(&self.pending),
            lost: self.lost_by_source().iter().map(|(_, n)| n).sum(),
        }
    }

    /// Count `counter` as the messages source `name` lost.
    pub fn track_lost(&self, name: &str, counter: std::sync::Arc<AtomicU64>) {
        if let Ok(mut lost) = self.lost.lock() {
            lost.push((name.to_string(), counter));
        }
    }

    /// Remember a dead letter, forgetting the oldest past [`RECENT_DEAD_LETTERS`].
    pub fn record_dead_letter(&self, note: DeadLetterNote) {
        if let Ok(mut recent) = self.recent_dead_letters.lock() {
            if recent.len() == RECENT_DEAD_LETTERS {
                recent.pop_front();
            }
            recent.push_back(note);
        }
    }

    /// The latest dead letters, newest last.
    pub fn recent_dead_letters(&self) -> Vec<DeadLetterNote> {
        self.recent_dead_letters.lock().map(|r| r.iter().cloned().collect()).unwrap_or_default()
    }

    /// Messages lost, by source, for the sources that can lose them.
    pub fn lost_by_source(&self) -> Vec<(String, u64)> {
        let Ok(lost) = self.lost.lock() else { return Vec::new() };
        lost.iter().map(|(name, n)| (name.clone(), n.load(Ordering::Relaxed))).collect()
    }
}

/// Renders the progress line, with the rate since the previous line.
pub struct Progress {
    last: Snapshot,
    at: Instant,
    started: Instant,
}

impl Default for Progress {
    fn default() -> Self {
        let now = Instant::now();
        Self { last: Snapshot::default(), at: now, started: now }
    }
}

impl Progress {
    /// The closing line: totals, and the average rate over the whole run.
    pub fn summary(started: Instant, now: Snapshot) -> String {
        let elapsed = started.elapsed().max(Duration::from_millis(1)).as_secs_f64();
        format!(
            "[{elapsed:>6.1}s] done: handled {} | retried {} | dead-lettered {} | {:.0} msg/s on average",
            now.handled,
            now.retried,
            now.dead_lettered,
            (now.handled + now.dead_lettered) as f64 / elapsed
        )
    }

    /// The line for `now`: totals, and messages settled per second since the last line.
    pub fn line(&mut self, now: Snapshot) -> String {
        let elapsed = self.at.elapsed().max(Duration::from_millis(1)).as_secs_f64();
        let settled = |s: &Snapshot| s.handled + s.dead_lettered;
        let rate = (settled(&now) - settled(&self.last)) as f64 / elapsed;
        self.last = now;
        self.at = Instant::now();
        let lost = if now.lost > 0 { format!(" | lost {}", now.lost) } else { String::new() };
        format!(
            "[{:>6.1}s] handled {} | retried {} | dead-lettered {} | in flight {} | {:.0} msg/s{lost}",
            self.started.elapsed().as_secs_f64(),
            now.handled,
            now.retried,
            now.dead_lettered,
            now.pending,
            rate
        )
    }
}
