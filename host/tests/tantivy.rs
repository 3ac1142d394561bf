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
