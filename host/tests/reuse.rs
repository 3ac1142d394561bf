//! Bounded instance reuse, with the `faults` handler's `count` mode: it
//! counts its calls in a global and writes the count to the cache, so a
//! fresh instance answers 1 and a reused one counts on. These tests read
//! those counts back to see which instance ran each message: that reuse
//! happens, within its bound, never across tenants, versions, grants or
//! limits, never after a failure, and that no per-message state (outbox,
//! reply-to, transaction) carries over.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assumption in a test is a failed test

mod support;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use switchyard::capabilities::backends::sql::postgres::Postgres;
use switchyard::capabilities::backends::sql::server::SqlServer;
use switchyard::capabilities::context::{Backends, Capabilities};
use switchyard::config::{Config, Instances, Limits, SqlServerConfig};
use switchyard::contract::bindings::Message;
use switchyard::contract::db::{Begun, DbBackend, InboxKey};
use switchyard::runtime::pool::InstancePool;
use switchyard::runtime::{InvokeContext, Outcome, Plugin, Runtime, RuntimeOptions};
use switchyard::wiring;

fn message(id: &str, payload: serde_json::Value) -> Message {
    Message {
        id: id.into(),
        source: "reuse".into(),
        topic: "count".into(),
        key: None,
        headers: Vec::new(),
        payload: payload.to_string().into_bytes(),
        attempt: 1,
        reply_to: None,
        timestamp_ms: None,
    }
}

fn count(key: &str) -> serde_json::Value {
    serde_json::json!({"mode": "count", "key": key})
}

async fn embedded_backends(dir: &std::path::Path) -> Arc<Backends> {
    let mut config = Config::parse(std::path::Path::new("<reuse>"), "").unwrap();
    config.data_dir = dir.to_path_buf();
    Arc::new(wiring::open_backends(&config).await.unwrap())
}

/// Capabilities for `faults`: the `faults:` cache prefix, publishing to `granted.*`.
fn caps(backends: &Arc<Backends>) -> Arc<Capabilities> {
    let mut caps = Capabilities::unrestricted(backends.clone());
    caps.grants.cache_prefixes = vec!["faults:".into()];
    caps.grants.publish = vec!["granted.*".into()];
    Arc::new(caps)
}

fn limits() -> Limits {
    Limits { memory_mib: 16, timeout_ms: 300, fuel: None }
}

fn pool(reuse: u32, idle_ms: u64, max_memory_mib: Option<u64>) -> Arc<InstancePool> {
    Arc::new(InstancePool::new(&Instances { reuse, idle_ms, max_memory_mib }, &limits(), 8))
}

fn context(tenant: &str, caps: Arc<Capabilities>, pool: Option<Arc<InstancePool>>) -> InvokeContext {
    InvokeContext {
        caps,
        limits: limits(),
        tenant: tenant.into(),
        handler: "faults".into(),
        record_effects: false,
        variables: Default::default(),
        pool,
    }
}

struct Bench {
    runtime: Runtime,
    plugin: Plugin,
    backends: Arc<Backends>,
    _dir: tempfile::TempDir,
}

impl Bench {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let runtime = Runtime::new(RuntimeOptions::default()).unwrap();
        let plugin = runtime.load(&support::plugin("faults")).unwrap();
        let backends = embedded_backends(dir.path()).await;
        Self { runtime, plugin, backends, _dir: dir }
    }

    /// Run a `count` message as `ctx` and return what its instance counted.
    async fn count(&self, plugin: &Plugin, ctx: &InvokeContext, key: &str) -> u32 {
        let invocation = self.runtime.invoke(plugin, &message(key, count(key)), ctx).await;
        assert_eq!(invocation.outcome, Outcome::Ok, "{key}");
        self.read(key).await
    }

    async fn read(&self, key: &str) -> u32 {
        let value = self.backends.cache.get(key).await.unwrap().unwrap_or_else(|| panic!("{key} was never set"));
        String::from_utf8(value).unwrap().parse().unwrap()
    }
}

/// The same component with a custom section appended: a different digest,
/// so the host sees a new version.
fn another_build(wasm: &[u8]) -> Vec<u8> {
    let name = b"switchyard-test-build";
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(b"2");
    let mut bytes = wasm.to_vec();
    bytes.push(0); // custom section id
    bytes.push(section.len() as u8); // its size, as one LEB128 byte
    bytes.extend_from_slice(&section);
    bytes
}

