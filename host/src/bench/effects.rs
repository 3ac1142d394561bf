//! The effects benchmark behind `switchyard bench effects`: batched effects,
//! as handlers running at the same time get them through the backends,
//! side by side in one run with one call per message, as a typical
//! hand-written consumer makes them (one awaited round trip, one autocommit
//! statement, one indexed document at a time).

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;

use switchyard::capabilities::backends::redis::RedisCache;
use switchyard::capabilities::backends::sql::mysql::MySql;
use switchyard::capabilities::backends::sql::postgres::Postgres;
use switchyard::capabilities::backends::sql::server::SqlServer;
use switchyard::capabilities::backends::tantivy::TantivySearch;
use switchyard::config::SqlServerConfig;
use switchyard::contract::bindings::db::Value;
use switchyard::contract::cache::CacheBackend;
use switchyard::contract::db::DbBackend;
use switchyard::contract::errors::BackendError;
use switchyard::contract::search::SearchBackend;

/// Where the services are and how much to do.
#[derive(Debug, Clone)]
pub struct EffectsOptions {
    /// Redis, or none to skip.
    pub redis_url: Option<String>,
    /// PostgreSQL, or none to skip.
    pub postgres_url: Option<String>,
    /// MySQL or MariaDB, or none to skip.
    pub mysql_url: Option<String>,
    /// Operations per batched measurement.
    pub ops: usize,
    /// Operations per one-call-per-message measurement (these are slow).
    pub single_ops: usize,
    /// Callers at once on the batched side, as handlers running at the same time.
    pub concurrency: usize,
}

/// One workload's figures.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// What was measured.
    pub workload: String,
    /// Each way of doing it: a label and operations per second.
    pub rates: Vec<(String, f64)>,
}

impl Comparison {
    /// Each rate over the first (one call per message).
    pub fn ratios(&self) -> Vec<f64> {
        let base = self.rates.first().map(|r| r.1).unwrap_or(1.0).max(f64::MIN_POSITIVE);
        self.rates.iter().map(|r| r.1 / base).collect()
    }
}

/// The benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum EffectsBenchError {
    /// A backend failed.
    #[error("{what}: {source}")]
    Backend {
        /// Which step.
        what: String,
        /// Why.
        source: BackendError,
    },
}

fn failed(what: &str) -> impl FnOnce(BackendError) -> EffectsBenchError + '_ {
    move |source| EffectsBenchError::Backend { what: what.to_string(), source }
}

fn rate(n: usize, started: Instant) -> f64 {
    n as f64 / started.elapsed().as_secs_f64().max(1e-9)
}

/// Run `n` calls of `op`, `concurrency` at a time; every call must succeed.
async fn concurrently<F, Fut>(n: usize, concurrency: usize, op: F) -> Result<f64, BackendError>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), BackendError>>,
{
    let started = Instant::now();
    let mut calls = futures::stream::iter((0..n).map(op)).buffer_unordered(concurrency);
    while let Some(result) = calls.next().await {
        result?;
    }
    Ok(rate(n, started))
}

/// Run every workload whose service was given, plus Tantivy indexing.
pub async fn effects(options: &EffectsOptions) -> Result<Vec<Comparison>, EffectsBenchError> {
    let mut out = Vec::new();
    let tag = format!("{}_{}", std::process::id(), Instant::now().elapsed().as_nanos());
    if let Some(url) = &options.redis_url {
        out.push(redis_set(url, options, &tag).await?);
    }
    if let Some(url) = &options.postgres_url {
        let db = SqlServer::<Postgres>::open(&server(url)).await.map_err(failed("postgres"))?;
        out.push(inserts("PostgreSQL INSERT", &db, Server::Postgres(url), options, &tag).await?);
    }
    if let Some(url) = &options.mysql_url {
        let db = SqlServer::<MySql>::open(&server(url)).await.map_err(failed("mysql"))?;
        out.push(inserts("MariaDB/MySQL INSERT", &db, Server::MySql(url), options, &tag).await?);
    }
    out.push(indexing(options).await?);
    Ok(out)
}

fn server(url: &str) -> SqlServerConfig {
    SqlServerConfig { timeout_ms: 10_000, ..SqlServerConfig::new(url) }
}

async fn redis_set(url: &str, options: &EffectsOptions, tag: &str) -> Result<Comparison, EffectsBenchError> {
    let prefix = format!("bench:{tag}:");
    let client = ::redis::Client::open(url).map_err(|e| failed("redis")(BackendError::Invalid(e.to_string())))?;
    let conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| failed("redis")(BackendError::Unavailable(e.to_string())))?;
    let value = vec![b'x'; 100];

    // One awaited round trip per message.
    let mut single = conn.clone();
    let started = Instant::now();
    for i in 0..options.single_ops {
        ::redis::cmd("SET")
            .arg(format!("{prefix}s{i}"))
            .arg(&value)
            .query_async::<()>(&mut single)
            .await
            .map_err(|e| failed("redis SET")(BackendError::Unavailable(e.to_string())))?;
    }
    let one_by_one = rate(options.single_ops, started);

    // Concurrent callers on one multiplexed connection, which pipelines by itself.
    let multiplexed = concurrently(options.ops, options.concurrency, |i| {
        let (mut conn, key, value) = (conn.clone(), format!("{prefix}m{i}"), value.clone());
        async move {
            ::redis::cmd("SET")
                .arg(key)
                .arg(value)
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| BackendError::Unavailable(e.to_string()))
        }
    })
    .await
    .map_err(failed("redis multiplexed SET"))?;

    // The backend: concurrent callers group-committed into explicit pipelines.
    let cache = RedisCache::open(url, &prefix, std::time::Duration::from_secs(10)).await.map_err(failed("redis"))?;
    let pipelined = concurrently(options.ops, options.concurrency, |i| {
        let (cache, value) = (&cache, value.clone());
        async move { cache.set(&format!("p{i}"), value, None).await }
    })
    .await
    .map_err(failed("redis backend SET"))?;

    let mut cleanup = conn.clone();
    let keys: Vec<String> =
        ::redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut cleanup).await.unwrap_or_default();
    for chunk in keys.chunks(1000) {
        let _ = ::redis::cmd("DEL").arg(chunk).query_async::<i64>(&mut cleanup).await;
    }
    Ok(Comparison {
        workload: "Redis SET".into(),
        rates: vec![
            ("one awaited round trip per message".into(), one_by_one),
            (format!("{} callers, multiplexed connection's own pipelining", options.concurrency), multiplexed),
            (format!("backend: {} callers, group commit into pipelines", options.concurrency), pipelined),
        ],
    })
}

