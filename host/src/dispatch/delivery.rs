//! The path of one delivery, from admission to its settlement: the
//! transaction of a transactional route, the invocation, the outbox, retries
//! with backoff, and dead-lettering with the reason and compensations.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use super::faults::{self, CrashPoint};
use super::ordering::Turn;
use super::route::{Route, Shared};
use super::stats::DeadLetterNote;
use crate::config::RouteConfig;
use crate::contract::bindings::Message;
use crate::contract::bindings::publish::Outgoing;
use crate::contract::db::{Begun, DbTransaction, InboxKey, InboxOutcome};
use crate::contract::errors::BackendError;
use crate::contract::headers;
use crate::contract::source::{Delivery, Settle, Settlement};
use crate::contract::util::{now_ms, truncate};
use crate::runtime::Outcome;

/// The backoff before attempt `attempt + 1`: doubling from the base, capped.
fn backoff(policy: &RouteConfig, attempt: u32) -> Duration {
    let factor = 1u64.checked_shl(attempt.saturating_sub(1)).unwrap_or(u64::MAX);
    Duration::from_millis(policy.retry_base_ms.saturating_mul(factor).min(policy.retry_max_ms))
}

/// One delivery fewer is pending; the last one wakes the drain.
pub(super) fn finish(shared: &Shared) {
    if shared.stats.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
        shared.idle.notify_waiters();
    }
}

