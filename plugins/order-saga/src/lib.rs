//! One step of an order saga, for a transactional route: reserve stock for a
//! placed order, whose payment an earlier step already took.
//!
//! An order message carries `{"order": "o1", "item": "widget", "qty": 2}`.
//! The handler first registers a compensation, a `payment.refund` message
//! sent only if this order finally fails. It then records the order, takes
//! the quantity from `saga_stock` and appends to `saga_ledger`, and publishes
//! `order.reserved`. Out of stock, it rejects, so the refund goes out. An
//! order with `"fail": true` always asks to be retried, to show a failure
//! after retries. On a transactional route the writes and the publish commit
//! together, exactly once per order, and a failed order's writes roll back.
//!
//! Destinations are on the broker source named `saga` in the host's config.
//!
//! Build: `cargo build --manifest-path plugins/Cargo.toml --target wasm32-wasip2 --release -p order-saga`

use std::time::Duration;

use serde::Deserialize;
use switchyard_sdk::db::{self, Value};
use switchyard_sdk::publish::{self, Outgoing};
use switchyard_sdk::{Handler, HandlerError, Message, reject, retry, to_json};

#[derive(Deserialize)]
struct Order {
    order: String,
    item: String,
    qty: i64,
    #[serde(default)]
    fail: bool,
}

struct OrderSaga;

fn event(destination: &str, order: &Order) -> Result<Outgoing, HandlerError> {
    Ok(Outgoing {
        destination: destination.into(),
        payload: to_json(&serde_json::json!({ "order": order.order, "item": order.item, "qty": order.qty }))?,
        headers: vec![("order-id".into(), order.order.clone())],
        key: Some(order.order.clone()),
    })
}

impl Handler for OrderSaga {
    fn handle(msg: Message) -> Result<(), HandlerError> {
        let order: Order = msg.json_of("order")?;
        if order.qty <= 0 {
            return Err(reject(format!("order {} has quantity {}", order.order, order.qty)));
        }
        publish::compensate_on_failure(&event("saga:payment.refund", &order)?)?;
        let text = |s: &str| Value::Text(s.to_string());
        db::execute(
            "INSERT INTO saga_orders (id, item, qty) VALUES (?, ?, ?)",
            &[text(&order.order), text(&order.item), Value::Int(order.qty)],
        )?;
        let taken = db::execute(
            "UPDATE saga_stock SET stock = stock - ? WHERE item = ? AND stock >= ?",
            &[Value::Int(order.qty), text(&order.item), Value::Int(order.qty)],
        )?;
        if taken == 0 {
            return Err(reject(format!("out of stock: {} x {}", order.qty, order.item)));
        }
        db::execute(
            "INSERT INTO saga_ledger (order_id, item, qty) VALUES (?, ?, ?)",
            &[text(&order.order), text(&order.item), Value::Int(order.qty)],
        )?;
        if order.fail {
            return Err(retry(Duration::from_millis(10), format!("order {} is marked to fail", order.order)));
        }
        publish::publish(&event("saga:order.reserved", &order)?)?;
        Ok(())
    }
}

switchyard_sdk::export!(OrderSaga);
