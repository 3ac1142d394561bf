//! A handler that fails on request, to test how the host contains failures.
//!
//! The payload is JSON `{"mode": "..."}`:
//! - `ok`: ack;
//! - `retry`: ask for a retry after `delay_ms` (default 50);
//! - `flaky`: retry until attempt `succeed_on` (default 3), then ack;
//! - `reject`: dead-letter with a reason;
//! - `trap`: panic, which traps the instance;
//! - `loop`: spin forever, until the host's deadline stops it;
//! - `oom`: allocate until the memory limit stops it;
//! - `recurse`: recurse until the stack overflows;
//! - `cache`: set `key` (default `faults:hit`) in the cache and ack;
//! - `busy`: compute for `delay_ms` milliseconds, then ack;
//! - `scatter`: grow memory by 8 MiB, mark one byte in each of 256 pages
//!   spread over it, and reject if any was already marked: memory an earlier
//!   message dirtied must never be visible to a later one;
//! - `pageout`: grow memory by 8 MiB, reject if any of its 2,048 4 KiB
//!   pages does not read zero, mark each, then set `<key>:dirty` in the
//!   cache and wait (up to `delay_ms`, default 20 s) for `<key>:out`, which
//!   a test sets once it has had the kernel swap those pages out
//!   (`host/tests/memory_reset.rs`);
//! - `sql`: execute `sql` with the text parameters `params` and ack; a
//!   capability error rejects the message with the error;
//! - `count`: count the call in a global, grow memory by `pages` 64 KiB
//!   pages if asked, set `key` in the cache to the count (in decimal), and
//!   publish it to `to` if given, rejecting the message if that is refused.
//!   A fresh instance answers 1; a reused one counts on, which is how the
//!   instance reuse tests see which instance ran a message.
//!
//! A payload that is not JSON is rejected, as any JSON handler should do.
//!
//! Build: `cargo build --manifest-path plugins/Cargo.toml --target wasm32-wasip2 --release -p faults`

wit_bindgen::generate!({ path: "../../wit", world: "handler" });

use serde::Deserialize;
use switchyard::handler::types::RetryRequest;
use switchyard::handler::publish::{self, Outgoing};
use switchyard::handler::{cache, db, log};

#[derive(Deserialize)]
struct Request {
    mode: String,
    #[serde(default)]
    delay_ms: Option<u64>,
    #[serde(default)]
    succeed_on: Option<u32>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    sql: Option<String>,
    #[serde(default)]
    params: Vec<String>,
    #[serde(default)]
    pages: usize,
    #[serde(default)]
    to: Option<String>,
}

/// Calls this instance has served, for `count`.
static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

struct Faults;

