//! The embedded database: one SQLite file in WAL mode, through sqlx.
//!
//! Writes from handlers running at the same time are group-committed: each
//! batch runs in one transaction, every statement in its own savepoint so one
//! failing statement fails only its own caller, and one `fsync` makes the
//! whole batch durable. Reads go straight to a pool of reader connections.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Column, Row, TypeInfo, ValueRef};

use super::batch::Batcher;
use crate::contract::bindings::db::{RowSet, Value};
use crate::contract::db::{DbBackend, SqlDialect};
use crate::contract::errors::BackendError;

type Statement = (String, Vec<Value>);

/// The `sqlite` db backend.
pub struct SqliteDb {
    readers: SqlitePool,
    writer: Batcher<Statement, u64>,
}

impl SqliteDb {
    /// The config `type` that selects it.
    pub const TYPE: &'static str = "sqlite";

    /// Open (creating if needed) the database at `path` and run the `init`
    /// statements in order.
    pub async fn open(path: &Path, init: &[String]) -> Result<Self, BackendError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                BackendError::Unavailable(format!("cannot create directory {} for sqlite: {e}", dir.display()))
            })?;
        }
        let options = SqliteConnectOptions::from_str("sqlite:")
            .map_err(|e| BackendError::Invalid(e.to_string()))?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5));
        let unavailable = |e: sqlx::Error| BackendError::Unavailable(format!("sqlite {}: {e}", path.display()));
        let writer_pool =
            SqlitePoolOptions::new().max_connections(1).connect_with(options.clone()).await.map_err(unavailable)?;
        for statement in init {
            sqlx::query(statement)
                .execute(&writer_pool)
                .await
                .map_err(|e| BackendError::Invalid(format!("sqlite init statement {statement:?} failed: {e}")))?;
        }
        let readers = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await
            .map_err(unavailable)?;
        let writer = Batcher::spawn("sqlite writer", 256, move |batch| {
            let pool = writer_pool.clone();
            let applied: std::pin::Pin<Box<dyn Future<Output = _> + Send>> = Box::pin(apply(pool, batch));
            applied
        });
        Ok(Self { readers, writer })
    }
}

/// Run a batch of statements in one transaction, each in its own savepoint.
async fn apply(pool: SqlitePool, batch: Vec<Statement>) -> Vec<Result<u64, BackendError>> {
    let count = batch.len();
    let mut tx = match pool.begin().await {
        Ok(tx) => tx,
        Err(e) => return fail_all(count, e),
    };
    let mut results = Vec::with_capacity(count);
    for (sql, params) in batch {
        if let Err(e) = sqlx::query("SAVEPOINT op").execute(&mut *tx).await {
            return fail_all(count, e);
        }
        let conn: &mut sqlx::SqliteConnection = &mut tx;
        let result = bind(sqlx::query(&sql), params).execute(conn).await;
        if result.is_err()
            && let Err(e) = sqlx::query("ROLLBACK TO op").execute(&mut *tx).await
        {
            return fail_all(count, e);
        }
        if let Err(e) = sqlx::query("RELEASE op").execute(&mut *tx).await {
            return fail_all(count, e);
        }
        results.push(result.map(|r| r.rows_affected()).map_err(classify));
    }
    match tx.commit().await {
        Ok(()) => results,
        Err(e) => fail_all(count, e),
    }
}

fn fail_all(count: usize, e: sqlx::Error) -> Vec<Result<u64, BackendError>> {
    vec![Err(BackendError::Unavailable(format!("sqlite: {e}"))); count]
}

fn bind<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    params: Vec<Value>,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    for p in params {
        query = match p {
            Value::Null => query.bind(None::<i64>),
            Value::Boolean(b) => query.bind(b),
            Value::Int(i) => query.bind(i),
            Value::Float(f) => query.bind(f),
            Value::Text(s) | Value::Json(s) => query.bind(s),
            Value::Bytes(b) => query.bind(b),
            // SQLite has no timestamp type: microseconds since the epoch.
            Value::Timestamp(us) => query.bind(us),
        };
    }
    query
}

