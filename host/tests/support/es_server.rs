//! An Elasticsearch-API TEST SERVER, not Elasticsearch: no Elasticsearch or
//! OpenSearch server can be installed on this machine, so the tests of the
//! `elasticsearch` backend run against this one. It implements the REST
//! subset the backend uses (`_bulk` with per-item results and errors,
//! `_search` with a simple `query_string`, `_doc`, `_refresh`) and keeps
//! documents in memory. A document with a `"fail_with"` field is refused as a
//! per-item `mapper_parsing_exception`, as a real server refuses a document
//! that does not fit its mapping.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::{get, post};
use serde_json::{Value, json};

/// The test server's state: documents by index and id, and what it was sent.
#[derive(Default)]
pub struct TestServer {
    /// Documents by index and id.
    pub indexes: Mutex<HashMap<String, BTreeMap<String, Value>>>,
    /// `_bulk` requests received.
    pub bulk_requests: AtomicUsize,
    /// Actions in them.
    pub bulk_items: AtomicUsize,
}

/// The server's state, shared with the test.
pub type Shared = Arc<TestServer>;

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
pub async fn start() -> (String, Shared) {
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
