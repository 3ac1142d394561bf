//! A hostile tenant's handler: each message attempts one attack, named by
//! `{"attack": "..."}`. Where the host stops the attack with an error, the
//! handler rejects the message with what it saw, so the dead-letter headers
//! show the attack and its refusal. Where an attack got through, it returns
//! ok, which the isolation tests treat as a breach.
//!
//! Attacks: `loop`, `memory`, `recurse`, `huge-result`, `read-other-tenant`,
//! `sql-outside-grant`, `publish-forbidden`, `filesystem`, `network`,
//! `environment`.
//!
//! Build: `cargo build --manifest-path plugins/Cargo.toml --target wasm32-wasip2 --release -p hostile`

wit_bindgen::generate!({ path: "../../wit", world: "handler" });

use serde::Deserialize;
use switchyard::handler::publish::{self, Outgoing};
use switchyard::handler::{cache, db};

#[derive(Deserialize)]
struct Attack {
    attack: String,
    #[serde(default)]
    target: Option<String>,
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
