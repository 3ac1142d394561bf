//! A test handler that records every delivery it sees as one SQL row, so a
//! test can count effects per message: lost ones, duplicates, order, and the
//! time between attempts.
//!
//! Each call inserts into `deliveries(msg_id, topic, msg_key, seq, attempt,
//! started_ms, ended_ms)` (the table must exist), then acts on the JSON
//! payload `{"seq": n, "mode": "...", "busy_ms": n, "succeed_on": n, "delay_ms": n}`:
//! - `ok` (the default): ack;
//! - `retry`: ask for a retry after `delay_ms` (default 100) until attempt
//!   `succeed_on` (default 2), then ack;
//! - `reject`: dead-letter with a reason.
//!
//! A message with a `reply-to` is answered, on ack, with `{"seq": n, "attempt": n}`.
//!
//! With `busy_ms` it computes for that long before recording, so messages
//! overlap in time and can be caught in flight.
//!
//! Build: `cargo build --manifest-path plugins/Cargo.toml --target wasm32-wasip2 --release -p record`

wit_bindgen::generate!({ path: "../../wit", world: "handler" });

use serde::Deserialize;
use switchyard::handler::db::{self, Value};
use switchyard::handler::publish::{self, Outgoing};
use switchyard::handler::types::RetryRequest;

#[derive(Deserialize)]
struct Request {
    #[serde(default)]
    seq: i64,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    busy_ms: u64,
    #[serde(default)]
    succeed_on: Option<u32>,
    #[serde(default)]
    delay_ms: Option<u64>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

struct Record;

impl Guest for Record {
    fn handle(msg: Message) -> Result<(), HandlerError> {
        let req: Request = serde_json::from_slice(&msg.payload)
            .map_err(|e| HandlerError::Reject(format!("payload is not a record request: {e}")))?;
        let started = now_ms();
        if req.busy_ms > 0 {
            let until = std::time::Instant::now() + std::time::Duration::from_millis(req.busy_ms);
            while std::time::Instant::now() < until {
                std::hint::black_box(0);
            }
        }
        db::execute(
            "INSERT INTO deliveries (msg_id, topic, msg_key, seq, attempt, started_ms, ended_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
            &[
                Value::Text(msg.id.clone()),
                Value::Text(msg.topic.clone()),
                msg.key.clone().map(Value::Text).unwrap_or(Value::Null),
                Value::Int(req.seq),
                Value::Int(msg.attempt as i64),
                Value::Int(started),
                Value::Int(now_ms()),
            ],
        )
        .map_err(|e| HandlerError::Retry(RetryRequest { delay_ms: 100, reason: format!("cannot record: {e:?}") }))?;
        let outcome = match req.mode.as_deref().unwrap_or("ok") {
            "ok" => Ok(()),
            "retry" if msg.attempt < req.succeed_on.unwrap_or(2) => Err(HandlerError::Retry(RetryRequest {
                delay_ms: req.delay_ms.unwrap_or(100),
                reason: format!("asked to retry on attempt {}", msg.attempt),
            })),
            "retry" => Ok(()),
            "reject" => Err(HandlerError::Reject("asked to reject".into())),
            other => Err(HandlerError::Reject(format!("unknown mode {other:?}"))),
        };
        if let (Ok(()), Some(reply_to)) = (&outcome, &msg.reply_to) {
            let answer = format!(r#"{{"seq": {}, "attempt": {}}}"#, req.seq, msg.attempt);
            publish::publish(&Outgoing { destination: reply_to.clone(), payload: answer.into_bytes(), headers: Vec::new(), key: None })
                .map_err(|e| HandlerError::Retry(RetryRequest { delay_ms: 100, reason: format!("cannot reply: {e:?}") }))?;
        }
        outcome
    }
}

export!(Record);
