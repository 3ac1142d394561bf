//! The `http` capability: the host side of the WIT interface. Every URL,
//! the first and each redirect's, is checked against the tenant's
//! `allowed_hosts` before a connection is made; every exchange ends by the
//! handler's deadline, and its body sizes and count are bounded.

use std::time::{Duration, Instant};

use url::Url;

use crate::contract::bindings::http;
use crate::contract::errors::CapabilityFailure;
use crate::contract::http::HttpRequest;

use super::context::{CapabilityCtx, Effect, MAX_HEADER_BYTES, check_size};

/// Redirects followed for one request.
const MAX_REDIRECTS: usize = 5;

/// Headers the client sets itself: a handler's `Host` could reach another
/// virtual host behind a granted address, and the framing ones would let it
/// smuggle a second request.
const RESERVED: [&str; 6] = ["host", "content-length", "transfer-encoding", "connection", "upgrade", "te"];

/// Headers that carry credentials, dropped when a redirect leaves the origin.
const CREDENTIALS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

impl CapabilityCtx {
    /// `url` parsed, if the tenant's grant allows it.
    fn check_url(&self, url: &str, via: Option<&Url>) -> Result<Url, CapabilityFailure> {
        let parsed = match via {
            Some(base) => base.join(url),
            None => Url::parse(url),
        }
        .map_err(|e| CapabilityFailure::Invalid(format!("{url:?} is not a URL: {e}")))?;
        let (scheme, host, port) = (parsed.scheme(), parsed.host_str(), parsed.port_or_known_default());
        let granted = match (host, port) {
            (Some(host), Some(port)) => self.access.allowed_hosts.iter().any(|p| p.matches(scheme, host, port)),
            _ => false,
        };
        if granted {
            return Ok(parsed);
        }
        let what = match via {
            Some(from) => format!("the redirect from {from} to {parsed}"),
            None => format!("{parsed}"),
        };
        let allowed = &self.access.grants.allowed_hosts;
        Err(CapabilityFailure::Denied(format!("{what} is outside the tenant's allowed_hosts {allowed:?}")))
    }

    /// The time an exchange may take: what it asked for, within what is
    /// left of the handler's deadline less a tenth (at most 100 ms), so the
    /// handler still has time to act on a timeout.
    fn exchange_deadline(&self, timeout_ms: Option<u64>) -> Result<Instant, CapabilityFailure> {
        let now = Instant::now();
        let left = self.deadline.map(|d| {
            let left = d.saturating_duration_since(now);
            left.saturating_sub((left / 10).min(Duration::from_millis(100)))
        });
        let asked = timeout_ms.map(Duration::from_millis);
        let timeout = match (asked, left) {
            (Some(a), Some(l)) => a.min(l),
            (a, l) => a.or(l).unwrap_or(Duration::from_secs(30)),
        };
        if timeout.is_zero() {
            return Err(CapabilityFailure::Unavailable("no time is left before the handler's deadline".into()));
        }
        Ok(now + timeout)
    }

    /// Count one more request against the message's limit.
    fn count_request(&mut self) -> Result<(), CapabilityFailure> {
        let limit = self.access.output.max_http_requests;
        if self.http_requests >= limit {
            return Err(CapabilityFailure::Denied(format!(
                "this message has sent {limit} HTTP requests, the tenant's max_http_requests"
            )));
        }
        self.http_requests += 1;
        Ok(())
    }
}

impl http::Host for CapabilityCtx {
    async fn send(&mut self, request: http::Request) -> Result<http::Response, CapabilityFailure> {
        check_size("HTTP request body", request.body.len())?;
        let header_bytes: usize = request.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        if header_bytes > MAX_HEADER_BYTES {
            return Err(CapabilityFailure::TooLarge(format!(
                "the HTTP request's headers are {header_bytes} bytes; the limit is {MAX_HEADER_BYTES}"
            )));
        }
        if let Some((name, _)) =
            request.headers.iter().find(|(n, _)| RESERVED.iter().any(|r| n.eq_ignore_ascii_case(r)))
        {
            return Err(CapabilityFailure::Invalid(format!("the header {name:?} is the HTTP client's to set")));
        }
        let deadline = self.exchange_deadline(request.timeout_ms)?;
        let url = self.check_url(&request.url, None)?;
        let mut exchange = HttpRequest {
            method: request.method.to_ascii_uppercase(),
            url: url.to_string(),
            headers: request.headers,
            body: request.body,
        };
        let mut url = url;
        let mut redirects = 0;
        loop {
            self.count_request()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(CapabilityFailure::Unavailable(format!("{url}: the request's time ran out")));
            }
            let max_body = self.access.output.max_http_response_bytes;
            let response = self.access.backends.http.send(&exchange, left, max_body).await?;
            tracing::debug!(
                tenant = %self.log.tenant,
                handler = %self.log.handler,
                message_id = %self.log.message_id,
                method = %exchange.method,
                url = %url,
                status = response.status,
                "HTTP request"
            );
            self.record(|| Effect::Http {
                method: exchange.method.clone(),
                url: exchange.url.clone(),
                status: response.status,
            });
            let location = response.header("location").filter(|_| (300..400).contains(&response.status));
            let Some(location) = location else {
                return Ok(http::Response { status: response.status, headers: response.headers, body: response.body });
            };
            if redirects == MAX_REDIRECTS {
                return Err(CapabilityFailure::Unavailable(format!(
                    "{url}: more than {MAX_REDIRECTS} redirects; the last went to {location}"
                )));
            }
            redirects += 1;
            let next = self.check_url(location, Some(&url))?;
            if next.origin() != url.origin() {
                exchange.headers.retain(|(name, _)| !CREDENTIALS.iter().any(|c| name.eq_ignore_ascii_case(c)));
            }
            // 303, and 301 and 302 after a POST, become a GET without a body,
            // as browsers and the common clients do; 307 and 308 repeat the
            // request as it was.
            if response.status == 303 || (matches!(response.status, 301 | 302) && exchange.method == "POST") {
                if exchange.method != "HEAD" {
                    exchange.method = "GET".into();
                }
                exchange.body = Vec::new();
                exchange.headers.retain(|(name, _)| {
                    !name.eq_ignore_ascii_case("content-type") && !name.eq_ignore_ascii_case("content-length")
                });
            }
            exchange.url = next.to_string();
            url = next;
        }
    }
}
