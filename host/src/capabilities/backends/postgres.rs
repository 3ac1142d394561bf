//! The PostgreSQL db backend, through a sqlx pool.
//!
//! Writes from handlers running at the same time are group-committed: one
//! transaction per batch, a savepoint per caller, and single-row inserts into
//! the same table and columns coalesced into multi-row statements (see
//! [`super::sql`]). Reads go straight to the pool. Parameters bind to `$1,
//! $2, ...`; `?` placeholders are numbered in order, so a handler written for
//! SQLite or MySQL runs here unchanged.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::TryFutureExt;
use futures::future::BoxFuture;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow, PgTypeInfo, PgValueRef};
use sqlx::types::time::{OffsetDateTime, PrimitiveDateTime};
use sqlx::{Column, PgConnection, Postgres, Row, TypeInfo, ValueRef};

use super::BackendError;
use super::batch::Batcher;
use super::sql::{self, Placeholders, Planner, ServerOptions, SqlConnection, Statement1};
use crate::capabilities::db::{Begun, DbBackend, DbTransaction, InboxKey, InboxOutcome, SqlDialect};
use crate::capabilities::publish::Publisher;
use crate::runtime::bindings::db::{RowSet, Value};
use crate::runtime::bindings::publish::Outgoing;

/// The `postgres` db backend.
pub struct PostgresDb {
    pool: PgPool,
    writer: Batcher<Statement1, u64>,
}

impl PostgresDb {
    /// The config `type` that selects it.
    pub const TYPE: &'static str = "postgres";

    /// Connect to `url` and run the `init` statements in order.
    pub async fn open(url: &str, options: &ServerOptions) -> Result<Self, BackendError> {
        let connect: PgConnectOptions =
            url.parse().map_err(|e| BackendError::Invalid(format!("postgres url {}: {e}", sql::redact(url))))?;
        // Unqualified names resolve in `public` only, whatever the server's
        // default; handlers cannot change it (`SET` and `set_config` are not
        // granted), so an unqualified name cannot reach another schema.
        let connect = connect.options([("search_path", "public"), ("TimeZone", "UTC")]);
        let address = format!("postgres at {}:{}", connect.get_host(), connect.get_port());
        let pool = PgPoolOptions::new()
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
        let planner = Arc::new(Mutex::new(Planner::new(Placeholders::Numbered)));
        let writer_pool = pool.clone();
        let writer = Batcher::spawn("postgres writer", options.max_batch, move |batch| {
            sql::write("postgres", writer_pool.clone(), planner.clone(), batch)
        });
        Ok(Self { pool, writer })
    }
}

impl SqlConnection for PgConnection {
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

/// A NULL whose type the server infers from where it is used, so a null
/// binds to a column of any type.
struct UntypedNull;

impl sqlx::Type<Postgres> for UntypedNull {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(sqlx::postgres::types::Oid(0))
    }
}

impl sqlx::Encode<'_, Postgres> for UntypedNull {
    fn encode_by_ref(
        &self,
        _: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        Ok(sqlx::encode::IsNull::Yes)
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

fn bind<'q>(mut query: PgQuery<'q>, params: &[Value]) -> Result<PgQuery<'q>, sqlx::Error> {
    for p in params {
        query = match p {
            Value::Null => query.bind(None::<UntypedNull>),
            Value::Boolean(b) => query.bind(*b),
            Value::Int(i) => query.bind(*i),
            Value::Float(f) => query.bind(*f),
            Value::Text(s) => query.bind(s.clone()),
            Value::Bytes(b) => query.bind(b.clone()),
            Value::Json(text) => {
                let json: serde_json::Value = serde_json::from_str(text)
                    .map_err(|e| sqlx::Error::Encode(format!("json parameter is not JSON: {e}").into()))?;
                query.bind(sqlx::types::Json(json))
            }
            Value::Timestamp(us) => query.bind(timestamp(*us)?),
        };
    }
    Ok(query)
}

/// Microseconds since the epoch as a UTC time.
pub(crate) fn timestamp(us: i64) -> Result<OffsetDateTime, sqlx::Error> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .map_err(|e| sqlx::Error::Encode(format!("timestamp {us} µs is out of range: {e}").into()))
}

/// A UTC time as microseconds since the epoch.
pub(crate) fn micros(t: OffsetDateTime) -> Result<i64, sqlx::Error> {
    i64::try_from(t.unix_timestamp_nanos() / 1000)
        .map_err(|_| sqlx::Error::Decode(format!("timestamp {t} is out of range").into()))
}

fn decode(row: &PgRow, i: usize) -> Result<Value, sqlx::Error> {
    let raw = row.try_get_raw(i)?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let type_name = raw.type_info().name().to_string();
    Ok(match type_name.as_str() {
        "BOOL" => Value::Boolean(row.try_get(i)?),
        "INT2" => Value::Int(row.try_get::<i16, _>(i)?.into()),
        "INT4" => Value::Int(row.try_get::<i32, _>(i)?.into()),
        "INT8" => Value::Int(row.try_get(i)?),
        "OID" => Value::Int(row.try_get::<sqlx::postgres::types::Oid, _>(i)?.0.into()),
        "FLOAT4" => Value::Float(row.try_get::<f32, _>(i)?.into()),
        "FLOAT8" => Value::Float(row.try_get(i)?),
        "NUMERIC" => Value::Float(numeric(raw)?),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" | "UNKNOWN" => Value::Text(row.try_get(i)?),
        "BYTEA" => Value::Bytes(row.try_get(i)?),
        "JSON" | "JSONB" => Value::Json(row.try_get::<sqlx::types::JsonValue, _>(i)?.to_string()),
        "TIMESTAMPTZ" => Value::Timestamp(micros(row.try_get(i)?)?),
        "TIMESTAMP" => Value::Timestamp(micros(row.try_get::<PrimitiveDateTime, _>(i)?.assume_utc())?),
        "DATE" => Value::Timestamp(micros(row.try_get::<sqlx::types::time::Date, _>(i)?.midnight().assume_utc())?),
        other => {
            return Err(sqlx::Error::Decode(
                format!(
                    "column {:?} has type {other}, which has no db value; cast it in the query, e.g. to text",
                    row.column(i).name()
                )
                .into(),
            ));
        }
    })
}

