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
    /// A benchmark file could not be written.
    #[error("benchmark file {0}: {1}")]
    Io(String, std::io::Error),
    /// The generated config was refused.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A handler was refused.
    #[error(transparent)]
    Deploy(#[from] crate::runtime::registry::DeployError),
    /// A backend could not be opened.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The host could not be built.
    #[error(transparent)]
    Host(#[from] crate::dispatch::HostError),
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

/// What `switchyard bench density` measured.
#[derive(Debug, Clone)]
pub struct DensityReport {
    /// Tenants loaded from one .wasm.
    pub tenants: usize,
    /// Seconds to load them, the host built and every handler run once.
    pub tenants_start_s: f64,
    /// Resident memory after loading them, in MiB.
    pub tenants_rss_mib: f64,
    /// Distinct handlers loaded.
    pub distinct: usize,
    /// Seconds to load them with an empty compiled-code cache.
    pub distinct_cold_s: f64,
    /// Seconds to load them again from the cache, in a new engine.
    pub distinct_warm_s: f64,
    /// Resident memory after loading them, in MiB.
    pub distinct_rss_mib: f64,
    /// Resident memory before either, in MiB.
    pub baseline_rss_mib: f64,
}

/// The resident memory of this process, in MiB.
pub fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A copy of a component that differs only by a custom section, so it has
/// its own digest and compiles as a distinct handler.
pub fn variant(component: &[u8], n: usize) -> Vec<u8> {
    fn leb(mut v: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"switchyard-variant";
    let payload = n.to_le_bytes();
    let mut body = Vec::new();
    leb(name.len(), &mut body);
    body.extend_from_slice(name);
    body.extend_from_slice(&payload);
    let mut out = component.to_vec();
    out.push(0); // custom section
    leb(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

fn tenants_config(dir: &Path, handlers: &[std::path::PathBuf]) -> Result<crate::Config, BenchError> {
    let mut text = String::from("data_dir = \".\"\n");
    for (i, wasm) in handlers.iter().enumerate() {
        text.push_str(&format!("[tenants.t{i}.handlers.h]\nwasm = {:?}\n", wasm.display().to_string()));
    }
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, text).map_err(|e| BenchError::Io(path.display().to_string(), e))?;
    Ok(crate::Config::load(&path)?)
}

/// Load `tenants` tenants that share one .wasm, then `distinct` handlers
/// built from distinct .wasm files, and measure start time and memory.
pub async fn density(plugin: &Path, tenants: usize, distinct: usize) -> Result<DensityReport, BenchError> {
    let baseline_rss_mib = rss_mib();
    let io = |what: &Path, e| BenchError::Io(what.display().to_string(), e);
    let plugin = &std::fs::canonicalize(plugin).map_err(|e| io(plugin, e))?;

    let dir = tempfile::tempdir().map_err(|e| io(Path::new("temporary directory"), e))?;
    let shared: Vec<_> = (0..tenants).map(|_| plugin.to_path_buf()).collect();
    let config = tenants_config(dir.path(), &shared)?;
    let msg = message();
    let start = Instant::now();
    let runtime = Arc::new(Runtime::new(crate::dispatch::runtime_options(&config))?);
    let registry = crate::runtime::registry::Registry::load(&config, runtime.clone())?;
    let backends = Arc::new(crate::capabilities::backends::open(&config).await?);
    for slot in registry.slots() {
        let ctx = InvokeContext {
            caps: Arc::new(Capabilities::unrestricted(backends.clone())),
            limits: Limits::default(),
            tenant: slot.tenant.clone(),
            handler: slot.handler.clone(),
            record_effects: false,
        };
        let outcome = runtime.invoke(&slot.live().plugin, &msg, &ctx).await.outcome;
        if outcome != Outcome::Ok {
            return Err(BenchError::NotOk(outcome));
        }
    }
    let tenants_start_s = start.elapsed().as_secs_f64();
    let tenants_rss_mib = rss_mib();
    drop(registry);

    let bytes = std::fs::read(plugin).map_err(|e| io(plugin, e))?;
    let variants_dir = tempfile::tempdir().map_err(|e| io(Path::new("temporary directory"), e))?;
    let mut files = Vec::new();
    for i in 0..distinct {
        let path = variants_dir.path().join(format!("variant-{i}.wasm"));
        std::fs::write(&path, variant(&bytes, i)).map_err(|e| io(&path, e))?;
        files.push(path);
    }
    let config = tenants_config(variants_dir.path(), &files)?;
    let start = Instant::now();
    let cold = crate::runtime::registry::Registry::load(
        &config,
        Arc::new(Runtime::new(crate::dispatch::runtime_options(&config))?),
    )?;
    let distinct_cold_s = start.elapsed().as_secs_f64();
    drop(cold);
    let start = Instant::now();
    let warm = crate::runtime::registry::Registry::load(
        &config,
        Arc::new(Runtime::new(crate::dispatch::runtime_options(&config))?),
    )?;
    let distinct_warm_s = start.elapsed().as_secs_f64();
    let distinct_rss_mib = rss_mib();
    drop(warm);

    Ok(DensityReport {
        tenants,
        tenants_start_s,
        tenants_rss_mib,
        distinct,
        distinct_cold_s,
        distinct_warm_s,
        distinct_rss_mib,
        baseline_rss_mib,
    })
}

/// What `switchyard bench isolation` measured.
#[derive(Debug, Clone)]
pub struct IsolationReport {
    /// Messages of the well-behaved tenant per run.
    pub messages: usize,
    /// Attack messages the hostile tenant sent per attacked run.
    pub attacks: usize,
    /// Each round's messages per second of the well-behaved tenant: alone,
    /// then while the hostile tenant attacks.
    pub rounds: Vec<(f64, f64)>,
}

impl IsolationReport {
    /// The median over the rounds of attacked over alone. Rounds alternate
    /// alone and attacked, so a slow spell of the machine lands on both.
    pub fn median_ratio(&self) -> f64 {
        let mut ratios: Vec<f64> = self.rounds.iter().map(|(alone, attacked)| attacked / alone.max(1e-9)).collect();
        ratios.sort_by(f64::total_cmp);
        match ratios.len() {
            0 => 0.0,
            n if n % 2 == 1 => ratios[n / 2],
            n => (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0,
        }
    }
}

/// Run a well-behaved tenant alone, then next to a hostile tenant looping,
/// bombing memory and recursing, and compare its throughput. The hostile
/// tenant has the quotas a shared host would give an untrusted tenant: two
/// invocations in flight, 50 per second, 100 ms and 16 MiB each. Runs
/// `rounds` rounds, each alone then attacked, after one uncounted warm-up run.
pub async fn isolation(
    cache_update: &Path,
    hostile: &Path,
    messages: usize,
    attacks: &[String],
    rounds: usize,
) -> Result<IsolationReport, BenchError> {
    let absolute = |p: &Path| std::fs::canonicalize(p).map_err(|e| BenchError::Io(p.display().to_string(), e));
    let (cache_update, hostile) = (&absolute(cache_update)?, &absolute(hostile)?);
    let dir = tempfile::tempdir().map_err(|e| BenchError::Io("temporary directory".into(), e))?;
    let good: String = (0..messages)
        .map(|i| format!("{{\"topic\": \"product.changed\", \"payload\": {{\"id\": \"{i}\", \"name\": \"thing\"}}}}\n"))
        .collect();
    let attack_count = 600;
    let bad: String = (0..attack_count)
        .map(|i| {
            format!("{{\"topic\": \"attack\", \"payload\": {{\"attack\": \"{}\"}}}}\n", attacks[i % attacks.len()])
        })
        .collect();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).map_err(|e| BenchError::Io(path.display().to_string(), e))
    };
    write("good.jsonl", &good)?;
    write("bad.jsonl", &bad)?;
    let config_text = |with_attack: bool| {
        let mut text = format!(
            "data_dir = \".\"\n[sources.good]\ntype = \"file\"\npath = \"good.jsonl\"\nreplay = true\n\
             [tenants.victim.grants]\ncache_prefixes = [\"product:\"]\n\
             [tenants.victim.handlers.cache-update]\nwasm = {:?}\n\
             [[routes]]\nsource = \"good\"\ntopic = \"*\"\ntenant = \"victim\"\nhandler = \"cache-update\"\nconcurrency = 32\n",
            cache_update.display().to_string()
        );
        if with_attack {
            text.push_str(&format!(
                "[sources.bad]\ntype = \"file\"\npath = \"bad.jsonl\"\nreplay = true\n\
                 [tenants.hostile.grants]\ncache_prefixes = [\"hostile:\"]\ndb_tables = [\"hostile\"]\npublish = [\"hostile.*\"]\n\
                 [tenants.hostile.quotas]\nmax_in_flight = 2\nrate_per_sec = 50.0\ntimeout_ms = 100\nmemory_mib = 16\n\
                 [tenants.hostile.handlers.attack]\nwasm = {:?}\n\
                 [[routes]]\nsource = \"bad\"\ntopic = \"*\"\ntenant = \"hostile\"\nhandler = \"attack\"\nmax_attempts = 1\n",
                hostile.display().to_string()
            ));
        }
        text
    };
    let mut rates = Vec::new();
    // A first run alone warms the machine (page cache, CPU frequency,
    // allocator) and is not counted.
    for with_attack in std::iter::once(false).chain((0..rounds.max(1)).flat_map(|_| [false, true])) {
        let path = dir.path().join(format!("switchyard-{with_attack}.toml"));
        std::fs::write(&path, config_text(with_attack)).map_err(|e| BenchError::Io(path.display().to_string(), e))?;
        let config = crate::Config::load(&path)?;
        let host = crate::Host::build(&config).await?;
        let registry = host.registry();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let run = tokio::spawn(host.run(shutdown.clone()));
        let start = Instant::now();
        let Some(victim) = registry.slot("victim", "cache-update").cloned() else {
            return Err(BenchError::NotOk(Outcome::Reject("no victim handler".into())));
        };
        while victim.metrics.handled.load(std::sync::atomic::Ordering::Relaxed) < messages as u64 {
            if start.elapsed() > Duration::from_secs(600) {
                return Err(BenchError::NotOk(Outcome::Failed(crate::runtime::Failure::Timeout(600_000))));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        rates.push(messages as f64 / start.elapsed().as_secs_f64());
        shutdown.cancel();
        let _ = run.await;
    }
    let rounds = rates[1..].chunks_exact(2).map(|pair| (pair[0], pair[1])).collect();
    Ok(IsolationReport { messages, attacks: attack_count, rounds })
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
pub async fn languages(
    handlers: &[(String, std::path::PathBuf)],
    messages: u32,
) -> Result<Vec<LanguageReport>, BenchError> {
    let cache_dir =
        tempfile::tempdir().map_err(|e| RuntimeError::Engine(format!("cannot create a cache directory: {e}")))?;
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
