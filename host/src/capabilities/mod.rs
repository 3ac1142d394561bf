//! The capabilities a handler may call, one file per WIT interface, each
//! implementing its host trait on the invocation's [`context::CapabilityCtx`]
//! and checking every call against the tenant's grants before it reaches a
//! backend. The backends, one file each, sit in `backends/`.

pub mod backends;
pub mod cache;
pub mod config;
pub mod context;
pub mod db;
pub mod http;
pub mod log;
pub mod publish;
pub mod search;
