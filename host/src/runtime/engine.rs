//! The engine on the pooling allocator, and the invocation of one handler on
//! one message in a fresh store with memory, time and fuel limits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::Linker;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap, UpdateDeadline};

use super::plugin::{self, LoadError, Plugin};
use super::pool::{InstancePool, PoolKey};
use super::state::HostState;
use crate::capabilities::context::{Capabilities, CapabilityCtx, Effect, LogContext};
use crate::config::Limits;
use crate::contract::bindings::publish::Outgoing;
use crate::contract::bindings::{self, HandlerError, Message};
use crate::contract::db::DbTransaction;

/// How often the epoch advances: the time slice of a handler that runs long.
const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Ticks a long-running handler sleeps after each tick it computes: past its
/// first tick it runs at 1 / (1 + LONG_RUNNING_PAUSE) of a core.
const LONG_RUNNING_PAUSE: u32 = 9;

/// The runtime could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The engine rejected its configuration.
    #[error("cannot create the WebAssembly engine: {0}")]
    Engine(String),
    /// The host functions could not be added to the linker.
    #[error("cannot link host functions: {0}")]
    Linker(String),
}

/// Settings for the engine, shared by every handler it runs.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Where compiled code is cached, by content digest. None disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// The largest memory limit any handler has, in MiB; sizes the pool's slots.
    pub max_memory_mib: u64,
    /// How many instances may be alive at once across all handlers.
    pub max_instances: u32,
    /// Whether any handler has a fuel limit; fuel metering costs every
    /// handler some speed, so it is only switched on when needed.
    pub fuel: bool,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self { cache_dir: None, max_memory_mib: 64, max_instances: 1000, fuel: false }
    }
}

/// How one invocation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The handler returned ok.
    Ok,
    /// The handler asked to be retried.
    Retry {
        /// The delay it asked for.
        delay: Duration,
        /// Why.
        reason: String,
    },
    /// The handler rejected the message.
    Reject(String),
    /// The instance trapped, or hit a limit. Retried under the route's policy.
    Failed(Failure),
}

/// Why an instance ended abnormally.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Failure {
    /// The handler trapped: a panic, an unreachable, a stack overflow.
    #[error("handler trapped: {0}")]
    Trap(String),
    /// The handler ran past its wall-time limit.
    #[error("handler timed out after {0} ms")]
    Timeout(u64),
    /// The handler tried to grow its memory past its limit.
    #[error("handler exceeded its memory limit of {0} MiB")]
    Memory(u64),
    /// The handler used up its fuel.
    #[error("handler ran out of fuel ({0} units)")]
    Fuel(u64),
    /// No instance could be created, for example because the pool is full.
    #[error("cannot instantiate handler: {0}")]
    Instantiate(String),
}

impl Outcome {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Retry { .. } => "retry",
            Outcome::Reject(_) => "reject",
            Outcome::Failed(Failure::Trap(_)) => "trap",
            Outcome::Failed(Failure::Timeout(_)) => "timeout",
            Outcome::Failed(Failure::Memory(_)) => "memory",
            Outcome::Failed(Failure::Fuel(_)) => "fuel",
            Outcome::Failed(Failure::Instantiate(_)) => "instantiate",
        }
    }
}

/// The result of one invocation: its outcome, and what it left to publish.
pub struct Invocation {
    /// How it ended.
    pub outcome: Outcome,
    /// Messages to publish now that it returned ok; empty otherwise.
    pub outbox: Vec<Outgoing>,
    /// Messages to publish if the message finally fails.
    pub compensations: Vec<Outgoing>,
    /// Every capability call, if a record was asked for.
    pub effects: Vec<Effect>,
    /// Wall time of the invocation, instantiation included.
    pub elapsed: Duration,
    /// Fuel consumed, when the engine meters fuel.
    pub fuel_used: Option<u64>,
    /// Log lines dropped past the tenant's `max_log_bytes`.
    pub log_lines_dropped: u64,
    /// HTTP requests sent, redirects included.
    pub http_requests: u64,
    /// Whether it ran in a reused instance rather than a fresh one.
    pub reused: bool,
    /// The invocation's open SQL transaction on a transactional route, for
    /// the dispatcher to commit, or to drop (rolling it back).
    pub transaction: Option<Box<dyn DbTransaction>>,
}

