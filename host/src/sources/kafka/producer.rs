//! The producer a Kafka source's settlements and its publisher share.

use std::time::Duration;

use async_trait::async_trait;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::client::{Logger, client_config};
use crate::config::KafkaConfig;
use crate::contract::bindings::publish::Outgoing;
use crate::contract::errors::BackendError;
use crate::contract::headers;
use crate::contract::publish::Publisher;

/// The producer shared by a source's settlements and its publisher, created
/// on first use.
pub struct Producer {
    name: String,
    config: KafkaConfig,
    producer: tokio::sync::OnceCell<FutureProducer<Logger>>,
}

impl Producer {
    pub fn new(name: &str, config: &KafkaConfig) -> Self {
        Self { name: name.to_string(), config: config.clone(), producer: tokio::sync::OnceCell::new() }
    }

    async fn get(&self) -> Result<&FutureProducer<Logger>, String> {
        self.producer
            .get_or_try_init(|| async {
                let mut config = client_config(&self.config, &self.name);
                config.set("message.timeout.ms", self.config.produce_timeout_ms.to_string()).set("acks", "all");
                config
                    .create_with_context(Logger { source: self.name.clone(), address: self.config.brokers.clone() })
                    .map_err(|e| format!("cannot create a producer: {e}"))
            })
            .await
    }

    /// Produce every record and wait until the broker has them all.
    pub async fn produce(&self, records: &[Record]) -> Result<(), String> {
        let producer = self.get().await?;
        let timeout = Duration::from_millis(self.config.produce_timeout_ms);
        let sends = records.iter().map(|r| {
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
            for (k, v) in &r.headers {
                headers = headers.insert(Header { key: k, value: Some(v.as_bytes()) });
            }
            let mut record = FutureRecord::to(&r.topic).payload(&r.payload[..]).headers(headers);
            if let Some(key) = &r.key {
                record = record.key(key.as_bytes());
            }
            async move {
                producer.send(record, timeout).await.map_err(|(e, _)| format!("cannot produce to {:?}: {e}", r.topic))
            }
        });
        for result in futures::future::join_all(sends).await {
            result?;
        }
        Ok(())
    }
}

/// A record to produce.
pub struct Record {
    /// The topic.
    pub topic: String,
    /// The record key.
    pub key: Option<String>,
    /// The headers.
    pub headers: Vec<(String, String)>,
    /// The value.
    pub payload: Vec<u8>,
}

#[async_trait]
impl Publisher for Producer {
    async fn publish(&self, messages: Vec<Outgoing>) -> Result<(), BackendError> {
        let records: Vec<Record> = messages
            .into_iter()
            .map(|m| Record {
                topic: m.destination,
                key: m.key,
                headers: m.headers.into_iter().filter(|(k, _)| k != headers::KEY).collect(),
                payload: m.payload,
            })
            .collect();
        self.produce(&records).await.map_err(|e| {
            BackendError::Unavailable(format!("Kafka source {} at {}: {e}", self.name, self.config.brokers))
        })
    }
}