/// A NUMERIC in PostgreSQL's binary form (base-10000 digits) as a float.
fn numeric(raw: PgValueRef<'_>) -> Result<f64, sqlx::Error> {
    let bytes = raw.as_bytes().map_err(sqlx::Error::Decode)?;
    let word = |i: usize| -> Result<i16, sqlx::Error> {
        bytes
            .get(i * 2..i * 2 + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| sqlx::Error::Decode("truncated NUMERIC".into()))
    };
    let (ndigits, weight, sign) = (word(0)?, word(1)?, word(2)? as u16);
    if sign == 0xC000 {
        return Ok(f64::NAN);
    }
    let mut value = 0.0f64;
    for d in 0..ndigits.max(0) as usize {
        value += f64::from(word(4 + d)?) * 10000f64.powi(i32::from(weight) - d as i32);
    }
    Ok(if sign == 0x4000 { -value } else { value })
}

fn rows(rows: Vec<PgRow>) -> Result<RowSet, sqlx::Error> {
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
impl DbBackend for PostgresDb {
    fn dialect(&self) -> SqlDialect {
        SqlDialect::Postgres
    }

    async fn execute(&self, sql: &str, params: Vec<Value>) -> Result<u64, BackendError> {
        let sql = sql::number_question_marks(sql);
        self.writer.call((sql, params)).await
    }

    async fn query(&self, sql: &str, params: Vec<Value>) -> Result<RowSet, BackendError> {
        let sql = sql::number_question_marks(sql);
        let classify = |e| sql::classify("postgres", e);
        let fetched =
            bind(sqlx::query(&sql), &params).map_err(classify)?.fetch_all(&self.pool).await.map_err(classify)?;
        rows(fetched).map_err(classify)
    }

    async fn prepare_transactions(&self) -> Result<(), BackendError> {
        for ddl in sql::transaction_tables(Placeholders::Numbered) {
            sqlx::raw_sql(ddl).execute(&self.pool).await.map_err(|e| sql::classify("postgres", e))?;
        }
        Ok(())
    }

    async fn begin(&self, inbox: &InboxKey) -> Result<Begun, BackendError> {
        let classify = |e| sql::classify("postgres", e);
        let settled: Option<String> = sqlx::query_scalar(sql::InboxStatements::of(Placeholders::Numbered).lookup)
            .bind(&inbox.route)
            .bind(&inbox.message)
            .fetch_optional(&self.pool)
            .await
            .map_err(classify)?;
        if let Some(outcome) = settled {
            return Ok(Begun::Settled(InboxOutcome::parse(&outcome)));
        }
        let tx = self.pool.begin().await.map_err(classify)?;
        Ok(Begun::Transaction(Box::new(PgTransaction(tx))))
    }

    async fn relay(&self, publisher: &dyn Publisher, limit: usize) -> Result<usize, BackendError> {
        let classify = |e| sql::classify("postgres", e);
        let mut tx = self.pool.begin().await.map_err(classify)?;
        let claim = sql::CLAIM_OUTBOX.replace("{limit}", &limit.to_string());
        let rows: Vec<sql::OutboxRow> = sqlx::query_as(&claim).fetch_all(&mut *tx).await.map_err(classify)?;
        let sent = sql::send_claimed("postgres", &mut *tx, Placeholders::Numbered, rows, publisher).await?;
        if sent > 0 {
            tx.commit().await.map_err(classify)?;
        }
        Ok(sent)
    }
}

/// The open transaction of one invocation.
struct PgTransaction(sqlx::Transaction<'static, Postgres>);

#[async_trait]
impl DbTransaction for PgTransaction {
    async fn execute(&mut self, sql: &str, params: Vec<Value>) -> Result<u64, BackendError> {
        let sql = sql::number_question_marks(sql);
        SqlConnection::run(&mut *self.0, &sql, &params).await.map_err(|e| sql::classify("postgres", e))
    }

    async fn query(&mut self, sql: &str, params: Vec<Value>) -> Result<RowSet, BackendError> {
        let sql = sql::number_question_marks(sql);
        let classify = |e| sql::classify("postgres", e);
        let fetched =
            bind(sqlx::query(&sql), &params).map_err(classify)?.fetch_all(&mut *self.0).await.map_err(classify)?;
        rows(fetched).map_err(classify)
    }

    async fn commit(
        mut self: Box<Self>,
        inbox: &InboxKey,
        outcome: InboxOutcome,
        outbox: &[Outgoing],
    ) -> Result<bool, BackendError> {
        if !sql::record_settlement("postgres", &mut *self.0, Placeholders::Numbered, inbox, outcome, outbox).await? {
            return Ok(false);
        }
        self.0.commit().await.map_err(|e| sql::classify("postgres", e))?;
        Ok(true)
    }
}
