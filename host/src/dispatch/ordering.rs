//! Per-key ordering: messages with the same key run one at a time, in the
//! order they arrived, while different keys run in parallel.
//!
//! Each keyed message takes a [`Turn`] when it is admitted, in arrival order.
//! A turn waits for the one before it with the same key to finish, and lets
//! the next one go when it is dropped, whichever way its message ended.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::oneshot;

/// The tails of the per-key queues of one route.
#[derive(Default)]
pub struct KeyOrder {
    tails: Mutex<HashMap<String, (u64, oneshot::Receiver<()>)>>,
    seq: AtomicU64,
}

/// A message's place in its key's queue.
pub struct Turn {
    order: Arc<KeyOrder>,
    key: String,
    seq: u64,
    wait: Option<oneshot::Receiver<()>>,
    done: Option<oneshot::Sender<()>>,
}

impl KeyOrder {
    /// Take the next turn for `key`. Must be called in arrival order.
    pub fn enqueue(self: &Arc<Self>, key: &str) -> Turn {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let (done, next_waits) = oneshot::channel();
        let wait = match self.tails.lock() {
            Ok(mut tails) => tails.insert(key.to_string(), (seq, next_waits)).map(|(_, rx)| rx),
            Err(_) => None,
        };
        Turn { order: self.clone(), key: key.to_string(), seq, wait, done: Some(done) }
    }

    /// How many keys have a message running or waiting.
    pub fn active_keys(&self) -> usize {
        self.tails.lock().map(|t| t.len()).unwrap_or(0)
    }
}

impl Turn {
    /// Wait until every earlier message with this key has finished.
    pub async fn ready(&mut self) {
        if let Some(previous) = self.wait.take() {
            // An error means the previous turn was dropped: it is finished too.
            let _ = previous.await;
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Ok(mut tails) = self.order.tails.lock()
            && tails.get(&self.key).is_some_and(|(seq, _)| *seq == self.seq)
        {
            // Nobody queued behind this turn.
            tails.remove(&self.key);
        }
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn same_key_in_order_other_keys_in_parallel() {
        let order = Arc::new(KeyOrder::default());
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..20u64 {
            let key = if i % 2 == 0 { "even" } else { "odd" };
            let mut turn = order.enqueue(key);
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                turn.ready().await;
                // Later messages sleep less, so without ordering they would overtake.
                tokio::time::sleep(Duration::from_millis(20 - i)).await;
                log.lock().unwrap().push(i);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let log = log.lock().unwrap();
        let evens: Vec<u64> = log.iter().copied().filter(|i| i % 2 == 0).collect();
        let odds: Vec<u64> = log.iter().copied().filter(|i| i % 2 == 1).collect();
        assert_eq!(evens, (0..20).step_by(2).collect::<Vec<_>>());
        assert_eq!(odds, (1..20).step_by(2).collect::<Vec<_>>());
        assert_eq!(order.active_keys(), 0, "finished keys must not linger");
    }
}
