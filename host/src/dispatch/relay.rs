//! The outbox relay of transactional routes. A transactional invocation
//! commits what its handler published into the `switchyard_outbox` table,
//! in the same transaction as its db writes; the relay publishes those rows
//! afterwards and deletes them once the destination accepted them. It is
//! woken after each commit, sweeps on a timer, and at start sends whatever
//! an earlier process left behind, so a crash between commit and publish
//! delays a message but never loses it. Each relayed message carries a
//! stable `switchyard-message-id` header, so a receiver can drop the repeat
//! a crash between publish and delete causes.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::faults::{CrashPoint, crash_point};
use crate::contract::bindings::publish::Outgoing;
use crate::contract::db::DbBackend;
use crate::contract::errors::BackendError;
use crate::contract::publish::Publisher;

/// Outbox rows claimed and published per round.
const BATCH: usize = 256;
/// How often the relay looks for rows without being woken.
const SWEEP: Duration = Duration::from_secs(1);
/// The longest wait between attempts while the database or a destination is down.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Publishes committed outbox rows.
pub struct Relay {
    /// The backends whose outboxes it relays: the host's own, and each
    /// tenant login's with transactional routes.
    outboxes: Vec<Arc<dyn DbBackend>>,
    wake: Notify,
}

impl Relay {
    /// A relay for the outboxes of `outboxes`.
    pub fn new(outboxes: Vec<Arc<dyn DbBackend>>) -> Self {
        Self { outboxes, wake: Notify::new() }
    }

    /// One round: at most [`BATCH`] rows from each outbox; how many were sent.
    async fn round(&self, publisher: &dyn Publisher) -> Result<usize, BackendError> {
        let mut sent = 0;
        for db in &self.outboxes {
            sent += db.relay(&Claimed(publisher), BATCH).await?;
        }
        Ok(sent)
    }

    /// Tell the relay a transaction committed outbox rows.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Create the inbox and outbox tables, retrying with backoff while the
    /// database is down. False if `shutdown` came first.
    pub async fn prepare(&self, shutdown: &CancellationToken) -> bool {
        let mut delay = Duration::from_millis(200);
        loop {
            let mut prepared = Ok(());
            for db in &self.outboxes {
                prepared = db.prepare_transactions().await;
                if prepared.is_err() {
                    break;
                }
            }
            match prepared {
                Ok(()) => return true,
                Err(e) => {
                    tracing::error!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot create the inbox and outbox tables of transactional routes");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return false,
            }
            delay = (delay * 2).min(MAX_BACKOFF);
        }
    }

    /// Send outbox rows until none is left or a round fails; how many were sent.
    pub async fn flush(&self, publisher: &dyn Publisher) -> usize {
        let mut sent = 0;
        loop {
            match self.round(publisher).await {
                Ok(0) => return sent,
                Ok(n) => {
                    sent += n;
                    tracing::debug!(rows = n, "relayed outbox rows");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay failed; the rows stay and are sent again");
                    return sent;
                }
            }
        }
    }

    /// Relay until `stop`: after every wake, on every sweep, and with
    /// backoff while sending fails.
    pub async fn run(self: Arc<Self>, publisher: Arc<dyn Publisher>, stop: CancellationToken) {
        let mut delay = SWEEP;
        loop {
            match self.round(&*publisher).await {
                Ok(n) if n > 0 => {
                    delay = SWEEP;
                    continue;
                }
                Ok(_) => delay = SWEEP,
                Err(e) => {
                    delay = (delay * 2).min(MAX_BACKOFF);
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "outbox relay failed; the rows stay and are sent again");
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

/// The publisher the relay hands the database: the rows are claimed when it
/// is called, and not yet sent.
struct Claimed<'a>(&'a dyn Publisher);

#[async_trait]
impl Publisher for Claimed<'_> {
    async fn publish(&self, messages: Vec<Outgoing>) -> Result<(), BackendError> {
        crash_point(CrashPoint::BeforeRelay);
        self.0.publish(messages).await
    }
}
