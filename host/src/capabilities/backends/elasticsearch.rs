//! The Elasticsearch search backend, through the `elasticsearch` client; it
//! uses only `_bulk` and `_search`, which OpenSearch serves the same way.
//!
//! Index and delete calls from handlers running at the same time go out as
//! one `_bulk` request. Each caller gets the result of its own item, so a
//! document the server refuses fails only that caller. A bulk request is
//! acknowledged once the server has written it to its translog, which is when
//! the calls return.

use std::time::Duration;

use ::elasticsearch::auth::Credentials;
use ::elasticsearch::http::request::JsonBody;
use ::elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use ::elasticsearch::http::{StatusCode, Url};
use ::elasticsearch::params::Refresh;
use ::elasticsearch::{BulkParts, Elasticsearch, SearchParts};
use async_trait::async_trait;
use serde_json::{Map, Value as Json, json};

use super::batch::Batcher;
use crate::contract::bindings::search::Hit;
use crate::contract::errors::BackendError;
use crate::contract::search::SearchBackend;

/// A `_bulk` body grows to about this many bytes before the batch is split
/// into another request, well under the servers' default 100 MB limit.
const MAX_BULK_BYTES: usize = 8 << 20;

enum Op {
    Index { index: String, id: String, document: Map<String, Json> },
    Delete { index: String, id: String },
}

/// How to reach the server.
#[derive(Debug, Clone)]
pub struct ElasticsearchOptions {
    /// The server's base URL, such as `http://127.0.0.1:9200`.
    pub url: String,
    /// Basic-auth user and password, if the server wants them.
    pub credentials: Option<(String, String)>,
    /// Make each bulk's changes visible to search before it returns.
    pub refresh: bool,
    /// A request slower than this fails as `unavailable`.
    pub timeout: Duration,
    /// The most operations in one `_bulk` request.
    pub max_batch: usize,
}

/// The `elasticsearch` search backend (Elasticsearch and OpenSearch).
pub struct ElasticsearchSearch {
    client: Elasticsearch,
    address: String,
    writer: Batcher<Op, ()>,
}

impl ElasticsearchSearch {
    /// The config `type` that selects it.
    pub const TYPE: &'static str = "elasticsearch";

    /// A client for the server at `options.url`. No request is made until the
    /// first call, so the host starts even if the server is not up yet.
    pub fn open(options: &ElasticsearchOptions) -> Result<Self, BackendError> {
        let url = Url::parse(&options.url)
            .map_err(|e| BackendError::Invalid(format!("elasticsearch url {:?}: {e}", options.url)))?;
        let address = format!("elasticsearch at {}", url.as_str().trim_end_matches('/'));
        let mut transport = TransportBuilder::new(SingleNodeConnectionPool::new(url)).timeout(options.timeout);
        if let Some((user, password)) = &options.credentials {
            transport = transport.auth(Credentials::Basic(user.clone(), password.clone()));
        }
        let transport =
            transport.build().map_err(|e| BackendError::Invalid(format!("{address}: cannot build a client: {e}")))?;
        let client = Elasticsearch::new(transport);
        let refresh = if options.refresh { Refresh::WaitFor } else { Refresh::False };
        let (bulk_client, bulk_address) = (client.clone(), address.clone());
        let writer = Batcher::spawn("elasticsearch bulk", options.max_batch, move |batch| {
            let (client, address) = (bulk_client.clone(), bulk_address.clone());
            async move { bulk(&client, &address, refresh, batch).await }
        });
        Ok(Self { client, address, writer })
    }
}

/// Send a batch as `_bulk` requests of bounded size; one result per operation.
async fn bulk(
    client: &Elasticsearch,
    address: &str,
    refresh: Refresh,
    batch: Vec<Op>,
) -> Vec<Result<(), BackendError>> {
    let mut results = Vec::with_capacity(batch.len());
    let mut lines = Vec::new();
    let mut bytes = 0;
    let mut ops = 0;
    for op in batch {
        match op {
            Op::Index { index, id, document } => {
                let document = Json::Object(document);
                bytes += document.to_string().len() + index.len() + id.len() + 40;
                lines.push(JsonBody::new(json!({ "index": { "_index": index, "_id": id } })));
                lines.push(JsonBody::new(document));
            }
            Op::Delete { index, id } => {
                bytes += index.len() + id.len() + 40;
                lines.push(JsonBody::new(json!({ "delete": { "_index": index, "_id": id } })));
            }
        }
        ops += 1;
        if bytes >= MAX_BULK_BYTES {
            results.extend(send(client, address, refresh, std::mem::take(&mut lines), ops).await);
            (bytes, ops) = (0, 0);
        }
    }
    if ops > 0 {
        results.extend(send(client, address, refresh, lines, ops).await);
    }
    results
}

