//! The `rocketmq` source and publisher, through `rocketmq-client-rust`, the
//! remoting-protocol client of the Rust implementation of RocketMQ.
//!
//! That client rather than the official `rocketmq` crate: the official one
//! speaks gRPC to a RocketMQ proxy, which is one more server to run, while
//! this one talks to the name server and brokers directly, as the Java
//! client does, with clustering consumer groups, orderly consumption, the
//! retry and dead-letter topics, and transactional producers.

pub mod client;
pub mod producer;
pub mod source;
