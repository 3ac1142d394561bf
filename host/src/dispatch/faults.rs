//! Crash points on the path of a transactional route, so tests can show what
//! a crash at each step leaves behind. `SWITCHYARD_CRASH_AT=<point>:<n>`
//! aborts the process, as abruptly as a power cut, the `n`-th time it reaches
//! `<point>`. Unset, a crash point costs one read of a static.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// A step of a transactional route where a crash can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// The handler returned; its transaction is not yet committed.
    BeforeCommit,
    /// The transaction committed; the message is not yet acked.
    AfterCommit,
    /// The relay claimed outbox rows; it has not yet published them.
    BeforeRelay,
}

impl CrashPoint {
    fn name(self) -> &'static str {
        match self {
            Self::BeforeCommit => "before-commit",
            Self::AfterCommit => "after-commit",
            Self::BeforeRelay => "before-relay",
        }
    }
}

struct Armed {
    point: String,
    at: u64,
    reached: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var("SWITCHYARD_CRASH_AT").ok()?;
            let (point, at) = spec.split_once(':').unwrap_or((spec.as_str(), "1"));
            let at = at.parse().unwrap_or(1);
            tracing::warn!(point, at, "crash point armed by SWITCHYARD_CRASH_AT");
            Some(Armed { point: point.to_string(), at, reached: AtomicU64::new(0) })
        })
        .as_ref()
}

/// Abort the process here if `SWITCHYARD_CRASH_AT` names this point and
/// this is the time it counts to.
pub fn crash_point(point: CrashPoint) {
    let Some(armed) = armed() else { return };
    if armed.point == point.name() && armed.reached.fetch_add(1, Ordering::SeqCst) + 1 == armed.at {
        eprintln!("switchyard: crashing at {} as SWITCHYARD_CRASH_AT asked", point.name());
        std::process::abort();
    }
}
