//! The path of a delivery from its source to its settlement: routing,
//! admission, per-key ordering, invocation, the outbox, retries with backoff,
//! and dead-lettering.

pub mod faults;
pub mod ordering;
pub mod quota;
pub mod relay;
pub mod router;
pub mod stats;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::admin::Admin;
use crate::capabilities::db::{Begun, DbTransaction, InboxKey, InboxOutcome};
use crate::capabilities::publish::{PublishRouter, Publisher};
use crate::capabilities::{BackendError, Backends, Capabilities, backends};
use crate::config::AdminConfig;
use crate::config::{Config, ConfigError, RouteConfig, SourceConfig};
use crate::runtime::bindings::Message;
use crate::runtime::bindings::publish::Outgoing;
use crate::runtime::registry::{DeployError, HandlerSlot, Registry};
use crate::runtime::{InvokeContext, Outcome, Runtime, RuntimeError, RuntimeOptions};
use crate::sources::dead_letter::DeadLetterFile;
use crate::sources::local::{LOCAL, LocalSource};
use crate::sources::{Delivery, Settle, Settlement, Source, file::FileSource, http::HttpSource, local};
use faults::CrashPoint;
use ordering::{KeyOrder, Turn};
use quota::TenantQuota;
use relay::Relay;
use router::TopicPattern;
use stats::{Progress, Snapshot, Stats};

/// Deliveries each source may have queued before it must wait.
const SOURCE_QUEUE: usize = 256;
/// Admitted deliveries per route, beyond those running: waiting for their key's
/// turn or their retry. Bounds memory; a full route pushes back on its source.
const QUEUE_PER_CONCURRENCY: usize = 8;

/// The host could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The config is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The engine could not be set up.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A handler could not be loaded.
    #[error(transparent)]
    Handler(#[from] DeployError),
    /// A backend could not be opened.
    #[error("cannot open the {capability} backend: {error}")]
    Backend {
        /// Which capability.
        capability: &'static str,
        /// Why.
        error: backends::BackendError,
    },
}

/// One route, ready to dispatch.
pub struct Route {
    source: String,
    pattern: TopicPattern,
    policy: RouteConfig,
    invoke: InvokeContext,
    slot: Arc<HandlerSlot>,
    quota: Arc<TenantQuota>,
    admission: Arc<Semaphore>,
    running: Arc<Semaphore>,
    order: Arc<KeyOrder>,
    /// The parent of its deliveries' spans: source, tenant and handler are
    /// formatted once here rather than for every message.
    span: tracing::Span,
}

/// What every delivery task shares.
struct Shared {
    runtime: Arc<Runtime>,
    publisher: Arc<dyn Publisher>,
    /// The outbox relay, when a route is transactional.
    relay: Option<Arc<Relay>>,
    stats: Arc<Stats>,
    idle: tokio::sync::Notify,
    shutdown: CancellationToken,
}

/// A configured host: its runtime, routes and sources, ready to run.
pub struct Host {
    shared: Arc<Shared>,
    routes: Arc<Vec<Route>>,
    sources: Vec<(String, Box<dyn Source>)>,
    local: LocalSource,
    registry: Arc<Registry>,
    admin: Option<AdminConfig>,
    progress: bool,
}

/// Engine settings that fit every handler in `config`.
pub fn runtime_options(config: &Config) -> RuntimeOptions {
    let limits: Vec<_> = config
        .tenants
        .values()
        .flat_map(|t| t.handlers.values().map(|h| h.limits))
        .chain(config.routes.iter().filter_map(|r| r.limits))
        .collect();
    RuntimeOptions {
        cache_dir: Some(config.data_dir.join("compiled")),
        max_memory_mib: limits.iter().map(|l| l.memory_mib).max().unwrap_or(64),
        fuel: limits.iter().any(|l| l.fuel.is_some()),
        ..RuntimeOptions::default()
    }
}

/// Load every handler in the config as its first version.
pub fn load_handlers(config: &Config, runtime: &Arc<Runtime>) -> Result<Arc<Registry>, HostError> {
    Ok(Arc::new(Registry::load(config, runtime.clone())?))
}