#[tokio::test]
async fn an_instance_serves_at_most_reuse_messages() {
    let t = Bench::new().await;
    let ctx = context("t", caps(&t.backends), Some(pool(4, 60_000, None)));
    let mut counts = Vec::new();
    for n in 0..10 {
        counts.push(t.count(&t.plugin, &ctx, &format!("faults:{n}")).await);
    }
    assert_eq!(counts, [1, 2, 3, 4, 1, 2, 3, 4, 1, 2]);

    // Without a pool, every message has a fresh instance.
    let fresh = context("t", caps(&t.backends), None);
    for n in 0..3 {
        assert_eq!(t.count(&t.plugin, &fresh, &format!("faults:fresh{n}")).await, 1);
    }
}

#[tokio::test]
async fn every_failure_retires_the_instance() {
    let t = Bench::new().await;
    let ctx = context("t", caps(&t.backends), Some(pool(100, 60_000, None)));
    let failures = [
        (serde_json::json!({"mode": "trap"}), "trap"),
        (serde_json::json!({"mode": "loop"}), "timeout"),
        (serde_json::json!({"mode": "oom"}), "memory"),
        (serde_json::json!({"mode": "retry"}), "retry"),
        (serde_json::json!({"mode": "reject"}), "reject"),
    ];
    for (payload, kind) in failures {
        // The last round's instance serves on until this failure.
        let before = t.count(&t.plugin, &ctx, &format!("faults:{kind}-before-1")).await;
        assert_eq!(t.count(&t.plugin, &ctx, &format!("faults:{kind}-before-2")).await, before + 1, "{kind}");
        let failed = t.runtime.invoke(&t.plugin, &message(kind, payload), &ctx).await;
        assert_eq!(failed.outcome.kind(), kind);
        assert!(failed.reused, "the {kind} ran in the reused instance");
        // The failed instance is gone: the next message starts from 1.
        assert_eq!(t.count(&t.plugin, &ctx, &format!("faults:{kind}-after")).await, 1, "after a {kind}");
    }
}

#[tokio::test]
async fn an_instance_past_the_memory_high_water_mark_is_retired() {
    let t = Bench::new().await;
    let ctx = context("t", caps(&t.backends), Some(pool(100, 60_000, Some(4))));
    assert_eq!(t.count(&t.plugin, &ctx, "faults:m1").await, 1);
    assert_eq!(t.count(&t.plugin, &ctx, "faults:m2").await, 2);
    // 64 pages are 4 MiB: past the mark once this message ends.
    let grow = serde_json::json!({"mode": "count", "key": "faults:m3", "pages": 64});
    assert_eq!(t.runtime.invoke(&t.plugin, &message("m3", grow), &ctx).await.outcome, Outcome::Ok);
    assert_eq!(t.read("faults:m3").await, 3);
    assert_eq!(t.count(&t.plugin, &ctx, "faults:m4").await, 1, "the grown instance was retired");
}

#[tokio::test]
async fn an_idle_instance_is_retired_after_its_idle_time() {
    let t = Bench::new().await;
    let pool = pool(100, 100, None);
    let ctx = context("t", caps(&t.backends), Some(pool.clone()));
    assert_eq!(t.count(&t.plugin, &ctx, "faults:i1").await, 1);
    assert_eq!(t.count(&t.plugin, &ctx, "faults:i2").await, 2);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(t.count(&t.plugin, &ctx, "faults:i3").await, 1, "taken after its idle time");
    assert_eq!(pool.idle_count(), 1);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(pool.sweep(), 1, "the sweep retires it without a message");
    assert_eq!(pool.idle_count(), 0);
}

