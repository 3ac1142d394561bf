//! Fuzzing on the stable toolchain. A small mutational fuzzer (byte flips,
//! inserts, deletions, dictionary tokens, splices of seeds) drives each
//! target for a bounded time: `SWITCHYARD_FUZZ_SECS` seconds each (default
//! 3; `.ci/run` gives each a minute). A target fails on a panic or on a broken
//! property; the input is then saved under `host/fuzz/regressions/<target>/`,
//! and every saved input runs first, every time, so a crash once found stays
//! a test. `SWITCHYARD_FUZZ_SEED` replays a run's choices.
//!
//! Targets: the config parser with `check`'s validation; message files; the
//! http source, over real TCP; the NATS and AMQP header mappings; and the SQL
//! grant checker, differentially: a statement it accepts is run as the
//! tenant's own login on the real PostgreSQL, which must not refuse it for
//! want of a privilege (the checker would have let through a statement that
//! reaches past the grant).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assumption in a test is a failed test

mod support;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A xorshift generator: fast, and replayable from its seed.
struct Rng(u64);

impl Rng {
    fn new(target: &str) -> Self {
        let seed = std::env::var("SWITCHYARD_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
        eprintln!("fuzz {target}: SWITCHYARD_FUZZ_SEED={seed}");
        Self(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn budget() -> Duration {
    Duration::from_secs(std::env::var("SWITCHYARD_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(3))
}

fn regressions(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions").join(target)
}

/// A mutation of one of `seeds`.
fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], dictionary: &[&str]) -> Vec<u8> {
    let mut input = rng.pick(seeds).clone();
    for _ in 0..1 + rng.below(8) {
        let at = rng.below(input.len() + 1);
        match rng.below(7) {
            0 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] ^= 1 << rng.below(8);
            }
            1 => input.insert(at, rng.next() as u8),
            2 if !input.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(input.len());
                input.drain(at.min(end)..end);
            }
            3 | 4 => {
                let token = rng.pick(dictionary).as_bytes();
                input.splice(at..at, token.iter().copied());
            }
            5 => {
                let other = rng.pick(seeds);
                let from = rng.below(other.len() + 1);
                let end = (from + rng.below(64)).min(other.len());
                input.splice(at..at, other[from..end].iter().copied());
            }
            _ => {
                let i = rng.below(input.len() + 1);
                input.truncate(i.max(1).min(input.len()));
            }
        }
    }
    input
}

/// Run `target` on every saved regression, then on mutations of `seeds`
/// until the time budget is spent. A panic or an `Err` saves the input and fails.
fn fuzz(name: &str, seeds: &[String], dictionary: &[&str], mut target: impl FnMut(&[u8]) -> Result<(), String>) {
    let mut check = |input: &[u8]| -> Result<(), String> {
        match std::panic::catch_unwind(AssertUnwindSafe(|| target(input))) {
            Ok(result) => result,
            Err(panic) => Err(format!(
                "panicked: {}",
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )),
        }
    };
    let saved = regressions(name);
    if let Ok(entries) = std::fs::read_dir(&saved) {
        for entry in entries {
            let path = entry.unwrap().path();
            let input = std::fs::read(&path).unwrap();
            if let Err(e) = check(&input) {
                panic!("regression {} of {name} fails again: {e}", path.display());
            }
        }
    }
    let seeds: Vec<Vec<u8>> = seeds.iter().map(|s| s.as_bytes().to_vec()).collect();
    let mut rng = Rng::new(name);
    let deadline = Instant::now() + budget();
    let mut runs = 0u64;
    while Instant::now() < deadline {
        let input = mutate(&mut rng, &seeds, dictionary);
        runs += 1;
        if let Err(e) = check(&input) {
            std::fs::create_dir_all(&saved).unwrap();
            let file = saved.join(format!("{:016x}", rng.next()));
            std::fs::write(&file, &input).unwrap();
            panic!("{name}: {e}\ninput saved as {} (a regression test from now on)", file.display());
        }
    }
    eprintln!("fuzz {name}: {runs} inputs");
}

fn text(input: &[u8]) -> String {
    String::from_utf8_lossy(input).into_owned()
}

#[test]
fn fuzz_config_and_check() {
    let quickstart =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart/switchyard.toml"))
            .unwrap();
    let seeds = [
        quickstart,
        "[sources.s]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\nsubjects = [\"a.>\"]\npending_messages = 8\n".into(),
        "[backends.db]\ntype = \"postgres\"\nurl = \"postgres://u@h/db\"\ntenant_logins = false\n\
         [tenants.t.grants]\ndb_tables = [\"s.*\", \"t\"]\npublish = [\"a.*\"]\n"
            .into(),
        "[tenants.t.quotas]\nfuel = 10\nmax_publishes = 1\n[[routes]]\nsource = \"local\"\ntopic = \"*\"\ntenant = \"t\"\nhandler = \"h\"\n".into(),
    ];
    let dictionary = [
        "[",
        "]",
        "\"",
        "=",
        "\n",
        ".",
        "*",
        "type",
        "\"amqp\"",
        "\"kafka\"",
        "\"jetstream\"",
        "\"redis\"",
        "\"http\"",
        "listen = \"",
        "0",
        "-1",
        "99999999999999999999",
        "1e400",
        "nan",
        "[[routes]]",
        "[tenants.",
        "grants",
        "db_tables = [",
        "\u{0}",
        "\u{ffff}",
        "{}",
        "true",
        "memory_mib = ",
        "timeout_ms = 0",
    ];
    let path = Path::new("fuzz.toml");
    fuzz("config", &seeds, &dictionary, |input| match switchyard::Config::parse(path, &text(input)) {
        Ok(_) => Ok(()),
        // Every refusal names the file.
        Err(e) if e.to_string().contains("fuzz.toml") => Ok(()),
        Err(e) => Err(format!("an error that does not name the file: {e}")),
    });
}

#[test]
fn fuzz_message_files() {
    let seeds = [
        r#"{"topic": "t", "id": "a", "key": "k", "headers": {"h": "v"}, "payload": {"x": [1, 2.5, "s"]}}"#.to_string(),
        r#"{"topic": "t", "payload": "text"}"#.into(),
        r#"{"topic": "t", "payload_base64": "AAEC"}"#.into(),
    ];
    let dictionary = ["\"", "{", "}", "[", "]", ":", ",", "\\u0000", "\\ud800", "null", "1e999", "payload_base64", "="];
    fuzz("message-file", &seeds, &dictionary, |input| {
        match switchyard::sources::file::parse_line("fuzz", 7, &text(input)) {
            Ok(m) if m.id.is_empty() => Err("a message without an id".into()),
            Ok(_) => Ok(()),
            Err(reason) if reason.starts_with("line 7 ") => Ok(()),
            Err(reason) => Err(format!("a refusal that does not name the line: {reason}")),
        }
    });
}

#[test]
fn fuzz_nats_headers() {
    let seeds = ["Nats-Msg-Id: 1\nswitchyard-key: k\n".to_string(), "a: b\nc: d\ne: \n".into()];
    let dictionary = [":", "\n", " ", "\r", "\u{0}", "é", "\u{7f}", "Nats-Msg-Id", "switchyard-reply-to"];
    fuzz("nats-headers", &seeds, &dictionary, |input| {
        let pairs: Vec<(String, String)> = text(input)
            .split('\n')
            .map(|line| match line.split_once(':') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (line.to_string(), String::new()),
            })
            .collect();
        let map = switchyard::sources::nats::client::header_map(&pairs);
        let back = switchyard::sources::nats::client::headers_of(Some(&map));
        // Plain names and values come back as they went.
        for (k, v) in &pairs {
            let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if plain(k)
                && v.bytes().all(|b| b.is_ascii_alphanumeric())
                && !back.iter().any(|(bk, bv)| bk == k && bv == v)
            {
                return Err(format!("header {k:?}: {v:?} was lost: {back:?}"));
            }
        }
        Ok(())
    });
}

