//! The ground floor: the WIT contract's one `bindgen!`, the error types a
//! guest and a backend see, the ports every capability backend (and the outbound HTTP client), publisher and
//! source implements, and the `switchyard-*` header names. It imports
//! nothing else from the crate, so every other floor can build on it.

#[allow(missing_docs)] // generated from the WIT, whose items are documented there
pub mod bindings;
pub mod cache;
pub mod db;
pub mod errors;
pub mod headers;
pub mod http;
pub mod publish;
pub mod search;
pub mod source;
pub mod util;

pub use bindings::Message;
pub use bindings::publish::Outgoing;
pub use errors::{BackendError, CapabilityFailure};