/// A database server, by its URL.
enum Server<'a> {
    Postgres(&'a str),
    MySql(&'a str),
}

/// What a typical hand-written consumer does: one connection, one
/// autocommit single-row INSERT per message, awaited before the next.
async fn single_rows(server: &Server<'_>, table: &str, n: usize) -> Result<f64, sqlx::Error> {
    use sqlx::Connection;
    let started = Instant::now();
    match server {
        Server::Postgres(url) => {
            let mut conn = sqlx::PgConnection::connect(url).await?;
            let insert = format!("INSERT INTO {table} (id, v) VALUES ($1, $2)");
            for i in 0..n {
                sqlx::query(&insert).bind(i as i64).bind(format!("value {i}")).execute(&mut conn).await?;
            }
        }
        Server::MySql(url) => {
            let mut conn = sqlx::MySqlConnection::connect(url).await?;
            let insert = format!("INSERT INTO {table} (id, v) VALUES (?, ?)");
            for i in 0..n {
                sqlx::query(&insert).bind(i as i64).bind(format!("value {i}")).execute(&mut conn).await?;
            }
        }
    }
    Ok(rate(n, started))
}

async fn inserts(
    workload: &str,
    db: &dyn DbBackend,
    server: Server<'_>,
    options: &EffectsOptions,
    tag: &str,
) -> Result<Comparison, EffectsBenchError> {
    let placeholders = match server {
        Server::Postgres(_) => "$1, $2",
        Server::MySql(_) => "?, ?",
    };
    let table = format!("bench_{tag}");
    let create = format!("CREATE TABLE {table} (id BIGINT PRIMARY KEY, v VARCHAR(100) NOT NULL)");
    db.execute(&create, Vec::new()).await.map_err(failed("create the benchmark table"))?;
    let insert = format!("INSERT INTO {table} (id, v) VALUES ({placeholders})");
    let row = |i: usize| vec![Value::Int(i as i64), Value::Text(format!("value {i}"))];

    let single = single_rows(&server, &table, options.single_ops)
        .await
        .map_err(|e| failed("single-row INSERT")(BackendError::Unavailable(e.to_string())))?;

    let offset = options.single_ops;
    let batched = concurrently(options.ops, options.concurrency, |i| {
        let (insert, params) = (insert.clone(), row(offset + i));
        async move { db.execute(&insert, params).await.map(|_| ()) }
    })
    .await
    .map_err(failed("coalesced INSERT"))?;
    let count = db.query(&format!("SELECT count(*) FROM {table}"), Vec::new()).await.map_err(failed("count"))?;
    let _ = db.execute(&format!("DROP TABLE {table}"), Vec::new()).await;
    let expected = Value::Int((options.single_ops + options.ops) as i64);
    if count.rows.first().and_then(|r| r.first()) != Some(&expected) {
        return Err(failed("count")(BackendError::Invalid(format!(
            "expected {expected:?} rows, found {:?}",
            count.rows
        ))));
    }
    Ok(Comparison {
        workload: workload.into(),
        rates: vec![
            ("one row per statement, autocommit".into(), single),
            (format!("{} callers, coalesced multi-row, group commit", options.concurrency), batched),
        ],
    })
}

async fn indexing(options: &EffectsOptions) -> Result<Comparison, EffectsBenchError> {
    let dir = tempfile::tempdir().map_err(|e| failed("temp dir")(BackendError::Unavailable(e.to_string())))?;
    let search = Arc::new(TantivySearch::open(dir.path()).map_err(failed("tantivy"))?);
    let document = |i: usize| {
        let mut doc = serde_json::Map::new();
        doc.insert("title".into(), format!("document {i} about widgets").into());
        doc.insert("n".into(), i.into());
        doc
    };
    // A commit per document is slow: a tenth (and a twentieth) of the counts.
    let (ops, single_ops) = (options.ops.div_ceil(10), options.single_ops.div_ceil(20));
    let started = Instant::now();
    for i in 0..single_ops {
        search.index("bench", &format!("s{i}"), document(i)).await.map_err(failed("tantivy single index"))?;
    }
    let single = rate(single_ops, started);
    let batched = concurrently(ops, options.concurrency, |i| {
        let search = search.clone();
        async move { search.index("bench", &format!("b{i}"), document(i)).await }
    })
    .await
    .map_err(failed("tantivy batched index"))?;
    Ok(Comparison {
        workload: "search indexing (Tantivy, embedded)".into(),
        rates: vec![
            ("one document per call, committed".into(), single),
            (format!("{} callers, group commit", options.concurrency), batched),
        ],
    })
}
