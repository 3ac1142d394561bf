//! A hostile tenant's handler: each message attempts one attack, named by
//! `{"attack": "..."}`. Where the host stops the attack with an error, the
//! handler rejects the message with what it saw, so the dead-letter headers
//! show the attack and its refusal. Where an attack got through, it returns
//! ok, which the isolation tests treat as a breach.
//!
//! Attacks: `loop`, `memory`, `recurse`, `huge-result`, `read-other-tenant`,
//! `sql-outside-grant`, `publish-forbidden`, `filesystem`, `network`,
//! `environment`, `publish-flood` (sixty 8 MiB publishes), `huge-key` and
//! `huge-header` (20 MB each), `index-flood` (100 indexes), `log-flood` (`n` lines, 100,000 unless given; returns ok) and
//! `fork` (publishes `n` copies of its message to `hostile.fork`; returns ok).
//!
//! Build: `cargo build --manifest-path plugins/Cargo.toml --target wasm32-wasip2 --release -p hostile`

wit_bindgen::generate!({ path: "../../wit", world: "handler" });

use serde::Deserialize;
use switchyard::handler::publish::{self, Outgoing};
use switchyard::handler::{cache, db, log, search};

#[derive(Deserialize)]
struct Attack {
    attack: String,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    n: usize,
}

fn publish_one(destination: &str, payload: Vec<u8>, headers: Vec<(String, String)>, key: Option<String>) -> Result<(), switchyard::handler::types::CapabilityError> {
    publish::publish(&Outgoing { destination: destination.into(), payload, headers, key })
}

struct Hostile;

fn refused(what: &str, why: impl std::fmt::Debug) -> Result<(), HandlerError> {
    Err(HandlerError::Reject(format!("{what} refused: {why:?}")))
}

impl Guest for Hostile {
    fn handle(msg: Message) -> Result<(), HandlerError> {
        let attack: Attack = serde_json::from_slice(&msg.payload)
            .map_err(|e| HandlerError::Reject(format!("not an attack: {e}")))?;
        match attack.attack.as_str() {
            "loop" => loop {
                std::hint::black_box(());
            },
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![7u8; 4 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "recurse" => {
                std::hint::black_box(deep(1));
                Ok(())
            }
            "huge-result" => Err(HandlerError::Reject("x".repeat(8 << 20))),
            "read-other-tenant" => {
                let key = attack.target.unwrap_or_else(|| "victim:secret".into());
                match cache::get(&key) {
                    Ok(value) => {
                        // Got through: leak it where the test can see it.
                        let _ = cache::set("hostile:loot", &value.unwrap_or_default(), None);
                        Ok(())
                    }
                    Err(e) => refused("cache read", e),
                }
            }
            "sql-outside-grant" => match db::query("SELECT * FROM victim_secrets", &[]) {
                Ok(_) => Ok(()),
                Err(e) => refused("sql", e),
            },
            "publish-forbidden" => {
                let message = Outgoing {
                    destination: "victim.commands".into(),
                    payload: b"drop everything".to_vec(),
                    headers: vec![],
                    key: None,
                };
                match publish::publish(&message) {
                    Ok(()) => Ok(()),
                    Err(e) => refused("publish", e),
                }
            }
            "filesystem" => {
                let listing = std::fs::read_dir("/").map(|d| d.count());
                let passwd = std::fs::read("/etc/passwd").map(|b| b.len());
                match (listing, passwd) {
                    (Err(a), Err(b)) => refused("filesystem", (a.to_string(), b.to_string())),
                    _ => Ok(()),
                }
            }
            "network" => {
                let target = attack.target.unwrap_or_else(|| "127.0.0.1:6379".into());
                match std::net::TcpStream::connect(target.as_str()) {
                    Ok(_) => Ok(()),
                    Err(e) => refused("network", e.to_string()),
                }
            }
            "environment" => {
                let vars: Vec<(String, String)> = std::env::vars().collect();
                let args: Vec<String> = std::env::args().collect();
                if vars.is_empty() && args.is_empty() {
                    refused("environment", "no variables, no arguments")
                } else {
                    Ok(())
                }
            }
            "publish-flood" => {
                let payload = vec![7u8; 8 << 20];
                for n in 0..60 {
                    if let Err(e) = publish_one("hostile.flood", payload.clone(), Vec::new(), None) {
                        return refused(&format!("publish {n}"), e);
                    }
                }
                Ok(())
            }
            "huge-key" => match publish_one("hostile.key", b"x".to_vec(), Vec::new(), Some("k".repeat(20 << 20))) {
                Err(e) => refused("huge key", e),
                Ok(()) => Ok(()),
            },
            "huge-header" => {
                match publish_one("hostile.header", b"x".to_vec(), vec![("h".into(), "v".repeat(20 << 20))], None) {
                    Err(e) => refused("huge header", e),
                    Ok(()) => Ok(()),
                }
            }
            "index-flood" => {
                for i in 0..100 {
                    let index = format!("hostile-flood-{i}");
                    if let Err(e) = search::index_document(&index, "d", "{\"x\": 1}") {
                        return refused(&format!("index {i}"), e);
                    }
                }
                Ok(())
            }
            "log-flood" => {
                let filler = "x".repeat(200);
                let lines = if attack.n == 0 { 100_000 } else { attack.n };
                for i in 0..lines {
                    log::log(log::Level::Info, &format!("flood line {i} {filler}"));
                }
                Ok(())
            }
            "fork" => {
                for _ in 0..attack.n {
                    if let Err(e) = publish_one("hostile.fork", msg.payload.clone(), Vec::new(), None) {
                        return refused("fork", e);
                    }
                }
                Ok(())
            }
            other => Err(HandlerError::Reject(format!("unknown attack {other:?}"))),
        }
    }
}

fn deep(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    let frame = std::hint::black_box([n; 128]);
    deep(frame[1].wrapping_add(1)).wrapping_add(frame[9])
}

export!(Hostile);
