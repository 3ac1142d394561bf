//! The MySQL and MariaDB dialect of the SQL server backend: its session
//! setup, values and statements. Parameters bind to `?`. Sessions run in UTC,
//! so timestamps mean the same to every handler.

use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions, MySqlRow};
use sqlx::types::time::{OffsetDateTime, PrimitiveDateTime};
use sqlx::{Column, MySql as My, MySqlConnection, Row, TypeInfo, ValueRef};

use super::logins::Login;
use super::plan::Placeholders;
use super::postgres::{micros, timestamp};
use super::server::{Dialect, SqlConnection, TransactionStatements, sql_connection};
use crate::config::{SqlServerConfig, TableGrant};
use crate::contract::bindings::db::{RowSet, Value};
use crate::contract::db::SqlDialect;
use crate::contract::errors::BackendError;
use crate::contract::util::redact;

/// MySQL and MariaDB.
pub struct MySql;

impl Dialect for MySql {
    type Db = My;
    const TYPE: &'static str = "mysql";
    const SQL: SqlDialect = SqlDialect::MySql;
    const PLACEHOLDERS: Placeholders = Placeholders::Question;
    // The inbox key fits InnoDB's 3072-byte limit in utf8mb4.
    const TRANSACTIONS: &'static TransactionStatements = &TransactionStatements {
        tables: [
            "CREATE TABLE IF NOT EXISTS switchyard_inbox (route VARCHAR(191) NOT NULL, message VARCHAR(500) NOT NULL, \
             outcome VARCHAR(16) NOT NULL, settled_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), \
             PRIMARY KEY (route, message))",
            "CREATE TABLE IF NOT EXISTS switchyard_outbox (id BIGINT AUTO_INCREMENT PRIMARY KEY, \
             message_id VARCHAR(520) NOT NULL, destination TEXT NOT NULL, payload LONGBLOB NOT NULL, \
             headers LONGTEXT NOT NULL, msg_key TEXT NULL, signature VARCHAR(64) NULL, \
             created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))",
        ],
        signature_column: "ALTER TABLE switchyard_outbox ADD COLUMN signature VARCHAR(64) NULL",
        lookup: "SELECT outcome FROM switchyard_inbox WHERE route = ? AND message = ?",
        insert_inbox: "INSERT INTO switchyard_inbox (route, message, outcome) VALUES (?, ?, ?)",
        insert_outbox: "INSERT INTO switchyard_outbox (message_id, destination, payload, headers, msg_key, signature) \
                        VALUES (?, ?, ?, ?, ?, ?)",
        delete_outbox: "DELETE FROM switchyard_outbox WHERE id IN",
    };
    const DATABASE: &'static str = "SELECT DATABASE()";
    const SECRET: [&'static str; 2] = [
        "CREATE TABLE IF NOT EXISTS switchyard_login_secret (id INT PRIMARY KEY, secret VARCHAR(128) NOT NULL)",
        "INSERT IGNORE INTO switchyard_login_secret (id, secret) VALUES (1, ?)",
    ];

    fn connect<'a>(
        config: &'a SqlServerConfig,
        tenant: Option<(&'a Login, Duration)>,
    ) -> BoxFuture<'a, Result<sqlx::MySqlPool, BackendError>> {
        Box::pin(async move {
            let mut connect: MySqlConnectOptions = config
                .url
                .parse()
                .map_err(|e| BackendError::Invalid(format!("mysql url {}: {e}", redact(&config.url))))?;
            connect = connect.timezone(Some("+00:00".to_string()));
            let mut address = format!("mysql at {}", redact(&config.url));
            if let Some((login, _)) = tenant {
                connect = connect.username(&login.name).password(&login.password);
                address = format!("{address} as {}", login.name);
            }
            let timeout = tenant.map(|(_, timeout)| timeout);
            MySqlPoolOptions::new()
                // READ COMMITTED, as PostgreSQL's default: under InnoDB's
                // REPEATABLE READ the outbox relay's `FOR UPDATE SKIP LOCKED`
                // would also lock the gap after the last row, holding up every
                // commit that adds to the outbox while the relay publishes.
                .after_connect(move |conn, _| {
                    Box::pin(async move {
                        conn.run("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED", &[]).await?;
                        if let Some(timeout) = timeout {
                            // MariaDB stops any statement past it; MySQL has
                            // only a limit on SELECTs.
                            let mariadb = format!("SET SESSION max_statement_time = {}", timeout.as_secs_f64());
                            if conn.run(&mariadb, &[]).await.is_err() {
                                let mysql = format!("SET SESSION max_execution_time = {}", timeout.as_millis());
                                conn.run(&mysql, &[]).await?;
                            }
                        }
                        Ok(())
                    })
                })
                .max_connections(config.max_connections)
                .acquire_timeout(Duration::from_millis(config.timeout_ms))
                .connect_with(connect)
                .await
                .map_err(|e| BackendError::Unavailable(format!("cannot connect to {address}: {e}")))
        })
    }

    fn provision(database: &str, login: &Login, grants: &[TableGrant<'_>], transactional: bool) -> Vec<String> {
        let user = format!("'{}'@'%'", login.name);
        let mut statements = vec![
            format!("CREATE USER IF NOT EXISTS {user} IDENTIFIED BY '{}'", login.password),
            format!("ALTER USER {user} IDENTIFIED BY '{}'", login.password),
            // Every privilege it held, so a grant taken out of the config is taken back.
            format!("REVOKE ALL PRIVILEGES, GRANT OPTION FROM {user}"),
        ];
        const WRITE: &str = "SELECT, INSERT, UPDATE, DELETE";
        for grant in grants {
            match grant {
                TableGrant::All => {}
                TableGrant::Table { schema, table } => statements.push(format!(
                    "GRANT {WRITE} ON {}.{} TO {user}",
                    ident(schema.unwrap_or(database)),
                    ident(table)
                )),
                TableGrant::Schema(schema) => {
                    statements.push(format!("GRANT {WRITE} ON {}.* TO {user}", ident(schema)))
                }
            }
        }
        if transactional {
            let (db, inbox, outbox) = (ident(database), ident(&login.inbox), ident(&login.outbox));
            statements.push(format!("GRANT SELECT, INSERT ON {db}.{inbox} TO {user}"));
            statements.push(format!("GRANT INSERT ON {db}.{outbox} TO {user}"));
        }
        statements
    }

    fn cancel_overdue<'a>(
        conn: &'a mut MySqlConnection,
        login: &'a str,
        limit: Duration,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
        Box::pin(async move {
            let found = conn
                .fetch(
                    "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ? AND COMMAND IN ('Query', 'Execute') \
                     AND TIME >= ?",
                    &[Value::Text(login.to_string()), Value::Int(limit.as_secs_f64().ceil() as i64)],
                )
                .await?;
            let mut cancelled = 0;
            for row in found.rows {
                if let Some(Value::Int(id)) = row.first() {
                    // It may have ended meanwhile.
                    if conn.run(&format!("KILL QUERY {id}"), &[]).await.is_ok() {
                        cancelled += 1;
                    }
                }
            }
            Ok(cancelled)
        })
    }
}

/// A name quoted as MySQL quotes one; names are case-sensitive here, as on
/// every server that keeps tables in a case-sensitive file system.
fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

sql_connection!(MySqlConnection, bind, decode);

type MyQuery<'q> = sqlx::query::Query<'q, My, sqlx::mysql::MySqlArguments>;

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