impl Guest for Faults {
    fn handle(msg: Message) -> Result<(), HandlerError> {
        let req: Request = serde_json::from_slice(&msg.payload)
            .map_err(|e| HandlerError::Reject(format!("payload is not a fault request: {e}")))?;
        log::log(log::Level::Debug, &format!("fault mode {} attempt {}", req.mode, msg.attempt));
        match req.mode.as_str() {
            "ok" => Ok(()),
            "retry" => Err(HandlerError::Retry(RetryRequest {
                delay_ms: req.delay_ms.unwrap_or(50),
                reason: "asked to retry".into(),
            })),
            "flaky" if msg.attempt < req.succeed_on.unwrap_or(3) => Err(HandlerError::Retry(RetryRequest {
                delay_ms: req.delay_ms.unwrap_or(10),
                reason: format!("flaky on attempt {}", msg.attempt),
            })),
            "flaky" => Ok(()),
            "reject" => Err(HandlerError::Reject("asked to reject".into())),
            "trap" => panic!("asked to trap"),
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "oom" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "recurse" => {
                std::hint::black_box(recurse(std::hint::black_box(1)));
                Ok(())
            }
            "busy" => {
                let until = std::time::Instant::now() + std::time::Duration::from_millis(req.delay_ms.unwrap_or(100));
                while std::time::Instant::now() < until {
                    std::hint::black_box(0);
                }
                Ok(())
            }
            "scatter" => {
                // Pages fresh from `memory.grow` must read as zero; the
                // allocator never hands these out, as it grows past them.
                let first = core::arch::wasm32::memory_grow(0, 128);
                if first == usize::MAX {
                    return Err(HandlerError::Reject("memory.grow refused 8 MiB".into()));
                }
                for i in 0..256 {
                    let at = core::ptr::with_exposed_provenance_mut::<u8>((first << 16) + (i << 15));
                    // SAFETY: `at` lies in the 128 pages grown just above,
                    // which nothing else in this instance uses.
                    let seen = unsafe { at.read_volatile() };
                    if seen != 0 {
                        return Err(HandlerError::Reject(format!("page {i} holds {seen} from an earlier message")));
                    }
                    unsafe { at.write_volatile(0xA5) };
                }
                Ok(())
            }
            "pageout" => {
                let first = core::arch::wasm32::memory_grow(0, 128);
                if first == usize::MAX {
                    return Err(HandlerError::Reject("memory.grow refused 8 MiB".into()));
                }
                for i in 0..2048 {
                    let at = core::ptr::with_exposed_provenance_mut::<u8>((first << 16) + (i << 12));
                    // SAFETY: `at` lies in the 128 pages grown just above,
                    // which nothing else in this instance uses.
                    let seen = unsafe { at.read_volatile() };
                    if seen != 0 {
                        return Err(HandlerError::Reject(format!("page {i} holds {seen} from an earlier message")));
                    }
                    unsafe { at.write_volatile(0xA5) };
                }
                let key = req.key.unwrap_or_else(|| "faults:pageout".into());
                let failed = |e| HandlerError::Reject(format!("cache: {e:?}"));
                cache::set(&format!("{key}:dirty"), b"1", None).map_err(failed)?;
                let until =
                    std::time::Instant::now() + std::time::Duration::from_millis(req.delay_ms.unwrap_or(20_000));
                while cache::get(&format!("{key}:out")).map_err(failed)?.is_none() {
                    if std::time::Instant::now() > until {
                        return Err(HandlerError::Reject(format!("{key}:out was never set")));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                Ok(())
            }
            "cache" => {
                let key = req.key.unwrap_or_else(|| "faults:hit".into());
                cache::set(&key, &msg.attempt.to_le_bytes(), None)
                    .map_err(|e| HandlerError::Reject(format!("cache set {key}: {e:?}")))
            }
            "count" => {
                let calls = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if req.pages > 0 && core::arch::wasm32::memory_grow(0, req.pages) == usize::MAX {
                    return Err(HandlerError::Reject(format!("memory.grow refused {} pages", req.pages)));
                }
                let key = req.key.unwrap_or_else(|| "faults:count".into());
                let count = calls.to_string();
                cache::set(&key, count.as_bytes(), None)
                    .map_err(|e| HandlerError::Reject(format!("cache set {key}: {e:?}")))?;
                if let Some(to) = req.to {
                    let message =
                        Outgoing { destination: to.clone(), payload: count.into_bytes(), headers: Vec::new(), key: None };
                    publish::publish(&message).map_err(|e| HandlerError::Reject(format!("publish to {to}: {e:?}")))?;
                }
                Ok(())
            }
            "sql" => {
                let sql = req.sql.unwrap_or_default();
                let params: Vec<db::Value> = req.params.into_iter().map(db::Value::Text).collect();
                db::execute(&sql, &params).map(|_| ()).map_err(|e| HandlerError::Reject(format!("sql: {e:?}")))
            }
            other => Err(HandlerError::Reject(format!("unknown fault mode {other:?}"))),
        }
    }
}

fn recurse(n: u64) -> u64 {
    if n == 0 {
        return 0; // never: n starts at 1 and only grows
    }
    let frame = std::hint::black_box([n; 64]);
    recurse(frame[3].wrapping_add(1)).wrapping_add(frame[7])
}

export!(Faults);
