//! What the PostgreSQL and MySQL backends share: coalescing inserts that
//! arrive together into multi-row statements, applying a batch on one
//! connection with a savepoint per caller, and telling a statement's own
//! fault from the database's.
//!
//! A batch is planned first: plain single-row `INSERT ... VALUES` statements
//! that target the same table and columns become one multi-row `INSERT` (in
//! chunks under the databases' parameter limits); every other statement runs
//! as it is. If a multi-row insert fails, its rows run again one by one, so a
//! bad row fails only its own caller.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use sqlparser::ast::{Expr, Insert, SetExpr, Statement, Value as SqlValue, ValueWithSpan};
use sqlparser::dialect::{Dialect, GenericDialect, MySqlDialect, PostgreSqlDialect};
use sqlparser::parser::Parser;

use super::BackendError;
use crate::capabilities::db::{InboxKey, InboxOutcome};
use crate::capabilities::publish::Publisher;
use crate::runtime::bindings::db::Value;
use crate::runtime::bindings::publish::Outgoing;

/// One caller's statement.
pub type Statement1 = (String, Vec<Value>);

/// The most bind parameters one statement may carry (both databases' limit).
const MAX_PARAMS: usize = 65_535;
/// The most rows one coalesced insert carries.
const MAX_ROWS: usize = 1_000;
/// How many statements' plans are remembered, so a handler's statement is
/// parsed once rather than on every call.
const PLAN_CACHE: usize = 512;

/// How a PostgreSQL or MySQL backend is set up.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Statements run once at start, in order.
    pub init: Vec<String>,
    /// Connections in the pool.
    pub max_connections: u32,
    /// The most statements in one group-committed batch.
    pub max_batch: usize,
    /// How long a call waits for a connection before it fails as `unavailable`.
    pub timeout_ms: u64,
}

/// A connection that can run one statement with typed parameters. The
/// backends implement it for their sqlx connection; a transaction is the same
/// connection after `BEGIN`, so several statements of one invocation can run
/// in one transaction through it.
pub trait SqlConnection: Send {
    /// Run `sql` with `params`; rows affected.
    fn run<'a>(&'a mut self, sql: &'a str, params: &'a [Value]) -> BoxFuture<'a, Result<u64, sqlx::Error>>;
}

/// Which placeholders a dialect uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholders {
    /// `$1, $2, ...` (PostgreSQL).
    Numbered,
    /// `?` (MySQL).
    Question,
}

/// How a statement of a batch is run.
enum Unit {
    /// One caller's statement, as it is.
    Single { caller: usize },
    /// Several callers' single-row inserts as one multi-row insert.
    Group { sql: String, params: Vec<Value>, callers: Vec<usize> },
}

/// How a batch will run.
pub struct Plan(Vec<Unit>);

impl Plan {
    /// How many statements will run: one needs no transaction around it.
    pub fn statements(&self) -> usize {
        self.0.len()
    }
}

/// A parsed single-row insert that may join others.
#[derive(Clone)]
struct InsertShape {
    /// Table and columns: statements with the same key can share a statement.
    key: String,
    insert: Insert,
    row: Vec<Expr>,
}

/// Plans batches; remembers which statements can be coalesced.
pub struct Planner {
    placeholders: Placeholders,
    shapes: HashMap<String, Option<InsertShape>>,
}

impl Planner {
    /// A planner for a dialect.
    pub fn new(placeholders: Placeholders) -> Self {
        Self { placeholders, shapes: HashMap::new() }
    }

