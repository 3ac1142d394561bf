//! The plugin registry: every version of each tenant's handler, and the live
//! one behind an atomic pointer.
//!
//! A deploy compiles and validates the new version first: it must be a
//! component, export the handler world, and import only capabilities its
//! tenant is granted. Only then is the pointer swapped. A delivery takes the
//! live version when its invocation starts and keeps it to the end, so new
//! deliveries run the new version while those in flight finish on the old one;
//! no message is lost or run twice by a swap. Compiled code is shared by
//! content digest, so many tenants with the same .wasm compile it once.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::Serialize;
use wasmtime::component::types::ComponentItem;

use super::engine::Runtime;
use super::metrics::HandlerMetrics;
use super::plugin::{self, LoadError, Plugin};
use crate::config::{Config, Grants};

/// A deploy or rollback that was refused. The live version is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// No such tenant or handler in the config.
    #[error("tenant {tenant:?} has no handler {handler:?}")]
    UnknownHandler {
        /// The tenant.
        tenant: String,
        /// The handler.
        handler: String,
    },
    /// The new version does not load.
    #[error("tenant {tenant:?} handler {handler:?}: {error}")]
    Load {
        /// The tenant.
        tenant: String,
        /// The handler.
        handler: String,
        /// Why.
        error: LoadError,
    },
    /// The new version imports a capability its tenant is not granted.
    #[error("tenant {tenant:?} handler {handler:?}: imports {import} but the tenant is granted no {capability}")]
    NotGranted {
        /// The tenant.
        tenant: String,
        /// The handler.
        handler: String,
        /// The import.
        import: String,
        /// The capability it needs a grant for.
        capability: &'static str,
    },
    /// Rollback to a version that does not exist.
    #[error("tenant {tenant:?} handler {handler:?} has no version {version}")]
    UnknownVersion {
        /// The tenant.
        tenant: String,
        /// The handler.
        handler: String,
        /// The version asked for.
        version: u32,
    },
}

/// One version of a handler.
pub struct Version {
    /// 1 for the version loaded at start, then counting up per deploy.
    pub number: u32,
    /// The loaded component.
    pub plugin: Arc<Plugin>,
    /// Where it came from: the config, the admin API, the watched directory.
    pub origin: String,
    /// When it was deployed, in milliseconds since the epoch.
    pub deployed_at_ms: u64,
    /// When it became live (the last time, for a rollback).
    live_since: Mutex<Instant>,
    /// How long after going live it served its first message.
    first_served: OnceLock<std::time::Duration>,
}

impl Version {
    /// Note that this version served a message; the first call records the
    /// time from going live.
    pub fn served(&self) {
        if self.first_served.get().is_none() {
            let since = self.live_since.lock().map(|t| t.elapsed()).unwrap_or_default();
            let _ = self.first_served.set(since);
        }
    }
}

/// What the admin API reports of a version.
#[derive(Debug, Clone, Serialize)]
pub struct VersionInfo {
    /// The version number.
    pub version: u32,
    /// SHA-256 of the .wasm.
    pub digest: String,
    /// Where it came from.
    pub origin: String,
    /// When it was deployed, in milliseconds since the epoch.
    pub deployed_at_ms: u64,
    /// Whether it is the live version.
    pub live: bool,
    /// Whether its compiled code came from the cache.
    pub cached: bool,
    /// Milliseconds from going live to serving its first message, once it has.
    pub first_served_after_ms: Option<f64>,
}

/// The versions of one (tenant, handler), and the live one.
pub struct HandlerSlot {
    /// The tenant.
    pub tenant: Arc<str>,
    /// The handler.
    pub handler: Arc<str>,
    live: ArcSwap<Version>,
    versions: Mutex<Vec<Arc<Version>>>,
    /// Counters and latencies of this handler.
    pub metrics: HandlerMetrics,
}

impl HandlerSlot {
    /// The live version; hold it for the whole invocation.
    pub fn live(&self) -> Arc<Version> {
        self.live.load_full()
    }

    fn info(&self, v: &Version) -> VersionInfo {
        VersionInfo {
            version: v.number,
            digest: v.plugin.digest.clone(),
            origin: v.origin.clone(),
            deployed_at_ms: v.deployed_at_ms,
            live: self.live.load().number == v.number,
            cached: v.plugin.cached,
            first_served_after_ms: v.first_served.get().map(|d| d.as_secs_f64() * 1000.0),
        }
    }

    fn make_live(&self, version: Arc<Version>) {
        if let Ok(mut since) = version.live_since.lock() {
            *since = Instant::now();
        }
        self.live.store(version);
    }
}