#[test]
fn fuzz_amqp_headers() {
    use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
    // Bytes become a table of typed values: one byte picks the type, the
    // next ones its name and contents.
    fn table(bytes: &mut std::slice::Iter<'_, u8>, depth: usize) -> FieldTable {
        let mut built = FieldTable::default();
        while let Some(&kind) = bytes.next() {
            let name: String = bytes.by_ref().take(3).map(|&b| b as char).collect();
            let n = bytes.next().copied().unwrap_or(0);
            let value = match kind % 12 {
                0 => AMQPValue::LongString(LongString::from(
                    bytes.by_ref().take(n as usize).copied().collect::<Vec<u8>>(),
                )),
                1 => AMQPValue::ShortString(ShortString::from(
                    bytes.by_ref().take(n as usize).map(|&b| b as char).collect::<String>(),
                )),
                2 => AMQPValue::Boolean(n % 2 == 0),
                3 => AMQPValue::LongLongInt(i64::from(n as i8) * i64::MAX / 128),
                4 => AMQPValue::Double(f64::from_bits(u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15))),
                5 => AMQPValue::Float(f32::from_bits(u32::from(n).wrapping_mul(0x9e37_79b9))),
                6 => AMQPValue::Timestamp(u64::from(n) << 56),
                7 => AMQPValue::Void,
                8 => AMQPValue::ByteArray(bytes.by_ref().take(n as usize).copied().collect::<Vec<u8>>().into()),
                9 if depth < 4 => AMQPValue::FieldTable(table(bytes, depth + 1)),
                10 if depth < 4 => {
                    AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(table(bytes, depth + 1))]))
                }
                _ => AMQPValue::ShortShortInt(n as i8),
            };
            built.insert(ShortString::from(name), value);
        }
        built
    }
    let seeds = ["\u{0}abc\u{3}xyz\u{9}def\u{1}\u{0}".to_string(), "\u{4}key\u{ff}\u{b}arr\u{2}".into()];
    fuzz("amqp-headers", &seeds, &["\u{9}", "\u{a}", "\u{0}", "\u{ff}"], |input| {
        let table = table(&mut input.iter(), 0);
        let headers = switchyard::sources::amqp::headers_of(&table);
        if headers.len() != table.inner().len() {
            return Err(format!("{} headers for {} entries", headers.len(), table.inner().len()));
        }
        Ok(())
    });
}