impl std::fmt::Debug for Invocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invocation")
            .field("outcome", &self.outcome)
            .field("outbox", &self.outbox)
            .field("compensations", &self.compensations)
            .field("effects", &self.effects)
            .field("elapsed", &self.elapsed)
            .field("fuel_used", &self.fuel_used)
            .field("reused", &self.reused)
            .field("transaction", &self.transaction.is_some())
            .finish()
    }
}

/// What an invocation runs as: the tenant's capabilities and the handler's limits.
#[derive(Clone)]
pub struct InvokeContext {
    /// The backends and the tenant's grants.
    pub caps: Arc<Capabilities>,
    /// The handler's limits.
    pub limits: Limits,
    /// The tenant, for logs.
    pub tenant: Arc<str>,
    /// The handler name, for logs.
    pub handler: Arc<str>,
    /// Keep a record of every capability call in [`Invocation::effects`].
    pub record_effects: bool,
    /// The handler's configuration variables, which it reads through `config.get`.
    pub variables: Arc<BTreeMap<String, String>>,
    /// The route's idle instances, when it reuses them; `None` runs every
    /// message in a fresh instance.
    pub pool: Option<Arc<InstancePool>>,
}

/// The engine, the linker with every host function, and the ticker that
/// enforces deadlines. One per host process.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    cache_dir: Option<PathBuf>,
    fuel: bool,
    _ticker: EpochTicker,
}

impl Runtime {
    /// Create the engine and the linker.
    pub fn new(options: RuntimeOptions) -> Result<Self, RuntimeError> {
        let mut pool = PoolingAllocationConfig::default();
        let slot_bytes = usize::try_from(options.max_memory_mib << 20).unwrap_or(usize::MAX);
        pool.total_component_instances(options.max_instances)
            .total_core_instances(options.max_instances.saturating_mul(4))
            .total_memories(options.max_instances.saturating_mul(2))
            .total_tables(options.max_instances.saturating_mul(4))
            .max_memory_size(slot_bytes)
            .max_core_instances_per_component(64)
            .max_memories_per_component(8)
            .max_tables_per_component(32)
            .table_elements(TABLE_ELEMENTS)
            // Reset a slot for its next instance by zeroing only the pages the
            // last one dirtied (found with the PAGEMAP_SCAN ioctl where the
            // kernel has it) and keeping them mapped, instead of unmapping
            // them and taking page faults on the next message.
            .pagemap_scan(wasmtime::Enabled::Auto)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT)
            .async_stack_keep_resident(KEEP_RESIDENT)
            .decommit_batch_size(32);