    fn dialect(&self) -> &'static dyn Dialect {
        match self.placeholders {
            Placeholders::Numbered => &PostgreSqlDialect {},
            Placeholders::Question => &MySqlDialect {},
        }
    }

    fn shape(&mut self, sql: &str) -> Option<InsertShape> {
        if let Some(shape) = self.shapes.get(sql) {
            return shape.clone();
        }
        let shape = insert_shape(self.dialect(), sql);
        if self.shapes.len() >= PLAN_CACHE {
            self.shapes.clear();
        }
        self.shapes.insert(sql.to_string(), shape.clone());
        shape
    }

    /// Plan a batch: which statements run alone and which together.
    pub fn plan(&mut self, batch: &[Statement1]) -> Plan {
        Plan(self.units(batch))
    }

    fn units(&mut self, batch: &[Statement1]) -> Vec<Unit> {
        let mut units = Vec::new();
        // Inserts by table and columns, in the order they arrived.
        let mut groups: Vec<(String, Vec<(usize, InsertShape)>)> = Vec::new();
        for (caller, (sql, params)) in batch.iter().enumerate() {
            match self.shape(sql) {
                Some(shape) if placeholder_count(self.placeholders, &shape.row) == Some(params.len()) => {
                    match groups.iter_mut().find(|(key, _)| *key == shape.key) {
                        Some((_, members)) => members.push((caller, shape)),
                        None => groups.push((shape.key.clone(), vec![(caller, shape)])),
                    }
                }
                _ => units.push(Unit::Single { caller }),
            }
        }
        for (_, members) in groups {
            if members.len() == 1 {
                units.extend(members.into_iter().map(|(caller, _)| Unit::Single { caller }));
                continue;
            }
            let mut chunk: Vec<(usize, InsertShape)> = Vec::new();
            let mut chunk_params = 0;
            for (caller, shape) in members {
                let n = batch[caller].1.len();
                if !chunk.is_empty() && (chunk.len() >= MAX_ROWS || chunk_params + n > MAX_PARAMS) {
                    units.push(self.group(batch, std::mem::take(&mut chunk)));
                    chunk_params = 0;
                }
                chunk_params += n;
                chunk.push((caller, shape));
            }
            units.push(self.group(batch, chunk));
        }
        units
    }

    fn group(&self, batch: &[Statement1], members: Vec<(usize, InsertShape)>) -> Unit {
        if let [(caller, _)] = members.as_slice() {
            return Unit::Single { caller: *caller };
        }
        let mut params = Vec::new();
        let mut rows = Vec::with_capacity(members.len());
        let mut callers = Vec::with_capacity(members.len());
        for (caller, shape) in &members {
            let mut row = shape.row.clone();
            if self.placeholders == Placeholders::Numbered {
                let offset = params.len();
                for expr in &mut row {
                    renumber(expr, offset);
                }
            }
            rows.push(row);
            params.extend(batch[*caller].1.iter().cloned());
            callers.push(*caller);
        }
        let mut insert = members[0].1.insert.clone();
        if let Some(SetExpr::Values(values)) = insert.source.as_mut().map(|q| q.body.as_mut()) {
            values.rows = rows;
        }
        Unit::Group { sql: Statement::Insert(insert).to_string(), params, callers }
    }
}

/// The shape of `sql` if it is a plain single-row `INSERT ... VALUES` whose
/// result for each row is known (1 row affected): no `ON CONFLICT`, `IGNORE`,
/// `RETURNING` or `REPLACE`, which change what a row's caller would see.
fn insert_shape(dialect: &dyn Dialect, sql: &str) -> Option<InsertShape> {
    let mut statements = Parser::parse_sql(dialect, sql).ok()?;
    if statements.len() != 1 {
        return None;
    }
    let Statement::Insert(insert) = statements.pop()? else { return None };
    let plain = insert.or.is_none()
        && !insert.ignore
        && !insert.replace_into
        && insert.on.is_none()
        && insert.returning.is_none()
        && insert.assignments.is_empty()
        && insert.partitioned.is_none()
        && insert.insert_alias.is_none()
        && insert.settings.is_none()
        && insert.format_clause.is_none()
        && !insert.columns.is_empty();
    if !plain {
        return None;
    }
    let query = insert.source.as_ref()?;
    if query.with.is_some() || query.order_by.is_some() || query.limit_clause.is_some() {
        return None;
    }
    let SetExpr::Values(values) = query.body.as_ref() else { return None };
    let [row] = values.rows.as_slice() else { return None };
    if row.len() != insert.columns.len() {
        return None;
    }
    let columns: Vec<String> = insert.columns.iter().map(|c| c.value.to_lowercase()).collect();
    let key = format!("{} ({})", insert.table.to_string().to_lowercase(), columns.join(","));
    let row = row.clone();
    Some(InsertShape { key, insert, row })
}

