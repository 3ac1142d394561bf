//! The top floor: builds a [`Host`] from a [`Config`]. Every `match` on a
//! config `type` lives here (backends, sources, their publishers and
//! dead-letter files), so adding a broker or a backend touches its own file,
//! its config variant and one arm below.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::admin::api::Admin;
use crate::admin::watch;
use crate::capabilities::backends::elasticsearch::{ElasticsearchOptions, ElasticsearchSearch};
use crate::capabilities::backends::http::PooledHttp;
use crate::capabilities::backends::memory::MemoryCache;
use crate::capabilities::backends::redis::RedisCache;
use crate::capabilities::backends::sql::mysql::MySql;
use crate::capabilities::backends::sql::postgres::Postgres;
use crate::capabilities::backends::sql::server::SqlServer;
use crate::capabilities::backends::sqlite::SqliteDb;
use crate::capabilities::backends::tantivy::TantivySearch;
use crate::capabilities::context::{Backends, Capabilities, OutputLimits};
use crate::config::{
    AdminConfig, CacheBackendConfig, Config, ConfigError, DbBackendConfig, FileConfig, HttpConfig, Limits,
    SearchBackendConfig, SourceConfig,
};
use crate::contract::cache::CacheBackend;
use crate::contract::db::{DbBackend, TenantAccess};
use crate::contract::errors::BackendError;
use crate::contract::publish::Publisher;
use crate::contract::search::SearchBackend;
use crate::contract::source::Source;
use crate::dispatch::dispatcher::Dispatcher;
use crate::dispatch::loopback::{self, LOCAL, LocalSource};
use crate::dispatch::outbound::PublishRouter;
use crate::dispatch::quota::TenantQuota;
use crate::dispatch::relay::Relay;
use crate::dispatch::route::Route;
use crate::dispatch::stats::{Progress, Snapshot, Stats};
use crate::runtime::pool::InstancePool;
use crate::runtime::registry::{DeployError, Registry};
use crate::runtime::{InvokeContext, Runtime, RuntimeError, RuntimeOptions};
use crate::sources::dead_letter::DeadLetterFile;
use crate::sources::file::FileSource;
use crate::sources::http::HttpSource;
use crate::sources::{amqp, kafka, nats, redis_streams, rocketmq};

/// The host could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The config is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The engine could not be set up.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A handler could not be loaded.
    #[error(transparent)]
    Handler(#[from] DeployError),
    /// A backend could not be opened.
    #[error("cannot open the {capability} backend: {error}")]
    Backend {
        /// Which capability.
        capability: &'static str,
        /// Why.
        error: BackendError,
    },
}

/// Engine settings that fit every handler in `config`.
pub fn runtime_options(config: &Config) -> RuntimeOptions {
    let limits: Vec<_> = config
        .tenants
        .values()
        .flat_map(|t| t.handlers.values().map(|h| h.limits))
        .chain(config.routes.iter().filter_map(|r| r.limits))
        .collect();
    RuntimeOptions {
        cache_dir: Some(config.data_dir.join("compiled")),
        max_memory_mib: limits.iter().map(|l| l.memory_mib).max().unwrap_or(64),
        // A tenant's fuel quota caps every invocation of its handlers, so it
        // turns metering on as a handler's own fuel limit does.
        fuel: limits.iter().any(|l| l.fuel.is_some()) || config.tenants.values().any(|t| t.quotas.fuel.is_some()),
        // A route never holds more instances, running and idle together,
        // than its concurrency, so this many slots never run out.
        max_instances: u32::try_from(config.routes.iter().map(|r| r.concurrency).sum::<usize>())
            .unwrap_or(u32::MAX)
            .max(RuntimeOptions::default().max_instances),
    }
}

/// Load every handler in the config as its first version.
pub fn load_handlers(config: &Config, runtime: &Arc<Runtime>) -> Result<Arc<Registry>, HostError> {
    Ok(Arc::new(Registry::load(config, runtime.clone())?))
}