/// Run one delivery to its settlement.
pub(super) async fn process(
    shared: Arc<Shared>,
    routes: Arc<Vec<Route>>,
    index: usize,
    delivery: Delivery,
    _admitted: OwnedSemaphorePermit,
    mut turn: Option<Turn>,
) {
    let route = &routes[index];
    if let Some(turn) = &mut turn {
        turn.ready().await;
    }
    let Delivery { mut message, settle } = delivery;
    let policy = &route.policy;
    let span = tracing::info_span!(
        parent: &route.span,
        "delivery",
        topic = %message.topic,
        message_id = %message.id,
        attempt = tracing::field::Empty,
    );
    // On a transactional route, the message's inbox row.
    let inbox = policy.transactional.then(|| InboxKey {
        route: format!("{}/{}", route.invoke.tenant, route.invoke.handler),
        message: format!("{}:{}", message.source, message.id),
    });
    let inbox = inbox.as_ref();
    async {
        'delivery: loop {
            tracing::Span::current().record("attempt", message.attempt);
            if message.payload.len() > policy.max_message_bytes {
                let reason = format!(
                    "message is {} bytes, over the route's max_message_bytes of {}",
                    message.payload.len(),
                    policy.max_message_bytes
                );
                dead_letter(&shared, route, settle, &message, reason, Vec::new(), None).await;
                break;
            }
            let metrics = &route.slot.metrics;
            let (reason, requested, compensations) = 'attempt: {
                let Ok(running) = route.running.acquire().await else { break 'delivery };
                let tenant_slot = route.quota.admit().await;
                // A transaction begins only once the message may run, so
                // waiting messages hold no database connection.
                let transaction = match inbox {
                    None => None,
                    Some(key) => match route.invoke.caps.backends.db.begin(key).await {
                        Ok(Begun::Transaction(tx)) => Some(tx),
                        Ok(Begun::Settled(InboxOutcome::Handled)) => {
                            tracing::info!(
                                "an earlier delivery of this message committed; acking without running it again"
                            );
                            ack(&shared, route, settle, &message).await;
                            break 'delivery;
                        }
                        Ok(Begun::Settled(InboxOutcome::Failed)) => {
                            let reason =
                                "failed for good in an earlier delivery, whose compensations were recorded then"
                                    .to_string();
                            dead_letter(&shared, route, settle, &message, reason, Vec::new(), None).await;
                            break 'delivery;
                        }
                        Err(e) => break 'attempt (format!("cannot begin its transaction: {e}"), None, Vec::new()),
                    },
                };
                let invocation = {
                    // The live version now; a deploy during the call does not change it.
                    let version = route.slot.live();
                    metrics.in_flight.fetch_add(1, Ordering::Relaxed);
                    let invocation =
                        shared.runtime.invoke_in(&version.plugin, &message, &route.invoke, transaction).await;
                    metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
                    metrics.observe(invocation.elapsed);
                    if let Some(fuel) = invocation.fuel_used {
                        metrics.fuel.fetch_add(fuel, Ordering::Relaxed);
                    }
                    metrics.log_lines_dropped.fetch_add(invocation.log_lines_dropped, Ordering::Relaxed);
                    metrics.http_requests.fetch_add(invocation.http_requests, Ordering::Relaxed);
                    metrics.instances_reused.fetch_add(u64::from(invocation.reused), Ordering::Relaxed);
                    version.served();
                    invocation
                };
                if inbox.is_none() {
                    // Publishing needs no slot; a transaction keeps its slot
                    // until it commits.
                    drop((running, tenant_slot));
                }
                let compensations = invocation.compensations;
                match invocation.outcome {
                    Outcome::Ok => {
                        let durable = match (invocation.transaction, inbox) {
                            // Publishes go into the outbox, in the transaction.
                            (Some(tx), Some(key)) => {
                                commit(&shared, tx, key, InboxOutcome::Handled, &invocation.outbox)
                                    .await
                                    .map(|first| {
                                        if !first {
                                            tracing::info!("another delivery of this message committed first; acking");
                                        }
                                    })
                                    .map_err(|e| format!("handled, but its transaction did not commit: {e}"))
                            }
                            _ if invocation.outbox.is_empty() => Ok(()),
                            _ => shared
                                .publisher
                                .publish(invocation.outbox)
                                .await
                                .map_err(|e| format!("handled, but publishing its messages failed: {e}")),
                        };
                        if let Err(reason) = durable {
                            break 'attempt (reason, None, compensations);
                        }
                        tracing::debug!("handled");
                        ack(&shared, route, settle, &message).await;
                        break 'delivery;
                    }
                    Outcome::Retry { delay, reason } => (reason, Some(delay), compensations),
                    Outcome::Reject(reason) => {
                        tracing::info!(%reason, "handler rejected the message");
                        let reason = format!("rejected: {reason}");
                        dead_letter(&shared, route, settle, &message, reason, compensations, inbox).await;
                        break 'delivery;
                    }
                    Outcome::Failed(failure) => {
                        tracing::warn!(error = %failure, "handler failed");
                        (failure.to_string(), None, compensations)
                    }
                }
            };
            if message.attempt >= policy.max_attempts {
                let reason = format!("gave up after {} attempts: {reason}", message.attempt);
                dead_letter(&shared, route, settle, &message, reason, compensations, inbox).await;
                break;
            }
            let delay = backoff(policy, message.attempt)
                .max(requested.unwrap_or_default())
                .min(Duration::from_millis(policy.retry_max_ms));
            tracing::info!(%reason, delay_ms = delay.as_millis() as u64, "retrying");
            shared.stats.retried.fetch_add(1, Ordering::Relaxed);
            metrics.retried.fetch_add(1, Ordering::Relaxed);
            if settle.retries_natively() {
                settle_or_log(settle, &message, Settlement::Retry { delay }).await;
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shared.shutdown.cancelled() => {
                    tracing::info!("shutdown during retry wait; leaving the message unsettled for redelivery");
                    break;
                }
            }
            message.attempt += 1;
        }
    }
    .instrument(span)
    .await;
    drop(turn);
    finish(&shared);
}

/// Ack a handled message and count it.
async fn ack(shared: &Shared, route: &Route, settle: Box<dyn Settle>, message: &Message) {
    settle_or_log(settle, message, Settlement::Ack).await;
    shared.stats.handled.fetch_add(1, Ordering::Relaxed);
    route.slot.metrics.handled.fetch_add(1, Ordering::Relaxed);
}

