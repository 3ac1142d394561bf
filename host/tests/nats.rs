//! The conformance suite on NATS: JetStream and core subjects (the server on
//! 127.0.0.1:4222, or `NATS_URL`), plus request and reply. The broker
//! restart and down-at-start tests run their own `nats-server` on a free
//! port, so the shared server is never taken away.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assumption in a test is a failed test

mod support;

use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use support::brokers::{self as conformance, Broker, DeadLetter, test_dir};
use support::host::HostProcess;
use support::unique;

fn url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn headers_of(map: Option<&async_nats::HeaderMap>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(map) = map {
        for (k, vs) in map.iter() {
            for v in vs {
                out.push((k.to_string(), v.to_string()));
            }
        }
    }
    out
}

fn with_key(key: Option<&str>) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    if let Some(key) = key {
        headers.insert("switchyard-key", key);
    }
    headers
}

/// A JetStream stream of its own per test, read by the durable consumer `switchyard`.
struct JetStream {
    url: String,
    stream: String,
    js: jetstream::Context,
}

impl JetStream {
    async fn new(name: &str) -> Self {
        Self::at(&url(), name).await
    }

    async fn at(url: &str, name: &str) -> Self {
        let stream = unique(name).to_uppercase();
        let client = async_nats::ConnectOptions::new().max_reconnects(None).connect(url).await.unwrap();
        let js = jetstream::new(client);
        js.create_stream(jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![format!("{stream}.>")],
            ..Default::default()
        })
        .await
        .unwrap();
        Self { url: url.to_string(), stream, js }
    }
}

impl Broker for JetStream {
    fn source(&self) -> String {
        format!(
            "type = \"jetstream\"\nurl = \"{}\"\nstream = \"{}\"\nsubjects = [\"{}.>\"]\nack_wait_ms = 10000",
            self.url, self.stream, self.stream
        )
    }

    async fn publish(&self, key: Option<&str>, payload: &[u8]) {
        // Retried, since the broker may be restarting under the test.
        for _ in 0..100 {
            let sent = self
                .js
                .publish_with_headers(format!("{}.m", self.stream), with_key(key), payload.to_vec().into())
                .await;
            if let Ok(ack) = sent
                && ack.await.is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("cannot publish to {}", self.stream);
    }

    async fn dead_letters(&self) -> Vec<DeadLetter> {
        let Ok(mut stream) = self.js.get_stream(format!("{}-dead-letter", self.stream)).await else {
            return Vec::new();
        };
        let last = stream.info().await.unwrap().state.last_sequence;
        let mut out = Vec::new();
        for seq in 1..=last {
            if let Ok(m) = stream.get_raw_message(seq).await {
                out.push(DeadLetter { payload: m.payload.to_vec(), headers: headers_of(Some(&m.headers)) });
            }
        }
        out
    }

    async fn backlog(&self) -> Option<u64> {
        let mut stream = self.js.get_stream(&self.stream).await.unwrap();
        let mut consumer: jetstream::consumer::PullConsumer = stream.get_consumer("switchyard").await.unwrap();
        let info = consumer.info().await.unwrap();
        let _ = stream.info().await;
        Some(info.num_pending + info.num_ack_pending as u64)
    }
}

/// Core subjects of their own per test, in a queue group.
struct Core {
    subject: String,
    client: async_nats::Client,
    dead: tokio::sync::Mutex<async_nats::Subscriber>,
    seen: Mutex<Vec<DeadLetter>>,
}

impl Core {
    async fn new(name: &str) -> Self {
        let subject = unique(name);
        let client = async_nats::connect(url()).await.unwrap();
        let dead = client.subscribe(format!("dead.{subject}")).await.unwrap();
        client.flush().await.unwrap();
        Self { subject, client, dead: tokio::sync::Mutex::new(dead), seen: Mutex::new(Vec::new()) }
    }
}

impl Broker for Core {
    fn source(&self) -> String {
        format!(
            "type = \"nats\"\nurl = \"{}\"\nsubjects = [\"{s}.>\"]\nqueue_group = \"workers\"\ndead_letter_subject = \"dead.{s}\"",
            url(),
            s = self.subject
        )
    }

    async fn publish(&self, key: Option<&str>, payload: &[u8]) {
        self.client
            .publish_with_headers(format!("{}.m", self.subject), with_key(key), payload.to_vec().into())
            .await
            .unwrap();
        self.client.flush().await.unwrap();
    }

    async fn dead_letters(&self) -> Vec<DeadLetter> {
        let mut dead = self.dead.lock().await;
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(50), dead.next()).await {
            self.seen
                .lock()
                .unwrap()
                .push(DeadLetter { payload: m.payload.to_vec(), headers: headers_of(m.headers.as_ref()) });
        }
        self.seen.lock().unwrap().clone()
    }

    async fn backlog(&self) -> Option<u64> {
        None
    }

    fn counts_deliveries(&self) -> bool {
        false
    }
}

