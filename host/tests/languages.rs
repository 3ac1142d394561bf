//! The cache-update handler in Rust, Python, JavaScript and C, run through the
//! real runtime on the same messages, malformed ones and deletes included:
//! each language must reach the same outcome, ask for the same effects, and
//! leave the same cache contents behind.
//!
//! Needs `make plugins` (which runs `plugins/languages.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assumption in a test is a failed test

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use switchyard::capabilities::cache::CacheBackend;
use switchyard::capabilities::{BackendError, Backends, Capabilities, Effect, backends};
use switchyard::config::{Config, Limits};
use switchyard::runtime::bindings::Message;
use switchyard::runtime::{InvokeContext, Outcome, Plugin, Runtime, RuntimeOptions};

const LANGUAGES: [(&str, &str); 4] = [
    ("rust", "cache_update"),
    ("python", "cache_update_py"),
    ("javascript", "cache_update_js"),
    ("c", "cache_update_c"),
];

const NOT_JSON: &str = "malformed product change: not JSON: ";

/// The messages, in order, and the outcome each must have in every language.
fn messages() -> Vec<(&'static [u8], Expect)> {
    use Expect::*;
    vec![
        (
            r#"{"name":"lamp \"deluxe\"\n","id":"p1","price":12.5,"tags":["a","b"],"dims":{"w":3,"h":-0.25},"note":"grüße ☃ \u0001","stock":0}"#.as_bytes(),
            Ok,
        ),
        (br#"{"id":"p2","name":"bolt","price":0.1,"deleted":false}"#, Ok),
        (br#"{"id":"p3","name":"nut","weight":1e2,"big":12345678901234}"#, Ok),
        // The last of duplicate keys wins, as in every language's parser.
        (br#"{"id":"p4","name":"first","name":"second"}"#, Ok),
        (br#"{"id":"p2","deleted":true}"#, Ok),
        // Deleting what is not there is no error.
        (br#"{"id":"p9","deleted":true}"#, Ok),
        (b"this is not json", Reject(NOT_JSON)),
        (br#"{"id":"p5","name":"cut off""#, Reject(NOT_JSON)),
        (br#"{"id":"p5"} trailing"#, Reject(NOT_JSON)),
        (br#"{"id":"p5","price":NaN}"#, Reject(NOT_JSON)),
        (b"{\"id\":\"p5\",\"name\":\"\xff\xfe\"}", Reject(NOT_JSON)),
        (b"", Reject(NOT_JSON)),
        (br#"[{"id":"p5"}]"#, Reject("malformed product change: not a JSON object")),
        (br#""p5""#, Reject("malformed product change: not a JSON object")),
        (br#"{"name":"no id"}"#, Reject("malformed product change: id must be a non-empty string")),
        (br#"{"id":5}"#, Reject("malformed product change: id must be a non-empty string")),
        (br#"{"id":""}"#, Reject("malformed product change: id must be a non-empty string")),
        (br#"{"id":"p5","deleted":"yes"}"#, Reject("malformed product change: deleted must be true or false")),
        (br#"{"id":"p5","deleted":null}"#, Reject("malformed product change: deleted must be true or false")),
        (br#"{"id":"p1","name":"lamp","price":13}"#, Ok),
    ]
}

#[derive(Debug, Clone, Copy)]
enum Expect {
    Ok,
    /// A reject whose reason is this, or starts with it for [`NOT_JSON`]
    /// (the parser's own detail follows, and differs by language).
    Reject(&'static str),
}

/// What one language did with every message.
#[derive(Debug, PartialEq)]
struct Run {
    outcomes: Vec<Outcome>,
    effects: Vec<Vec<Effect>>,
    cache: BTreeMap<String, Option<Value>>,
}

fn message(n: usize, payload: &[u8]) -> Message {
    Message {
        id: format!("m-{n}"),
        source: "languages".into(),
        topic: "product.changed".into(),
        key: None,
        headers: vec![("content-type".into(), "application/json".into())],
        payload: payload.to_vec(),
        attempt: 1,
        reply_to: None,
        timestamp_ms: None,
    }
}

fn runtime() -> Runtime {
    // A compiled-code cache that outlives the test run: Python and JavaScript
    // components take seconds to compile, and only the first run pays.
    let cache_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("languages-compiled");
    Runtime::new(RuntimeOptions { cache_dir: Some(cache_dir), ..RuntimeOptions::default() }).unwrap()
}

fn load_all(runtime: &Runtime) -> Vec<(&'static str, Plugin)> {
    LANGUAGES.iter().map(|(lang, file)| (*lang, runtime.load(&common::plugin(file)).unwrap())).collect()
}

async fn embedded_backends(dir: &std::path::Path) -> Arc<Backends> {
    let mut config = Config::parse(std::path::Path::new("<languages>"), "").unwrap();
    config.data_dir = dir.to_path_buf();
    Arc::new(backends::open(&config).await.unwrap())
}

fn context(caps: Capabilities, lang: &str) -> InvokeContext {
    InvokeContext {
        caps: Arc::new(caps),
        limits: Limits::default(),
        tenant: "shop".into(),
        handler: format!("cache-update ({lang})").into(),
        record_effects: true,
    }
}

/// Numbers compared as values: JavaScript prints `1e2` as `100` where the
/// others print `100.0`, which is the same JSON number.
fn normalize(v: Value) -> Value {
    match v {
        Value::Number(n) => serde_json::json!(n.as_f64().unwrap()),
        Value::Array(a) => Value::Array(a.into_iter().map(normalize).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, normalize(v))).collect()),
        other => other,
    }
}

fn normalize_effect(e: Effect) -> Effect {
    match e {
        Effect::CacheSet { key, value, ttl_ms } => {
            let parsed: Value =
                serde_json::from_str(&value).unwrap_or_else(|e| panic!("{key} holds no JSON: {e}: {value}"));
            Effect::CacheSet { key, value: normalize(parsed).to_string(), ttl_ms }
        }
        other => other,
    }
}

/// Parser details after [`NOT_JSON`] differ by language; the rest must not.
fn comparable(outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Reject(reason) if reason.starts_with(NOT_JSON) => Outcome::Reject(NOT_JSON.into()),
        other => other,
    }
}

async fn run(runtime: &Runtime, plugin: &Plugin, lang: &str) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let backends = embedded_backends(dir.path()).await;
    let mut caps = Capabilities::unrestricted(backends.clone());
    caps.grants.cache_prefixes = vec!["product:".into()];
    let ctx = context(caps, lang);
    let (mut outcomes, mut effects) = (Vec::new(), Vec::new());
    for (n, (payload, expect)) in messages().into_iter().enumerate() {
        let invocation = runtime.invoke(plugin, &message(n, payload), &ctx).await;
        let shown = String::from_utf8_lossy(payload);
        match (expect, &invocation.outcome) {
            (Expect::Ok, Outcome::Ok) => {}
            (Expect::Reject(prefix), Outcome::Reject(reason)) if prefix == NOT_JSON && reason.starts_with(prefix) => {}
            (Expect::Reject(want), Outcome::Reject(reason)) if want == reason => {}
            (want, got) => panic!("{lang}: message {n} {shown:?}: expected {want:?}, got {got:?}"),
        }
        if !matches!(expect, Expect::Ok) {
            assert!(
                invocation.effects.is_empty(),
                "{lang}: rejected message {n} still had effects: {:?}",
                invocation.effects
            );
        }
        outcomes.push(comparable(invocation.outcome));
        effects.push(invocation.effects.into_iter().map(normalize_effect).collect());
    }
    // Read what is left straight from the cache backend.
    let mut cache = BTreeMap::new();
    for id in ["p1", "p2", "p3", "p4", "p5", "p9"] {
        let key = format!("product:{id}");
        let value = backends.cache.get(&key).await.unwrap().map(|v| {
            normalize(serde_json::from_slice(&v).unwrap_or_else(|e| panic!("{lang}: {key} holds no JSON: {e}")))
        });
        cache.insert(key, value);
    }
    Run { outcomes, effects, cache }
}

#[tokio::test(flavor = "multi_thread")]
async fn four_languages_same_outcomes_effects_and_cache() {
    let runtime = runtime();
    let plugins = load_all(&runtime);
    let mut runs = Vec::new();
    for (lang, plugin) in &plugins {
        runs.push((*lang, run(&runtime, plugin, lang).await));
    }

    // What the Rust handler left is what a user expects, to the byte where
    // no number formatting is involved ...
    let (_, rust) = &runs[0];
    let p1 = serde_json::json!({"id": "p1", "name": "lamp", "price": 13});
    assert_eq!(rust.cache["product:p1"], Some(normalize(p1)));
    assert_eq!(rust.cache["product:p2"], None, "p2 was deleted");
    assert_eq!(rust.cache["product:p4"], Some(serde_json::json!({"id": "p4", "name": "second"})));
    assert_eq!(rust.cache["product:p5"], None, "every p5 message was malformed");
    let first = match &rust.effects[0][..] {
        [Effect::CacheSet { value, .. }] => value.clone(),
        other => panic!("message 0 should set one key, got {other:?}"),
    };
    assert!(first.contains(r#""dims":{"h":-0.25,"w":3.0}"#), "{first}");

    // ... and every other language did exactly the same.
    for (lang, other) in &runs[1..] {
        assert_eq!(other.outcomes, rust.outcomes, "{lang} outcomes differ from rust");
        assert_eq!(other.effects, rust.effects, "{lang} effects differ from rust");
        assert_eq!(other.cache, rust.cache, "{lang} cache contents differ from rust");
    }
}

/// The exact bytes stored for a product without exponents or whole floats:
/// compact, keys sorted, escapes as JSON requires, `deleted` dropped.
#[tokio::test(flavor = "multi_thread")]
async fn four_languages_store_the_same_bytes() {
    let runtime = runtime();
    let payload = "{\"price\":12.5,\"id\":\"p7\",\"deleted\":false,\"name\":\"tab\\there \\\"q\\\" ☃ \\u001f\",\"b\":{\"z\":[1,-2,{\"y\":null,\"x\":true}],\"a\":\"\"}}";
    let expected = "{\"b\":{\"a\":\"\",\"z\":[1,-2,{\"x\":true,\"y\":null}]},\"id\":\"p7\",\"name\":\"tab\\there \\\"q\\\" ☃ \\u001f\",\"price\":12.5}";
    for (lang, plugin) in load_all(&runtime) {
        let dir = tempfile::tempdir().unwrap();
        let backends = embedded_backends(dir.path()).await;
        let ctx = context(Capabilities::unrestricted(backends.clone()), lang);
        let invocation = runtime.invoke(&plugin, &message(0, payload.as_bytes()), &ctx).await;
        assert_eq!(invocation.outcome, Outcome::Ok, "{lang}");
        let stored = backends.cache.get("product:p7").await.unwrap().unwrap();
        assert_eq!(String::from_utf8(stored).unwrap(), expected, "{lang}");
    }
}

/// A cache backend that is down: every call fails as unreachable.
struct DownCache;

#[async_trait::async_trait]
impl CacheBackend for DownCache {
    async fn get(&self, _: &str) -> Result<Option<Vec<u8>>, BackendError> {
        Err(down())
    }
    async fn get_many(&self, _: &[String]) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        Err(down())
    }
    async fn set(&self, _: &str, _: Vec<u8>, _: Option<Duration>) -> Result<(), BackendError> {
        Err(down())
    }
    async fn delete(&self, _: &str) -> Result<bool, BackendError> {
        Err(down())
    }
    async fn increment(&self, _: &str, _: i64) -> Result<i64, BackendError> {
        Err(down())
    }
}

fn down() -> BackendError {
    BackendError::Unavailable("cache 127.0.0.1:1 refused the connection".into())
}

/// Capability failures: an unreachable cache asks for a retry in a second;
/// a key outside the tenant's grants is rejected, naming the key.
#[tokio::test(flavor = "multi_thread")]
async fn four_languages_fail_the_same_way_on_capability_errors() {
    let runtime = runtime();
    let set = br#"{"id":"p1","name":"lamp"}"#;
    let delete = br#"{"id":"p1","deleted":true}"#;
    for (lang, plugin) in load_all(&runtime) {
        let dir = tempfile::tempdir().unwrap();
        let embedded = embedded_backends(dir.path()).await;
        let down =
            Arc::new(Backends { cache: Arc::new(DownCache), db: embedded.db.clone(), search: embedded.search.clone() });
        let ctx = context(Capabilities::unrestricted(down), lang);
        for payload in [&set[..], &delete[..]] {
            let outcome = runtime.invoke(&plugin, &message(0, payload), &ctx).await.outcome;
            let want = Outcome::Retry {
                delay: Duration::from_secs(1),
                reason: "cache 127.0.0.1:1 refused the connection".into(),
            };
            assert_eq!(outcome, want, "{lang}");
        }

        let mut caps = Capabilities::unrestricted(embedded.clone());
        caps.grants.cache_prefixes = vec!["stock:".into()];
        let ctx = context(caps, lang);
        for payload in [&set[..], &delete[..]] {
            let invocation = runtime.invoke(&plugin, &message(0, payload), &ctx).await;
            let want = r#"denied: cache key "product:p1" is outside the tenant's prefixes ["stock:"]"#;
            assert_eq!(invocation.outcome, Outcome::Reject(want.into()), "{lang}");
        }
        assert_eq!(
            embedded.cache.get("product:p1").await.unwrap(),
            None,
            "{lang}: a denied set must not store anything"
        );
    }
}
