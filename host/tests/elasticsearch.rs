//! Tests of the Elasticsearch/OpenSearch search backend.
//!
//! No Elasticsearch or OpenSearch server can be installed on this machine, so
//! these tests run against a small ES-API-compatible TEST SERVER defined in
//! this file: it implements the REST subset the backend uses (`_bulk` with
//! per-item results and errors, `_search` with a simple `query_string`,
//! `_doc`, `_refresh`) and keeps documents in memory. A document with a
//! `"fail_with"` field is refused by that server as a per-item
//! `mapper_parsing_exception`, as a real server refuses a document that does
//! not fit its mapping. The embedded Tantivy backend is tested for real in
//! the dispatch tests and its own unit tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assumption in a test is a failed test

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};
use switchyard::capabilities::BackendError;
use switchyard::capabilities::backends::elasticsearch::{ElasticsearchOptions, ElasticsearchSearch};
use switchyard::capabilities::search::SearchBackend;

/// The test server's state: documents by index and id, and what it was sent.
#[derive(Default)]
struct TestServer {
    indexes: Mutex<HashMap<String, BTreeMap<String, Value>>>,
    bulk_requests: AtomicUsize,
    bulk_items: AtomicUsize,
}

type Shared = Arc<TestServer>;

async fn bulk(State(server): State<Shared>, body: String) -> impl IntoResponse {
    server.bulk_requests.fetch_add(1, Ordering::Relaxed);
    let mut lines = body.lines().filter(|l| !l.trim().is_empty());
    let mut items = Vec::new();
    let mut errors = false;
    while let Some(line) = lines.next() {
        let Ok(Value::Object(action)) = serde_json::from_str::<Value>(line) else {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": {"type": "parse_exception", "reason": "bad action line"}, "status": 400})),
            );
        };
        let Some((kind, meta)) = action.into_iter().next() else { continue };
        server.bulk_items.fetch_add(1, Ordering::Relaxed);
        let index = meta["_index"].as_str().unwrap_or_default().to_string();
        let id = meta["_id"].as_str().unwrap_or_default().to_string();
        let mut indexes = server.indexes.lock().unwrap();
        let item = match kind.as_str() {
            "index" => {
                let source: Value = lines.next().and_then(|l| serde_json::from_str(l).ok()).unwrap_or(Value::Null);
                match &source {
                    Value::Object(doc) if !doc.contains_key("fail_with") => {
                        indexes.entry(index.clone()).or_default().insert(id.clone(), source.clone());
                        json!({"_index": index, "_id": id, "status": 201, "result": "created"})
                    }
                    _ => {
                        errors = true;
                        json!({"_index": index, "_id": id, "status": 400, "error": {
                            "type": "mapper_parsing_exception", "reason": "failed to parse field [fail_with]"}})
                    }
                }
            }
            "delete" => match indexes.get_mut(&index).and_then(|docs| docs.remove(&id)) {
                Some(_) => json!({"_index": index, "_id": id, "status": 200, "result": "deleted"}),
                None => json!({"_index": index, "_id": id, "status": 404, "result": "not_found"}),
            },
            other => {
                errors = true;
                json!({"status": 400, "error": {"type": "illegal_argument_exception", "reason": format!("action {other}")}})
            }
        };
        items.push(json!({ kind: item }));
    }
    (StatusCode::OK, Json(json!({"took": 1, "errors": errors, "items": items})))
}

