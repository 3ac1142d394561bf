//! The conformance suite every broker source must pass, run against the
//! real broker on this machine with the real `switchyard` binary as a child
//! process.
//!
//! Each broker's test file implements [`Broker`] (how to publish to it, read
//! its dead letters and count what it still holds) and calls each check
//! here. Effects are counted in the host's SQLite database, read directly:
//! the `record` plugin inserts one row per delivery it handles.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sqlx::Row;

use super::host::HostProcess;
use super::{plugin, unique};

/// A dead-lettered message as the broker holds it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Its payload.
    pub payload: Vec<u8>,
    /// Its headers, including the host's reason headers.
    pub headers: Vec<(String, String)>,
}

impl DeadLetter {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// What the suite needs from a broker.
pub trait Broker {
    /// The body of `[sources.in]` for a source reading what [`Broker::publish`] sends.
    fn source(&self) -> String;
    /// The topic pattern of the route.
    fn topic(&self) -> String {
        "*".into()
    }
    /// Publish one message, durably.
    fn publish(&self, key: Option<&str>, payload: &[u8]) -> impl Future<Output = ()>;
    /// Every message in the source's dead-letter destination.
    fn dead_letters(&self) -> impl Future<Output = Vec<DeadLetter>>;
    /// Messages the broker still holds for the source, settled or not: 0 when
    /// everything was acked. `None` where the broker keeps nothing (core NATS).
    fn backlog(&self) -> impl Future<Output = Option<u64>>;
    /// Whether the broker counts deliveries itself, so the attempt survives a restart.
    fn counts_deliveries(&self) -> bool {
        true
    }
    /// Messages per instance on the route (`instances.reuse`); `None` runs
    /// the suite with a fresh instance per message.
    fn reuse(&self) -> Option<u32> {
        None
    }
}

/// A broker under the suite with bounded instance reuse on its route:
/// settlement, retries, order, crashes and restarts must be the same.
pub struct Reusing<B>(pub B);

impl<B: Broker> Broker for Reusing<B> {
    fn source(&self) -> String {
        self.0.source()
    }
    fn topic(&self) -> String {
        self.0.topic()
    }
    fn publish(&self, key: Option<&str>, payload: &[u8]) -> impl Future<Output = ()> {
        self.0.publish(key, payload)
    }
    fn dead_letters(&self) -> impl Future<Output = Vec<DeadLetter>> {
        self.0.dead_letters()
    }
    fn backlog(&self) -> impl Future<Output = Option<u64>> {
        self.0.backlog()
    }
    fn counts_deliveries(&self) -> bool {
        self.0.counts_deliveries()
    }
    fn reuse(&self) -> Option<u32> {
        Some(16)
    }
}

/// A route and handler for a host config.
pub struct Setup<'a> {
    pub plugin: &'a str,
    pub concurrency: usize,
    pub max_attempts: u32,
    pub retry_base_ms: u64,
    /// `instances.reuse` on the route, if any.
    pub reuse: Option<u32>,
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Self { plugin: "record", concurrency: 8, max_attempts: 5, retry_base_ms: 50, reuse: None }
    }
}

/// Write a host config for `broker`'s source into `dir`, with its reuse setting.
fn broker_config<B: Broker>(dir: &Path, broker: &B, setup: Setup) {
    write_config(dir, &broker.source(), &broker.topic(), &Setup { reuse: broker.reuse(), ..setup });
}

