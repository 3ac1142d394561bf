// Shared by version-a and version-b: records which version handled each
// message, so the hot-swap test can see every message handled exactly once
// and by which build.

wit_bindgen::generate!({ path: "../../wit", world: "handler" });

use switchyard::handler::db::{self, Value};

struct Versioned;

impl Guest for Versioned {
    fn handle(msg: Message) -> Result<(), HandlerError> {
        db::execute(
            "INSERT INTO runs (id, version) VALUES (?, ?)",
            &[Value::Text(msg.id), Value::Text(VERSION.into())],
        )
        .map(|_| ())
        .map_err(|e| HandlerError::Retry(switchyard::handler::types::RetryRequest { delay_ms: 10, reason: format!("{e:?}") }))
    }
}

export!(Versioned);
