//! The PostgreSQL dialect of the SQL server backend: its session setup,
//! values and statements. Parameters bind to `$1, $2, ...`; `?` placeholders
//! are numbered in order, so a handler written for SQLite or MySQL runs here
//! unchanged.

use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow, PgTypeInfo, PgValueRef};
use sqlx::types::time::{OffsetDateTime, PrimitiveDateTime};
use sqlx::{Column, PgConnection, Postgres as Pg, Row, TypeInfo, ValueRef};

use super::logins::Login;
use super::plan::{Placeholders, number_question_marks};
use super::server::{Dialect, SqlConnection, TransactionStatements, sql_connection};
use crate::config::{SqlServerConfig, TableGrant};
use crate::contract::bindings::db::{RowSet, Value};
use crate::contract::db::SqlDialect;
use crate::contract::errors::BackendError;
use crate::contract::util::redact;

/// PostgreSQL.
pub struct Postgres;

impl Dialect for Postgres {
    type Db = Pg;
    const TYPE: &'static str = "postgres";
    const SQL: SqlDialect = SqlDialect::Postgres;
    const PLACEHOLDERS: Placeholders = Placeholders::Numbered;
    const TRANSACTIONS: &'static TransactionStatements = &TransactionStatements {
        tables: [
            "CREATE TABLE IF NOT EXISTS switchyard_inbox (route TEXT NOT NULL, message TEXT NOT NULL, \
             outcome TEXT NOT NULL, settled_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (route, message))",
            "CREATE TABLE IF NOT EXISTS switchyard_outbox (id BIGSERIAL PRIMARY KEY, message_id TEXT NOT NULL, \
             destination TEXT NOT NULL, payload BYTEA NOT NULL, headers TEXT NOT NULL, msg_key TEXT, \
             signature TEXT, created_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        ],
        signature_column: "ALTER TABLE switchyard_outbox ADD COLUMN IF NOT EXISTS signature TEXT",
        lookup: "SELECT outcome FROM switchyard_inbox WHERE route = $1 AND message = $2",
        insert_inbox: "INSERT INTO switchyard_inbox (route, message, outcome) VALUES ($1, $2, $3)",
        insert_outbox: "INSERT INTO switchyard_outbox (message_id, destination, payload, headers, msg_key, signature) \
                        VALUES ($1, $2, $3, $4, $5, $6)",
        delete_outbox: "DELETE FROM switchyard_outbox WHERE id IN",
    };
    const DATABASE: &'static str = "SELECT current_database()::text";
    const SECRET: [&'static str; 2] = [
        "CREATE TABLE IF NOT EXISTS switchyard_login_secret (id INT PRIMARY KEY, secret TEXT NOT NULL)",
        "INSERT INTO switchyard_login_secret (id, secret) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
    ];