/// Write a host config for `source` into `dir`.
pub fn write_config(dir: &Path, source: &str, topic: &str, setup: &Setup) {
    std::fs::create_dir_all(dir).unwrap();
    let config = format!(
        r#"
data_dir = "."

[sources.in]
{source}

[backends.db]
type = "sqlite"
init = ["CREATE TABLE IF NOT EXISTS deliveries (msg_id TEXT, topic TEXT, msg_key TEXT, seq INTEGER, attempt INTEGER, started_ms INTEGER, ended_ms INTEGER)"]

[tenants.t.grants]
db_tables = ["deliveries"]
cache_prefixes = ["faults:"]

[tenants.t.handlers.h]
wasm = "{wasm}"

[[routes]]
source = "in"
topic = "{topic}"
tenant = "t"
handler = "h"
concurrency = {concurrency}
max_attempts = {max_attempts}
retry_base_ms = {retry_base_ms}
retry_max_ms = 10000
{instances}
"#,
        wasm = plugin(setup.plugin).display(),
        concurrency = setup.concurrency,
        max_attempts = setup.max_attempts,
        retry_base_ms = setup.retry_base_ms,
        instances = setup.reuse.map(|n| format!("instances = {{ reuse = {n} }}")).unwrap_or_default(),
    );
    std::fs::write(dir.join("switchyard.toml"), config).unwrap();
}

impl HostProcess {
    /// Every delivery the `record` handler recorded.
    pub async fn rows(&self) -> Vec<Row_> {
        rows(&self.dir.join("switchyard.db")).await
    }
}

/// One recorded delivery.
#[derive(Debug, Clone)]
pub struct Row_ {
    pub msg_id: String,
    pub key: Option<String>,
    pub seq: i64,
    pub attempt: i64,
    pub started_ms: i64,
    pub ended_ms: i64,
}

/// The rows of the database at `path`, in insertion order; none if it does not exist yet.
pub async fn rows(path: &Path) -> Vec<Row_> {
    if !path.exists() {
        return Vec::new();
    }
    let url = format!("sqlite:{}?mode=ro", path.display());
    let Ok(pool) = sqlx::SqlitePool::connect(&url).await else { return Vec::new() };
    let rows = sqlx::query("SELECT msg_id, msg_key, seq, attempt, started_ms, ended_ms FROM deliveries ORDER BY rowid")
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
    pool.close().await;
    rows.iter()
        .map(|r| Row_ {
            msg_id: r.get(0),
            key: r.get(1),
            seq: r.get(2),
            attempt: r.get(3),
            started_ms: r.get(4),
            ended_ms: r.get(5),
        })
        .collect()
}

/// Wait until `check` holds, polling; panic with `what` after `secs`.
pub async fn wait_for<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn distinct_seqs(rows: &[Row_]) -> BTreeSet<i64> {
    rows.iter().map(|r| r.seq).collect()
}

