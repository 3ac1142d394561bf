//! Message sources, one file (or folder) per broker plus the embedded ones,
//! each implementing the [`Source`](crate::contract::source::Source) port.
//! A source yields deliveries; each carries a settlement handle that acks,
//! retries or dead-letters the message on its own broker. Sources build only
//! on the contract and their own config.

pub mod amqp;
pub mod backoff;
pub mod dead_letter;
pub mod file;
pub mod http;
pub mod kafka;
pub mod nats;
pub mod redis_streams;
pub mod rocketmq;
