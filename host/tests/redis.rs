//! Integration tests against the real Redis on this machine
//! (`SWITCHYARD_REDIS_URL`, default `redis://127.0.0.1:6379`). Effects are
//! checked through the test's own Redis connection.
//!
//! One test stops and restarts this Redis (`redis-cli shutdown nosave`, then
//! the start command of the machine's setup); a guard restarts it even if the
//! test fails. Keys carry a unique prefix so runs never collide.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assumption in a test is a failed test

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::backends as conformance;
use switchyard::capabilities::backends::memory::MemoryCache;
use switchyard::capabilities::backends::redis::RedisCache;
use switchyard::contract::cache::CacheBackend;
use switchyard::contract::errors::BackendError;

/// Held shared by tests that need Redis up, and exclusively by the one that
/// stops it.
static REDIS_UP: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn url() -> String {
    std::env::var("SWITCHYARD_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn direct() -> redis::aio::MultiplexedConnection {
    redis::Client::open(url()).unwrap().get_multiplexed_async_connection().await.unwrap()
}

async fn direct_get(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<Vec<u8>> {
    redis::cmd("GET").arg(key).query_async(conn).await.unwrap()
}

async fn delete_prefix(prefix: &str) {
    let mut conn = direct().await;
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut conn).await.unwrap();
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await.unwrap();
    }
}

#[tokio::test]
async fn memory_passes_the_cache_conformance() {
    conformance::cache(Arc::new(MemoryCache::new(10_000)), "m:").await;
}

#[tokio::test]
async fn redis_passes_the_cache_conformance_and_stores_under_its_prefix() {
    let _up = REDIS_UP.read().await;
    let prefix = format!("{}:", conformance::unique("conf"));
    let cache = Arc::new(RedisCache::open(&url(), &prefix, Duration::from_secs(2)).await.unwrap());
    conformance::cache(cache.clone(), "k:").await;

    let mut conn = direct().await;
    assert_eq!(direct_get(&mut conn, &format!("{prefix}k:c7")).await, Some(b"v7".to_vec()));
    assert_eq!(direct_get(&mut conn, &format!("{prefix}k:counter")).await, Some(b"200".to_vec()));
    assert_eq!(direct_get(&mut conn, "k:c7").await, None, "nothing outside the key prefix");
    cache.set("k:ttl", b"x".to_vec(), Some(Duration::from_secs(60))).await.unwrap();
    let ttl: i64 = redis::cmd("PTTL").arg(format!("{prefix}k:ttl")).query_async(&mut conn).await.unwrap();
    assert!(ttl > 50_000 && ttl <= 60_000, "PTTL {ttl}");
    delete_prefix(&prefix).await;
}

/// Restarts Redis when dropped, if it is not answering: a failing test must
/// not leave the machine without it.
struct RestartRedis;

