//! The three services of the order saga, one component: which one a handler
//! is comes from its config (`service = "order" | "inventory" | "payment"`),
//! and so do the topics it sends to. Each runs on a transactional route, so
//! a step's writes, the messages it sends and its compensations commit
//! together or not at all.
//!
//! - **order** (`order-topic`): an order is created (`status = 'created'`)
//!   and `reserve` goes to the inventory service. `paid` and `cancel`
//!   messages from the later steps settle the order's status.
//! - **inventory** (`inventory-topic`): `reserve` takes the quantity from
//!   `inventory` and records the reservation, then asks the payment service
//!   to `charge`; out of stock, it fails, and its compensation cancels the
//!   order. `release` puts a reservation back, once.
//! - **payment** (`payment-topic`): `charge` takes the amount from the
//!   customer's account and tells the order service it is `paid`; declined,
//!   it fails, and its compensations release the stock and cancel the order.
//!
//! Every step is also idempotent by order id, so an order the producer sent
//! twice, or a step message relayed twice, changes nothing the second time.
//!
//! An order is the JSON `{"order": "1001", "customer": "alice", "item":
//! "widget", "qty": 2, "amount": 30}`, or, as the integration guide's
//! producer sends it, plain text: the item, one of it, for the guest
//! customer, paid on delivery (amount 0), with the message id as order id.

use serde::{Deserialize, Serialize};
use switchyard_sdk::db::{self, Value};
use switchyard_sdk::publish::{self, Outgoing};
use switchyard_sdk::{Handler, HandlerError, Message, config, reject, to_json};

/// One order, as every step passes it on.
#[derive(Serialize, Deserialize, Clone)]
struct Order {
    order: String,
    #[serde(default = "guest")]
    customer: String,
    item: String,
    #[serde(default = "one")]
    qty: i64,
    #[serde(default)]
    amount: i64,
}

fn guest() -> String {
    "guest".into()
}

fn one() -> i64 {
    1
}