impl Host {
    /// Build the host: open the backends, load the handlers, set up routes
    /// and sources. Fails with an error naming the part that is wrong.
    pub async fn build(config: &Config) -> Result<Self, HostError> {
        let runtime = Arc::new(Runtime::new(runtime_options(config))?);
        let registry = load_handlers(config, &runtime)?;
        let backends = Arc::new(
            backends::open(config).await.map_err(|error| HostError::Backend { capability: "db or search", error })?,
        );
        Self::assemble(config, registry, backends)
    }

    /// Build the host from parts already made; tests use this to share a runtime.
    pub fn assemble(config: &Config, registry: Arc<Registry>, backends: Arc<Backends>) -> Result<Self, HostError> {
        let runtime = registry.runtime().clone();
        let stats = Arc::new(Stats::default());
        let (publisher, local) =
            local::loopback(Arc::new(DeadLetterFile::new(LOCAL, &config.dead_letter_path(LOCAL))), stats.clone());
        let caps: BTreeMap<&String, Arc<Capabilities>> = config
            .tenants
            .iter()
            .map(|(name, t)| (name, Arc::new(Capabilities { backends: backends.clone(), grants: t.grants.clone() })))
            .collect();
        let quotas: BTreeMap<&String, Arc<TenantQuota>> =
            config.tenants.iter().map(|(name, t)| (name, Arc::new(TenantQuota::new(&t.quotas)))).collect();

        let mut routes = Vec::new();
        for route in &config.routes {
            let (Some(slot), Some(tenant_caps), Some(quota), Some(tenant)) = (
                registry.slot(&route.tenant, &route.handler),
                caps.get(&route.tenant),
                quotas.get(&route.tenant),
                config.tenants.get(&route.tenant),
            ) else {
                continue; // `Config::validate` already refused dangling names.
            };
            let handler_limits = tenant.handlers.get(&route.handler).map(|h| h.limits).unwrap_or_default();
            let limits = tenant.quotas.cap(route.limits.unwrap_or(handler_limits));
            routes.push(Route {
                source: route.source.clone(),
                pattern: TopicPattern::parse(&route.topic),
                policy: route.clone(),
                invoke: InvokeContext {
                    caps: tenant_caps.clone(),
                    limits,
                    tenant: route.tenant.as_str().into(),
                    handler: route.handler.as_str().into(),
                    record_effects: false,
                },
                slot: slot.clone(),
                quota: quota.clone(),
                admission: Arc::new(Semaphore::new(route.concurrency * QUEUE_PER_CONCURRENCY)),
                running: Arc::new(Semaphore::new(route.concurrency)),
                order: Arc::new(KeyOrder::default()),
                span: tracing::info_span!(
                    parent: None,
                    "route",
                    source = %route.source,
                    tenant = %route.tenant,
                    handler = %route.handler,
                ),
            });
        }

        let mut sources: Vec<(String, Box<dyn Source>)> = Vec::new();
        let mut publisher = PublishRouter::new(Arc::new(publisher));
        for (name, source) in &config.sources {
            let concurrency = config.routes.iter().filter(|r| &r.source == name).map(|r| r.concurrency).sum();
            if let Some((source, broker)) = crate::sources::broker(name, source, concurrency) {
                publisher.add_broker(name, broker);
                sources.push((name.clone(), source));
                continue;
            }
            let dead_letter = Arc::new(DeadLetterFile::new(name, &config.dead_letter_path(name)));
            let source: Box<dyn Source> = match source {
                SourceConfig::File { path, replay, follow, .. } => {
                    Box::new(FileSource::new(name, path, *replay, *follow, dead_letter))
                }
                SourceConfig::Http { listen, .. } => {
                    // `Config::validate` checked that it parses.
                    let addr = listen.parse().map_err(|e| ConfigError::Invalid {
                        path: Default::default(),
                        field: format!("sources.{name}.listen"),
                        message: format!("{e}"),
                    })?;
                    Box::new(HttpSource::new(name, addr, dead_letter))
                }
                _ => continue, // built by `sources::broker` above
            };
            sources.push((name.clone(), source));
        }

        let relay = config.routes.iter().any(|r| r.transactional).then(|| Arc::new(Relay::new(backends.db.clone())));
        let shared = Arc::new(Shared {
            runtime,
            publisher: Arc::new(publisher),
            relay,
            stats,
            idle: tokio::sync::Notify::new(),
            shutdown: CancellationToken::new(),
        });
        Ok(Self {
            shared,
            routes: Arc::new(routes),
            sources,
            local,
            registry,
            admin: config.admin.clone(),
            progress: false,
        })
    }

