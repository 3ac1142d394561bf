//! The `db` capability: the host side of the WIT interface, and the check
//! of each statement against the tenant's tables.

use std::ops::ControlFlow;

use sqlparser::ast::{Expr, ObjectName, ObjectNamePart, Query, SetExpr, Statement, TableFactor, Visit, Visitor};
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
/// that names a table outside `granted` or one of the host's own
/// (`switchyard_*`), or that uses a form the check cannot follow: a table
/// function or a set-returning function in `FROM`, PostgreSQL's `TABLE x`,
/// `SELECT ... INTO`, MySQL's executable comments (`/*! ... */`), Unicode-
/// escaped names (`U&"..."`), or a function able to reach past the grants or
/// hold a connection (`set_config`, `query_to_xml`, `pg_*`, `dblink`, `lo_*`,
/// `load_file`, `sleep`, `benchmark`, `get_lock`, and the sequence functions,
/// which name a relation in a string). `"*"` grants every statement: the
/// tenant runs as the host's own login, by the config's word;
/// an entry `schema.*` grants every table of that schema, named with its
/// schema: an unqualified name never matches a schema grant, so the server's
/// `search_path` cannot widen one. No tables granted refuses every statement.
///
/// On PostgreSQL and MySQL this check is the second line: each tenant runs as
/// a login the server itself holds to these tables (`sql/logins.rs`).
pub fn check_tables(granted: &[String], dialect: SqlDialect, sql: &str) -> Result<(), CapabilityFailure> {
    if granted.is_empty() {
        return Err(CapabilityFailure::Denied("no tables are granted to this tenant".into()));
    }
    if granted.iter().any(|t| t == "*") {
        return Ok(());
    }
    let folded = sql.to_ascii_lowercase();
    if dialect == SqlDialect::MySql && (folded.contains("/*!") || folded.contains("/*m!")) {
        return Err(CapabilityFailure::Denied("executable comments (/*! ... */) are not granted".into()));
    }
    // PostgreSQL reads `U&` only with nothing between the two characters.
    if dialect == SqlDialect::Postgres && folded.contains("u&") {
        return Err(CapabilityFailure::Denied("Unicode-escaped names and strings (U&) are not granted".into()));
    }
    let parser: &dyn Dialect = match dialect {
        SqlDialect::Sqlite => &SQLiteDialect {},
        SqlDialect::Postgres => &PostgreSqlDialect {},
        SqlDialect::MySql => &MySqlDialect {},
    };
    let statements = Parser::parse_sql(parser, sql)
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
    let mut check = Check { granted, dialect };
    match statement.visit(&mut check) {
        ControlFlow::Break(refusal) => Err(refusal),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// Walks a statement, breaking with the first thing it refuses.
struct Check<'a> {
    granted: &'a [String],
    dialect: SqlDialect,
}

impl Check<'_> {
    /// The parts of a table name as the server resolves them: PostgreSQL
    /// folds unquoted names to lower case and keeps quoted ones as written
    /// ("Orders" is another table); MySQL compares names as written, as its
    /// tables are files on a case-sensitive file system; SQLite ignores case.
    fn parts(&self, name: &ObjectName) -> Vec<String> {
        name.0
            .iter()
            .map(|p| match (p, self.dialect) {
                (ObjectNamePart::Identifier(ident), SqlDialect::Postgres) if ident.quote_style.is_some() => {
                    ident.value.clone()
                }
                (ObjectNamePart::Identifier(ident), SqlDialect::MySql) => ident.value.clone(),
                (ObjectNamePart::Identifier(ident), _) => ident.value.to_lowercase(),
                (other, _) => other.to_string(),
            })
            .collect()
    }

    fn granted(&self, parts: &[String]) -> bool {
        let fold = |s: &str| if self.dialect == SqlDialect::MySql { s.to_string() } else { s.to_lowercase() };
        self.granted.iter().any(|g| {
            if g == "*" {
                return true;
            }
            let g: Vec<String> = g.split('.').map(fold).collect();
            match g.as_slice() {
                [schema, star] if star == "*" => parts.len() == 2 && parts[0] == *schema,
                _ => g.len() == parts.len() && g.iter().zip(parts).all(|(a, b)| a == b),
            }
        })
    }
}

