//! The order saga on a transactional route, with the host process crashed at
//! each step of a message's commit: before the commit, after the commit but
//! before the ack, and after the commit but before the outbox relay. Run by
//! the PostgreSQL and MariaDB test files against the real databases, with
//! the saga's events on real Redis streams. After a crash and a restart,
//! every effect must be applied exactly once and every compensation sent
//! exactly once where it is due; all of it is read back directly.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::streams::StreamRangeReply;

use switchyard::capabilities::backends::sql::logins::login_name;
use switchyard::capabilities::backends::sql::server::TransactionStatements;

use super::backends::Direct;
use super::host::HostProcess;
use super::unique;

/// The database a saga runs on.
pub struct SagaDb<'a> {
    /// The body of `[backends.db]`.
    pub backend_toml: String,
    /// The test's own connection.
    pub direct: &'a dyn Direct,
    /// The column type for ids and item names.
    pub text_type: &'static str,
    /// The first of three Redis databases the scenarios' streams go to, one each.
    pub redis_db: u8,
    /// The dialect's inbox and outbox statements.
    pub transactions: &'static TransactionStatements,
    /// The database's name, which the tenant's login name derives from.
    pub database: String,
}

/// Orders that succeed, are out of stock, or fail after their retries.
struct Orders {
    lines: Vec<String>,
    reserved: BTreeMap<String, i64>,
    refunded: Vec<String>,
    widget_taken: i64,
}

fn orders() -> Orders {
    let mut lines = Vec::new();
    let mut reserved = BTreeMap::new();
    let mut refunded = Vec::new();
    let mut widget_taken = 0;
    let mut push = |order: String, item: &str, qty: i64, fail: bool| {
        let payload = serde_json::json!({ "order": order, "item": item, "qty": qty, "fail": fail });
        lines.push(serde_json::json!({ "topic": "order.placed", "key": order, "payload": payload }).to_string());
    };
    for i in 0..40 {
        let qty = 1 + i % 3;
        let order = format!("w{i}");
        push(order.clone(), "widget", qty, false);
        reserved.insert(order, qty);
        widget_taken += qty;
        if i % 8 == 3 {
            // 5 orders for 3 in stock: 2 are refunded, whichever runs last.
            push(format!("r{i}"), "rare", 1, false);
        }
        if i % 16 == 5 {
            let order = format!("f{i}");
            push(order.clone(), "widget", 1, true);
            refunded.push(order);
        }
    }
    Orders { lines, reserved, refunded, widget_taken }
}

fn config(db: &SagaDb<'_>, redis_db: u8, messages: &Path) -> String {
    format!(
        r#"
data_dir = "."

[sources.in]
type = "file"
path = "{messages}"

[sources.saga]
type = "redis"
url = "redis://127.0.0.1:6379/{redis_db}"
streams = ["saga.unused"]

[backends.db]
{backend}

[tenants.shop.grants]
db_tables = ["saga_orders", "saga_stock", "saga_ledger"]
publish = ["saga:*"]

[tenants.shop.handlers.saga]
wasm = "{wasm}"

[[routes]]
source = "in"
topic = "order.placed"
tenant = "shop"
handler = "saga"
transactional = true
concurrency = 4
max_attempts = 2
retry_base_ms = 10
"#,
        messages = messages.display(),
        backend = db.backend_toml,
        wasm = super::plugin("order_saga").display(),
    )
}

async fn reset(db: &SagaDb<'_>) {
    let t = db.text_type;
    for table in ["saga_orders", "saga_stock", "saga_ledger"] {
        db.direct.exec(&format!("DROP TABLE IF EXISTS {table}")).await;
    }
    db.direct
        .exec(&format!("CREATE TABLE saga_orders (id {t} PRIMARY KEY, item {t} NOT NULL, qty BIGINT NOT NULL)"))
        .await;
    db.direct.exec(&format!("CREATE TABLE saga_stock (item {t} PRIMARY KEY, stock BIGINT NOT NULL)")).await;
    db.direct
        .exec(&format!("CREATE TABLE saga_ledger (order_id {t} NOT NULL, item {t} NOT NULL, qty BIGINT NOT NULL)"))
        .await;
    db.direct.exec("INSERT INTO saga_stock (item, stock) VALUES ('widget', 1000), ('rare', 3)").await;
    // Nothing an earlier run left in the inbox or outbox.
    for ddl in db.transactions.tables {
        db.direct.exec(ddl).await;
    }
    db.direct.exec("DELETE FROM switchyard_inbox").await;
    db.direct.exec("DELETE FROM switchyard_outbox").await;
    // The tenant runs as a login of its own, with its own inbox and outbox;
    // the host makes them again at start.
    let login = login_name("switchyard_", &db.database, "shop");
    db.direct.exec(&format!("DROP TABLE IF EXISTS switchyard_inbox_{login}")).await;
    db.direct.exec(&format!("DROP TABLE IF EXISTS switchyard_outbox_{login}")).await;
}

/// `order-id` header of every entry of a stream, in order.
async fn stream_orders(redis: &mut redis::aio::MultiplexedConnection, stream: &str) -> Vec<(String, String)> {
    let reply: StreamRangeReply = redis.xrange_all(stream).await.unwrap();
    reply
        .ids
        .iter()
        .map(|entry| {
            let field = |name: &str| entry.get::<String>(name).unwrap_or_default();
            (field("order-id"), field("switchyard-message-id"))
        })
        .collect()
}

