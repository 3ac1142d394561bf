//! The dispatcher: it takes deliveries from every source, routes each by
//! source and topic, admits it (a full route stops taking from its source),
//! queues it behind earlier messages with the same key, and runs it to its
//! settlement. On shutdown it stops intake and drains what is in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::delivery::{finish, process, settle_or_log};
use super::loopback::{LOCAL, LocalSource};
use super::relay::Relay;
use super::route::{Route, Shared};
use super::stats::{Snapshot, Stats};
use crate::contract::headers;
use crate::contract::publish::Publisher;
use crate::contract::source::{Delivery, Settlement, Source, SourceError};
use crate::runtime::Runtime;

/// Deliveries each source may have queued before it must wait.
const SOURCE_QUEUE: usize = 256;

/// The routes of a host and what their deliveries share, ready to run.
pub struct Dispatcher {
    shared: Arc<Shared>,
    routes: Arc<Vec<Route>>,
    grace: Duration,
}

impl Dispatcher {
    /// A dispatcher for `routes`, publishing through `publisher` and, on
    /// transactional routes, through the outbox `relay`.
    pub fn new(
        runtime: Arc<Runtime>,
        routes: Vec<Route>,
        publisher: Arc<dyn Publisher>,
        relay: Option<Arc<Relay>>,
        stats: Arc<Stats>,
        grace: Duration,
    ) -> Self {
        let shared = Arc::new(Shared {
            runtime,
            publisher,
            relay,
            stats,
            idle: Notify::new(),
            shutdown: CancellationToken::new(),
        });
        Self { shared, routes: Arc::new(routes), grace }
    }

    /// Run until every source has ended and every message is settled, or
    /// until `shutdown` is cancelled. On shutdown, intake stops, messages
    /// being handled finish and are settled, and the counters are returned.
    /// `ready` is true while the sources are being read.
    pub async fn run(
        self,
        sources: Vec<(String, Box<dyn Source>)>,
        local: LocalSource,
        shutdown: CancellationToken,
        ready: Arc<AtomicBool>,
    ) -> Snapshot {
        let Dispatcher { shared, routes, grace } = self;
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
        // Idle instances are retired on time even when no message comes to
        // take them, until the dispatcher returns.
        let sweeping = CancellationToken::new();
        let _stop_sweeping = sweeping.clone().drop_guard();
        for pool in routes.iter().filter_map(|r| r.invoke.pool.clone()) {
            let stop = sweeping.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(pool.sweep_interval());
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while tokio::select! { _ = every.tick() => true, _ = stop.cancelled() => false } {
                    pool.sweep();
                }
            });
        }
        ready.store(true, Ordering::Relaxed);

        // Until the sources end by themselves, or shutdown.
        let signalled = tokio::select! {
            _ = async { while producers.join_next().await.is_some() {} } => false,
            _ = shutdown.cancelled() => {
                tracing::info!(grace_ms = grace.as_millis() as u64, "shutting down: intake stopped, finishing messages in flight");
                true
            }
        };
        ready.store(false, Ordering::Relaxed);
        intake.cancel();
        let tasks = Tasks { producers, consumers, relay_stop, relay_task, local_stop, local_task, local_consumer };
        // Once stopped, by a signal now or later, the drain has `grace` to finish.
        let drained = tokio::select! {
            _ = tasks.drain(&shared) => true,
            _ = async {
                shutdown.cancelled().await;
                if !signalled {
                    tracing::info!(grace_ms = grace.as_millis() as u64, "shutting down: finishing messages in flight");
                }
                tokio::time::sleep(grace).await;
            } => false,
        };
        if !drained {
            tracing::error!(
                grace_ms = grace.as_millis() as u64,
                unsettled = shared.stats.pending.load(Ordering::SeqCst),
                "the shutdown grace ran out; unsettled messages are left to their brokers, which deliver them again"
            );
        }
        shared.stats.snapshot()
    }
}

/// What runs while the host runs, for the drain to wind down.
struct Tasks {
    producers: JoinSet<()>,
    consumers: JoinSet<()>,
    relay_stop: CancellationToken,
    relay_task: Option<tokio::task::JoinHandle<()>>,
    local_stop: CancellationToken,
    local_task: tokio::task::JoinHandle<Result<(), SourceError>>,
    local_consumer: tokio::task::JoinHandle<()>,
}

impl Tasks {
    /// Once intake has stopped: let what was received finish and settle,
    /// relay the outbox, and empty the loopback.
    async fn drain(self, shared: &Shared) {
        let Tasks { mut producers, mut consumers, relay_stop, relay_task, local_stop, local_task, local_consumer } =
            self;
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
                (headers::DEAD_LETTER_REASON.to_string(), reason.clone()),
                (headers::ATTEMPTS.to_string(), "0".to_string()),
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
