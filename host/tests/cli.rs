//! The `switchyard` command as a user runs it: `check`, `invoke`, and `run`
//! with a graceful stop on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assumption in a test is a failed test

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::plugin;

fn switchyard() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.env("RUST_LOG", "warn");
    cmd
}

fn quickstart() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart/switchyard.toml")
}

#[test]
fn check_accepts_the_quickstart() {
    let out = switchyard().arg("check").arg(quickstart()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("ok: 1 sources, 3 handlers loaded, 3 routes"), "{stdout}");
}

#[test]
fn check_names_the_file_and_the_unknown_field() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(quickstart()).unwrap().replace("max_attempts = 3", "max_atempts = 3");
    let path = dir.path().join("typo.toml");
    std::fs::write(&path, text).unwrap();
    let out = switchyard().arg("check").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("typo.toml"), "{stderr}");
    assert!(stderr.contains("unknown field `max_atempts`"), "{stderr}");
}

#[test]
fn check_refuses_malformed_grants_naming_the_field() {
    let cases = [
        (
            "db_tables = [\"orders; DROP TABLE orders\"]",
            "tenants.acme.grants.db_tables",
            "is not a table or schema name",
        ),
        ("db_tables = [\"a.b.c.d\"]", "tenants.acme.grants.db_tables", "has 4 parts"),
        ("publish = [\"order.*.created\"]", "tenants.acme.grants.publish", "has a `*` before its end"),
        ("search_prefixes = [\"Orders/\"]", "tenants.acme.grants.search_prefixes", "which no index name can"),
        ("search_prefixes = [\"_internal\"]", "tenants.acme.grants.search_prefixes", "no index name can start with"),
    ];
    for (grant, field, reason) in cases {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[sources.s]\ntype = \"file\"\npath = \"m.jsonl\"\n[tenants.acme.grants]\n{grant}\n\
             [tenants.acme.handlers.h]\nwasm = \"{}\"\n",
            plugin_path("noop")
        );
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let out = switchyard().arg("check").arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{grant} was accepted");
        assert!(stderr.contains(field) && stderr.contains(reason), "{grant}: {stderr}");
    }
}

fn plugin_path(name: &str) -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../plugins/dist/{name}.wasm")).display().to_string()
}

#[test]
fn check_names_the_handler_whose_wasm_is_broken() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("broken.wasm"), b"\0asm\x0d\0\x01\0garbage").unwrap();
    let text = "[sources.s]\ntype = \"file\"\npath = \"m.jsonl\"\n[tenants.acme.handlers.resize]\nwasm = \"broken.wasm\"\n\
         [[routes]]\nsource = \"s\"\ntopic = \"*\"\ntenant = \"acme\"\nhandler = \"resize\"\n";
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let out = switchyard().arg("check").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("tenant \"acme\" handler \"resize\""), "{stderr}");
    assert!(stderr.contains("broken.wasm is not a valid component"), "{stderr}");
}

