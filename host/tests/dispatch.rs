//! Dispatch tests: the real example plugins, run through the real runtime and
//! dispatcher on the embedded backends. Effects are checked in the backends
//! themselves (SQLite through its own connection, Tantivy by querying the
//! index on disk), not through Switchyard's handlers.
//!
//! The plugins must be built first: `make plugins`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assumption in a test is a failed test

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use support::{plugin, read_dead_letters, run_host, started_host};
use switchyard::Config;
use switchyard::capabilities::backends::tantivy::TantivySearch;
use switchyard::contract::search::SearchBackend;
use switchyard::runtime::{LoadError, Runtime, RuntimeOptions};

#[tokio::test]
async fn quickstart_messages_reach_the_cache_the_database_and_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let quickstart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart/switchyard.toml");
    let mut config = Config::load(&quickstart).unwrap();
    config.data_dir = dir.path().to_path_buf();

    let (stats, backends) = run_host(&config).await;
    assert_eq!((stats.handled, stats.dead_lettered, stats.retried), (101, 1, 0), "{stats:?}");

    // cache-update: every product is cached, and the deleted one is gone.
    let p1 = backends.cache.get("product:p1").await.unwrap().expect("product:p1 cached");
    let p1: serde_json::Value = serde_json::from_slice(&p1).unwrap();
    assert_eq!(p1["id"], "p1");
    assert_eq!(p1["name"], "green sprocket");
    assert!(backends.cache.get("product:p40").await.unwrap().is_some());
    assert_eq!(backends.cache.get("product:p3").await.unwrap(), None, "p3 was deleted by a later message");

    // order-insert: rows in SQLite, read through a separate connection.
    let db =
        sqlx::SqlitePool::connect(&format!("sqlite:{}", dir.path().join("switchyard.db").display())).await.unwrap();
    let (orders,): (i64,) = sqlx::query_as("SELECT count(*) FROM orders").fetch_one(&db).await.unwrap();
    assert_eq!(orders, 30);
    let (customer, total): (String, f64) =
        sqlx::query_as("SELECT customer, total FROM orders WHERE id = 'o7'").fetch_one(&db).await.unwrap();
    assert_eq!(customer, "c0");
    assert!(total > 0.0);

    // search-index, reached through order-insert's publish on the local loopback:
    // a fresh Tantivy over the same directory finds the orders.
    drop(backends);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let index = TantivySearch::open(&dir.path().join("search")).unwrap();
    let hits = index.query("orders", "customer:c0", 100).await.unwrap();
    let mut ids: Vec<&str> = hits.iter().map(|h| h.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["o14", "o21", "o28", "o7"]);

    // The malformed product change was rejected by the handler and kept.
    let dead = read_dead_letters(&dir.path().join("dead-letter/samples.jsonl"));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["payload"], "this is not json");
    let reason = support::header(&dead[0], "switchyard-dead-letter-reason").unwrap();
    assert!(reason.starts_with("rejected: malformed product change"), "{reason}");
}

const FAULTS: &str = r#"
    [sources.in]
    type = "file"
    path = "in.jsonl"

    [tenants.t.grants]
    cache_prefixes = ["faults:"]
    db_tables = ["faults"]

    [tenants.t.handlers.faults]
    wasm = "WASM"

    [[routes]]
    source = "in"
    topic = "*"
    tenant = "t"
    handler = "faults"
    max_attempts = 3
    retry_base_ms = 5
    retry_max_ms = 50
    max_message_bytes = 4096
    limits = { memory_mib = 16, timeout_ms = 1000 }
"#;