    fn connect<'a>(
        config: &'a SqlServerConfig,
        tenant: Option<(&'a Login, Duration)>,
    ) -> BoxFuture<'a, Result<sqlx::PgPool, BackendError>> {
        Box::pin(async move {
            let mut connect: PgConnectOptions = config
                .url
                .parse()
                .map_err(|e| BackendError::Invalid(format!("postgres url {}: {e}", redact(&config.url))))?;
            let mut options = vec![("search_path", "public".to_string()), ("TimeZone", "UTC".to_string())];
            if let Some((login, timeout)) = tenant {
                connect = connect.username(&login.name).password(&login.password);
                options.push(("statement_timeout", timeout.as_millis().to_string()));
                // A statement whose client went away (its handler ended) stops
                // at the next check, not when it finishes.
                options.push(("client_connection_check_interval", "1000".to_string()));
            }
            // Unqualified names resolve in `public` only, whatever the server's
            // default; the statement check refuses `SET` and `set_config`.
            let connect = connect.options(options);
            let address =
                format!("postgres at {}:{} as {}", connect.get_host(), connect.get_port(), connect.get_username());
            PgPoolOptions::new()
                .max_connections(config.max_connections)
                .acquire_timeout(Duration::from_millis(config.timeout_ms))
                .connect_with(connect)
                .await
                .map_err(|e| BackendError::Unavailable(format!("cannot connect to {address}: {e}")))
        })
    }

    fn provision(_database: &str, login: &Login, grants: &[TableGrant<'_>], transactional: bool) -> Vec<String> {
        let name = &login.name;
        let mut statements = vec![
            format!("DO $$ BEGIN CREATE ROLE {name} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$"),
            format!(
                "ALTER ROLE {name} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS \
                 PASSWORD '{}'",
                login.password
            ),
            // Membership lets the host take back what the login holds and
            // cancel its statements.
            format!("GRANT {name} TO CURRENT_USER"),
            // Every privilege it held in this database, so a grant taken out
            // of the config is taken back.
            format!("DROP OWNED BY {name}"),
        ];
        const WRITE: &str = "SELECT, INSERT, UPDATE, DELETE";
        for grant in grants {
            match grant {
                TableGrant::All => {}
                TableGrant::Table { schema, table } => {
                    let table = match schema {
                        Some(schema) => {
                            statements.push(format!("GRANT USAGE ON SCHEMA {} TO {name}", ident(schema)));
                            format!("{}.{}", ident(schema), ident(table))
                        }
                        None => ident(table),
                    };
                    statements.push(format!("GRANT {WRITE} ON TABLE {table} TO {name}"));
                    // The sequences behind its serial and identity columns, and no other.
                    statements.push(format!(
                        "DO $$ DECLARE s regclass; BEGIN FOR s IN SELECT d.objid::regclass FROM pg_depend d \
                         JOIN pg_class c ON c.oid = d.objid WHERE c.relkind = 'S' AND d.classid = 'pg_class'::regclass \
                         AND d.refobjid = '{}'::regclass LOOP \
                         EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE %s TO {name}', s); END LOOP; END $$",
                        table.replace('\'', "''")
                    ));
                }
                TableGrant::Schema(schema) => {
                    let schema = ident(schema);
                    statements.push(format!("GRANT USAGE ON SCHEMA {schema} TO {name}"));
                    statements.push(format!("GRANT {WRITE} ON ALL TABLES IN SCHEMA {schema} TO {name}"));
                    statements.push(format!("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {name}"));
                }
            }
        }
        if transactional {
            statements.push(format!("GRANT SELECT, INSERT ON TABLE {} TO {name}", login.inbox));
            statements.push(format!("GRANT INSERT ON TABLE {} TO {name}", login.outbox));
            statements.push(format!("GRANT USAGE ON SEQUENCE {}_id_seq TO {name}", login.outbox));
        }
        statements
    }

    fn cancel_overdue<'a>(
        conn: &'a mut PgConnection,
        login: &'a str,
        limit: Duration,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
        Box::pin(async move {
            let found = conn
                .fetch(
                    "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity WHERE usename = $1 \
                     AND state = 'active' AND query_start < now() - make_interval(secs => $2)",
                    &[Value::Text(login.to_string()), Value::Float(limit.as_secs_f64())],
                )
                .await?;
            Ok(match found.rows.first().and_then(|r| r.first()) {
                Some(Value::Int(n)) => *n as u64,
                _ => 0,
            })
        })
    }

    fn prepare(sql: String) -> String {
        number_question_marks(&sql)
    }
}

/// A name as PostgreSQL folds an unquoted one, quoted, so a table called
/// `order` or `user` can be granted too.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.to_lowercase())
}

sql_connection!(PgConnection, bind, decode);

/// A NULL whose type the server infers from where it is used, so a null
/// binds to a column of any type.
struct UntypedNull;

impl sqlx::Type<Pg> for UntypedNull {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(sqlx::postgres::types::Oid(0))
    }
}

impl sqlx::Encode<'_, Pg> for UntypedNull {
    fn encode_by_ref(
        &self,
        _: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        Ok(sqlx::encode::IsNull::Yes)
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, Pg, sqlx::postgres::PgArguments>;

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
pub fn timestamp(us: i64) -> Result<OffsetDateTime, sqlx::Error> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .map_err(|e| sqlx::Error::Encode(format!("timestamp {us} µs is out of range: {e}").into()))
}

/// A UTC time as microseconds since the epoch.
pub fn micros(t: OffsetDateTime) -> Result<i64, sqlx::Error> {
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