async fn send(
    client: &Elasticsearch,
    address: &str,
    refresh: Refresh,
    lines: Vec<JsonBody<Json>>,
    ops: usize,
) -> Vec<Result<(), BackendError>> {
    let all = |e: BackendError| vec![Err(e); ops];
    let response = match client.bulk(BulkParts::None).refresh(refresh).body(lines).send().await {
        Ok(response) => response,
        Err(e) => return all(BackendError::Unavailable(format!("{address}: bulk request failed: {e}"))),
    };
    let status = response.status_code();
    let body: Json = match response.json().await {
        Ok(body) => body,
        Err(e) => return all(BackendError::Unavailable(format!("{address}: bulk response is not JSON: {e}"))),
    };
    if !status.is_success() {
        return all(status_error(address, "bulk", status, &body));
    }
    let Some(items) = body["items"].as_array().filter(|items| items.len() == ops) else {
        return all(BackendError::Unavailable(format!("{address}: bulk response does not have {ops} items: {body}")));
    };
    items
        .iter()
        .map(|item| {
            let (action, result) = match item.as_object().and_then(|o| o.iter().next()) {
                Some((action, result)) => (action.as_str(), result),
                None => ("unknown", &Json::Null),
            };
            let status = result["status"].as_u64().and_then(|s| u16::try_from(s).ok()).unwrap_or(500);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            // Deleting a document that is not there is not an error.
            if status.is_success() || (action == "delete" && status == StatusCode::NOT_FOUND) {
                Ok(())
            } else {
                Err(status_error(
                    address,
                    &format!("{action} of {:?} in {:?}", result["_id"], result["_index"]),
                    status,
                    result,
                ))
            }
        })
        .collect()
}

/// An error answer: too many requests and server errors are worth a retry,
/// anything else is the request's own fault.
fn status_error(address: &str, what: &str, status: StatusCode, body: &Json) -> BackendError {
    let error = &body["error"];
    let reason = match (error["type"].as_str(), error["reason"].as_str()) {
        (Some(kind), Some(reason)) => format!("{kind}: {reason}"),
        _ => error.to_string(),
    };
    let message = format!("{address}: {what}: HTTP {status}: {reason}");
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        BackendError::Unavailable(message)
    } else if status == StatusCode::PAYLOAD_TOO_LARGE {
        BackendError::TooLarge(message)
    } else {
        BackendError::Invalid(message)
    }
}

#[async_trait]
impl SearchBackend for ElasticsearchSearch {
    async fn index(&self, index: &str, id: &str, document: Map<String, Json>) -> Result<(), BackendError> {
        self.writer.call(Op::Index { index: index.into(), id: id.into(), document }).await
    }

    async fn delete(&self, index: &str, id: &str) -> Result<(), BackendError> {
        self.writer.call(Op::Delete { index: index.into(), id: id.into() }).await
    }

    async fn query(&self, index: &str, query: &str, limit: usize) -> Result<Vec<Hit>, BackendError> {
        let response = self
            .client
            .search(SearchParts::Index(&[index]))
            .body(json!({ "query": { "query_string": { "query": query } }, "size": limit }))
            .send()
            .await
            .map_err(|e| BackendError::Unavailable(format!("{}: search of {index} failed: {e}", self.address)))?;
        let status = response.status_code();
        let body: Json = response
            .json()
            .await
            .map_err(|e| BackendError::Unavailable(format!("{}: search response is not JSON: {e}", self.address)))?;
        if status == StatusCode::NOT_FOUND {
            // Like the embedded index: a missing index has no hits.
            return Ok(Vec::new());
        }
        if !status.is_success() {
            return Err(status_error(&self.address, &format!("search of {index} for {query:?}"), status, &body));
        }
        let hits = body["hits"]["hits"].as_array().cloned().unwrap_or_default();
        Ok(hits
            .into_iter()
            .map(|hit| Hit {
                id: hit["_id"].as_str().unwrap_or_default().to_string(),
                score: hit["_score"].as_f64().unwrap_or(0.0) as f32,
                document: hit["_source"].to_string(),
            })
            .collect())
    }
}