#[tokio::test]
async fn every_failure_mode_fails_only_its_own_message() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        r#"{"topic": "f", "id": "ok", "payload": {"mode": "ok"}}"#,
        r#"{"topic": "f", "id": "retry", "payload": {"mode": "retry", "delay_ms": 1}}"#,
        r#"{"topic": "f", "id": "flaky", "payload": {"mode": "flaky", "succeed_on": 3}}"#,
        r#"{"topic": "f", "id": "reject", "payload": {"mode": "reject"}}"#,
        r#"{"topic": "f", "id": "trap", "payload": {"mode": "trap"}}"#,
        r#"{"topic": "f", "id": "loop", "payload": {"mode": "loop"}}"#,
        r#"{"topic": "f", "id": "oom", "payload": {"mode": "oom"}}"#,
        r#"{"topic": "f", "id": "recurse", "payload": {"mode": "recurse"}}"#,
        r#"{"topic": "f", "id": "not-json", "payload": "{this is not json"}"#,
        r#"{"topic": "f", "id": "denied", "payload": {"mode": "cache", "key": "other:x"}}"#,
        r#"{"topic": "f", "id": "after", "payload": {"mode": "cache", "key": "faults:after"}}"#,
    ];
    let config = support::config_with_file(dir.path(), FAULTS, "faults", &lines);

    let (stats, backends) = run_host(&config).await;

    // ok, flaky (on its third attempt) and the message after all the failures.
    assert_eq!(stats.handled, 3, "{stats:?}");
    assert_eq!(stats.dead_lettered, 8, "{stats:?}");
    assert_eq!(backends.cache.get("faults:after").await.unwrap(), Some(1u32.to_le_bytes().to_vec()));

    let dead = read_dead_letters(&dir.path().join("dead-letter/in.jsonl"));
    let reason_of = |id: &str| {
        let line = dead.iter().find(|d| d["id"] == id).unwrap_or_else(|| panic!("{id} not dead-lettered: {dead:?}"));
        let attempts = support::header(line, "switchyard-attempts").unwrap();
        (support::header(line, "switchyard-dead-letter-reason").unwrap(), attempts)
    };
    let expect = [
        ("retry", "gave up after 3 attempts: asked to retry", "3"),
        ("reject", "rejected: asked to reject", "1"),
        ("trap", "gave up after 3 attempts: handler trapped", "3"),
        ("loop", "gave up after 3 attempts: handler timed out after 1000 ms", "3"),
        ("oom", "gave up after 3 attempts: handler exceeded its memory limit of 16 MiB", "3"),
        ("recurse", "gave up after 3 attempts: handler trapped", "3"),
        ("not-json", "rejected: payload is not a fault request", "1"),
        (
            "denied",
            "rejected: cache set other:x: CapabilityError::Denied(\"cache key \\\"other:x\\\" is outside the tenant's prefixes",
            "1",
        ),
    ];
    for (id, reason, attempts) in expect {
        let (got, got_attempts) = reason_of(id);
        assert!(got.starts_with(reason), "{id}: {got:?} should start with {reason:?}");
        assert_eq!(got_attempts, attempts, "{id}");
    }
    let (trap_reason, _) = reason_of("trap");
    assert!(trap_reason.contains("unreachable"), "a panic traps as unreachable: {trap_reason}");
    let (recurse_reason, _) = reason_of("recurse");
    // Rust keeps its stack in linear memory: deep recursion runs off its bottom
    // (out of bounds), or exhausts the engine's own stack first.
    assert!(
        recurse_reason.contains("out of bounds") || recurse_reason.contains("stack"),
        "deep recursion exhausts the stack: {recurse_reason}"
    );
    let denied = &dead.iter().find(|d| d["id"] == "denied").unwrap();
    assert_eq!(support::header(denied, "switchyard-tenant").unwrap(), "t");
    assert_eq!(support::header(denied, "switchyard-handler").unwrap(), "faults");
}

#[tokio::test]
async fn an_oversize_message_is_dead_lettered_without_running() {
    let dir = tempfile::tempdir().unwrap();
    let big = format!(
        r#"{{"topic": "f", "id": "big", "payload": {{"mode": "cache", "key": "faults:big", "pad": "{}"}}}}"#,
        "x".repeat(5000)
    );
    let lines = [big.as_str(), r#"{"topic": "f", "id": "small", "payload": {"mode": "cache", "key": "faults:small"}}"#];
    let config = support::config_with_file(dir.path(), FAULTS, "faults", &lines);
    let (stats, backends) = run_host(&config).await;
    assert_eq!((stats.handled, stats.dead_lettered), (1, 1));
    assert_eq!(backends.cache.get("faults:big").await.unwrap(), None, "the handler must not have run");
    assert!(backends.cache.get("faults:small").await.unwrap().is_some());
    let dead = read_dead_letters(&dir.path().join("dead-letter/in.jsonl"));
    let reason = support::header(&dead[0], "switchyard-dead-letter-reason").unwrap();
    assert!(reason.contains("over the route's max_message_bytes of 4096"), "{reason}");
    // Nothing is lost: the whole message is in the dead-letter file.
    assert!(dead[0]["payload"].as_str().unwrap().len() > 5000);
}

#[tokio::test]
async fn a_malformed_line_is_dead_lettered_and_the_rest_flow() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        "this line is not JSON",
        r#"{"topic": "f", "payload": {"mode": "ok"}, "colour": "red"}"#,
        r#"{"topic": "f", "id": "fine", "payload": {"mode": "cache", "key": "faults:fine"}}"#,
    ];
    let config = support::config_with_file(dir.path(), FAULTS, "faults", &lines);
    let (stats, backends) = run_host(&config).await;
    assert_eq!(stats.handled, 1);
    assert!(backends.cache.get("faults:fine").await.unwrap().is_some());
    let dead = read_dead_letters(&dir.path().join("dead-letter/in.jsonl"));
    let reasons: Vec<String> =
        dead.iter().map(|d| support::header(d, "switchyard-dead-letter-reason").unwrap()).collect();
    assert_eq!(reasons.len(), 2);
    assert!(reasons[0].starts_with("line 1 is not a message"), "{reasons:?}");
    assert!(reasons[1].contains("unknown field `colour`"), "{reasons:?}");
    assert_eq!(dead[0]["payload"], "this line is not JSON");
}

