//! The conformance suite on Redis Streams (127.0.0.1:6379, or `REDIS_URL`).
//! The broker restart and down-at-start tests run their own `redis-server`
//! on a free port, so the shared server is never taken away.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assumption in a test is a failed test

mod support;

use std::time::Duration;

use redis::AsyncCommands;
use redis::streams::StreamRangeReply;
use support::brokers::{self as conformance, Broker, DeadLetter, test_dir};
use support::redis_server::OwnServer;
use support::unique;

fn url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

struct Streams {
    url: String,
    stream: String,
    conn: redis::aio::ConnectionManager,
}

impl Streams {
    async fn new(name: &str) -> Self {
        Self::at(&url(), name).await
    }

    async fn at(url: &str, name: &str) -> Self {
        let client = redis::Client::open(url).unwrap();
        let conn = redis::aio::ConnectionManager::new(client).await.unwrap();
        Self { url: url.to_string(), stream: unique(name), conn }
    }
}

fn text(v: &redis::Value) -> String {
    redis::from_redis_value_ref::<String>(v).unwrap_or_default()
}

impl Broker for Streams {
    fn source(&self) -> String {
        // Entries a killed host left pending are claimed after 3 s.
        format!("type = \"redis\"\nurl = \"{}\"\nstreams = [\"{}\"]\nclaim_idle_ms = 3000", self.url, self.stream)
    }

    async fn publish(&self, key: Option<&str>, payload: &[u8]) {
        let mut fields: Vec<(&str, &[u8])> = vec![("payload", payload)];
        if let Some(key) = key {
            fields.push(("key", key.as_bytes()));
        }
        for _ in 0..100 {
            let mut conn = self.conn.clone();
            let added: redis::RedisResult<String> = conn.xadd(&self.stream, "*", &fields).await;
            if added.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("cannot add to {}", self.stream);
    }

    async fn dead_letters(&self) -> Vec<DeadLetter> {
        let mut conn = self.conn.clone();
        let range: StreamRangeReply = conn.xrange_all(format!("{}.dead-letter", self.stream)).await.unwrap();
        range
            .ids
            .into_iter()
            .map(|e| {
                let mut payload = Vec::new();
                let mut headers = Vec::new();
                for (k, v) in &e.map {
                    if k == "payload" {
                        payload = redis::from_redis_value_ref::<Vec<u8>>(v).unwrap();
                    } else {
                        headers.push((k.clone(), text(v)));
                    }
                }
                DeadLetter { payload, headers }
            })
            .collect()
    }

    async fn backlog(&self) -> Option<u64> {
        let mut conn = self.conn.clone();
        // Pending (delivered, not acked) plus not yet delivered.
        let groups: Vec<std::collections::HashMap<String, redis::Value>> =
            redis::cmd("XINFO").arg("GROUPS").arg(&self.stream).query_async(&mut conn).await.unwrap();
        let group = groups.iter().find(|g| g.get("name").map(text).as_deref() == Some("switchyard"))?;
        let number =
            |field: &str| group.get(field).and_then(|v| redis::from_redis_value_ref::<u64>(v).ok()).unwrap_or(0);
        Some(number("pending") + number("lag"))
    }
}

/// A `redis-server` of the test's own, on a free port, keeping its data in
/// an append-only file so a restart loses nothing.
#[tokio::test]
async fn ack() {
    conformance::ack(&Streams::new("ack").await, &test_dir("redis-ack")).await;
}

#[tokio::test]
async fn retry_after_delay() {
    conformance::retry_after_delay(&Streams::new("retry").await, &test_dir("redis-retry")).await;
}

#[tokio::test]
async fn reject_goes_to_dead_letter() {
    conformance::reject_goes_to_dead_letter(&Streams::new("reject").await, &test_dir("redis-reject")).await;
}

#[tokio::test]
async fn trap_retried_then_dead_lettered() {
    conformance::trap_retried_then_dead_lettered(&Streams::new("trap").await, &test_dir("redis-trap")).await;
}

#[tokio::test]
async fn order_per_key() {
    conformance::order_per_key(&Streams::new("order").await, &test_dir("redis-order")).await;
}

#[tokio::test]
async fn sigkill_and_restart() {
    conformance::sigkill_and_restart(&Streams::new("kill").await, &test_dir("redis-kill"), 16).await;
}

#[tokio::test]
async fn sigterm_drains() {
    conformance::sigterm_drains(&Streams::new("drain").await, &test_dir("redis-drain")).await;
}

#[tokio::test]
async fn scale_out() {
    conformance::scale_out(&Streams::new("scale").await, &test_dir("redis-scale")).await;
}

#[tokio::test]
async fn broker_restart() {
    let dir = test_dir("redis-restart");
    let server = OwnServer::new(&dir);
    server.start().await;
    let broker = Streams::at(&server.url(), "restart").await;
    conformance::broker_restart(&broker, &dir, 2, || async {
        server.stop();
        tokio::time::sleep(Duration::from_secs(1)).await;
        server.start().await;
    })
    .await;
}

#[tokio::test]
async fn down_at_start() {
    let port = support::free_port();
    let source = format!("type = \"redis\"\nurl = \"redis://127.0.0.1:{port}\"\nstreams = [\"nowhere\"]");
    conformance::down_at_start(&source, &test_dir("redis-down"), &format!("127.0.0.1:{port}"), "Redis").await;
}