/// Every handler slot, by (tenant, handler).
pub struct Registry {
    runtime: Arc<Runtime>,
    slots: BTreeMap<(String, String), Arc<HandlerSlot>>,
    grants: HashMap<String, Grants>,
    /// Loaded components by digest, so the same .wasm is loaded once.
    by_digest: Mutex<HashMap<String, Arc<Plugin>>>,
    deploy_lock: Mutex<()>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Registry {
    /// Load every handler in `config` as its version 1.
    pub fn load(config: &Config, runtime: Arc<Runtime>) -> Result<Self, DeployError> {
        let mut registry = Self {
            runtime,
            slots: BTreeMap::new(),
            grants: config.tenants.iter().map(|(name, t)| (name.clone(), t.grants.clone())).collect(),
            by_digest: Mutex::new(HashMap::new()),
            deploy_lock: Mutex::new(()),
        };
        let mut files = Vec::new();
        for (tenant, t) in &config.tenants {
            for (handler, h) in &t.handlers {
                let load_error = |error| DeployError::Load { tenant: tenant.clone(), handler: handler.clone(), error };
                let bytes = std::fs::read(&h.wasm)
                    .map_err(|source| load_error(LoadError::Read { path: h.wasm.clone(), source }))?;
                files.push((tenant, handler, h, bytes));
            }
        }
        registry.precompile(files.iter().map(|(_, _, h, bytes)| (h.wasm.as_path(), bytes.as_slice())));
        for (tenant, handler, h, bytes) in files {
            let plugin = registry.validate(tenant, handler, &h.wasm, &bytes)?;
            let version = Arc::new(Version {
                number: 1,
                plugin,
                origin: format!("config: {}", h.wasm.display()),
                deployed_at_ms: now_ms(),
                live_since: Mutex::new(Instant::now()),
                first_served: OnceLock::new(),
            });
            let slot = HandlerSlot {
                tenant: tenant.as_str().into(),
                handler: handler.as_str().into(),
                live: ArcSwap::new(version.clone()),
                versions: Mutex::new(vec![version]),
                metrics: HandlerMetrics::default(),
            };
            registry.slots.insert((tenant.clone(), handler.clone()), Arc::new(slot));
        }
        Ok(registry)
    }

    /// Compile each distinct component among `files` once, on every core at
    /// once: loading many handlers at start is bound by compiling them, and
    /// one component's compile does not keep every core busy. Failures are
    /// left for [`Registry::validate`] to report, naming the handler.
    fn precompile<'a>(&self, files: impl Iterator<Item = (&'a Path, &'a [u8])>) {
        let mut distinct: HashMap<String, (&Path, &[u8])> = HashMap::new();
        for (path, bytes) in files {
            distinct.entry(plugin::digest(bytes)).or_insert((path, bytes));
        }
        // Each distinct component, by digest, with its path and bytes.
        type Work<'a> = Vec<(String, (&'a Path, &'a [u8]))>;
        let work: Mutex<Work> = Mutex::new(distinct.into_iter().collect());
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    while let Some((digest, (path, bytes))) = work.lock().ok().and_then(|mut w| w.pop()) {
                        if let Ok(plugin) = self.runtime.load_bytes(path, bytes)
                            && let Ok(mut m) = self.by_digest.lock()
                        {
                            m.insert(digest, Arc::new(plugin));
                        }
                    }
                });
            }
        });
    }

    /// The runtime the handlers run on.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The slot of a handler.
    pub fn slot(&self, tenant: &str, handler: &str) -> Option<&Arc<HandlerSlot>> {
        self.slots.get(&(tenant.to_string(), handler.to_string()))
    }

    /// Every slot.
    pub fn slots(&self) -> impl Iterator<Item = &Arc<HandlerSlot>> + Clone {
        self.slots.values()
    }

    fn slot_or_err(&self, tenant: &str, handler: &str) -> Result<&Arc<HandlerSlot>, DeployError> {
        self.slot(tenant, handler)
            .ok_or_else(|| DeployError::UnknownHandler { tenant: tenant.into(), handler: handler.into() })
    }

    /// Load `bytes` (or reuse the component with the same digest) and check
    /// it against the tenant's grants.
    fn validate(&self, tenant: &str, handler: &str, path: &Path, bytes: &[u8]) -> Result<Arc<Plugin>, DeployError> {
        let load_error = |error| DeployError::Load { tenant: tenant.into(), handler: handler.into(), error };
        let digest = plugin::digest(bytes);
        let known = self.by_digest.lock().ok().and_then(|m| m.get(&digest).cloned());
        let plugin = match known {
            Some(plugin) => plugin,
            None => {
                let plugin = Arc::new(self.runtime.load_bytes(path, bytes).map_err(load_error)?);
                if let Ok(mut m) = self.by_digest.lock() {
                    m.insert(digest, plugin.clone());
                }
                plugin
            }
        };
        let grants = self.grants.get(tenant).cloned().unwrap_or_default();
        check_imports(&self.runtime, &plugin, &grants).map_err(|(import, capability)| DeployError::NotGranted {
            tenant: tenant.into(),
            handler: handler.into(),
            import,
            capability,
        })?;
        Ok(plugin)
    }

    /// Like [`Registry::deploy`], unless `bytes` are the live version
    /// already: then nothing is deployed and the answer is `None`. For the
    /// watchers that see the same build again (the watched directory, `dev`).
    pub fn deploy_changed(
        &self,
        tenant: &str,
        handler: &str,
        bytes: &[u8],
        origin: &str,
    ) -> Result<Option<VersionInfo>, DeployError> {
        let live = self.slot_or_err(tenant, handler)?.live();
        if live.plugin.digest == plugin::digest(bytes) {
            return Ok(None);
        }
        self.deploy(tenant, handler, bytes, origin).map(Some)
    }

    /// Validate `bytes` as the next version of a handler and make it live.
    pub fn deploy(&self, tenant: &str, handler: &str, bytes: &[u8], origin: &str) -> Result<VersionInfo, DeployError> {
        let slot = self.slot_or_err(tenant, handler)?;
        let _one_at_a_time = self.deploy_lock.lock();
        let plugin = self.validate(tenant, handler, Path::new(origin), bytes)?;
        let mut versions = slot.versions.lock().unwrap_or_else(|p| p.into_inner());
        let number = versions.last().map_or(1, |v| v.number + 1);
        let version = Arc::new(Version {
            number,
            plugin,
            origin: origin.to_string(),
            deployed_at_ms: now_ms(),
            live_since: Mutex::new(Instant::now()),
            first_served: OnceLock::new(),
        });
        versions.push(version.clone());
        slot.make_live(version.clone());
        tracing::info!(tenant, handler, version = number, digest = %version.plugin.digest, origin, "deployed");
        Ok(slot.info(&version))
    }

    /// Make an earlier version live again: `version`, or the one before the live one.
    pub fn rollback(&self, tenant: &str, handler: &str, version: Option<u32>) -> Result<VersionInfo, DeployError> {
        let slot = self.slot_or_err(tenant, handler)?;
        let _one_at_a_time = self.deploy_lock.lock();
        let versions = slot.versions.lock().unwrap_or_else(|p| p.into_inner());
        let live = slot.live.load().number;
        let target = match version {
            Some(n) => versions.iter().find(|v| v.number == n),
            None => versions.iter().rev().find(|v| v.number < live),
        };
        let Some(target) = target.cloned() else {
            return Err(DeployError::UnknownVersion {
                tenant: tenant.into(),
                handler: handler.into(),
                version: version.unwrap_or(live.saturating_sub(1)),
            });
        };
        slot.make_live(target.clone());
        tracing::info!(tenant, handler, version = target.number, "rolled back");
        Ok(slot.info(&target))
    }

    /// Every version of a handler, oldest first.
    pub fn versions(&self, tenant: &str, handler: &str) -> Result<Vec<VersionInfo>, DeployError> {
        let slot = self.slot_or_err(tenant, handler)?;
        let versions = slot.versions.lock().unwrap_or_else(|p| p.into_inner());
        Ok(versions.iter().map(|v| slot.info(v)).collect())
    }
}

/// Refuse a component that imports a capability its tenant is not granted.
/// Publishing is always allowed, since a reply to the message's own
/// `reply-to` needs no grant.
fn check_imports(runtime: &Runtime, plugin: &Plugin, grants: &Grants) -> Result<(), (String, &'static str)> {
    let component = plugin.pre.instance_pre().component();
    let ty = component.component_type();
    for (name, item) in ty.imports(runtime.engine()) {
        if !matches!(item.ty, ComponentItem::ComponentInstance(_)) {
            continue;
        }
        let interface = name.split('@').next().unwrap_or(name);
        let needed = match interface {
            "switchyard:handler/cache" if grants.cache_prefixes.is_empty() => Some("cache key prefixes"),
            "switchyard:handler/db" if grants.db_tables.is_empty() => Some("database tables"),
            "switchyard:handler/search" if grants.search_prefixes.is_empty() => Some("search index prefixes"),
            "switchyard:handler/http" if grants.allowed_hosts.is_empty() => Some("HTTP hosts (allowed_hosts)"),
            _ => None,
        };
        if let Some(capability) = needed {
            return Err((name.to_string(), capability));
        }
    }
    Ok(())
}
