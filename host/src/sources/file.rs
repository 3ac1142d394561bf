//! The `file` source: JSON lines from a file, one message per line (see
//! [`MessageLine`]). Settled lines are checkpointed beside the file in
//! `<file>.offset`, so a restart resumes after the last line settled in
//! order; `replay` starts over. A line that is not a message is dead-lettered
//! with the reason, never skipped silently.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::dead_letter::{DeadLetterFile, MessageLine};
use crate::contract::bindings::Message;
use crate::contract::headers;
use crate::contract::source::{Delivery, Settle, Settlement, Source, SourceError};

/// How often the checkpoint is written while lines are being settled.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// How often a followed file is polled for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// The `file` source.
pub struct FileSource {
    name: String,
    path: PathBuf,
    replay: bool,
    follow: bool,
    dead_letter: Arc<DeadLetterFile>,
}

impl FileSource {
    /// The config `type` that selects it.
    pub const TYPE: &'static str = "file";

    /// A source named `name` reading `path`.
    pub fn new(name: &str, path: &Path, replay: bool, follow: bool, dead_letter: Arc<DeadLetterFile>) -> Self {
        Self { name: name.to_string(), path: path.to_path_buf(), replay, follow, dead_letter }
    }

    fn io(&self, path: &Path, error: std::io::Error) -> SourceError {
        SourceError::Io { source_name: self.name.clone(), path: path.to_path_buf(), error }
    }
}

/// The contiguous count of settled lines, written to `<file>.offset`.
struct Checkpoint {
    path: PathBuf,
    state: Mutex<CheckpointState>,
}

struct CheckpointState {
    /// Lines 1..=settled are all settled.
    settled: u64,
    /// Lines past `settled` that settled out of order.
    ahead: BTreeSet<u64>,
    written: u64,
    last_write: Instant,
}

impl Checkpoint {
    fn open(path: PathBuf, replay: bool) -> Self {
        let settled = if replay {
            0
        } else {
            std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
        };
        let state = CheckpointState { settled, ahead: BTreeSet::new(), written: settled, last_write: Instant::now() };
        Self { path, state: Mutex::new(state) }
    }

    fn settled(&self) -> u64 {
        self.state.lock().map(|s| s.settled).unwrap_or(0)
    }

    fn done(&self, line: u64) {
        let Ok(mut s) = self.state.lock() else { return };
        s.ahead.insert(line);
        while s.ahead.first() == Some(&(s.settled + 1)) {
            s.ahead.pop_first();
            s.settled += 1;
        }
        if s.settled != s.written && s.last_write.elapsed() >= CHECKPOINT_EVERY {
            self.write(&mut s);
        }
    }

    fn write(&self, s: &mut CheckpointState) {
        let tmp = self.path.with_extension("offset.tmp");
        let result = std::fs::write(&tmp, s.settled.to_string()).and_then(|()| std::fs::rename(&tmp, &self.path));
        match result {
            Ok(()) => s.written = s.settled,
            Err(e) => tracing::warn!(checkpoint = %self.path.display(), error = %e, "cannot write checkpoint"),
        }
        s.last_write = Instant::now();
    }
}

impl Drop for Checkpoint {
    fn drop(&mut self) {
        // Every settlement handle is gone: write the final position.
        if let Ok(mut s) = self.state.lock()
            && s.settled != s.written
        {
            let path = self.path.clone();
            let tmp = path.with_extension("offset.tmp");
            if std::fs::write(&tmp, s.settled.to_string()).and_then(|()| std::fs::rename(&tmp, &path)).is_ok() {
                s.written = s.settled;
            }
        }
    }
}

struct FileSettle {
    line: u64,
    checkpoint: Arc<Checkpoint>,
    dead_letter: Arc<DeadLetterFile>,
}

#[async_trait]
impl Settle for FileSettle {
    async fn settle(self: Box<Self>, message: &Message, settlement: Settlement) -> Result<(), SourceError> {
        match settlement {
            Settlement::Ack => {}
            Settlement::DeadLetter { headers, .. } => self.dead_letter.append(message, &headers).await?,
            Settlement::Retry { .. } => {
                return Err(SourceError::Failed {
                    source_name: message.source.clone(),
                    message: "the file source does not redeliver; the host retries in place".into(),
                });
            }
        }
        self.checkpoint.done(self.line);
        Ok(())
    }
}

