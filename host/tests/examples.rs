//! The integration scenarios under `examples/`, each run as a user runs it:
//! the example's own config through a real `switchyard run`, against the
//! real services, fed by the scenario's producer on the broker's stock
//! client (pika for RabbitMQ), with the effects read straight from the
//! backends. Only what a test must own is changed in the config: a queue and
//! a Redis database of its own, and absolute paths.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assumption in a test is a failed test

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sqlx::mysql::MySqlPool;
use support::host::HostProcess;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A directory holding the PyPI package `requirement` (importable as
/// `module`), installed into `tools/<dir>` of the tool cache once.
fn python_tool(dir: &str, requirement: &str, module: &str) -> PathBuf {
    let cache = std::env::var("SWITCHYARD_CACHE").unwrap_or_else(|_| "/var/cache/switchyard".into());
    let dir = Path::new(&cache).join("tools").join(dir);
    if !dir.join(module).exists() {
        let ok = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--target"])
            .arg(&dir)
            .arg(requirement)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "pip install {requirement} into {} failed", dir.display());
    }
    dir
}

/// A directory holding pika, RabbitMQ's stock Python client.
fn pika() -> PathBuf {
    python_tool("py-pika", "pika==1.3.2", "pika")
}

/// Run the cache scenario's producer with `args`.
fn produce(queue: &str, args: &[&str]) {
    produce_with("cache", queue, args);
}

/// Run the pika producer of scenario `example` with `args`.
fn produce_with(example: &str, queue: &str, args: &[&str]) {
    producer(example, &pika(), &[&["--queue", queue], args].concat());
}

