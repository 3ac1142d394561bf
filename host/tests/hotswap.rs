//! Hot swap: deploys through the registry, the admin API, the watched
//! directory and `switchyard plugins`, while traffic flows.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assumption in a test is a failed test

mod support;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::plugin;
use switchyard::config::Config;

const SWAP: &str = r#"
    [sources.in]
    type = "file"
    path = "in.jsonl"
    follow = true

    [backends.db]
    type = "sqlite"
    init = ["CREATE TABLE runs (id TEXT NOT NULL, version TEXT NOT NULL)"]

    [tenants.t.grants]
    db_tables = ["runs"]

    [tenants.t.handlers.h]
    wasm = "WASM"

    [[routes]]
    source = "in"
    topic = "*"
    tenant = "t"
    handler = "h"
    concurrency = 32
"#;

fn swap_config(dir: &Path, extra: &str) -> Config {
    let text =
        format!("data_dir = \".\"\n{}\n{extra}", SWAP.replace("WASM", &plugin("version_a").display().to_string()));
    std::fs::write(dir.join("in.jsonl"), "").unwrap();
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).unwrap()
}

fn append(dir: &Path, chunk: usize, count: usize) {
    let mut file = std::fs::OpenOptions::new().append(true).open(dir.join("in.jsonl")).unwrap();
    let mut text = String::new();
    for n in 0..count {
        text.push_str(&format!("{{\"topic\": \"t\", \"id\": \"c{chunk}-{n}\", \"payload\": \"\"}}\n"));
    }
    file.write_all(text.as_bytes()).unwrap();
}

/// 20k messages while 20 deploys alternate two builds: every message is
/// handled exactly once, messages in flight during a deploy run on either
/// build, and every message that arrives after a deploy returned runs the
/// new build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_deploys_under_load_lose_nothing_and_run_nothing_twice() {
    twenty_deploys("").await;
}

/// The same with instance reuse on the route: idle instances of the old
/// build are retired, so no message that arrives after a deploy runs on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_deploys_with_instance_reuse_leave_nothing_on_the_old_build() {
    twenty_deploys("instances = { reuse = 1000 }").await;
}

async fn twenty_deploys(route_extra: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = swap_config(dir.path(), route_extra);
    let support::Running { stats, registry, shutdown, task, .. } = support::started_host(&config).await;
    let builds = [std::fs::read(plugin("version_a")).unwrap(), std::fs::read(plugin("version_b")).unwrap()];

    const DEPLOYS: usize = 20;
    const HALF: usize = 500;
    let mut total = 0;
    for round in 1..=DEPLOYS {
        // The first half is flowing when the deploy happens ...
        append(dir.path(), round * 2, HALF);
        support::wait_handled(&stats, (total + HALF / 5) as u64, 60).await;
        let info = registry.deploy("t", "h", &builds[round % 2], "test").unwrap();
        assert_eq!(info.version, round as u32 + 1);
        // ... the second half arrives after it returned.
        append(dir.path(), round * 2 + 1, HALF);
        total += 2 * HALF;
        support::wait_handled(&stats, total as u64, 60).await;
    }
    shutdown.cancel();
    let summary = task.await.unwrap();
    assert_eq!((summary.handled, summary.dead_lettered, summary.retried), ((DEPLOYS * 2 * HALF) as u64, 0, 0));

    let db =
        sqlx::SqlitePool::connect(&format!("sqlite:{}", dir.path().join("switchyard.db").display())).await.unwrap();
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT id, version FROM runs").fetch_all(&db).await.unwrap();
    let mut runs: HashMap<String, Vec<String>> = HashMap::new();
    for (id, version) in rows {
        runs.entry(id).or_default().push(version);
    }
    assert_eq!(runs.len(), DEPLOYS * 2 * HALF, "every message has an effect");
    let mut in_flight_on_old = 0;
    for round in 1..=DEPLOYS {
        let new = ["a", "b"][round % 2];
        let old = ["a", "b"][(round + 1) % 2];
        for n in 0..HALF {
            let during = &runs[&format!("c{}-{n}", round * 2)];
            assert_eq!(during.len(), 1, "c{}-{n} ran {} times", round * 2, during.len());
            assert!(during[0] == new || during[0] == old);
            in_flight_on_old += usize::from(during[0] == old);
            let after = &runs[&format!("c{}-{n}", round * 2 + 1)];
            assert_eq!(after.len(), 1, "c{}-{n} ran {} times", round * 2 + 1, after.len());
            assert_eq!(after[0], new, "c{}-{n} arrived after deploy {round}", round * 2 + 1);
        }
    }
    assert!(in_flight_on_old > 0, "some messages must have been flowing on the old build during the deploys");
    let versions = registry.versions("t", "h").unwrap();
    let deployed = &versions[1..];
    assert!(deployed.iter().all(|v| v.first_served_after_ms.is_some()), "every deployed version served messages");
    // A build deployed for the first time is compiled during its deploy;
    // after that the host has its code, as it has a precompiled handler's.
    let mut seen = std::collections::HashSet::from([versions[0].digest.clone()]);
    let (mut precompiled, mut compiled) = (Vec::new(), Vec::new());
    for v in deployed {
        let ms = v.first_served_after_ms.unwrap_or_default();
        if seen.insert(v.digest.clone()) {
            compiled.push(ms);
        } else {
            precompiled.push(ms);
        }
    }
    precompiled.sort_by(f64::total_cmp);
    assert_eq!(precompiled.len() + compiled.len(), DEPLOYS);
    assert!(!precompiled.is_empty(), "deploys after the first of each build reuse its code");
    println!(
        "deploy to first message served by the new version: precompiled median {:.2} ms, max {:.2} ms over {} deploys; \
         compiled at deploy {} ms; {in_flight_on_old} messages in flight during a deploy finished on the old build",
        precompiled[precompiled.len() / 2],
        precompiled[precompiled.len() - 1],
        precompiled.len(),
        compiled.iter().map(|ms| format!("{ms:.2}")).collect::<Vec<_>>().join(", "),
    );
}

