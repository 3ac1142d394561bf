//! Group commit: calls from handlers running at the same time are gathered
//! into one batch, applied together (one transaction, one commit, one
//! pipeline), and each caller gets its own result once the batch is durable.
//!
//! No timer is involved. While one batch is being applied, the calls that
//! arrive queue up and form the next one, so batches grow with load and a
//! lone call is applied at once.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

use crate::contract::errors::BackendError;

type Request<Op, Out> = (Op, oneshot::Sender<Result<Out, BackendError>>);

/// A handle to a batching task; cheap to clone.
pub struct Batcher<Op, Out> {
    name: &'static str,
    tx: mpsc::Sender<Request<Op, Out>>,
}

impl<Op, Out> Clone for Batcher<Op, Out> {
    fn clone(&self) -> Self {
        Self { name: self.name, tx: self.tx.clone() }
    }
}

impl<Op: Send + 'static, Out: Send + 'static> Batcher<Op, Out> {
    /// Start the task. `apply` gets each batch and must return one result per
    /// operation, in order.
    pub fn spawn<F, Fut>(name: &'static str, max_batch: usize, mut apply: F) -> Self
    where
        F: FnMut(Vec<Op>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<Result<Out, BackendError>>> + Send,
    {
        let (tx, mut rx) = mpsc::channel::<Request<Op, Out>>(max_batch * 4);
        tokio::spawn(async move {
            let mut requests = Vec::with_capacity(max_batch);
            while rx.recv_many(&mut requests, max_batch).await > 0 {
                let (ops, replies): (Vec<Op>, Vec<_>) = requests.drain(..).unzip();
                let count = ops.len();
                let results = apply(ops).await;
                if results.len() != count {
                    tracing::error!(
                        batcher = name,
                        expected = count,
                        got = results.len(),
                        "batch returned the wrong number of results"
                    );
                }
                let mut results = results.into_iter();
                for reply in replies {
                    let result = results.next().unwrap_or_else(|| {
                        Err(BackendError::Unavailable(format!("{name}: no result for this operation")))
                    });
                    let _ = reply.send(result);
                }
            }
        });
        Self { name, tx }
    }

    /// Submit one operation and wait until its batch has been applied.
    pub async fn call(&self, op: Op) -> Result<Out, BackendError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send((op, reply)).await.map_err(|_| BackendError::Unavailable(format!("{} has stopped", self.name)))?;
        rx.await.map_err(|_| BackendError::Unavailable(format!("{} dropped the operation", self.name)))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn concurrent_calls_share_batches_and_keep_their_results() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let batcher = Batcher::spawn("test", 64, move |ops: Vec<u32>| {
            seen.lock().unwrap().push(ops.len());
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                ops.into_iter()
                    .map(|n| if n % 7 == 0 { Err(BackendError::Invalid(format!("{n}"))) } else { Ok(n * 2) })
                    .collect()
            }
        });
        let calls: Vec<_> = (1..=200u32)
            .map(|n| {
                let b = batcher.clone();
                tokio::spawn(async move { (n, b.call(n).await) })
            })
            .collect();
        for call in calls {
            let (n, result) = call.await.unwrap();
            if n % 7 == 0 {
                assert_eq!(result, Err(BackendError::Invalid(n.to_string())));
            } else {
                assert_eq!(result, Ok(n * 2));
            }
        }
        let sizes = sizes.lock().unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 200);
        assert!(sizes.len() < 200, "200 concurrent calls should share batches, got {} batches", sizes.len());
    }
}
