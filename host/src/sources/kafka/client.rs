//! The librdkafka settings and the log context every Kafka client of a
//! source shares.

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::KafkaConfig;

/// The librdkafka settings every client of a source shares.
pub fn client_config(kafka: &KafkaConfig, name: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.brokers)
        .set("client.id", format!("switchyard-{name}"))
        // The same backoff as the other sources: from 100 ms up to 30 s.
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "30000");
    for (k, v) in &kafka.options {
        config.set(k, v);
    }
    config
}

/// Logs what librdkafka reports, with the source and the brokers' address.
#[derive(Clone)]
pub struct Logger {
    /// The source.
    pub source: String,
    /// The bootstrap brokers.
    pub address: String,
}

impl ClientContext for Logger {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        let (source, address) = (&self.source, &self.address);
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(%source, %address, facility = fac, "Kafka: {log_message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(%source, %address, facility = fac, "Kafka: {log_message}"),
            RDKafkaLogLevel::Notice => tracing::info!(%source, %address, facility = fac, "Kafka: {log_message}"),
            RDKafkaLogLevel::Info | RDKafkaLogLevel::Debug => {
                tracing::debug!(%source, %address, facility = fac, "Kafka: {log_message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let (source, address) = (&self.source, &self.address);
        if matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::AllBrokersDown)) {
            tracing::error!(%source, %address, "Kafka: all brokers are down ({reason}); reconnecting with backoff");
        } else {
            tracing::error!(%source, %address, "Kafka: {error}: {reason}");
        }
    }
}
