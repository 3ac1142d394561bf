//! The host side of the `switchyard:handler` WIT contract: the one `bindgen!`.
//!
//! Every import is async, so a capability call can wait on its backend
//! without blocking a thread, and trappable, so a host failure can end the
//! instance while a backend failure reaches the guest as a `capability-error`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "handler",
    imports: { default: async | trappable },
    additional_derives: [PartialEq],
    exports: { default: async },
    trappable_error_type: {
        "switchyard:handler/types.capability-error" => crate::contract::errors::CapabilityFailure,
    },
});

pub use self::switchyard::handler::types::{CapabilityError, RetryRequest};
pub use self::switchyard::handler::{cache, config, db, http, log, publish, search, types};
