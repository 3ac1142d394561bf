//! The port outbound HTTP goes through (`capabilities/backends/http.rs`).
//! It sends one exchange and follows no redirect: the `http` capability
//! checks every hop against the tenant's grant before it reaches here.

use std::time::Duration;

use async_trait::async_trait;

use super::errors::BackendError;

/// One request, its URL already checked against the tenant's grant.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRequest {
    /// The method, already validated.
    pub method: String,
    /// The absolute URL.
    pub url: String,
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

/// One response, redirects included as they came.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Headers, in order; values that are not UTF-8 are read lossily.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of the header `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// An HTTP client with a connection pool shared by every handler.
#[async_trait]
pub trait HttpClient: Send + Sync {
    /// Send `request` and read its response within `timeout`, body
    /// included; a body over `max_response_bytes` is `TooLarge`. Redirects
    /// come back as responses.
    async fn send(
        &self,
        request: &HttpRequest,
        timeout: Duration,
        max_response_bytes: usize,
    ) -> Result<HttpResponse, BackendError>;
}
