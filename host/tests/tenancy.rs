//! Multi-tenant isolation: a hostile tenant's handlers attack the host and a
//! well-behaved tenant next to it. Every attack must fail only its own
//! message, with the reason in the dead-letter headers, while every message
//! of the well-behaved tenant is handled.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assumption in a test is a failed test

mod support;

use std::sync::Arc;

use support::{header, plugin, read_dead_letters};
use switchyard::config::Config;
use switchyard::runtime::registry::{DeployError, Registry};
use switchyard::runtime::{Runtime, RuntimeOptions};
use tokio_util::sync::CancellationToken;

const TENANTS: &str = r#"
    [sources.in]
    type = "file"
    path = "in.jsonl"

    [backends.db]
    type = "sqlite"
    init = [
        "CREATE TABLE victim_secrets (secret TEXT)",
        "INSERT INTO victim_secrets VALUES ('the crown jewels')",
        "CREATE TABLE hostile_data (x TEXT)",
    ]

    [tenants.victim.grants]
    cache_prefixes = ["product:", "victim:"]

    [tenants.victim.handlers.cache-update]
    wasm = "CACHE_UPDATE"

    [tenants.hostile.grants]
    cache_prefixes = ["hostile:"]
    db_tables = ["hostile_data"]
    publish = ["hostile.*"]
    search_prefixes = ["hostile-"]

    [tenants.hostile.quotas]
    max_indexes = 5
    max_in_flight = 2
    memory_mib = 32
    timeout_ms = 1000

    [tenants.hostile.handlers.attack]
    wasm = "HOSTILE"

    [[routes]]
    source = "in"
    topic = "product.*"
    tenant = "victim"
    handler = "cache-update"

    [[routes]]
    source = "in"
    topic = "attack"
    tenant = "hostile"
    handler = "attack"
    max_attempts = 2
    retry_base_ms = 5
"#;

fn config(dir: &std::path::Path, lines: &[String]) -> Config {
    let text = TENANTS
        .replace("CACHE_UPDATE", &plugin("cache_update").display().to_string())
        .replace("HOSTILE", &plugin("hostile").display().to_string());
    std::fs::write(dir.join("in.jsonl"), lines.join("\n") + "\n").unwrap();
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, format!("data_dir = \".\"\n{text}")).unwrap();
    Config::load(&path).unwrap()
}

#[tokio::test]
async fn hostile_handlers_fail_only_their_own_messages() {
    let dir = tempfile::tempdir().unwrap();
    let attacks = [
        "loop",
        "memory",
        "recurse",
        "huge-result",
        "read-other-tenant",
        "sql-outside-grant",
        "publish-forbidden",
        "filesystem",
        "network",
        "environment",
        "publish-flood",
        "huge-key",
        "huge-header",
        "index-flood",
    ];
    let mut lines = Vec::new();
    for i in 0..200 {
        lines.push(format!(
            r#"{{"topic": "product.changed", "id": "v{i}", "payload": {{"id": "{i}", "name": "thing {i}"}}}}"#
        ));
        if i % 10 == 0
            && let Some(attack) = attacks.get(i / 10)
        {
            lines.push(format!(r#"{{"topic": "attack", "id": "{attack}", "payload": {{"attack": "{attack}"}}}}"#));
        }
    }
    let config = config(dir.path(), &lines);
    let (host, backends) = support::build_host(&config).await;
    backends.cache.set("victim:secret", b"hunter2".to_vec(), None).await.unwrap();
    let stats = host.run(CancellationToken::new()).await;

    // The well-behaved tenant: every message handled, every effect present.
    assert_eq!(stats.handled, 200, "{stats:?}");
    for i in [0, 57, 199] {
        assert!(backends.cache.get(&format!("product:{i}")).await.unwrap().is_some(), "product:{i}");
    }
    // Nothing leaked, nothing published to the victim.
    assert_eq!(backends.cache.get("hostile:loot").await.unwrap(), None);
    assert!(!dir.path().join("dead-letter/local.jsonl").exists(), "nothing may reach the loopback");

    // Every attack dead-lettered, with its refusal as the reason.
    assert_eq!(stats.dead_lettered, attacks.len() as u64, "{stats:?}");
    let dead = read_dead_letters(&dir.path().join("dead-letter/in.jsonl"));
    let reason = |id: &str| {
        let line = dead.iter().find(|d| d["id"] == id).unwrap_or_else(|| panic!("{id} was not dead-lettered"));
        assert_eq!(header(line, "switchyard-tenant").as_deref(), Some("hostile"));
        header(line, "switchyard-dead-letter-reason").unwrap()
    };
    let expect = [
        ("loop", "handler timed out after 1000 ms"),
        ("memory", "handler exceeded its memory limit of 32 MiB"),
        ("recurse", "handler trapped"),
        (
            "read-other-tenant",
            "rejected: cache read refused: CapabilityError::Denied(\"cache key \\\"victim:secret\\\"",
        ),
        ("sql-outside-grant", "rejected: sql refused: CapabilityError::Denied(\"table \\\"victim_secrets\\\""),
        (
            "publish-forbidden",
            "rejected: publish refused: CapabilityError::Denied(\"destination \\\"victim.commands\\\"",
        ),
        ("filesystem", "rejected: filesystem refused"),
        ("network", "rejected: network refused"),
        ("environment", "rejected: environment refused: \"no variables, no arguments\""),
        // One message publishing 8 MiB sixty times is stopped at 16 MiB in all.
        ("publish-flood", "rejected: publish 1 refused: CapabilityError::TooLarge(\"this message would publish"),
        ("huge-key", "rejected: huge key refused: CapabilityError::TooLarge(\"message key is 20971520 bytes"),
        (
            "huge-header",
            "rejected: huge header refused: CapabilityError::TooLarge(\"message headers are 20971521 bytes",
        ),
        // Each index costs the search backend threads and files.
        (
            "index-flood",
            "rejected: index 5 refused: CapabilityError::TooLarge(\"the tenant already writes to 5 indexes",
        ),
    ];
    for (id, text) in expect {
        let got = reason(id);
        assert!(got.contains(text), "{id}: {got:?} should contain {text:?}");
    }
    // An 8 MiB reason is cut to a header-sized one.
    let huge = reason("huge-result");
    assert!(huge.starts_with("rejected: xxxx") && huge.len() < 2048, "{} bytes", huge.len());
}

#[test]
fn a_handler_importing_an_ungranted_capability_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "data_dir = \".\"\n[tenants.plain.grants]\ncache_prefixes = [\"p:\"]\n[tenants.plain.handlers.h]\nwasm = \"{}\"\n",
        plugin("hostile").display()
    );
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();
    let runtime = Arc::new(Runtime::new(RuntimeOptions::default()).unwrap());
    let Err(err) = Registry::load(&config, runtime) else { panic!("the hostile handler imports db without a grant") };
    assert!(matches!(err, DeployError::NotGranted { capability: "database tables", .. }), "{err}");
    assert!(err.to_string().contains("switchyard:handler/db"), "{err}");
}