/// The http source, over TCP: whatever bytes arrive, it answers or closes,
/// and a well-formed request still gets in afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzz_http_source() {
    use switchyard::contract::source::{Settlement, Source};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let dead_letter =
        Arc::new(switchyard::sources::dead_letter::DeadLetterFile::new("fuzz", &dir.path().join("dl.jsonl")));
    let source = switchyard::sources::http::HttpSource::new("fuzz", ([127, 0, 0, 1], port).into(), dead_letter);
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(Box::new(source).run(tx, stop.clone()));
    tokio::spawn(async move {
        while let Some(delivery) = rx.recv().await {
            let _ = delivery.settle.settle(&delivery.message, Settlement::Ack).await;
        }
    });
    support::wait_for_port(port).await;
    let good = "POST /topics/orders.placed HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nx-switchyard-key: k\r\n\
                Content-Length: 9\r\n\r\n{\"a\": 1}\n";
    let seeds = [
        good.to_string(),
        "POST /topics/t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n".into(),
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".into(),
    ];
    let dictionary = [
        "\r\n",
        ": ",
        "/",
        "%00",
        "%2F",
        "..",
        "Content-Length: 99999999999",
        "Transfer-Encoding: chunked",
        "\u{0}",
        "é",
    ];
    // The stream is not half-closed: hyper drops a request whose client
    // closed its side before the answer came. A fuzzed request gets a short
    // wait for its answer, then its connection is dropped.
    let send = |bytes: Vec<u8>, wait: Duration| async move {
        let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
            return Err("the http source stopped accepting connections".to_string());
        };
        let _ = stream.write_all(&bytes).await;
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(wait, stream.read_to_end(&mut reply)).await;
        Ok(String::from_utf8_lossy(&reply).into_owned())
    };
    let mut rng = Rng::new("http-source");
    let corpus: Vec<Vec<u8>> = seeds.iter().map(|s| s.as_bytes().to_vec()).collect();
    let deadline = Instant::now() + budget();
    let mut runs = 0;
    while Instant::now() < deadline {
        let input = mutate(&mut rng, &corpus, &dictionary);
        if let Err(e) = send(input.clone(), Duration::from_millis(200)).await {
            let saved = regressions("http-source");
            std::fs::create_dir_all(&saved).unwrap();
            std::fs::write(saved.join(format!("{:016x}", rng.next())), &input).unwrap();
            panic!("{e}");
        }
        runs += 1;
        if runs % 50 == 0 {
            let reply = send(good.as_bytes().to_vec(), Duration::from_secs(10)).await.unwrap();
            assert!(reply.starts_with("HTTP/1.1 2"), "a good request after {runs} fuzzed ones: {reply}");
        }
    }
    eprintln!("fuzz http-source: {runs} requests");
    stop.cancel();
    let _ = server.await;
}

