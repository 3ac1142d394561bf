//! The smallest handler: acks every message. The dispatch benchmark uses it to
//! measure the host's own cost per message.
//!
//! Build: `cargo build --manifest-path plugins/Cargo.toml --target wasm32-wasip2 --release -p noop`

wit_bindgen::generate!({ path: "../../wit", world: "handler" });

struct Noop;

impl Guest for Noop {
    fn handle(msg: Message) -> Result<(), HandlerError> {
        // Touch the payload so the call is not free of work.
        std::hint::black_box(msg.payload.len());
        Ok(())
    }
}

export!(Noop);
