//! Keeps the cache consistent with product-change events.
//!
//! A `product.changed` message carries `{"id": "p1", "name": ..., "price": ...}`:
//! the product is stored under `product:<id>` in the canonical JSON encoding
//! (RFC 8785), without `deleted`. With `"deleted": true` the entry is removed
//! instead. Malformed input is rejected, so it is dead-lettered rather than
//! retried; an unreachable cache is retried.
//!
//! What a valid product change is, the reason for each invalid one and the
//! bytes stored are defined once, in `SPEC.md` beside this file. The same
//! handler exists in Python (`plugins/cache-update-py`), JavaScript
//! (`plugins/cache-update-js`) and C (`plugins/cache-update-c`), each
//! implementing that file; `host/tests/languages.rs` holds them to it.
//!
//! Build: `cargo build --manifest-path plugins/Cargo.toml --target wasm32-wasip2 --release -p cache-update`

use serde_json::Value;
use switchyard_sdk::{Handler, HandlerError, Message, cache, reject, to_canonical_json};

const WHAT: &str = "product change";

struct CacheUpdate;

impl Handler for CacheUpdate {
    fn handle(msg: Message) -> Result<(), HandlerError> {
        let Value::Object(mut change) = msg.canonical_json(WHAT)? else {
            return Err(reject(format!("malformed {WHAT}: not a JSON object")));
        };
        let id = match change.get("id") {
            Some(Value::String(id)) if !id.is_empty() => id.clone(),
            _ => return Err(reject(format!("malformed {WHAT}: id must be a non-empty string"))),
        };
        let deleted = match change.remove("deleted") {
            None => false,
            Some(Value::Bool(deleted)) => deleted,
            Some(_) => return Err(reject(format!("malformed {WHAT}: deleted must be true or false"))),
        };
        let key = format!("product:{id}");
        if deleted {
            cache::delete(&key)?;
        } else {
            cache::set(&key, &to_canonical_json(&Value::Object(change))?, None)?;
        }
        Ok(())
    }
}

switchyard_sdk::export!(CacheUpdate);