/// The SQL grant checker, differentially against the real PostgreSQL:
/// statements built from a grammar of the ways around a grant; whatever the
/// checker accepts runs as the tenant's own login, which must not be refused
/// for want of a privilege.
#[tokio::test]
async fn fuzz_sql_grants_against_postgres() {
    use switchyard::capabilities::backends::sql::postgres::Postgres;
    use switchyard::capabilities::backends::sql::server::SqlServer;
    use switchyard::contract::db::{DbBackend, SqlDialect, TenantAccess};
    let url =
        std::env::var("SWITCHYARD_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let host = SqlServer::<Postgres>::open(&switchyard::config::SqlServerConfig::new(url.clone())).await.unwrap();
    let direct = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS fuzz_mine (id BIGSERIAL PRIMARY KEY, v TEXT); \
         CREATE TABLE IF NOT EXISTS fuzz_theirs (id BIGSERIAL PRIMARY KEY, v TEXT); \
         CREATE SCHEMA IF NOT EXISTS fuzz_other; CREATE TABLE IF NOT EXISTS fuzz_other.t (v TEXT)",
    )
    .execute(&direct)
    .await
    .unwrap();
    let granted = vec!["fuzz_mine".to_string()];
    let access = TenantAccess {
        tenant: "fuzz".into(),
        tables: granted.clone(),
        statement_timeout: Duration::from_secs(2),
        transactional: false,
    };
    let tenant = host.for_tenant(&access).await.unwrap().expect("a login");

    let tables = [
        "fuzz_mine",
        "FUZZ_MINE",
        "\"fuzz_mine\"",
        "public.fuzz_mine",
        "fuzz_theirs",
        "\"fuzz_theirs\"",
        "public.fuzz_theirs",
        "fuzz_other.t",
        "pg_catalog.pg_authid",
        "pg_shadow",
        "information_schema.tables",
        "switchyard_login_secret",
        "U&\"fuzz_theirs\"",
    ];
    let functions = [
        "upper(v)",
        "length(v)",
        "query_to_xml('select * from fuzz_theirs', true, true, '')",
        "pg_read_file('/etc/hostname')",
        "current_setting('data_directory')",
        "set_config('search_path', 'fuzz_other', false)",
        "nextval('fuzz_theirs_id_seq')",
        "nextval('fuzz_mine_id_seq')",
        "row_to_json(row(1))",
        "pg_sleep(0)",
        "lo_import('/etc/hostname')",
        "txid_current()",
        "version()",
        "\"pg_read_file\"('/etc/hostname')",
    ];
    fn expr(rng: &mut Rng, tables: &[&str], functions: &[&str], depth: usize) -> String {
        match rng.below(if depth > 2 { 3 } else { 7 }) {
            0 => "1".into(),
            1 => "'x'".into(),
            2 => "v".into(),
            3 => rng.pick(functions).to_string(),
            4 => format!("(SELECT v FROM {} LIMIT 1)", rng.pick(tables)),
            5 => format!("{} || {}", expr(rng, tables, functions, depth + 1), expr(rng, tables, functions, depth + 1)),
            _ => format!("(TABLE {} LIMIT 1)", rng.pick(tables)),
        }
    }
    fn from(rng: &mut Rng, tables: &[&str], functions: &[&str]) -> String {
        match rng.below(6) {
            0 | 1 => rng.pick(tables).to_string(),
            2 => format!("{} JOIN {} ON true", rng.pick(tables), rng.pick(tables)),
            3 => format!("(SELECT {} AS v FROM {}) s", expr(rng, tables, functions, 1), rng.pick(tables)),
            4 => format!("{}, LATERAL (SELECT {} AS w) l", rng.pick(tables), expr(rng, tables, functions, 1)),
            _ => format!("{} AS f(v)", rng.pick(functions)),
        }
    }
    let mut rng = Rng::new("sql-grants");
    let deadline = Instant::now() + budget();
    let (mut runs, mut accepted) = (0u64, 0u64);
    while Instant::now() < deadline {
        let (t, f) = (&tables[..], &functions[..]);
        let mut sql = match rng.below(5) {
            0 | 1 => format!("SELECT {} FROM {}", expr(&mut rng, t, f, 0), from(&mut rng, t, f)),
            2 => format!("INSERT INTO {} (v) VALUES ({})", rng.pick(t), expr(&mut rng, t, f, 0)),
            3 => format!(
                "UPDATE {} SET v = {} WHERE v = {}",
                rng.pick(t),
                expr(&mut rng, t, f, 0),
                expr(&mut rng, t, f, 0)
            ),
            _ => format!("DELETE FROM {} WHERE v IN (SELECT v FROM {})", rng.pick(t), from(&mut rng, t, f)),
        };
        if rng.below(4) == 0 {
            sql.push_str(&format!(" UNION SELECT {} FROM {}", expr(&mut rng, t, f, 1), from(&mut rng, t, f)));
        }
        if rng.below(6) == 0 {
            sql = sql.replacen(' ', " /* c */ ", 1);
        }
        runs += 1;
        if switchyard::capabilities::db::check_tables(&granted, SqlDialect::Postgres, &sql).is_err() {
            continue;
        }
        accepted += 1;
        if let Err(e) = tenant.query(&sql, vec![]).await
            && e.to_string().contains("permission denied")
        {
            let saved = regressions("sql-grants");
            std::fs::create_dir_all(&saved).unwrap();
            std::fs::write(saved.join(format!("{:016x}.sql", rng.next())), &sql).unwrap();
            panic!("the checker accepted a statement reaching past the grant: {sql}\nthe server said: {e}");
        }
    }
    eprintln!("fuzz sql-grants: {runs} statements, {accepted} accepted and run as the tenant");
    assert!(accepted > 0 || runs < 100, "the grammar produced nothing the checker accepts");
    let saved = regressions("sql-grants");
    if let Ok(entries) = std::fs::read_dir(&saved) {
        for entry in entries {
            let sql = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            if switchyard::capabilities::db::check_tables(&granted, SqlDialect::Postgres, &sql).is_ok() {
                let result = tenant.query(&sql, vec![]).await;
                assert!(
                    !matches!(&result, Err(e) if e.to_string().contains("permission denied")),
                    "regression {sql}: {result:?}"
                );
            }
        }
    }
}

