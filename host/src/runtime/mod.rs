//! The WebAssembly runtime: one engine on the pooling allocator, handler
//! loading with a compiled-code cache, the registry of versions with hot
//! swap, the invocation of one handler on one message within its limits, and
//! the pools of routes that reuse instances.

pub mod engine;
pub mod metrics;
pub mod plugin;
pub mod pool;
pub mod registry;
pub mod state;

pub use engine::{Failure, Invocation, InvokeContext, Outcome, Runtime, RuntimeError, RuntimeOptions};
pub use plugin::{LoadError, Plugin};