/// A `nats-server` of the test's own, on a free port with its own store.
struct OwnServer {
    port: u16,
    store: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl OwnServer {
    fn new(dir: &std::path::Path) -> Self {
        Self { port: support::free_port(), store: dir.join("nats-store"), child: None }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn start(&mut self) {
        let child = std::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(&self.store)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server must be installed");
        self.child = Some(child);
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("nats-server did not start on {}", self.port);
    }

    /// End the server with `signal`: on `TERM` it tells its clients it is
    /// going; on `KILL` it tells them nothing.
    fn stop(&mut self, signal: &str) {
        if let Some(mut child) = self.child.take() {
            let _ = std::process::Command::new("kill").args(["-s", signal, &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.stop("TERM");
    }
}

#[tokio::test]
async fn jetstream_ack() {
    conformance::ack(&JetStream::new("ack").await, &test_dir("js-ack")).await;
}

#[tokio::test]
async fn jetstream_retry_after_delay() {
    conformance::retry_after_delay(&JetStream::new("retry").await, &test_dir("js-retry")).await;
}

#[tokio::test]
async fn jetstream_reject_goes_to_dead_letter() {
    conformance::reject_goes_to_dead_letter(&JetStream::new("reject").await, &test_dir("js-reject")).await;
}

#[tokio::test]
async fn jetstream_trap_retried_then_dead_lettered() {
    conformance::trap_retried_then_dead_lettered(&JetStream::new("trap").await, &test_dir("js-trap")).await;
}

#[tokio::test]
async fn jetstream_order_per_key() {
    conformance::order_per_key(&JetStream::new("order").await, &test_dir("js-order")).await;
}

#[tokio::test]
async fn jetstream_sigkill_and_restart() {
    // At most max_ack_pending (twice the route's concurrency of 8) in flight.
    conformance::sigkill_and_restart(&JetStream::new("kill").await, &test_dir("js-kill"), 16).await;
}

/// The JetStream suite's settlement, failure, order and crash checks again,
/// with bounded instance reuse on the route.
#[tokio::test]
async fn jetstream_with_instance_reuse() {
    use conformance::Reusing;
    conformance::ack(&Reusing(JetStream::new("reuse-ack").await), &test_dir("js-reuse-ack")).await;
    conformance::retry_after_delay(&Reusing(JetStream::new("reuse-retry").await), &test_dir("js-reuse-retry")).await;
    let trap = Reusing(JetStream::new("reuse-trap").await);
    conformance::trap_retried_then_dead_lettered(&trap, &test_dir("js-reuse-trap")).await;
    conformance::order_per_key(&Reusing(JetStream::new("reuse-order").await), &test_dir("js-reuse-order")).await;
    let kill = Reusing(JetStream::new("reuse-kill").await);
    conformance::sigkill_and_restart(&kill, &test_dir("js-reuse-kill"), 16).await;
}

#[tokio::test]
async fn jetstream_sigterm_drains() {
    conformance::sigterm_drains(&JetStream::new("drain").await, &test_dir("js-drain")).await;
}

#[tokio::test]
async fn jetstream_scale_out() {
    conformance::scale_out(&JetStream::new("scale").await, &test_dir("js-scale")).await;
}

/// A test directory, a nats-server of the test's own, running, and a stream on it.
async fn own_jetstream(name: &str) -> (std::path::PathBuf, OwnServer, JetStream) {
    let dir = test_dir(&format!("js-{name}"));
    let mut server = OwnServer::new(&dir);
    server.start().await;
    let broker = JetStream::at(&server.url(), name).await;
    (dir, server, broker)
}

#[tokio::test]
async fn jetstream_broker_restart() {
    let (dir, server, broker) = own_jetstream("restart").await;
    let server = tokio::sync::Mutex::new(server);
    conformance::broker_restart(&broker, &dir, 2, || async {
        server.lock().await.stop("TERM");
        tokio::time::sleep(Duration::from_secs(1)).await;
        server.lock().await.start().await;
    })
    .await;
}

#[tokio::test]
async fn nats_down_at_start_then_up() {
    let dir = test_dir("nats-down");
    let mut server = OwnServer::new(&dir);
    let source =
        format!("type = \"jetstream\"\nurl = \"{}\"\nstream = \"LATE\"\nsubjects = [\"late.>\"]", server.url());
    conformance::down_at_start(&source, &dir.join("first"), &format!("127.0.0.1:{}", server.port), "NATS").await;
    // And once it is up, a host waiting for it gets going by itself.
    conformance::write_config(&dir.join("second"), &source, "*", &conformance::Setup::default());
    let mut host = HostProcess::start(&dir.join("second"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.start().await;
    host.wait_ready().await;
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    js.publish("late.m", br#"{"seq": 7}"#.to_vec().into()).await.unwrap().await.unwrap();
    conformance::wait_for(60, "the message handled", || async { host.rows().await.len() == 1 }).await;
    assert!(host.terminate().success());
}

#[tokio::test]
async fn core_ack() {
    conformance::ack(&Core::new("ack").await, &test_dir("core-ack")).await;
}

#[tokio::test]
async fn core_retry_after_delay() {
    conformance::retry_after_delay(&Core::new("retry").await, &test_dir("core-retry")).await;
}

#[tokio::test]
async fn core_reject_goes_to_dead_letter() {
    conformance::reject_goes_to_dead_letter(&Core::new("reject").await, &test_dir("core-reject")).await;
}

#[tokio::test]
async fn core_trap_retried_then_dead_lettered() {
    conformance::trap_retried_then_dead_lettered(&Core::new("trap").await, &test_dir("core-trap")).await;
}

#[tokio::test]
async fn core_order_per_key() {
    conformance::order_per_key(&Core::new("order").await, &test_dir("core-order")).await;
}

#[tokio::test]
async fn core_scale_out() {
    conformance::scale_out(&Core::new("scale").await, &test_dir("core-scale")).await;
}

/// Request and reply: the handler's publish to the message's `reply-to`
/// answers the request.
#[tokio::test]
async fn core_request_and_reply() {
    let core = Core::new("rpc").await;
    let dir = test_dir("core-rpc");
    conformance::write_config(&dir, &core.source(), "*", &conformance::Setup::default());
    let mut host = HostProcess::start(&dir);
    host.wait_ready().await;
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        core.client.request(format!("{}.rpc", core.subject), br#"{"seq": 42}"#.to_vec().into()),
    )
    .await
    .expect("a reply within 10 s")
    .unwrap();
    assert_eq!(reply.payload.as_ref(), br#"{"seq": 42, "attempt": 1}"#);
    assert!(host.terminate().success());
    let rows = host.rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].seq, 42);
}

/// The server is killed while the host is idle, waiting on a pull request,
/// and started again; it no longer knows the request and would send
/// nothing. The host pulls again as soon as its client has connected again,
/// and handles what is published afterwards. (Had it missed the reconnect,
/// ten seconds of silence would make it pull again, later.)
#[tokio::test]
async fn jetstream_pull_lost_with_a_server_restart_is_made_again() {
    let (dir, mut server, broker) = own_jetstream("lostpull").await;
    conformance::write_config(&dir, &broker.source(), &broker.topic(), &conformance::Setup::default());
    let mut host = HostProcess::start(&dir);
    host.wait_ready().await;
    conformance::publish_many(&broker, 0, 20, 4, "").await;
    conformance::wait_for(60, "the first 20 messages handled", || async {
        conformance::distinct_seqs(&host.rows().await).len() == 20
    })
    .await;
    // Idle now, with a pull request open on the server.
    server.stop("KILL");
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.start().await;
    conformance::publish_many(&broker, 20, 20, 4, "").await;
    conformance::wait_for(60, "the 20 messages published after the restart handled", || async {
        conformance::distinct_seqs(&host.rows().await).len() == 40
    })
    .await;
    assert!(host.running(), "the host must survive the restart:\n{}", host.log());
    assert!(
        host.log().contains("connected again; pulling again"),
        "the reconnect must renew the pull:\n{}",
        host.log()
    );
    assert!(host.terminate().success());
}

/// Core NATS under overload: its client drops what it cannot buffer, and
/// the host counts every message dropped, so what was handled and what was
/// lost add up to what was published: nothing vanishes without a trace.
#[tokio::test]
async fn core_nats_counts_every_message_it_drops() {
    let subject = unique("loss");
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
data_dir = "."

[sources.core]
type = "nats"
url = "nats://127.0.0.1:4222"
subjects = ["{subject}"]
pending_messages = 8

[tenants.t.grants]
cache_prefixes = ["faults:"]
db_tables = ["faults"]

[tenants.t.handlers.faults]
wasm = "{wasm}"

[[routes]]
source = "core"
topic = "*"
tenant = "t"
handler = "faults"
concurrency = 1
"#,
        wasm = support::plugin("faults").display()
    );
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, text).unwrap();
    let config = switchyard::Config::load(&path).unwrap();
    let running = support::started_host(&config).await;
    let client = async_nats::connect("nats://127.0.0.1:4222").await.unwrap();
    // Subscribed once a probe is handled; then every probe sent has arrived.
    while running.stats.snapshot().handled == 0 {
        client.publish(subject.clone(), br#"{"mode": "ok"}"#.to_vec().into()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = running.stats.snapshot();
    const SENT: u64 = 3000;
    for _ in 0..SENT {
        client.publish(subject.clone(), br#"{"mode": "busy", "delay_ms": 5}"#.to_vec().into()).await.unwrap();
    }
    client.flush().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let counted = |s: switchyard::dispatch::stats::Snapshot| s.handled + s.lost - before.handled - before.lost;
    while counted(running.stats.snapshot()) < SENT {
        assert!(std::time::Instant::now() < deadline, "{:?} of {SENT} accounted for", running.stats.snapshot());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = running.stats.snapshot();
    assert!(after.lost > 0, "a buffer of 8 under 3000 messages should drop some: {after:?}");
    assert_eq!(counted(after), SENT, "handled and lost add up to what was sent: {after:?}");
    running.shutdown.cancel();
    running.task.await.unwrap();
}
