//! The PostgreSQL and MySQL/MariaDB db backend: one implementation over a
//! sqlx pool, generic over a [`Dialect`] that holds what the two servers do
//! differently (connecting and the session setup, binding and decoding
//! values, placeholders, the inbox and outbox statements).
//!
//! Writes from handlers running at the same time are group-committed: one
//! transaction per batch, a savepoint per caller, and single-row inserts into
//! the same table and columns coalesced into multi-row statements (see
//! [`super::plan`]). Reads go straight to the pool.

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::future::BoxFuture;

use super::plan::{Placeholders, Plan, Planner, Statement1, Unit};
use crate::capabilities::backends::batch::Batcher;
use crate::config::SqlServerConfig;
use crate::contract::bindings::db::{RowSet, Value};
use crate::contract::bindings::publish::Outgoing;
use crate::contract::db::{Begun, DbBackend, DbTransaction, InboxKey, InboxOutcome, SqlDialect};
use crate::contract::errors::BackendError;
use crate::contract::headers;
use crate::contract::publish::Publisher;
use crate::contract::util::redact;

/// A connection that can run one statement with typed parameters. Each
/// dialect implements it for its sqlx connection; a transaction is the same
/// connection after `BEGIN`, so several statements of one invocation can run
/// in one transaction through it.
pub trait SqlConnection: Send {
    /// Run `sql` with `params`; rows affected. Without parameters it goes
    /// over the simple-query protocol (savepoints among them, which not
    /// every server can prepare).
    fn run<'a>(&'a mut self, sql: &'a str, params: &'a [Value]) -> BoxFuture<'a, Result<u64, sqlx::Error>>;
    /// Run a query with `params` and return its rows.
    fn fetch<'a>(&'a mut self, sql: &'a str, params: &'a [Value]) -> BoxFuture<'a, Result<RowSet, sqlx::Error>>;
}

/// Implements [`SqlConnection`] for a dialect's sqlx connection from its
/// `bind` (typed parameters onto a query) and `decode` (one column of a row).
macro_rules! sql_connection {
    ($connection:ty, $bind:ident, $decode:ident) => {
        impl SqlConnection for $connection {
            fn run<'a>(&'a mut self, sql: &'a str, params: &'a [Value]) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
                use futures::TryFutureExt;
                if params.is_empty() {
                    return Box::pin(sqlx::Executor::execute(self, sqlx::raw_sql(sql)).map_ok(|r| r.rows_affected()));
                }
                match $bind(sqlx::query(sql), params) {
                    Ok(query) => Box::pin(query.execute(self).map_ok(|r| r.rows_affected())),
                    Err(e) => Box::pin(std::future::ready(Err(e))),
                }
            }

            fn fetch<'a>(
                &'a mut self,
                sql: &'a str,
                params: &'a [Value],
            ) -> BoxFuture<'a, Result<RowSet, sqlx::Error>> {
                match $bind(sqlx::query(sql), params) {
                    Ok(query) => Box::pin(async move {
                        let rows = query.fetch_all(self).await?;
                        let columns = match rows.first() {
                            Some(row) => row.columns().iter().map(|c| c.name().to_string()).collect(),
                            None => Vec::new(),
                        };
                        let rows = rows
                            .iter()
                            .map(|row| (0..row.len()).map(|i| $decode(row, i)).collect::<Result<Vec<_>, _>>())
                            .collect::<Result<Vec<_>, _>>()?;
                        Ok(RowSet { columns, rows })
                    }),
                    Err(e) => Box::pin(std::future::ready(Err(e))),
                }
            }
        }
    };
}
pub(crate) use sql_connection;

/// What PostgreSQL and MySQL do differently.
pub trait Dialect: Send + Sync + 'static {
    /// The sqlx database.
    type Db: sqlx::Database<Connection: SqlConnection>;
    /// The config `type` that selects it, which also names it in errors.
    const TYPE: &'static str;
    /// The dialect the grant checker parses.
    const SQL: SqlDialect;
    /// Its placeholders.
    const PLACEHOLDERS: Placeholders;
    /// The tables and statements of transactional routes, written once per
    /// dialect so no message pays for rewriting placeholders.
    const TRANSACTIONS: &'static TransactionStatements;
    /// Open a pool to `config.url`, every connection set up for handlers.
    fn connect(config: &SqlServerConfig) -> BoxFuture<'_, Result<sqlx::Pool<Self::Db>, BackendError>>;
    /// `sql` as the server runs it.
    fn prepare(sql: String) -> String {
        sql
    }
}

