//! Deploy by dropping a file: `<watch_dir>/<tenant>/<handler>.wasm` is
//! deployed whenever it changes. The directory is polled, which works the
//! same on every filesystem, including shared and network mounts a fleet of
//! hosts can watch together.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::runtime::registry::Registry;

/// How often the directory is scanned.
pub const POLL: Duration = Duration::from_millis(250);

/// Watch `dir` and deploy what changes in it, until `shutdown`.
pub async fn watch(registry: Arc<Registry>, dir: PathBuf, shutdown: CancellationToken) {
    tracing::info!(dir = %dir.display(), "watching for handler deploys");
    let mut seen: HashMap<PathBuf, (SystemTime, u64)> = HashMap::new();
    loop {
        for (tenant, handler, path) in candidates(&registry, &dir) {
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            let stamp = (meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len());
            if seen.get(&path) == Some(&stamp) {
                continue;
            }
            seen.insert(path.clone(), stamp);
            let registry = registry.clone();
            let result = tokio::task::spawn_blocking(move || deploy_file(&registry, &tenant, &handler, &path)).await;
            if let Err(e) = result {
                tracing::error!(error = %e, "watched deploy failed");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

fn candidates(registry: &Registry, dir: &Path) -> Vec<(String, String, PathBuf)> {
    registry
        .slots()
        .map(|s| {
            (s.tenant.to_string(), s.handler.to_string(), dir.join(&*s.tenant).join(format!("{}.wasm", s.handler)))
        })
        .filter(|(_, _, path)| path.exists())
        .collect()
}

fn deploy_file(registry: &Registry, tenant: &str, handler: &str, path: &Path) {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot read watched handler");
            return;
        }
    };
    match registry.deploy_changed(tenant, handler, &bytes, &format!("watched: {}", path.display())) {
        Ok(Some(info)) => {
            tracing::info!(file = %path.display(), version = info.version, "deployed from the watched directory")
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(file = %path.display(), error = %e, "deploy refused; the live version keeps serving"),
    }
}