impl Visitor for Check<'_> {
    type Break = CapabilityFailure;

    fn pre_visit_relation(&mut self, name: &ObjectName) -> ControlFlow<CapabilityFailure> {
        let parts = self.parts(name);
        let full = parts.join(".");
        if parts.last().is_some_and(|t| t.to_lowercase().starts_with("switchyard_")) {
            return ControlFlow::Break(CapabilityFailure::Denied(format!(
                "table {full:?} is the host's own, not a tenant's"
            )));
        }
        if !self.granted(&parts) {
            return ControlFlow::Break(CapabilityFailure::Denied(format!(
                "table {full:?} is outside the tenant's tables {:?}",
                self.granted
            )));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<CapabilityFailure> {
        match factor {
            TableFactor::Table { args: None, .. } | TableFactor::Derived { .. } | TableFactor::NestedJoin { .. } => {
                ControlFlow::Continue(())
            }
            other => ControlFlow::Break(CapabilityFailure::Denied(format!(
                "only tables and subqueries are granted in FROM, not `{other}`"
            ))),
        }
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<CapabilityFailure> {
        fn refused(body: &SetExpr) -> Option<&'static str> {
            match body {
                SetExpr::Table(_) => Some("`TABLE name` is not granted; write SELECT * FROM name"),
                SetExpr::Select(select) if select.into.is_some() => Some("SELECT ... INTO is not granted"),
                SetExpr::SetOperation { left, right, .. } => refused(left).or_else(|| refused(right)),
                _ => None,
            }
        }
        match refused(&query.body) {
            Some(reason) => ControlFlow::Break(CapabilityFailure::Denied(reason.into())),
            None => ControlFlow::Continue(()),
        }
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<CapabilityFailure> {
        if let Expr::Function(f) = expr
            && let Some(name) = escaping_function(&f.name)
        {
            return ControlFlow::Break(CapabilityFailure::Denied(format!(
                "function {name:?} is not granted to this tenant"
            )));
        }
        ControlFlow::Continue(())
    }
}

/// The function's name, if it could reach past table grants or hold a
/// pooled connection.
fn escaping_function(name: &ObjectName) -> Option<String> {
    let name = name.0.last().map(|p| p.to_string().to_lowercase()).unwrap_or_default();
    let name = name.trim_matches(['"', '`']).to_string();
    let escapes = ["pg_", "lo_", "dblink", "sys_"].iter().any(|p| name.starts_with(p))
        || ["_to_xml", "_to_xmlschema", "_to_xml_and_xmlschema"].iter().any(|s| name.ends_with(s))
        || [
            "set_config",
            "current_setting",
            "load_file",
            "copy",
            "sleep",
            "benchmark",
            "get_lock",
            "release_lock",
            // A sequence or table named in a string is no table reference.
            "nextval",
            "setval",
            "currval",
            "lastval",
            "to_regclass",
            "has_table_privilege",
        ]
        .contains(&name.as_str());
    escapes.then_some(name)
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

    #[test]
    fn the_ways_around_a_grant_are_refused() {
        let on = |dialect, sql: &str| check_tables(&["orders".to_string()], dialect, sql);
        let denied = |dialect, sql: &str| {
            let result = on(dialect, sql);
            assert!(matches!(result, Err(CapabilityFailure::Denied(_))), "{sql}: {result:?}");
        };
        use SqlDialect::{MySql, Postgres, Sqlite};
        // Forms that name a table without a FROM the old check followed.
        denied(Postgres, "SELECT * FROM orders UNION ALL TABLE secrets");
        denied(Postgres, "SELECT * INTO stolen FROM orders");
        // Set-returning and query-running functions in FROM / LATERAL.
        denied(Postgres, "SELECT * FROM orders, LATERAL generate_series(1, 10)");
        denied(Postgres, "SELECT * FROM query_to_xml('select * from secrets', true, true, '') x");
        denied(Postgres, "SELECT * FROM orders CROSS JOIN unnest(ARRAY[1,2])");
        // Unicode-escaped names hide a function or a table.
        denied(Postgres, r#"SELECT U&"\0070g_read_file"('/etc/passwd') FROM orders"#);
        denied(Postgres, r#"SELECT * FROM u&"s\0065crets""#);
        // MySQL runs what is inside an executable comment.
        denied(MySql, "SELECT id FROM orders /*! UNION SELECT secret FROM secrets */");
        denied(MySql, "SELECT id FROM orders /*M!100000 UNION SELECT 1 */");
        // MySQL table names are case-sensitive here: `Orders` is another table.
        denied(MySql, "SELECT * FROM Orders");
        on(MySql, "SELECT * FROM orders").unwrap();
        on(Sqlite, "SELECT * FROM Orders").unwrap();
        // Sleeps and locks hold a pooled connection.
        denied(MySql, "SELECT sleep(100) FROM orders");
        denied(MySql, "SELECT benchmark(100000000, md5('x')) FROM orders");
        denied(Postgres, "SELECT pg_sleep(100) FROM orders");
        // The host's own tables.
        denied(Postgres, "INSERT INTO switchyard_outbox (id) VALUES (1)");
        // A sequence named in a string is no table reference.
        denied(Postgres, "SELECT nextval('other_id_seq') FROM orders");
        // Nothing granted: nothing runs, not even a statement without tables.
        let none = check_tables(&[], Postgres, "SELECT pg_backend_pid()");
        assert!(matches!(none, Err(CapabilityFailure::Denied(_))), "{none:?}");
    }
}