/// The inbox and outbox of transactional routes in one dialect.
pub struct TransactionStatements {
    /// Creates the inbox and the outbox.
    pub tables: [&'static str; 2],
    /// Finds a message's inbox row: its outcome, if any.
    pub lookup: &'static str,
    /// Records a message's outcome.
    pub insert_inbox: &'static str,
    /// Adds one message to the outbox.
    pub insert_outbox: &'static str,
    /// Deletes relayed rows: the statement up to its list of ids.
    pub delete_outbox: &'static str,
}

/// The relay's claim on the oldest outbox rows: locked until its transaction
/// ends, and skipped by any other relay meanwhile.
const CLAIM_OUTBOX: &str = "SELECT id, message_id, destination, payload, headers, msg_key FROM switchyard_outbox \
                            ORDER BY id LIMIT {limit} FOR UPDATE SKIP LOCKED";

/// A PostgreSQL or MySQL/MariaDB db backend.
pub struct SqlServer<D: Dialect> {
    pool: sqlx::Pool<D::Db>,
    writer: Batcher<Statement1, u64>,
    dialect: PhantomData<D>,
}

impl<D: Dialect> SqlServer<D> {
    /// Connect to `config.url` and run the `init` statements in order.
    pub async fn open(config: &SqlServerConfig) -> Result<Self, BackendError> {
        let pool = D::connect(config).await?;
        let address = format!("{} at {}", D::TYPE, redact(&config.url));
        let mut conn = pool.acquire().await.map_err(|e| BackendError::Unavailable(format!("{address}: {e}")))?;
        for statement in &config.init {
            conn.run(statement, &[])
                .await
                .map_err(|e| BackendError::Invalid(format!("{address}: init statement {statement:?} failed: {e}")))?;
        }
        drop(conn);
        let planner = Arc::new(Mutex::new(Planner::new(D::PLACEHOLDERS)));
        let writer_pool = pool.clone();
        let writer = Batcher::spawn(D::TYPE, config.max_batch, move |batch| {
            write::<D>(writer_pool.clone(), planner.clone(), batch)
        });
        Ok(Self { pool, writer, dialect: PhantomData })
    }

    async fn connection(&self) -> Result<sqlx::pool::PoolConnection<D::Db>, BackendError> {
        self.pool.acquire().await.map_err(|e| classify(D::TYPE, e))
    }
}

#[async_trait]
impl<D: Dialect> DbBackend for SqlServer<D> {
    fn dialect(&self) -> SqlDialect {
        D::SQL
    }

    fn prepare(&self, sql: String) -> String {
        D::prepare(sql)
    }

    async fn execute(&self, sql: &str, params: Vec<Value>) -> Result<u64, BackendError> {
        self.writer.call((sql.to_string(), params)).await
    }

    async fn query(&self, sql: &str, params: Vec<Value>) -> Result<RowSet, BackendError> {
        let mut conn = self.connection().await?;
        conn.fetch(sql, &params).await.map_err(|e| classify(D::TYPE, e))
    }

    async fn prepare_transactions(&self) -> Result<(), BackendError> {
        let mut conn = self.connection().await?;
        for ddl in D::TRANSACTIONS.tables {
            conn.run(ddl, &[]).await.map_err(|e| classify(D::TYPE, e))?;
        }
        Ok(())
    }

    async fn begin(&self, inbox: &InboxKey) -> Result<Begun, BackendError> {
        let classify = |e| classify(D::TYPE, e);
        let key = [Value::Text(inbox.route.clone()), Value::Text(inbox.message.clone())];
        let found = self.connection().await?.fetch(D::TRANSACTIONS.lookup, &key).await.map_err(classify)?;
        if let Some(Value::Text(outcome)) = found.rows.first().and_then(|row| row.first()) {
            return Ok(Begun::Settled(InboxOutcome::parse(outcome)));
        }
        let tx = self.pool.begin().await.map_err(classify)?;
        Ok(Begun::Transaction(Box::new(ServerTransaction::<D>(tx))))
    }

