//! What the benchmarks share: their error, the message they run, backends
//! that refuse everything, and readings of this process.

use std::time::Duration;

use switchyard::contract::Message;
use switchyard::contract::bindings::db::{RowSet, Value};
use switchyard::contract::bindings::search::Hit;
use switchyard::contract::db::{DbBackend, SqlDialect};
use switchyard::contract::errors::BackendError;
use switchyard::contract::search::SearchBackend;
use switchyard::runtime::{LoadError, Outcome, RuntimeError};

/// The benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The engine could not be set up.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The handler could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The handler did not ack the benchmark message.
    #[error("the benchmark handler did not return ok: {0:?}")]
    NotOk(Outcome),
    /// A benchmark file could not be written.
    #[error("benchmark file {0}: {1}")]
    Io(String, std::io::Error),
    /// The generated config was refused.
    #[error(transparent)]
    Config(#[from] switchyard::config::ConfigError),
    /// A handler was refused.
    #[error(transparent)]
    Deploy(#[from] switchyard::runtime::registry::DeployError),
    /// A backend could not be opened.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The host could not be built.
    #[error(transparent)]
    Host(#[from] switchyard::wiring::HostError),
}

/// Backends that refuse everything: the benchmark handler calls none, and
/// opening real ones would only add noise.
pub struct Unused;

#[async_trait::async_trait]
impl DbBackend for Unused {
    fn dialect(&self) -> SqlDialect {
        SqlDialect::Sqlite
    }
    async fn execute(&self, _: &str, _: Vec<Value>) -> Result<u64, BackendError> {
        Err(BackendError::Unavailable("no database in the dispatch benchmark".into()))
    }
    async fn query(&self, _: &str, _: Vec<Value>) -> Result<RowSet, BackendError> {
        Err(BackendError::Unavailable("no database in the dispatch benchmark".into()))
    }
}

#[async_trait::async_trait]
impl SearchBackend for Unused {
    async fn index(&self, _: &str, _: &str, _: serde_json::Map<String, serde_json::Value>) -> Result<(), BackendError> {
        Err(BackendError::Unavailable("no search in the dispatch benchmark".into()))
    }
    async fn delete(&self, _: &str, _: &str) -> Result<(), BackendError> {
        Err(BackendError::Unavailable("no search in the dispatch benchmark".into()))
    }
    async fn query(&self, _: &str, _: &str, _: usize) -> Result<Vec<Hit>, BackendError> {
        Err(BackendError::Unavailable("no search in the dispatch benchmark".into()))
    }
}

/// The message the dispatch benchmarks run.
pub fn message() -> Message {
    Message {
        id: "bench-1".into(),
        source: "bench".into(),
        topic: "bench".into(),
        key: None,
        headers: vec![("content-type".into(), "application/json".into())],
        payload: br#"{"id":"p1","name":"widget","price":12.5}"#.to_vec(),
        attempt: 1,
        reply_to: None,
        timestamp_ms: None,
    }
}

/// Nanoseconds per message.
pub fn per_message(elapsed: Duration, n: u32) -> f64 {
    elapsed.as_nanos() as f64 / f64::from(n.max(1))
}

/// The resident memory of this process, in MiB.
pub fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// This process's minor page faults so far, from /proc/self/stat (field 10).
pub fn minor_faults() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // The command name may hold spaces; the fields after it do not.
            let rest = &stat[stat.rfind(')')? + 2..];
            rest.split(' ').nth(7)?.parse().ok()
        })
        .unwrap_or(0)
}
