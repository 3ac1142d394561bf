//! Tests of the Elasticsearch/OpenSearch search backend.
//!
//! No Elasticsearch or OpenSearch server can be installed on this machine, so
//! these tests run against an ES-API TEST SERVER (`support/es_server.rs`),
//! not a real Elasticsearch: it implements the REST subset the backend uses
//! and keeps documents in memory. The same search conformance runs against
//! the embedded Tantivy backend in `tests/tantivy.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assumption in a test is a failed test

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Map, Value, json};
use support::{backends as conformance, es_server};
use switchyard::capabilities::backends::elasticsearch::{ElasticsearchOptions, ElasticsearchSearch};
use switchyard::contract::errors::BackendError;
use switchyard::contract::search::SearchBackend;

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
async fn elasticsearch_passes_the_search_conformance() {
    let (url, _server) = es_server::start().await;
    conformance::search(Arc::new(ElasticsearchSearch::open(&options(&url)).unwrap())).await;
}

#[tokio::test]
async fn concurrent_calls_go_out_as_bulk_and_a_refused_item_fails_only_its_caller() {
    let (url, server) = es_server::start().await;
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
    let port = support::free_port();
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
    let (url, server) = es_server::start().await;
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
    let config = support::config_with_file(
        dir.path(),
        &template,
        "search_index",
        &lines.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let (stats, _) = support::run_host(&config).await;
    assert_eq!((stats.handled, stats.dead_lettered), (101, 1), "{stats:?}");
    let indexes = server.indexes.lock().unwrap();
    let orders = &indexes["orders"];
    assert_eq!(orders.len(), 99, "100 indexed, one deleted, one refused");
    assert_eq!(orders["o8"]["customer"], "c1");
    assert!(server.bulk_requests.load(Ordering::Relaxed) < 101, "concurrent handlers share _bulk requests");
    let dead = support::read_dead_letters(&dir.path().join("dead-letter/in.jsonl"));
    let reason = support::header(&dead[0], "switchyard-dead-letter-reason").unwrap();
    assert!(reason.contains("mapper_parsing_exception"), "{reason}");
}