    /// Print a progress line to stderr every second while running.
    pub fn with_progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }

    /// The host's counters, live.
    pub fn stats(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }

    /// The plugin registry, for deploys.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Run until every source has ended and every message is settled, or
    /// until `shutdown` is cancelled. On shutdown, intake stops, messages
    /// being handled finish and are settled, and the counters are returned.
    pub async fn run(self, shutdown: CancellationToken) -> Snapshot {
        let Host { shared, routes, sources, local, registry, admin, progress } = self;
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let admin_stop = CancellationToken::new();
        if let Some(admin) = admin {
            if let Some(listen) = admin.listen.as_deref().and_then(|l| l.parse().ok()) {
                let server = Admin::new(registry.clone(), admin.token.clone(), ready.clone());
                let stop = admin_stop.clone();
                tokio::spawn(async move {
                    if let Err(e) = server.serve(listen, stop).await {
                        tracing::error!(%listen, error = %e, "admin API stopped");
                    }
                });
            }
            if let Some(dir) = admin.watch_dir {
                tokio::spawn(crate::admin::watch::watch(registry.clone(), dir, admin_stop.clone()));
            }
        }
        let started = std::time::Instant::now();
        let intake = shutdown.child_token();
        // Retry waits end on shutdown; the message stays unsettled on its
        // source and is delivered again after a restart.
        let shutdown_watch = shared.shutdown.clone();
        let watch = shutdown.clone();
        tokio::spawn(async move {
            watch.cancelled().await;
            shutdown_watch.cancel();
        });

        let relay_stop = CancellationToken::new();
        let relay_task = match &shared.relay {
            Some(relay) => {
                if !relay.prepare(&shutdown).await {
                    admin_stop.cancel();
                    return shared.stats.snapshot();
                }
                Some(tokio::spawn(relay.clone().run(shared.publisher.clone(), relay_stop.clone())))
            }
            None => None,
        };

        let mut consumers = JoinSet::new();
        let mut producers = JoinSet::new();
        for (name, source) in sources {
            let (tx, rx) = mpsc::channel(SOURCE_QUEUE);
            let token = intake.clone();
            let source_name = name.clone();
            producers.spawn(async move {
                if let Err(e) = source.run(tx, token).await {
                    tracing::error!(source = %source_name, error = %e, "source stopped");
                }
            });
            consumers.spawn(consume(shared.clone(), routes.clone(), name, rx, true));
        }
        let local_stop = CancellationToken::new();
        let (tx, rx) = mpsc::channel(SOURCE_QUEUE);
        let local_task = tokio::spawn(Box::new(local).run(tx, local_stop.clone()));
        let local_consumer = tokio::spawn(consume(shared.clone(), routes.clone(), LOCAL.into(), rx, false));

        ready.store(true, Ordering::Relaxed);
        let printer = progress.then(|| {
            let stats = shared.stats.clone();
            tokio::spawn(async move {
                let mut progress = Progress::default();
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    eprintln!("{}", progress.line(stats.snapshot()));
                }
            })
        });

        // Until the sources end by themselves, or shutdown.
        tokio::select! {
            _ = async { while producers.join_next().await.is_some() {} } => {}
            _ = shutdown.cancelled() => {
                tracing::info!("shutting down: intake stopped, finishing messages in flight");
            }
        }
        ready.store(false, Ordering::Relaxed);
        intake.cancel();
        while producers.join_next().await.is_some() {}
        while consumers.join_next().await.is_some() {}
        // Drain: everything received is settled, the outbox is relayed, and
        // nothing handlers published is still waiting in the loopback.
        relay_stop.cancel();
        if let Some(task) = relay_task {
            let _ = task.await;
        }
        loop {
            loop {
                let idle = shared.idle.notified();
                if shared.stats.pending.load(Ordering::SeqCst) == 0 {
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(100), idle).await;
            }
            let relayed = match &shared.relay {
                Some(relay) => relay.flush(&*shared.publisher).await,
                None => 0,
            };
            if relayed == 0 && shared.stats.pending.load(Ordering::SeqCst) == 0 {
                break;
            }
        }
        local_stop.cancel();
        let _ = local_task.await;
        let _ = local_consumer.await;
        admin_stop.cancel();
        if let Some(printer) = printer {
            printer.abort();
            eprintln!("{}", Progress::summary(started, shared.stats.snapshot()));
        }
        shared.stats.snapshot()
    }
}