/// One pool shared by contexts that differ in tenant, grants, limits and
/// handler build: an instance only ever serves its own key. (The host gives
/// each route its own pool; this checks the key as defence in depth.)
#[tokio::test]
async fn an_instance_never_crosses_tenants_grants_limits_or_versions() {
    let t = Bench::new().await;
    let shared = pool(100, 60_000, None);
    let grants = caps(&t.backends);
    let a = context("a", grants.clone(), Some(shared.clone()));
    let b = context("b", grants.clone(), Some(shared.clone()));
    let other_grants = context("a", caps(&t.backends), Some(shared.clone()));
    let mut other_limits = context("a", grants.clone(), Some(shared.clone()));
    other_limits.limits.timeout_ms += 1;
    let bytes = std::fs::read(support::plugin("faults")).unwrap();
    let v2 = t.runtime.load_bytes(std::path::Path::new("faults-v2.wasm"), &another_build(&bytes)).unwrap();
    assert_ne!(v2.digest, t.plugin.digest);

    assert_eq!(t.count(&t.plugin, &a, "faults:a1").await, 1);
    assert_eq!(t.count(&t.plugin, &a, "faults:a2").await, 2);
    for (ctx, plugin, what) in [
        (&b, &t.plugin, "another tenant"),
        (&other_grants, &t.plugin, "other grants"),
        (&other_limits, &t.plugin, "other limits"),
        (&a, &v2, "another version"),
    ] {
        assert_eq!(t.count(plugin, ctx, &format!("faults:{what}")).await, 1, "{what} got a fresh instance");
        // The instance of the other key was retired, not kept.
        assert_eq!(t.count(&t.plugin, &a, &format!("faults:{what}-then-a")).await, 1, "after {what}");
    }
}

#[tokio::test]
async fn no_outbox_or_reply_to_survives_into_the_next_message() {
    let t = Bench::new().await;
    let ctx = context("t", caps(&t.backends), Some(pool(100, 60_000, None)));
    let reply = |key: &str| serde_json::json!({"mode": "count", "key": key, "to": "reply.one"});

    // The first message may answer its own reply-to.
    let mut first = message("r1", reply("faults:r1"));
    first.reply_to = Some("reply.one".into());
    let answered = t.runtime.invoke(&t.plugin, &first, &ctx).await;
    assert_eq!(answered.outcome, Outcome::Ok);
    assert_eq!(answered.outbox.len(), 1);
    assert_eq!(answered.outbox[0].destination, "reply.one");

    // The next one, in the same instance, has no reply-to: publishing there is denied.
    let second = t.runtime.invoke(&t.plugin, &message("r2", reply("faults:r2")), &ctx).await;
    assert!(second.reused);
    assert_eq!(t.read("faults:r2").await, 2, "the same instance ran it");
    let Outcome::Reject(reason) = &second.outcome else { panic!("{:?}", second.outcome) };
    assert!(reason.contains("Denied") && reason.contains("reply.one"), "{reason}");
    assert!(second.outbox.is_empty());

    // The reject retired it; a fresh instance's ok leaves only its own publish.
    let granted = serde_json::json!({"mode": "count", "key": "faults:r3", "to": "granted.x"});
    let third = t.runtime.invoke(&t.plugin, &message("r3", granted), &ctx).await;
    assert_eq!(third.outcome, Outcome::Ok);
    let fourth = t.runtime.invoke(&t.plugin, &message("r4", count("faults:r4")), &ctx).await;
    assert!(fourth.reused);
    assert_eq!(t.read("faults:r4").await, 2);
    assert!(fourth.outbox.is_empty(), "the third message's publish did not carry over: {:?}", fourth.outbox);
}