impl RestartRedis {
    fn stop() -> Self {
        let status = std::process::Command::new("redis-cli").args(["shutdown", "nosave"]).status().unwrap();
        // redis-cli reports the dropped connection of a shutdown as an error.
        let _ = status;
        let deadline = Instant::now() + Duration::from_secs(10);
        while ping() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!ping(), "redis did not stop");
        RestartRedis
    }

    fn start(&self) {
        if ping() {
            return;
        }
        // The command this machine's Redis was started with.
        let status = std::process::Command::new("redis-server")
            .args([
                "--daemonize",
                "yes",
                "--bind",
                "127.0.0.1",
                "-::1",
                "--port",
                "6379",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log"])
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("could not restart redis: {status:?}");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ping() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RestartRedis {
    fn drop(&mut self) {
        self.start();
    }
}

fn ping() -> bool {
    std::process::Command::new("redis-cli")
        .arg("ping")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
        .unwrap_or(false)
}

/// Log lines written while a test runs, to check what an operator would see.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

const CACHE_UPDATE: &str = r#"
    [sources.in]
    type = "file"
    path = "in.jsonl"
    follow = true

    [backends.cache]
    type = "redis"
    url = "REDIS_URL"
    key_prefix = "PREFIX"
    timeout_ms = 1000

    [tenants.shop.grants]
    cache_prefixes = ["product:"]

    [tenants.shop.handlers.cache-update]
    wasm = "WASM"

    [[routes]]
    source = "in"
    topic = "product.changed"
    tenant = "shop"
    handler = "cache-update"
    max_attempts = 1000
    retry_base_ms = 50
    retry_max_ms = 500
"#;

/// Redis goes down while messages are flowing: the calls fail as
/// `unavailable` (not a trap), the messages are retried with backoff and
/// neither acked nor dead-lettered, and once Redis is back every effect is
/// there. The backend reconnects by itself.
#[tokio::test(flavor = "current_thread")]
async fn messages_survive_redis_going_down_and_coming_back() {
    let _alone = REDIS_UP.write().await;
    let prefix = format!("{}:", conformance::unique("down"));
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt().with_writer(captured.clone()).with_ansi(false).finish();
    let _log = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::tempdir().unwrap();
    let product =
        |i: usize| format!(r#"{{"topic": "product.changed", "key": "p{i}", "payload": {{"id": "p{i}", "n": {i}}}}}"#);
    let first: Vec<String> = (0..20).map(product).collect();
    let template = CACHE_UPDATE.replace("REDIS_URL", &url()).replace("PREFIX", &prefix);
    let config = support::config_with_file(
        dir.path(),
        &template,
        "cache_update",
        &first.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let support::Running { stats, backends, shutdown, task: host, .. } = support::started_host(&config).await;
    let mut conn = direct().await;
    wait_for(|| async { stats.snapshot().handled >= 20 }).await;

    let redis = RestartRedis::stop();
    // While down: a call fails at once as unavailable, naming the backend.
    let err = backends.cache.set("product:probe", b"x".to_vec(), None).await.unwrap_err();
    assert!(matches!(&err, BackendError::Unavailable(m) if m.contains("redis at 127.0.0.1:6379")), "{err:?}");
    let more: String = (20..60).map(|i| product(i) + "\n").collect();
    std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("in.jsonl"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, more.as_bytes()))
        .unwrap();
    wait_for(|| async { stats.snapshot().retried >= 40 }).await;
    assert_eq!(stats.snapshot().handled, 20, "nothing is acked while Redis is down");
    redis.start();
    drop(redis);

    let mut conn_back = None;
    for _ in 0..100 {
        if let Ok(c) = redis::Client::open(url()).unwrap().get_multiplexed_async_connection().await {
            conn_back = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    conn = conn_back.unwrap_or(conn);
    wait_for(|| async { stats.snapshot().handled >= 60 }).await;
    shutdown.cancel();
    let summary = host.await.unwrap();
    assert_eq!((summary.handled, summary.dead_lettered), (60, 0), "{summary:?}");
    assert!(summary.retried >= 40, "the messages sent while down were retried: {summary:?}");
    // This machine's Redis keeps nothing across a restart (`--save ""`,
    // no AOF), so the first 20, acked before the outage, went with it; the
    // 40 sent while it was down must all be there.
    for i in 20..60 {
        let value = direct_get(&mut conn, &format!("{prefix}product:p{i}")).await;
        let value: serde_json::Value =
            serde_json::from_slice(&value.unwrap_or_else(|| panic!("p{i} missing"))).unwrap();
        assert_eq!(value["n"], i, "p{i}");
    }
    assert!(!dir.path().join("dead-letter/in.jsonl").exists(), "nothing was dead-lettered");
    let log = String::from_utf8_lossy(&captured.0.lock().unwrap()).to_string();
    assert!(
        log.contains("cache backend is unreachable")
            && log.contains("backend=\"redis\"")
            && log.contains("127.0.0.1:6379"),
        "a log line names the backend and its address: {log}"
    );
    assert!(log.contains("cache backend is reachable again"), "{log}");
    delete_prefix(&prefix).await;
}

async fn wait_for<F, Fut>(mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
