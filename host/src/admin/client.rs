//! A small HTTP/1.1 client for the admin API, used by `switchyard plugins`.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A call to the admin API that failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `http://host:port`.
    #[error("admin URL {0:?} must look like http://127.0.0.1:9090")]
    Url(String),
    /// The host could not be reached.
    #[error("cannot reach the admin API at {url}: {error}")]
    Connect {
        /// Where.
        url: String,
        /// Why.
        error: std::io::Error,
    },
    /// The answer was not HTTP.
    #[error("the admin API at {0} did not answer with HTTP")]
    Protocol(String),
}

/// An HTTP response: status and body.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body, as text.
    pub body: String,
}

/// Send one request and read the whole response.
pub async fn request(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> Result<Response, ClientError> {
    let authority = base
        .strip_prefix("http://")
        .map(|a| a.trim_end_matches('/'))
        .filter(|a| !a.is_empty() && !a.contains('/'))
        .ok_or_else(|| ClientError::Url(base.to_string()))?;
    let connect = |error| ClientError::Connect { url: base.to_string(), error };
    let mut stream = tokio::net::TcpStream::connect(authority).await.map_err(connect)?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {authority}\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    if let Some(token) = token {
        head.push_str(&format!("authorization: Bearer {token}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.map_err(connect)?;
    stream.write_all(body).await.map_err(connect)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.map_err(connect)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| ClientError::Protocol(base.to_string()))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ClientError::Protocol(base.to_string()))?;
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
    Ok(Response { status, body })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        let (Some(chunk), Some(next)) = (rest.get(..size), rest.get(size..)) else { break };
        if size == 0 {
            break;
        }
        out.push_str(chunk);
        body = next.trim_start_matches("\r\n");
    }
    out
}