/// The backends named in the config, opened and ready.
pub async fn open_backends(config: &Config) -> Result<Backends, HostError> {
    let failed = |capability| move |error| HostError::Backend { capability, error };
    let cache: Arc<dyn CacheBackend> = match &config.backends.cache {
        CacheBackendConfig::Memory { max_entries } => Arc::new(MemoryCache::new(*max_entries)),
        CacheBackendConfig::Redis { url, key_prefix, timeout_ms } => Arc::new(
            RedisCache::open(url, key_prefix, Duration::from_millis(*timeout_ms)).await.map_err(failed("cache"))?,
        ),
    };
    let db: Arc<dyn DbBackend> = match &config.backends.db {
        DbBackendConfig::Sqlite { path, init } => {
            let path = path.clone().unwrap_or_else(|| config.data_dir.join("switchyard.db"));
            Arc::new(SqliteDb::open(&path, init).await.map_err(failed("db"))?)
        }
        DbBackendConfig::Postgres(server) => Arc::new(SqlServer::<Postgres>::open(server).await.map_err(failed("db"))?),
        DbBackendConfig::Mysql(server) => Arc::new(SqlServer::<MySql>::open(server).await.map_err(failed("db"))?),
    };
    let search = open_search(config).map_err(failed("search"))?;
    let http = Arc::new(PooledHttp::new().map_err(failed("http"))?);
    Ok(Backends { cache, db, search, http })
}

/// The search backend named in the config, alone.
pub fn open_search(config: &Config) -> Result<Arc<dyn SearchBackend>, BackendError> {
    Ok(match &config.backends.search {
        SearchBackendConfig::Tantivy { path } => {
            let path = path.clone().unwrap_or_else(|| config.data_dir.join("search"));
            Arc::new(TantivySearch::open(&path)?)
        }
        SearchBackendConfig::Elasticsearch { url, username, password, refresh, timeout_ms, max_batch } => {
            Arc::new(ElasticsearchSearch::open(&ElasticsearchOptions {
                url: url.clone(),
                credentials: username.clone().map(|user| (user, password.clone().unwrap_or_default())),
                refresh: *refresh,
                timeout: Duration::from_millis(*timeout_ms),
                max_batch: *max_batch,
            })?)
        }
    })
}

/// The backends `tenant` reaches: the shared ones, with a database login of
/// its own where the db backend can make one (see [`DbBackend::for_tenant`]).
async fn tenant_backends(config: &Config, tenant: &str, shared: &Arc<Backends>) -> Result<Arc<Backends>, HostError> {
    let Some(t) = config.tenants.get(tenant) else { return Ok(shared.clone()) };
    let routes = config.routes.iter().filter(|r| r.tenant == tenant);
    let longest = t
        .handlers
        .values()
        .map(|h| h.limits)
        .chain(routes.clone().filter_map(|r| r.limits))
        .map(|l| t.quotas.cap(l).timeout_ms)
        .max()
        .unwrap_or(Limits::default().timeout_ms);
    let access = TenantAccess {
        tenant: tenant.to_string(),
        tables: t.grants.db_tables.clone(),
        statement_timeout: Duration::from_millis(longest),
        transactional: routes.clone().any(|r| r.transactional),
    };
    match shared.db.for_tenant(&access).await {
        Ok(Some(db)) => Ok(Arc::new(Backends {
            cache: shared.cache.clone(),
            db,
            search: shared.search.clone(),
            http: shared.http.clone(),
        })),
        Ok(None) => Ok(shared.clone()),
        Err(error) => Err(HostError::Backend { capability: "db", error }),
    }
}

/// The dead-letter file of an embedded source (and of the loopback).
pub fn dead_letter_path(config: &Config, source: &str) -> PathBuf {
    let configured = match config.sources.get(source) {
        Some(
            SourceConfig::File(FileConfig { dead_letter, .. }) | SourceConfig::Http(HttpConfig { dead_letter, .. }),
        ) => dead_letter.clone(),
        _ => None,
    };
    configured.unwrap_or_else(|| config.data_dir.join("dead-letter").join(format!("{source}.jsonl")))
}

/// A source, and the publisher that sends to its broker if it has one.
type Built = (Box<dyn Source>, Option<Arc<dyn Publisher>>);