/// A `query_string` subset: space-separated terms, each `field:word` or a
/// bare `word` matched against every string field; a hit matches any term
/// and scores one per term matched.
async fn search(State(server): State<Shared>, Path(index): Path<String>, Json(body): Json<Value>) -> impl IntoResponse {
    let indexes = server.indexes.lock().unwrap();
    let Some(docs) = indexes.get(&index) else {
        return (
            StatusCode::NOT_FOUND,
            Json(
                json!({"error": {"type": "index_not_found_exception", "reason": format!("no such index [{index}]")}, "status": 404}),
            ),
        );
    };
    let query = body["query"]["query_string"]["query"].as_str().unwrap_or_default().to_lowercase();
    if query.matches('(').count() != query.matches(')').count() {
        return (
            StatusCode::BAD_REQUEST,
            Json(
                json!({"error": {"type": "query_shard_exception", "reason": format!("Failed to parse query [{query}]")}, "status": 400}),
            ),
        );
    }
    let words = |v: &Value| -> Vec<String> {
        v.as_str().map(|s| s.to_lowercase().split_whitespace().map(str::to_string).collect()).unwrap_or_default()
    };
    let mut hits: Vec<(f64, &String, &Value)> = docs
        .iter()
        .filter_map(|(id, doc)| {
            let score = query
                .split_whitespace()
                .filter(|term| match term.split_once(':') {
                    Some((field, word)) => words(&doc[field]).iter().any(|w| w == word),
                    None => doc.as_object().into_iter().flatten().any(|(_, v)| words(v).iter().any(|w| w == term)),
                })
                .count();
            (score > 0).then_some((score as f64, id, doc))
        })
        .collect();
    hits.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    let size = body["size"].as_u64().unwrap_or(10) as usize;
    let hits: Vec<Value> = hits
        .into_iter()
        .take(size)
        .map(|(score, id, doc)| json!({"_index": index, "_id": id, "_score": score, "_source": doc}))
        .collect();
    (StatusCode::OK, Json(json!({"took": 1, "hits": {"total": {"value": hits.len()}, "hits": hits}})))
}

async fn get_doc(State(server): State<Shared>, Path((index, id)): Path<(String, String)>) -> impl IntoResponse {
    match server.indexes.lock().unwrap().get(&index).and_then(|d| d.get(&id)) {
        Some(doc) => (StatusCode::OK, Json(json!({"_index": index, "_id": id, "found": true, "_source": doc}))),
        None => (StatusCode::NOT_FOUND, Json(json!({"_index": index, "_id": id, "found": false}))),
    }
}

async fn refresh() -> impl IntoResponse {
    Json(json!({"_shards": {"total": 1, "successful": 1, "failed": 0}}))
}

/// Start a test server on a free port; its URL and state.
async fn start_test_server() -> (String, Shared) {
    let state: Shared = Arc::default();
    let app = Router::new()
        .route("/_bulk", post(bulk))
        .route("/{index}/_search", post(search).get(search))
        .route("/{index}/_doc/{id}", get(get_doc))
        .route("/{index}/_refresh", post(refresh))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, state)
}

fn options(url: &str) -> ElasticsearchOptions {
    ElasticsearchOptions {
        url: url.into(),
        credentials: None,
        refresh: false,
        timeout: Duration::from_secs(5),
        max_batch: 1000,
    }
}

