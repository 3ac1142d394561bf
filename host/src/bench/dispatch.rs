//! `switchyard bench dispatch`: the cost of running one message through a
//! trivial handler on a fresh instance, side by side with a native Rust
//! function doing the same work, in one run.
//!
//! It also splits the WebAssembly cost into its phases (store, instantiate,
//! call and drop), which is where dispatch overhead is won or lost, and
//! measures the same handler with bounded instance reuse.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use switchyard::capabilities::backends::http::PooledHttp;
use switchyard::capabilities::backends::memory::MemoryCache;
use switchyard::capabilities::context::{Backends, Capabilities};
use switchyard::config::{Instances, Limits};
use switchyard::contract::Message;
use switchyard::contract::bindings::HandlerError;
use switchyard::contract::cache::CacheBackend;
use switchyard::runtime::pool::InstancePool;
use switchyard::runtime::{InvokeContext, Outcome, Runtime, RuntimeOptions};

use super::support::{BenchError, Unused, message, per_message};

/// Per-message times, in nanoseconds.
#[derive(Debug, Clone)]
pub struct DispatchReport {
    /// Messages per measurement.
    pub messages: u32,
    /// The native function.
    pub native_ns: f64,
    /// The full path through the runtime: fresh store, instantiate, call, drop.
    pub wasm_ns: f64,
    /// Creating and dropping a store with its host state, nothing else.
    pub store_ns: f64,
    /// Store plus instantiation, without the call.
    pub instantiate_ns: f64,
    /// Messages per second through the full path with one task per core.
    pub parallel_rate: f64,
    /// The path with bounded instance reuse (`instances.reuse` of
    /// [`REUSE`]): a fresh instance only every [`REUSE`] messages.
    pub reused_ns: f64,
}

/// Messages per instance in the reuse measurements.
pub const REUSE: u32 = 128;

/// `ctx` with a pool of instances reused up to [`REUSE`] times.
pub fn with_reuse(ctx: &InvokeContext) -> InvokeContext {
    let instances = Instances { reuse: REUSE, idle_ms: 60_000, max_memory_mib: None };
    InvokeContext { pool: Some(Arc::new(InstancePool::new(&instances, &ctx.limits, 1))), ..ctx.clone() }
}

/// The native counterpart of the `noop` handler.
#[inline(never)]
fn native_handle(message: &Message) -> Result<(), HandlerError> {
    std::hint::black_box(message.payload.len());
    Ok(())
}

/// Measure `plugin` against the native function, `messages` times each.
pub async fn dispatch(plugin: &Path, messages: u32) -> Result<DispatchReport, BenchError> {
    let runtime = Arc::new(Runtime::new(RuntimeOptions::default())?);
    let plugin = Arc::new(runtime.load(plugin)?);
    let cache: Arc<dyn CacheBackend> = Arc::new(MemoryCache::new(1000));
    let http = Arc::new(PooledHttp::new()?);
    let backends = Arc::new(Backends { cache, db: Arc::new(Unused), search: Arc::new(Unused), http });
    let ctx = InvokeContext {
        caps: Arc::new(Capabilities::unrestricted(backends)),
        limits: Limits::default(),
        tenant: "bench".into(),
        handler: "noop".into(),
        record_effects: false,
        variables: Default::default(),
        pool: None,
    };
    let msg = message();
    let outcome = runtime.invoke(&plugin, &msg, &ctx).await.outcome;
    if outcome != Outcome::Ok {
        return Err(BenchError::NotOk(outcome));
    }

    // Warm up every path once before timing it.
    for _ in 0..1000 {
        let _ = runtime.invoke(&plugin, &msg, &ctx).await;
    }

    let start = Instant::now();
    for _ in 0..messages {
        let _ = std::hint::black_box(native_handle(std::hint::black_box(&msg)));
    }
    let native_ns = per_message(start.elapsed(), messages);

    let start = Instant::now();
    for _ in 0..messages {
        let _ = std::hint::black_box(runtime.invoke(&plugin, &msg, &ctx).await);
    }
    let wasm_ns = per_message(start.elapsed(), messages);

    let reusing = with_reuse(&ctx);
    for _ in 0..1000 {
        let _ = runtime.invoke(&plugin, &msg, &reusing).await;
    }
    let start = Instant::now();
    for _ in 0..messages {
        let _ = std::hint::black_box(runtime.invoke(&plugin, &msg, &reusing).await);
    }
    let reused_ns = per_message(start.elapsed(), messages);

    let start = Instant::now();
    for _ in 0..messages {
        runtime.store_only(&ctx);
    }
    let store_ns = per_message(start.elapsed(), messages);

    let start = Instant::now();
    for _ in 0..messages {
        let _ = runtime.instantiate_only(&plugin, &ctx).await;
    }
    let instantiate_ns = per_message(start.elapsed(), messages);

    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as u32;
    let per_worker = messages / workers;
    let start = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (runtime, plugin, ctx, msg) = (runtime.clone(), plugin.clone(), ctx.clone(), msg.clone());
            tokio::spawn(async move {
                for _ in 0..per_worker {
                    let _ = std::hint::black_box(runtime.invoke(&plugin, &msg, &ctx).await);
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    let parallel_rate = f64::from(per_worker * workers) / start.elapsed().as_secs_f64();

    Ok(DispatchReport { messages, native_ns, wasm_ns, store_ns, instantiate_ns, parallel_rate, reused_ns })
}
