//! `switchyard dev` end to end, as a handler author uses it: a project from
//! `switchyard new rust`, a host on a config with the Redis cache, and edits
//! to the handler's source while messages flow. Each edit is rebuilt and
//! deployed, and its effect read straight from Redis. A broken edit keeps
//! the last good version serving.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assumption in a test is a failed test

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::host::HostProcess;
use support::unique;

fn redis_url() -> String {
    std::env::var("SWITCHYARD_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn wait_for_key(conn: &mut redis::aio::MultiplexedConnection, key: &str, dev: &HostProcess) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let value: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(conn).await.unwrap();
        if let Some(value) = value {
            return value;
        }
        assert!(Instant::now() < deadline, "{key} was never written:\n{}", dev.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn append(path: &Path, line: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    writeln!(file, "{line}").unwrap();
}

/// Replace `from` by `to` in the project's handler source.
fn edit(project: &Path, from: &str, to: &str) {
    let path = project.join("src/lib.rs");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{from:?} is not in {}", path.display());
    std::fs::write(&path, text.replace(from, to)).unwrap();
}

#[tokio::test]
async fn dev_rebuilds_and_redeploys_each_edit_and_keeps_the_last_good_version_through_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["new", "rust", "dev-audit", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let project = dir.path().join("dev-audit");

    // The build goes to its own target directory: the one running this test
    // is locked by it. `scaffold.rs` shares it, so the SDK's dependencies
    // compile once.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("scaffold-target");
    let wasm = target.join("wasm32-wasip2/release/dev_audit.wasm");
    let _ = std::fs::remove_file(&wasm);
    let prefix = format!("{}:", unique("dev"));
    let messages = dir.path().join("messages.jsonl");
    std::fs::write(&messages, "").unwrap();
    let config = format!(
        "data_dir = \".\"\n\
         [sources.in]\ntype = \"file\"\npath = \"messages.jsonl\"\nfollow = true\n\
         [backends.cache]\ntype = \"redis\"\nurl = \"{}\"\nkey_prefix = \"{prefix}\"\n\
         [tenants.acme.grants]\ncache_prefixes = [\"dev-audit\"]\n\
         [tenants.acme.handlers.audit]\nwasm = \"{}\"\n\
         [[routes]]\nsource = \"in\"\ntopic = \"*\"\ntenant = \"acme\"\nhandler = \"audit\"\nmax_attempts = 1\n",
        redis_url(),
        wasm.display()
    );
    std::fs::write(dir.path().join("switchyard.toml"), config).unwrap();

    let target_env = target.display().to_string();
    let mut dev = HostProcess::start_command(
        dir.path(),
        &["dev".into(), project.clone().into(), "--config".into(), dir.path().join("switchyard.toml").into()],
        &[
            ("CARGO_TARGET_DIR", target_env.as_str()),
            ("RUST_LOG", "warn,switchyard=info,switchyard::dispatch::delivery=debug,handler=info"),
        ],
    );
    // The first build compiles the SDK's dependencies: minutes on a busy machine.
    dev.wait_for_log("dev: acme/audit is already running this build", 900).await;
    let mut redis = redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();

    append(&messages, r#"{"topic": "events", "id": "m1", "payload": {"id": "1"}}"#);
    let stored = wait_for_key(&mut redis, &format!("{prefix}dev-audit:1"), &dev).await;
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&stored).unwrap()["id"], "1");

    // An edit: a new key prefix, and a log line to see it by.
    edit(&project, "format!(\"dev-audit:{id}\")", "format!(\"dev-audit-v2:{id}\")");
    dev.wait_for_log("dev: deployed acme/audit version 2", 600).await;
    append(&messages, r#"{"topic": "events", "id": "m2", "payload": {"id": "2"}}"#);
    wait_for_key(&mut redis, &format!("{prefix}dev-audit-v2:2"), &dev).await;

    // A broken edit: the build fails, version 2 keeps serving.
    edit(&project, "Ok(())\n    }\n}", "Ok(()\n    }\n}");
    dev.wait_for_log("dev: version 2 keeps serving", 600).await;
    assert!(dev.log().contains("`cargo build --target wasm32-wasip2 --release` failed"), "{}", dev.log());
    append(&messages, r#"{"topic": "events", "id": "m3", "payload": {"id": "3"}}"#);
    wait_for_key(&mut redis, &format!("{prefix}dev-audit-v2:3"), &dev).await;

    // Each message's outcome was shown as it flowed.
    let log = dev.log();
    for id in ["m1", "m2", "m3"] {
        assert!(
            log.lines().any(|l| l.contains(&format!("message_id={id}")) && l.contains("handled")),
            "no outcome line for {id}:\n{log}"
        );
    }
    assert!(!log.contains("dev: deployed acme/audit version 3"), "{log}");
    assert!(dev.terminate().success(), "{}", dev.log());
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut redis).await.unwrap();
    let _: i64 = redis::cmd("DEL").arg(&keys).query_async(&mut redis).await.unwrap();
}