/// Turn one line into a message, or say why it is not one.
pub fn parse_line(source: &str, number: u64, line: &str) -> Result<Message, String> {
    let parsed: MessageLine = serde_json::from_str(line).map_err(|e| format!("line {number} is not a message: {e}"))?;
    let payload = parsed.payload_bytes().map_err(|e| format!("line {number} {e}"))?;
    Ok(Message {
        // An empty id is no id: inbox rows, dead letters and logs need one.
        id: parsed.id.filter(|id| !id.is_empty()).unwrap_or_else(|| format!("{source}:{number}")),
        topic: parsed.topic,
        key: parsed.key,
        headers: parsed.headers,
        payload,
        ..unparsed(source, number, "")
    })
}

/// A line that is not a message, as its dead letter carries it: the line
/// itself is the payload.
fn unparsed(source: &str, number: u64, line: &str) -> Message {
    Message {
        id: format!("{source}:{number}"),
        source: source.to_string(),
        topic: String::new(),
        key: None,
        headers: Vec::new(),
        payload: line.as_bytes().to_vec(),
        attempt: 1,
        reply_to: None,
        timestamp_ms: None,
    }
}

#[async_trait]
impl Source for FileSource {
    async fn run(self: Box<Self>, out: mpsc::Sender<Delivery>, shutdown: CancellationToken) -> Result<(), SourceError> {
        let file = tokio::fs::File::open(&self.path).await.map_err(|e| self.io(&self.path, e))?;
        let mut offset_path = self.path.clone().into_os_string();
        offset_path.push(".offset");
        let checkpoint = Arc::new(Checkpoint::open(PathBuf::from(offset_path), self.replay));
        let skip = checkpoint.settled();
        if skip > 0 {
            tracing::info!(source = %self.name, file = %self.path.display(), lines = skip, "resuming after checkpoint");
        }
        let mut lines = BufReader::new(file).lines();
        let mut number = 0u64;
        loop {
            let line = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                line = lines.next_line() => line.map_err(|e| self.io(&self.path, e))?,
            };
            let Some(line) = line else {
                if !self.follow {
                    return Ok(());
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(FOLLOW_POLL) => continue,
                }
            };
            number += 1;
            if number <= skip {
                continue;
            }
            if line.trim().is_empty() {
                checkpoint.done(number);
                continue;
            }
            match parse_line(&self.name, number, &line) {
                Ok(message) => {
                    let settle = Box::new(FileSettle {
                        line: number,
                        checkpoint: checkpoint.clone(),
                        dead_letter: self.dead_letter.clone(),
                    });
                    if out.send(Delivery { message, settle }).await.is_err() {
                        return Ok(());
                    }
                }
                Err(reason) => {
                    tracing::warn!(source = %self.name, file = %self.path.display(), line = number, %reason, "dead-lettering malformed line");
                    let headers = vec![(headers::DEAD_LETTER_REASON.to_string(), reason)];
                    self.dead_letter.append(&unparsed(&self.name, number, &line), &headers).await?;
                    checkpoint.done(number);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_messages() {
        let m =
            parse_line("s", 4, r#"{"topic": "t", "key": "k", "headers": {"a": "1"}, "payload": {"x": 1}}"#).unwrap();
        assert_eq!((m.id.as_str(), m.topic.as_str(), m.key.as_deref()), ("s:4", "t", Some("k")));
        assert_eq!(m.headers, vec![("a".to_string(), "1".to_string())]);
        assert_eq!(m.payload, br#"{"x":1}"#);
        let m = parse_line("s", 5, r#"{"topic": "t", "payload": "raw text", "id": "m1"}"#).unwrap();
        assert_eq!((m.id.as_str(), m.payload.as_slice()), ("m1", &b"raw text"[..]));
        let m = parse_line("s", 6, r#"{"topic": "t", "payload_base64": "AAEC"}"#).unwrap();
        assert_eq!(m.payload, [0, 1, 2]);
    }

    #[test]
    fn bad_lines_say_why() {
        let why = parse_line("s", 9, "not json").unwrap_err();
        assert!(why.starts_with("line 9 is not a message"), "{why}");
        assert_eq!(unparsed("s", 9, "not json").payload, b"not json");
        let why = parse_line("s", 2, r#"{"topic": "t", "colour": 1}"#).unwrap_err();
        assert!(why.contains("unknown field `colour`"), "{why}");
    }

    #[test]
    fn checkpoint_advances_only_over_contiguous_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.offset");
        let c = Checkpoint::open(path.clone(), false);
        c.done(2);
        c.done(3);
        assert_eq!(c.settled(), 0);
        c.done(1);
        assert_eq!(c.settled(), 3);
        drop(c);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "3");
        assert_eq!(Checkpoint::open(path.clone(), false).settled(), 3);
        assert_eq!(Checkpoint::open(path, true).settled(), 0);
    }
}