fn payload(seq: i64, extra: &str) -> Vec<u8> {
    format!(r#"{{"seq": {seq}{extra}}}"#).into_bytes()
}

/// Publish `n` ok messages numbered from `from`, with keys `k0..k{keys}`.
pub async fn publish_many<B: Broker>(broker: &B, from: i64, n: i64, keys: i64, extra: &str) {
    for seq in from..from + n {
        let key = format!("k{}", seq % keys.max(1));
        broker.publish(Some(&key), &payload(seq, extra)).await;
    }
}

/// Ack: every message is handled once, the host exits 0 on SIGTERM, and the
/// broker holds nothing afterwards.
pub async fn ack<B: Broker>(broker: &B, dir: &Path) {
    broker_config(dir, broker, Setup::default());
    let mut host = HostProcess::start(dir);
    host.wait_ready().await;
    publish_many(broker, 0, 20, 5, "").await;
    wait_for(60, "20 handled messages", || async { distinct_seqs(&host.rows().await).len() == 20 }).await;
    let status = host.terminate();
    assert!(status.success(), "exit {status:?}\n{}", host.log());
    let rows = host.rows().await;
    assert_eq!(rows.len(), 20, "each message handled exactly once: {rows:?}");
    assert!(rows.iter().all(|r| r.attempt == 1));
    if let Some(backlog) = broker.backlog().await {
        assert_eq!(backlog, 0, "everything handled must be acked on the broker");
    }
    assert!(broker.dead_letters().await.is_empty());
}

/// Retry with a delay: the second attempt starts no sooner than the delay
/// the handler asked for, and then the message is acked.
pub async fn retry_after_delay<B: Broker>(broker: &B, dir: &Path) {
    broker_config(dir, broker, Setup::default());
    let mut host = HostProcess::start(dir);
    host.wait_ready().await;
    broker.publish(None, &payload(1, r#", "mode": "retry", "succeed_on": 3, "delay_ms": 1200"#)).await;
    wait_for(60, "the third attempt", || async { host.rows().await.len() == 3 }).await;
    let status = host.terminate();
    assert!(status.success(), "exit {status:?}\n{}", host.log());
    let rows = host.rows().await;
    let attempts: Vec<i64> = rows.iter().map(|r| r.attempt).collect();
    assert_eq!(attempts, [1, 2, 3], "{rows:?}");
    for pair in rows.windows(2) {
        let gap = pair[1].started_ms - pair[0].ended_ms;
        assert!(gap >= 1200, "the retry came {gap} ms after the failure, sooner than the 1200 ms asked for");
    }
    assert!(rows.iter().all(|r| r.msg_id == rows[0].msg_id), "the id must be stable across redeliveries: {rows:?}");
    if let Some(backlog) = broker.backlog().await {
        assert_eq!(backlog, 0, "the retried message must finally be acked");
    }
    assert!(broker.dead_letters().await.is_empty());
}

/// Reject: the message goes to the dead-letter destination at once, with
/// the reason, tenant, handler and attempt headers.
pub async fn reject_goes_to_dead_letter<B: Broker>(broker: &B, dir: &Path) {
    broker_config(dir, broker, Setup { plugin: "faults", ..Setup::default() });
    let mut host = HostProcess::start(dir);
    host.wait_ready().await;
    broker.publish(Some("k"), br#"{"mode": "reject"}"#).await;
    wait_for(60, "a dead letter", || async { !broker.dead_letters().await.is_empty() }).await;
    // Anything more would have arrived by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dead = broker.dead_letters().await;
    let status = host.terminate();
    assert!(status.success(), "exit {status:?}\n{}", host.log());
    assert_eq!(dead.len(), 1, "{dead:?}");
    let d = &dead[0];
    assert_eq!(d.payload, br#"{"mode": "reject"}"#);
    assert_eq!(d.header("switchyard-dead-letter-reason"), Some("rejected: asked to reject"), "{d:?}");
    assert_eq!(d.header("switchyard-attempts"), Some("1"));
    assert_eq!(d.header("switchyard-tenant"), Some("t"));
    assert_eq!(d.header("switchyard-handler"), Some("h"));
    if let Some(backlog) = broker.backlog().await {
        assert_eq!(backlog, 0, "the dead-lettered message must leave the source");
    }
}

/// A trap is retried, and after `max_attempts` dead-lettered with the reason.
pub async fn trap_retried_then_dead_lettered<B: Broker>(broker: &B, dir: &Path) {
    let setup = Setup { plugin: "faults", max_attempts: 3, retry_base_ms: 100, ..Setup::default() };
    broker_config(dir, broker, setup);
    let mut host = HostProcess::start(dir);
    host.wait_ready().await;
    broker.publish(None, br#"{"mode": "trap"}"#).await;
    wait_for(60, "a dead letter", || async { !broker.dead_letters().await.is_empty() }).await;
    // Anything more would have arrived by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dead = broker.dead_letters().await;
    let status = host.terminate();
    assert!(status.success(), "exit {status:?}\n{}", host.log());
    assert_eq!(dead.len(), 1, "{dead:?}");
    let reason = dead[0].header("switchyard-dead-letter-reason").unwrap_or_default().to_string();
    assert!(reason.starts_with("gave up after 3 attempts"), "{reason}");
    assert!(reason.contains("trap") || reason.contains("panic") || reason.contains("unreachable"), "{reason}");
    assert_eq!(dead[0].header("switchyard-attempts"), Some("3"));
    let log = host.log();
    assert_eq!(log.matches("retrying").count(), 2, "two retries before the dead letter:\n{log}");
    if let Some(backlog) = broker.backlog().await {
        assert_eq!(backlog, 0);
    }
}

/// Per-key order: messages with one key are handled one at a time in the
/// order sent, while messages with different keys overlap.
pub async fn order_per_key<B: Broker>(broker: &B, dir: &Path) {
    broker_config(dir, broker, Setup::default());
    let mut host = HostProcess::start(dir);
    host.wait_ready().await;
    publish_many(broker, 0, 80, 4, r#", "busy_ms": 20"#).await;
    wait_for(90, "80 handled messages", || async { distinct_seqs(&host.rows().await).len() == 80 }).await;
    assert!(host.terminate().success());
    let rows = host.rows().await;
    let mut by_key: BTreeMap<String, Vec<&Row_>> = BTreeMap::new();
    for r in &rows {
        by_key.entry(r.key.clone().unwrap_or_default()).or_default().push(r);
    }
    assert_eq!(by_key.len(), 4);
    for (key, list) in &by_key {
        let seqs: Vec<i64> = list.iter().map(|r| r.seq).collect();
        let mut sorted = seqs.clone();
        sorted.sort();
        assert_eq!(seqs, sorted, "key {key} out of order");
        for pair in list.windows(2) {
            assert!(pair[1].started_ms >= pair[0].ended_ms, "two messages of key {key} ran at once: {pair:?}");
        }
    }
    let overlapping = rows
        .iter()
        .any(|a| rows.iter().any(|b| a.key != b.key && a.started_ms < b.ended_ms && b.started_ms < a.ended_ms));
    assert!(overlapping, "different keys never ran in parallel");
}

/// SIGKILL mid-stream, then a restart: every message's effect is there, and
/// only messages in flight at the kill ran twice.
pub async fn sigkill_and_restart<B: Broker>(broker: &B, dir: &Path, in_flight_bound: usize) {
    broker_config(dir, broker, Setup::default());
    publish_many(broker, 0, 300, 10, r#", "busy_ms": 5"#).await;
    let mut host = HostProcess::start(dir);
    wait_for(60, "some messages handled", || async { host.rows().await.len() >= 60 }).await;
    host.kill();
    let at_kill = host.rows().await.len();
    assert!(at_kill < 300, "the kill should come mid-stream");
    host.restart();
    wait_for(120, "all 300 messages handled after the restart", || async {
        distinct_seqs(&host.rows().await).len() == 300
    })
    .await;
    assert!(host.terminate().success());
    let rows = host.rows().await;
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for r in &rows {
        *counts.entry(r.seq).or_default() += 1;
    }
    let twice = counts.values().filter(|c| **c > 1).count();
    assert!(counts.values().all(|c| *c <= 2), "a message ran more than twice: {counts:?}");
    assert!(
        twice <= in_flight_bound,
        "{twice} messages ran twice; at most {in_flight_bound} could have been in flight"
    );
    if let Some(backlog) = broker.backlog().await {
        assert_eq!(backlog, 0);
    }
}

/// SIGTERM drains: the host finishes and settles what it has in flight and
/// exits 0; whatever it handled is acked, whatever it did not is still on
/// the broker, and a second host handles the rest with no duplicates.
pub async fn sigterm_drains<B: Broker>(broker: &B, dir: &Path) {
    let setup = Setup { concurrency: 4, ..Setup::default() };
    broker_config(dir, broker, setup);
    publish_many(broker, 0, 60, 60, r#", "busy_ms": 100"#).await;
    let mut host = HostProcess::start(dir);
    wait_for(60, "some messages handled", || async { host.rows().await.len() >= 6 }).await;
    let status = host.terminate();
    assert!(status.success(), "exit {status:?}\n{}", host.log());
    let handled = distinct_seqs(&host.rows().await).len();
    assert!(handled < 60, "SIGTERM came too late to test draining");
    if let Some(backlog) = broker.backlog().await {
        assert_eq!(backlog as usize, 60 - handled, "handled messages must be acked, the rest left on the broker");
    }
    host.restart();
    wait_for(90, "the rest handled", || async { distinct_seqs(&host.rows().await).len() == 60 }).await;
    assert!(host.terminate().success());
    let rows = host.rows().await;
    assert_eq!(rows.len(), 60, "a drained message ran again: {} rows", rows.len());
}

/// Two hosts on the same source share the work through the broker: every
/// message is handled exactly once across them, and both handle some.
pub async fn scale_out<B: Broker>(broker: &B, dir: &Path) {
    let (a_dir, b_dir) = (dir.join("a"), dir.join("b"));
    broker_config(&a_dir, broker, Setup::default());
    broker_config(&b_dir, broker, Setup::default());
    let mut a = HostProcess::start(&a_dir);
    let mut b = HostProcess::start(&b_dir);
    // Both consuming before the work arrives.
    a.wait_ready().await;
    b.wait_ready().await;
    publish_many(broker, 0, 400, 40, r#", "busy_ms": 2"#).await;
    wait_for(90, "400 messages handled across both hosts", || async {
        distinct_seqs(&[a.rows().await, b.rows().await].concat()).len() == 400
    })
    .await;
    assert!(a.terminate().success());
    assert!(b.terminate().success());
    let (ra, rb) = (a.rows().await, b.rows().await);
    assert!(!ra.is_empty() && !rb.is_empty(), "both hosts should share the work: {} and {}", ra.len(), rb.len());
    assert_eq!(ra.len() + rb.len(), 400, "each message exactly once across the hosts");
}

/// The broker restarts under load: the host reconnects by itself and every
/// message published is handled.
pub async fn broker_restart<B: Broker, R, Fut>(broker: &B, dir: &Path, rounds: i64, mut restart: R)
where
    R: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    const PER_ROUND: i64 = 40;
    broker_config(dir, broker, Setup::default());
    let mut host = HostProcess::start(dir);
    host.wait_ready().await;
    // Each restart comes while messages are being handled.
    for round in 0..rounds {
        publish_many(broker, round * PER_ROUND, PER_ROUND, 10, r#", "busy_ms": 2"#).await;
        let some = (round * PER_ROUND + PER_ROUND / 2) as usize;
        wait_for(120, &format!("messages handled before restart {}", round + 1), || async {
            distinct_seqs(&host.rows().await).len() >= some
        })
        .await;
        restart().await;
    }
    publish_many(broker, rounds * PER_ROUND, PER_ROUND, 10, r#", "busy_ms": 2"#).await;
    let all = ((rounds + 1) * PER_ROUND) as usize;
    wait_for(180, &format!("all {all} messages handled after {rounds} broker restarts"), || async {
        distinct_seqs(&host.rows().await).len() == all
    })
    .await;
    assert!(host.running(), "the host must survive the broker restarts:\n{}", host.log());
    assert!(host.terminate().success(), "the host did not exit cleanly after the restarts:\n{}", host.log());
}

/// A broker that is down at start: the host says so, naming the broker and
/// the address, keeps retrying, and shuts down cleanly.
pub async fn down_at_start(source: &str, dir: &Path, address: &str, broker_word: &str) {
    write_config(dir, source, "*", &Setup::default());
    let mut host = HostProcess::start(dir);
    let mut log = String::new();
    wait_for(30, "repeated connection errors in the log", || {
        log = host.log();
        let n = log.lines().filter(|l| l.contains(address) && l.contains(broker_word) && l.contains("ERROR")).count();
        async move { n >= 3 }
    })
    .await;
    assert!(host.running(), "a broker that is down must not stop the host:\n{log}");
    let status = host.terminate();
    assert!(status.success(), "exit {status:?}\n{log}");
}

/// A fresh directory under the system temp dir, kept on failure for a look.
pub fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("switchyard-{}", unique(name)));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
