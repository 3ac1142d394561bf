//! The soak: a million messages through one host, from RabbitMQ into Redis
//! by the `cache-update` handler, with RabbitMQ and Redis each restarted
//! twice on the way. Nothing may be lost: every product is in Redis at the
//! end, read back from Redis itself. And the host must not grow: its
//! resident memory, threads and open files in the last quarter of the run
//! stay within a margin of the first quarter's. `SWITCHYARD_SOAK_MESSAGES`
//! sets the count (default 1,000,000).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assumption in a test is a failed test

mod support;

use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use support::host::HostProcess;
use support::redis_server::OwnServer;

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// What the host holds at one moment.
#[derive(Debug, Clone, Copy)]
struct Sample {
    done: f64,
    rss_kib: u64,
    threads: u64,
    fds: u64,
}

fn sample(pid: u32, done: f64) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status.lines().find(|l| l.starts_with(name))?.split_whitespace().nth(1)?.parse().ok()
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(Sample { done, rss_kib: field("VmRSS:")?, threads: field("Threads:")?, fds })
}

fn rabbitmqctl(cmd: &str) {
    let ok = std::process::Command::new("rabbitmqctl").arg(cmd).status().map(|s| s.success()).unwrap_or(false);
    assert!(ok, "rabbitmqctl {cmd} failed");
}

/// Publish products `from..to` with confirms, reconnecting and sending a
/// batch again after a broker restart (the handler is idempotent).
async fn publish(queue: String, from: u64, to: u64) {
    let mut next = from;
    while next < to {
        let Ok(connection) = Connection::connect(AMQP, ConnectionProperties::default()).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let Ok(channel) = connection.create_channel().await else { continue };
        if channel.confirm_select(ConfirmSelectOptions::default()).await.is_err() {
            continue;
        }
        while next < to {
            let end = (next + 500).min(to);
            let mut confirms = Vec::new();
            let mut failed = false;
            for i in next..end {
                let payload = format!(r#"{{"id": "p{i}", "name": "product {i}", "price": {}}}"#, i % 1000);
                let props = BasicProperties::default().with_delivery_mode(2);
                match channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        payload.as_bytes(),
                        props,
                    )
                    .await
                {
                    Ok(confirm) => confirms.push(confirm),
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            for confirm in confirms {
                if !matches!(confirm.await, Ok(c) if c.is_ack()) {
                    failed = true;
                }
            }
            if failed {
                break; // reconnect, and send this batch again
            }
            next = end;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_messages_through_broker_and_cache_restarts() {
    let total: u64 = std::env::var("SWITCHYARD_SOAK_MESSAGES").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let dir = support::brokers::test_dir("soak");
    let redis = OwnServer::new(&dir);
    redis.start().await;
    let queue = support::unique("soak");
    let connection = Connection::connect(AMQP, ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("switchyard.dead-letter".into()));
    args.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(queue.as_str().into()));
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(queue.as_str().into(), durable, args).await.unwrap();
    connection.close(0, "declared".into()).await.unwrap();

    let config = format!(
        r#"
data_dir = "."

[sources.orders]
type = "amqp"
url = "{AMQP}"
queues = ["{queue}"]

[backends.cache]
type = "redis"
url = "{redis}"

[tenants.shop.grants]
cache_prefixes = ["product:"]

[tenants.shop.handlers.cache-update]
wasm = "{wasm}"

[[routes]]
source = "orders"
topic = "*"
tenant = "shop"
handler = "cache-update"
concurrency = 64
# Ride out the Redis restarts: retried, never dead-lettered.
max_attempts = 1000
retry_base_ms = 100
retry_max_ms = 1000
"#,
        redis = redis.url(),
        wasm = support::plugin("cache_update").display()
    );
    std::fs::write(dir.join("switchyard.toml"), config).unwrap();
    let mut host = HostProcess::start(&dir);
    host.wait_ready().await;
    let pid = host.pid();

    let publisher = tokio::spawn(publish(queue.clone(), 0, total));
    let client = redis::Client::open(redis.url()).unwrap();
    let stored = || async {
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else { return None };
        redis::cmd("DBSIZE").query_async::<u64>(&mut conn).await.ok()
    };
    let mut samples = Vec::new();
    // RabbitMQ at 20% and 40%, Redis at 60% and 80%.
    let mut restarts = vec![(0.2, "rabbitmq"), (0.4, "rabbitmq"), (0.6, "redis"), (0.8, "redis")];
    let mut done = 0u64;
    let deadline = Instant::now() + Duration::from_secs(1200);
    while done < total {
        assert!(Instant::now() < deadline, "{done} of {total} products stored after 20 minutes\n{}", host.log());
        assert!(host.running(), "the host died:\n{}", host.log());
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(n) = stored().await {
            done = n;
        }
        let fraction = done as f64 / total as f64;
        if let Some(s) = sample(pid, fraction) {
            samples.push(s);
        }
        if let Some(&(at, what)) = restarts.first()
            && fraction >= at
        {
            restarts.remove(0);
            eprintln!("soak: {done} stored; restarting {what}");
            if what == "rabbitmq" {
                rabbitmqctl("stop_app");
                tokio::time::sleep(Duration::from_secs(2)).await;
                rabbitmqctl("start_app");
            } else {
                redis.stop();
                tokio::time::sleep(Duration::from_secs(1)).await;
                redis.start().await;
            }
        }
    }
    publisher.await.unwrap();
    assert!(restarts.is_empty(), "not every restart happened: {restarts:?}");

    // Every product, read back from Redis.
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for i in [0, total / 3, total / 2, total - 1] {
        let value: Option<Vec<u8>> =
            redis::cmd("GET").arg(format!("product:p{i}")).query_async(&mut conn).await.unwrap();
        let value: serde_json::Value =
            serde_json::from_slice(&value.unwrap_or_else(|| panic!("product:p{i} lost"))).unwrap();
        assert_eq!(value["name"], format!("product {i}"));
    }
    assert!(host.terminate().success(), "{}", host.log());

    // Flat: the last quarter against the first.
    let quarter = |from: f64, to: f64| samples.iter().filter(move |s| s.done >= from && s.done < to);
    let peak = |f: fn(&Sample) -> u64, from, to| quarter(from, to).map(f).max().unwrap_or(0);
    let (first_rss, last_rss) = (peak(|s| s.rss_kib, 0.0, 0.25), peak(|s| s.rss_kib, 0.75, 1.01));
    let (first_threads, last_threads) = (peak(|s| s.threads, 0.0, 0.25), peak(|s| s.threads, 0.75, 1.01));
    let (first_fds, last_fds) = (peak(|s| s.fds, 0.0, 0.25), peak(|s| s.fds, 0.75, 1.01));
    eprintln!(
        "soak: {total} messages; resident {first_rss} -> {last_rss} KiB, threads {first_threads} -> {last_threads}, \
         files {first_fds} -> {last_fds}"
    );
    assert!(first_rss > 0 && last_rss > 0, "too few samples: {samples:?}");
    assert!(last_rss <= first_rss + first_rss / 4 + 16 * 1024, "resident memory grew: {first_rss} -> {last_rss} KiB");
    assert!(last_threads <= first_threads + 4, "threads grew: {first_threads} -> {last_threads}");
    assert!(last_fds <= first_fds + 8, "open files grew: {first_fds} -> {last_fds}");
}
