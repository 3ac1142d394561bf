//! The message sources a config can name, one variant per kind, each with
//! its own settings. The source itself lives in `sources/`; here is only what
//! its table in the config may say.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::Deserialize;

use super::defaults;

/// One message source, chosen by `type`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SourceConfig {
    /// Reads JSON lines from a file: one message per line,
    /// `{"topic": "...", "payload": {...}, "key": "...", "headers": {...}, "id": "..."}`.
    /// Progress is checkpointed beside the file, so a restart resumes after
    /// the last settled line.
    File(FileConfig),
    /// Accepts messages over HTTP: `POST /topics/<topic>` with the payload as
    /// the body. The response waits until the message is settled: 200 when
    /// handled, 422 when dead-lettered.
    Http(HttpConfig),
    /// Consumes RabbitMQ queues; see [`AmqpConfig`].
    Amqp(AmqpConfig),
    /// Subscribes to core NATS subjects; see [`NatsConfig`].
    Nats(NatsConfig),
    /// Reads a JetStream durable pull consumer; see [`JetStreamConfig`].
    JetStream(JetStreamConfig),
    /// Reads Redis streams in a consumer group; see [`RedisStreamsConfig`].
    Redis(RedisStreamsConfig),
    /// Reads Kafka topics in a consumer group; see [`KafkaConfig`].
    Kafka(KafkaConfig),
    /// Reads RocketMQ topics in a consumer group; see [`RocketMqConfig`].
    RocketMq(RocketMqConfig),
}

/// A `file` source.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The JSON-lines file. Example: `path = "messages.jsonl"`.
    pub path: PathBuf,
    /// Start from the first line even if a checkpoint exists (replay).
    /// Example: `replay = true`. Default false.
    #[serde(default)]
    pub replay: bool,
    /// Keep reading lines appended after the end, like `tail -f`.
    /// Default false: the source ends at the end of the file.
    #[serde(default)]
    pub follow: bool,
    /// Where dead-lettered messages are appended as JSON lines. Default
    /// `<data_dir>/dead-letter/<source>.jsonl`.
    #[serde(default)]
    pub dead_letter: Option<PathBuf>,
}

/// An `http` source.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// The address to listen on. Example: `listen = "127.0.0.1:8080"`.
    pub listen: String,
    /// Where dead-lettered messages are appended as JSON lines. Default
    /// `<data_dir>/dead-letter/<source>.jsonl`.
    #[serde(default)]
    pub dead_letter: Option<PathBuf>,
}

/// A RabbitMQ source: the queues it consumes and the topology it declares.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    /// The broker. Example: `url = "amqp://guest:guest@127.0.0.1:5672/%2f"`.
    pub url: String,
    /// Queues to consume, declared durable. A message's topic is the name of
    /// the queue it came from. Example: `queues = ["orders"]`.
    pub queues: Vec<String>,
    /// Exchanges to declare, durable.
    /// Example: `exchanges = [{ name = "events", kind = "topic" }]`.
    #[serde(default)]
    pub exchanges: Vec<AmqpExchange>,
    /// Bindings from exchanges to queues.
    /// Example: `bindings = [{ exchange = "events", queue = "orders", routing_key = "order.*" }]`.
    #[serde(default)]
    pub bindings: Vec<AmqpBinding>,
    /// How many unacked messages the broker may send ahead. Default: twice
    /// the sum of the concurrency of the routes reading this source.
    /// Example: `prefetch = 64`.
    #[serde(default)]
    pub prefetch: Option<u16>,
    /// The direct exchange dead letters are published to, routed by queue
    /// name into the queue `<queue>.dead-letter`; both are declared.
    /// Example: `dead_letter_exchange = "switchyard.dead-letter"` (the default).
    #[serde(default = "defaults::amqp_dead_letter_exchange")]
    pub dead_letter_exchange: String,
    /// How `queues` are declared. `"durable"` (the default): durable, with
    /// the dead-letter exchange as their `x-dead-letter-exchange`, so what
    /// the broker drops itself is dead-lettered too. `"plain"`: as a producer
    /// declaring a queue with no options does (pika's
    /// `queue_declare(queue='orders')`): not durable, no arguments, so such a
    /// producer and the host can both declare it. The host dead-letters its
    /// own failures either way. Example: `queue_mode = "plain"`.
    #[serde(default)]
    pub queue_mode: AmqpQueueMode,
}

