//! Pulling from a JetStream consumer with an exact count of what is owed.

use std::sync::Arc;
use std::time::Duration;

use async_nats::Subject;
use futures::StreamExt;
use tokio::sync::Notify;

/// How long the server keeps a pull request that is not yet filled; an idle
/// consumer renews its pull this often.
const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// Silence after which pull requests still owed messages are taken as lost
/// (the server restarted) and made again: the expiry, plus a margin for the
/// server's own expiry notice to arrive.
const PULL_LOST_AFTER: Duration = Duration::from_secs(10);

/// What a [`Puller`] got.
pub enum Pulled {
    /// A message of the stream.
    Message(async_nats::Message),
    /// Nothing this time; pull again after a backoff.
    Retry(String),
    /// The consumer is gone or the connection closed: start over.
    Reset(String),
}

/// Pull requests on one inbox, with an exact count of the messages they are
/// still owed. async-nats' own pull stream adds a request to its count only
/// when the task that sent it reports back, which can be after the request's
/// first messages arrived; those are never subtracted, so it waits for
/// messages the server will not send, and the consumer stalls until the
/// request expires. Here a request is counted before it is sent, and one
/// inbox keeps the messages in stream order. The brokers benchmark's native
/// consumer pulls with it too, so both sides pull the same way.
pub struct Puller {
    client: async_nats::Client,
    /// `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`.
    subject: Subject,
    inbox: Subject,
    replies: async_nats::Subscriber,
    /// The request body: `batch` messages, expiring after [`PULL_EXPIRES`].
    request: String,
    batch: usize,
    /// Messages requested and neither delivered nor released by the server.
    owed: usize,
    /// When the server was last heard from on the inbox, or last asked.
    heard: tokio::time::Instant,
    /// Fires [`PULL_LOST_AFTER`] after `heard`; moved on only when it fires,
    /// so a message costs no timer update.
    lost: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// Notified when the client has connected again: the server may have
    /// restarted and forgotten the requests, so they are made again at once
    /// rather than after [`PULL_LOST_AFTER`].
    reconnected: Arc<Notify>,
}

impl Puller {
    /// Pull from `consumer` on `stream`, `max_ack_pending` messages a request.
    pub async fn start(
        client: &async_nats::Client,
        stream: &str,
        consumer: &str,
        max_ack_pending: i64,
        reconnected: Arc<Notify>,
    ) -> Result<Self, String> {
        let inbox = Subject::from(client.new_inbox());
        let replies = client.subscribe(inbox.clone()).await.map_err(|e| format!("cannot subscribe to {inbox}: {e}"))?;
        let batch = usize::try_from(max_ack_pending).unwrap_or(1).clamp(1, 10_000);
        let request = serde_json::json!({ "batch": batch, "expires": PULL_EXPIRES.as_nanos() as u64 });
        Ok(Self {
            client: client.clone(),
            subject: Subject::from(format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}")),
            inbox,
            replies,
            request: request.to_string(),
            batch,
            owed: 0,
            heard: tokio::time::Instant::now(),
            lost: Box::pin(tokio::time::sleep(PULL_LOST_AFTER)),
            reconnected,
        })
    }

    /// The next message, asking for more first when half of what was asked
    /// for has come.
    pub async fn next(&mut self) -> Pulled {
        loop {
            if self.owed <= self.batch / 2 {
                self.owed += self.batch;
                self.heard = tokio::time::Instant::now();
                if let Err(e) = self
                    .client
                    .publish_with_reply(self.subject.clone(), self.inbox.clone(), self.request.clone().into())
                    .await
                {
                    self.owed -= self.batch;
                    return Pulled::Retry(format!("cannot request messages: {e}"));
                }
            }
            // Replies first: while messages flow, the other two branches are
            // never polled, so a message registers no waiter and no timer.
            let reply = tokio::select! {
                biased;
                reply = self.replies.next() => reply,
                _ = self.reconnected.notified() => {
                    tracing::info!(subject = %self.subject, "connected again; pulling again");
                    self.owed = 0;
                    continue;
                }
                _ = &mut self.lost => {
                    let now = tokio::time::Instant::now();
                    let deadline = self.heard + PULL_LOST_AFTER;
                    if deadline > now {
                        self.lost.as_mut().reset(deadline);
                        continue;
                    }
                    self.lost.as_mut().reset(now + PULL_LOST_AFTER);
                    self.owed = 0;
                    return Pulled::Retry(format!("no reply to pull requests for {} s", PULL_LOST_AFTER.as_secs()));
                }
            };
            let Some(m) = reply else { return Pulled::Reset("the connection closed".into()) };
            self.heard = tokio::time::Instant::now();
            match m.status {
                None | Some(async_nats::StatusCode::OK) => {
                    self.owed = self.owed.saturating_sub(1);
                    return Pulled::Message(m);
                }
                Some(async_nats::StatusCode::IDLE_HEARTBEAT) => {}
                // A request expired or was ended: the header says how many of
                // its messages it will no longer deliver.
                Some(async_nats::StatusCode::TIMEOUT | async_nats::StatusCode::REQUEST_TERMINATED) => {
                    let released = m
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("Nats-Pending-Messages"))
                        .and_then(|v| v.as_str().parse().ok())
                        .unwrap_or(self.batch);
                    self.owed = self.owed.saturating_sub(released);
                    let description = m.description.unwrap_or_default();
                    if description.contains("Consumer Deleted") || description.contains("Consumer is push based") {
                        return Pulled::Reset(description);
                    }
                    if m.status == Some(async_nats::StatusCode::REQUEST_TERMINATED) {
                        return Pulled::Retry(format!("the server ended a pull request: {description}"));
                    }
                }
                Some(async_nats::StatusCode::NO_RESPONDERS) => {
                    self.owed = self.owed.saturating_sub(self.batch);
                    return Pulled::Reset("no JetStream consumer answered the pull request".into());
                }
                Some(status) => {
                    return Pulled::Retry(format!(
                        "unexpected status {status} on a pull: {}",
                        m.description.unwrap_or_default()
                    ));
                }
            }
        }
    }
}
