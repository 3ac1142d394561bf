//! The embedded Tantivy search backend against the search conformance that
//! the Elasticsearch backend runs too, on a fresh directory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assumption in a test is a failed test

mod support;

use std::sync::Arc;

use switchyard::capabilities::backends::tantivy::TantivySearch;

#[tokio::test]
async fn tantivy_passes_the_search_conformance() {
    let dir = tempfile::tempdir().unwrap();
    support::backends::search(Arc::new(TantivySearch::open(dir.path()).unwrap())).await;
}

/// Writing to many indexes does not hold threads for each: writers past a
/// few are closed after their batch, and every document stays searchable.
#[tokio::test]
async fn many_indexes_do_not_hold_a_writer_each() {
    use switchyard::contract::search::SearchBackend;
    let threads = || std::fs::read_dir("/proc/self/task").unwrap().count();
    let dir = tempfile::tempdir().unwrap();
    let search = TantivySearch::open(dir.path()).unwrap();
    let before = threads();
    for i in 0..40 {
        let document = serde_json::json!({ "name": format!("widget {i}") });
        let serde_json::Value::Object(document) = document else { unreachable!() };
        search.index(&format!("many-{i}"), "d", document).await.unwrap();
    }
    let after = threads();
    // About six threads an open writer: forty would be some 240.
    assert!(after < before + 80, "threads went from {before} to {after} for 40 indexes");
    for i in [0, 17, 39] {
        let hits = search.query(&format!("many-{i}"), "widget", 10).await.unwrap();
        assert_eq!(hits.len(), 1, "many-{i}");
    }
}