/// How an AMQP source declares its queues.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AmqpQueueMode {
    /// Durable, dead-lettering into the dead-letter exchange.
    #[default]
    Durable,
    /// Not durable, no arguments: what a producer declaring it plainly makes.
    Plain,
}

/// An exchange to declare.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AmqpExchange {
    /// The exchange's name. Example: `name = "events"`.
    pub name: String,
    /// `direct`, `fanout`, `topic` or `headers`. Example: `kind = "topic"` (the default).
    #[serde(default = "defaults::amqp_exchange_kind")]
    pub kind: String,
}

/// A binding to declare.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AmqpBinding {
    /// The exchange. Example: `exchange = "events"`.
    pub exchange: String,
    /// The queue. Example: `queue = "orders"`.
    pub queue: String,
    /// The binding key. Example: `routing_key = "order.*"`; default `#`.
    #[serde(default = "defaults::amqp_routing_key")]
    pub routing_key: String,
}

impl AmqpConfig {
    /// The queue that holds a queue's dead letters.
    pub fn dead_letter_queue(queue: &str) -> String {
        format!("{queue}.dead-letter")
    }
}

/// A core NATS source.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// The server. Example: `url = "nats://127.0.0.1:4222"`.
    pub url: String,
    /// Subjects to subscribe to; wildcards allowed. A message's topic is its
    /// subject. Example: `subjects = ["users.registered", "rpc.>"]`.
    pub subjects: Vec<String>,
    /// The queue group: hosts in one group share the messages. Unset, every
    /// host gets every message. Example: `queue_group = "mailer"`.
    #[serde(default)]
    pub queue_group: Option<String>,
    /// Where dead letters are published, with the reason headers. Example:
    /// `dead_letter_subject = "dead-letter.mailer"`; default
    /// `switchyard.dead-letter.<source name>`.
    #[serde(default)]
    pub dead_letter_subject: Option<String>,
    /// Messages the client buffers for the host per subscription. Core NATS
    /// delivers at most once: past this the client drops messages, which the
    /// host counts (`lost` in the progress line,
    /// `switchyard_source_messages_lost_total`) and logs with the subject.
    /// Use JetStream where nothing may be lost. Example:
    /// `pending_messages = 65536` (the default).
    #[serde(default = "defaults::nats_pending_messages")]
    pub pending_messages: usize,
}

/// A JetStream source: a durable pull consumer on a stream.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JetStreamConfig {
    /// The server. Example: `url = "nats://127.0.0.1:4222"`.
    pub url: String,
    /// The stream, created with `subjects` if it does not exist.
    /// Example: `stream = "ORDERS"`.
    pub stream: String,
    /// The stream's subjects, used when creating it. Example: `subjects = ["orders.>"]`.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// The durable consumer's name; hosts using the same name share the
    /// work. Example: `consumer = "switchyard"` (the default).
    #[serde(default = "defaults::nats_consumer")]
    pub consumer: String,
    /// How long the server waits for a settlement before delivering again,
    /// in milliseconds. Example: `ack_wait_ms = 30000` (the default).
    #[serde(default = "defaults::nats_ack_wait_ms")]
    pub ack_wait_ms: u64,
    /// The server's own limit on deliveries of one message, a backstop
    /// behind the routes' `max_attempts` (which dead-letter with a reason).
    /// Example: `max_deliver = 20`; default unlimited.
    #[serde(default)]
    pub max_deliver: Option<i64>,
    /// Messages pulled ahead and not yet settled, at most. Default: twice the
    /// sum of the routes' concurrency. Example: `max_ack_pending = 256`.
    #[serde(default)]
    pub max_ack_pending: Option<i64>,
    /// Where dead letters are published, with the reason headers; kept in
    /// the stream `<stream>-dead-letter`, created if missing. It must not be
    /// one of the stream's own subjects. Example:
    /// `dead_letter_subject = "dead-letter.orders"`; default `switchyard.dead-letter.<stream>`.
    #[serde(default)]
    pub dead_letter_subject: Option<String>,
}

