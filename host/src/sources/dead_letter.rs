//! The dead-letter file of the embedded sources: dead-lettered messages are
//! appended as JSON lines in the same format the `file` source reads, so a
//! dead-letter file can be replayed as a source once the cause is fixed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::contract::bindings::Message;
use crate::contract::source::SourceError;

/// One line of a message file: what the `file` source reads and what dead
/// letters are written as.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageLine {
    /// The topic.
    pub topic: String,
    /// The message id; default `<source>:<line number>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The ordering key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Headers, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "header_list")]
    pub headers: Vec<(String, String)>,
    /// The payload: a JSON string is taken as the raw text, anything else as
    /// its JSON encoding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    /// A binary payload, base64-encoded, instead of `payload`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
}

impl MessageLine {
    /// The payload bytes this line describes.
    pub fn payload_bytes(&self) -> Result<Vec<u8>, String> {
        match (&self.payload, &self.payload_base64) {
            (Some(_), Some(_)) => Err("has both `payload` and `payload_base64`".into()),
            (Some(serde_json::Value::String(s)), None) => Ok(s.clone().into_bytes()),
            (Some(v), None) => Ok(v.to_string().into_bytes()),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| format!("`payload_base64` is not base64: {e}")),
            (None, None) => Ok(Vec::new()),
        }
    }

    /// The line for a message, with extra headers appended.
    pub fn from_message(message: &Message, extra: &[(String, String)]) -> Self {
        let (payload, payload_base64) = match std::str::from_utf8(&message.payload) {
            Ok(text) => (Some(serde_json::Value::String(text.to_string())), None),
            Err(_) => (None, Some(base64::engine::general_purpose::STANDARD.encode(&message.payload))),
        };
        let mut headers = message.headers.clone();
        headers.extend(extra.iter().cloned());
        Self {
            topic: message.topic.clone(),
            id: Some(message.id.clone()),
            key: message.key.clone(),
            headers,
            payload,
            payload_base64,
        }
    }
}

/// Headers are written as a list of `[name, value]` pairs, which keeps order
/// and repeated names, and read from either that or a JSON object.
mod header_list {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(headers: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
        headers.serialize(s)
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Map(serde_json::Map<String, serde_json::Value>),
        List(Vec<(String, String)>),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
        Ok(match Either::deserialize(d)? {
            Either::List(list) => list,
            Either::Map(map) => map
                .into_iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => (k, s),
                    other => (k, other.to_string()),
                })
                .collect(),
        })
    }
}

/// An append-only dead-letter file.
pub struct DeadLetterFile {
    source_name: String,
    path: PathBuf,
    file: Mutex<Option<std::fs::File>>,
}

impl DeadLetterFile {
    /// A dead-letter file at `path`, created on first write.
    pub fn new(source_name: &str, path: &Path) -> Self {
        Self { source_name: source_name.to_string(), path: path.to_path_buf(), file: Mutex::new(None) }
    }

    /// Where it writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append `message` with `headers` added and sync it to disk, on a
    /// blocking thread so the fsync does not stall other messages.
    pub async fn append(
        self: &std::sync::Arc<Self>,
        message: &Message,
        headers: &[(String, String)],
    ) -> Result<(), SourceError> {
        let (this, message, headers) = (self.clone(), message.clone(), headers.to_vec());
        match tokio::task::spawn_blocking(move || this.write(&message, &headers)).await {
            Ok(result) => result,
            Err(e) => Err(self.error(std::io::Error::other(e))),
        }
    }

    /// Append `message` with `headers` added, and sync it to disk.
    pub fn write(&self, message: &Message, headers: &[(String, String)]) -> Result<(), SourceError> {
        let mut line =
            serde_json::to_vec(&MessageLine::from_message(message, headers)).map_err(|e| self.error(e.into()))?;
        line.push(b'\n');
        let mut file = self.file.lock().map_err(|_| self.error(std::io::Error::other("dead-letter lock poisoned")))?;
        if file.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| self.error(e))?;
            }
            let opened =
                std::fs::OpenOptions::new().create(true).append(true).open(&self.path).map_err(|e| self.error(e))?;
            *file = Some(opened);
        }
        if let Some(f) = file.as_mut() {
            f.write_all(&line).map_err(|e| self.error(e))?;
            f.sync_data().map_err(|e| self.error(e))?;
        }
        Ok(())
    }

    fn error(&self, error: std::io::Error) -> SourceError {
        SourceError::Io { source_name: self.source_name.clone(), path: self.path.clone(), error }
    }
}
