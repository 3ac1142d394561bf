//! Integration tests against the real MariaDB (or MySQL) on this machine
//! (`SWITCHYARD_MYSQL_URL`, default `mysql://root@127.0.0.1:3306/test`).
//! Effects are checked through the test's own sqlx connection.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assumption in a test is a failed test

mod support;

use std::sync::Arc;

use sqlx::Row;
use sqlx::mysql::MySqlPool;
use support::backends::{self as conformance, DbUnderTest, Direct};
use switchyard::capabilities::backends::sql::mysql::MySql;
use switchyard::capabilities::backends::sql::server::{Dialect, SqlServer};
use switchyard::config::SqlServerConfig;
use switchyard::contract::bindings::db::Value;
use switchyard::contract::db::DbBackend;

fn url() -> String {
    std::env::var("SWITCHYARD_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

fn options() -> SqlServerConfig {
    SqlServerConfig { max_connections: 4, ..SqlServerConfig::new(url()) }
}

struct My(MySqlPool);

#[async_trait::async_trait]
impl Direct for My {
    async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sql).execute(&self.0).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    async fn int(&self, sql: &str) -> i64 {
        sqlx::query(sql).fetch_one(&self.0).await.unwrap_or_else(|e| panic!("{sql}: {e}")).get::<i64, _>(0)
    }
    async fn text(&self, sql: &str) -> Option<String> {
        let row = sqlx::query(sql).fetch_optional(&self.0).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        row.map(|r| r.get::<String, _>(0))
    }
}

/// The backend on the test's server, with the test's own connection beside it.
async fn under_test() -> DbUnderTest {
    let db: Arc<dyn DbBackend> = Arc::new(SqlServer::<MySql>::open(&options()).await.unwrap());
    DbUnderTest {
        backend_toml: format!("type = \"mysql\"\nurl = \"{}\"", url()),
        db,
        direct: Box::new(My(MySqlPool::connect(&url()).await.unwrap())),
        types: ["BOOLEAN", "BIGINT", "DOUBLE", "TEXT", "BLOB", "JSON", "DATETIME(6)"],
    }
}

#[tokio::test]
async fn mysql_passes_the_db_conformance() {
    let t = under_test().await;
    conformance::db(&t, &conformance::unique("conf")).await;
}

#[tokio::test]
async fn decimals_unsigned_and_timestamps_read_back_typed() {
    let direct = MySqlPool::connect(&url()).await.unwrap();
    let table = conformance::unique("kinds");
    sqlx::raw_sql(&format!(
        "CREATE TABLE {table} (d DECIMAL(10, 3), u BIGINT UNSIGNED, ts TIMESTAMP(6) NULL, v VARCHAR(20), day DATE)"
    ))
    .execute(&direct)
    .await
    .unwrap();
    let db = SqlServer::<MySql>::open(&options()).await.unwrap();
    db.execute(
        &format!("INSERT INTO {table} (d, u, ts, v, day) VALUES (?, ?, ?, ?, ?)"),
        vec![
            Value::Float(12.5),
            Value::Int(7),
            Value::Timestamp(1_700_000_000_000_001),
            Value::Text("x".into()),
            Value::Timestamp(1_699_920_000_000_000),
        ],
    )
    .await
    .unwrap();
    // The session is UTC: the server stored the instant given.
    let (unix,): (i64,) = sqlx::query_as(&format!("SELECT CAST(UNIX_TIMESTAMP(ts) AS SIGNED) FROM {table}"))
        .fetch_one(&direct)
        .await
        .unwrap();
    assert_eq!(unix, 1_700_000_000);
    let rows = db.query(&format!("SELECT d, u, ts, v, day FROM {table}"), vec![]).await.unwrap();
    assert_eq!(
        rows.rows,
        vec![vec![
            Value::Float(12.5),
            Value::Int(7),
            Value::Timestamp(1_700_000_000_000_001),
            Value::Text("x".into()),
            Value::Timestamp(1_699_920_000_000_000)
        ]]
    );
    sqlx::raw_sql(&format!("DROP TABLE {table}")).execute(&direct).await.unwrap();
}

#[tokio::test]
async fn a_saga_survives_a_crash_at_each_step_with_effects_exactly_once() {
    let direct = My(MySqlPool::connect(&url()).await.unwrap());
    let db = support::saga::SagaDb {
        backend_toml: format!("type = \"mysql\"\nurl = \"{}\"", url()),
        direct: &direct,
        text_type: "VARCHAR(64)",
        redis_db: 12,
        transactions: <MySql as Dialect>::TRANSACTIONS,
        database: url().rsplit('/').next().unwrap().to_string(),
    };
    support::saga::crash_at_each_step(&db).await;
}

#[tokio::test]
async fn each_tenant_runs_as_a_login_the_server_holds_to_its_grant() {
    let t = under_test().await;
    let hostile = conformance::Hostile {
        serial: "BIGINT AUTO_INCREMENT PRIMARY KEY",
        whoami: "SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', 1)",
        read_file: "SELECT LOAD_FILE('/etc/hostname')",
        sleep: "SELECT SLEEP(30)",
        lift_limit: "SET SESSION max_statement_time = 0",
        other_sequence: None,
    };
    conformance::tenant_logins(&t, &hostile, &conformance::unique("logins")).await;
}

/// The quickstart's handlers, unchanged, on MariaDB instead of SQLite:
/// `order-insert`'s SQL is portable, and runs as the tenant's own login.
#[tokio::test]
async fn quickstart_handlers_run_against_mariadb() {
    let database = conformance::unique("quickstart");
    let admin = MySqlPool::connect(&url()).await.unwrap();
    sqlx::raw_sql(&format!("CREATE DATABASE {database}")).execute(&admin).await.unwrap();
    let db_url = format!("{}/{database}", url().rsplit_once('/').unwrap().0);

    let dir = tempfile::tempdir().unwrap();
    let quickstart = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart/switchyard.toml");
    let mut config = switchyard::Config::load(&quickstart).unwrap();
    config.data_dir = dir.path().to_path_buf();
    config.backends.db = switchyard::config::DbBackendConfig::Mysql(SqlServerConfig {
        init: vec![
            "CREATE TABLE orders (id VARCHAR(64) PRIMARY KEY, customer TEXT NOT NULL, total DOUBLE NOT NULL)".into(),
        ],
        max_connections: 4,
        ..SqlServerConfig::new(db_url.clone())
    });
    let (stats, _) = support::run_host(&config).await;
    assert_eq!((stats.handled, stats.dead_lettered, stats.retried), (101, 1, 0), "{stats:?}");

    let my = MySqlPool::connect(&db_url).await.unwrap();
    let (orders,): (i64,) = sqlx::query_as("SELECT count(*) FROM orders").fetch_one(&my).await.unwrap();
    assert_eq!(orders, 30);
    let (customer,): (String,) =
        sqlx::query_as("SELECT customer FROM orders WHERE id = 'o7'").fetch_one(&my).await.unwrap();
    assert_eq!(customer, "c0");
    my.close().await;

    sqlx::raw_sql(&format!("DROP DATABASE {database}")).execute(&admin).await.unwrap();
    let login = switchyard::capabilities::backends::sql::logins::login_name("switchyard_", &database, "shop");
    sqlx::raw_sql(&format!("DROP USER IF EXISTS '{login}'@'%'")).execute(&admin).await.unwrap();
}
