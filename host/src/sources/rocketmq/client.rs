//! The one RocketMQ client runtime of the process, which every RocketMQ
//! producer and consumer of every source shares, and the mapping between
//! RocketMQ messages and the host's.

use std::sync::{Arc, OnceLock};

use rocketmq_client_rust::{ClientRuntime, ClientRuntimeConfig};
use rocketmq_model::common::message::STRING_HASH_SET;
use rocketmq_model::common::message::message_ext::MessageExt;
use rocketmq_runtime::{RuntimeConfig, RuntimeOwner};

use crate::contract::bindings::Message;
use crate::contract::headers;

/// Threads the client may block in a listener: one per queue this host
/// consumes at once, across all RocketMQ sources.
const LISTENER_THREADS: usize = 128;

/// The system properties a handler sees as headers; the others (offsets,
/// delays, transaction markers) are the broker's own.
const VISIBLE_SYSTEM_PROPERTIES: [&str; 2] = ["KEYS", "TAGS"];
/// The message's sharding key, set by producers that send in order.
const SHARDING_KEY: &str = "__SHARDINGKEY";
/// The id the producer gave the message; stable across redeliveries.
const UNIQUE_ID: &str = "UNIQ_KEY";

/// The process's client runtime, made on first use. The runtime owner lives
/// as long as the process.
pub fn runtime() -> Result<Arc<ClientRuntime>, String> {
    static RUNTIME: OnceLock<Result<(RuntimeOwner, Arc<ClientRuntime>), String>> = OnceLock::new();
    let made = RUNTIME.get_or_init(|| {
        let config = RuntimeConfig::for_parallelism("rocketmq", 2)
            .with_max_blocking_threads(LISTENER_THREADS)
            .map_err(|e| format!("RocketMQ client runtime: {e}"))?;
        let owner = RuntimeOwner::plan(config)
            .map_err(|e| format!("RocketMQ client runtime: {e}"))?
            .build()
            .map_err(|e| format!("RocketMQ client runtime: {e}"))?;
        let client = ClientRuntime::try_new(
            owner.root_context().component("client"),
            ClientRuntimeConfig::default(),
            rocketmq_observability::TelemetryHandle::noop(),
        )
        .map_err(|e| format!("RocketMQ client runtime: {e}"))?;
        Ok((owner, client))
    });
    made.as_ref().map(|(_, client)| client.clone()).map_err(Clone::clone)
}

/// Whether a property is the broker's own, so not sent as a header.
pub fn is_system_property(name: &str) -> bool {
    STRING_HASH_SET.contains(name)
}

/// A RocketMQ message as a message of source `source`.
///
/// - id: the `switchyard-id` property, else the producer's unique id, else
///   the broker's offset id;
/// - key: the sharding key, else the first of the message's keys;
/// - attempt: the client's reconsume count plus one;
/// - headers: the user properties, with `KEYS` and `TAGS`.
pub fn message(source: &str, m: &MessageExt) -> Message {
    let properties = m.properties();
    let get = |name: &str| properties.get(name).map(|v| v.to_string()).filter(|v| !v.is_empty());
    let headers: Vec<(String, String)> = properties
        .iter()
        .filter(|(k, _)| !is_system_property(k) || VISIBLE_SYSTEM_PROPERTIES.contains(&k.as_str()))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let id = get(headers::ID).or_else(|| get(UNIQUE_ID)).unwrap_or_else(|| m.msg_id().to_string());
    let key = get(SHARDING_KEY).or_else(|| get("KEYS").and_then(|k| k.split(' ').next().map(str::to_string)));
    let reconsumed = u32::try_from(m.reconsume_times()).unwrap_or(0);
    let attempt = reconsumed.saturating_add(1);
    Message {
        id,
        source: source.to_string(),
        topic: m.topic().to_string(),
        key,
        headers,
        payload: m.body().map(|b| b.to_vec()).unwrap_or_default(),
        attempt,
        reply_to: None,
        timestamp_ms: u64::try_from(m.born_timestamp()).ok(),
    }
}