#[tokio::test]
async fn the_admin_api_deploys_lists_rolls_back_and_refuses_bad_versions() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let config = swap_config(dir.path(), &format!("[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"s3cret\"\n"));
    let support::Running { stats, shutdown, task, .. } = support::started_host(&config).await;
    support::wait_for_port(port).await;
    let base = format!("http://127.0.0.1:{port}");
    let call = |method: &'static str, path: String, token: Option<&'static str>, body: Vec<u8>| {
        let base = base.clone();
        async move { switchyard::admin::client::request(&base, method, &path, token, &body).await.unwrap() }
    };

    // No token, wrong token: 401, and nothing changes.
    let b = std::fs::read(plugin("version_b")).unwrap();
    assert_eq!(call("PUT", "/v1/handlers/t/h".into(), None, b.clone()).await.status, 401);
    assert_eq!(call("PUT", "/v1/handlers/t/h".into(), Some("guess"), b.clone()).await.status, 401);
    assert_eq!(call("GET", "/v1/handlers".into(), None, vec![]).await.status, 401);

    // A version that fails validation is refused with the reason; the old one keeps serving.
    let wrong = std::fs::read(plugin("wrong_world")).unwrap();
    let r = call("PUT", "/v1/handlers/t/h".into(), Some("s3cret"), wrong).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("does not export the switchyard:handler world"), "{}", r.body);
    let r = call("PUT", "/v1/handlers/t/h".into(), Some("s3cret"), b"\0asm\x01\0\0\0".to_vec()).await;
    assert_eq!(r.status, 422);
    assert!(r.body.contains("core WebAssembly module"), "{}", r.body);
    let r = call("PUT", "/v1/handlers/t/nope".into(), Some("s3cret"), b.clone()).await;
    assert_eq!(r.status, 404);
    append(dir.path(), 0, 10);
    support::wait_handled(&stats, 10, 60).await;

    // A good one goes live.
    let r = call("PUT", "/v1/handlers/t/h".into(), Some("s3cret"), b).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let info: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(info["version"], 2);
    assert_eq!(info["live"], true);
    append(dir.path(), 1, 10);
    support::wait_handled(&stats, 20, 60).await;

    let r = call("GET", "/v1/handlers/t/h/versions".into(), Some("s3cret"), vec![]).await;
    let versions: Vec<serde_json::Value> = serde_json::from_str(&r.body).unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!((versions[0]["live"].as_bool(), versions[1]["live"].as_bool()), (Some(false), Some(true)));

    // Roll back in one call.
    let r = call("POST", "/v1/handlers/t/h/rollback".into(), Some("s3cret"), vec![]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    append(dir.path(), 2, 10);
    support::wait_handled(&stats, 30, 60).await;

    // Metrics and probes need no token.
    let metrics = call("GET", "/metrics".into(), None, vec![]).await;
    assert!(
        metrics.body.contains("switchyard_messages_handled_total{tenant=\"t\",handler=\"h\"} 30"),
        "{}",
        metrics.body
    );
    assert!(metrics.body.contains("switchyard_handler_duration_seconds_count{tenant=\"t\",handler=\"h\"} 30"));
    assert_eq!(call("GET", "/healthz".into(), None, vec![]).await.status, 200);
    assert_eq!(call("GET", "/readyz".into(), None, vec![]).await.status, 200);
    shutdown.cancel();
    task.await.unwrap();

    let db =
        sqlx::SqlitePool::connect(&format!("sqlite:{}", dir.path().join("switchyard.db").display())).await.unwrap();
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT id, version FROM runs").fetch_all(&db).await.unwrap();
    let by_id: HashMap<String, String> = rows.into_iter().collect();
    assert_eq!(by_id.len(), 30);
    assert!((0..10).all(|n| by_id[&format!("c0-{n}")] == "a"), "refused deploys changed nothing");
    assert!((0..10).all(|n| by_id[&format!("c1-{n}")] == "b"), "the deploy went live");
    assert!((0..10).all(|n| by_id[&format!("c2-{n}")] == "a"), "the rollback went live");
}