async fn dead_letter(
    shared: &Shared,
    route: &Route,
    settle: Box<dyn Settle>,
    message: &Message,
    reason: String,
    compensations: Vec<Outgoing>,
    inbox: Option<&InboxKey>,
) {
    let reason = truncate(reason, MAX_REASON);
    tracing::warn!(%reason, "dead-lettering");
    let failed_at_ms = now_ms();
    shared.stats.record_dead_letter(DeadLetterNote {
        source: message.source.clone(),
        tenant: route.invoke.tenant.to_string(),
        handler: route.invoke.handler.to_string(),
        message_id: message.id.clone(),
        topic: message.topic.clone(),
        reason: reason.clone(),
        at_ms: failed_at_ms,
    });
    let mut headers = vec![
        (headers::DEAD_LETTER_REASON.to_string(), reason.clone()),
        (headers::ATTEMPTS.to_string(), message.attempt.to_string()),
        (headers::TENANT.to_string(), route.invoke.tenant.to_string()),
        (headers::HANDLER.to_string(), route.invoke.handler.to_string()),
        (headers::FAILED_AT_MS.to_string(), failed_at_ms.to_string()),
    ];
    let count = compensations.len();
    // On a transactional route, the failure and its compensations are
    // committed to the inbox and outbox, so a redelivery after a crash does
    // not send them again.
    let compensations = match inbox {
        Some(key) => match record_failure(shared, route, key, &compensations).await {
            Ok(()) => {
                headers.push((headers::COMPENSATIONS.into(), count.to_string()));
                Vec::new()
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot record the failure in the inbox; publishing its compensations directly");
                compensations
            }
        },
        None => compensations,
    };
    if !compensations.is_empty() {
        match shared.publisher.publish(compensations).await {
            Ok(()) => headers.push((headers::COMPENSATIONS.into(), count.to_string())),
            Err(e) => {
                tracing::error!(error = %e, count, "cannot publish compensations");
                headers.push((headers::COMPENSATION_ERROR.into(), e.to_string()));
            }
        }
    }
    settle_or_log(settle, message, Settlement::DeadLetter { reason, headers }).await;
    shared.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
    route.slot.metrics.dead_lettered.fetch_add(1, Ordering::Relaxed);
}

/// Commit a transactional invocation with its inbox row and outbox, between
/// the crash points tests inject failures at, and wake the relay.
async fn commit(
    shared: &Shared,
    tx: Box<dyn DbTransaction>,
    inbox: &InboxKey,
    outcome: InboxOutcome,
    outbox: &[Outgoing],
) -> Result<bool, BackendError> {
    faults::crash_point(CrashPoint::BeforeCommit);
    let first = tx.commit(inbox, outcome, outbox).await?;
    faults::crash_point(CrashPoint::AfterCommit);
    if let Some(relay) = &shared.relay {
        relay.wake();
    }
    Ok(first)
}

/// Record that a message failed for good, with its compensations in the
/// outbox, unless an earlier delivery already did.
async fn record_failure(
    shared: &Shared,
    route: &Route,
    inbox: &InboxKey,
    compensations: &[Outgoing],
) -> Result<(), BackendError> {
    match route.invoke.caps.backends.db.begin(inbox).await? {
        Begun::Transaction(tx) => commit(shared, tx, inbox, InboxOutcome::Failed, compensations).await.map(drop),
        Begun::Settled(_) => Ok(()),
    }
}

/// The longest reason kept in a dead-letter header; a handler cannot make
/// its broker carry megabytes of "reason".
const MAX_REASON: usize = 1024;

/// The longest a settlement may take. One on a connection that died
/// without the client noticing might otherwise never return, holding its
/// message in flight and the host's shutdown with it.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) async fn settle_or_log(settle: Box<dyn Settle>, message: &Message, settlement: Settlement) {
    match tokio::time::timeout(SETTLE_TIMEOUT, settle.settle(message, settlement)).await {
        Ok(Ok(())) => {}
        // The source did not take the settlement; it will deliver the message
        // again, which at-least-once allows.
        Ok(Err(e)) => tracing::error!(error = %e, message_id = %message.id, "settlement failed"),
        Err(_) => tracing::error!(
            message_id = %message.id,
            timeout_ms = SETTLE_TIMEOUT.as_millis() as u64,
            "settlement did not complete in time; the message is left to its broker, which delivers it again"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let text =
            "source = \"s\"\ntopic = \"t\"\ntenant = \"t\"\nhandler = \"h\"\nretry_base_ms = 100\nretry_max_ms = 1000";
        let policy: RouteConfig = toml::from_str(text).unwrap();
        let ms: Vec<u128> = (1..=6).map(|a| backoff(&policy, a).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff(&policy, 200).as_millis(), 1000);
    }
}