/// A transaction is the message's own: the next message in the same
/// instance writes outside it. Against the test's PostgreSQL
/// (`SWITCHYARD_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`).
#[tokio::test]
async fn no_transaction_survives_into_the_next_message() {
    let url =
        std::env::var("SWITCHYARD_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let table = support::unique("reuse_tx");
    let direct = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::raw_sql(&format!("CREATE TABLE {table} (id TEXT PRIMARY KEY)")).execute(&direct).await.unwrap();
    let options = SqlServerConfig { max_connections: 4, ..SqlServerConfig::new(url.clone()) };
    let db = SqlServer::<Postgres>::open(&options).await.unwrap();
    let db: Arc<dyn DbBackend> = Arc::new(db);
    db.prepare_transactions().await.unwrap();

    let t = Bench::new().await;
    let backends = Arc::new(Backends {
        cache: t.backends.cache.clone(),
        db: db.clone(),
        search: t.backends.search.clone(),
        http: t.backends.http.clone(),
    });
    let mut caps = Capabilities::unrestricted(backends);
    caps.grants.cache_prefixes = vec!["faults:".into()];
    let ctx = context("t", Arc::new(caps), Some(pool(100, 60_000, None)));
    let insert = |id: &str| serde_json::json!({"mode": "sql", "sql": format!("INSERT INTO {table} (id) VALUES (?)"), "params": [id]});

    let key = InboxKey { route: "t/faults".into(), message: format!("reuse:{table}") };
    let Begun::Transaction(tx) = db.begin(&key).await.unwrap() else { panic!("a new message has no inbox row") };
    let first = t.runtime.invoke_in(&t.plugin, &message("in-tx", insert("in-tx")), &ctx, Some(tx)).await;
    assert_eq!(first.outcome, Outcome::Ok);
    assert!(first.transaction.is_some(), "the transaction comes back to the dispatcher");
    drop(first); // rolled back

    let second = t.runtime.invoke(&t.plugin, &message("outside", insert("outside")), &ctx).await;
    assert_eq!(second.outcome, Outcome::Ok);
    assert!(second.reused, "the same instance ran it");
    assert!(second.transaction.is_none());
    let ids: Vec<(String,)> = sqlx::query_as(&format!("SELECT id FROM {table}")).fetch_all(&direct).await.unwrap();
    assert_eq!(ids, [("outside".to_string(),)], "only the write outside the rolled-back transaction is there");
    sqlx::raw_sql(&format!("DROP TABLE {table}")).execute(&direct).await.unwrap();
}

const TWO_TENANTS: &str = r#"
    [sources.in]
    type = "file"
    path = "in.jsonl"
    follow = true

    [tenants.a.grants]
    cache_prefixes = ["faults:a:"]
    db_tables = ["faults"]
    [tenants.a.handlers.h]
    wasm = "WASM"

    [tenants.b.grants]
    cache_prefixes = ["faults:b:"]
    db_tables = ["faults"]
    [tenants.b.handlers.h]
    wasm = "WASM"

    [[routes]]
    source = "in"
    topic = "a"
    tenant = "a"
    handler = "h"
    concurrency = 1
    instances = { reuse = 5, idle_ms = 200 }

    [[routes]]
    source = "in"
    topic = "b"
    tenant = "b"
    handler = "h"
    concurrency = 1
    instances = { reuse = 5, idle_ms = 200 }
"#;

/// Through the host: two tenants with the same .wasm on routes with reuse,
/// their messages interleaved. Each tenant's instances count only its own
/// messages, up to the bound; after the idle time, a fresh one starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_reuses_instances_per_route_and_never_across_tenants() {
    let dir = tempfile::tempdir().unwrap();
    let line = |tenant: &str, n: usize| {
        format!(
            "{{\"topic\": \"{tenant}\", \"id\": \"{tenant}{n}\", \"key\": \"k\", \"payload\": {{\"mode\": \"count\", \"key\": \"faults:{tenant}:{n}\"}}}}\n"
        )
    };
    let mut text = String::new();
    for n in 0..8 {
        text.push_str(&line("a", n));
        text.push_str(&line("b", n));
    }
    let config = support::config_with_file(dir.path(), TWO_TENANTS, "faults", &[]);
    std::fs::write(dir.path().join("in.jsonl"), text).unwrap();
    let running = support::started_host(&config).await;
    support::wait_handled(&running.stats, 16, 10).await;

    let read = |key: String| {
        let cache = running.backends.cache.clone();
        async move { String::from_utf8(cache.get(&key).await.unwrap().unwrap()).unwrap().parse::<u32>().unwrap() }
    };
    for tenant in ["a", "b"] {
        let mut counts = Vec::new();
        for n in 0..8 {
            counts.push(read(format!("faults:{tenant}:{n}")).await);
        }
        assert_eq!(counts, [1, 2, 3, 4, 5, 1, 2, 3], "tenant {tenant}");
        let slot = running.registry.slot(tenant, "h").unwrap();
        assert_eq!(slot.metrics.instances_reused.load(Ordering::Relaxed), 6, "tenant {tenant}");
    }

    // Past the idle time, the next message gets a fresh instance.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut file = std::fs::OpenOptions::new().append(true).open(dir.path().join("in.jsonl")).unwrap();
    file.write_all(line("a", 8).as_bytes()).unwrap();
    support::wait_handled(&running.stats, 17, 10).await;
    assert_eq!(read("faults:a:8".into()).await, 1, "after the idle time");

    running.shutdown.cancel();
    let summary = running.task.await.unwrap();
    assert_eq!((summary.handled, summary.dead_lettered), (17, 0));
}
