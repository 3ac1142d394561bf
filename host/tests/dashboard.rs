//! The dashboard in a real headless Chromium (Debian's `chromium`, driven by
//! `playwright-core`; `scripts/setup.sh` installs both). A `switchyard run`
//! host serves it on its admin listener while messages flow through a file
//! source into the `versioned` handler, which records in SQLite which build
//! ran each message. The browser is refused with a wrong token, sees the
//! rates move and a dead letter's reason, and rolls the handler back by a
//! click; the test then reads from the database that the messages after the
//! click ran on version 1. The page's screenshot is kept as an artefact.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assumption in a test is a failed test

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::Connection;
use support::host::HostProcess;
use support::{free_port, plugin};
use switchyard::admin::client::request;

const TOKEN: &str = "dashboard-test-token";

/// Where `scripts/setup.sh` installs playwright-core.
fn node_modules() -> PathBuf {
    let cache = std::env::var("SWITCHYARD_CACHE").unwrap_or_else(|_| "/var/cache/switchyard".into());
    let modules = Path::new(&cache).join("node/node_modules");
    assert!(
        modules.join("playwright-core").exists() && Path::new("/usr/bin/chromium").exists(),
        "playwright-core ({}) or /usr/bin/chromium is missing: run scripts/setup.sh",
        modules.display()
    );
    modules
}

fn append(path: &Path, lines: &[String]) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    for line in lines {
        writeln!(file, "{line}").unwrap();
    }
}

#[tokio::test]
async fn the_dashboard_refuses_a_wrong_token_shows_rates_and_dead_letters_and_rolls_back_by_a_click() {
    let modules = node_modules();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let admin = format!("http://127.0.0.1:{port}");
    let messages = dir.path().join("in.jsonl");
    std::fs::write(&messages, "").unwrap();
    let config = format!(
        "data_dir = \".\"\n\
         [admin]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\n\
         [sources.in]\ntype = \"file\"\npath = \"in.jsonl\"\nfollow = true\n\
         [backends.db]\ntype = \"sqlite\"\npath = \"runs.db\"\ninit = [\"CREATE TABLE IF NOT EXISTS runs (id TEXT, version TEXT)\"]\n\
         [tenants.shop.grants]\ndb_tables = [\"runs\"]\n\
         [tenants.shop.handlers.versioned]\nwasm = \"{}\"\n\
         [[routes]]\nsource = \"in\"\ntopic = \"*\"\ntenant = \"shop\"\nhandler = \"versioned\"\nmax_message_bytes = 1000\n",
        plugin("version_a").display()
    );
    std::fs::write(dir.path().join("switchyard.toml"), config).unwrap();
    let mut host = HostProcess::start(dir.path());
    host.wait_for_log("admin API listening", 60).await;

    // Version 2 is build "b"; the browser rolls back to version 1, build "a".
    let b = std::fs::read(plugin("version_b")).unwrap();
    let deployed = request(&admin, "PUT", "/v1/handlers/shop/versioned", Some(TOKEN), &b).await.unwrap();
    assert_eq!(deployed.status, 200, "{}", deployed.body);

    // One message too large for the route, dead-lettered with its reason.
    let large = "x".repeat(2000);
    append(&messages, &[format!(r#"{{"topic": "t", "id": "too-large", "payload": "{large}"}}"#)]);

    // Messages keep flowing while the browser watches: 20 a second.
    let feeding = tokio_util::sync::CancellationToken::new();
    let feeder = {
        let (messages, feeding) = (messages.clone(), feeding.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !feeding.is_cancelled() {
                append(&messages, &[format!(r#"{{"topic": "t", "id": "during-{n}", "payload": {{}}}}"#)]);
                n += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let artefacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("artefacts");
    std::fs::create_dir_all(&artefacts).unwrap();
    let screenshot = artefacts.join("dashboard.png");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard/dashboard.cjs");
    let browser = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new("node")
            .arg(&script)
            .args([admin.as_str(), TOKEN])
            .arg(&screenshot)
            .env("NODE_PATH", &modules)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser run did not end within 3 minutes")
    .unwrap();
    feeding.cancel();
    feeder.await.unwrap();
    let stdout = String::from_utf8_lossy(&browser.stdout);
    assert!(
        browser.status.success(),
        "the browser run failed:\n{stdout}\n{}\nhost log:\n{}",
        String::from_utf8_lossy(&browser.stderr),
        host.log()
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();

    assert_eq!(seen["refused"], "the admin token was refused");
    assert_eq!(seen["rows_when_refused"], 0);
    assert_eq!(seen["status"], "connected");
    assert!(seen["rates"].as_array().unwrap().iter().any(|r| r.as_f64().unwrap() > 0.0), "{seen}");
    let totals: std::collections::BTreeSet<&str> =
        seen["totals"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert!(totals.len() >= 3, "the totals did not move: {seen}");
    assert!(seen["sparkline_points"].as_u64().unwrap() >= 2, "{seen}");
    assert_eq!(seen["dead_letter"]["source"], "in");
    assert!(
        seen["dead_letter"]["reason"].as_str().unwrap().contains("over the route's max_message_bytes of 1000"),
        "{seen}"
    );
    assert_eq!(seen["version_before"], "v2");
    assert_eq!(seen["version_after"], "v1");
    assert_eq!(seen["message"], "shop/versioned: version 1 is live");
    assert_eq!(seen["errors"], serde_json::json!([]), "the page logged errors");
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 10_000, "no screenshot at {}", screenshot.display());

    // The host agrees, and the messages after the click ran on build "a".
    let listed = request(&admin, "GET", "/v1/handlers", Some(TOKEN), b"").await.unwrap();
    let listed: serde_json::Value = serde_json::from_str(&listed.body).unwrap();
    assert_eq!(listed[0]["version"], 1, "{listed}");
    let after: Vec<String> =
        (0..5).map(|n| format!(r#"{{"topic": "t", "id": "after-{n}", "payload": {{}}}}"#)).collect();
    append(&messages, &after);
    let db = dir.path().join("runs.db");
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=ro", db.display())).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM runs WHERE id LIKE 'after-%'").fetch_one(&mut conn).await.unwrap();
        if n == 5 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{n} of the 5 messages after the rollback ran:\n{}", host.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let versions: Vec<String> = sqlx::query_scalar("SELECT DISTINCT version FROM runs WHERE id LIKE 'after-%'")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(versions, ["a"]);
    let on_b: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM runs WHERE version = 'b'").fetch_one(&mut conn).await.unwrap();
    assert!(on_b > 0, "no message ran on version 2 before the rollback");
    let too_large: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM runs WHERE id = 'too-large'").fetch_one(&mut conn).await.unwrap();
    assert_eq!(too_large, 0);
    // /metrics says the same, in the OpenMetrics format.
    let metrics = request(&admin, "GET", "/metrics", None, b"").await.unwrap().body;
    assert!(
        metrics.contains("switchyard_handler_live_version{tenant=\"shop\",handler=\"versioned\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("# TYPE switchyard_messages_dead_lettered counter\n"), "{metrics}");
    assert!(
        metrics.contains("switchyard_messages_dead_lettered_total{tenant=\"shop\",handler=\"versioned\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
    assert!(host.terminate().success(), "{}", host.log());
}
