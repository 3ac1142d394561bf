//! Switchyard consumes messages from brokers and runs each one through a
//! sandboxed WebAssembly handler.
//!
//! The crate is built in floors, and every import points down:
//!
//! | floor | what it holds |
//! |---|---|
//! | [`contract`] | the one `bindgen!` of the WIT contract, the error types, the ports every backend, publisher and source implements, the header names |
//! | [`config`] | the TOML config; it owns no behaviour |
//! | [`capabilities`] | cache, db, search, publish and log, one file each, and their backends |
//! | [`runtime`] | the engine, plugin loading, the registry of versions and hot swap, limits |
//! | [`sources`] | one file or folder per broker, plus the embedded file and http sources |
//! | [`dispatch`] | routing, admission, ordering, invocation, settlement, outbound publishing, the outbox relay |
//! | [`admin`] | the admin API, metrics, the watched deploy directory |
//! | [`wiring`] | builds a [`wiring::Host`] from a [`config::Config`] |
//!
//! The path of one message:
//!
//! 1. A [source](sources) yields a [`Delivery`](contract::source::Delivery):
//!    the message, and a handle that settles it on its broker.
//! 2. The [dispatcher](dispatch::dispatcher) finds its route by source and
//!    topic, admits it under the route's limits (a full route pushes back on
//!    the source), and queues it behind earlier messages with the same key.
//! 3. The [runtime](runtime) gives it a fresh instance of the route's handler
//!    from a pre-instantiated component on the pooling allocator, with memory,
//!    time and fuel limits, and calls `handle`.
//! 4. The handler reaches the world only through [capabilities]: cache, db,
//!    search, publish and log, each checked against its tenant's grants
//!    before it reaches a backend. Writes from handlers running at the same
//!    time are batched, and each call returns once its write is durable.
//! 5. When `handle` returns ok, what the handler published is sent, and then
//!    the message is acked. A retry waits with backoff and runs again; a
//!    reject, or a failure that outlives its attempts, dead-letters the
//!    message with the reason in its headers and publishes its compensations.
//!
//! A handler that traps, loops or exhausts its memory fails only its own
//! message; the host keeps serving.

// The RocketMQ client's types nest deeper than the default limit allows
// for proving a future `Send`.
#![recursion_limit = "512"]

pub mod contract;

pub mod config;

pub mod capabilities;

pub mod runtime;

pub mod sources;

pub mod dispatch;

pub mod admin;

pub mod wiring;

pub mod scaffold;

pub use config::Config;
pub use wiring::Host;
