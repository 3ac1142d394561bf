//! Indexes JSON documents for full-text search.
//!
//! Each message's payload is a JSON object with a string `id`; it is indexed
//! into `orders` under that id. With `"deleted": true` the document is removed.
//!
//! Build: `cargo build --manifest-path plugins/Cargo.toml --target wasm32-wasip2 --release -p search-index`

wit_bindgen::generate!({ path: "../../wit", world: "handler" });

use switchyard::handler::search;
use switchyard::handler::types::{CapabilityError, RetryRequest};

const INDEX: &str = "orders";

struct SearchIndex;

impl Guest for SearchIndex {
    fn handle(msg: Message) -> Result<(), HandlerError> {
        let doc: serde_json::Value = serde_json::from_slice(&msg.payload)
            .map_err(|e| HandlerError::Reject(format!("malformed document: {e}")))?;
        let Some(id) = doc.get("id").and_then(|v| v.as_str()) else {
            return Err(HandlerError::Reject("malformed document: no string `id`".into()));
        };
        if doc.get("deleted").and_then(|v| v.as_bool()) == Some(true) {
            search::delete_document(INDEX, id).map_err(failure)
        } else {
            let text = String::from_utf8_lossy(&msg.payload);
            search::index_document(INDEX, id, &text).map_err(failure)
        }
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

export!(SearchIndex);
