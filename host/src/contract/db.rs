//! The port a database backend implements (`sqlite`, `postgres`, `mysql`),
//! and the inbox and transaction types of transactional routes.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::bindings::db::{RowSet, Value};
use super::bindings::publish::Outgoing;
use super::errors::BackendError;
use super::publish::Publisher;

/// Which SQL dialect a backend speaks, for parsing statements to check grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlDialect {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
    /// MySQL and MariaDB.
    MySql,
}

/// A SQL database. Statements reach it already checked against grants, in
/// the form [`DbBackend::prepare`] gave them.
#[async_trait]
pub trait DbBackend: Send + Sync {
    /// The dialect it speaks.
    fn dialect(&self) -> SqlDialect;
    /// `sql` as this backend runs it; grants are checked on what this returns.
    /// PostgreSQL numbers `?` placeholders, so one handler's SQL runs on every backend.
    fn prepare(&self, sql: String) -> String {
        sql
    }
    /// Run a statement; returns rows affected.
    async fn execute(&self, sql: &str, params: Vec<Value>) -> Result<u64, BackendError>;
    /// Run a query; returns its rows.
    async fn query(&self, sql: &str, params: Vec<Value>) -> Result<RowSet, BackendError>;

    /// Create the inbox and outbox tables transactional routes use.
    async fn prepare_transactions(&self) -> Result<(), BackendError> {
        Err(BackendError::Invalid("this db backend has no transactional routes".into()))
    }
    /// Begin the transaction of one invocation of `inbox.route` on
    /// `inbox.message`, or tell that the message was already settled in the
    /// inbox by an earlier delivery.
    async fn begin(&self, _inbox: &InboxKey) -> Result<Begun, BackendError> {
        Err(BackendError::Invalid("this db backend has no transactional routes".into()))
    }
    /// Publish the oldest outbox rows through `publisher`, at most `limit`,
    /// and delete them once it accepted them. Rows another relay is sending
    /// are skipped. Returns how many were sent.
    async fn relay(&self, _publisher: &dyn Publisher, _limit: usize) -> Result<usize, BackendError> {
        Ok(0)
    }

    /// A backend that runs `tenant`'s statements as a database login of its
    /// own, which the server holds to exactly the tenant's tables, or `None`
    /// when this backend has no logins (SQLite), is configured to run every
    /// tenant as the host's own login, or the tenant is granted every table
    /// or none: the tenant then shares this backend, held by the host's
    /// statement check alone.
    async fn for_tenant(&self, _tenant: &TenantAccess) -> Result<Option<Arc<dyn DbBackend>>, BackendError> {
        Ok(None)
    }
}

/// What one tenant may reach in the database, for [`DbBackend::for_tenant`].
#[derive(Debug, Clone)]
pub struct TenantAccess {
    /// The tenant's name.
    pub tenant: String,
    /// Its granted tables: `table`, `schema.table` or `schema.*`.
    pub tables: Vec<String>,
    /// The longest any of its handlers may run; none of its statements runs longer.
    pub statement_timeout: Duration,
    /// Whether it has transactional routes, which need an inbox and an outbox of its own.
    pub transactional: bool,
}

/// Which message of which route an inbox row stands for.
#[derive(Debug, Clone)]
pub struct InboxKey {
    /// The route, as `<tenant>/<handler>`.
    pub route: String,
    /// The message, as `<source>:<id>`.
    pub message: String,
}

/// How a message ended, as its inbox row records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxOutcome {
    /// Handled: its writes committed and its publishes are in the outbox.
    Handled,
    /// Failed for good: its compensations are in the outbox.
    Failed,
}

impl InboxOutcome {
    /// The word stored in the inbox.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Handled => "handled",
            Self::Failed => "failed",
        }
    }

    /// The outcome a stored word names; anything else counts as handled.
    pub fn parse(text: &str) -> Self {
        if text == "failed" { Self::Failed } else { Self::Handled }
    }
}

/// What [`DbBackend::begin`] found.
pub enum Begun {
    /// The message is new: its transaction.
    Transaction(Box<dyn DbTransaction>),
    /// An earlier delivery of the message already committed this outcome.
    Settled(InboxOutcome),
}

/// The open transaction of one invocation on a transactional route.
#[async_trait]
pub trait DbTransaction: Send {
    /// Run a statement inside the transaction; rows affected.
    async fn execute(&mut self, sql: &str, params: Vec<Value>) -> Result<u64, BackendError>;
    /// Run a query inside the transaction, seeing its own writes.
    async fn query(&mut self, sql: &str, params: Vec<Value>) -> Result<RowSet, BackendError>;
    /// Record the message in the inbox with `outcome` and `outbox` for the
    /// relay, then commit. `Ok(false)` when another delivery of the same
    /// message committed first; this one is then rolled back.
    async fn commit(
        self: Box<Self>,
        inbox: &InboxKey,
        outcome: InboxOutcome,
        outbox: &[Outgoing],
    ) -> Result<bool, BackendError>;
}