/// A message between the services: what to do, and to which order.
#[derive(Serialize, Deserialize)]
struct Step {
    op: String,
    #[serde(flatten)]
    order: Order,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// A setting of this handler's config, required.
fn setting(key: &str) -> Result<String, HandlerError> {
    config::get(key).ok_or_else(|| reject(format!("the handler's config has no {key:?}")))
}

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

/// A message to `topic` (config key) on this saga's source, keyed by the
/// order so one order's messages stay in order.
fn step(topic_key: &str, op: &str, order: &Order, reason: Option<&str>) -> Result<Outgoing, HandlerError> {
    let body = Step { op: op.into(), order: order.clone(), reason: reason.map(str::to_string) };
    Ok(Outgoing {
        destination: format!("{}:{}", setting("source")?, setting(topic_key)?),
        payload: to_json(&body)?,
        headers: vec![("order-id".into(), order.order.clone())],
        key: Some(order.order.clone()),
    })
}

fn exists(sql: &str, id: &str) -> Result<bool, HandlerError> {
    Ok(!db::query(sql, &[text(id)])?.rows.is_empty())
}

/// An order sent as plain text: one of `item`, for the guest, unpaid.
fn plain(msg: &Message, item: &str) -> Result<Step, HandlerError> {
    let item = item.trim();
    if item.is_empty() {
        return Err(reject("an empty order"));
    }
    let order = Order { order: msg.id.clone(), customer: guest(), item: item.into(), qty: 1, amount: 0 };
    Ok(Step { op: "create".into(), order, reason: None })
}

/// The order service.
fn order_service(msg: &Message) -> Result<(), HandlerError> {
    let malformed = |e: serde_json::Error| reject(format!("malformed order: {e}"));
    let step = match serde_json::from_slice::<serde_json::Value>(&msg.payload) {
        Ok(value @ serde_json::Value::Object(_)) if value.get("op").is_some() => {
            serde_json::from_value(value).map_err(malformed)?
        }
        Ok(value @ serde_json::Value::Object(_)) => {
            Step { op: "create".into(), order: serde_json::from_value(value).map_err(malformed)?, reason: None }
        }
        // The guide's producer sends the order as text: the item.
        Ok(serde_json::Value::String(item)) => plain(msg, &item)?,
        _ => plain(msg, msg.text()?)?,
    };
    let order = &step.order;
    match step.op.as_str() {
        "create" => {
            if order.qty <= 0 || order.amount < 0 {
                return Err(reject(format!("order {}: quantity {} amount {}", order.order, order.qty, order.amount)));
            }
            if exists("SELECT 1 FROM orders WHERE id = ?", &order.order)? {
                return Ok(()); // sent twice: created the first time
            }
            db::execute(
                "INSERT INTO orders (id, customer, item, qty, amount, status) VALUES (?, ?, ?, ?, ?, 'created')",
                &[text(&order.order), text(&order.customer), text(&order.item), Value::Int(order.qty), Value::Int(order.amount)],
            )?;
            publish::publish(&self::step("inventory_topic", "reserve", order, None)?)?;
        }
        "paid" => {
            db::execute("UPDATE orders SET status = 'paid' WHERE id = ? AND status = 'created'", &[text(&order.order)])?;
        }
        "cancel" => {
            let reason = step.reason.as_deref().unwrap_or("cancelled");
            db::execute(
                "UPDATE orders SET status = 'cancelled', reason = ? WHERE id = ? AND status <> 'cancelled'",
                &[text(reason), text(&order.order)],
            )?;
        }
        other => return Err(reject(format!("the order service has no step {other:?}"))),
    }
    Ok(())
}

/// The inventory service.
fn inventory_service(msg: &Message) -> Result<(), HandlerError> {
    let step: Step = msg.json_of("inventory step")?;
    let order = &step.order;
    match step.op.as_str() {
        "reserve" => {
            // Sent only if this step finally fails: nothing was reserved,
            // so only the order is undone.
            publish::compensate_on_failure(&self::step("order_topic", "cancel", order, Some("out of stock"))?)?;
            if exists("SELECT 1 FROM reservations WHERE order_id = ?", &order.order)? {
                return Ok(()); // relayed twice: reserved the first time
            }
            let taken = db::execute(
                "UPDATE inventory SET stock = stock - ? WHERE item = ? AND stock >= ?",
                &[Value::Int(order.qty), text(&order.item), Value::Int(order.qty)],
            )?;
            if taken == 0 {
                return Err(reject(format!("out of stock: {} x {} for order {}", order.qty, order.item, order.order)));
            }
            db::execute(
                "INSERT INTO reservations (order_id, item, qty, released) VALUES (?, ?, ?, 0)",
                &[text(&order.order), text(&order.item), Value::Int(order.qty)],
            )?;
            publish::publish(&self::step("payment_topic", "charge", order, None)?)?;
        }
        "release" => {
            let released = db::execute(
                "UPDATE reservations SET released = 1 WHERE order_id = ? AND released = 0",
                &[text(&order.order)],
            )?;
            if released == 1 {
                db::execute(
                    "UPDATE inventory SET stock = stock + ? WHERE item = ?",
                    &[Value::Int(order.qty), text(&order.item)],
                )?;
            }
        }
        other => return Err(reject(format!("the inventory service has no step {other:?}"))),
    }
    Ok(())
}

/// The payment service.
fn payment_service(msg: &Message) -> Result<(), HandlerError> {
    let step: Step = msg.json_of("payment step")?;
    let order = &step.order;
    if step.op != "charge" {
        return Err(reject(format!("the payment service has no step {:?}", step.op)));
    }
    // Sent only if this step finally fails: the stock comes back, then
    // the order is cancelled.
    publish::compensate_on_failure(&self::step("inventory_topic", "release", order, None)?)?;
    publish::compensate_on_failure(&self::step("order_topic", "cancel", order, Some("payment declined"))?)?;
    if exists("SELECT 1 FROM payments WHERE order_id = ?", &order.order)? {
        return Ok(()); // relayed twice: charged the first time
    }
    if order.amount > 0 {
        let charged = db::execute(
            "UPDATE accounts SET balance = balance - ? WHERE customer = ? AND balance >= ?",
            &[Value::Int(order.amount), text(&order.customer), Value::Int(order.amount)],
        )?;
        if charged == 0 {
            return Err(reject(format!("payment declined: {} for order {}", order.customer, order.order)));
        }
    }
    db::execute(
        "INSERT INTO payments (order_id, customer, amount) VALUES (?, ?, ?)",
        &[text(&order.order), text(&order.customer), Value::Int(order.amount)],
    )?;
    publish::publish(&self::step("order_topic", "paid", order, None)?)?;
    Ok(())
}

struct ShopSaga;

impl Handler for ShopSaga {
    fn handle(msg: Message) -> Result<(), HandlerError> {
        match setting("service")?.as_str() {
            "order" => order_service(&msg),
            "inventory" => inventory_service(&msg),
            "payment" => payment_service(&msg),
            other => Err(reject(format!("no service {other:?} in this component"))),
        }
    }
}

switchyard_sdk::export!(ShopSaga);
