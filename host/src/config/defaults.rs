//! Every default the config applies, in one place, so the reference and the
//! code cannot disagree.

use std::path::PathBuf;

pub fn data_dir() -> PathBuf {
    PathBuf::from(".switchyard")
}
pub fn cache_max_entries() -> usize {
    1_000_000
}
pub fn backend_timeout_ms() -> u64 {
    2_000
}
pub fn sql_max_connections() -> u32 {
    8
}
pub fn sql_max_batch() -> usize {
    1_000
}
pub fn nats_pending_messages() -> usize {
    65_536
}
pub fn shutdown_grace_ms() -> u64 {
    30_000
}
pub fn login_prefix() -> String {
    "switchyard_".into()
}
pub fn sql_timeout_ms() -> u64 {
    5_000
}
pub fn search_timeout_ms() -> u64 {
    10_000
}
pub fn memory_mib() -> u64 {
    64
}
pub fn timeout_ms() -> u64 {
    5_000
}
pub fn idle_ms() -> u64 {
    1000
}
pub fn concurrency() -> usize {
    16
}
pub fn yes() -> bool {
    true
}
pub fn max_attempts() -> u32 {
    5
}
pub fn retry_base_ms() -> u64 {
    100
}
pub fn retry_max_ms() -> u64 {
    60_000
}
pub fn max_message_bytes() -> usize {
    1 << 20
}
pub fn kafka_group() -> String {
    "switchyard".into()
}
pub fn kafka_dead_letter_suffix() -> String {
    ".dead-letter".into()
}
pub fn kafka_partitions() -> i32 {
    1
}
pub fn kafka_replication() -> i32 {
    1
}
pub fn kafka_session_timeout_ms() -> u64 {
    10_000
}
pub fn kafka_produce_timeout_ms() -> u64 {
    30_000
}
pub fn amqp_dead_letter_exchange() -> String {
    "switchyard.dead-letter".into()
}
pub fn amqp_exchange_kind() -> String {
    "topic".into()
}
pub fn amqp_routing_key() -> String {
    "#".into()
}
pub fn nats_consumer() -> String {
    "switchyard".into()
}
pub fn nats_ack_wait_ms() -> u64 {
    30_000
}
pub fn redis_group() -> String {
    "switchyard".into()
}
pub fn redis_claim_idle_ms() -> u64 {
    60_000
}
pub fn rocketmq_group() -> String {
    "switchyard".into()
}
pub fn rocketmq_tags() -> String {
    "*".into()
}
pub fn rocketmq_queues() -> i32 {
    4
}
pub fn rocketmq_send_timeout_ms() -> u64 {
    3000
}
