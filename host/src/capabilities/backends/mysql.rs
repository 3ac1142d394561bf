//! The MySQL and MariaDB db backend, through a sqlx pool.
//!
//! Writes from handlers running at the same time are group-committed: one
//! transaction per batch, a savepoint per caller, and single-row inserts into
//! the same table and columns coalesced into multi-row statements (see
//! [`super::sql`]). Reads go straight to the pool. Parameters bind to `?`.
//! Sessions run in UTC, so timestamps mean the same to every handler.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::TryFutureExt;
use futures::future::BoxFuture;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::types::time::{OffsetDateTime, PrimitiveDateTime};
use sqlx::{Column, MySql, MySqlConnection, Row, TypeInfo, ValueRef};

use super::BackendError;
use super::batch::Batcher;
use super::postgres::{micros, timestamp};
use super::sql::{self, Placeholders, Planner, ServerOptions, SqlConnection, Statement1};
use crate::capabilities::db::{Begun, DbBackend, DbTransaction, InboxKey, InboxOutcome, SqlDialect};
use crate::capabilities::publish::Publisher;
use crate::runtime::bindings::db::{RowSet, Value};
use crate::runtime::bindings::publish::Outgoing;

/// The `mysql` db backend (MySQL and MariaDB).
pub struct MySqlDb {
    pool: MySqlPool,
    writer: Batcher<Statement1, u64>,
}

impl MySqlDb {
    /// The config `type` that selects it.
    pub const TYPE: &'static str = "mysql";

    /// Connect to `url` and run the `init` statements in order.
    pub async fn open(url: &str, options: &ServerOptions) -> Result<Self, BackendError> {
        let connect: MySqlConnectOptions =
            url.parse().map_err(|e| BackendError::Invalid(format!("mysql url {}: {e}", sql::redact(url))))?;
        let connect = connect.timezone(Some("+00:00".to_string()));
        let address = format!("mysql at {}", sql::redact(url));
        let pool = MySqlPoolOptions::new()
            // READ COMMITTED, as PostgreSQL's default: under InnoDB's
            // REPEATABLE READ the outbox relay's `FOR UPDATE SKIP LOCKED`
            // would also lock the gap after the last row, holding up every
            // commit that adds to the outbox while the relay publishes.
            .after_connect(|conn, _| {
                Box::pin(async move {
                    SqlConnection::run(conn, "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED", &[])
                        .await
                        .map(drop)
                })
            })
            .max_connections(options.max_connections)
            .acquire_timeout(Duration::from_millis(options.timeout_ms))
            .connect_with(connect)
            .await
            .map_err(|e| BackendError::Unavailable(format!("cannot connect to {address}: {e}")))?;
        for statement in &options.init {
            sqlx::raw_sql(statement)
                .execute(&pool)
                .await
                .map_err(|e| BackendError::Invalid(format!("{address}: init statement {statement:?} failed: {e}")))?;
        }
        let planner = Arc::new(Mutex::new(Planner::new(Placeholders::Question)));
        let writer_pool = pool.clone();
        let writer = Batcher::spawn("mysql writer", options.max_batch, move |batch| {
            sql::write("mysql", writer_pool.clone(), planner.clone(), batch)
        });
        Ok(Self { pool, writer })
    }
}

impl SqlConnection for MySqlConnection {
    fn run<'a>(&'a mut self, sql: &'a str, params: &'a [Value]) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
        // Statements without parameters (savepoints among them, which not
        // every server can prepare) go over the simple-query protocol.
        if params.is_empty() {
            return Box::pin(sqlx::Executor::execute(self, sqlx::raw_sql(sql)).map_ok(|r| r.rows_affected()));
        }
        match bind(sqlx::query(sql), params) {
            Ok(query) => Box::pin(query.execute(self).map_ok(|r| r.rows_affected())),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}

type MyQuery<'q> = sqlx::query::Query<'q, MySql, sqlx::mysql::MySqlArguments>;

