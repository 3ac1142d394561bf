//! Bounded instance reuse. A fresh instance per message is the default; a
//! route that opts in (`instances = { reuse = N }`) keeps the instances whose
//! last message returned ok here, so its next message skips instantiation.
//!
//! The rules that make that safe:
//! - an instance serves only messages with the same key: tenant, handler
//!   digest, grants (the tenant's [`Capabilities`]) and limits;
//! - it serves one message at a time, each with its own deadline, fuel and
//!   capability context, so no outbox, transaction, reply-to or log context
//!   carries over;
//! - it is retired after `reuse` messages, after `idle_ms` without one, once
//!   its memory passed the high-water mark, and after any message that did
//!   not return ok. A retired instance is dropped, never used again.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::Store;

use super::state::HostState;
use crate::capabilities::context::Capabilities;
use crate::config::{Instances, Limits};
use crate::contract::bindings::Handler;

/// What an instance may only ever serve: messages of one tenant, one handler
/// build, one set of grants and one set of limits.
#[derive(Clone)]
pub(crate) struct PoolKey {
    pub(crate) tenant: Arc<str>,
    pub(crate) digest: String,
    pub(crate) caps: Arc<Capabilities>,
    pub(crate) limits: Limits,
}

impl PoolKey {
    fn matches(&self, other: &PoolKey) -> bool {
        self.tenant == other.tenant
            && self.digest == other.digest
            && Arc::ptr_eq(&self.caps, &other.caps)
            && self.limits == other.limits
    }
}

/// An instance waiting for its next message.
pub(crate) struct Pooled {
    pub(crate) key: PoolKey,
    pub(crate) store: Store<HostState>,
    pub(crate) handler: Handler,
    /// Messages it has served.
    pub(crate) served: u32,
    /// When its last message ended.
    idle_since: Instant,
}

/// The idle instances of one route.
pub struct InstancePool {
    max_uses: u32,
    idle: Duration,
    high_water: usize,
    capacity: usize,
    instances: Mutex<Vec<Pooled>>,
}

impl InstancePool {
    /// A pool for a route with `instances` settings and `limits`, holding
    /// at most `capacity` idle instances: the route's concurrency, or the
    /// tenant's in-flight quota where that is lower, since no more can be in
    /// use at once.
    pub fn new(instances: &Instances, limits: &Limits, capacity: usize) -> Self {
        let high_water_mib = instances.max_memory_mib.unwrap_or(limits.memory_mib.div_ceil(2));
        Self {
            max_uses: instances.reuse,
            idle: Duration::from_millis(instances.idle_ms),
            high_water: usize::try_from(high_water_mib << 20).unwrap_or(usize::MAX),
            capacity: capacity.max(1),
            instances: Mutex::new(Vec::new()),
        }
    }

    /// The most recently used idle instance for `key`, if one is within its
    /// idle time. Instances of another key (an earlier version) and expired
    /// ones are retired on the way.
    pub(crate) fn take(&self, key: &PoolKey) -> Option<Pooled> {
        let mut retired = Vec::new();
        let found = {
            let mut instances = self.instances.lock().ok()?;
            let now = Instant::now();
            let mut found = None;
            while let Some(pooled) = instances.pop() {
                if !pooled.key.matches(key) || now.duration_since(pooled.idle_since) > self.idle {
                    retired.push(pooled);
                    continue;
                }
                found = Some(pooled);
                break;
            }
            found
        };
        // Stores are dropped outside the lock: teardown costs microseconds.
        drop(retired);
        found
    }

    /// Keep `pooled`, whose message returned ok, for the next message, unless
    /// it has served its share, grew past the high-water mark, or the pool
    /// is full. Only call this after an ok.
    pub(crate) fn give_back(&self, mut pooled: Pooled) {
        if pooled.served >= self.max_uses || pooled.store.data().memory_bytes > self.high_water {
            return;
        }
        pooled.idle_since = Instant::now();
        let refused = match self.instances.lock() {
            Ok(mut instances) if instances.len() < self.capacity => {
                instances.push(pooled);
                None
            }
            _ => Some(pooled),
        };
        drop(refused);
    }

    /// Retire every instance idle past its idle time; returns how many.
    pub fn sweep(&self) -> usize {
        let expired: Vec<Pooled> = match self.instances.lock() {
            Ok(mut instances) => {
                let now = Instant::now();
                let (expired, kept) =
                    instances.drain(..).partition(|p: &Pooled| now.duration_since(p.idle_since) > self.idle);
                *instances = kept;
                expired
            }
            Err(_) => Vec::new(),
        };
        expired.len()
    }

    /// How often [`InstancePool::sweep`] should run to keep idle times.
    pub fn sweep_interval(&self) -> Duration {
        (self.idle / 2).max(Duration::from_millis(10))
    }

    /// Idle instances now.
    pub fn idle_count(&self) -> usize {
        self.instances.lock().map(|i| i.len()).unwrap_or(0)
    }

    pub(crate) fn pooled(key: PoolKey, store: Store<HostState>, handler: Handler, served: u32) -> Pooled {
        Pooled { key, store, handler, served, idle_since: Instant::now() }
    }
}
