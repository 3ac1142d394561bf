//! The reconnect backoff every broker source uses: doubling from 100 ms up
//! to 30 s, back to the start after a connection that worked.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Waits between reconnection attempts to a broker: doubling from 100 ms up
/// to 30 s, back to the start after a connection that worked.
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(30);

    /// The next wait, longer each time.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }

    /// Connected: the next failure starts from the shortest wait again.
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// Wait the next delay, or return false at once if `shutdown` comes first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}
