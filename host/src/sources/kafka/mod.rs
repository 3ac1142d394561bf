//! The `kafka` source and publisher, through rdkafka (librdkafka).

mod client;
mod offsets;
mod producer;
mod settle;
pub mod source;
