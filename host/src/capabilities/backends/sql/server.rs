//! The PostgreSQL and MySQL/MariaDB db backend: one implementation over a
//! sqlx pool, generic over a [`Dialect`] that holds what the two servers do
//! differently (connecting and the session setup, binding and decoding
//! values, placeholders, the inbox and outbox statements).
//!
//! Writes from handlers running at the same time are group-committed: one
//! transaction per batch, a savepoint per caller, and single-row inserts into
//! the same table and columns coalesced into multi-row statements (see
//! [`super::plan`]). Reads go straight to the pool.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;

use super::logins::{Login, SECRET_TABLE, new_secret, outbox_key, sign};
use super::plan::{Placeholders, Plan, Planner, Statement1, Unit};
use crate::capabilities::backends::batch::Batcher;
use crate::config::{SqlServerConfig, TableGrant};
use crate::contract::bindings::db::{RowSet, Value};
use crate::contract::bindings::publish::Outgoing;
use crate::contract::db::{Begun, DbBackend, DbTransaction, InboxKey, InboxOutcome, SqlDialect, TenantAccess};
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
    /// dialect so no message pays for rewriting placeholders. They name the
    /// shared `switchyard_inbox` and `switchyard_outbox`; a tenant login's
    /// own tables replace those names.
    const TRANSACTIONS: &'static TransactionStatements;
    /// The query naming the database a connection is in.
    const DATABASE: &'static str;
    /// Creates the secret table, then adds a secret (its one parameter)
    /// unless it holds one.
    const SECRET: [&'static str; 2];
    /// Open a pool to `config.url`, every connection set up for handlers: as
    /// the login in the URL, or as a tenant's login, every statement of which
    /// the server stops after the given time.
    fn connect<'a>(
        config: &'a SqlServerConfig,
        tenant: Option<(&'a Login, Duration)>,
    ) -> BoxFuture<'a, Result<sqlx::Pool<Self::Db>, BackendError>>;
    /// The statements that create `login` or bring it up to date, take back
    /// whatever it was granted before, and grant it `grants` in `database`
    /// (and, when `transactional`, reading and adding to its inbox and
    /// adding to its outbox).
    fn provision(database: &str, login: &Login, grants: &[TableGrant<'_>], transactional: bool) -> Vec<String>;
    /// Cancel the statements `login` has had running for longer than
    /// `limit`; how many.
    fn cancel_overdue<'a>(
        conn: &'a mut <Self::Db as sqlx::Database>::Connection,
        login: &'a str,
        limit: Duration,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>>;
    /// `sql` as the server runs it.
    fn prepare(sql: String) -> String {
        sql
    }
}

/// The inbox and outbox of transactional routes in one dialect.
pub struct TransactionStatements {
    /// Creates the inbox and the outbox.
    pub tables: [&'static str; 2],
    /// Adds the signature column to an outbox made before rows were signed;
    /// an error that the column exists means it has one.
    pub signature_column: &'static str,
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
const CLAIM_OUTBOX: &str = "SELECT id, message_id, destination, payload, headers, msg_key, signature \
                            FROM switchyard_outbox ORDER BY id LIMIT {limit} FOR UPDATE SKIP LOCKED";

/// How often a tenant's overdue statements are looked for.
const WATCHDOG: Duration = Duration::from_secs(1);

/// The transaction statements of one inbox and outbox pair.
struct Transactions {
    outbox: String,
    tables: Vec<String>,
    signature_column: String,
    lookup: String,
    insert_inbox: String,
    insert_outbox: String,
    delete_outbox: String,
    claim: String,
}

impl Transactions {
    /// `statements` on the tables `inbox` and `outbox`.
    fn on(statements: &TransactionStatements, inbox: &str, outbox: &str) -> Self {
        let name = |sql: &str| sql.replace("switchyard_inbox", inbox).replace("switchyard_outbox", outbox);
        Self {
            outbox: outbox.to_string(),
            tables: statements.tables.iter().map(|sql| name(sql)).collect(),
            signature_column: name(statements.signature_column),
            lookup: name(statements.lookup),
            insert_inbox: name(statements.insert_inbox),
            insert_outbox: name(statements.insert_outbox),
            delete_outbox: name(statements.delete_outbox),
            claim: name(CLAIM_OUTBOX),
        }
    }
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A PostgreSQL or MySQL/MariaDB db backend, as the host's own login or as
/// one tenant's.
pub struct SqlServer<D: Dialect> {
    /// Where handlers' statements run.
    pool: sqlx::Pool<D::Db>,
    /// The host's own login, which relays the outbox and cancels a tenant's
    /// overdue statements; the same pool as `pool` unless this is a tenant's.
    host: sqlx::Pool<D::Db>,
    writer: Batcher<Statement1, u64>,
    config: SqlServerConfig,
    transactions: Arc<Transactions>,
    /// Signs outbox rows, once the outbox is prepared.
    key: OnceLock<Arc<[u8]>>,
    _watchdog: Option<AbortOnDrop>,
}

impl<D: Dialect> SqlServer<D> {
    /// Connect to `config.url` and run the `init` statements in order.
    pub async fn open(config: &SqlServerConfig) -> Result<Self, BackendError> {
        let pool = D::connect(config, None).await?;
        let address = format!("{} at {}", D::TYPE, redact(&config.url));
        let mut conn = pool.acquire().await.map_err(|e| BackendError::Unavailable(format!("{address}: {e}")))?;
        for statement in &config.init {
            conn.run(statement, &[])
                .await
                .map_err(|e| BackendError::Invalid(format!("{address}: init statement {statement:?} failed: {e}")))?;
        }
        drop(conn);
        let transactions = Transactions::on(D::TRANSACTIONS, "switchyard_inbox", "switchyard_outbox");
        Ok(Self::with_pools(pool.clone(), pool, config, transactions, None))
    }

    fn with_pools(
        pool: sqlx::Pool<D::Db>,
        host: sqlx::Pool<D::Db>,
        config: &SqlServerConfig,
        transactions: Transactions,
        watchdog: Option<AbortOnDrop>,
    ) -> Self {
        let planner = Arc::new(Mutex::new(Planner::new(D::PLACEHOLDERS)));
        let writer_pool = pool.clone();
        let writer = Batcher::spawn(D::TYPE, config.max_batch, move |batch| {
            write::<D>(writer_pool.clone(), planner.clone(), batch)
        });
        let transactions = Arc::new(transactions);
        Self { pool, host, writer, config: config.clone(), transactions, key: OnceLock::new(), _watchdog: watchdog }
    }

    async fn connection(&self) -> Result<sqlx::pool::PoolConnection<D::Db>, BackendError> {
        self.pool.acquire().await.map_err(|e| classify(D::TYPE, e))
    }

    /// Create this backend's inbox and outbox on the host's login (a tenant
    /// may not create tables), and derive the key its outbox rows are signed with.
    async fn create_transaction_tables(&self) -> Result<(), BackendError> {
        let classify = |e| classify(D::TYPE, e);
        let mut conn = self.host.acquire().await.map_err(classify)?;
        let secret = secret::<D>(&mut *conn).await?;
        for ddl in &self.transactions.tables {
            conn.run(ddl, &[]).await.map_err(classify)?;
        }
        match conn.run(&self.transactions.signature_column, &[]).await {
            Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("42S21" | "42701")) => {}
            other => drop(other.map_err(classify)?),
        }
        let _ = self.key.set(outbox_key(&secret, &self.transactions.outbox).into());
        Ok(())
    }

    fn signing_key(&self) -> Result<Arc<[u8]>, BackendError> {
        self.key
            .get()
            .cloned()
            .ok_or_else(|| BackendError::Unavailable(format!("{}: the inbox and outbox are not prepared yet", D::TYPE)))
    }
}

/// The secret logins and outbox signatures derive from, made by the first
/// host that needs it.
async fn secret<D: Dialect>(conn: &mut <D::Db as sqlx::Database>::Connection) -> Result<Vec<u8>, BackendError> {
    let classify = |e| classify(D::TYPE, e);
    let fresh =
        new_secret().map_err(|e| BackendError::Unavailable(format!("{}: no randomness for a secret: {e}", D::TYPE)))?;
    conn.run(D::SECRET[0], &[]).await.map_err(classify)?;
    conn.run(D::SECRET[1], &[Value::Text(fresh)]).await.map_err(classify)?;
    let found = conn.fetch(&format!("SELECT secret FROM {SECRET_TABLE} WHERE id = 1"), &[]).await.map_err(classify)?;
    match found.rows.first().and_then(|row| row.first()) {
        Some(Value::Text(secret)) if !secret.is_empty() => Ok(secret.as_bytes().to_vec()),
        _ => Err(BackendError::Invalid(format!("{}: {SECRET_TABLE} holds no secret", D::TYPE))),
    }
}

/// Cancel `login`'s statements that outlive `limit`, every [`WATCHDOG`],
/// on the host's own login: the server's own timeout is the first bound,
/// and a tenant's session can change it.
fn watchdog<D: Dialect>(host: sqlx::Pool<D::Db>, login: String, limit: Duration) -> AbortOnDrop {
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(WATCHDOG);
        loop {
            tick.tick().await;
            let Ok(mut conn) = host.acquire().await else { continue };
            match D::cancel_overdue(&mut *conn, &login, limit + WATCHDOG).await {
                Ok(0) => {}
                Ok(cancelled) => tracing::warn!(
                    backend = D::TYPE,
                    login = %login,
                    cancelled,
                    limit_ms = limit.as_millis() as u64,
                    "cancelled a tenant's statements that ran past its longest deadline"
                ),
                Err(e) => {
                    tracing::debug!(backend = D::TYPE, login = %login, error = %e, "cannot look for overdue statements")
                }
            }
        }
    });
    AbortOnDrop(task.abort_handle())
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
        self.create_transaction_tables().await
    }

    async fn begin(&self, inbox: &InboxKey) -> Result<Begun, BackendError> {
        let classify = |e| classify(D::TYPE, e);
        let signing = self.signing_key()?;
        let key = [Value::Text(inbox.route.clone()), Value::Text(inbox.message.clone())];
        let found = self.connection().await?.fetch(&self.transactions.lookup, &key).await.map_err(classify)?;
        if let Some(Value::Text(outcome)) = found.rows.first().and_then(|row| row.first()) {
            return Ok(Begun::Settled(InboxOutcome::parse(outcome)));
        }
        let tx = self.pool.begin().await.map_err(classify)?;
        Ok(Begun::Transaction(Box::new(ServerTransaction::<D> {
            tx,
            transactions: self.transactions.clone(),
            signing,
        })))
    }

    async fn relay(&self, publisher: &dyn Publisher, limit: usize) -> Result<usize, BackendError> {
        let classify = |e| classify(D::TYPE, e);
        let signing = self.signing_key()?;
        let mut tx = self.host.begin().await.map_err(classify)?;
        let claim = self.transactions.claim.replace("{limit}", &limit.to_string());
        let claimed = tx.fetch(&claim, &[]).await.map_err(classify)?;
        let sent = send_claimed::<D>(&mut *tx, &self.transactions, &signing, claimed, publisher).await?;
        if sent > 0 {
            tx.commit().await.map_err(classify)?;
        }
        Ok(sent)
    }

    async fn for_tenant(&self, tenant: &TenantAccess) -> Result<Option<Arc<dyn DbBackend>>, BackendError> {
        let grants = tenant
            .tables
            .iter()
            .map(|t| TableGrant::parse(t))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BackendError::Invalid(format!("tenant {:?}: {e}", tenant.tenant)))?;
        // With no tables the statement check refuses every statement, so none
        // reaches the server; `*` is the host's own login, by the config's word.
        if !self.config.tenant_logins || grants.is_empty() || grants.contains(&TableGrant::All) {
            return Ok(None);
        }
        let classify = |e| classify(D::TYPE, e);
        let mut conn = self.host.acquire().await.map_err(classify)?;
        let database = match conn.fetch(D::DATABASE, &[]).await.map_err(classify)?.rows.first().and_then(|r| r.first())
        {
            Some(Value::Text(name)) => name.clone(),
            _ => return Err(BackendError::Invalid(format!("{}: the url names no database", D::TYPE))),
        };
        let secret = secret::<D>(&mut *conn).await?;
        let login = Login::new(&self.config.login_prefix, &database, &tenant.tenant, &secret);
        let transactions = Transactions::on(D::TRANSACTIONS, &login.inbox, &login.outbox);
        if tenant.transactional {
            for ddl in &transactions.tables {
                conn.run(ddl, &[]).await.map_err(classify)?;
            }
        }
        for statement in D::provision(&database, &login, &grants, tenant.transactional) {
            conn.run(&statement, &[]).await.map_err(|e| {
                BackendError::Invalid(format!(
                    "{}: cannot set up the login {} of tenant {:?}: `{}` failed: {e}",
                    D::TYPE,
                    login.name,
                    tenant.tenant,
                    statement.replace(&login.password, "***")
                ))
            })?;
        }
        drop(conn);
        let pool = D::connect(&self.config, Some((&login, tenant.statement_timeout))).await?;
        let watchdog = watchdog::<D>(self.host.clone(), login.name.clone(), tenant.statement_timeout);
        let server = Self::with_pools(pool, self.host.clone(), &self.config, transactions, Some(watchdog));
        if tenant.transactional {
            server.create_transaction_tables().await?;
        }
        tracing::info!(backend = D::TYPE, tenant = %tenant.tenant, login = %login.name, "tenant runs as its own login");
        Ok(Some(Arc::new(server)))
    }
}