/// A handler that forks itself through the loopback: each message publishes
/// fifty copies of itself to a local route back to the same handler. The
/// loopback fills and refuses further publishes instead of waiting on
/// itself, the other tenant's messages are all handled meanwhile, and a stop
/// signal ends the host within its grace whatever the forks are doing. A
/// message logging 20,000 lines has its lines past its cap dropped and counted.
/// (20,000 rather than more so that the flood ends inside the tenant's
/// one-second deadline on a loaded machine: a timed-out flood would leave
/// lines unattempted, and uncounted.)
#[tokio::test]
async fn a_forking_handler_wedges_nothing_and_a_log_flood_is_capped() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines = vec![
        r#"{"topic": "attack", "id": "fork", "payload": {"attack": "fork", "n": 50}}"#.to_string(),
        r#"{"topic": "attack", "id": "log-flood", "payload": {"attack": "log-flood", "n": 20000}}"#.to_string(),
    ];
    for i in 0..100 {
        lines.push(format!(
            r#"{{"topic": "product.changed", "id": "v{i}", "payload": {{"id": "{i}", "name": "thing {i}"}}}}"#
        ));
    }
    let text = TENANTS
        .replace("CACHE_UPDATE", &plugin("cache_update").display().to_string())
        .replace("HOSTILE", &plugin("hostile").display().to_string());
    let fork_route = "[[routes]]\nsource = \"local\"\ntopic = \"hostile.fork\"\ntenant = \"hostile\"\nhandler = \"attack\"\nmax_attempts = 1\n";
    std::fs::write(dir.path().join("in.jsonl"), lines.join("\n") + "\n").unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, format!("data_dir = \".\"\nshutdown_grace_ms = 2000\n{text}\n{fork_route}")).unwrap();
    let config = Config::load(&path).unwrap();
    let running = support::started_host(&config).await;

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut missing: Vec<usize> = (0..100).collect();
    while !missing.is_empty() {
        let mut still = Vec::new();
        for i in missing {
            if running.backends.cache.get(&format!("product:{i}")).await.unwrap().is_none() {
                still.push(i);
            }
        }
        missing = still;
        assert!(std::time::Instant::now() < deadline, "the other tenant was held up: {} of 100 missing", missing.len());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The forks are still multiplying; a stop must end the host anyway.
    running.shutdown.cancel();
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(30), running.task).await;
    assert!(stopped.is_ok(), "the host did not stop within its grace while the forks ran");

    // 64 KiB of ~215-byte lines is about 300 kept; the rest are counted.
    let slot = running.registry.slot("hostile", "attack").unwrap();
    let dropped = slot.metrics.log_lines_dropped.load(std::sync::atomic::Ordering::Relaxed);
    assert!(dropped >= 19_600, "a 20,000-line flood kept {} lines", 20_000u64.saturating_sub(dropped));
}