/// Run `examples/<example>/producer.py` with `args` and the client library
/// in `client`; its standard output.
fn producer(example: &str, client: &Path, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(repo().join(format!("examples/{example}/producer.py")))
        .args(args)
        .env("PYTHONPATH", client)
        .output()
        .unwrap();
    assert!(out.status.success(), "{example} producer {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The example's config, with the queue, the Redis database and the paths
/// of this test.
fn cache_config(dir: &Path, queue: &str, redis_db: u8) -> String {
    let text = std::fs::read_to_string(repo().join("examples/cache/switchyard.toml")).unwrap();
    let text = text
        .replace("\"cache_update\"", &format!("\"{queue}\""))
        .replace("redis://127.0.0.1:6379", &format!("redis://127.0.0.1:6379/{redis_db}"))
        .replace("../../plugins/dist/", &format!("{}/plugins/dist/", repo().display()))
        .replace("../../.switchyard/cache", &dir.join("data").display().to_string());
    assert!(text.contains(queue) && text.contains(&format!("6379/{redis_db}")), "the example's config changed shape");
    text
}

async fn get(redis: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<serde_json::Value> {
    let value: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(redis).await.unwrap();
    value.map(|v| serde_json::from_slice(&v).unwrap())
}

/// Run example `example`'s embedded config on its file `input` to the end,
/// in a directory of its own; the directory, the config and the log.
fn run_embedded(example: &str, input: &str) -> (tempfile::TempDir, PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo().join(format!("examples/{example}/switchyard.embedded.toml"))).unwrap();
    let text = text
        .replace("../../plugins/dist/", &format!("{}/plugins/dist/", repo().display()))
        .replace(&format!("../../.switchyard/{example}-embedded"), &dir.path().join("data").display().to_string());
    let config = dir.path().join("switchyard.toml");
    std::fs::write(&config, text).unwrap();
    std::fs::copy(repo().join(format!("examples/{example}/{input}")), dir.path().join(input)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard")).arg("run").arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    (dir, config, stderr)
}

/// Scenario 1, RabbitMQ to Redis: the guide's message as it sends it;
/// versioned changes shuffled and duplicated, which leave exactly the newest
/// version (and every deletion) in Redis; a stale change sent afterwards,
/// which changes nothing; and a warm-up that fills Redis with the hottest
/// products from MariaDB.
#[tokio::test]
async fn cache_scenario_rabbitmq_to_redis_with_versions_and_warm_up() {
    let dir = support::brokers::test_dir("example-cache");
    let queue = support::unique("cache_update");
    let redis_db = 13;
    std::fs::write(dir.join("switchyard.toml"), cache_config(&dir, &queue, redis_db)).unwrap();
    let client = redis::Client::open(format!("redis://127.0.0.1:6379/{redis_db}")).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("FLUSHDB").query_async(&mut redis).await.unwrap();
    // The hot products, in the example's own table.
    let mysql = MySqlPool::connect("mysql://root@127.0.0.1:3306/test").await.unwrap();
    sqlx::raw_sql("DROP TABLE IF EXISTS products").execute(&mysql).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE products (product_id BIGINT PRIMARY KEY, product_name VARCHAR(255) NOT NULL, \
         version BIGINT NOT NULL DEFAULT 1, hits BIGINT NOT NULL DEFAULT 0)",
    )
    .execute(&mysql)
    .await
    .unwrap();
    for id in 1001..=1030i64 {
        sqlx::query("INSERT INTO products VALUES (?, ?, 2, ?)")
            .bind(id)
            .bind(format!("stored {id}"))
            .bind((id * 37) % 101)
            .execute(&mysql)
            .await
            .unwrap();
    }

    let mut host = HostProcess::start(&dir);
    host.wait_ready().await;
    produce(&queue, &[]);
    produce(&queue, &["--changes", "40", "--versions", "5"]);
    produce(&queue, &["--warmup", "10"]);

    // The ten hottest products, by the hits the table was filled with.
    let mut by_hits: Vec<i64> = (1001..=1030).collect();
    by_hits.sort_by_key(|id| (std::cmp::Reverse((id * 37) % 101), *id));
    // The warm-up was sent last and the route runs one at a time; it writes
    // the ten one after another, so the test waits for all of them.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut warm = 0;
        for id in &by_hits[..10] {
            warm += usize::from(get(&mut redis, &format!("product:{id}")).await.is_some());
        }
        if warm == 10 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The guide's message, stored as the guide's consumer would want it.
    let guide = get(&mut redis, "product:1").await.expect("the guide's message reached Redis");
    assert_eq!(guide, serde_json::json!({"product_id": 1, "product_name": "New Product", "version": null}));
    // Every versioned product at its newest version, whatever the order.
    for p in 101..141 {
        let held = get(&mut redis, &format!("product:{p}")).await.unwrap_or_else(|| panic!("product:{p} missing"));
        let expected = if p % 5 == 0 {
            serde_json::json!({"product_id": p, "deleted": true, "version": 6})
        } else {
            serde_json::json!({"product_id": p, "product_name": format!("product {p} v5"), "version": 5})
        };
        assert_eq!(held, expected, "product:{p}");
    }
    // The ten hottest products from the table, and none other.
    for (rank, id) in by_hits.iter().enumerate() {
        let held = get(&mut redis, &format!("product:{id}")).await;
        if rank < 10 {
            assert_eq!(
                held,
                Some(serde_json::json!({"product_id": id, "product_name": format!("stored {id}"), "version": 2}))
            );
        } else {
            assert_eq!(held, None, "product {id} is not among the ten hottest");
        }
    }
    // A stale change, then a marker: the marker lands, the stale one does not.
    produce(&queue, &["--message", r#"{"product_id": 101, "product_name": "stale", "version": 2}"#]);
    produce(&queue, &["--message", r#"{"product_id": 2, "product_name": "marker"}"#]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&mut redis, "product:2").await.is_none() {
        assert!(Instant::now() < deadline, "the marker never arrived:\n{}", host.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held = get(&mut redis, "product:101").await.unwrap();
    assert_eq!(held["product_name"], "product 101 v5", "a stale change overwrote a newer one");
    assert!(host.terminate().success(), "{}", host.log());
    let _: () = redis::cmd("FLUSHDB").query_async(&mut redis).await.unwrap();
}

/// Scenario 1 with nothing installed: the embedded config runs its file of
/// changes to the end, every message handled.
#[test]
fn cache_scenario_runs_embedded() {
    let (_dir, _, stderr) = run_embedded("cache", "changes.jsonl");
    assert!(stderr.contains("handled 6 | retried 0 | dead-lettered 0"), "{stderr}");
}

/// A directory holding confluent-kafka, Kafka's stock Python client.
fn confluent_kafka() -> PathBuf {
    python_tool("py-kafka", "confluent-kafka==2.6.1", "confluent_kafka")
}

fn produce_kafka(topics: (&str, &str), args: &[&str]) {
    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let topics = ["--brokers", &brokers, "--insert-topic", topics.0, "--sync-topic", topics.1];
    producer("db", &confluent_kafka(), &[&topics[..], args].concat());
}

type UserRow = (i64, String, i64, String);

/// Scenario 2, Kafka to MariaDB: the guide's CSV record and a thousand more
/// reach `users`, once each; change events from a source table, replayed in
/// whole a second time, leave `users_replica` identical to the source table,
/// row by row, with a tombstone for every row deleted.
#[tokio::test]
async fn db_scenario_kafka_to_mariadb_with_replayed_change_events() {
    let dir = support::brokers::test_dir("example-db");
    let insert_topic = support::unique("db_insert");
    let sync_topic = support::unique("db_sync");
    let text = std::fs::read_to_string(repo().join("examples/db/switchyard.toml")).unwrap();
    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let text = text
        .replace("\"db_insert\"", &format!("\"{insert_topic}\""))
        .replace("\"db_sync\"", &format!("\"{sync_topic}\""))
        .replace("\"test-group\"", &format!("\"{}\"", support::unique("group")))
        .replace("127.0.0.1:9092", &brokers)
        .replace("../../plugins/dist/", &format!("{}/plugins/dist/", repo().display()))
        .replace("../../.switchyard/db", &dir.join("data").display().to_string());
    std::fs::write(dir.join("switchyard.toml"), text).unwrap();
    let mysql = MySqlPool::connect("mysql://root@127.0.0.1:3306/test").await.unwrap();
    for table in ["users", "users_replica", "users_source"] {
        sqlx::raw_sql(&format!("DROP TABLE IF EXISTS {table}")).execute(&mysql).await.unwrap();
    }
    sqlx::raw_sql(
        "CREATE TABLE users_source (id BIGINT PRIMARY KEY, name VARCHAR(255) NOT NULL, age INT NOT NULL, city VARCHAR(255) NOT NULL)",
    )
    .execute(&mysql)
    .await
    .unwrap();

    let mut host = HostProcess::start(&dir);
    host.wait_ready().await;
    let topics = (insert_topic.as_str(), sync_topic.as_str());
    produce_kafka(topics, &[]);
    produce_kafka(topics, &["--records", "1000"]);

    // Change events, applied to the source table as they are made.
    let mut events = Vec::new();
    let mut versions = std::collections::BTreeMap::new();
    let mut seed = 12345u64;
    for n in 0..400 {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let id = (seed >> 33) % 40 + 1;
        let version = versions.entry(id).and_modify(|v| *v += 1).or_insert(1i64);
        if (seed >> 20).is_multiple_of(5) {
            events.push(serde_json::json!({"op": "delete", "id": id, "version": version}));
            sqlx::query("DELETE FROM users_source WHERE id = ?").bind(id as i64).execute(&mysql).await.unwrap();
        } else {
            let (name, age, city) = (format!("name {id}.{n}"), 18 + (n % 60) as i64, format!("city {}", n % 7));
            events.push(serde_json::json!({"op": "upsert", "id": id, "version": version, "name": name, "age": age, "city": city}));
            sqlx::query("REPLACE INTO users_source (id, name, age, city) VALUES (?, ?, ?, ?)")
                .bind(id as i64)
                .bind(&name)
                .bind(age)
                .bind(&city)
                .execute(&mysql)
                .await
                .unwrap();
        }
    }
    let file = dir.join("changes.jsonl");
    let lines: Vec<String> = events.iter().map(|e| e.to_string()).collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let file = file.display().to_string();
    produce_kafka(topics, &["--events", &file]);

    let source: Vec<UserRow> =
        sqlx::query_as("SELECT id, name, age, city FROM users_source ORDER BY id").fetch_all(&mysql).await.unwrap();
    let replica = || async {
        sqlx::query_as::<_, UserRow>("SELECT id, name, age, city FROM users_replica WHERE deleted = 0 ORDER BY id")
            .fetch_all(&mysql)
            .await
            .unwrap()
    };
    let wait_identical = |what: &'static str| {
        let (source, replica) = (&source, &replica);
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                if replica().await == *source {
                    return;
                }
                assert!(Instant::now() < deadline, "{what}: the replica never matched the source");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    wait_identical("after the events").await;
    // The whole topic again: nothing changes.
    produce_kafka(topics, &["--events", &file]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_identical("after replaying every event").await;
    let tombstones: i64 =
        sqlx::query_scalar("SELECT count(*) FROM users_replica WHERE deleted = 1").fetch_one(&mysql).await.unwrap();
    assert_eq!(tombstones as usize, versions.len() - source.len(), "a tombstone for every row deleted at the source");

    // Every record once, the guide's among them.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&mysql).await.unwrap();
        if users >= 1001 || Instant::now() > deadline {
            assert_eq!(users, 1001, "every record once");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The thousand include a `user1` of their own, and records on different
    // partitions land in any order, so the guide's is looked up by value.
    let guide: i64 =
        sqlx::query_scalar("SELECT count(*) FROM users WHERE name = 'user1' AND age = 25 AND city = 'New York'")
            .fetch_one(&mysql)
            .await
            .unwrap();
    assert_eq!(guide, 1, "the guide's record, once");
    assert!(host.terminate().success(), "{}", host.log());
}

/// Scenario 2 with nothing installed: the embedded config's file, into SQLite.
#[test]
fn db_scenario_runs_embedded() {
    let (_dir, _, stderr) = run_embedded("db", "records.jsonl");
    assert!(stderr.contains("handled 8 | retried 0 | dead-lettered 0"), "{stderr}");
}

/// The last `handled N` of a host's progress lines.
fn handled(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| l.split("handled ").nth(1)?.split_whitespace().next()?.parse().ok())
        .next_back()
        .unwrap_or(0)
}

/// Scenario 3, RabbitMQ to Elasticsearch, with two hosts on the queue:
/// the guide's article is searchable once its message is acked, an update
/// replaces it and a delete removes it; then a reindex job of 3,000 articles
/// is shared by the two hosts and reaches the server in `_bulk` requests.
/// The server is an ELASTICSEARCH-API TEST SERVER (`support/es_server.rs`),
/// not Elasticsearch, which cannot be installed here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_scenario_rabbitmq_to_elasticsearch_with_two_hosts() {
    let (es_url, es) = support::es_server::start().await;
    let queue = support::unique("es_index_update");
    let base = support::brokers::test_dir("example-search");
    let text = std::fs::read_to_string(repo().join("examples/search/switchyard.toml")).unwrap();
    let mut hosts = Vec::new();
    for name in ["a", "b"] {
        let dir = base.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let text = text
            .replace("\"es_index_update\"", &format!("\"{queue}\""))
            .replace("http://127.0.0.1:9200", &es_url)
            .replace("../../plugins/dist/", &format!("{}/plugins/dist/", repo().display()))
            .replace("../../.switchyard/search", &dir.join("data").display().to_string());
        std::fs::write(dir.join("switchyard.toml"), text).unwrap();
        let host = HostProcess::start(&dir);
        host.wait_ready().await;
        hosts.push(host);
    }
    let article = |id: &str| es.indexes.lock().unwrap().get("articles").and_then(|docs| docs.get(id).cloned());
    async fn wait(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    produce_with("search", &queue, &[]);
    wait("the guide's article", || article("New Article").is_some()).await;
    assert_eq!(article("New Article").unwrap()["content"], "This is the content of the new article");
    produce_with("search", &queue, &["--message", r#"{"title": "New Article", "content": "revised"}"#]);
    wait("the update", || article("New Article").is_some_and(|a| a["content"] == "revised")).await;
    produce_with("search", &queue, &["--message", r#"{"title": "New Article", "deleted": true}"#]);
    wait("the delete", || article("New Article").is_none()).await;

    let bulk_before = es.bulk_requests.load(std::sync::atomic::Ordering::Relaxed);
    let items_before = es.bulk_items.load(std::sync::atomic::Ordering::Relaxed);
    produce_with("search", &queue, &["--reindex", "3000"]);
    let count = || es.indexes.lock().unwrap().get("articles").map_or(0, |docs| docs.len());
    wait("the reindex job", || count() == 3000).await;
    assert_eq!(article("a1234").unwrap()["title"], "Article 1234");
    let requests = es.bulk_requests.load(std::sync::atomic::Ordering::Relaxed) - bulk_before;
    let items = es.bulk_items.load(std::sync::atomic::Ordering::Relaxed) - items_before;
    // Batches grow while a request is in flight; this test server answers at
    // once, so they stay small here, but some carry several articles.
    eprintln!("the reindex job: {items} index actions in {requests} _bulk requests");
    assert!(items >= 3000 && requests < items, "3000 articles went out in {requests} _bulk requests, one each");
    // Both hosts took part, as their progress lines show.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for host in &mut hosts {
        let log = host.log();
        assert!(handled(&log) > 0, "a host handled nothing of the job:\n{log}");
        assert!(host.terminate().success(), "{}", host.log());
    }
}

/// Scenario 3 with nothing installed: the embedded config's file into a
/// Tantivy index, which then holds the revised article and not the deleted one.
#[test]
fn search_scenario_runs_embedded() {
    let (_dir, config, stderr) = run_embedded("search", "articles.jsonl");
    assert!(stderr.contains("handled 4 | retried 0 | dead-lettered 0"), "{stderr}");
    let search = |query: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["search"])
            .arg(&config)
            .args(["articles", query])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let revised = search("content:revised");
    assert!(revised.contains("New Article"), "{revised}");
    assert!(!search("content:another").contains("Second"), "the deleted article is still found");
}

/// A directory holding nats-py, NATS's stock Python client.
fn nats_py() -> PathBuf {
    python_tool("py-nats", "nats-py==2.16.0", "nats")
}

/// Run the events scenario's producer with `args`; its standard output.
fn produce_events(args: &[&str]) -> String {
    producer("events", &nats_py(), args)
}

/// The example's stand-in mail API, stopped when dropped.
struct MailApi(std::process::Child);

impl Drop for MailApi {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The requests the mail API logged, one JSON object each.
fn mail_requests(log: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Wait until the mail API has logged a request matching `done`.
async fn wait_for_mail(log: &Path, what: &str, done: impl Fn(&[serde_json::Value]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(&mail_requests(log)) {
        assert!(Instant::now() < deadline, "{what}: {:?}", mail_requests(log));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Scenario 5, NATS between services: the guide's message on
/// `serviceB.event`; registrations through JetStream that store profiles in
/// Redis and send welcome mails through the example's mail API over HTTP;
/// the profile service answering requests with them; and a crash after a
/// mail was sent and before its message was acked, after which the message
/// comes again with the same idempotency key and the mail API, which
/// deduplicates on it, sends nothing twice.
#[tokio::test]
async fn events_scenario_nats_with_a_mail_api_and_request_reply() {
    let dir = support::brokers::test_dir("example-events");
    let token = support::unique("svc");
    let (mail_port, redis_db) = (support::free_port(), 12);
    let text = std::fs::read_to_string(repo().join("examples/events/switchyard.toml")).unwrap();
    let text = text
        .replace("\"SERVICEB\"", &format!("\"{}\"", token.to_uppercase()))
        .replace("serviceB", &token)
        // Outside the stream's `<token>.>`, as `profile.get` is outside `serviceB.>`.
        .replace("profile.get", &format!("{token}_profile.get"))
        .replace("consumer = \"mailer\"", &format!("consumer = \"{token}\""))
        .replace("ack_wait_ms = 10000", "ack_wait_ms = 2000")
        .replace("127.0.0.1:8025", &format!("127.0.0.1:{mail_port}"))
        .replace("redis://127.0.0.1:6379", &format!("redis://127.0.0.1:6379/{redis_db}"))
        .replace("../../plugins/dist/", &format!("{}/plugins/dist/", repo().display()))
        .replace("../../.switchyard/events", &dir.join("data").display().to_string());
    assert!(!text.contains("serviceB") && text.contains("ack_wait_ms = 2000"), "the example's config changed shape");
    std::fs::write(dir.join("switchyard.toml"), text).unwrap();
    let client = redis::Client::open(format!("redis://127.0.0.1:6379/{redis_db}")).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("FLUSHDB").query_async(&mut redis).await.unwrap();

    let (log, hold) = (dir.join("requests.jsonl"), dir.join("hold"));
    let _mail = MailApi(
        Command::new("python3")
            .arg(repo().join("examples/events/mail_api.py"))
            .args(["--port", &mail_port.to_string()])
            .arg("--log")
            .arg(&log)
            .arg("--hold-while")
            .arg(&hold)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    support::wait_for_port(mail_port).await;
    let mut host = HostProcess::start(&dir);
    host.wait_for_log("pulling from JetStream", 60).await;
    host.wait_for_log("subscribed to NATS", 60).await;
    let subject = format!("{token}.event");
    let profile_subject = format!("{token}_profile.get");
    let events = |args: &[&str]| {
        let mut all = vec!["--subject", &subject, "--profile-subject", &profile_subject];
        all.extend_from_slice(args);
        produce_events(&all)
    };

    // The guide's producer's message, as it sends it: handled, and logged.
    assert_eq!(events(&[]).trim(), "Message sent to service B");
    host.wait_for_log("New event occurred", 60).await;

    // Twenty registrations: twenty mails, each once, keyed by message id.
    events(&["--register", "20"]);
    wait_for_mail(&log, "twenty mails", |r| r.len() >= 20).await;
    let requests = mail_requests(&log);
    let mut to: Vec<&str> = requests.iter().map(|r| r["mail"]["to"].as_str().unwrap()).collect();
    to.sort();
    let mut want: Vec<String> = (1..=20).map(|n| format!("user{n}@example.com")).collect();
    want.sort();
    assert_eq!(to, want);
    assert!(requests.iter().all(|r| r["duplicate"] == false && r["mail"]["template"] == "welcome"), "{requests:?}");
    let value: Option<Vec<u8>> = redis::cmd("GET").arg("profile:7").query_async(&mut redis).await.unwrap();
    let profile: serde_json::Value = serde_json::from_slice(&value.expect("profile:7 in Redis")).unwrap();
    assert_eq!(profile, serde_json::json!({"user_id": 7, "name": "user 7", "email": "user7@example.com"}));

    // Request and reply: the profile service answers from Redis.
    let reply: serde_json::Value = serde_json::from_str(&events(&["--profile", "7"])).unwrap();
    assert_eq!(reply, profile);
    let reply: serde_json::Value = serde_json::from_str(&events(&["--profile", "999"])).unwrap();
    assert_eq!(reply, serde_json::json!({"error": "not found", "user_id": 999}));

    // A crash after the mail went out, before the message was acked.
    std::fs::write(&hold, b"").unwrap();
    events(&["--register", "1", "--first", "100"]);
    let for_100 = |r: &[serde_json::Value]| -> Vec<serde_json::Value> {
        r.iter().filter(|r| r["mail"]["to"] == "user100@example.com").cloned().collect()
    };
    wait_for_mail(&log, "the mail to user 100", |r| !for_100(r).is_empty()).await;
    host.kill();
    std::fs::remove_file(&hold).unwrap();
    host.restart();
    wait_for_mail(&log, "the redelivered mail to user 100", |r| for_100(r).len() >= 2).await;
    let again = for_100(&mail_requests(&log));
    assert_eq!(again.len(), 2, "{again:?}");
    assert_eq!(again[0]["key"], again[1]["key"], "the redelivery sent the same idempotency key");
    assert_eq!((again[0]["duplicate"].clone(), again[1]["duplicate"].clone()), (false.into(), true.into()));
    // One mail per key, over the whole run.
    let requests = mail_requests(&log);
    let sent: std::collections::BTreeSet<&str> =
        requests.iter().filter(|r| r["duplicate"] == false).map(|r| r["key"].as_str().unwrap()).collect();
    assert_eq!(sent.len(), requests.iter().filter(|r| r["duplicate"] == false).count(), "a key sent twice");
    assert_eq!(sent.len(), 21);
    assert!(host.terminate().success(), "{}", host.log());

    let nats = async_nats::connect("nats://127.0.0.1:4222").await.unwrap();
    let _ = async_nats::jetstream::new(nats).delete_stream(token.to_uppercase()).await;
}

/// Scenario 5 with nothing installed: registrations from a file, profiles in
/// memory, the mails logged rather than sent.
#[test]
fn events_scenario_runs_embedded() {
    let (_dir, _, stderr) = run_embedded("events", "events.jsonl");
    assert!(stderr.contains("handled 4 | retried 0 | dead-lettered 1"), "{stderr}");
    assert!(stderr.contains("malformed registration: email must be an address"), "{stderr}");
    assert!(stderr.contains(r#"no mail_api configured: would send {"to": "ada@example.com""#), "{stderr}");
}

/// The saga scenario's own producer, on RocketMQ's client.
#[path = "../../examples/saga/producer.rs"]
#[allow(dead_code)]
mod saga_producer;

/// Send orders with the saga scenario's producer: `orders` generated ones
/// (or the three demo orders), each `twice` if asked, or the guide's text.
async fn produce_orders(topic: &str, orders: Option<usize>, twice: bool, text: Option<&str>) {
    let options = saga_producer::Options {
        name_server: std::env::var("ROCKETMQ_NAMESRV").unwrap_or_else(|_| "127.0.0.1:9876".into()),
        topic: topic.into(),
        orders,
        prefix: "order".into(),
        twice,
        text: text.map(str::to_string),
    };
    saga_producer::send(&options).await.unwrap();
}

/// Scenario 4, RocketMQ order sagas on MariaDB: the guide's plain-text
/// order, three demo orders and sixty generated ones, each of those sent
/// twice, with the host SIGKILLed mid-stream and started again. Every order
/// ends paid or cancelled; stock and balances move exactly once for each
/// paid order; an order out of stock is cancelled with nothing reserved,
/// and a declined one gets its stock back.
#[tokio::test]
async fn saga_scenario_rocketmq_orders_inventory_and_payment() {
    let dir = support::brokers::test_dir("example-saga");
    let database = support::unique("saga");
    let admin = MySqlPool::connect("mysql://root@127.0.0.1:3306/test").await.unwrap();
    sqlx::raw_sql(&format!("CREATE DATABASE {database}")).execute(&admin).await.unwrap();
    let topic = |name: &str| support::unique(name);
    let (orders_topic, inventory_topic, payment_topic) =
        (topic("order-topic"), topic("inventory-topic"), topic("payment-topic"));
    let name_server = std::env::var("ROCKETMQ_NAMESRV").unwrap_or_else(|_| "127.0.0.1:9876".into());
    let text = std::fs::read_to_string(repo().join("examples/saga/switchyard.toml")).unwrap();
    let text = text
        .replace("\"order-topic\"", &format!("\"{orders_topic}\""))
        .replace("\"inventory-topic\"", &format!("\"{inventory_topic}\""))
        .replace("\"payment-topic\"", &format!("\"{payment_topic}\""))
        .replace("orders:inventory-topic", &format!("orders:{inventory_topic}"))
        .replace("orders:payment-topic", &format!("orders:{payment_topic}"))
        .replace("orders:order-topic", &format!("orders:{orders_topic}"))
        .replace("-service\"", &format!("-{database}\""))
        .replace("\"my-consumer-group\"", &format!("\"orders-{database}\""))
        .replace("127.0.0.1:9876", &name_server)
        .replace("3306/test", &format!("3306/{database}"))
        .replace("../../plugins/dist/", &format!("{}/plugins/dist/", repo().display()))
        .replace("../../.switchyard/saga", &dir.join("data").display().to_string());
    assert!(
        text.matches(&orders_topic).count() == 6 && text.contains(&format!("3306/{database}")),
        "the example's config changed shape"
    );
    std::fs::write(dir.join("switchyard.toml"), text).unwrap();

    let mut host = HostProcess::start(&dir);
    host.wait_ready().await;
    produce_orders(&orders_topic, None, false, Some("widget")).await;
    produce_orders(&orders_topic, None, true, None).await;
    produce_orders(&orders_topic, Some(60), true, None).await;

    let db = MySqlPool::connect(&format!("mysql://root@127.0.0.1:3306/{database}")).await.unwrap();
    let count = |sql: &'static str| {
        let db = db.clone();
        async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(&db).await.unwrap() }
    };
    // Killed once some orders are under way, then started again.
    let deadline = Instant::now() + Duration::from_secs(120);
    while count("SELECT count(*) FROM orders").await < 20 {
        assert!(Instant::now() < deadline, "no orders were created:\n{}", host.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    host.kill();
    host.restart();

    // The generated orders: every 5th out of stock, every 7th declined,
    // the rest alice's widgets; the demo's 1001 goes through, 1002 is out
    // of stock, 1003 declined; the guide's is the guest's widget.
    let mut paid = vec![("order-1001".to_string(), 2i64)];
    let (mut out_of_stock, mut declined) = (vec!["order-1002".to_string()], vec!["order-1003".to_string()]);
    for i in 1..=60i64 {
        let id = format!("order-{i}");
        match () {
            _ if i % 5 == 0 => out_of_stock.push(id),
            _ if i % 7 == 0 => declined.push(id),
            _ => paid.push((id, i % 3 + 1)),
        }
    }
    let orders = 1 + paid.len() + out_of_stock.len() + declined.len();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let settled = count("SELECT count(*) FROM orders WHERE status IN ('paid', 'cancelled')").await;
        let pending_releases =
            count("SELECT count(*) FROM reservations r JOIN orders o ON o.id = r.order_id WHERE o.status = 'cancelled' AND r.released = 0").await;
        if settled == orders as i64 && pending_releases == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{settled} of {orders} orders settled, {pending_releases} releases pending:\n{}",
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A moment for anything sent twice to arrive and change nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let status = |id: String| {
        let db = db.clone();
        async move {
            sqlx::query_as::<_, (String, Option<String>)>("SELECT status, reason FROM orders WHERE id = ?")
                .bind(&id)
                .fetch_one(&db)
                .await
                .unwrap_or_else(|e| panic!("order {id}: {e}"))
        }
    };
    for (id, _) in &paid {
        assert_eq!(status(id.clone()).await.0, "paid", "order {id}");
    }
    for id in &out_of_stock {
        assert_eq!(status(id.clone()).await, ("cancelled".into(), Some("out of stock".into())), "order {id}");
    }
    for id in &declined {
        assert_eq!(status(id.clone()).await, ("cancelled".into(), Some("payment declined".into())), "order {id}");
    }
    let guest: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT status, item, qty FROM orders WHERE customer = 'guest'").fetch_all(&db).await.unwrap();
    assert_eq!(guest, vec![("paid".into(), "widget".into(), 1)], "the guide's plain-text order");
    assert_eq!(count("SELECT count(*) FROM orders").await, orders as i64, "each order once, though sent twice");

    // Stock and money moved once per paid order, and back for declined ones.
    let widgets: i64 = paid.iter().map(|(_, qty)| qty).sum::<i64>() + 1;
    assert_eq!(count("SELECT stock FROM inventory WHERE item = 'widget'").await, 100 - widgets);
    assert_eq!(count("SELECT stock FROM inventory WHERE item = 'gadget'").await, 5, "no gadget order could be met");
    let alice_paid = 30 + (paid.len() as i64 - 1);
    assert_eq!(count("SELECT balance FROM accounts WHERE customer = 'alice'").await, 1000 - alice_paid);
    assert_eq!(count("SELECT balance FROM accounts WHERE customer = 'bob'").await, 20, "bob's orders were declined");
    assert_eq!(count("SELECT count(*) FROM payments").await, paid.len() as i64 + 1, "one payment per paid order");
    assert_eq!(count("SELECT count(*) FROM reservations WHERE released = 0").await, paid.len() as i64 + 1);
    assert_eq!(
        count("SELECT count(*) FROM reservations WHERE released = 1").await,
        declined.len() as i64,
        "declined: released"
    );
    assert_eq!(
        count("SELECT count(*) FROM orders o JOIN reservations r ON r.order_id = o.id WHERE o.reason = 'out of stock'")
            .await,
        0,
        "out of stock: nothing reserved"
    );
    assert!(host.terminate().success(), "{}", host.log());
    db.close().await;
    sqlx::raw_sql(&format!("DROP DATABASE {database}")).execute(&admin).await.unwrap();
}
