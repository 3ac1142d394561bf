//! Build "b" of the hot-swap test handler (see `plugins/versioned/handler.rs`).
//!
//! Build: `cargo build --manifest-path plugins/Cargo.toml --target wasm32-wasip2 --release -p version-b`

const VERSION: &str = "b";

include!("../../versioned/handler.rs");
