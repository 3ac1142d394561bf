//! Build "a" of the hot-swap test handler (see `plugins/versioned/handler.rs`).
//!
//! Build: `cargo build --manifest-path plugins/Cargo.toml --target wasm32-wasip2 --release -p version-a`

const VERSION: &str = "a";

include!("../../versioned/handler.rs");
