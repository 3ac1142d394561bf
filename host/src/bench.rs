//! The dispatch benchmark behind `switchyard bench`: the cost of running one
//! message through a trivial handler on a fresh instance, side by side with a
//! native Rust function doing the same work, in one run.
//!
//! It also splits the WebAssembly cost into its phases (store, instantiate,
//! call and drop), which is where dispatch overhead is won or lost.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::Store;

use crate::capabilities::backends::memory::MemoryCache;
use crate::capabilities::cache::CacheBackend;
use crate::capabilities::db::{DbBackend, SqlDialect};
use crate::capabilities::search::SearchBackend;
use crate::capabilities::{BackendError, Backends, Capabilities};
use crate::config::Limits;
use crate::runtime::bindings::db::{RowSet, Value};
use crate::runtime::bindings::search::Hit;
use crate::runtime::bindings::{HandlerError, Message};
use crate::runtime::state::{HostState, LogContext};
use crate::runtime::{InvokeContext, LoadError, Outcome, Runtime, RuntimeError, RuntimeOptions};

/// The benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The engine could not be set up.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The handler could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The handler did not ack the benchmark message.
    #[error("the benchmark handler did not return ok: {0:?}")]
    NotOk(Outcome),
}

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
}

/// The native counterpart of the `noop` handler.
#[inline(never)]
fn native_handle(message: &Message) -> Result<(), HandlerError> {
    std::hint::black_box(message.payload.len());
    Ok(())
}

/// Backends that refuse everything: the benchmark handler calls none, and
/// opening real ones would only add noise.
struct Unused;

#[async_trait::async_trait]
impl DbBackend for Unused {
    fn dialect(&self) -> SqlDialect {
        SqlDialect::Sqlite
    }
    async fn execute(&self, _: &str, _: Vec<Value>) -> Result<u64, BackendError> {
        Err(BackendError::Unavailable("no database in the dispatch benchmark".into()))
    }
    async fn query(&self, _: &str, _: Vec<Value>) -> Result<RowSet, BackendError> {
        Err(BackendError::Unavailable("no database in the dispatch benchmark".into()))
    }
}

#[async_trait::async_trait]
impl SearchBackend for Unused {
    async fn index(&self, _: &str, _: &str, _: serde_json::Map<String, serde_json::Value>) -> Result<(), BackendError> {
        Err(BackendError::Unavailable("no search in the dispatch benchmark".into()))
    }
    async fn delete(&self, _: &str, _: &str) -> Result<(), BackendError> {
        Err(BackendError::Unavailable("no search in the dispatch benchmark".into()))
    }
    async fn query(&self, _: &str, _: &str, _: usize) -> Result<Vec<Hit>, BackendError> {
        Err(BackendError::Unavailable("no search in the dispatch benchmark".into()))
    }
}

fn message() -> Message {
    Message {
        id: "bench-1".into(),
        source: "bench".into(),
        topic: "bench".into(),
        key: None,
        headers: vec![("content-type".into(), "application/json".into())],
        payload: br#"{"id":"p1","name":"widget","price":12.5}"#.to_vec(),
        attempt: 1,
        reply_to: None,
        timestamp_ms: None,
    }
}

fn per_message(elapsed: Duration, n: u32) -> f64 {
    elapsed.as_nanos() as f64 / f64::from(n.max(1))
}