/// Take deliveries from one source and dispatch each. `count` is false for
/// the loopback, whose messages were counted as pending when published.
async fn consume(
    shared: Arc<Shared>,
    routes: Arc<Vec<Route>>,
    source: String,
    mut rx: mpsc::Receiver<Delivery>,
    count: bool,
) {
    while let Some(delivery) = rx.recv().await {
        shared.stats.received.fetch_add(1, Ordering::Relaxed);
        if count {
            shared.stats.pending.fetch_add(1, Ordering::SeqCst);
        }
        let topic = delivery.message.topic.as_str();
        let Some(index) = routes.iter().position(|r| r.source == source && r.pattern.matches(topic)) else {
            let reason = format!("no route for topic {topic:?} on source {source:?}");
            tracing::warn!(%source, %topic, message_id = %delivery.message.id, "{reason}; dead-lettering");
            let headers = vec![
                ("switchyard-dead-letter-reason".to_string(), reason.clone()),
                ("switchyard-attempts".to_string(), "0".to_string()),
            ];
            let Delivery { message, settle } = delivery;
            settle_or_log(settle, &message, Settlement::DeadLetter { reason, headers }).await;
            shared.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
            finish(&shared);
            continue;
        };
        let route = &routes[index];
        // Admission: a full route stops this loop, and so the source.
        let Ok(admitted) = route.admission.clone().acquire_owned().await else { break };
        let turn = match (&delivery.message.key, route.policy.ordered) {
            (Some(key), true) => Some(route.order.enqueue(key)),
            _ => None,
        };
        tokio::spawn(process(shared.clone(), routes.clone(), index, delivery, admitted, turn));
    }
}

fn finish(shared: &Shared) {
    if shared.stats.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
        shared.idle.notify_waiters();
    }
}

/// The backoff before attempt `attempt + 1`: doubling from the base, capped.
fn backoff(policy: &RouteConfig, attempt: u32) -> Duration {
    let factor = 1u64.checked_shl(attempt.saturating_sub(1)).unwrap_or(u64::MAX);
    Duration::from_millis(policy.retry_base_ms.saturating_mul(factor).min(policy.retry_max_ms))
}

/// Run one delivery to its settlement.
async fn process(
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
    let failed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis().to_string())
        .unwrap_or_default();
    let mut headers = vec![
        ("switchyard-dead-letter-reason".to_string(), reason.clone()),
        ("switchyard-attempts".to_string(), message.attempt.to_string()),
        ("switchyard-tenant".to_string(), route.invoke.tenant.to_string()),
        ("switchyard-handler".to_string(), route.invoke.handler.to_string()),
        ("switchyard-failed-at-ms".to_string(), failed_at),
    ];
    let count = compensations.len();
    // On a transactional route, the failure and its compensations are
    // committed to the inbox and outbox, so a redelivery after a crash does
    // not send them again.
    let compensations = match inbox {
        Some(key) => match record_failure(shared, key, &compensations).await {
            Ok(()) => {
                headers.push(("switchyard-compensations".into(), count.to_string()));
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
            Ok(()) => headers.push(("switchyard-compensations".into(), count.to_string())),
            Err(e) => {
                tracing::error!(error = %e, count, "cannot publish compensations");
                headers.push(("switchyard-compensation-error".into(), e.to_string()));
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
async fn record_failure(shared: &Shared, inbox: &InboxKey, compensations: &[Outgoing]) -> Result<(), BackendError> {
    let Some(relay) = &shared.relay else { return Ok(()) };
    match relay.db().begin(inbox).await? {
        Begun::Transaction(tx) => commit(shared, tx, inbox, InboxOutcome::Failed, compensations).await.map(drop),
        Begun::Settled(_) => Ok(()),
    }
}

/// The longest reason kept in a dead-letter header; a handler cannot make
/// its broker carry megabytes of "reason".
const MAX_REASON: usize = 1024;

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

async fn settle_or_log(settle: Box<dyn Settle>, message: &Message, settlement: Settlement) {
    if let Err(e) = settle.settle(message, settlement).await {
        // The source did not take the settlement; it will deliver the message
        // again, which at-least-once allows.
        tracing::error!(error = %e, message_id = %message.id, "settlement failed");
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
