//! The `nats` and `jetstream` sources and their publisher, through async-nats.

pub mod client;
pub mod core;
pub mod jetstream;
mod publisher;
pub mod puller;
