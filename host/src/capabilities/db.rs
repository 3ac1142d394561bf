//! The `db` capability: the host side of the WIT interface, and the check
//! of each statement against the tenant's tables.

use std::ops::ControlFlow;

use sqlparser::ast::{Expr, ObjectNamePart, Statement, visit_expressions, visit_relations};
use sqlparser::dialect::{Dialect, MySqlDialect, PostgreSqlDialect, SQLiteDialect};
use sqlparser::parser::Parser;

use crate::contract::bindings::db::{self, RowSet, Value};
use crate::contract::db::SqlDialect;
use crate::contract::errors::CapabilityFailure;

use super::context::{CapabilityCtx, Effect, check_size, printable};

impl CapabilityCtx {
    /// The statement as the backend will run it, checked against grants.
    fn check_sql(&self, sql: String) -> Result<String, CapabilityFailure> {
        check_size("SQL statement", sql.len())?;
        let db = &self.access.backends.db;
        // Check what will run: on PostgreSQL, `?` placeholders become `$n`.
        let sql = db.prepare(sql);
        check_tables(&self.access.grants.db_tables, db.dialect(), &sql)?;
        Ok(sql)
    }
}

/// Refuse a statement that is not a single query, insert, update or delete,
/// that names a table outside `granted`, or that calls a function able to
/// reach past the grants (`set_config` changing the `search_path`,
/// `query_to_xml` running SQL from a string, `pg_*`, `dblink`, `lo_*`,
/// `load_file`). `"*"` grants everything; an entry `schema.*` grants every
/// table of that schema, named with its schema: an unqualified name never
/// matches a schema grant, so the server's `search_path` cannot widen one.
pub(crate) fn check_tables(granted: &[String], dialect: SqlDialect, sql: &str) -> Result<(), CapabilityFailure> {
    if granted.iter().any(|t| t == "*") {
        return Ok(());
    }
    let dialect_is_postgres = dialect == SqlDialect::Postgres;
    let dialect: &dyn Dialect = match dialect {
        SqlDialect::Sqlite => &SQLiteDialect {},
        SqlDialect::Postgres => &PostgreSqlDialect {},
        SqlDialect::MySql => &MySqlDialect {},
    };
    let statements = Parser::parse_sql(dialect, sql)
        .map_err(|e| CapabilityFailure::Invalid(format!("cannot parse SQL to check its tables: {e}")))?;
    let [statement] = statements.as_slice() else {
        return Err(CapabilityFailure::Invalid(format!("one statement per call, found {}", statements.len())));
    };
    if !matches!(
        statement,
        Statement::Query(_) | Statement::Insert(_) | Statement::Update { .. } | Statement::Delete(_)
    ) {
        return Err(CapabilityFailure::Denied(
            "only SELECT, INSERT, UPDATE and DELETE are granted to this tenant".into(),
        ));
    }
    if let Some(function) = escaping_function(statement) {
        return Err(CapabilityFailure::Denied(format!("function {function:?} is not granted to this tenant")));
    }
    let mut refused = None;
    let _ = visit_relations(statement, |name| {
        let parts: Vec<String> = name
            .0
            .iter()
            .map(|p| match p {
                // PostgreSQL folds unquoted names to lower case and keeps
                // quoted ones as written: "Orders" is another table.
                ObjectNamePart::Identifier(ident) if ident.quote_style.is_some() && dialect_is_postgres => {
                    ident.value.clone()
                }
                ObjectNamePart::Identifier(ident) => ident.value.to_lowercase(),
                other => other.to_string().to_lowercase(),
            })
            .collect();
        let full = parts.join(".");
        let allowed = granted.iter().any(|g| {
            let g = g.to_lowercase();
            let g: Vec<&str> = g.split('.').collect();
            match g.as_slice() {
                [schema, "*"] => parts.len() == 2 && parts[0] == *schema,
                _ => g.len() == parts.len() && g.iter().zip(&parts).all(|(a, b)| a == b),
            }
        });
        if allowed {
            ControlFlow::Continue(())
        } else {
            refused = Some(full);
            ControlFlow::Break(())
        }
    });
    match refused {
        Some(table) => {
            Err(CapabilityFailure::Denied(format!("table {table:?} is outside the tenant's tables {granted:?}")))
        }
        None => Ok(()),
    }
}