/// A statement's own fault (syntax, constraint, type) is `invalid`; anything
/// else is the database's and worth a retry.
fn classify(e: sqlx::Error) -> BackendError {
    match e {
        sqlx::Error::Database(db) if !db.message().contains("locked") && !db.message().contains("busy") => {
            BackendError::Invalid(format!("sqlite: {}", db.message()))
        }
        other => BackendError::Unavailable(format!("sqlite: {other}")),
    }
}

fn decode(row: &SqliteRow, i: usize) -> Result<Value, sqlx::Error> {
    let raw = row.try_get_raw(i)?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let type_name = raw.type_info().name().to_ascii_uppercase();
    Ok(match type_name.as_str() {
        "INTEGER" | "BOOLEAN" | "INT" | "BIGINT" => Value::Int(row.try_get(i)?),
        "REAL" | "FLOAT" | "DOUBLE" | "NUMERIC" => Value::Float(row.try_get(i)?),
        "BLOB" => Value::Bytes(row.try_get(i)?),
        _ => Value::Text(row.try_get(i)?),
    })
}

#[async_trait]
impl DbBackend for SqliteDb {
    fn dialect(&self) -> SqlDialect {
        SqlDialect::Sqlite
    }

    async fn execute(&self, sql: &str, params: Vec<Value>) -> Result<u64, BackendError> {
        self.writer.call((sql.to_string(), params)).await
    }

    async fn query(&self, sql: &str, params: Vec<Value>) -> Result<RowSet, BackendError> {
        let rows = bind(sqlx::query(sql), params).fetch_all(&self.readers).await.map_err(classify)?;
        let columns = match rows.first() {
            Some(row) => row.columns().iter().map(|c| c.name().to_string()).collect(),
            None => Vec::new(),
        };
        let rows = rows
            .iter()
            .map(|row| (0..row.len()).map(|i| decode(row, i)).collect::<Result<Vec<_>, _>>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(classify)?;
        Ok(RowSet { columns, rows })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_are_durable_and_failures_stay_with_their_statement() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let db = SqliteDb::open(
            &path,
            &["CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL, score REAL, data BLOB)".into()],
        )
        .await
        .unwrap();
        let insert = "INSERT INTO t (id, name, score, data) VALUES (?, ?, ?, ?)";
        let calls: Vec<_> = (0..50i64)
            .map(|i| {
                // Every tenth statement violates NOT NULL.
                let name = if i % 10 == 3 { Value::Null } else { Value::Text(format!("n{i}")) };
                db.execute(insert, vec![Value::Int(i), name, Value::Float(i as f64 / 2.0), Value::Bytes(vec![i as u8])])
            })
            .collect();
        let results = futures::future::join_all(calls).await;
        for (i, r) in results.iter().enumerate() {
            if i % 10 == 3 {
                assert!(matches!(r, Err(BackendError::Invalid(m)) if m.contains("NOT NULL")), "{r:?}");
            } else {
                assert_eq!(r, &Ok(1));
            }
        }
        drop(db);
        // Read back through a fresh connection, not through the backend.
        let pool = SqlitePool::connect(&format!("sqlite:{}", path.display())).await.unwrap();
        let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM t").fetch_one(&pool).await.unwrap();
        assert_eq!(count, 45);
    }

    #[tokio::test]
    async fn query_returns_typed_rows() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open(
            &dir.path().join("q.db"),
            &["CREATE TABLE q (i INTEGER, f REAL, s TEXT, b BLOB, n TEXT)".into()],
        )
        .await
        .unwrap();
        db.execute(
            "INSERT INTO q VALUES (?, ?, ?, ?, ?)",
            vec![Value::Int(7), Value::Float(1.5), Value::Text("x".into()), Value::Bytes(vec![1, 2]), Value::Null],
        )
        .await
        .unwrap();
        let rows = db.query("SELECT i, f, s, b, n FROM q WHERE i = ?", vec![Value::Int(7)]).await.unwrap();
        assert_eq!(rows.columns, ["i", "f", "s", "b", "n"]);
        assert_eq!(
            rows.rows,
            vec![vec![
                Value::Int(7),
                Value::Float(1.5),
                Value::Text("x".into()),
                Value::Bytes(vec![1, 2]),
                Value::Null
            ]]
        );
        assert!(matches!(db.query("SELECT nope FROM q", vec![]).await, Err(BackendError::Invalid(_))));
    }
}
