//! Records placed orders in the database and announces them.
//!
//! An `order.placed` message carries `{"id": "o1", "customer": "c1", "total": 12.5}`.
//! The order is inserted into `orders` (a redelivery inserts nothing twice), and
//! an `order.recorded` event is published, which the quickstart routes to the
//! search indexer. Its SQL is portable: it runs unchanged on SQLite,
//! PostgreSQL and MySQL/MariaDB (no `ON CONFLICT`, no `INSERT IGNORE`).
//!
//! Build: `cargo build --manifest-path plugins/Cargo.toml --target wasm32-wasip2 --release -p order-insert`

wit_bindgen::generate!({ path: "../../wit", world: "handler" });

use serde::Deserialize;
use switchyard::handler::db::{self, Value};
use switchyard::handler::publish::{self, Outgoing};
use switchyard::handler::types::{CapabilityError, RetryRequest};

#[derive(Deserialize)]
struct Order {
    id: String,
    customer: String,
    total: f64,
}

struct OrderInsert;

impl Guest for OrderInsert {
    fn handle(msg: Message) -> Result<(), HandlerError> {
        let order: Order = serde_json::from_slice(&msg.payload)
            .map_err(|e| HandlerError::Reject(format!("malformed order: {e}")))?;
        let recorded = || -> Result<bool, HandlerError> {
            let found = db::query("SELECT id FROM orders WHERE id = ?", &[Value::Text(order.id.clone())]);
            Ok(!found.map_err(failure)?.rows.is_empty())
        };
        if !recorded()? {
            let inserted = db::execute(
                "INSERT INTO orders (id, customer, total) VALUES (?, ?, ?)",
                &[Value::Text(order.id.clone()), Value::Text(order.customer), Value::Float(order.total)],
            );
            // A redelivery running at the same time may have inserted it first.
            if let Err(e) = inserted
                && !(matches!(e, CapabilityError::Invalid(_)) && recorded()?)
            {
                return Err(failure(e));
            }
        }
        publish::publish(&Outgoing {
            destination: "order.recorded".into(),
            payload: msg.payload,
            headers: vec![("order-id".into(), order.id.clone())],
            key: Some(order.id),
        })
        .map_err(failure)?;
        Ok(())
    }
}

fn failure(e: CapabilityError) -> HandlerError {
    match e {
        CapabilityError::Unavailable(why) => HandlerError::Retry(RetryRequest { delay_ms: 1000, reason: why }),
        CapabilityError::Denied(why) => HandlerError::Reject(format!("denied: {why}")),
        CapabilityError::Invalid(why) => HandlerError::Reject(format!("invalid: {why}")),
        CapabilityError::TooLarge(why) => HandlerError::Reject(format!("too large: {why}")),
    }
}

export!(OrderInsert);
