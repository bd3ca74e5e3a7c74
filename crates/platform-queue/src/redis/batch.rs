//! Natural batching of per-attempt state changes: requests that arrive while an
//! earlier batch is in flight go to Redis together, as ONE atomic Lua script call.
//!
//! apalis hands a worker up to `batch_size` tasks at once, so their `start` (and, for
//! quick jobs, their `complete`) requests arrive together. One script over N jobs
//! costs Redis one script execution instead of N, and the client one round trip. No
//! request waits for a timer: the first request of an idle batcher is sent at once.

use std::future::Future;
use std::sync::Arc;

use platform_core::{Error, Result};
use tokio::sync::{mpsc, oneshot};

type Request<Req, Resp> = (Req, oneshot::Sender<Result<Resp>>);

/// A handle to a background task that runs requests in batches of at most `max`.
/// The task ends when every handle is dropped.
pub(crate) struct Batcher<Req, Resp> {
    operation: &'static str,
    tx: mpsc::UnboundedSender<Request<Req, Resp>>,
}

impl<Req, Resp> Batcher<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// Spawns the batching task. `run` receives the requests of one batch and must
    /// return one response per request, in order.
    pub(crate) fn spawn<F, Fut>(operation: &'static str, max: usize, run: F) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<Resp>>> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<Request<Req, Resp>>();
        let max = max.max(1);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < max {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let (reqs, replies): (Vec<Req>, Vec<_>) = batch.into_iter().unzip();
                let n = reqs.len();
                match run(reqs).await {
                    Ok(resps) if resps.len() == n => {
                        for (reply, resp) in replies.into_iter().zip(resps) {
                            let _ = reply.send(Ok(resp));
                        }
                    }
                    Ok(resps) => {
                        let msg = format!("{operation}: {} results for {n} requests", resps.len());
                        for reply in replies {
                            let _ = reply.send(Err(Error::unexpected(msg.clone()).with_operation(operation)));
                        }
                    }
                    Err(e) => {
                        // Every request of the batch failed the same way (one script call).
                        let (kind, msg, provider) = (e.kind(), e.message().to_owned(), e.provider());
                        let shared = Arc::new(e);
                        for reply in replies {
                            let mut err = Error::new(kind, msg.clone())
                                .with_operation(operation)
                                .with_source(shared.clone());
                            if let Some(p) = provider {
                                err = err.with_provider(p);
                            }
                            let _ = reply.send(Err(err));
                        }
                    }
                }
            }
        });
        Self { operation, tx }
    }

    /// Queues one request and waits for its response.
    pub(crate) async fn call(&self, req: Req) -> Result<Resp> {
        let (reply, response) = oneshot::channel();
        self.tx
            .send((req, reply))
            .map_err(|_| Error::unexpected("batcher stopped").with_operation(self.operation))?;
        response
            .await
            .map_err(|_| Error::unexpected("batcher dropped the request").with_operation(self.operation))?
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use std::sync::Mutex;

    use platform_core::ErrorKind;

    use super::*;

    #[tokio::test]
    async fn requests_queued_together_run_as_one_batch_in_order() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let s = sizes.clone();
        let b = Arc::new(Batcher::spawn("double", 3, move |reqs: Vec<u32>| {
            s.lock().unwrap().push(reqs.len());
            async move { Ok(reqs.into_iter().map(|r| r * 2).collect::<Vec<_>>()) }
        }));
        // Five calls queued before the batcher task first runs (current-thread
        // runtime): batches of at most 3, responses matched to their requests.
        let calls = (1..=5).map(|n| {
            let b = b.clone();
            async move { b.call(n).await.unwrap() }
        });
        assert_eq!(futures::future::join_all(calls).await, vec![2, 4, 6, 8, 10]);
        assert_eq!(*sizes.lock().unwrap(), vec![3, 2]);
    }

    #[tokio::test]
    async fn a_failed_batch_fails_every_request_with_its_kind() {
        let b = Arc::new(Batcher::spawn("fail", 10, |_reqs: Vec<u32>| async {
            Err::<Vec<u32>, _>(Error::new(ErrorKind::Unavailable, "down").with_provider("redis"))
        }));
        let calls = (0..2).map(|n| {
            let b = b.clone();
            async move { b.call(n).await.unwrap_err() }
        });
        for err in futures::future::join_all(calls).await {
            assert_eq!(err.kind(), ErrorKind::Unavailable);
            assert_eq!(err.provider(), Some("redis"));
            assert!(err.is_retryable());
        }
        let short = Batcher::spawn("short", 10, |_reqs: Vec<u32>| async { Ok(Vec::<u32>::new()) });
        assert_eq!(short.call(1).await.unwrap_err().kind(), ErrorKind::Unexpected);
    }
}