fn bind<'q>(mut query: MyQuery<'q>, params: &[Value]) -> Result<MyQuery<'q>, sqlx::Error> {
    for p in params {
        query = match p {
            Value::Null => query.bind(None::<i64>),
            Value::Boolean(b) => query.bind(*b),
            Value::Int(i) => query.bind(*i),
            Value::Float(f) => query.bind(*f),
            // A JSON column takes JSON as text; MariaDB's JSON is text anyway.
            Value::Text(s) | Value::Json(s) => query.bind(s.clone()),
            Value::Bytes(b) => query.bind(b.clone()),
            Value::Timestamp(us) => {
                let t = timestamp(*us)?;
                query.bind(PrimitiveDateTime::new(t.date(), t.time()))
            }
        };
    }
    Ok(query)
}

fn decode(row: &MySqlRow, i: usize) -> Result<Value, sqlx::Error> {
    let raw = row.try_get_raw(i)?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let type_name = raw.type_info().name().to_string();
    let unsigned = |n: u64| {
        i64::try_from(n)
            .map(Value::Int)
            .map_err(|_| sqlx::Error::Decode(format!("unsigned value {n} does not fit in 64 signed bits").into()))
    };
    Ok(match type_name.as_str() {
        "BOOLEAN" => Value::Boolean(row.try_get(i)?),
        "TINYINT" => Value::Int(row.try_get::<i8, _>(i)?.into()),
        "SMALLINT" => Value::Int(row.try_get::<i16, _>(i)?.into()),
        "INT" | "MEDIUMINT" => Value::Int(row.try_get::<i32, _>(i)?.into()),
        "BIGINT" => Value::Int(row.try_get(i)?),
        "TINYINT UNSIGNED" => Value::Int(row.try_get::<u8, _>(i)?.into()),
        "SMALLINT UNSIGNED" => Value::Int(row.try_get::<u16, _>(i)?.into()),
        "INT UNSIGNED" | "MEDIUMINT UNSIGNED" => Value::Int(row.try_get::<u32, _>(i)?.into()),
        "BIGINT UNSIGNED" => unsigned(row.try_get(i)?)?,
        "YEAR" => Value::Int(row.try_get::<u16, _>(i)?.into()),
        "FLOAT" => Value::Float(row.try_get::<f32, _>(i)?.into()),
        "DOUBLE" => Value::Float(row.try_get(i)?),
        // DECIMAL arrives as its text.
        "DECIMAL" => {
            let text: String = row.try_get_unchecked(i)?;
            Value::Float(text.parse().map_err(|e| sqlx::Error::Decode(format!("DECIMAL {text:?}: {e}").into()))?)
        }
        "JSON" => Value::Json(row.try_get_unchecked(i)?),
        "CHAR" | "VARCHAR" | "TINYTEXT" | "TEXT" | "MEDIUMTEXT" | "LONGTEXT" | "ENUM" | "SET" => {
            Value::Text(row.try_get_unchecked(i)?)
        }
        "BINARY" | "VARBINARY" | "TINYBLOB" | "BLOB" | "MEDIUMBLOB" | "LONGBLOB" | "BIT" => {
            Value::Bytes(row.try_get(i)?)
        }
        "DATETIME" => Value::Timestamp(micros(row.try_get::<PrimitiveDateTime, _>(i)?.assume_utc())?),
        "TIMESTAMP" => Value::Timestamp(micros(row.try_get::<OffsetDateTime, _>(i)?)?),
        "DATE" => Value::Timestamp(micros(row.try_get::<sqlx::types::time::Date, _>(i)?.midnight().assume_utc())?),
        other => {
            return Err(sqlx::Error::Decode(
                format!(
                    "column {:?} has type {other}, which has no db value; cast it in the query",
                    row.column(i).name()
                )
                .into(),
            ));
        }
    })
}