impl NatsConfig {
    /// The dead-letter subject of source `name`.
    pub fn dead_letter_subject(&self, name: &str) -> String {
        self.dead_letter_subject.clone().unwrap_or_else(|| format!("switchyard.dead-letter.{name}"))
    }
}

impl JetStreamConfig {
    /// The dead-letter subject.
    pub fn dead_letter_subject(&self) -> String {
        self.dead_letter_subject.clone().unwrap_or_else(|| format!("switchyard.dead-letter.{}", self.stream))
    }
    /// The stream that keeps the dead letters.
    pub fn dead_letter_stream(&self) -> String {
        format!("{}-dead-letter", self.stream)
    }
}

/// A Redis Streams source.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisStreamsConfig {
    /// The server. Example: `url = "redis://127.0.0.1:6379"`.
    pub url: String,
    /// Streams to read; each is created with the group if missing. An
    /// entry's topic is its stream's name. Example: `streams = ["orders"]`.
    pub streams: Vec<String>,
    /// The consumer group. Example: `group = "switchyard"` (the default).
    #[serde(default = "defaults::redis_group")]
    pub group: String,
    /// This host's consumer name in the group; it must differ between hosts.
    /// Entries it left pending are read again when it starts. Example:
    /// `consumer = "host-1"`; default `<hostname>-<pid>`.
    #[serde(default)]
    pub consumer: Option<String>,
    /// Entries pending on another consumer for this long are taken over,
    /// in milliseconds. It must exceed the longest handling, retries
    /// included. Example: `claim_idle_ms = 60000` (the default).
    #[serde(default = "defaults::redis_claim_idle_ms")]
    pub claim_idle_ms: u64,
    /// Where dead letters are added, with the reason fields. Example:
    /// `dead_letter_stream = "orders.dead-letter"`; default `<stream>.dead-letter`.
    #[serde(default)]
    pub dead_letter_stream: Option<String>,
    /// Entries read at once. Default: twice the sum of the routes'
    /// concurrency. Example: `batch = 64`.
    #[serde(default)]
    pub batch: Option<usize>,
}

impl RedisStreamsConfig {
    /// The stream that holds the dead letters of entries from `stream`.
    pub fn dead_letter(&self, stream: &str) -> String {
        self.dead_letter_stream.clone().unwrap_or_else(|| format!("{stream}.dead-letter"))
    }
}