#[test]
fn fuzz_kafka_records() {
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};
    let seeds = ["switchyard-id\u{0}m1\u{1}switchyard-attempt\u{0}3\u{1}switchyard-topic\u{0}orders".to_string()];
    let dictionary =
        ["\u{0}", "\u{1}", "switchyard-attempt", "switchyard-id", "switchyard-topic", "99999999999", "-1", "é"];
    fuzz("kafka-records", &seeds, &dictionary, |input| {
        // Bytes become headers: `name \0 value` pairs split by \1, the value's
        // bytes as they are (a header value is bytes, not text).
        let mut headers = OwnedHeaders::new();
        for pair in input.split(|&b| b == 1) {
            let mut parts = pair.splitn(2, |&b| b == 0);
            let key = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            headers = headers.insert(Header { key: &key, value: parts.next() });
        }
        let record = OwnedMessage::new(
            Some(input.to_vec()),
            Some(input.iter().rev().copied().collect()),
            "orders.retry".into(),
            Timestamp::CreateTime(i64::from(input.first().copied().unwrap_or(0)) - 100),
            0,
            7,
            Some(headers),
        );
        let message = switchyard::sources::kafka::source::kafka_message("k", Some("orders.retry"), &record);
        if message.id.is_empty() || message.attempt == 0 || message.payload != input {
            return Err(format!("a record mapped to {message:?}"));
        }
        Ok(())
    });
}

#[test]
fn fuzz_redis_stream_entries() {
    let seeds = ["payload\u{0}{\"a\":1}\u{1}key\u{0}k\u{1}h\u{0}v".to_string()];
    let dictionary = ["\u{0}", "\u{1}", "payload", "key", "é", "\u{ff}"];
    fuzz("redis-entries", &seeds, &dictionary, |input| {
        let mut map = std::collections::HashMap::new();
        let mut payload = None;
        for pair in input.split(|&b| b == 1) {
            let mut parts = pair.splitn(2, |&b| b == 0);
            let field = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            let value = parts.next().unwrap_or_default().to_vec();
            if field == "payload" {
                payload = Some(value.clone());
            }
            map.insert(field, redis::Value::BulkString(value));
        }
        let id = format!("{}-0", input.len());
        let entry = redis::streams::StreamId { id: id.clone(), map, ..Default::default() };
        let message = switchyard::sources::redis_streams::stream_message("r", "s", entry, 1);
        let expected = payload.unwrap_or_default();
        if message.id != id || message.payload != expected {
            return Err(format!("an entry mapped to {message:?}"));
        }
        Ok(())
    });
}