fn doc(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

#[tokio::test]
async fn concurrent_calls_go_out_as_bulk_and_a_refused_item_fails_only_its_caller() {
    let (url, server) = start_test_server().await;
    let search = Arc::new(ElasticsearchSearch::open(&options(&url)).unwrap());
    let calls: Vec<_> = (0..200)
        .map(|i| {
            let search = search.clone();
            let body = if i == 42 {
                json!({"name": "bad", "fail_with": true})
            } else {
                json!({"name": format!("widget w{i}")})
            };
            tokio::spawn(async move { search.index("products", &format!("p{i}"), doc(body)).await })
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        let result = call.await.unwrap();
        if i == 42 {
            assert!(
                matches!(&result, Err(BackendError::Invalid(m)) if m.contains("mapper_parsing_exception") && m.contains("p42")),
                "{result:?}"
            );
        } else {
            assert_eq!(result, Ok(()), "p{i}");
        }
    }
    let requests = server.bulk_requests.load(Ordering::Relaxed);
    assert_eq!(server.bulk_items.load(Ordering::Relaxed), 200);
    assert!(requests < 200, "200 concurrent calls should share _bulk requests, took {requests}");
    {
        let indexes = server.indexes.lock().unwrap();
        let products = &indexes["products"];
        assert_eq!(products.len(), 199);
        assert_eq!(products["p7"]["name"], "widget w7");
        assert!(!products.contains_key("p42"));
    }

    let hits = search.query("products", "name:w7", 10).await.unwrap();
    assert_eq!(hits.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(), ["p7"]);
    assert_eq!(serde_json::from_str::<Value>(&hits[0].document).unwrap()["name"], "widget w7");
    assert_eq!(search.query("products", "widget", 5).await.unwrap().len(), 5, "the limit is the size");

    search.delete("products", "p7").await.unwrap();
    search.delete("products", "never-there").await.unwrap();
    assert!(!server.indexes.lock().unwrap()["products"].contains_key("p7"));
    assert!(search.query("missing", "x", 10).await.unwrap().is_empty(), "a missing index has no hits");
    let err = search.query("products", "name:(", 10).await.unwrap_err();
    assert!(matches!(&err, BackendError::Invalid(m) if m.contains("query_shard_exception")), "{err:?}");
}

#[tokio::test]
async fn a_server_that_is_down_is_unavailable_and_named() {
    let port = common::free_port();
    let search = ElasticsearchSearch::open(&options(&format!("http://127.0.0.1:{port}"))).unwrap();
    let err = search.index("products", "p1", doc(json!({"a": 1}))).await.unwrap_err();
    assert!(matches!(&err, BackendError::Unavailable(m) if m.contains(&format!("127.0.0.1:{port}"))), "{err:?}");
    let err = search.query("products", "a", 10).await.unwrap_err();
    assert!(matches!(err, BackendError::Unavailable(_)), "{err:?}");
}

/// The real `search-index` handler through the real runtime, configured with
/// `type = "opensearch"`: documents land in the (test) server.
#[tokio::test]
async fn search_index_handler_indexes_through_bulk() {
    let (url, server) = start_test_server().await;
    let dir = tempfile::tempdir().unwrap();
    let template = format!(
        r#"
        [sources.in]
        type = "file"
        path = "in.jsonl"

        [backends.search]
        type = "opensearch"
        url = "{url}"

        [tenants.shop.grants]
        search_prefixes = ["orders"]

        [tenants.shop.handlers.search-index]
        wasm = "WASM"

        [[routes]]
        source = "in"
        topic = "*"
        tenant = "shop"
        handler = "search-index"
        concurrency = 32
        max_attempts = 1
        "#
    );
    let mut lines: Vec<String> = (0..100)
        .map(|i| {
            format!(
                r#"{{"topic": "order.recorded", "key": "o{i}", "payload": {{"id": "o{i}", "customer": "c{}"}}}}"#,
                i % 7
            )
        })
        .collect();
    lines.push(r#"{"topic": "order.recorded", "id": "bad", "payload": {"id": "o-bad", "fail_with": "x"}}"#.into());
    lines.push(r#"{"topic": "order.recorded", "key": "o3", "payload": {"id": "o3", "deleted": true}}"#.into());
    let config = common::config_with_file(
        dir.path(),
        &template,
        "search_index",
        &lines.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let (stats, _) = common::run_host(&config).await;
    assert_eq!((stats.handled, stats.dead_lettered), (101, 1), "{stats:?}");
    let indexes = server.indexes.lock().unwrap();
    let orders = &indexes["orders"];
    assert_eq!(orders.len(), 99, "100 indexed, one deleted, one refused");
    assert_eq!(orders["o8"]["customer"], "c1");
    assert!(server.bulk_requests.load(Ordering::Relaxed) < 101, "concurrent handlers share _bulk requests");
    let dead = common::read_dead_letters(&dir.path().join("dead-letter/in.jsonl"));
    let reason = common::header(&dead[0], "switchyard-dead-letter-reason").unwrap();
    assert!(reason.contains("mapper_parsing_exception"), "{reason}");
}