/// A host process, killed if the test fails while it runs: a host left
/// behind would relay the next run's outbox rows to its own destinations.
/// Crash the host at `point` mid-stream, restart it, and check every effect.
async fn scenario(db: &SagaDb<'_>, point: &str, redis_db: u8) {
    reset(db).await;
    let client = redis::Client::open(format!("redis://127.0.0.1:6379/{redis_db}")).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis.del(&["order.reserved", "payment.refund", "saga.unused"]).await.unwrap();

    let dir = std::env::temp_dir().join(unique(&format!("saga_{point}")));
    std::fs::create_dir_all(&dir).unwrap();
    let orders = orders();
    let messages = dir.join("orders.jsonl");
    std::fs::write(&messages, orders.lines.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("switchyard.toml"), config(db, redis_db, &messages)).unwrap();

    // The crash: the 5th time the host reaches the point.
    let mut crashed = HostProcess::start_with_env(&dir, &[("SWITCHYARD_CRASH_AT", &format!("{point}:5"))]);
    let status = crashed.wait_exit(60).await;
    assert!(!status.success(), "the host exited normally instead of crashing at {point}");
    assert!(crashed.log().contains(&format!("crashing at {point}")), "{}", crashed.log());

    // The restart finishes the stream.
    let mut host = HostProcess::start(&dir);
    let expected_events = orders.reserved.len() + 3;
    let expected_refunds = orders.refunded.len() + 2;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let events = stream_orders(&mut redis, "order.reserved").await.len();
        let refunds = stream_orders(&mut redis, "payment.refund").await.len();
        if events >= expected_events && refunds >= expected_refunds {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after a crash at {point} and a restart: {events}/{expected_events} events, {refunds}/{expected_refunds} refunds\n{}",
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Anything sent twice would arrive by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = host.terminate();
    assert!(status.success(), "the restarted host did not exit cleanly on SIGTERM:\n{}", host.log());
    let offset = std::fs::read_to_string(dir.join("orders.jsonl.offset")).unwrap_or_default();
    assert_eq!(offset.trim(), orders.lines.len().to_string(), "every order settled");

    // Every order's writes applied exactly once: one ledger row each, and
    // the stock down by exactly what was reserved.
    let d = db.direct;
    let ledger = d.int("SELECT count(*) FROM saga_ledger").await;
    let distinct = d.int("SELECT count(DISTINCT order_id) FROM saga_ledger").await;
    assert_eq!(
        (ledger, distinct),
        (expected_events as i64, expected_events as i64),
        "ledger rows after a crash at {point}"
    );
    assert_eq!(d.int("SELECT count(*) FROM saga_orders").await, expected_events as i64);
    assert_eq!(d.int("SELECT stock FROM saga_stock WHERE item = 'rare'").await, 0, "rare stock");
    assert_eq!(
        d.int("SELECT stock FROM saga_stock WHERE item = 'widget'").await,
        1000 - orders.widget_taken,
        "widget stock after a crash at {point}"
    );
    assert_eq!(
        d.int("SELECT count(*) FROM saga_ledger WHERE order_id LIKE 'f%'").await,
        0,
        "a failed order's writes rolled back"
    );

    // Every event published, each under one stable id. A crash between the
    // relay's publish and its delete of the sent rows (a crash in a handler's
    // commit can land there, since the relay runs all along) sends them again
    // under the same id, which a receiver drops.
    let events = stream_orders(&mut redis, "order.reserved").await;
    let mut ids: BTreeMap<&str, std::collections::BTreeSet<&str>> = BTreeMap::new();
    for (order, id) in &events {
        ids.entry(order.as_str()).or_default().insert(id.as_str());
    }
    assert_eq!(ids.len(), expected_events, "orders with an event after a crash at {point}: {ids:?}");
    assert!(
        ids.values().all(|v| v.len() == 1),
        "an order's event went out under two ids after a crash at {point}: {ids:?}"
    );
    for order in orders.reserved.keys() {
        assert!(ids.contains_key(order.as_str()), "order {order} was reserved");
    }
    assert!(events.iter().all(|(_, id)| id.starts_with("in:")), "relayed events carry their stable id: {events:?}");
    if point == "before-relay" {
        // The crash lands inside the relay, before it publishes: nothing was half sent.
        assert_eq!(events.len(), expected_events, "an event was sent twice after a crash at {point}: {events:?}");
    }

    // Every compensation sent exactly once where due: the failed orders and
    // the two rare orders that found no stock.
    let refunds = stream_orders(&mut redis, "payment.refund").await;
    let distinct: std::collections::BTreeSet<&(String, String)> = refunds.iter().collect();
    let refunds: Vec<&(String, String)> = distinct.into_iter().collect();
    let refunded: Vec<&str> = refunds.iter().map(|(o, _)| o.as_str()).collect();
    assert_eq!(refunds.len(), expected_refunds, "refunds after a crash at {point}: {refunded:?}");
    for order in &orders.refunded {
        assert_eq!(refunded.iter().filter(|o| **o == order).count(), 1, "order {order} refunded once: {refunded:?}");
    }
    assert_eq!(refunded.iter().filter(|o| o.starts_with('r')).count(), 2, "{refunded:?}");
    let rare_reserved = ids.keys().filter(|o| o.starts_with('r')).count();
    assert_eq!(rare_reserved, 3, "three rare orders were reserved");
    for order in ids.keys().filter(|o| o.starts_with('r')) {
        assert!(!refunded.contains(order), "order {order} was both reserved and refunded");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Run the saga with a crash at each step, each scenario on its own streams.
pub async fn crash_at_each_step(db: &SagaDb<'_>) {
    for (i, point) in ["before-commit", "after-commit", "before-relay"].into_iter().enumerate() {
        scenario(db, point, db.redis_db + i as u8).await;
    }
}
