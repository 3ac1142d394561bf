//! `switchyard bench dispatch --languages`: the cache-update handler in each
//! language side by side: load times, per-message cost fresh and with
//! instance reuse, page faults.

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard::capabilities::backends::http::PooledHttp;
use switchyard::capabilities::backends::memory::MemoryCache;
use switchyard::capabilities::context::{Backends, Capabilities};
use switchyard::config::Limits;
use switchyard::contract::Message;
use switchyard::contract::cache::CacheBackend;
use switchyard::runtime::{InvokeContext, Outcome, Runtime, RuntimeError, RuntimeOptions};

use super::support::{BenchError, Unused, message, minor_faults, per_message};

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
    /// Per message with bounded instance reuse (see [`super::dispatch::REUSE`]).
    pub reused_ns: f64,
    /// Minor page faults per message on the full path (Linux; 0 elsewhere).
    pub faults_per_message: f64,
}

/// The product-change message every language's cache-update handler gets.
fn product_change() -> Message {
    Message { payload: br#"{"id":"p1","name":"widget","price":12.5,"tags":["a","b"]}"#.to_vec(), ..message() }
}

/// Load and run each `(label, .wasm)` on the same product change, `messages`
/// times each, and report their costs side by side. The handlers must ack it
/// (the `cache-update` examples do).
pub async fn languages(
    handlers: &[(String, std::path::PathBuf)],
    messages: u32,
) -> Result<Vec<LanguageReport>, BenchError> {
    let cache_dir =
        tempfile::tempdir().map_err(|e| RuntimeError::Engine(format!("cannot create a cache directory: {e}")))?;
    let options = RuntimeOptions { cache_dir: Some(cache_dir.path().to_path_buf()), ..RuntimeOptions::default() };
    let runtime = Runtime::new(options)?;
    let cache: Arc<dyn CacheBackend> = Arc::new(MemoryCache::new(1000));
    let http = Arc::new(PooledHttp::new()?);
    let backends = Arc::new(Backends { cache, db: Arc::new(Unused), search: Arc::new(Unused), http });
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
            variables: Default::default(),
            pool: None,
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

        let start = Instant::now();
        for _ in 0..messages {
            let _ = runtime.instantiate_only(&plugin, &ctx).await;
        }
        let instantiate_ns = per_message(start.elapsed(), messages);

        let reusing = super::dispatch::with_reuse(&ctx);
        let start = Instant::now();
        for _ in 0..messages {
            let _ = std::hint::black_box(runtime.invoke(&plugin, &msg, &reusing).await);
        }
        let reused_ns = per_message(start.elapsed(), messages);
        reports.push(LanguageReport {
            label: label.clone(),
            bytes,
            first_load,
            cached_load,
            per_message_ns,
            instantiate_ns,
            reused_ns,
            faults_per_message,
        });
    }
    Ok(reports)
}
