//! Tenant quotas that span routes: invocations in flight and a rate.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::config::Quotas;

/// The flow limits of one tenant, shared by all its routes.
pub struct TenantQuota {
    in_flight: Option<Semaphore>,
    rate: Option<TokenBucket>,
}

impl TenantQuota {
    /// The limits `quotas` asks for.
    pub fn new(quotas: &Quotas) -> Self {
        Self { in_flight: quotas.max_in_flight.map(Semaphore::new), rate: quotas.rate_per_sec.map(TokenBucket::new) }
    }

    /// Wait for the tenant's rate and a free in-flight slot; hold the result
    /// for the whole invocation.
    pub async fn admit(&self) -> Option<SemaphorePermit<'_>> {
        if let Some(rate) = &self.rate {
            rate.take().await;
        }
        match &self.in_flight {
            Some(sem) => sem.acquire().await.ok(),
            None => None,
        }
    }
}

/// A token bucket refilled at `rate` per second, holding at most one second's worth.
struct TokenBucket {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    fn new(rate: f64) -> Self {
        Self { rate, state: Mutex::new((rate.max(1.0), Instant::now())) }
    }

    async fn take(&self) {
        loop {
            let wait = {
                let Ok(mut state) = self.state.lock() else { return };
                let (tokens, last) = &mut *state;
                let now = Instant::now();
                *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.rate.max(1.0));
                *last = now;
                if *tokens >= 1.0 {
                    *tokens -= 1.0;
                    return;
                }
                Duration::from_secs_f64((1.0 - *tokens) / self.rate)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_rate_spaces_out_invocations_after_the_burst() {
        let quota = TenantQuota::new(&Quotas { rate_per_sec: Some(10.0), ..Quotas::default() });
        let start = tokio::time::Instant::now();
        for _ in 0..30 {
            let _ = quota.admit().await;
        }
        // A burst of 10, then 20 more at 10 per second.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(1900) && elapsed <= Duration::from_millis(2100), "{elapsed:?}");
    }

    #[tokio::test]
    async fn in_flight_is_bounded() {
        let quota = TenantQuota::new(&Quotas { max_in_flight: Some(2), ..Quotas::default() });
        let a = quota.admit().await;
        let b = quota.admit().await;
        assert!(a.is_some() && b.is_some());
        assert!(tokio::time::timeout(Duration::from_millis(50), quota.admit()).await.is_err(), "a third must wait");
        drop(a);
        assert!(tokio::time::timeout(Duration::from_millis(50), quota.admit()).await.is_ok());
    }
}