#[tokio::test]
async fn a_file_dropped_in_the_watched_directory_is_deployed() {
    let dir = tempfile::tempdir().unwrap();
    let config = swap_config(dir.path(), "[admin]\nwatch_dir = \"deploy\"\n");
    std::fs::create_dir_all(dir.path().join("deploy/t")).unwrap();
    let support::Running { stats, registry, shutdown, task, .. } = support::started_host(&config).await;

    // A broken file is refused; the live version keeps serving.
    std::fs::write(dir.path().join("deploy/t/h.wasm"), b"not wasm at all").unwrap();
    tokio::time::sleep(switchyard::admin::watch::POLL * 3).await;
    assert_eq!(registry.versions("t", "h").unwrap().len(), 1);

    std::fs::copy(plugin("version_b"), dir.path().join("deploy/t/h.wasm")).unwrap();
    let mut deployed = false;
    for _ in 0..100 {
        if registry.versions("t", "h").unwrap().len() == 2 {
            deployed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(deployed, "the watched file was not deployed");
    append(dir.path(), 0, 5);
    support::wait_handled(&stats, 5, 60).await;
    shutdown.cancel();
    task.await.unwrap();
    let db =
        sqlx::SqlitePool::connect(&format!("sqlite:{}", dir.path().join("switchyard.db").display())).await.unwrap();
    let versions: Vec<(String,)> = sqlx::query_as("SELECT DISTINCT version FROM runs").fetch_all(&db).await.unwrap();
    assert_eq!(versions, vec![("b".to_string(),)]);
}

#[test]
fn switchyard_plugins_deploys_lists_and_rolls_back_a_running_host() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    swap_config(dir.path(), &format!("[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"tok\"\n"));
    let mut host = support::host::HostProcess::start(dir.path());
    tokio::runtime::Runtime::new().unwrap().block_on(support::wait_for_port(port));
    let plugins = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["plugins", "--admin", &format!("http://127.0.0.1:{port}")])
            .args(args)
            .env("SWITCHYARD_TOKEN", "tok")
            .output()
            .unwrap()
    };
    let out = plugins(&["deploy", "t", "h", plugin("version_b").to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"version\": 2"));
    let out = plugins(&["list", "t", "h"]);
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.len(), 2);
    let out = plugins(&["rollback", "t", "h", "--version", "1"]);
    assert!(out.status.success());
    let out = plugins(&["deploy", "t", "h", plugin("wrong_world").to_str().unwrap()]);
    assert!(!out.status.success(), "a refused deploy must exit non-zero");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("does not export"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["plugins", "--admin", &format!("http://127.0.0.1:{port}"), "list"])
        .env_remove("SWITCHYARD_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    assert!(host.terminate().success(), "{}", host.log());
}