fn rows(rows: Vec<MySqlRow>) -> Result<RowSet, sqlx::Error> {
    let columns = match rows.first() {
        Some(row) => row.columns().iter().map(|c| c.name().to_string()).collect(),
        None => Vec::new(),
    };
    let rows = rows
        .iter()
        .map(|row| (0..row.len()).map(|i| decode(row, i)).collect::<Result<Vec<_>, _>>())
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RowSet { columns, rows })
}

#[async_trait]
impl DbBackend for MySqlDb {
    fn dialect(&self) -> SqlDialect {
        SqlDialect::MySql
    }

    async fn execute(&self, sql: &str, params: Vec<Value>) -> Result<u64, BackendError> {
        self.writer.call((sql.to_string(), params)).await
    }

    async fn query(&self, sql: &str, params: Vec<Value>) -> Result<RowSet, BackendError> {
        let classify = |e| sql::classify("mysql", e);
        let fetched =
            bind(sqlx::query(sql), &params).map_err(classify)?.fetch_all(&self.pool).await.map_err(classify)?;
        rows(fetched).map_err(classify)
    }

    async fn prepare_transactions(&self) -> Result<(), BackendError> {
        for ddl in sql::transaction_tables(Placeholders::Question) {
            sqlx::raw_sql(ddl).execute(&self.pool).await.map_err(|e| sql::classify("mysql", e))?;
        }
        Ok(())
    }

    async fn begin(&self, inbox: &InboxKey) -> Result<Begun, BackendError> {
        let classify = |e| sql::classify("mysql", e);
        let settled: Option<String> = sqlx::query_scalar(sql::InboxStatements::of(Placeholders::Question).lookup)
            .bind(&inbox.route)
            .bind(&inbox.message)
            .fetch_optional(&self.pool)
            .await
            .map_err(classify)?;
        if let Some(outcome) = settled {
            return Ok(Begun::Settled(InboxOutcome::parse(&outcome)));
        }
        let tx = self.pool.begin().await.map_err(classify)?;
        Ok(Begun::Transaction(Box::new(MySqlTransaction(tx))))
    }

    async fn relay(&self, publisher: &dyn Publisher, limit: usize) -> Result<usize, BackendError> {
        let classify = |e| sql::classify("mysql", e);
        let mut tx = self.pool.begin().await.map_err(classify)?;
        let claim = sql::CLAIM_OUTBOX.replace("{limit}", &limit.to_string());
        let rows: Vec<sql::OutboxRow> = sqlx::query_as(&claim).fetch_all(&mut *tx).await.map_err(classify)?;
        let sent = sql::send_claimed("mysql", &mut *tx, Placeholders::Question, rows, publisher).await?;
        if sent > 0 {
            tx.commit().await.map_err(classify)?;
        }
        Ok(sent)
    }
}

/// The open transaction of one invocation.
struct MySqlTransaction(sqlx::Transaction<'static, MySql>);

#[async_trait]
impl DbTransaction for MySqlTransaction {
    async fn execute(&mut self, sql: &str, params: Vec<Value>) -> Result<u64, BackendError> {
        SqlConnection::run(&mut *self.0, sql, &params).await.map_err(|e| sql::classify("mysql", e))
    }

    async fn query(&mut self, sql: &str, params: Vec<Value>) -> Result<RowSet, BackendError> {
        let classify = |e| sql::classify("mysql", e);
        let fetched =
            bind(sqlx::query(sql), &params).map_err(classify)?.fetch_all(&mut *self.0).await.map_err(classify)?;
        rows(fetched).map_err(classify)
    }

    async fn commit(
        mut self: Box<Self>,
        inbox: &InboxKey,
        outcome: InboxOutcome,
        outbox: &[Outgoing],
    ) -> Result<bool, BackendError> {
        if !sql::record_settlement("mysql", &mut *self.0, Placeholders::Question, inbox, outcome, outbox).await? {
            return Ok(false);
        }
        self.0.commit().await.map_err(|e| sql::classify("mysql", e))?;
        Ok(true)
    }
}