/// Measure `plugin` against the native function, `messages` times each.
pub async fn dispatch(plugin: &Path, messages: u32) -> Result<DispatchReport, BenchError> {
    let runtime = Arc::new(Runtime::new(RuntimeOptions::default())?);
    let plugin = Arc::new(runtime.load(plugin)?);
    let cache: Arc<dyn CacheBackend> = Arc::new(MemoryCache::new(1000));
    let backends = Arc::new(Backends { cache, db: Arc::new(Unused), search: Arc::new(Unused) });
    let ctx = InvokeContext {
        caps: Arc::new(Capabilities::unrestricted(backends)),
        limits: Limits::default(),
        tenant: "bench".into(),
        handler: "noop".into(),
        record_effects: false,
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

    let new_state = || HostState::new(ctx.caps.clone(), 64 << 20, None, LogContext::default());
    let start = Instant::now();
    for _ in 0..messages {
        let store = Store::new(runtime.engine(), new_state());
        drop(std::hint::black_box(store));
    }
    let store_ns = per_message(start.elapsed(), messages);

    let start = Instant::now();
    for _ in 0..messages {
        let mut store = Store::new(runtime.engine(), new_state());
        store.set_epoch_deadline(1000);
        let instance = plugin.pre.instantiate_async(&mut store).await;
        drop(std::hint::black_box(instance));
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

    Ok(DispatchReport { messages, native_ns, wasm_ns, store_ns, instantiate_ns, parallel_rate })
}

/// One handler's costs in [`languages`].
#[derive(Debug, Clone)]
pub struct LanguageReport {
    /// The label it was given, such as `python`.
    pub label: String,
    /// The component's size in bytes.
    pub bytes: u64,
    /// Loading with an empty compiled-code cache: compile, serialize, link.
    pub first_load: Duration,
    /// Loading again from the compiled-code cache.
    pub cached_load: Duration,
    /// The full path per message: fresh store, instantiate, call, drop.
    pub per_message_ns: f64,
    /// Of that, store plus instantiation (and the slot reset on drop).
    pub instantiate_ns: f64,
    /// Minor page faults per message on the full path (Linux; 0 elsewhere).
    pub faults_per_message: f64,
}

/// This process's minor page faults so far, from /proc/self/stat (field 10).
fn minor_faults() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // The command name may hold spaces; the fields after it do not.
            let rest = &stat[stat.rfind(')')? + 2..];
            rest.split(' ').nth(7)?.parse().ok()
        })
        .unwrap_or(0)
}

/// The product-change message every language's cache-update handler gets.
fn product_change() -> Message {
    Message { payload: br#"{"id":"p1","name":"widget","price":12.5,"tags":["a","b"]}"#.to_vec(), ..message() }
}

/// Load and run each `(label, .wasm)` on the same product change, `messages`
/// times each, and report their costs side by side. The handlers must ack it
/// (the `cache-update` examples do).
pub async fn languages(handlers: &[(String, std::path::PathBuf)], messages: u32) -> Result<Vec<LanguageReport>, BenchError> {
    let cache_dir = tempfile::tempdir().map_err(|e| RuntimeError::Engine(format!("cannot create a cache directory: {e}")))?;
    let options = RuntimeOptions { cache_dir: Some(cache_dir.path().to_path_buf()), ..RuntimeOptions::default() };
    let runtime = Runtime::new(options)?;
    let cache: Arc<dyn CacheBackend> = Arc::new(MemoryCache::new(1000));
    let backends = Arc::new(Backends { cache, db: Arc::new(Unused), search: Arc::new(Unused) });
    let caps = Arc::new(Capabilities::unrestricted(backends));
    let msg = product_change();
    let mut reports = Vec::new();
    for (label, path) in handlers {
        let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or_default();
        let start = Instant::now();
        runtime.load(path)?;
        let first_load = start.elapsed();
        let start = Instant::now();
        let plugin = runtime.load(path)?;
        let cached_load = start.elapsed();

        let ctx = InvokeContext {
            caps: caps.clone(),
            limits: Limits::default(),
            tenant: "bench".into(),
            handler: label.as_str().into(),
            record_effects: false,
        };
        let outcome = runtime.invoke(&plugin, &msg, &ctx).await.outcome;
        if outcome != Outcome::Ok {
            return Err(BenchError::NotOk(outcome));
        }
        for _ in 0..messages.min(100) {
            let _ = runtime.invoke(&plugin, &msg, &ctx).await;
        }
        let faults = minor_faults();
        let start = Instant::now();
        for _ in 0..messages {
            let _ = std::hint::black_box(runtime.invoke(&plugin, &msg, &ctx).await);
        }
        let per_message_ns = per_message(start.elapsed(), messages);
        let faults_per_message = minor_faults().saturating_sub(faults) as f64 / f64::from(messages.max(1));

        let new_state = || HostState::new(caps.clone(), 64 << 20, None, LogContext::default());
        let start = Instant::now();
        for _ in 0..messages {
            let mut store = Store::new(runtime.engine(), new_state());
            store.limiter(|s| s);
            store.set_epoch_deadline(1000);
            let instance = plugin.pre.instantiate_async(&mut store).await;
            drop(std::hint::black_box(instance));
        }
        let instantiate_ns = per_message(start.elapsed(), messages);
        reports.push(LanguageReport {
            label: label.clone(),
            bytes,
            first_load,
            cached_load,
            per_message_ns,
            instantiate_ns,
            faults_per_message,
        });
    }
    Ok(reports)
}