/// The open transaction of one invocation.
struct ServerTransaction<D: Dialect> {
    tx: sqlx::Transaction<'static, D::Db>,
    transactions: Arc<Transactions>,
    signing: Arc<[u8]>,
}

#[async_trait]
impl<D: Dialect> DbTransaction for ServerTransaction<D> {
    async fn execute(&mut self, sql: &str, params: Vec<Value>) -> Result<u64, BackendError> {
        self.tx.run(sql, &params).await.map_err(|e| classify(D::TYPE, e))
    }

    async fn query(&mut self, sql: &str, params: Vec<Value>) -> Result<RowSet, BackendError> {
        self.tx.fetch(sql, &params).await.map_err(|e| classify(D::TYPE, e))
    }

    async fn commit(
        mut self: Box<Self>,
        inbox: &InboxKey,
        outcome: InboxOutcome,
        outbox: &[Outgoing],
    ) -> Result<bool, BackendError> {
        let ServerTransaction { mut tx, transactions, signing } = *self;
        if !record_settlement::<D>(&mut *tx, &transactions, &signing, inbox, outcome, outbox).await? {
            return Ok(false);
        }
        tx.commit().await.map_err(|e| classify(D::TYPE, e))?;
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
    transactions: &Transactions,
    signing: &[u8],
    claimed: RowSet,
    publisher: &dyn Publisher,
) -> Result<usize, BackendError> {
    let count = claimed.rows.len();
    if count == 0 {
        return Ok(0);
    }
    let mut ids = Vec::with_capacity(count);
    let mut messages = Vec::with_capacity(count);
    let mut forged = 0;
    for row in claimed.rows {
        let malformed = || BackendError::Invalid(format!("{}: an outbox row has unexpected columns", D::TYPE));
        let [id, message_id, destination, payload, stored_headers, key, signature]: [Value; 7] =
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
        let key = match key {
            Value::Text(key) => Some(key),
            _ => None,
        };
        ids.push(Value::Int(id));
        let mut message = Outgoing { destination, payload, headers: Vec::new(), key };
        // Only the host signs; a row a tenant wrote at the server itself is
        // deleted unsent.
        if !matches!(&signature, Value::Text(s) if *s == sign(signing, &message_id, &message, &stored_headers)) {
            forged += 1;
            tracing::error!(
                backend = D::TYPE,
                outbox = %transactions.outbox,
                destination = %message.destination,
                "an outbox row the host did not sign is dropped unsent"
            );
            continue;
        }
        message.headers = serde_json::from_str(&stored_headers).unwrap_or_default();
        message.headers.push((headers::MESSAGE_ID.to_string(), message_id));
        messages.push(message);
    }
    if !messages.is_empty() {
        publisher.publish(messages).await?;
    }
    let marks: Vec<String> = match D::PLACEHOLDERS {
        Placeholders::Numbered => (1..=count).map(|n| format!("${n}")).collect(),
        Placeholders::Question => vec!["?".to_string(); count],
    };
    let delete = format!("{} ({})", transactions.delete_outbox, marks.join(", "));
    conn.run(&delete, &ids).await.map_err(|e| classify(D::TYPE, e))?;
    Ok(count - forged)
}

/// Write the inbox row and the outbox rows of one invocation inside its open
/// transaction. `Ok(false)` when the inbox already holds the message: another
/// delivery committed it first, and this transaction must roll back.
async fn record_settlement<D: Dialect>(
    conn: &mut <D::Db as sqlx::Database>::Connection,
    statements: &Transactions,
    signing: &[u8],
    inbox: &InboxKey,
    outcome: InboxOutcome,
    outbox: &[Outgoing],
) -> Result<bool, BackendError> {
    let params =
        [Value::Text(inbox.route.clone()), Value::Text(inbox.message.clone()), Value::Text(outcome.as_str().into())];
    match conn.run(&statements.insert_inbox, &params).await {
        Ok(_) => {}
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => return Ok(false),
        Err(e) => return Err(classify(D::TYPE, e)),
    }
    for (n, message) in outbox.iter().enumerate() {
        let headers = serde_json::to_string(&message.headers).unwrap_or_else(|_| "[]".into());
        let message_id = format!("{}#{n}", inbox.message);
        let signature = sign(signing, &message_id, message, &headers);
        let params = [
            Value::Text(message_id),
            Value::Text(message.destination.clone()),
            Value::Bytes(message.payload.clone()),
            Value::Text(headers),
            message.key.clone().map_or(Value::Null, Value::Text),
            Value::Text(signature),
        ];
        conn.run(&statements.insert_outbox, &params).await.map_err(|e| classify(D::TYPE, e))?;
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