/// The source named `name`, and the publisher that sends to its broker, if
/// it has one. `concurrency` is the sum of the concurrency of the routes
/// reading from it, which sizes the broker's own flow control (prefetch,
/// pull batch).
fn source(config: &Config, name: &str, source: &SourceConfig, concurrency: usize) -> Result<Built, HostError> {
    let broker = |(source, publisher): (Box<dyn Source>, Arc<dyn Publisher>)| Ok((source, Some(publisher)));
    let dead_letter = || Arc::new(DeadLetterFile::new(name, &dead_letter_path(config, name)));
    match source {
        SourceConfig::File(file) => {
            Ok((Box::new(FileSource::new(name, &file.path, file.replay, file.follow, dead_letter())), None))
        }
        SourceConfig::Http(http) => {
            // `Config::validate` checked that it parses.
            let addr = http.listen.parse().map_err(|e| ConfigError::Invalid {
                path: Default::default(),
                field: format!("sources.{name}.listen"),
                message: format!("{e}"),
            })?;
            Ok((Box::new(HttpSource::new(name, addr, dead_letter())), None))
        }
        SourceConfig::Amqp(c) => broker(amqp::build(name, c, concurrency)),
        SourceConfig::Nats(c) => broker(nats::core::build(name, c)),
        SourceConfig::JetStream(c) => broker(nats::jetstream::build(name, c, concurrency)),
        SourceConfig::Redis(c) => broker(redis_streams::build(name, c, concurrency)),
        SourceConfig::Kafka(c) => broker(kafka::source::build(name, c, concurrency)),
        SourceConfig::RocketMq(c) => broker(rocketmq::source::build(name, c, concurrency)),
    }
}

/// A configured host: its dispatcher, sources and registry, ready to run.
pub struct Host {
    dispatcher: Dispatcher,
    sources: Vec<(String, Box<dyn Source>)>,
    local: LocalSource,
    registry: Arc<Registry>,
    stats: Arc<Stats>,
    admin: Option<AdminConfig>,
    progress: bool,
}

impl Host {
    /// Build the host: open the backends, load the handlers, set up routes
    /// and sources. Fails with an error naming the part that is wrong.
    pub async fn build(config: &Config) -> Result<Self, HostError> {
        let runtime = Arc::new(Runtime::new(runtime_options(config))?);
        let registry = load_handlers(config, &runtime)?;
        let backends = Arc::new(open_backends(config).await?);
        Self::assemble(config, registry, backends).await
    }

