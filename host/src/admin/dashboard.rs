//! The web dashboard on the admin listener: one page, served as it is, and
//! one JSON snapshot behind the admin token that the page polls. The page
//! computes the rates from successive snapshots, so the host keeps no
//! history. Deploys and rollbacks go through the admin API's own routes.

use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::contract::util::now_ms;
use crate::dispatch::stats::{DeadLetterNote, Stats};
use crate::runtime::registry::{Registry, VersionInfo};

/// The page: HTML, its style and its script in one file, with no data in
/// it. It asks for the token and sends it as a bearer token on every call.
pub const PAGE: &str = include_str!("dashboard.html");

/// The page's Content-Security-Policy: its own inline script (by hash) and
/// style, calls to this host only, and no framing, so no other site can
/// run script in it or put its buttons under someone's clicks.
pub fn content_security_policy() -> &'static str {
    static POLICY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        use base64::Engine;
        use sha2::Digest;
        let script = PAGE.split_once("<script>").and_then(|(_, rest)| rest.split_once("</script>")).map(|(s, _)| s);
        let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(script.unwrap_or_default()));
        format!(
            "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; connect-src 'self'; \
             img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
    });
    &POLICY
}

/// What the page polls: the counters of every handler, its versions, and
/// the latest dead letters.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    /// When it was taken, in milliseconds since the epoch.
    pub at_ms: u64,
    /// Every (tenant, handler).
    pub handlers: Vec<HandlerRow>,
    /// The latest dead letters, newest first.
    pub dead_letters: Vec<DeadLetterNote>,
}

/// One handler's counters and versions.
#[derive(Debug, Serialize)]
pub struct HandlerRow {
    /// The tenant.
    pub tenant: String,
    /// The handler.
    pub handler: String,
    /// The live version.
    pub version: u32,
    /// Messages acked.
    pub handled: u64,
    /// Retries scheduled.
    pub retried: u64,
    /// Messages dead-lettered.
    pub dead_lettered: u64,
    /// Invocations running now.
    pub in_flight: u64,
    /// Invocations recorded.
    pub invocations: u64,
    /// Their wall time, summed, in seconds.
    pub time_s: f64,
    /// Every version, oldest first.
    pub versions: Vec<VersionInfo>,
}

/// Read the registry and the counters now.
pub fn snapshot(registry: &Registry, stats: &Stats) -> Snapshot {
    let handlers = registry
        .slots()
        .map(|slot| {
            let m = &slot.metrics;
            HandlerRow {
                tenant: slot.tenant.to_string(),
                handler: slot.handler.to_string(),
                version: slot.live().number,
                handled: m.handled.load(Ordering::Relaxed),
                retried: m.retried.load(Ordering::Relaxed),
                dead_lettered: m.dead_lettered.load(Ordering::Relaxed),
                in_flight: m.in_flight.load(Ordering::Relaxed),
                invocations: m.invocations(),
                time_s: m.total_time().as_secs_f64(),
                versions: registry.versions(&slot.tenant, &slot.handler).unwrap_or_default(),
            }
        })
        .collect();
    let mut dead_letters = stats.recent_dead_letters();
    dead_letters.reverse();
    Snapshot { at_ms: now_ms(), handlers, dead_letters }
}