    async fn relay(&self, publisher: &dyn Publisher, limit: usize) -> Result<usize, BackendError> {
        let classify = |e| classify(D::TYPE, e);
        let mut tx = self.pool.begin().await.map_err(classify)?;
        let claim = CLAIM_OUTBOX.replace("{limit}", &limit.to_string());
        let claimed = tx.fetch(&claim, &[]).await.map_err(classify)?;
        let sent = send_claimed::<D>(&mut *tx, claimed, publisher).await?;
        if sent > 0 {
            tx.commit().await.map_err(classify)?;
        }
        Ok(sent)
    }
}

/// The open transaction of one invocation.
struct ServerTransaction<D: Dialect>(sqlx::Transaction<'static, D::Db>);

#[async_trait]
impl<D: Dialect> DbTransaction for ServerTransaction<D> {
    async fn execute(&mut self, sql: &str, params: Vec<Value>) -> Result<u64, BackendError> {
        self.0.run(sql, &params).await.map_err(|e| classify(D::TYPE, e))
    }

    async fn query(&mut self, sql: &str, params: Vec<Value>) -> Result<RowSet, BackendError> {
        self.0.fetch(sql, &params).await.map_err(|e| classify(D::TYPE, e))
    }

    async fn commit(
        mut self: Box<Self>,
        inbox: &InboxKey,
        outcome: InboxOutcome,
        outbox: &[Outgoing],
    ) -> Result<bool, BackendError> {
        if !record_settlement::<D>(&mut *self.0, inbox, outcome, outbox).await? {
            return Ok(false);
        }
        self.0.commit().await.map_err(|e| classify(D::TYPE, e))?;
        Ok(true)
    }
}

/// Write one batch of statements on `pool` (the postgres and mysql writers),
/// as few statements as the planner can make of them: on a connection of its
/// own when they became one statement, otherwise in a transaction with a
/// savepoint for each unit of the plan, so a failed one fails only its own
/// statements.
async fn write<D: Dialect>(
    pool: sqlx::Pool<D::Db>,
    planner: Arc<Mutex<Planner>>,
    batch: Vec<Statement1>,
) -> Vec<Result<u64, BackendError>> {
    let backend = D::TYPE;
    let count = batch.len();
    let Ok(plan) = planner.lock().map(|mut p| p.plan(&batch)) else {
        return vec![Err(BackendError::Unavailable(format!("{backend}: planner lock poisoned"))); count];
    };
    let unavailable = |e: sqlx::Error| vec![Err(classify(backend, e)); count];
    if plan.statements() == 1 {
        let mut conn = match pool.acquire().await {
            Ok(conn) => conn,
            Err(e) => return unavailable(e),
        };
        return apply(backend, plan, &mut *conn, &batch, false).await;
    }
    let mut tx = match pool.begin().await {
        Ok(tx) => tx,
        Err(e) => return unavailable(e),
    };
    let results = apply(backend, plan, &mut *tx, &batch, true).await;
    if results.iter().all(|r| matches!(r, Err(BackendError::Unavailable(_)))) {
        return results;
    }
    match tx.commit().await {
        Ok(()) => results,
        Err(e) => unavailable(e),
    }
}

/// Run a planned `batch` on `conn`. With `savepoints`, `conn` is inside a
/// transaction and every unit runs in its own savepoint, so a failed one
/// leaves the others standing; without, every statement commits on its own.
/// One result per statement, in order.
async fn apply<C: SqlConnection + ?Sized>(
    backend: &str,
    plan: Plan,
    conn: &mut C,
    batch: &[Statement1],
    savepoints: bool,
) -> Vec<Result<u64, BackendError>> {
    let units = plan.0;
    let mut results: Vec<Option<Result<u64, BackendError>>> = vec![None; batch.len()];
    for unit in units {
        match unit {
            Unit::Single { caller } => {
                let (sql, params) = &batch[caller];
                let result = guarded(backend, conn, sql, params, savepoints).await;
                if let Err(BackendError::Unavailable(m)) = &result {
                    return fail_rest(results, m, savepoints);
                }
                results[caller] = Some(result);
            }
            Unit::Group { sql, params, callers } => match guarded(backend, conn, &sql, &params, savepoints).await {
                Ok(_) => callers.iter().for_each(|&c| results[c] = Some(Ok(1))),
                Err(BackendError::Unavailable(m)) => return fail_rest(results, &m, savepoints),
                Err(e) => {
                    tracing::debug!(backend, rows = callers.len(), error = %e, "multi-row insert failed; inserting its rows one by one");
                    for caller in callers {
                        let (sql, params) = &batch[caller];
                        let result = guarded(backend, conn, sql, params, savepoints).await;
                        if let Err(BackendError::Unavailable(m)) = &result {
                            return fail_rest(results, m, savepoints);
                        }
                        results[caller] = Some(result);
                    }
                }
            },
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(BackendError::Unavailable(format!("{backend}: statement was not run")))))
        .collect()
}

/// Run one statement, inside a savepoint if asked.
async fn guarded<C: SqlConnection + ?Sized>(
    backend: &str,
    conn: &mut C,
    sql: &str,
    params: &[Value],
    savepoint: bool,
) -> Result<u64, BackendError> {
    if !savepoint {
        return conn.run(sql, params).await.map_err(|e| classify(backend, e));
    }
    let control = |e| BackendError::Unavailable(format!("{backend}: savepoint failed: {e}"));
    conn.run("SAVEPOINT switchyard_op", &[]).await.map_err(control)?;
    let result = conn.run(sql, params).await.map_err(|e| classify(backend, e));
    if result.is_err() {
        conn.run("ROLLBACK TO SAVEPOINT switchyard_op", &[]).await.map_err(control)?;
    }
    conn.run("RELEASE SAVEPOINT switchyard_op", &[]).await.map_err(control)?;
    result
}

/// A failure of the connection fails every statement not yet answered, and
/// inside a transaction every answered one too: the transaction is gone.
fn fail_rest(
    results: Vec<Option<Result<u64, BackendError>>>,
    message: &str,
    in_transaction: bool,
) -> Vec<Result<u64, BackendError>> {
    let failed = || Err(BackendError::Unavailable(message.to_string()));
    results
        .into_iter()
        .map(|r| match r {
            Some(done) if !in_transaction => done,
            _ => failed(),
        })
        .collect()
}

/// Publish the claimed outbox rows through `publisher` and delete them on
/// `conn`, inside the transaction that claimed them; how many were sent.
async fn send_claimed<D: Dialect>(
    conn: &mut <D::Db as sqlx::Database>::Connection,
    claimed: RowSet,
    publisher: &dyn Publisher,
) -> Result<usize, BackendError> {
    let count = claimed.rows.len();
    if count == 0 {
        return Ok(0);
    }
    let mut ids = Vec::with_capacity(count);
    let mut messages = Vec::with_capacity(count);
    for row in claimed.rows {
        let malformed = || BackendError::Invalid(format!("{}: an outbox row has unexpected columns", D::TYPE));
        let [id, message_id, destination, payload, stored_headers, key]: [Value; 6] =
            row.try_into().map_err(|_| malformed())?;
        let (
            Value::Int(id),
            Value::Text(message_id),
            Value::Text(destination),
            Value::Bytes(payload),
            Value::Text(stored_headers),
        ) = (id, message_id, destination, payload, stored_headers)
        else {
            return Err(malformed());
        };
        let mut headers: Vec<(String, String)> = serde_json::from_str(&stored_headers).unwrap_or_default();
        headers.push((headers::MESSAGE_ID.to_string(), message_id));
        let key = match key {
            Value::Text(key) => Some(key),
            _ => None,
        };
        ids.push(Value::Int(id));
        messages.push(Outgoing { destination, payload, headers, key });
    }
    publisher.publish(messages).await?;
    let marks: Vec<String> = match D::PLACEHOLDERS {
        Placeholders::Numbered => (1..=count).map(|n| format!("${n}")).collect(),
        Placeholders::Question => vec!["?".to_string(); count],
    };
    let delete = format!("{} ({})", D::TRANSACTIONS.delete_outbox, marks.join(", "));
    conn.run(&delete, &ids).await.map_err(|e| classify(D::TYPE, e))?;
    Ok(count)
}

/// Write the inbox row and the outbox rows of one invocation inside its open
/// transaction. `Ok(false)` when the inbox already holds the message: another
/// delivery committed it first, and this transaction must roll back.
async fn record_settlement<D: Dialect>(
    conn: &mut <D::Db as sqlx::Database>::Connection,
    inbox: &InboxKey,
    outcome: InboxOutcome,
    outbox: &[Outgoing],
) -> Result<bool, BackendError> {
    let statements = D::TRANSACTIONS;
    let params =
        [Value::Text(inbox.route.clone()), Value::Text(inbox.message.clone()), Value::Text(outcome.as_str().into())];
    match conn.run(statements.insert_inbox, &params).await {
        Ok(_) => {}
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => return Ok(false),
        Err(e) => return Err(classify(D::TYPE, e)),
    }
    for (n, message) in outbox.iter().enumerate() {
        let headers = serde_json::to_string(&message.headers).unwrap_or_else(|_| "[]".into());
        let params = [
            Value::Text(format!("{}#{n}", inbox.message)),
            Value::Text(message.destination.clone()),
            Value::Bytes(message.payload.clone()),
            Value::Text(headers),
            message.key.clone().map_or(Value::Null, Value::Text),
        ];
        conn.run(statements.insert_outbox, &params).await.map_err(|e| classify(D::TYPE, e))?;
    }
    Ok(true)
}

/// A statement's own fault (syntax, constraint, type) is `invalid`; a lost
/// connection, a deadlock, a serialization failure or an overloaded or
/// restarting server is `unavailable`, worth a retry.
pub fn classify(backend: &str, e: sqlx::Error) -> BackendError {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            // SQLSTATE classes: 08 connection, 40 rollback (deadlock,
            // serialization), 53 resources, 57 operator intervention, 58 system.
            let transient = ["08", "40", "53", "57", "58"].iter().any(|class| code.starts_with(class))
                || db.message().contains("Lock wait timeout");
            let message = format!("{backend}: {} (SQLSTATE {code})", db.message());
            if transient { BackendError::Unavailable(message) } else { BackendError::Invalid(message) }
        }
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::Encode(_)
        | sqlx::Error::TypeNotFound { .. } => BackendError::Invalid(format!("{backend}: {e}")),
        other => BackendError::Unavailable(format!("{backend}: {other}")),
    }
}