#[tokio::test]
async fn a_restart_resumes_after_the_checkpoint_and_reuses_compiled_code() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> =
        (0..50).map(|i| format!(r#"{{"topic": "f", "payload": {{"mode": "cache", "key": "faults:{i}"}}}}"#)).collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let config = support::config_with_file(dir.path(), FAULTS, "faults", &lines);

    let (first, _) = run_host(&config).await;
    assert_eq!(first.handled, 50);
    assert_eq!(std::fs::read_to_string(dir.path().join("in.jsonl.offset")).unwrap(), "50");

    // Two more lines arrive; the second run handles only those.
    let mut file = std::fs::OpenOptions::new().append(true).open(dir.path().join("in.jsonl")).unwrap();
    std::io::Write::write_all(
        &mut file,
        b"{\"topic\": \"f\", \"payload\": {\"mode\": \"ok\"}}\n{\"topic\": \"f\", \"payload\": {\"mode\": \"ok\"}}\n",
    )
    .unwrap();
    let (second, _) = run_host(&config).await;
    assert_eq!(second.handled, 2);

    // The compiled code was cached by digest on the first start.
    let runtime = Runtime::new(switchyard::wiring::runtime_options(&config)).unwrap();
    let loaded = runtime.load(&plugin("faults")).unwrap();
    assert!(loaded.cached, "the second start must not compile again");
    let entries = std::fs::read_dir(dir.path().join("compiled")).unwrap().count();
    assert_eq!(entries, 1);
}

/// Each message's instance comes from a reused pool slot; the pages the last
/// one dirtied, here 256 scattered over 8 MiB (more separate regions than one
/// kernel scan of the slot reset reports), must read as zero again.
#[tokio::test]
async fn no_message_sees_memory_of_an_earlier_one() {
    let dir = tempfile::tempdir().unwrap();
    let lines = vec![r#"{"topic": "f", "payload": {"mode": "scatter"}}"#; 200];
    let config = support::config_with_file(dir.path(), FAULTS, "faults", &lines);
    let (stats, _) = run_host(&config).await;
    let dead = std::fs::read_to_string(dir.path().join("dead-letter/in.jsonl")).unwrap_or_default();
    assert_eq!((stats.handled, stats.dead_lettered), (200, 0), "{dead}");
}

#[tokio::test]
async fn http_source_answers_with_the_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let text = FAULTS.replace(
        "[sources.in]\n    type = \"file\"\n    path = \"in.jsonl\"",
        &format!("[sources.in]\n    type = \"http\"\n    listen = \"127.0.0.1:{port}\""),
    );
    let config = support::config_with_file(dir.path(), &text, "faults", &[]);
    let support::Running { backends, shutdown, task, .. } = started_host(&config).await;
    let url = format!("http://127.0.0.1:{port}/topics/f");
    support::wait_for_port(port).await;

    let (status, body) =
        support::post(&url, &[("x-switchyard-id", "h1")], br#"{"mode": "cache", "key": "faults:http"}"#).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""outcome":"handled""#), "{body}");
    assert!(backends.cache.get("faults:http").await.unwrap().is_some());

    let (status, body) = support::post(&url, &[], b"{not json").await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("payload is not a fault request"), "{body}");

    shutdown.cancel();
    let stats = task.await.unwrap();
    assert_eq!((stats.handled, stats.dead_lettered), (1, 1));
    let dead = read_dead_letters(&dir.path().join("dead-letter/in.jsonl"));
    assert_eq!(dead[0]["payload"], "{not json");
}

#[test]
fn bad_components_are_refused_with_a_reason_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(RuntimeOptions::default()).unwrap();
    let path = |name: &str| dir.path().join(name);

    let err = runtime.load(&path("missing.wasm")).unwrap_err();
    assert!(matches!(err, LoadError::Read { .. }), "{err}");
    assert!(err.to_string().contains("missing.wasm"), "{err}");

    let err = runtime.load_bytes(&path("text.wasm"), b"hello, not wasm").unwrap_err();
    assert!(matches!(err, LoadError::NotWasm { .. }), "{err}");

    // The smallest valid core module: a module, not a component.
    let err = runtime.load_bytes(&path("core.wasm"), b"\0asm\x01\0\0\0").unwrap_err();
    assert!(matches!(err, LoadError::CoreModule { .. }), "{err}");
    assert!(err.to_string().contains("core.wasm"), "{err}");

    // A real component, truncated.
    let good = std::fs::read(plugin("noop")).unwrap();
    let err = runtime.load_bytes(&path("truncated.wasm"), &good[..good.len() / 2]).unwrap_err();
    assert!(matches!(err, LoadError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("truncated.wasm"), "{err}");

    // Flipped bytes in the middle of a real component.
    let mut corrupt = good.clone();
    for b in corrupt.iter_mut().skip(good.len() / 3).take(64) {
        *b ^= 0x5a;
    }
    assert!(runtime.load_bytes(&path("corrupt.wasm"), &corrupt).is_err());

    let err = runtime.load(&plugin("wrong_world")).unwrap_err();
    assert!(matches!(err, LoadError::WrongWorld { .. }), "{err}");
    assert!(err.to_string().contains("handle"), "names the missing export: {err}");

    // None of that disturbed the runtime: a good handler still loads.
    runtime.load(&plugin("noop")).unwrap();
}

#[test]
fn a_bad_handler_in_config_names_the_tenant_and_handler() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let config = support::config_with_file(dir.path(), FAULTS, "faults", &[]);
    let mut config: Config = config;
    config.tenants.get_mut("t").unwrap().handlers.get_mut("faults").unwrap().wasm = dir.path().join("bad.wasm");
    let runtime = Arc::new(Runtime::new(RuntimeOptions::default()).unwrap());
    let Err(err) = switchyard::wiring::load_handlers(&config, &runtime) else {
        panic!("a core module must be refused")
    };
    let err = err.to_string();
    assert!(err.contains("tenant \"t\" handler \"faults\""), "{err}");
    assert!(err.contains("core WebAssembly module"), "{err}");
}