    /// Build the host from parts already made; tests use this to share a runtime.
    pub async fn assemble(
        config: &Config,
        registry: Arc<Registry>,
        backends: Arc<Backends>,
    ) -> Result<Self, HostError> {
        let stats = Arc::new(Stats::default());
        let local_dead_letter = Arc::new(DeadLetterFile::new(LOCAL, &dead_letter_path(config, LOCAL)));
        let (local_publisher, local) = loopback::loopback(local_dead_letter, stats.clone());
        let quotas: BTreeMap<&String, Arc<TenantQuota>> =
            config.tenants.iter().map(|(name, t)| (name, Arc::new(TenantQuota::new(&t.quotas)))).collect();
        let mut caps: BTreeMap<&String, Arc<Capabilities>> = BTreeMap::new();
        for (name, tenant) in &config.tenants {
            let backends = tenant_backends(config, name, &backends).await?;
            let q = &tenant.quotas;
            let d = OutputLimits::default();
            let output = OutputLimits {
                max_publishes: q.max_publishes.unwrap_or(d.max_publishes),
                max_publish_bytes: q.max_publish_bytes.unwrap_or(d.max_publish_bytes),
                max_log_bytes: q.max_log_bytes.unwrap_or(d.max_log_bytes),
                max_indexes: q.max_indexes.unwrap_or(d.max_indexes),
                max_http_requests: q.max_http_requests.unwrap_or(d.max_http_requests),
                max_http_response_bytes: q.max_http_response_bytes.unwrap_or(d.max_http_response_bytes),
            };
            let grants = tenant.grants.clone();
            caps.insert(name, Arc::new(Capabilities::new(backends, grants, output)));
        }

        let mut routes = Vec::new();
        for route in &config.routes {
            let (Some(slot), Some(tenant_caps), Some(quota), Some(tenant)) = (
                registry.slot(&route.tenant, &route.handler),
                caps.get(&route.tenant),
                quotas.get(&route.tenant),
                config.tenants.get(&route.tenant),
            ) else {
                continue; // `Config::validate` already refused dangling names.
            };
            let handler = tenant.handlers.get(&route.handler);
            let handler_limits = handler.map(|h| h.limits).unwrap_or_default();
            let limits = tenant.quotas.cap(route.limits.unwrap_or(handler_limits));
            // No more of a route's instances can be in use at once than its
            // concurrency and the tenant's in-flight quota allow, so no more
            // are kept idle.
            let in_use = route.concurrency.min(tenant.quotas.max_in_flight.unwrap_or(usize::MAX));
            let pool = route
                .instances
                .filter(|i| i.reuse > 1)
                .map(|instances| Arc::new(InstancePool::new(&instances, &limits, in_use)));
            let invoke = InvokeContext {
                caps: tenant_caps.clone(),
                limits,
                tenant: route.tenant.as_str().into(),
                handler: route.handler.as_str().into(),
                record_effects: false,
                variables: Arc::new(
                    tenant
                        .config
                        .iter()
                        .chain(handler.iter().flat_map(|h| &h.config))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                ),
                pool,
            };
            routes.push(Route::new(route, invoke, slot.clone(), quota.clone()));
        }

        let mut sources = Vec::new();
        let mut publisher = PublishRouter::new(Arc::new(local_publisher));
        for (name, config_source) in &config.sources {
            let concurrency = config.routes.iter().filter(|r| &r.source == name).map(|r| r.concurrency).sum();
            let (built, broker) = source(config, name, config_source, concurrency)?;
            if let Some(broker) = broker {
                publisher.add_broker(name, broker);
            }
            if let Some(lost) = built.lost() {
                stats.track_lost(name, lost);
            }
            sources.push((name.clone(), built));
        }

        // One outbox per database login that transactional routes commit through.
        let mut outboxes: Vec<Arc<dyn DbBackend>> = Vec::new();
        for route in config.routes.iter().filter(|r| r.transactional) {
            let Some(db) = caps.get(&route.tenant).map(|c| &c.backends.db) else { continue };
            if !outboxes.iter().any(|o| Arc::ptr_eq(o, db)) {
                outboxes.push(db.clone());
            }
        }
        let relay = (!outboxes.is_empty()).then(|| Arc::new(Relay::new(outboxes)));
        let runtime = registry.runtime().clone();
        let grace = Duration::from_millis(config.shutdown_grace_ms);
        let dispatcher = Dispatcher::new(runtime, routes, Arc::new(publisher), relay, stats.clone(), grace);
        Ok(Self { dispatcher, sources, local, registry, stats, admin: config.admin.clone(), progress: false })
    }

    /// Print a progress line to stderr every second while running.
    pub fn with_progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }

    /// The host's counters, live.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// The plugin registry, for deploys.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Run until every source has ended and every message is settled, or
    /// until `shutdown` is cancelled. On shutdown, intake stops, messages
    /// being handled finish and are settled, and the counters are returned.
    pub async fn run(self, shutdown: CancellationToken) -> Snapshot {
        let Host { dispatcher, sources, local, registry, stats, admin, progress } = self;
        let ready = Arc::new(AtomicBool::new(false));
        let admin_stop = CancellationToken::new();
        if let Some(admin) = admin {
            if let Some(listen) = admin.listen.as_deref().and_then(|l| l.parse().ok()) {
                let server = Admin::new(registry.clone(), stats.clone(), admin.token.clone(), ready.clone());
                let stop = admin_stop.clone();
                tokio::spawn(async move {
                    if let Err(e) = server.serve(listen, stop).await {
                        tracing::error!(%listen, error = %e, "admin API stopped");
                    }
                });
            }
            if let Some(dir) = admin.watch_dir {
                tokio::spawn(watch::watch(registry.clone(), dir, admin_stop.clone()));
            }
        }
        let started = std::time::Instant::now();
        let printer = progress.then(|| {
            let stats = stats.clone();
            tokio::spawn(async move {
                let mut progress = Progress::default();
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    eprintln!("{}", progress.line(stats.snapshot()));
                }
            })
        });
        let summary = dispatcher.run(sources, local, shutdown, ready).await;
        admin_stop.cancel();
        if let Some(printer) = printer {
            printer.abort();
            eprintln!("{}", Progress::summary(started, summary));
        }
        summary
    }
}
