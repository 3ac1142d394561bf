//! Keeps the cache consistent with product-change events.
//!
//! A `product.changed` message carries `{"id": "p1", "name": ..., "price": ...}`:
//! the product is stored under `product:<id>`. With `"deleted": true` the entry
//! is removed instead. Malformed input is rejected, so it is dead-lettered rather
//! than retried; an unreachable cache is retried.
//!
//! Build: `cargo build --manifest-path plugins/Cargo.toml --target wasm32-wasip2 --release -p cache-update`

wit_bindgen::generate!({ path: "../../wit", world: "handler" });

use serde::Deserialize;
use switchyard::handler::cache;
use switchyard::handler::types::{CapabilityError, RetryRequest};

#[derive(Deserialize)]
struct ProductChange {
    id: String,
    #[serde(default)]
    deleted: bool,
    #[serde(flatten)]
    fields: serde_json::Map<String, serde_json::Value>,
}

struct CacheUpdate;

impl Guest for CacheUpdate {
    fn handle(msg: Message) -> Result<(), HandlerError> {
        let change: ProductChange = serde_json::from_slice(&msg.payload)
            .map_err(|e| HandlerError::Reject(format!("malformed product change: {e}")))?;
        if change.id.is_empty() {
            return Err(HandlerError::Reject("malformed product change: empty id".into()));
        }
        let key = format!("product:{}", change.id);
        if change.deleted {
            cache::delete(&key).map_err(failure)?;
        } else {
            let mut product = change.fields;
            product.insert("id".into(), change.id.into());
            let value = serde_json::to_vec(&product)
                .map_err(|e| HandlerError::Reject(format!("cannot encode product: {e}")))?;
            cache::set(&key, &value, None).map_err(failure)?;
        }
        Ok(())
    }
}

/// An unreachable cache is worth a retry; anything else will fail again.
fn failure(e: CapabilityError) -> HandlerError {
    match e {
        CapabilityError::Unavailable(why) => HandlerError::Retry(RetryRequest { delay_ms: 1000, reason: why }),
        CapabilityError::Denied(why) => HandlerError::Reject(format!("denied: {why}")),
        CapabilityError::Invalid(why) => HandlerError::Reject(format!("invalid: {why}")),
        CapabilityError::TooLarge(why) => HandlerError::Reject(format!("too large: {why}")),
    }
}

export!(CacheUpdate);
