//! `switchyard new` in each language: the project it creates builds with the
//! toolchains `plugins/languages.sh` installs, and passes `switchyard invoke`
//! as it comes, storing the event and rejecting a malformed one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assumption in a test is a failed test

use std::path::Path;
use std::process::Command;

fn switchyard() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.env("RUST_LOG", "warn");
    cmd
}

fn invoke(wasm: &Path, payload: &str) -> (Option<i32>, serde_json::Value) {
    let out = switchyard().arg("invoke").arg(wasm).args(["--topic", "events", "--payload", payload]).output().unwrap();
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("invoke printed no report ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), report)
}

/// Scaffold `name` in `language`, build it as its README line says, and
/// return the component.
fn scaffold_and_build(language: &str, name: &str, parent: &Path) -> std::path::PathBuf {
    let out = switchyard().args(["new", language, name, "--dir"]).arg(parent).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let build = stdout.lines().find_map(|l| l.strip_prefix("build:  ")).unwrap();
    let (cd, command) = build.split_once(" && ").unwrap();
    let dir = Path::new(cd.strip_prefix("cd ").unwrap());
    assert_eq!(dir, parent.join(name));

    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(command).current_dir(dir);
    // Its own target directory: the one running this test is locked by it.
    cmd.env("CARGO_TARGET_DIR", Path::new(env!("CARGO_TARGET_TMPDIR")).join("scaffold-target"));
    let built = cmd.output().unwrap();
    assert!(
        built.status.success(),
        "{language}: `{command}` failed:\n{}{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    let wasm = stdout.lines().find_map(|l| l.strip_prefix("try:    switchyard invoke ")).unwrap();
    let wasm = wasm.split(" --payload").next().unwrap();
    let wasm = if language == "rust" {
        // The build went to CARGO_TARGET_DIR rather than the project's target/.
        Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("scaffold-target/wasm32-wasip2/release")
            .join(format!("{}.wasm", name.replace('-', "_")))
    } else {
        Path::new(wasm).to_path_buf()
    };
    assert!(wasm.exists(), "{language}: the build made no {}", wasm.display());
    wasm
}

fn stores_and_rejects(language: &str, name: &str, key: &str) {
    let dir = tempfile::tempdir().unwrap();
    let wasm = scaffold_and_build(language, name, dir.path());

    let (code, report) = invoke(&wasm, r#"{"id": "1", "what": "hello"}"#);
    assert_eq!(code, Some(0), "{language}: {report}");
    assert_eq!(report["result"]["outcome"], "ok", "{language}: {report}");
    let effects = report["effects"].as_array().unwrap();
    assert_eq!(effects.len(), 1, "{language}: {report}");
    assert_eq!(effects[0]["effect"], "cache-set");
    assert_eq!(effects[0]["key"], key);
    assert_eq!(effects[0]["value"], r#"{"id": "1", "what": "hello"}"#);

    let bad = if language == "c" { "" } else { "not json" };
    let (code, report) = invoke(&wasm, bad);
    assert_eq!(code, Some(2), "{language}: {report}");
    assert_eq!(report["result"]["outcome"], "reject", "{language}: {report}");
    assert!(report["result"]["reason"].as_str().unwrap().starts_with("malformed event"), "{language}: {report}");
    assert_eq!(report["effects"].as_array().unwrap().len(), 0);
}

#[test]
fn new_rust_project_builds_and_invokes() {
    stores_and_rejects("rust", "audit-rs", "audit-rs:1");
}

#[test]
fn new_python_project_builds_and_invokes() {
    stores_and_rejects("python", "audit-py", "audit-py:1");
}

#[test]
fn new_js_project_builds_and_invokes() {
    stores_and_rejects("js", "audit-js", "audit-js:1");
}

#[test]
fn new_c_project_builds_and_invokes() {
    // The C template keys by message id; `invoke` names its message invoke-1.
    stores_and_rejects("c", "audit-c", "audit-c:invoke-1");
}
