//! The cache scenario's handler: keeps Redis consistent with product changes
//! arriving on the RabbitMQ queue `cache_update`, and warms it from the
//! database on demand.
//!
//! A change is the integration guide's message, `{"product_id": 1,
//! "product_name": "New Product"}`, optionally with a `version` (a number
//! that grows with every change of that product at its source) and
//! `"deleted": true`. It is stored under `product:<id>` as
//! `{"product_id": ..., "product_name": ..., "version": ...}`.
//!
//! With a version, a change older than what the cache holds is dropped, so a
//! late or redelivered event never overwrites a newer value, whatever order
//! the broker delivers them in. A deletion leaves a tombstone
//! (`{"product_id": ..., "deleted": true, "version": ...}`, kept a day) that
//! an older change cannot bring back. Without a version, the last message
//! handled wins, as in the guide.
//!
//! `{"warmup": true}` (optionally `"limit": n`, default 100) reads the
//! hottest products from the `products` table and stores those newer than
//! what the cache holds, so a cold cache is filled before traffic needs it.
//!
//! The compare-then-set is not atomic in Redis, so the route runs one
//! message at a time (`concurrency = 1` in the example's config).

use serde_json::{Value, json};
use switchyard_sdk::db::{self, Value as Sql};
use switchyard_sdk::{Handler, HandlerError, Message, cache, reject};

/// How long a deletion's tombstone keeps older changes out.
const TOMBSTONE_MS: u64 = 24 * 60 * 60 * 1000;

struct ProductCache;

impl Handler for ProductCache {
    fn handle(msg: Message) -> Result<(), HandlerError> {
        let Value::Object(change) = msg.json_of::<Value>("product change")? else {
            return Err(reject("malformed product change: not a JSON object"));
        };
        if change.get("warmup") == Some(&Value::Bool(true)) {
            let limit = change.get("limit").and_then(Value::as_i64).unwrap_or(100).clamp(1, 10_000);
            return warm_up(limit);
        }
        let id = match change.get("product_id") {
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(reject("malformed product change: product_id must be a number or a non-empty string")),
        };
        let version = match change.get("version") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| reject("malformed product change: version must be a whole number"))?),
        };
        let deleted = match change.get("deleted") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(reject("malformed product change: deleted must be true or false")),
        };
        if deleted {
            return store(&id, json!({ "product_id": change["product_id"], "deleted": true, "version": version }), version, Some(TOMBSTONE_MS));
        }
        let Some(Value::String(name)) = change.get("product_name") else {
            return Err(reject("malformed product change: product_name must be a string"));
        };
        store(&id, json!({ "product_id": change["product_id"], "product_name": name, "version": version }), version, None)
    }
}

/// Store `value` under the product's key unless the cache holds a version
/// at least as new.
fn store(id: &str, value: Value, version: Option<u64>, ttl_ms: Option<u64>) -> Result<(), HandlerError> {
    let key = format!("product:{id}");
    if let Some(version) = version
        && let Some(held) = cache::get(&key)?
        && let Ok(held) = serde_json::from_slice::<Value>(&held)
        && held.get("version").and_then(Value::as_u64).is_some_and(|held| held >= version)
    {
        return Ok(()); // older than, or the same as, what the cache holds
    }
    let bytes = serde_json::to_vec(&value).map_err(|e| reject(format!("cannot encode the product: {e}")))?;
    cache::set(&key, &bytes, ttl_ms)?;
    Ok(())
}

/// Fill the cache with the `limit` hottest products.
fn warm_up(limit: i64) -> Result<(), HandlerError> {
    let rows = db::query(
        "SELECT product_id, product_name, version FROM products ORDER BY hits DESC, product_id LIMIT ?",
        &[Sql::Int(limit)],
    )?;
    for row in rows.rows {
        let (id, id_json) = match row.first() {
            Some(Sql::Int(n)) => (n.to_string(), json!(n)),
            Some(Sql::Text(s)) => (s.clone(), json!(s)),
            _ => continue,
        };
        let name = match row.get(1) {
            Some(Sql::Text(s)) => s.clone(),
            _ => continue,
        };
        let version = match row.get(2) {
            Some(Sql::Int(v)) => u64::try_from(*v).ok(),
            _ => None,
        };
        store(&id, json!({ "product_id": id_json, "product_name": name, "version": version }), version, None)?;
    }
    Ok(())
}

switchyard_sdk::export!(ProductCache);
