//! The NATS connection every NATS source and publisher opens, with its
//! events logged, and the header conversions they share.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::HeaderMap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::contract::util::redact;
use crate::sources::backoff::Backoff;

/// Connect once, logging every later disconnect and reconnect with the
/// source and address; the client reconnects and resubscribes by itself.
/// `reconnected` is notified each time the client connects again after a
/// disconnect. `pending` is how many messages the client buffers per
/// subscription (its default when `None`).
pub async fn connect(
    name: &str,
    url: &str,
    reconnected: Option<Arc<Notify>>,
    pending: Option<usize>,
) -> Result<async_nats::Client, String> {
    let (source, address) = (name.to_string(), redact(url));
    let disconnected = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut options = async_nats::ConnectOptions::new();
    if let Some(pending) = pending {
        options = options.subscription_capacity(pending.max(1));
    }
    options
        .name(format!("switchyard {name}"))
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        .event_callback(move |event| {
            let (source, address, reconnected, disconnected) =
                (source.clone(), address.clone(), reconnected.clone(), disconnected.clone());
            async move {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!(%source, %address, "NATS: connection established");
                        if disconnected.swap(false, Ordering::Relaxed)
                            && let Some(reconnected) = reconnected
                        {
                            reconnected.notify_one();
                        }
                    }
                    async_nats::Event::Disconnected => {
                        disconnected.store(true, Ordering::Relaxed);
                        tracing::error!(%source, %address, "NATS: disconnected; reconnecting with backoff")
                    }
                    // Counted and reported by the core source itself.
                    async_nats::Event::SlowConsumer(_) => {}
                    other => tracing::warn!(%source, %address, "NATS: {other}"),
                }
            }
        })
        .connect(url)
        .await
        .map_err(|e| format!("cannot connect: {e}"))
}

/// Connect, retrying with backoff and a log line per failure until it works
/// or shutdown. `None` on shutdown.
pub async fn connect_with_backoff(
    kind: &str,
    name: &str,
    url: &str,
    reconnected: Option<Arc<Notify>>,
    pending: Option<usize>,
    shutdown: &CancellationToken,
) -> Option<async_nats::Client> {
    let mut backoff = Backoff::default();
    loop {
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return None,
            c = connect(name, url, reconnected.clone(), pending) => c,
        };
        match attempt {
            Ok(client) => {
                tracing::info!(source = %name, address = %redact(url), "connected to {kind}");
                return Some(client);
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::error!(source = %name, address = %redact(url), retry_in_ms = delay.as_millis() as u64, "{kind}: {e}; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// NATS headers as name and value pairs, every value of a repeated name kept.
pub fn headers_of(map: Option<&HeaderMap>) -> Vec<(String, String)> {
    let Some(map) = map else { return Vec::new() };
    let mut headers = Vec::new();
    for (name, values) in map.iter() {
        for value in values {
            headers.push((name.to_string(), value.to_string()));
        }
    }
    headers
}

/// Name and value pairs as NATS headers. A pair NATS cannot carry (a name
/// with a control character, a non-ASCII one or `:`, a value with a line
/// break, which would end the header early) is left out and logged: these
/// come from handlers and other brokers, and must not fail a publish or
/// break the protocol.
pub fn header_map(headers: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        match k.parse::<async_nats::HeaderName>() {
            Ok(name) if !k.is_empty() && !v.contains(['\r', '\n']) => map.append(name, v.as_str()),
            _ => tracing::warn!(header = %k.escape_debug(), "a header NATS cannot carry is left out"),
        }
    }
    map
}

/// The first value of the header `name`.
pub fn find(headers: &[(String, String)], name: &str) -> Option<String> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}
