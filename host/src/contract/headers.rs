//! The `switchyard-*` header names the host reads and writes, in one place.
//! Handlers see them; operators filter dead letters by them.

/// Why a message was dead-lettered, in one line.
pub const DEAD_LETTER_REASON: &str = "switchyard-dead-letter-reason";
/// How many deliveries a dead-lettered message had.
pub const ATTEMPTS: &str = "switchyard-attempts";
/// The tenant whose handler dead-lettered the message.
pub const TENANT: &str = "switchyard-tenant";
/// The handler that dead-lettered the message.
pub const HANDLER: &str = "switchyard-handler";
/// When the message was dead-lettered, in milliseconds since the Unix epoch.
pub const FAILED_AT_MS: &str = "switchyard-failed-at-ms";
/// How many compensations a failed message published.
pub const COMPENSATIONS: &str = "switchyard-compensations";
/// Why the compensations of a failed message could not be published.
pub const COMPENSATION_ERROR: &str = "switchyard-compensation-error";

/// The ordering key, on brokers without a key of their own (RabbitMQ, NATS);
/// publishers set it from the outgoing key.
pub const KEY: &str = "switchyard-key";
/// The attempt number of a redelivery the host sent itself (a RabbitMQ retry
/// queue, a Kafka retry record), where the broker does not count.
pub const ATTEMPT: &str = "switchyard-attempt";
/// The message id, where the broker has none of its own.
pub const ID: &str = "switchyard-id";
/// The stable id of a relayed outbox message: the same on every relay of the
/// same row, so a receiver can drop a repeat.
pub const MESSAGE_ID: &str = "switchyard-message-id";

/// The topic a retried or dead-lettered Kafka record (or dead-lettered
/// RocketMQ message) came from, so a record read back from a retry topic is
/// routed as its original topic.
pub const TOPIC: &str = "switchyard-topic";
/// The Kafka partition a dead letter was read from.
pub const PARTITION: &str = "switchyard-partition";
/// The Kafka or RocketMQ offset a dead letter was read at.
pub const OFFSET: &str = "switchyard-offset";
/// The RocketMQ queue a dead letter was read from.
pub const QUEUE: &str = "switchyard-queue";
/// The NATS subject a dead letter came from.
pub const SUBJECT: &str = "switchyard-subject";
/// The JetStream stream sequence of a dead letter.
pub const STREAM_SEQUENCE: &str = "switchyard-stream-sequence";
/// The Redis stream a dead letter came from.
pub const STREAM: &str = "switchyard-stream";
/// The Redis stream entry id of a dead letter.
pub const ENTRY_ID: &str = "switchyard-entry-id";
