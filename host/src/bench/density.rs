//! `switchyard bench density`: start time and resident memory of many
//! tenants sharing one .wasm, and of many distinct handlers.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use switchyard::capabilities::context::Capabilities;
use switchyard::config::Limits;
use switchyard::runtime::registry::Registry;
use switchyard::runtime::{InvokeContext, Outcome, Runtime};
use switchyard::wiring::{open_backends, runtime_options};

use super::support::{BenchError, message, rss_mib};

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

fn tenants_config(dir: &Path, handlers: &[std::path::PathBuf]) -> Result<switchyard::Config, BenchError> {
    let mut text = String::from("data_dir = \".\"\n");
    for (i, wasm) in handlers.iter().enumerate() {
        text.push_str(&format!("[tenants.t{i}.handlers.h]\nwasm = {:?}\n", wasm.display().to_string()));
    }
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, text).map_err(|e| BenchError::Io(path.display().to_string(), e))?;
    Ok(switchyard::Config::load(&path)?)
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
    let runtime = Arc::new(Runtime::new(runtime_options(&config))?);
    let registry = Registry::load(&config, runtime.clone())?;
    let backends = Arc::new(open_backends(&config).await?);
    for slot in registry.slots() {
        let ctx = InvokeContext {
            caps: Arc::new(Capabilities::unrestricted(backends.clone())),
            limits: Limits::default(),
            tenant: slot.tenant.clone(),
            handler: slot.handler.clone(),
            record_effects: false,
            variables: Default::default(),
            pool: None,
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
    let cold = Registry::load(&config, Arc::new(Runtime::new(runtime_options(&config))?))?;
    let distinct_cold_s = start.elapsed().as_secs_f64();
    drop(cold);
    let start = Instant::now();
    let warm = Registry::load(&config, Arc::new(Runtime::new(runtime_options(&config))?))?;
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