/// The first function `statement` calls that could reach past table grants.
fn escaping_function(statement: &Statement) -> Option<String> {
    let mut found = None;
    let _ = visit_expressions(statement, |expr| {
        if let Expr::Function(f) = expr {
            let name = f.name.0.last().map(|p| p.to_string().to_lowercase()).unwrap_or_default();
            let name = name.trim_matches(['"', '`']).to_string();
            let escapes = name.starts_with("pg_")
                || name.starts_with("lo_")
                || name.starts_with("dblink")
                || name.ends_with("_to_xml")
                || name.ends_with("_to_xmlschema")
                || name.ends_with("_to_xml_and_xmlschema")
                || ["set_config", "current_setting", "load_file", "sys_exec", "sys_eval", "copy"]
                    .contains(&name.as_str());
            if escapes {
                found = Some(name);
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    });
    found
}

impl db::Host for CapabilityCtx {
    async fn execute(&mut self, sql: String, params: Vec<Value>) -> Result<u64, CapabilityFailure> {
        let sql = self.check_sql(sql)?;
        self.record(|| Effect::DbExecute { sql: sql.clone(), params: params.iter().map(value_json).collect() });
        if let Some(tx) = &mut self.transaction {
            return Ok(tx.execute(&sql, params).await?);
        }
        Ok(self.access.backends.db.execute(&sql, params).await?)
    }

    async fn query(&mut self, sql: String, params: Vec<Value>) -> Result<RowSet, CapabilityFailure> {
        let sql = self.check_sql(sql)?;
        if let Some(tx) = &mut self.transaction {
            return Ok(tx.query(&sql, params).await?);
        }
        Ok(self.access.backends.db.query(&sql, params).await?)
    }
}

/// A value as JSON, for effect reports.
pub(crate) fn value_json(v: &Value) -> serde_json::Value {
    use serde_json::json;
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Boolean(b) => json!(b),
        Value::Int(i) => json!(i),
        Value::Float(f) => json!(f),
        Value::Text(s) => json!(s),
        Value::Bytes(b) => json!({ "bytes": printable(b) }),
        Value::Json(j) => serde_json::from_str(j).unwrap_or_else(|_| json!(j)),
        Value::Timestamp(t) => json!({ "timestamp_us": t }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(granted: &[&str], sql: &str) -> Result<(), CapabilityFailure> {
        let granted: Vec<String> = granted.iter().map(|s| s.to_string()).collect();
        check_tables(&granted, SqlDialect::Sqlite, sql)
    }

    #[test]
    fn granted_tables_pass() {
        check(&["orders"], "INSERT INTO orders (id) VALUES (?)").unwrap();
        check(&["orders"], "SELECT * FROM Orders WHERE id = ?").unwrap();
        check(&["shop.*"], "UPDATE shop.orders SET total = 1").unwrap();
        check(&["*"], "DROP TABLE anything").unwrap();
    }

    #[test]
    fn other_tables_are_denied_by_name() {
        let err = check(&["orders"], "SELECT * FROM orders JOIN users ON users.id = orders.customer").unwrap_err();
        assert!(matches!(&err, CapabilityFailure::Denied(m) if m.contains("\"users\"")), "{err}");
        let err = check(&["orders"], "SELECT * FROM orders WHERE id IN (SELECT id FROM secrets)").unwrap_err();
        assert!(matches!(&err, CapabilityFailure::Denied(m) if m.contains("secrets")), "{err}");
        let err = check(&["shop.*"], "SELECT * FROM other.orders").unwrap_err();
        assert!(matches!(err, CapabilityFailure::Denied(_)));
    }

    #[test]
    fn schema_grants_cannot_be_widened_on_postgres() {
        let pg = |granted: &[&str], sql: &str| {
            let granted: Vec<String> = granted.iter().map(|s| s.to_string()).collect();
            check_tables(&granted, SqlDialect::Postgres, sql)
        };
        pg(&["shop.*"], "SELECT * FROM shop.orders").unwrap();
        // Unqualified names resolve through search_path: not under a schema grant.
        assert!(matches!(pg(&["shop.*"], "SELECT * FROM orders"), Err(CapabilityFailure::Denied(_))));
        let err = pg(&["shop.*"], "SELECT set_config('search_path', 'secret', false) FROM shop.orders").unwrap_err();
        assert!(matches!(&err, CapabilityFailure::Denied(m) if m.contains("set_config")), "{err}");
        assert!(matches!(
            pg(&["shop.*"], "SELECT query_to_xml('select * from secret.keys', true, true, '')"),
            Err(CapabilityFailure::Denied(_))
        ));
        assert!(matches!(pg(&["shop.*"], "SELECT pg_read_file('/etc/passwd')"), Err(CapabilityFailure::Denied(_))));
        // A quoted name with a dot is one table, not schema and table.
        assert!(matches!(pg(&["shop.orders"], r#"SELECT * FROM "shop.orders""#), Err(CapabilityFailure::Denied(_))));
        assert!(matches!(pg(&["orders"], r#"SELECT * FROM "Orders""#), Err(CapabilityFailure::Denied(_))));
        assert!(matches!(pg(&["shop.*"], "SELECT * FROM db.shop.orders"), Err(CapabilityFailure::Denied(_))));
    }

    #[test]
    fn escapes_are_refused() {
        assert!(matches!(check(&["orders"], "ATTACH DATABASE 'x.db' AS x"), Err(CapabilityFailure::Denied(_))));
        assert!(matches!(check(&["orders"], "DROP TABLE orders"), Err(CapabilityFailure::Denied(_))));
        assert!(matches!(
            check(&["orders"], "SELECT 1 FROM orders; DELETE FROM users"),
            Err(CapabilityFailure::Invalid(_))
        ));
        assert!(matches!(check(&["orders"], "SELEKT nonsense"), Err(CapabilityFailure::Invalid(_))));
    }
}
