//! Coalescing inserts that arrive together into multi-row statements.
//!
//! A batch is planned first: plain single-row `INSERT ... VALUES` statements
//! that target the same table and columns become one multi-row `INSERT` (in
//! chunks under the databases' parameter limits); every other statement runs
//! as it is. If a multi-row insert fails, its rows run again one by one, so a
//! bad row fails only its own caller.

use std::collections::HashMap;

use sqlparser::ast::{Expr, Insert, SetExpr, Statement, Value as SqlValue, ValueWithSpan};
use sqlparser::dialect::{Dialect, GenericDialect, MySqlDialect, PostgreSqlDialect};
use sqlparser::parser::Parser;

use crate::contract::bindings::db::Value;

/// One caller's statement.
pub type Statement1 = (String, Vec<Value>);

/// The most bind parameters one statement may carry (both databases' limit).
const MAX_PARAMS: usize = 65_535;
/// The most rows one coalesced insert carries.
const MAX_ROWS: usize = 1_000;
/// How many statements' plans are remembered, so a handler's statement is
/// parsed once rather than on every call.
const PLAN_CACHE: usize = 512;

/// Which placeholders a dialect uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholders {
    /// `$1, $2, ...` (PostgreSQL).
    Numbered,
    /// `?` (MySQL).
    Question,
}

/// How a statement of a batch is run.
pub(super) enum Unit {
    /// One caller's statement, as it is.
    Single { caller: usize },
    /// Several callers' single-row inserts as one multi-row insert.
    Group { sql: String, params: Vec<Value>, callers: Vec<usize> },
}

/// How a batch will run.
pub struct Plan(pub(super) Vec<Unit>);

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
