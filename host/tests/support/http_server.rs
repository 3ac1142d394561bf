//! A local HTTP server for the `http` capability's tests: a few fixed routes
//! that misbehave on purpose. Every request is recorded, so a test reads
//! what reached the server, not what the handler says it sent.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The path.
    pub path: String,
    /// Its `Idempotency-Key`, if any.
    pub key: Option<String>,
    /// Its body, as text.
    pub body: String,
}

/// What the server has seen, shared with the test.
#[derive(Default)]
pub struct Seen {
    /// Every request, in order.
    pub hits: Mutex<Vec<Hit>>,
    /// Calls to `/flaky` so far.
    flaky: AtomicU32,
}

impl Seen {
    /// Requests to `path` so far.
    pub fn hits_on(&self, path: &str) -> Vec<Hit> {
        self.hits.lock().unwrap().iter().filter(|h| h.path == path).cloned().collect()
    }
}

/// A running server; it stops when the test's runtime does.
pub struct TestServer {
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    /// What it has seen.
    pub seen: Arc<Seen>,
}

impl TestServer {
    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// Start the server on a free port.
pub async fn start() -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    let app = Router::new().fallback(any(fixed)).with_state((seen.clone(), port));
    tokio::spawn(async move { axum::serve(listener, app).await });
    TestServer { port, seen }
}

type Shared = (Arc<Seen>, u16);

fn record(seen: &Seen, uri: &Uri, headers: &HeaderMap, body: &Bytes) {
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string);
    let hit = Hit { path: uri.path().to_string(), key, body: String::from_utf8_lossy(body).into_owned() };
    seen.hits.lock().unwrap().push(hit);
}

/// The misbehaving routes.
async fn fixed(State((seen, port)): State<Shared>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    record(&seen, &uri, &headers, &body);
    match uri.path() {
        "/hello" => "hello".into_response(),
        "/flaky" if seen.flaky.fetch_add(1, Ordering::SeqCst) < 2 => {
            (StatusCode::SERVICE_UNAVAILABLE, "try again").into_response()
        }
        "/flaky" => "recovered".into_response(),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            "too late".into_response()
        }
        "/big" => vec![b'x'; 2 << 20].into_response(),
        // No Content-Length: the size shows only as the body streams in.
        "/big-stream" => {
            let chunks =
                futures::stream::iter((0..64).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'y'; 32 << 10]))));
            Body::from_stream(chunks).into_response()
        }
        "/redirect-in" => (StatusCode::FOUND, [(header::LOCATION, "/hello".to_string())]).into_response(),
        "/redirect-out" => {
            (StatusCode::FOUND, [(header::LOCATION, format!("http://localhost:{port}/hello"))]).into_response()
        }
        "/redirect-loop" => (StatusCode::FOUND, [(header::LOCATION, "/redirect-loop".to_string())]).into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}
