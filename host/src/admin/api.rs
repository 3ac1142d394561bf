//! The admin HTTP API: deploy, list and roll back handler versions (bearer
//! token required), the dashboard, Prometheus metrics, and Kubernetes probes.
//!
//! | method and path | what |
//! |---|---|
//! | `PUT /v1/handlers/{tenant}/{handler}` | body: a .wasm; validates it and makes it live |
//! | `GET /v1/handlers` | every handler and its live version |
//! | `GET /v1/handlers/{tenant}/{handler}/versions` | every version, oldest first |
//! | `POST /v1/handlers/{tenant}/{handler}/rollback` | body `{"version": n}` or empty for the previous one |
//! | `GET /v1/dashboard` | counters and versions of every handler, and the latest dead letters |
//! | `GET /dashboard` | the dashboard page, which asks for the token and polls `/v1/dashboard` |
//! | `GET /metrics` | metrics per tenant and handler, in the OpenMetrics text format Prometheus reads |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 once every source has started, 503 before and while shutting down |

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{dashboard, metrics};
use crate::dispatch::stats::Stats;
use crate::runtime::registry::{DeployError, Registry};

/// The largest .wasm the API accepts.
const MAX_WASM: usize = 256 << 20;

/// Shared state of the admin server.
#[derive(Clone)]
pub struct Admin {
    registry: Arc<Registry>,
    stats: Arc<Stats>,
    token: Option<Arc<str>>,
    ready: Arc<AtomicBool>,
}

impl Admin {
    /// Admin state over `registry`; deploy calls need `token` as a bearer token.
    pub fn new(registry: Arc<Registry>, stats: Arc<Stats>, token: Option<String>, ready: Arc<AtomicBool>) -> Self {
        Self { registry, stats, token: token.map(Into::into), ready }
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.token else { return false };
        let given = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        // Compare without stopping at the first difference.
        given.len() == expected.len() && given.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    /// The HTTP routes: `/v1` behind the bearer token, probes and metrics open.
    pub fn router(self) -> Router {
        let v1 = Router::new()
            .route("/v1/handlers", get(list))
            .route("/v1/handlers/{tenant}/{handler}", put(deploy))
            .route("/v1/handlers/{tenant}/{handler}/versions", get(versions))
            .route("/v1/handlers/{tenant}/{handler}/rollback", post(rollback))
            .route("/v1/dashboard", get(dashboard_snapshot))
            .route_layer(middleware::from_fn_with_state(self.clone(), require_token));
        Router::new()
            .merge(v1)
            .route("/dashboard", get(dashboard_page))
            .route("/metrics", get(metrics_text))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .layer(DefaultBodyLimit::max(MAX_WASM))
            .with_state(self)
    }

    /// Serve on `listen` until `shutdown`.
    pub async fn serve(self, listen: SocketAddr, shutdown: CancellationToken) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        tracing::info!(%listen, "admin API listening");
        axum::serve(listener, self.router()).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
    }
}

/// Refuse a `/v1` request without the configured bearer token.
async fn require_token(State(admin): State<Admin>, request: Request, next: Next) -> Response {
    if !admin.authorized(request.headers()) {
        return (
            StatusCode::UNAUTHORIZED,
            [("www-authenticate", "Bearer")],
            axum::Json(json!({ "error": "a valid bearer token is required" })),
        )
            .into_response();
    }
    next.run(request).await
}

fn refused(e: DeployError) -> Response {
    let status = match e {
        DeployError::UnknownHandler { .. } | DeployError::UnknownVersion { .. } => StatusCode::NOT_FOUND,
        DeployError::Load { .. } | DeployError::NotGranted { .. } => StatusCode::UNPROCESSABLE_ENTITY,
    };
    (status, axum::Json(json!({ "error": e.to_string() }))).into_response()
}

async fn deploy(State(admin): State<Admin>, Path((tenant, handler)): Path<(String, String)>, body: Bytes) -> Response {
    let registry = admin.registry.clone();
    // Compiling can take seconds for a large component: off the async threads.
    let result = tokio::task::spawn_blocking(move || registry.deploy(&tenant, &handler, &body, "admin API")).await;
    match result {
        Ok(Ok(info)) => axum::Json(info).into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "deploy refused");
            refused(e)
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({ "error": e.to_string() }))).into_response(),
    }
}

async fn versions(State(admin): State<Admin>, Path((tenant, handler)): Path<(String, String)>) -> Response {
    match admin.registry.versions(&tenant, &handler) {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => refused(e),
    }
}

async fn rollback(
    State(admin): State<Admin>,
    Path((tenant, handler)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let version = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(v) => v.get("version").and_then(|n| n.as_u64()).and_then(|n| u32::try_from(n).ok()),
            Err(e) => {
                return (StatusCode::BAD_REQUEST, axum::Json(json!({ "error": format!("body is not JSON: {e}") })))
                    .into_response();
            }
        }
    };
    match admin.registry.rollback(&tenant, &handler, version) {
        Ok(info) => axum::Json(info).into_response(),
        Err(e) => refused(e),
    }
}

async fn list(State(admin): State<Admin>) -> Response {
    let handlers: Vec<_> = admin
        .registry
        .slots()
        .map(|s| {
            let live = s.live();
            json!({ "tenant": &*s.tenant, "handler": &*s.handler, "version": live.number, "digest": live.plugin.digest })
        })
        .collect();
    axum::Json(handlers).into_response()
}

async fn dashboard_page() -> Response {
    let headers = [
        ("content-security-policy", dashboard::content_security_policy()),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ];
    (headers, axum::response::Html(dashboard::PAGE)).into_response()
}

async fn dashboard_snapshot(State(admin): State<Admin>) -> Response {
    axum::Json(dashboard::snapshot(&admin.registry, &admin.stats)).into_response()
}

async fn metrics_text(State(admin): State<Admin>) -> Response {
    ([("content-type", metrics::CONTENT_TYPE)], metrics::render(&admin.registry, &admin.stats)).into_response()
}

async fn readyz(State(admin): State<Admin>) -> Response {
    if admin.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}
