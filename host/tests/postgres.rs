//! Integration tests against the real PostgreSQL on this machine
//! (`SWITCHYARD_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`).
//! Effects are checked through the test's own sqlx connection.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assumption in a test is a failed test

mod support;

use std::path::Path;
use std::sync::Arc;

use sqlx::postgres::PgPool;
use sqlx::{Connection, Row};
use support::backends::{self as conformance, DbUnderTest, Direct};
use switchyard::Config;
use switchyard::capabilities::backends::sql::postgres::Postgres;
use switchyard::capabilities::backends::sql::server::{Dialect, SqlServer};
use switchyard::config::SqlServerConfig;
use switchyard::config::{CacheBackendConfig, DbBackendConfig};
use switchyard::contract::bindings::db::Value;
use switchyard::contract::db::DbBackend;

fn url() -> String {
    std::env::var("SWITCHYARD_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn options() -> SqlServerConfig {
    SqlServerConfig { max_connections: 4, ..SqlServerConfig::new(url()) }
}

struct Pg(PgPool);

#[async_trait::async_trait]
impl Direct for Pg {
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
    let db: Arc<dyn DbBackend> = Arc::new(SqlServer::<Postgres>::open(&options()).await.unwrap());
    DbUnderTest {
        backend_toml: format!("type = \"postgres\"\nurl = \"{}\"", url()),
        db,
        direct: Box::new(Pg(PgPool::connect(&url()).await.unwrap())),
        types: ["BOOLEAN", "BIGINT", "DOUBLE PRECISION", "TEXT", "BYTEA", "JSONB", "TIMESTAMPTZ"],
    }
}

#[tokio::test]
async fn postgres_passes_the_db_conformance() {
    let t = under_test().await;
    conformance::db(&t, &conformance::unique("conf")).await;
}

#[tokio::test]
async fn concurrent_inserts_share_transactions_and_statements() {
    let direct = PgPool::connect(&url()).await.unwrap();
    let table = conformance::unique("grouped");
    sqlx::raw_sql(&format!("CREATE TABLE {table} (id BIGINT PRIMARY KEY, v TEXT NOT NULL)"))
        .execute(&direct)
        .await
        .unwrap();
    let db = SqlServer::<Postgres>::open(&options()).await.unwrap();
    let insert = format!("INSERT INTO {table} (id, v) VALUES ($1, $2)");
    let calls: Vec<_> =
        (0..500i64).map(|i| db.execute(&insert, vec![Value::Int(i), Value::Text(i.to_string())])).collect();
    for r in futures::future::join_all(calls).await {
        assert_eq!(r, Ok(1));
    }
    let (rows, transactions): (i64, i64) =
        sqlx::query_as(&format!("SELECT count(*), count(DISTINCT xmin::text) FROM {table}"))
            .fetch_one(&direct)
            .await
            .unwrap();
    assert_eq!(rows, 500);
    // Rows written by one transaction share its id (xmin): 500 callers at
    // once must not have cost 500 commits.
    assert!(transactions < 100, "500 concurrent inserts took {transactions} transactions");
    sqlx::raw_sql(&format!("DROP TABLE {table}")).execute(&direct).await.unwrap();
}

#[tokio::test]
async fn a_schema_grant_cannot_be_escaped_through_unqualified_names_or_search_path() {
    let direct = PgPool::connect(&url()).await.unwrap();
    let schema = conformance::unique("tenant");
    sqlx::raw_sql(&format!(
        "CREATE SCHEMA {schema}; CREATE TABLE {schema}.items (id BIGINT PRIMARY KEY); CREATE TABLE public.{schema}_items (id BIGINT PRIMARY KEY);"
    ))
    .execute(&direct)
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let template = format!(
        r#"
        [sources.in]
        type = "file"
        path = "in.jsonl"

        [backends.db]
        type = "postgres"
        url = "{url}"

        [tenants.schema.grants]
        db_tables = ["{schema}.*"]
        # The faults handler imports the cache too; the host refuses ungranted imports.
        cache_prefixes = ["faults:"]

        [tenants.schema.handlers.faults]
        wasm = "WASM"

        [[routes]]
        source = "in"
        topic = "*"
        tenant = "schema"
        handler = "faults"
        max_attempts = 1
        "#,
        url = url()
    );
    let message = |id: &str, sql: String| {
        serde_json::json!({"topic": "sql", "id": id, "payload": {"mode": "sql", "sql": sql}}).to_string()
    };
    let lines = [
        message("qualified", format!("INSERT INTO {schema}.items (id) VALUES (1)")),
        message("unqualified", format!("INSERT INTO {schema}_items (id) VALUES (2)")),
        message("search-path", format!("SELECT set_config('search_path', 'public', false) FROM {schema}.items")),
        message(
            "xml",
            format!("SELECT query_to_xml('delete from public.{schema}_items', true, true, '') FROM {schema}.items"),
        ),
    ];
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let config = support::config_with_file(dir.path(), &template, "faults", &lines);
    let (stats, _) = support::run_host(&config).await;
    assert_eq!((stats.handled, stats.dead_lettered), (1, 3), "{stats:?}");
    for line in support::read_dead_letters(&dir.path().join("dead-letter/in.jsonl")) {
        let reason = support::header(&line, "switchyard-dead-letter-reason").unwrap();
        assert!(reason.contains("Denied"), "{}: {reason}", line["id"]);
    }
    let count = |sql: String| {
        let direct = direct.clone();
        async move { sqlx::query(&sql).fetch_one(&direct).await.unwrap().get::<i64, _>(0) }
    };
    assert_eq!(count(format!("SELECT count(*) FROM {schema}.items")).await, 1);
    assert_eq!(count(format!("SELECT count(*) FROM public.{schema}_items")).await, 0);
    sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE; DROP TABLE public.{schema}_items"))
        .execute(&direct)
        .await
        .unwrap();
}

/// The quickstart's handlers, unchanged, on PostgreSQL and Redis instead of
/// the embedded backends: `order-insert`'s `?` placeholders run on
/// PostgreSQL as written, as the tenant's own login.
#[tokio::test]
async fn quickstart_handlers_run_against_postgres_and_redis() {
    let database = conformance::unique("quickstart");
    let mut admin = sqlx::PgConnection::connect(&url()).await.unwrap();
    sqlx::raw_sql(&format!("CREATE DATABASE {database}")).execute(&mut admin).await.unwrap();
    let db_url = format!("{}/{database}", url().rsplit_once('/').unwrap().0);
    let prefix = format!("{}:", conformance::unique("qs"));

    let dir = tempfile::tempdir().unwrap();
    let quickstart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart/switchyard.toml");
    let mut config = Config::load(&quickstart).unwrap();
    config.data_dir = dir.path().to_path_buf();
    config.backends.db = DbBackendConfig::Postgres(SqlServerConfig {
        init: vec![
            "CREATE TABLE orders (id TEXT PRIMARY KEY, customer TEXT NOT NULL, total DOUBLE PRECISION NOT NULL)".into(),
        ],
        max_connections: 4,
        ..SqlServerConfig::new(db_url.clone())
    });
    config.backends.cache = CacheBackendConfig::Redis {
        url: "redis://127.0.0.1:6379".into(),
        key_prefix: prefix.clone(),
        timeout_ms: 2000,
    };
    let (stats, _) = support::run_host(&config).await;
    assert_eq!((stats.handled, stats.dead_lettered, stats.retried), (101, 1, 0), "{stats:?}");

    let pg = PgPool::connect(&db_url).await.unwrap();
    let (orders,): (i64,) = sqlx::query_as("SELECT count(*) FROM orders").fetch_one(&pg).await.unwrap();
    assert_eq!(orders, 30);
    let (customer, total): (String, f64) =
        sqlx::query_as("SELECT customer, total FROM orders WHERE id = 'o7'").fetch_one(&pg).await.unwrap();
    assert_eq!(customer, "c0");
    assert!(total > 0.0);
    pg.close().await;

    let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let p1: Option<Vec<u8>> =
        redis::cmd("GET").arg(format!("{prefix}product:p1")).query_async(&mut redis).await.unwrap();
    let p1: serde_json::Value =
        serde_json::from_slice(&p1.expect("product:p1 is in Redis under the key prefix")).unwrap();
    assert_eq!(p1["name"], "green sprocket");
    let p3: Option<Vec<u8>> =
        redis::cmd("GET").arg(format!("{prefix}product:p3")).query_async(&mut redis).await.unwrap();
    assert_eq!(p3, None, "p3 was deleted by a later message");
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut redis).await.unwrap();
    let _: i64 = redis::cmd("DEL").arg(&keys).query_async(&mut redis).await.unwrap();

    sqlx::raw_sql(&format!("DROP DATABASE {database} WITH (FORCE)")).execute(&mut admin).await.unwrap();
    let login = switchyard::capabilities::backends::sql::logins::login_name("switchyard_", &database, "shop");
    sqlx::raw_sql(&format!("DROP ROLE IF EXISTS {login}")).execute(&mut admin).await.unwrap();
}

#[tokio::test]
async fn a_saga_survives_a_crash_at_each_step_with_effects_exactly_once() {
    let direct = Pg(PgPool::connect(&url()).await.unwrap());
    let db = support::saga::SagaDb {
        backend_toml: format!("type = \"postgres\"\nurl = \"{}\"", url()),
        direct: &direct,
        text_type: "TEXT",
        redis_db: 9,
        transactions: <Postgres as Dialect>::TRANSACTIONS,
        database: url().rsplit('/').next().unwrap().to_string(),
    };
    support::saga::crash_at_each_step(&db).await;
}

#[tokio::test]
async fn each_tenant_runs_as_a_login_the_server_holds_to_its_grant() {
    let t = under_test().await;
    let hostile = conformance::Hostile {
        serial: "BIGSERIAL PRIMARY KEY",
        whoami: "SELECT current_user::text",
        read_file: "SELECT pg_read_file('/etc/hostname')",
        sleep: "SELECT pg_sleep(30)::text",
        lift_limit: "SELECT set_config('statement_timeout', '0', false)",
        other_sequence: Some("SELECT nextval('{table}_id_seq')"),
    };
    conformance::tenant_logins(&t, &hostile, &conformance::unique("logins")).await;
}
