//! The conformance checks every cache backend and every db backend must pass,
//! run by each service's test file against the real service. Effects are
//! checked through the test's own connection to the service (`Direct`), not
//! through the backend under test, wherever the check is about what was stored.

use std::sync::Arc;
use std::time::Duration;

use switchyard::contract::bindings::db::Value;
use switchyard::contract::cache::CacheBackend;
use switchyard::contract::db::{DbBackend, SqlDialect};
use switchyard::contract::errors::BackendError;
use switchyard::contract::search::SearchBackend;

pub use super::unique;

/// Every search backend: index, replace, delete, field and bare-term
/// queries, the limit, the stored document in hits, a missing index, a
/// malformed query, and concurrent callers each getting their own result.
/// The index name is unique to the run.
pub async fn search(search: Arc<dyn SearchBackend>) {
    let index = unique("conformance").replace('_', "-");
    let doc = |v: serde_json::Value| v.as_object().unwrap().clone();
    let ids = |hits: Vec<switchyard::contract::bindings::search::Hit>| {
        let mut ids: Vec<String> = hits.into_iter().map(|h| h.id).collect();
        ids.sort();
        ids
    };
    search.index(&index, "a", doc(serde_json::json!({"name": "alpha lamp", "color": "red"}))).await.unwrap();
    search.index(&index, "b", doc(serde_json::json!({"name": "beta lamp", "color": "blue"}))).await.unwrap();
    search.index(&index, "c", doc(serde_json::json!({"name": "gamma chair", "color": "red"}))).await.unwrap();
    assert_eq!(ids(search.query(&index, "name:alpha", 10).await.unwrap()), ["a"], "a field term");
    assert_eq!(ids(search.query(&index, "lamp", 10).await.unwrap()), ["a", "b"], "a bare term");
    assert_eq!(ids(search.query(&index, "color:red", 10).await.unwrap()), ["a", "c"]);
    assert_eq!(search.query(&index, "color:red", 1).await.unwrap().len(), 1, "the limit");
    let hit = search.query(&index, "name:gamma", 10).await.unwrap().remove(0);
    let stored: serde_json::Value = serde_json::from_str(&hit.document).unwrap();
    assert_eq!(stored, serde_json::json!({"name": "gamma chair", "color": "red"}), "hits carry the stored document");
    assert!(hit.score > 0.0);

    search.index(&index, "b", doc(serde_json::json!({"name": "delta desk", "color": "blue"}))).await.unwrap();
    assert!(search.query(&index, "name:beta", 10).await.unwrap().is_empty(), "a replaced document's old terms");
    assert_eq!(ids(search.query(&index, "name:delta", 10).await.unwrap()), ["b"]);
    search.delete(&index, "c").await.unwrap();
    search.delete(&index, "never-there").await.unwrap();
    assert!(search.query(&index, "name:gamma", 10).await.unwrap().is_empty(), "a deleted document");
    assert!(search.query(&format!("{index}-missing"), "x", 10).await.unwrap().is_empty(), "a missing index");
    let err = search.query(&index, "name:(", 10).await.unwrap_err();
    assert!(matches!(err, BackendError::Invalid(_)), "a malformed query is invalid: {err:?}");

    let calls: Vec<_> = (0..100)
        .map(|i| {
            let (search, index) = (search.clone(), index.clone());
            let body = doc(serde_json::json!({"name": format!("item n{i}")}));
            tokio::spawn(async move { search.index(&index, &format!("n{i}"), body).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(ids(search.query(&index, "name:n57", 10).await.unwrap()), ["n57"]);
    assert_eq!(search.query(&index, "item", 1000).await.unwrap().len(), 100, "every concurrent write is there");
}

/// Every cache backend: get, set with TTL, delete, increment, get-many, and
/// concurrent callers each getting their own result. `prefix` keeps the
/// run's keys apart from any other's.
pub async fn cache(cache: Arc<dyn CacheBackend>, prefix: &str) {
    let k = |s: &str| format!("{prefix}{s}");
    assert_eq!(cache.get(&k("missing")).await.unwrap(), None);
    cache.set(&k("a"), b"1".to_vec(), None).await.unwrap();
    assert_eq!(cache.get(&k("a")).await.unwrap(), Some(b"1".to_vec()));
    cache.set(&k("bin"), vec![0, 255, 1, 0], None).await.unwrap();
    assert_eq!(cache.get(&k("bin")).await.unwrap(), Some(vec![0, 255, 1, 0]), "binary values survive");

    cache.set(&k("ttl"), b"x".to_vec(), Some(Duration::from_millis(150))).await.unwrap();
    assert_eq!(cache.get(&k("ttl")).await.unwrap(), Some(b"x".to_vec()));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(cache.get(&k("ttl")).await.unwrap(), None, "the entry outlived its TTL");

    assert_eq!(
        cache.get_many(&[k("a"), k("missing"), k("bin")]).await.unwrap(),
        vec![Some(b"1".to_vec()), None, Some(vec![0, 255, 1, 0])]
    );
    assert_eq!(cache.get_many(&[]).await.unwrap(), Vec::<Option<Vec<u8>>>::new());

    assert!(cache.delete(&k("a")).await.unwrap());
    assert!(!cache.delete(&k("a")).await.unwrap(), "deleting twice reports the key was gone");
    assert_eq!(cache.get(&k("a")).await.unwrap(), None);

    assert_eq!(cache.increment(&k("n"), 5).await.unwrap(), 5);
    assert_eq!(cache.increment(&k("n"), -7).await.unwrap(), -2);
    assert_eq!(cache.get(&k("n")).await.unwrap(), Some(b"-2".to_vec()));
    cache.set(&k("text"), b"abc".to_vec(), None).await.unwrap();
    let err = cache.increment(&k("text"), 1).await.unwrap_err();
    assert!(matches!(err, BackendError::Invalid(_)), "incrementing text is the call's fault: {err:?}");

    // Concurrent callers: every one gets its own result.
    let calls: Vec<_> = (0..200)
        .map(|i| {
            let (cache, key, counter) = (cache.clone(), k(&format!("c{i}")), k("counter"));
            tokio::spawn(async move {
                cache.set(&key, format!("v{i}").into_bytes(), None).await.unwrap();
                cache.increment(&counter, 1).await.unwrap()
            })
        })
        .collect();
    let mut seen: Vec<i64> = Vec::new();
    for call in calls {
        seen.push(call.await.unwrap());
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=200).collect::<Vec<i64>>(), "each increment saw its own new value");
    let keys: Vec<String> = (0..200).map(|i| k(&format!("c{i}"))).collect();
    let values = cache.get_many(&keys).await.unwrap();
    for (i, v) in values.iter().enumerate() {
        assert_eq!(v.as_deref(), Some(format!("v{i}").as_bytes()), "key c{i}");
    }
}

/// Reads and writes a database through the test's own connection.
#[async_trait::async_trait]
pub trait Direct: Send + Sync {
    /// Run a statement.
    async fn exec(&self, sql: &str);
    /// A query's single integer.
    async fn int(&self, sql: &str) -> i64;
    /// A query's single text value, if any row.
    async fn text(&self, sql: &str) -> Option<String>;
}

/// A db backend and how to talk to its server.
pub struct DbUnderTest {
    /// The `[backends.db]` table selecting the backend, without `init`.
    pub backend_toml: String,
    /// The backend, opened from `backend_toml`.
    pub db: Arc<dyn DbBackend>,
    /// The test's own connection.
    pub direct: Box<dyn Direct>,
    /// Column types for: boolean, big integer, double, text, bytes, JSON, timestamp.
    pub types: [&'static str; 7],
}

impl DbUnderTest {
    fn ph(&self, n: usize) -> String {
        match self.db.dialect() {
            SqlDialect::Postgres => format!("${n}"),
            _ => "?".into(),
        }
    }

    fn phs(&self, count: usize) -> String {
        (1..=count).map(|n| self.ph(n)).collect::<Vec<_>>().join(", ")
    }
}

fn json_eq(value: &Value, expected: &serde_json::Value) -> bool {
    // MariaDB keeps JSON as LONGTEXT with a binary collation, which its
    // protocol does not tell apart from a BLOB: it reads back as bytes.
    match value {
        Value::Json(s) | Value::Text(s) => serde_json::from_str::<serde_json::Value>(s).ok().as_ref() == Some(expected),
        Value::Bytes(b) => serde_json::from_slice::<serde_json::Value>(b).ok().as_ref() == Some(expected),
        _ => false,
    }
}

/// Every db backend: a typed round trip, coalesced inserts with one bad row,
/// and concurrent callers of every kind. Tables are named from `base`.
pub async fn db(t: &DbUnderTest, base: &str) {
    let [boolean, bigint, double, text, bytes, json, timestamp] = t.types;
    let typed = format!("{base}_typed");
    let rows = format!("{base}_rows");
    let counter = format!("{base}_counter");
    t.direct
        .exec(&format!(
            "CREATE TABLE {typed} (id {bigint} PRIMARY KEY, b {boolean}, i {bigint}, f {double}, s {text}, by_ {bytes}, j {json}, ts {timestamp})"
        ))
        .await;
    t.direct.exec(&format!("CREATE TABLE {rows} (id {bigint} PRIMARY KEY, name {text} NOT NULL)")).await;
    t.direct.exec(&format!("CREATE TABLE {counter} (id {bigint} PRIMARY KEY, n {bigint} NOT NULL)")).await;
    t.direct.exec(&format!("INSERT INTO {counter} (id, n) VALUES (1, 0)")).await;

    // Typed round trip.
    let document = serde_json::json!({"a": [1, 2], "b": "x"});
    let full = vec![
        Value::Int(1),
        Value::Boolean(true),
        Value::Int(-9_007_199_254_740_993),
        Value::Float(1.25),
        Value::Text("héllo ✓".into()),
        Value::Bytes(vec![0, 1, 255]),
        Value::Json(document.to_string()),
        Value::Timestamp(1_700_000_000_123_456),
    ];
    let insert = format!("INSERT INTO {typed} (id, b, i, f, s, by_, j, ts) VALUES ({})", t.phs(8));
    assert_eq!(t.db.execute(&insert, full.clone()).await.unwrap(), 1);
    let mut nulls = vec![Value::Int(2)];
    nulls.extend(std::iter::repeat_n(Value::Null, 7));
    assert_eq!(t.db.execute(&insert, nulls.clone()).await.unwrap(), 1);
    let back =
        t.db.query(
            &format!("SELECT id, b, i, f, s, by_, j, ts FROM {typed} WHERE id >= {} ORDER BY id", t.ph(1)),
            vec![Value::Int(0)],
        )
        .await
        .unwrap();
    assert_eq!(back.columns, ["id", "b", "i", "f", "s", "by_", "j", "ts"]);
    assert_eq!(back.rows.len(), 2);
    let row = &back.rows[0];
    assert_eq!(row[..6], full[..6], "typed values come back as they went in");
    assert!(json_eq(&row[6], &document), "json: {:?}", row[6]);
    assert_eq!(row[7], full[7], "timestamp to the microsecond");
    assert_eq!(back.rows[1], nulls, "nulls of every type");
    assert_eq!(t.direct.text(&format!("SELECT s FROM {typed} WHERE id = 1")).await.as_deref(), Some("héllo ✓"));

    // Inserts arriving together, one of them bad: only its caller fails.
    let insert_row = format!("INSERT INTO {rows} (id, name) VALUES ({})", t.phs(2));
    let calls: Vec<_> = (0..200i64)
        .map(|i| {
            let name = if i == 57 { Value::Null } else { Value::Text(format!("n{i}")) };
            t.db.execute(&insert_row, vec![Value::Int(i), name])
        })
        .collect();
    let results = futures::future::join_all(calls).await;
    for (i, r) in results.iter().enumerate() {
        if i == 57 {
            assert!(matches!(r, Err(BackendError::Invalid(_))), "the NULL row fails as invalid: {r:?}");
        } else {
            assert_eq!(r, &Ok(1), "row {i}");
        }
    }
    assert_eq!(t.direct.int(&format!("SELECT count(*) FROM {rows}")).await, 199);
    assert_eq!(t.direct.int(&format!("SELECT count(*) FROM {rows} WHERE id = 57")).await, 0);
    assert_eq!(t.direct.text(&format!("SELECT name FROM {rows} WHERE id = 199")).await.as_deref(), Some("n199"));

    // Concurrent callers of every kind: updates, inserts and queries.
    let update = format!("UPDATE {counter} SET n = n + 1 WHERE id = {}", t.ph(1));
    let select = format!("SELECT name FROM {rows} WHERE id = {}", t.ph(1));
    let calls: Vec<_> = (0..100i64)
        .map(|i| {
            let (update, insert_row, select, db) = (update.clone(), insert_row.clone(), select.clone(), t.db.clone());
            async move {
                let updated = db.execute(&update, vec![Value::Int(1)]).await;
                let inserted = db.execute(&insert_row, vec![Value::Int(1000 + i), Value::Text(format!("m{i}"))]).await;
                let read = db.query(&select, vec![Value::Int(1000 + i)]).await.map(|r| r.rows);
                (updated, inserted, read, i)
            }
        })
        .collect();
    for (updated, inserted, read, i) in futures::future::join_all(calls).await {
        assert_eq!(updated, Ok(1));
        assert_eq!(inserted, Ok(1));
        assert_eq!(read, Ok(vec![vec![Value::Text(format!("m{i}"))]]), "a caller reads its own write");
    }
    assert_eq!(t.direct.int(&format!("SELECT n FROM {counter} WHERE id = 1")).await, 100);
    assert_eq!(t.direct.int(&format!("SELECT count(*) FROM {rows}")).await, 299);

    // A statement's own fault is invalid, not unavailable.
    let err = t.db.execute(&format!("INSERT INTO {base}_missing (id) VALUES ({})", t.ph(1)), vec![Value::Int(1)]).await;
    assert!(matches!(err, Err(BackendError::Invalid(_))), "{err:?}");
    let err = t.db.query("SELEKT 1", vec![]).await;
    assert!(matches!(err, Err(BackendError::Invalid(_))), "{err:?}");

    db_grants(t, base).await;

    for table in [typed, rows, counter] {
        t.direct.exec(&format!("DROP TABLE {table}")).await;
    }
}

/// Grants, checked by the host before the backend: the real `faults` handler
/// runs SQL through the runtime for a tenant granted one table only.
async fn db_grants(t: &DbUnderTest, base: &str) {
    let rows = format!("{base}_rows");
    let counter = format!("{base}_counter");
    let dir = tempfile::tempdir().unwrap();
    let template = format!(
        r#"
        [sources.in]
        type = "file"
        path = "in.jsonl"

        [backends.db]
        {backend}

        [tenants.grants.grants]
        db_tables = ["{rows}"]
        # The faults handler imports the cache too; the host refuses ungranted imports.
        cache_prefixes = ["faults:"]

        [tenants.grants.handlers.faults]
        wasm = "WASM"

        [[routes]]
        source = "in"
        topic = "*"
        tenant = "grants"
        handler = "faults"
        max_attempts = 1
        "#,
        backend = t.backend_toml
    );
    let sql_message = |id: &str, sql: String, params: &[&str]| {
        serde_json::json!({"topic": "sql", "id": id, "payload": {"mode": "sql", "sql": sql, "params": params}})
            .to_string()
    };
    let lines = [
        sql_message("allowed", format!("INSERT INTO {rows} (id, name) VALUES (5000, {})", t.ph(1)), &["granted"]),
        sql_message("other-table", format!("DELETE FROM {counter}"), &[]),
        sql_message("subquery", format!("DELETE FROM {rows} WHERE id IN (SELECT id FROM {counter})"), &[]),
        sql_message("ddl", format!("DROP TABLE {rows}"), &[]),
    ];
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let config = super::config_with_file(dir.path(), &template, "faults", &lines);
    let (stats, _backends) = super::run_host(&config).await;
    assert_eq!((stats.handled, stats.dead_lettered), (1, 3), "{stats:?}");
    let dead = super::read_dead_letters(&dir.path().join("dead-letter/in.jsonl"));
    for line in &dead {
        let reason = super::header(line, "switchyard-dead-letter-reason").unwrap();
        assert!(reason.contains("Denied"), "{}: {reason}", line["id"]);
    }
    assert_eq!(t.direct.text(&format!("SELECT name FROM {rows} WHERE id = 5000")).await.as_deref(), Some("granted"));
    assert_eq!(t.direct.int(&format!("SELECT count(*) FROM {counter}")).await, 1, "the denied DELETE never ran");
    assert_eq!(t.direct.int(&format!("SELECT count(*) FROM {rows}")).await, 300, "nothing was deleted");
}

/// How one SQL server spells what a hostile tenant tries.
pub struct Hostile {
    /// The type of an auto-numbered key column.
    pub serial: &'static str,
    /// The query naming the login a statement runs as.
    pub whoami: &'static str,
    /// A query reading a file on the database server.
    pub read_file: &'static str,
    /// A query that sleeps on the server for 30 s.
    pub sleep: &'static str,
    /// A statement lifting the session's own statement time limit.
    pub lift_limit: &'static str,
    /// A query taking the next number of another table's sequence, where
    /// the server has sequences apart from tables: `{table}` is the table.
    pub other_sequence: Option<&'static str>,
}

/// Publishes into a list, for checking what a relay sent.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<switchyard::contract::Outgoing>>);

#[async_trait::async_trait]
impl switchyard::contract::publish::Publisher for Recorder {
    async fn publish(&self, messages: Vec<switchyard::contract::Outgoing>) -> Result<(), BackendError> {
        self.0.lock().unwrap().extend(messages);
        Ok(())
    }
}

/// A statement that the server, not the host, refused for want of a privilege.
fn refused_by_server<T: std::fmt::Debug>(result: Result<T, BackendError>, what: &str) {
    match result {
        Err(BackendError::Invalid(m)) if m.to_lowercase().contains("denied") => {}
        other => panic!("{what}: expected the server to deny it, got {other:?}"),
    }
}

/// Every tenant runs as a login of its own that the server holds to its
/// tables: its statements reach the backend here without the host's
/// statement check, so whatever is refused, the server refused.
pub async fn tenant_logins(t: &DbUnderTest, hostile: &Hostile, base: &str) {
    use switchyard::contract::db::{Begun, InboxKey, InboxOutcome, TenantAccess};
    let (mine, theirs) = (format!("{base}_mine"), format!("{base}_theirs"));
    t.direct.exec(&format!("CREATE TABLE {mine} (id {}, v VARCHAR(64))", hostile.serial)).await;
    t.direct.exec(&format!("CREATE TABLE {theirs} (id {}, secret VARCHAR(64))", hostile.serial)).await;
    t.direct.exec(&format!("INSERT INTO {theirs} (secret) VALUES ('the other tenant''s')")).await;
    let access = |tables: &[&String], transactional| TenantAccess {
        tenant: "login-alpha".into(),
        tables: tables.iter().map(|t| t.to_string()).collect(),
        statement_timeout: Duration::from_secs(1),
        transactional,
    };
    let alpha = t.db.for_tenant(&access(&[&mine], true)).await.unwrap().expect("a login of its own");

    let Ok(who) = alpha.query(hostile.whoami, vec![]).await else { panic!("{}", hostile.whoami) };
    let Value::Text(login) = &who.rows[0][0] else { panic!("{who:?}") };
    assert!(login.starts_with("switchyard_login_alpha_"), "runs as {login}");

    // Its own table, sequence included.
    assert_eq!(alpha.execute(&format!("INSERT INTO {mine} (v) VALUES ('mine')"), vec![]).await, Ok(1));
    assert_eq!(t.direct.int(&format!("SELECT count(*) FROM {mine}")).await, 1);
    // Nothing else: another table, its sequence, the server's files.
    refused_by_server(alpha.query(&format!("SELECT secret FROM {theirs}"), vec![]).await, "reading another table");
    refused_by_server(
        alpha.execute(&format!("UPDATE {theirs} SET secret = 'overwritten'"), vec![]).await,
        "writing another table",
    );
    if let Some(sequence) = hostile.other_sequence {
        let sql = sequence.replace("{table}", &theirs);
        refused_by_server(alpha.query(&sql, vec![]).await, "taking another table's sequence");
    }
    match alpha.query(hostile.read_file, vec![]).await {
        Err(BackendError::Invalid(m)) if m.to_lowercase().contains("denied") => {}
        Ok(rows) if rows.rows == vec![vec![Value::Null]] => {} // MySQL's LOAD_FILE without the FILE privilege
        other => panic!("reading a server file: {other:?}"),
    }
    assert_eq!(t.direct.text(&format!("SELECT secret FROM {theirs}")).await.as_deref(), Some("the other tenant's"));

    // A sleep holds a connection no longer than the tenant's longest
    // deadline: the server stops it.
    let slept = alpha.query(hostile.sleep, vec![]).await;
    assert!(
        slept.is_err() || matches!(&slept, Ok(rows) if rows.rows == vec![vec![Value::Int(1)]]),
        "a 30 s sleep was not stopped: {slept:?}"
    );
    // Nor after the session lifts its own limit: the host cancels it. One
    // transaction keeps both statements on one connection.
    let key = InboxKey { route: "login-alpha/h".into(), message: unique("m") };
    let Ok(Begun::Transaction(mut tx)) = alpha.begin(&key).await else { panic!("begin") };
    tx.execute(hostile.lift_limit, vec![]).await.unwrap();
    let slept = tx.query(hostile.sleep, vec![]).await;
    assert!(
        slept.is_err() || matches!(&slept, Ok(rows) if rows.rows == vec![vec![Value::Int(1)]]),
        "a 30 s sleep past a lifted limit was not cancelled: {slept:?}"
    );
    drop(tx);

    // Its outbox: what the host committed is relayed; a row the tenant
    // wrote at the server itself is dropped unsent.
    let key = InboxKey { route: "login-alpha/h".into(), message: unique("m") };
    let Ok(Begun::Transaction(tx)) = alpha.begin(&key).await else { panic!("begin") };
    let sent = switchyard::contract::Outgoing {
        destination: "granted.topic".into(),
        payload: b"committed".to_vec(),
        headers: vec![],
        key: None,
    };
    assert_eq!(tx.commit(&key, InboxOutcome::Handled, std::slice::from_ref(&sent)).await, Ok(true));
    let outbox = format!("switchyard_outbox_{login}");
    let forged =
        format!("INSERT INTO {outbox} (message_id, destination, payload, headers, signature) VALUES ({})", t.phs(5));
    let params = vec![
        Value::Text("forged#0".into()),
        Value::Text("anywhere.at.all".into()),
        Value::Bytes(b"forged".to_vec()),
        Value::Text("[]".into()),
        Value::Text("0".repeat(64)),
    ];
    assert_eq!(alpha.execute(&forged, params).await, Ok(1), "the server lets a tenant add to its own outbox");
    let recorder = Recorder::default();
    assert_eq!(alpha.relay(&recorder, 100).await, Ok(1));
    let relayed: Vec<String> = recorder.0.lock().unwrap().iter().map(|m| m.destination.clone()).collect();
    assert_eq!(relayed, ["granted.topic"], "only the host's row is published");
    assert_eq!(t.direct.int(&format!("SELECT count(*) FROM {outbox}")).await, 0, "the forged row is gone too");
    // Another tenant's inbox and outbox are other tables, out of reach.
    refused_by_server(alpha.query("SELECT * FROM switchyard_inbox", vec![]).await, "reading the shared inbox");

    // A grant taken out of the config is taken back at the next start.
    let moved = t.db.for_tenant(&access(&[&theirs], false)).await.unwrap().expect("a login of its own");
    refused_by_server(moved.query(&format!("SELECT v FROM {mine}"), vec![]).await, "a table no longer granted");
    let read = moved.query(&format!("SELECT secret FROM {theirs}"), vec![]).await.unwrap();
    assert_eq!(read.rows, vec![vec![Value::Text("the other tenant's".into())]]);

    for table in [mine, theirs] {
        t.direct.exec(&format!("DROP TABLE {table}")).await;
    }
}