#[test]
fn invoke_prints_the_outcome_and_every_effect() {
    let out = switchyard()
        .args(["invoke", "--topic", "product.changed", "--payload", r#"{"id": "p9", "name": "lamp"}"#])
        .arg(plugin("cache_update"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["result"]["outcome"], "ok");
    let effects = report["effects"].as_array().unwrap();
    assert_eq!(effects.len(), 1);
    assert_eq!(effects[0]["effect"], "cache-set");
    assert_eq!(effects[0]["key"], "product:p9");
    let value: serde_json::Value = serde_json::from_str(effects[0]["value"].as_str().unwrap()).unwrap();
    assert_eq!(value["name"], "lamp");
}

#[test]
fn invoke_shows_a_reject_and_exits_non_zero() {
    let out = switchyard().args(["invoke", "--payload", "not json"]).arg(plugin("cache_update")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["result"]["outcome"], "reject");
    assert!(report["result"]["reason"].as_str().unwrap().starts_with("malformed product change"));
    assert_eq!(report["effects"].as_array().unwrap().len(), 0);
}

#[test]
fn invoke_reports_db_and_publish_effects() {
    let out = switchyard()
        .args(["invoke", "--topic", "order.placed", "--payload", r#"{"id": "o1", "customer": "c1", "total": 9.5}"#])
        .args(["--init-sql", "CREATE TABLE orders (id TEXT PRIMARY KEY, customer TEXT, total REAL)"])
        .arg(plugin("order_insert"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let effects = report["effects"].as_array().unwrap();
    assert_eq!(effects[0]["effect"], "db-execute");
    assert_eq!(effects[0]["params"], serde_json::json!(["o1", "c1", 9.5]));
    assert_eq!(effects[1]["effect"], "publish");
    assert_eq!(effects[1]["destination"], "order.recorded");
}

/// The Python handler is the slowest to compile (seconds): the first invoke
/// compiles it into the per-user cache under `$XDG_CACHE_HOME`, and the
/// second loads it from there.
#[test]
fn a_second_invoke_of_the_python_handler_loads_its_compiled_code_from_the_cache() {
    let home = tempfile::tempdir().unwrap();
    let cache = home.path().join("switchyard/compiled");
    let invoke = || {
        let out = switchyard()
            .args(["invoke", "--topic", "product.changed", "--payload", r#"{"id": "p1", "name": "lamp"}"#])
            .env("XDG_CACHE_HOME", home.path())
            .arg(plugin("cache_update_py"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let first = invoke();
    assert_eq!(first["compiled_from_cache"], false);
    let entries: Vec<_> = std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(entries[0].to_string_lossy().starts_with(first["digest"].as_str().unwrap()), "{entries:?}");
    let second = invoke();
    assert_eq!(second["compiled_from_cache"], true);
    assert_eq!(second["result"], first["result"]);
    assert_eq!(second["effects"], first["effects"]);
}

#[test]
fn a_corrupt_cache_entry_is_compiled_again_and_replaced() {
    let cache = tempfile::tempdir().unwrap();
    let invoke = || {
        let out = switchyard()
            .args(["invoke", "--topic", "product.changed", "--payload", r#"{"id": "p1", "name": "lamp"}"#])
            .arg("--cache-dir")
            .arg(cache.path())
            .arg(plugin("cache_update"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    invoke();
    let entry = std::fs::read_dir(cache.path()).unwrap().next().unwrap().unwrap().path();
    std::fs::write(&entry, b"not compiled code").unwrap();
    let (report, stderr) = invoke();
    assert_eq!(report["compiled_from_cache"], false);
    assert_eq!(report["result"]["outcome"], "ok");
    assert!(stderr.contains("compiled-code cache entry unusable"), "{stderr}");
    assert_eq!(invoke().0["compiled_from_cache"], true);
}

/// Three product changes, one of them malformed, and a delete.
const REPLAY: &str = r#"{"topic": "product.changed", "id": "m1", "payload": {"id": "p1", "name": "lamp"}}
{"topic": "product.changed", "id": "m2", "payload": "not json"}

{"topic": "product.changed", "id": "m3", "payload": {"id": "p1", "deleted": true}}
"#;

fn replay(dir: &Path, extra: &[&str]) -> std::process::Output {
    let messages = dir.join("messages.jsonl");
    std::fs::write(&messages, REPLAY).unwrap();
    switchyard()
        .arg("invoke")
        .arg(plugin("cache_update"))
        .arg("--replay")
        .arg(&messages)
        .args(extra)
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn replay_prints_one_outcome_line_a_message_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let out = replay(dir.path(), &[]);
    // A reject among the messages: not every message was ok.
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let ids: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["m1", "m2", "m3"]);
    assert_eq!(lines[0]["outcome"], "ok");
    assert_eq!(lines[0]["effects"][0]["key"], "product:p1");
    assert_eq!(lines[1]["outcome"], "reject");
    assert!(lines[1]["reason"].as_str().unwrap().starts_with("malformed product change"), "{}", lines[1]);
    assert_eq!(lines[2]["effects"][0]["effect"], "cache-delete");
}

#[test]
fn replay_against_a_golden_file_passes_as_blessed_and_fails_naming_each_difference() {
    let dir = tempfile::tempdir().unwrap();
    let blessed = replay(dir.path(), &["--expect", "golden.jsonl", "--bless"]);
    assert!(blessed.status.success(), "{}", String::from_utf8_lossy(&blessed.stderr));
    assert!(String::from_utf8_lossy(&blessed.stderr).contains("wrote the outcomes of 3 messages to golden.jsonl"));

    let passed = replay(dir.path(), &["--expect", "golden.jsonl"]);
    let stderr = String::from_utf8_lossy(&passed.stderr);
    assert!(passed.status.success(), "{stderr}");
    assert!(stderr.contains("3 messages, every outcome as golden.jsonl expects"), "{stderr}");

    // A hand-written golden file: only outcomes, m2 expected ok, m3 left
    // out, and a message that is not in the replay.
    std::fs::write(
        dir.path().join("golden.jsonl"),
        "{\"id\": \"m1\", \"outcome\": \"ok\"}\n{\"id\": \"m2\", \"outcome\": \"ok\"}\n{\"id\": \"m9\", \"outcome\": \"ok\"}\n",
    )
    .unwrap();
    let failed = replay(dir.path(), &["--expect", "golden.jsonl"]);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(r#"message "m2": outcome expected "ok", got "reject""#), "{stderr}");
    assert!(stderr.contains(r#"message "m3": golden.jsonl has no expectation for it"#), "{stderr}");
    assert!(stderr.contains(r#"message "m9": golden.jsonl expects it"#), "{stderr}");
    assert!(!stderr.contains(r#"message "m1""#), "{stderr}");
    assert!(stderr.contains("3 messages, 3 not as golden.jsonl expects"), "{stderr}");
}

#[test]
fn replay_names_the_line_of_a_file_that_is_not_messages() {
    let dir = tempfile::tempdir().unwrap();
    let messages = dir.path().join("broken.jsonl");
    std::fs::write(&messages, "{\"topic\": \"t\", \"payload\": \"x\"}\n{\"topic\": 7}\n").unwrap();
    let out = switchyard().arg("invoke").arg(plugin("cache_update")).arg("--replay").arg(&messages).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("broken.jsonl: line 2 is not a message"), "{stderr}");
    assert!(out.stdout.is_empty(), "no message ran: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn run_drains_and_exits_zero_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let text = format!(
        "data_dir = \".\"\n[sources.web]\ntype = \"http\"\nlisten = \"127.0.0.1:{port}\"\n\
         [tenants.t.grants]\ncache_prefixes = [\"faults:\"]\ndb_tables = [\"faults\"]\n\
         [tenants.t.handlers.faults]\nwasm = \"{}\"\n\
         [[routes]]\nsource = \"web\"\ntopic = \"*\"\ntenant = \"t\"\nhandler = \"faults\"\n",
        plugin("faults").display()
    );
    std::fs::write(dir.path().join("switchyard.toml"), text).unwrap();
    let mut host = support::host::HostProcess::start(dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        support::wait_for_port(port).await;
        // A message that takes a while: it must finish, not be cut off.
        let url = format!("http://127.0.0.1:{port}/topics/slow");
        let slow = tokio::spawn(async move { support::post(&url, &[], br#"{"mode": "busy", "delay_ms": 600}"#).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        host.signal("TERM");
        let (status, body) = slow.await.unwrap();
        assert_eq!(status, 200, "the message in flight finishes and is acked: {body}");
        // Intake has stopped.
        assert!(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err(), "still accepting after SIGTERM");
    });
    let status = rt.block_on(host.wait_exit(60));
    assert!(status.success(), "exit {status:?}: {}", host.log());
}

/// A GET over plain HTTP/1.1 with `headers` (lines of `name: value\r\n`);
/// the whole answer, headers and body.
async fn get(port: u16, path: &str, headers: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

/// Secrets planted through `${NAME}` and `file:` reach what they configure
/// (a handler reads the real value), and never what the binary prints: not
/// `check`'s output, not the log of a run at debug level, not an error that
/// quotes the value, not `/metrics`.
#[test]
fn secrets_from_the_environment_and_files_never_reach_the_output() {
    const ENV_SECRET: &str = "planted-env-secret-8731";
    const FILE_SECRET: &str = "planted-file-secret-5521";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), format!("{FILE_SECRET}\n")).unwrap();
    let (port, admin) = (support::free_port(), support::free_port());
    let text = format!(
        "data_dir = \".\"\n[sources.web]\ntype = \"http\"\nlisten = \"127.0.0.1:{port}\"\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = \"file:token\"\n\
         [backends.cache]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:6379/11\"\n\
         [tenants.t.grants]\ncache_prefixes = [\"http:\"]\nallowed_hosts = [\"http://127.0.0.1:1\"]\n\
         [tenants.t.handlers.reader]\nwasm = \"{}\"\nconfig = {{ api_key = \"key-${{SY_PLANTED_API_KEY}}\" }}\n\
         [[routes]]\nsource = \"web\"\ntopic = \"*\"\ntenant = \"t\"\nhandler = \"reader\"\n",
        plugin("http_call").display()
    );
    std::fs::write(dir.path().join("switchyard.toml"), &text).unwrap();
    let env = [("SY_PLANTED_API_KEY", ENV_SECRET), ("RUST_LOG", "debug")];

    let check = switchyard().envs(env).arg("check").arg(dir.path().join("switchyard.toml")).output().unwrap();
    let printed = format!("{}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
    assert!(check.status.success(), "{printed}");
    assert!(!printed.contains(ENV_SECRET) && !printed.contains(FILE_SECRET), "check printed a secret: {printed}");

    let mut host = support::host::HostProcess::start_with_env(dir.path(), &env);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        support::wait_for_port(port).await;
        let url = format!("http://127.0.0.1:{port}/topics/read");
        let (status, body) = support::post(&url, &[], br#"{"config": "api_key", "key": "http:secret"}"#).await;
        assert_eq!(status, 200, "{body}");
        let client = redis::Client::open("redis://127.0.0.1:6379/11").unwrap();
        let mut redis = client.get_multiplexed_async_connection().await.unwrap();
        let seen: String = redis::cmd("GETDEL").arg("http:secret").query_async(&mut redis).await.unwrap();
        assert_eq!(seen, format!("key-{ENV_SECRET}"), "the handler reads the real value");
        // The admin token came from the file: a call with it is let in.
        let versions = "/v1/handlers/t/reader/versions";
        assert!(get(admin, versions, "").await.starts_with("HTTP/1.1 401"));
        let bearer = format!("authorization: Bearer {FILE_SECRET}\r\n");
        let listed = get(admin, versions, &bearer).await;
        assert!(listed.starts_with("HTTP/1.1 200"), "{listed}");
        let metrics = get(admin, "/metrics", "").await;
        assert!(metrics.contains("switchyard_messages_handled_total"), "{metrics}");
        assert!(!metrics.contains(ENV_SECRET) && !metrics.contains(FILE_SECRET), "{metrics}");
    });
    host.signal("TERM");
    assert!(rt.block_on(host.wait_exit(60)).success(), "{}", host.log());
    let log = host.log();
    assert!(log.contains("DEBUG"), "the run logged at debug level: {log}");
    assert!(!log.contains(ENV_SECRET) && !log.contains(FILE_SECRET), "the log holds a secret: {log}");

    // An error that quotes the value: a Redis URL the client refuses.
    let broken = text.replace("redis://127.0.0.1:6379/11", "redis://:${SY_PLANTED_API_KEY}@127.0.0.1:6379/not-a-db");
    std::fs::write(dir.path().join("switchyard.toml"), broken).unwrap();
    let run = switchyard().envs(env).arg("run").arg(dir.path().join("switchyard.toml")).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(stderr.contains("redis url \"redis://:***@127.0.0.1:6379/not-a-db\""), "{stderr}");
    assert!(!stderr.contains(ENV_SECRET), "{stderr}");
}

/// `--log-format json`: every line on stderr is one JSON object, the
/// events' fields among its keys, and no progress line is mixed in.
#[test]
fn run_logs_one_json_object_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        r#"{"topic": "f", "id": "ok", "payload": {"mode": "ok"}}"#,
        r#"{"topic": "f", "id": "no", "payload": {"mode": "reject"}}"#,
    ];
    std::fs::write(dir.path().join("in.jsonl"), lines.join("\n") + "\n").unwrap();
    let text = format!(
        "data_dir = \".\"\n[sources.in]\ntype = \"file\"\npath = \"in.jsonl\"\n\
         [tenants.t.grants]\ncache_prefixes = [\"faults:\"]\ndb_tables = [\"faults\"]\n\
         [tenants.t.handlers.faults]\nwasm = \"{}\"\n\
         [[routes]]\nsource = \"in\"\ntopic = \"*\"\ntenant = \"t\"\nhandler = \"faults\"\n",
        plugin("faults").display()
    );
    std::fs::write(dir.path().join("switchyard.toml"), text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["--log-format", "json", "run"])
        .arg(dir.path().join("switchyard.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object: {l:?}: {e}")))
        .collect();
    let dead = events.iter().find(|e| e["fields"]["message"] == "dead-lettering").expect("the reject is logged");
    assert_eq!(dead["level"], "WARN");
    assert_eq!(dead["fields"]["reason"], "rejected: asked to reject");
    assert_eq!(dead["span"]["message_id"], "no", "{dead}");
    // The spans it is in, outermost first: the route names tenant and handler.
    assert_eq!(dead["spans"][0]["tenant"], "t", "{dead}");
    assert_eq!(dead["spans"][0]["handler"], "faults", "{dead}");
    let stopped = events.iter().find(|e| e["fields"]["message"] == "switchyard stopped").expect("the summary");
    assert_eq!(
        (stopped["fields"]["handled"].as_u64(), stopped["fields"]["dead_lettered"].as_u64()),
        (Some(1), Some(1))
    );
}

/// `docs/configuration.md` is what `switchyard config reference` makes from
/// the config structs, so the reference cannot drift from the code; and
/// `config schema` is a JSON Schema whose tables are those of the reference.
#[test]
fn the_configuration_reference_is_generated_from_the_config() {
    let out = switchyard().args(["config", "reference"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let generated = String::from_utf8(out.stdout).unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        generated == committed,
        "{} is out of date; write it again with `cargo run --release -- config reference > docs/configuration.md`",
        path.display()
    );

    let out = switchyard().args(["config", "schema"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let defs = schema["$defs"].as_object().unwrap();
    for name in defs.keys() {
        assert!(generated.contains(&format!("## {name}\n")), "{name} is in the schema but not the reference");
    }
    assert!(schema["properties"]["sources"].is_object() && defs.contains_key("RouteConfig"), "{schema}");
}