/// The number of parameters a row binds, if its placeholders are all of the
/// dialect's kind and (for `$n`) exactly `$1..$count`.
fn placeholder_count(placeholders: Placeholders, row: &[Expr]) -> Option<usize> {
    let mut found = Vec::new();
    for expr in row {
        collect_placeholders(expr, &mut found);
    }
    match placeholders {
        Placeholders::Question => found.iter().all(|p| p == "?").then_some(found.len()),
        Placeholders::Numbered => {
            let mut numbers: Vec<usize> =
                found.iter().map(|p| p.strip_prefix('$').and_then(|n| n.parse().ok())).collect::<Option<_>>()?;
            numbers.sort_unstable();
            numbers.dedup();
            let count = numbers.len();
            (numbers.iter().enumerate().all(|(i, n)| *n == i + 1)).then_some(count)
        }
    }
}

fn collect_placeholders(expr: &Expr, out: &mut Vec<String>) {
    let _ = sqlparser::ast::visit_expressions(expr, |e| {
        if let Expr::Value(ValueWithSpan { value: SqlValue::Placeholder(p), .. }) = e {
            out.push(p.clone());
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
}

fn renumber(expr: &mut Expr, offset: usize) {
    let _ = sqlparser::ast::visit_expressions_mut(expr, |e| {
        if let Expr::Value(ValueWithSpan { value: SqlValue::Placeholder(p), .. }) = e
            && let Some(n) = p.strip_prefix('$').and_then(|n| n.parse::<usize>().ok())
        {
            *p = format!("${}", n + offset);
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
}

/// `sql` with its `?` placeholders numbered `$1, $2, ...` in order, for
/// PostgreSQL, so one handler's SQL runs on every backend. Statements without
/// `?` placeholders, with `$n` ones already, or that do not parse come back
/// unchanged, for the server to judge.
pub fn number_question_marks(sql: &str) -> String {
    if !sql.contains('?') {
        return sql.to_string();
    }
    // PostgreSQL's own dialect reads `?` as a JSON operator; the generic one
    // reads it as a placeholder.
    let Ok(mut statements) = Parser::parse_sql(&GenericDialect {}, sql) else {
        return sql.to_string();
    };
    let mut n = 0;
    let mut numbered = false;
    for statement in &mut statements {
        let _ = sqlparser::ast::visit_expressions_mut(statement, |e| {
            if let Expr::Value(ValueWithSpan { value: SqlValue::Placeholder(p), .. }) = e {
                if p == "?" {
                    n += 1;
                    *p = format!("${n}");
                } else {
                    numbered = true;
                }
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
    }
    if n == 0 || numbered {
        return sql.to_string();
    }
    statements.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// Write one batch of statements on `pool` (the postgres and mysql writers),
/// as few statements as the planner can make of them: on a connection of its
/// own when they became one statement, otherwise in a transaction with a
/// savepoint for each unit of the plan, so a failed one fails only its own
/// statements.
pub async fn write<DB>(
    backend: &'static str,
    pool: sqlx::Pool<DB>,
    planner: Arc<Mutex<Planner>>,
    batch: Vec<Statement1>,
) -> Vec<Result<u64, BackendError>>
where
    DB: sqlx::Database,
    DB::Connection: SqlConnection,
{
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
pub async fn apply<C: SqlConnection + ?Sized>(
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

/// The header a relayed outbox message carries its stable id in: the same
/// on every relay of the same row, so a receiver can drop a repeat.
pub const MESSAGE_ID_HEADER: &str = "switchyard-message-id";

/// The tables transactional routes keep, in `dialect`'s DDL.
pub fn transaction_tables(placeholders: Placeholders) -> [&'static str; 2] {
    match placeholders {
        Placeholders::Numbered => [
            "CREATE TABLE IF NOT EXISTS switchyard_inbox (route TEXT NOT NULL, message TEXT NOT NULL, \
             outcome TEXT NOT NULL, settled_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (route, message))",
            "CREATE TABLE IF NOT EXISTS switchyard_outbox (id BIGSERIAL PRIMARY KEY, message_id TEXT NOT NULL, \
             destination TEXT NOT NULL, payload BYTEA NOT NULL, headers TEXT NOT NULL, msg_key TEXT, \
             created_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        ],
        // The inbox key fits InnoDB's 3072-byte limit in utf8mb4.
        Placeholders::Question => [
            "CREATE TABLE IF NOT EXISTS switchyard_inbox (route VARCHAR(191) NOT NULL, message VARCHAR(500) NOT NULL, \
             outcome VARCHAR(16) NOT NULL, settled_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), \
             PRIMARY KEY (route, message))",
            "CREATE TABLE IF NOT EXISTS switchyard_outbox (id BIGINT AUTO_INCREMENT PRIMARY KEY, \
             message_id VARCHAR(520) NOT NULL, destination TEXT NOT NULL, payload LONGBLOB NOT NULL, \
             headers LONGTEXT NOT NULL, msg_key TEXT NULL, created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))",
        ],
    }
}

/// The statements a transactional route runs for each message, written once
/// per dialect so no message pays for rewriting placeholders.
pub struct InboxStatements {
    /// Finds a message's inbox row: its outcome, if any.
    pub lookup: &'static str,
    /// Records a message's outcome.
    insert_inbox: &'static str,
    /// Adds one message to the outbox.
    insert_outbox: &'static str,
}

impl InboxStatements {
    /// The statements in `placeholders`' form.
    pub fn of(placeholders: Placeholders) -> &'static Self {
        match placeholders {
            Placeholders::Numbered => &Self {
                lookup: "SELECT outcome FROM switchyard_inbox WHERE route = $1 AND message = $2",
                insert_inbox: "INSERT INTO switchyard_inbox (route, message, outcome) VALUES ($1, $2, $3)",
                insert_outbox: "INSERT INTO switchyard_outbox (message_id, destination, payload, headers, msg_key) \
                                VALUES ($1, $2, $3, $4, $5)",
            },
            Placeholders::Question => &Self {
                lookup: "SELECT outcome FROM switchyard_inbox WHERE route = ? AND message = ?",
                insert_inbox: "INSERT INTO switchyard_inbox (route, message, outcome) VALUES (?, ?, ?)",
                insert_outbox: "INSERT INTO switchyard_outbox (message_id, destination, payload, headers, msg_key) \
                                VALUES (?, ?, ?, ?, ?)",
            },
        }
    }
}

/// The relay's claim on the oldest outbox rows: locked until its transaction
/// ends, and skipped by any other relay meanwhile.
pub const CLAIM_OUTBOX: &str = "SELECT id, message_id, destination, payload, headers, msg_key FROM switchyard_outbox ORDER BY id LIMIT {limit} FOR UPDATE SKIP LOCKED";

/// An outbox row as the relay reads it.
pub type OutboxRow = (i64, String, String, Vec<u8>, String, Option<String>);

/// Publish claimed outbox `rows` through `publisher` and delete them on
/// `conn`, inside the transaction that claimed them; how many were sent.
pub async fn send_claimed<C: SqlConnection + ?Sized>(
    backend: &str,
    conn: &mut C,
    placeholders: Placeholders,
    rows: Vec<OutboxRow>,
    publisher: &dyn Publisher,
) -> Result<usize, BackendError> {
    let count = rows.len();
    if count == 0 {
        return Ok(0);
    }
    let ids: Vec<Value> = rows.iter().map(|row| Value::Int(row.0)).collect();
    let messages = rows
        .into_iter()
        .map(|(_, message_id, destination, payload, headers, key)| {
            let mut headers: Vec<(String, String)> = serde_json::from_str(&headers).unwrap_or_default();
            headers.push((MESSAGE_ID_HEADER.to_string(), message_id));
            Outgoing { destination, payload, headers, key }
        })
        .collect();
    publisher.publish(messages).await?;
    let marks: Vec<String> = match placeholders {
        Placeholders::Numbered => (1..=count).map(|n| format!("${n}")).collect(),
        Placeholders::Question => vec!["?".to_string(); count],
    };
    let delete = format!("DELETE FROM switchyard_outbox WHERE id IN ({})", marks.join(", "));
    conn.run(&delete, &ids).await.map_err(|e| classify(backend, e))?;
    Ok(count)
}

/// Write the inbox row and the outbox rows of one invocation inside its open
/// transaction. `Ok(false)` when the inbox already holds the message: another
/// delivery committed it first, and this transaction must roll back.
pub async fn record_settlement<C: SqlConnection + ?Sized>(
    backend: &str,
    conn: &mut C,
    placeholders: Placeholders,
    inbox: &InboxKey,
    outcome: InboxOutcome,
    outbox: &[Outgoing],
) -> Result<bool, BackendError> {
    let statements = InboxStatements::of(placeholders);
    let params =
        [Value::Text(inbox.route.clone()), Value::Text(inbox.message.clone()), Value::Text(outcome.as_str().into())];
    match conn.run(statements.insert_inbox, &params).await {
        Ok(_) => {}
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => return Ok(false),
        Err(e) => return Err(classify(backend, e)),
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
        conn.run(statements.insert_outbox, &params).await.map_err(|e| classify(backend, e))?;
    }
    Ok(true)
}

/// `url` without its user and password, for messages.
pub fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://{host}"),
        _ => url.to_string(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_sql(placeholders: Placeholders, batch: &[(&str, usize)]) -> Vec<(String, usize, Vec<usize>)> {
        let batch: Vec<Statement1> =
            batch.iter().map(|(s, n)| (s.to_string(), (0..*n as i64).map(Value::Int).collect())).collect();
        Planner::new(placeholders)
            .units(&batch)
            .into_iter()
            .map(|u| match u {
                Unit::Single { caller } => (batch[caller].0.clone(), batch[caller].1.len(), vec![caller]),
                Unit::Group { sql, params, callers } => (sql, params.len(), callers),
            })
            .collect()
    }

    #[test]
    fn same_table_and_columns_coalesce_and_renumber() {
        let units = plan_sql(
            Placeholders::Numbered,
            &[
                ("INSERT INTO t (a, b) VALUES ($1, $2)", 2),
                ("UPDATE t SET a = $1", 1),
                ("insert into T (A, B) values ($2, $1)", 2),
                ("INSERT INTO t (a, b) VALUES ($1, now())", 1),
                ("INSERT INTO t (a, b) VALUES ($1, $2) ON CONFLICT DO NOTHING", 2),
                ("INSERT INTO u (a) VALUES ($1)", 1),
            ],
        );
        assert_eq!(units.len(), 4, "{units:?}");
        let group = units.iter().find(|u| u.2.len() > 1).unwrap();
        assert_eq!(group.0, "INSERT INTO t (a, b) VALUES ($1, $2), ($4, $3), ($5, now())");
        assert_eq!((group.1, group.2.clone()), (5, vec![0, 2, 3]));
    }

    #[test]
    fn question_marks_coalesce_and_chunk() {
        let batch: Vec<(&str, usize)> = vec![("INSERT INTO t (a) VALUES (?)", 1); 2500];
        let units = plan_sql(Placeholders::Question, &batch);
        assert_eq!(units.iter().map(|u| u.2.len()).collect::<Vec<_>>(), [1000, 1000, 500]);
        assert!(units[2].0.ends_with("(?), (?)"));
        // A placeholder count that does not match the parameters runs alone.
        let units = plan_sql(
            Placeholders::Question,
            &[("INSERT INTO t (a) VALUES (?)", 2), ("INSERT INTO t (a) VALUES (?)", 1)],
        );
        assert_eq!(units.len(), 2);
    }

    #[test]
    fn question_marks_become_numbers_for_postgres() {
        assert_eq!(
            number_question_marks("INSERT INTO t (a, b) VALUES (?, ?) ON CONFLICT (a) DO NOTHING"),
            "INSERT INTO t (a, b) VALUES ($1, $2) ON CONFLICT(a) DO NOTHING"
        );
        assert_eq!(number_question_marks("SELECT $1 WHERE j ? 'k'"), "SELECT $1 WHERE j ? 'k'");
        assert_eq!(number_question_marks("SELECT 'why?'"), "SELECT 'why?'");
    }
}
