//! The outbound HTTP client behind the `http` capability: one `reqwest`
//! client, so every handler of every tenant shares its connection pool, with
//! TLS through rustls and the system's roots. It follows no redirect itself;
//! the capability checks each hop against the tenant's grant first.

use std::time::Duration;

use async_trait::async_trait;

use crate::contract::errors::BackendError;
use crate::contract::http::{HttpClient, HttpRequest, HttpResponse};

/// The longest a new connection may take to open, within the request's own
/// timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A pooled HTTP client.
pub struct PooledHttp {
    client: reqwest::Client,
}

impl PooledHttp {
    /// A client with a pool of idle connections per host.
    pub fn new() -> Result<Self, BackendError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .user_agent(concat!("switchyard/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BackendError::Unavailable(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self { client })
    }
}

#[async_trait]
impl HttpClient for PooledHttp {
    async fn send(
        &self,
        request: &HttpRequest,
        timeout: Duration,
        max_response_bytes: usize,
    ) -> Result<HttpResponse, BackendError> {
        let method = reqwest::Method::from_bytes(request.method.as_bytes())
            .map_err(|_| BackendError::Invalid(format!("{:?} is not an HTTP method", request.method)))?;
        let url = &request.url;
        let mut builder = self.client.request(method, url).timeout(timeout);
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        let failed = |e: reqwest::Error| {
            if e.is_timeout() {
                BackendError::Unavailable(format!("{url}: no answer within {} ms", timeout.as_millis()))
            } else if e.is_builder() {
                BackendError::Invalid(format!("{url}: {e}"))
            } else if e.is_connect() {
                BackendError::Unavailable(format!("{url}: cannot connect: {}", source_chain(&e)))
            } else {
                BackendError::Unavailable(format!("{url}: {}", source_chain(&e)))
            }
        };
        let mut response = builder.body(request.body.clone()).send().await.map_err(failed)?;
        let too_large = |len: u64| {
            BackendError::TooLarge(format!(
                "{url}: the response body is {len} bytes or more; the limit is {max_response_bytes}"
            ))
        };
        if let Some(len) = response.content_length()
            && len > max_response_bytes as u64
        {
            return Err(too_large(len));
        }
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            if body.len() + chunk.len() > max_response_bytes {
                return Err(too_large((body.len() + chunk.len()) as u64));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(HttpResponse { status, headers, body })
    }
}

/// An error with its causes, which `reqwest` keeps apart: "connection
/// refused" is in the source, not the message.
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