/// A Kafka source: topics read in a consumer group.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// The bootstrap brokers, comma-separated `host:port`.
    /// Example: `brokers = "127.0.0.1:9092"`.
    pub brokers: String,
    /// Topics to read. A message's topic is the topic its record came from
    /// (for a record read back from `retry_topic`, the topic it was first
    /// read from). Example: `topics = ["orders"]`.
    pub topics: Vec<String>,
    /// The consumer group; hosts in one group share the partitions.
    /// Example: `group = "switchyard"` (the default).
    #[serde(default = "defaults::kafka_group")]
    pub group: String,
    /// Where a record asking for a retry is produced again, with the next
    /// attempt in its `switchyard-attempt` header, once the delay has
    /// passed; the source reads this topic too. Unset, the record goes back
    /// to its own topic. Example: `retry_topic = "orders.retry"`.
    #[serde(default)]
    pub retry_topic: Option<String>,
    /// Where dead letters are produced, with the reason headers. Unset, each
    /// topic has its own: `<topic>` + `dead_letter_suffix`.
    /// Example: `dead_letter_topic = "switchyard.dead-letter"`.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Appended to a topic's name to name its dead-letter topic when
    /// `dead_letter_topic` is unset. Example: `dead_letter_suffix = ".dead-letter"` (the default).
    #[serde(default = "defaults::kafka_dead_letter_suffix")]
    pub dead_letter_suffix: String,
    /// Create the topics, the retry topic and the dead-letter topics at start
    /// if they do not exist. Example: `create_topics = true` (the default).
    #[serde(default = "defaults::yes")]
    pub create_topics: bool,
    /// Partitions of each topic the source creates. Example: `partitions = 4`; default 1.
    #[serde(default = "defaults::kafka_partitions")]
    pub partitions: i32,
    /// Replicas of each topic the source creates. Example: `replication_factor = 3`; default 1.
    #[serde(default = "defaults::kafka_replication")]
    pub replication_factor: i32,
    /// Where a group with no committed offset starts: `earliest` or
    /// `latest`. Example: `start_from = "latest"`; default `earliest`, so
    /// nothing published before the first start is missed.
    #[serde(default)]
    pub start_from: StartFrom,
    /// How long the group waits for a silent host before giving its
    /// partitions to the others, in milliseconds. Example:
    /// `session_timeout_ms = 10000` (the default).
    #[serde(default = "defaults::kafka_session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// Records handed on and not yet settled, at most. Default: twice the
    /// sum of the routes' concurrency. Example: `max_in_flight = 256`.
    #[serde(default)]
    pub max_in_flight: Option<usize>,
    /// How long producing one record (a publish, a retry, a dead letter) may
    /// take before it fails, in milliseconds. Example:
    /// `produce_timeout_ms = 30000` (the default).
    #[serde(default = "defaults::kafka_produce_timeout_ms")]
    pub produce_timeout_ms: u64,
    /// Further librdkafka properties, passed as they are to the consumer,
    /// producer and admin client, such as TLS and SASL settings. Example:
    /// `options = { "security.protocol" = "ssl" }`.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// Where a consumer group with no committed offset starts reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    /// The oldest record the broker keeps.
    #[default]
    Earliest,
    /// Only records published after the group first joined.
    Latest,
}

impl KafkaConfig {
    /// The dead-letter topic of records from `topic`.
    pub fn dead_letter_topic(&self, topic: &str) -> String {
        self.dead_letter_topic.clone().unwrap_or_else(|| format!("{topic}{}", self.dead_letter_suffix))
    }
}

/// A RocketMQ source: topics read in a clustering consumer group, through
/// the broker's name server.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RocketMqConfig {
    /// The name servers, `host:port`, separated by `;`.
    /// Example: `name_server = "127.0.0.1:9876"`.
    pub name_server: String,
    /// Topics to read; a message's topic is the topic it was sent to.
    /// Example: `topics = ["order-topic"]`.
    pub topics: Vec<String>,
    /// The consumer group; hosts in one group share the topics' queues.
    /// Example: `group = "my-consumer-group"`; default `switchyard`.
    #[serde(default = "defaults::rocketmq_group")]
    pub group: String,
    /// Tag filter of the subscription, as RocketMQ writes it:
    /// `"*"` for all, or `"TagA || TagB"`. Example: `tags = "created || paid"`;
    /// default `*`.
    #[serde(default = "defaults::rocketmq_tags")]
    pub tags: String,
    /// Where dead letters are sent, with the reason properties. Example:
    /// `dead_letter_topic = "orders-dead-letter"`; default the group's own
    /// dead-letter queue, `%DLQ%<group>`.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Create the topics at start, with `queues` queues each, where missing.
    /// Example: `create_topics = false`; default true.
    #[serde(default = "defaults::yes")]
    pub create_topics: bool,
    /// Queues of each topic the source creates. Example: `queues = 8`; default 4.
    #[serde(default = "defaults::rocketmq_queues")]
    pub queues: i32,
    /// Where a group with no committed offset starts: `earliest` or
    /// `latest`. Example: `start_from = "latest"`; default `earliest`.
    #[serde(default)]
    pub start_from: StartFrom,
    /// How long sending one message (a publish or a dead letter) may take
    /// before it fails, in milliseconds. Example:
    /// `send_timeout_ms = 3000` (the default).
    #[serde(default = "defaults::rocketmq_send_timeout_ms")]
    pub send_timeout_ms: u64,
}

impl RocketMqConfig {
    /// The topic dead letters are sent to.
    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter_topic.clone().unwrap_or_else(|| format!("%DLQ%{}", self.group))
    }
}
