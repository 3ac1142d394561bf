//! A valid component that exports the wrong world: `run` instead of `handle`.
//! The host must refuse to load it, naming the missing export.
//!
//! Build: `cargo build --manifest-path plugins/Cargo.toml --target wasm32-wasip2 --release -p wrong-world`

wit_bindgen::generate!({
    inline: "
        package test:wrong;
        world wrong {
            export run: func() -> u32;
        }
    ",
});

struct Wrong;

impl Guest for Wrong {
    fn run() -> u32 {
        42
    }
}

export!(Wrong);
