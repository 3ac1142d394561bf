//! The `http` source: `POST /topics/<topic>` with the payload as the body.
//!
//! The response waits for settlement, so the caller knows what happened:
//! 200 when the handler acked, 422 with the reason when the message was
//! dead-lettered (it is also appended to the dead-letter file), 503 when the
//! host shut down first (nothing was done; send it again). Headers
//! `x-switchyard-id` and `x-switchyard-key` set the message id and key; the
//! other `x-` headers and `content-type` become message headers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::dead_letter::DeadLetterFile;
use crate::contract::bindings::Message;
use crate::contract::source::{Delivery, Settle, Settlement, Source, SourceError};

/// Bodies larger than this are refused with 413 before they reach a route.
const MAX_BODY: usize = 64 << 20;

/// The `http` source.
pub struct HttpSource {
    name: String,
    listen: SocketAddr,
    dead_letter: Arc<DeadLetterFile>,
}

impl HttpSource {
    /// The config `type` that selects it.
    pub const TYPE: &'static str = "http";

    /// A source named `name` listening on `listen`.
    pub fn new(name: &str, listen: SocketAddr, dead_letter: Arc<DeadLetterFile>) -> Self {
        Self { name: name.to_string(), listen, dead_letter }
    }
}

#[derive(Clone)]
struct Ingest {
    name: Arc<str>,
    out: mpsc::Sender<Delivery>,
    dead_letter: Arc<DeadLetterFile>,
    next_id: Arc<AtomicU64>,
    started: u128,
}

type Reply = (StatusCode, axum::Json<serde_json::Value>);

struct HttpSettle {
    reply: oneshot::Sender<Reply>,
    dead_letter: Arc<DeadLetterFile>,
}

#[async_trait]
impl Settle for HttpSettle {
    async fn settle(self: Box<Self>, message: &Message, settlement: Settlement) -> Result<(), SourceError> {
        let reply = match settlement {
            Settlement::Ack => (StatusCode::OK, axum::Json(json!({ "id": message.id, "outcome": "handled" }))),
            Settlement::DeadLetter { reason, headers } => {
                self.dead_letter.append(message, &headers).await?;
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    axum::Json(json!({ "id": message.id, "outcome": "dead-lettered", "reason": reason })),
                )
            }
            Settlement::Retry { .. } => {
                return Err(SourceError::Failed {
                    source_name: message.source.clone(),
                    message: "the http source does not redeliver; the host retries in place".into(),
                });
            }
        };
        let _ = self.reply.send(reply);
        Ok(())
    }
}

async fn ingest(State(state): State<Ingest>, Path(topic): Path<String>, headers: HeaderMap, body: Bytes) -> Reply {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let id = header("x-switchyard-id").filter(|id| !id.is_empty()).unwrap_or_else(|| {
        format!("{}-{}-{}", state.name, state.started, state.next_id.fetch_add(1, Ordering::Relaxed))
    });
    let message_headers = headers
        .iter()
        .filter(|(name, _)| {
            let n = name.as_str();
            n == "content-type" || (n.starts_with("x-") && !n.starts_with("x-switchyard-"))
        })
        .filter_map(|(name, value)| Some((name.as_str().to_string(), value.to_str().ok()?.to_string())))
        .collect();
    let message = Message {
        id: id.clone(),
        source: state.name.to_string(),
        topic,
        key: header("x-switchyard-key"),
        headers: message_headers,
        payload: body.to_vec(),
        attempt: 1,
        reply_to: None,
        timestamp_ms: None,
    };
    let (reply, settled) = oneshot::channel();
    let settle = Box::new(HttpSettle { reply, dead_letter: state.dead_letter.clone() });
    let unavailable = || {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "id": id, "outcome": "not-handled", "reason": "the host is shutting down" })),
        )
    };
    if state.out.send(Delivery { message, settle }).await.is_err() {
        return unavailable();
    }
    settled.await.unwrap_or_else(|_| unavailable())
}

#[async_trait]
impl Source for HttpSource {
    async fn run(self: Box<Self>, out: mpsc::Sender<Delivery>, shutdown: CancellationToken) -> Result<(), SourceError> {
        let failed = |message: String| SourceError::Failed { source_name: self.name.clone(), message };
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .map_err(|e| failed(format!("cannot listen on {}: {e}", self.listen)))?;
        tracing::info!(source = %self.name, listen = %self.listen, "http source listening");
        let started =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let state = Ingest {
            name: self.name.as_str().into(),
            out,
            dead_letter: self.dead_letter.clone(),
            next_id: Arc::new(AtomicU64::new(1)),
            started,
        };
        let app = Router::new()
            .route("/topics/{topic}", post(ingest))
            .route("/healthz", get(|| async { "ok" }))
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .with_state(state);
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .map_err(|e| failed(format!("http server on {} failed: {e}", self.listen)))
    }
}
