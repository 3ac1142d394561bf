//! Switchyard consumes messages from brokers and runs each one through a
//! sandboxed WebAssembly handler.
//!
//! The path of one message:
//!
//! 1. A [source](sources) yields a [`Delivery`](sources::Delivery): the
//!    message, and a handle that settles it on its broker.
//! 2. The [dispatcher](dispatch) finds its route by source and topic, admits
//!    it under the route's limits (a full route pushes back on the source),
//!    and queues it behind earlier messages with the same key.
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

pub mod admin;
pub mod bench;
pub mod bench_brokers;
pub mod bench_effects;
pub mod capabilities;
pub mod config;
pub mod dispatch;
pub mod runtime;
pub mod scaffold;
pub mod sources;

pub use config::Config;
pub use dispatch::Host;
pub use runtime::{Outcome, Runtime, RuntimeOptions};
