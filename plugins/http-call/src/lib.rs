//! A handler that sends one HTTP request, to test the `http` capability,
//! or reads one configuration variable, to test `config`.
//!
//! The payload is JSON `{"url": "...", "method": "POST", "body": "...",
//! "timeout_ms": 200, "key": "http:x", "headers": [["name", "value"]]}`;
//! only `url` is required. The message id goes as the `Idempotency-Key`,
//! after `headers`. A 5xx asks for a retry; any
//! other status sets `key` (default `http:last`) in the cache to
//! `<status> <body>` and acks; a capability error rejects with the error.
//!
//! `{"config": "region", "key": "http:x"}` sends nothing: it sets `key` to
//! the variable `region`, or to `<none>`, and acks.
//!
//! Build: `cargo build --manifest-path plugins/Cargo.toml --target wasm32-wasip2 --release -p http-call`

wit_bindgen::generate!({ path: "../../wit", world: "handler" });

use serde::Deserialize;
use switchyard::handler::types::RetryRequest;
use switchyard::handler::{cache, config, http};

#[derive(Deserialize)]
struct Call {
    #[serde(default)]
    url: String,
    #[serde(default)]
    config: Option<String>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    headers: Vec<(String, String)>,
}

struct HttpCall;

impl Guest for HttpCall {
    fn handle(msg: Message) -> Result<(), HandlerError> {
        let call: Call = serde_json::from_slice(&msg.payload)
            .map_err(|e| HandlerError::Reject(format!("payload is not an HTTP call: {e}")))?;
        let key = call.key.unwrap_or_else(|| "http:last".into());
        let set = |value: &[u8]| {
            cache::set(&key, value, None).map_err(|e| HandlerError::Reject(format!("cache set {key}: {e:?}")))
        };
        if let Some(name) = call.config {
            return set(config::get(&name).as_deref().unwrap_or("<none>").as_bytes());
        }
        let mut headers = call.headers;
        headers.push(("idempotency-key".into(), msg.id.clone()));
        let request = http::Request {
            method: call.method.unwrap_or_else(|| "GET".into()),
            url: call.url,
            headers,
            body: call.body.unwrap_or_default().into_bytes(),
            timeout_ms: call.timeout_ms,
        };
        let response = http::send(&request).map_err(|e| HandlerError::Reject(format!("http: {e:?}")))?;
        if response.status >= 500 {
            return Err(HandlerError::Retry(RetryRequest { delay_ms: 10, reason: format!("HTTP {}", response.status) }));
        }
        let mut value = format!("{} ", response.status).into_bytes();
        value.extend_from_slice(&response.body);
        set(&value)
    }
}

export!(HttpCall);
