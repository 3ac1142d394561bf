//! What the test files share: paths to the built plugins, unique names, the
//! `switchyard run` launcher, hosts built in-process, and the conformance
//! suites every backend and every broker source runs.
#![allow(dead_code)]

pub mod backends;
pub mod brokers;
pub mod es_server;
pub mod host;
pub mod http_server;
pub mod redis_server;
pub mod saga;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use switchyard::Config;
use switchyard::capabilities::context::Backends;
use switchyard::dispatch::stats::Snapshot;
use switchyard::runtime::Runtime;
use switchyard::wiring::{self, Host};
use tokio_util::sync::CancellationToken;

/// A built example plugin, `plugins/dist/<name>.wasm`.
pub fn plugin(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist").join(format!("{name}.wasm"));
    assert!(path.exists(), "{} is missing: run `make plugins` first", path.display());
    path
}

/// Write `lines` to `<dir>/in.jsonl` and `template` (with `WASM` replaced by
/// the plugin's path) to `<dir>/switchyard.toml`, and load that config.
pub fn config_with_file(dir: &Path, template: &str, plugin_name: &str, lines: &[&str]) -> Config {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(dir.join("in.jsonl"), text).unwrap();
    let config = format!("data_dir = \".\"\n{}", template.replace("WASM", &plugin(plugin_name).display().to_string()));
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, config).unwrap();
    Config::load(&path).unwrap()
}

/// Build a host whose backends the test can inspect.
pub async fn build_host(config: &Config) -> (Host, Arc<Backends>) {
    let runtime = Arc::new(Runtime::new(wiring::runtime_options(config)).unwrap());
    let registry = wiring::load_handlers(config, &runtime).unwrap();
    let backends = Arc::new(wiring::open_backends(config).await.unwrap());
    let host = Host::assemble(config, registry, backends.clone()).await.unwrap();
    (host, backends)
}

/// Run a host until its sources end and everything is settled.
pub async fn run_host(config: &Config) -> (Snapshot, Arc<Backends>) {
    let (host, backends) = build_host(config).await;
    let stats = tokio::time::timeout(std::time::Duration::from_secs(60), host.run(CancellationToken::new()))
        .await
        .expect("the host should finish its file within a minute");
    (stats, backends)
}

/// A host running in the background.
pub struct Running {
    /// Its live counters.
    pub stats: Arc<switchyard::dispatch::stats::Stats>,
    /// Its backends.
    pub backends: Arc<Backends>,
    /// Its plugin registry.
    pub registry: Arc<switchyard::runtime::registry::Registry>,
    /// Cancel to stop it.
    pub shutdown: CancellationToken,
    /// Its run, ending with the final counters.
    pub task: tokio::task::JoinHandle<Snapshot>,
}

/// Start a host in the background; cancel `shutdown` to stop it.
pub async fn started_host(config: &Config) -> Running {
    let (host, backends) = build_host(config).await;
    let stats = host.stats();
    let registry = host.registry();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(host.run(shutdown.clone()));
    Running { stats, backends, registry, shutdown, task }
}

/// The JSON lines of a dead-letter file.
pub fn read_dead_letters(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The value of a header in a message line.
pub fn header(line: &serde_json::Value, name: &str) -> Option<String> {
    line["headers"].as_array()?.iter().find(|h| h[0] == name).and_then(|h| h[1].as_str().map(str::to_string))
}

/// A name no other test run uses: `<base>_<pid>_<nanos>`, usable as a
/// table, queue, subject, topic or stream name.
pub fn unique(base: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{base}_{}_{}", std::process::id(), nanos % 1_000_000_000_000)
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Wait until a host in this process has handled `n` messages, at most `secs` seconds.
pub async fn wait_handled(stats: &switchyard::dispatch::stats::Stats, n: u64, secs: u64) {
    let handled = || async { stats.handled.load(std::sync::atomic::Ordering::Relaxed) >= n };
    brokers::wait_for(secs, &format!("{n} messages handled"), handled).await;
}

/// Wait until something listens on `port`.
pub async fn wait_for_port(port: u16) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("nothing listens on port {port}");
}

/// POST `body` to `url` over plain HTTP/1.1; returns the status and body.
pub async fn post(url: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (authority, path) = rest.split_at(rest.find('/').unwrap());
    let mut stream = tokio::net::TcpStream::connect(authority).await.unwrap();
    let mut request =
        format!("POST {path} HTTP/1.1\r\nhost: {authority}\r\ncontent-length: {}\r\nconnection: close\r\n", body.len());
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response).to_string();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}
