//! A route ready to dispatch: its pattern and policy, the handler slot it
//! runs, its admission and per-key order, and what every delivery shares.

use std::sync::Arc;

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::ordering::KeyOrder;
use super::quota::TenantQuota;
use super::relay::Relay;
use super::router::TopicPattern;
use super::stats::Stats;
use crate::config::RouteConfig;
use crate::contract::publish::Publisher;
use crate::runtime::registry::HandlerSlot;
use crate::runtime::{InvokeContext, Runtime};

/// Admitted deliveries per route, beyond those running: waiting for their key's
/// turn or their retry. Bounds memory; a full route pushes back on its source.
const QUEUE_PER_CONCURRENCY: usize = 8;

/// One route, ready to dispatch.
pub struct Route {
    pub(super) source: String,
    pub(super) pattern: TopicPattern,
    pub(super) policy: RouteConfig,
    pub(super) invoke: InvokeContext,
    pub(super) slot: Arc<HandlerSlot>,
    pub(super) quota: Arc<TenantQuota>,
    pub(super) admission: Arc<Semaphore>,
    pub(super) running: Arc<Semaphore>,
    pub(super) order: Arc<KeyOrder>,
    /// The parent of its deliveries' spans: source, tenant and handler are
    /// formatted once here rather than for every message.
    pub(super) span: tracing::Span,
}

/// What every delivery task shares.
pub struct Shared {
    pub(super) runtime: Arc<Runtime>,
    pub(super) publisher: Arc<dyn Publisher>,
    /// The outbox relay, when a route is transactional.
    pub(super) relay: Option<Arc<Relay>>,
    pub(super) stats: Arc<Stats>,
    /// Notified when the last pending delivery settles.
    pub(super) idle: Notify,
    /// Cancelled on shutdown: retry waits end, leaving the message unsettled.
    pub(super) shutdown: CancellationToken,
}

impl Route {
    /// A route for `policy`, running `slot`'s live version as `invoke` under
    /// the tenant's `quota`.
    pub fn new(policy: &RouteConfig, invoke: InvokeContext, slot: Arc<HandlerSlot>, quota: Arc<TenantQuota>) -> Self {
        Self {
            source: policy.source.clone(),
            pattern: TopicPattern::parse(&policy.topic),
            policy: policy.clone(),
            invoke,
            slot,
            quota,
            admission: Arc::new(Semaphore::new(policy.concurrency * QUEUE_PER_CONCURRENCY)),
            running: Arc::new(Semaphore::new(policy.concurrency)),
            order: Arc::new(KeyOrder::default()),
            span: tracing::info_span!(
                parent: None,
                "route",
                source = %policy.source,
                tenant = %policy.tenant,
                handler = %policy.handler,
            ),
        }
    }
}