        let mut config = Config::new();
        config
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .epoch_interruption(true)
            .consume_fuel(options.fuel)
            .wasm_backtrace_max_frames(None)
            .wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Disable)
            .max_wasm_stack(1 << 20);
        let engine = Engine::new(&config).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;

        let mut linker: Linker<HostState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| RuntimeError::Linker(format!("{e:#}")))?;
        bindings::Handler::add_to_linker::<_, wasmtime::component::HasSelf<CapabilityCtx>>(&mut linker, |s| {
            &mut s.caps
        })
        .map_err(|e| RuntimeError::Linker(format!("{e:#}")))?;

        let ticker = EpochTicker::start(engine.clone());
        Ok(Self { engine, linker, cache_dir: options.cache_dir, fuel: options.fuel, _ticker: ticker })
    }

    /// The engine, for tests and tools that compile components themselves.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Load, validate and pre-instantiate a handler from a .wasm file. The
    /// compiled code comes from the cache when this exact file was compiled before.
    pub fn load(&self, path: &Path) -> Result<Plugin, LoadError> {
        plugin::load(&self.engine, &self.linker, self.cache_dir.as_deref(), path)
    }

    /// Like [`Runtime::load`], from bytes in memory; `path` names it in errors.
    pub fn load_bytes(&self, path: &Path, bytes: &[u8]) -> Result<Plugin, LoadError> {
        plugin::load_bytes(&self.engine, &self.linker, self.cache_dir.as_deref(), path, bytes)
    }

    /// A store as an invocation gets it, with its host state and limiter but
    /// no deadline yet.
    fn store(&self, ctx: &InvokeContext, caps: CapabilityCtx) -> Store<HostState> {
        let memory_limit = usize::try_from(ctx.limits.memory_mib << 20).unwrap_or(usize::MAX);
        let mut store = Store::new(&self.engine, HostState::new(caps, memory_limit));
        store.limiter(|s| s);
        store
    }

    /// Create and drop a store as an invocation would, without instantiating:
    /// what the store and its host state cost. For the benchmarks.
    pub fn store_only(&self, ctx: &InvokeContext) {
        let caps = CapabilityCtx::new(ctx.caps.clone(), None, LogContext::default());
        drop(std::hint::black_box(self.store(ctx, caps)));
    }

    /// Instantiate `plugin` in a fresh store and drop it without calling it:
    /// what a message costs before its handler runs. For the benchmarks.
    pub async fn instantiate_only(&self, plugin: &Plugin, ctx: &InvokeContext) -> Result<(), Failure> {
        let caps = CapabilityCtx::new(ctx.caps.clone(), None, LogContext::default());
        let mut store = self.store(ctx, caps);
        store.set_epoch_deadline(1000);
        let instance = plugin.pre.instantiate_async(&mut store).await;
        std::hint::black_box(instance).map(drop).map_err(|e| Failure::Instantiate(format!("{e:#}")))
    }

    /// Run `plugin` on `message` within `ctx.limits`: in a fresh instance,
    /// or in an idle one of `ctx.pool` for the same key. Never fails: every
    /// way the handler can end is an [`Outcome`].
    pub async fn invoke(&self, plugin: &Plugin, message: &Message, ctx: &InvokeContext) -> Invocation {
        self.invoke_in(plugin, message, ctx, None).await
    }

    /// Like [`Runtime::invoke`], with the handler's db calls running inside
    /// `transaction`, which comes back in [`Invocation::transaction`].
    pub async fn invoke_in(
        &self,
        plugin: &Plugin,
        message: &Message,
        ctx: &InvokeContext,
        transaction: Option<Box<dyn DbTransaction>>,
    ) -> Invocation {
        let started = Instant::now();
        let limits = ctx.limits;
        let log_context =
            LogContext { tenant: ctx.tenant.clone(), handler: ctx.handler.clone(), message_id: message.id.clone() };
        let mut caps = CapabilityCtx::new(ctx.caps.clone(), message.reply_to.clone(), log_context);
        if ctx.record_effects {
            caps.effects = Some(Vec::new());
        }
        caps.transaction = transaction;
        caps.variables = ctx.variables.clone();
        let deadline = started + Duration::from_millis(limits.timeout_ms);
        caps.deadline = Some(deadline);
        let key = ctx.pool.as_ref().map(|_| PoolKey {
            tenant: ctx.tenant.clone(),
            digest: plugin.digest.clone(),
            caps: ctx.caps.clone(),
            limits,
        });
        let pooled = ctx.pool.as_ref().zip(key.as_ref()).and_then(|(pool, key)| pool.take(key));
        let reused = pooled.is_some();
        let (mut store, instance, served) = match pooled {
            Some(pooled) => {
                let mut store = pooled.store;
                // The message's own state: nothing of the last one's remains.
                let state = store.data_mut();
                state.caps = caps;
                state.memory_exceeded = false;
                (store, Some(pooled.handler), pooled.served)
            }
            None => (self.store(ctx, caps), None, 0),
        };
        // Every tick, a handler still running in WebAssembly either hits its
        // deadline or steps aside: it sleeps for LONG_RUNNING_PAUSE ticks
        // before its next tick of CPU. Handlers that finish within a tick are
        // never paused; a runaway one gets a small share of a core, so it
        // cannot starve other tenants' messages before its deadline ends it.
        // When the handler last reached a tick while computing. Time spent
        // waiting on a capability call does not count: only a handler seen
        // computing at two ticks in a row is long-running.
        let mut last_tick: Option<Instant> = None;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            let now = Instant::now();
            if now >= deadline {
                return Ok(UpdateDeadline::Interrupt);
            }
            let computing = last_tick.is_some_and(|t| now.saturating_duration_since(t) < EPOCH_TICK * 2);
            if !computing {
                last_tick = Some(now);
                return Ok(UpdateDeadline::Continue(1));
            }
            let pause = (EPOCH_TICK * LONG_RUNNING_PAUSE).min(deadline - now);
            last_tick = Some(now + pause);
            Ok(UpdateDeadline::YieldCustom(1, Box::pin(tokio::time::sleep(pause))))
        });
        let fuel = limits.fuel.unwrap_or(u64::MAX);
        if self.fuel {
            let _ = store.set_fuel(fuel);
        }

        let run = async {
            let handler = match instance {
                Some(handler) => handler,
                None => plugin.pre.instantiate_async(&mut store).await.map_err(Err)?,
            };
            let result = handler.call_handle(&mut store, message).await.map_err(Ok)?;
            Ok::<_, Result<wasmtime::Error, wasmtime::Error>>((handler, result))
        };
        let result = tokio::time::timeout(Duration::from_millis(limits.timeout_ms), run).await;
        let (outcome, handler) = match result {
            Err(_elapsed) => (Outcome::Failed(Failure::Timeout(limits.timeout_ms)), None),
            Ok(Ok((handler, Ok(())))) => (Outcome::Ok, Some(handler)),
            Ok(Ok((_, Err(HandlerError::Retry(r))))) => {
                (Outcome::Retry { delay: Duration::from_millis(r.delay_ms), reason: r.reason }, None)
            }
            Ok(Ok((_, Err(HandlerError::Reject(reason))))) => (Outcome::Reject(reason), None),
            Ok(Err(Err(e))) => (Outcome::Failed(Failure::Instantiate(format!("{e:#}"))), None),
            Ok(Err(Ok(e))) => (Outcome::Failed(classify(&e, store.data(), &limits)), None),
        };
        let fuel_used = if self.fuel { store.get_fuel().ok().map(|left| fuel - left) } else { None };
        let caps = match (&ctx.pool, key, handler) {
            // Only an instance whose message returned ok may serve again.
            (Some(pool), Some(key), Some(handler)) => {
                let idle = CapabilityCtx::new(ctx.caps.clone(), None, LogContext::default());
                let caps = std::mem::replace(&mut store.data_mut().caps, idle);
                pool.give_back(InstancePool::pooled(key, store, handler, served + 1));
                caps
            }
            _ => store.into_data().caps,
        };
        let ok = outcome == Outcome::Ok;
        Invocation {
            outcome,
            outbox: if ok { caps.outbox } else { Vec::new() },
            compensations: caps.compensations,
            effects: caps.effects.unwrap_or_default(),
            elapsed: started.elapsed(),
            fuel_used,
            log_lines_dropped: caps.log_lines_dropped,
            http_requests: caps.http_requests as u64,
            reused,
            transaction: caps.transaction,
        }
    }
}

/// How much of each memory, table and stack slot stays mapped between instances.
const KEEP_RESIDENT: usize = 16 << 20;

/// The most table elements any one table may have in the pool.
const TABLE_ELEMENTS: usize = 20_000;

fn classify(error: &wasmtime::Error, state: &HostState, limits: &Limits) -> Failure {
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Failure::Timeout(limits.timeout_ms),
        Some(Trap::OutOfFuel) => Failure::Fuel(limits.fuel.unwrap_or_default()),
        _ if state.memory_exceeded => Failure::Memory(limits.memory_mib),
        Some(trap) => Failure::Trap(trap.to_string()),
        None => Failure::Trap(format!("{error:#}")),
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on its own thread, so a
/// handler spinning in WebAssembly hits its deadline even though it never
/// yields to the async runtime.
struct EpochTicker {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let spawned = std::thread::Builder::new().name("switchyard-epoch".into()).spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the epoch thread; handler deadlines rely on the async timeout alone");
        }
        Self { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
