//! A small, optional SDK for Switchyard handlers written in Rust.
//!
//! It wraps the bindings of `wit/handler.wit` so the common case is short:
//! [`Message::json`] parses the payload or rejects with the reason, [`reject`]
//! and [`retry`] build the two failures, and every capability error converts
//! into the usual failure with `?` (unavailable: retry in a second; denied,
//! invalid, too large: reject, naming the reason).
//!
//! ```ignore
//! use switchyard_sdk::{cache, Handler, HandlerError, Message};
//!
//! struct Touch;
//!
//! impl Handler for Touch {
//!     fn handle(msg: Message) -> Result<(), HandlerError> {
//!         let event: serde_json::Value = msg.json()?;
//!         cache::set(&format!("seen:{}", event["id"]), &msg.payload, None)?;
//!         Ok(())
//!     }
//! }
//!
//! switchyard_sdk::export!(Touch);
//! ```
//!
//! Build the handler crate (`crate-type = ["cdylib"]`) with
//! `cargo build --target wasm32-wasip2 --release`.

use std::time::Duration;

/// The generated bindings of the `handler` world, for what the helpers do not cover.
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "handler",
        pub_export_macro: true,
        default_bindings_module: "switchyard_sdk::bindings",
    });
}

pub use bindings::Guest as Handler;
/// `switchyard_sdk::export!(MyHandler);` makes `MyHandler` the component's `handle` export.
pub use bindings::export;
pub use bindings::switchyard::handler::types::{CapabilityError, HandlerError, Message, RetryRequest};
pub use bindings::switchyard::handler::{cache, db, publish, search};

/// A permanent failure: the message is dead-lettered now, with `reason`.
pub fn reject(reason: impl Into<String>) -> HandlerError {
    HandlerError::Reject(reason.into())
}

/// A transient failure: the message is delivered again after `delay` (or the
/// route's backoff, if longer).
pub fn retry(delay: Duration, reason: impl Into<String>) -> HandlerError {
    let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    HandlerError::Retry(RetryRequest { delay_ms, reason: reason.into() })
}

/// How long a handler asks to wait when a backend is unavailable.
pub const UNAVAILABLE_RETRY: Duration = Duration::from_secs(1);

impl From<CapabilityError> for HandlerError {
    /// An unreachable backend is worth a retry; anything else would fail again.
    fn from(e: CapabilityError) -> Self {
        match e {
            CapabilityError::Unavailable(why) => retry(UNAVAILABLE_RETRY, why),
            CapabilityError::Denied(why) => reject(format!("denied: {why}")),
            CapabilityError::Invalid(why) => reject(format!("invalid: {why}")),
            CapabilityError::TooLarge(why) => reject(format!("too large: {why}")),
        }
    }
}

impl Message {
    /// The payload parsed as JSON into `T`, or a reject saying why
    /// (`malformed payload: ...`).
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, HandlerError> {
        self.json_of("payload")
    }

    /// Like [`Message::json`], naming what the payload should be in the
    /// reason: `msg.json_of::<Order>("order")` rejects with `malformed order: ...`.
    pub fn json_of<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T, HandlerError> {
        serde_json::from_slice(&self.payload).map_err(|e| {
            if e.is_syntax() || e.is_eof() {
                reject(format!("malformed {what}: not JSON: {e}"))
            } else {
                reject(format!("malformed {what}: {e}"))
            }
        })
    }

    /// The payload as UTF-8 text, or a reject.
    pub fn text(&self) -> Result<&str, HandlerError> {
        std::str::from_utf8(&self.payload).map_err(|e| reject(format!("malformed payload: not UTF-8: {e}")))
    }

    /// The first header called `name`, if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// `value` as compact JSON; objects built from `serde_json::Value` come out
/// with their keys sorted, the form every Switchyard example writes.
pub fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, HandlerError> {
    serde_json::to_vec(value).map_err(|e| reject(format!("cannot encode JSON: {e}")))
}

/// Writing to the host's log, tagged with the tenant, handler and message.
pub mod log {
    use crate::bindings::switchyard::handler::log::{Level, log};

    /// Log at debug level.
    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }
    /// Log at info level.
    pub fn info(message: &str) {
        log(Level::Info, message);
    }
    /// Log at warn level.
    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }
    /// Log at error level.
    pub fn error(message: &str) {
        log(Level::Error, message);
    }
}
