//! {{name}}: a Switchyard handler.
//!
//! Stores each event `{"id": ...}` in the cache under `{{name}}:<id>`, and
//! rejects a payload that is not such an event.
//!
//! Build:  cargo build --target wasm32-wasip2 --release
//! Try:    switchyard invoke target/wasm32-wasip2/release/{{crate}}.wasm --payload '{"id": "1"}'

use serde_json::Value;
use switchyard_sdk::{Handler, HandlerError, Message, cache, log, reject};

struct {{type}};

impl Handler for {{type}} {
    fn handle(msg: Message) -> Result<(), HandlerError> {
        let event: Value = msg.json_of("event")?;
        let Some(id) = event.get("id").and_then(Value::as_str) else {
            return Err(reject("malformed event: id must be a string"));
        };
        log::info(&format!("{{name}} got event {id} on {}", msg.topic));
        // A capability error becomes the usual failure: retry when the
        // cache is unavailable, reject otherwise.
        cache::set(&format!("{{name}}:{id}"), &msg.payload, None)?;
        Ok(())
    }
}

switchyard_sdk::export!({{type}});