/// A tenant's fuel quota takes effect on its own: no handler or route sets
/// a fuel limit, yet a handler spinning in a loop runs out of the tenant's
/// fuel (well before its 1 s deadline), and the fuel it burnt is counted.
#[tokio::test]
async fn a_tenant_fuel_quota_alone_bounds_a_loop() {
    let dir = tempfile::tempdir().unwrap();
    let template = FAULTS
        .replace("[tenants.t.handlers.faults]", "[tenants.t.quotas]\nfuel = 5000000\n\n[tenants.t.handlers.faults]");
    let lines = [r#"{"topic": "f", "id": "loop", "payload": {"mode": "loop"}}"#];
    let config = support::config_with_file(dir.path(), &template, "faults", &lines);
    let (host, _backends) = support::build_host(&config).await;
    let registry = host.registry();
    let stats = host.run(tokio_util::sync::CancellationToken::new()).await;
    assert_eq!(stats.dead_lettered, 1, "{stats:?}");
    let dead = read_dead_letters(&dir.path().join("dead-letter/in.jsonl"));
    let reason = support::header(&dead[0], "switchyard-dead-letter-reason").unwrap();
    assert!(reason.contains("fuel"), "the loop should run out of fuel, not time: {reason}");
    let fuel = registry.slot("t", "faults").unwrap().metrics.fuel.load(std::sync::atomic::Ordering::Relaxed);
    assert!(fuel >= 5_000_000, "fuel consumed: {fuel}");
}
