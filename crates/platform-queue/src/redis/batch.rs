//! Natural batching of per-attempt state changes: requests that arrive while an
//! earlier batch is in flight go to Redis together, as ONE atomic Lua script call.
//!
//! apalis hands a worker up to `batch_size` tasks at once, so their `start` (and, for
//! quick jobs, their `complete`) requests arrive together. One script over N jobs
//! costs Redis one script execution instead of N, and the client one round trip.
//!
//! A batch is sent when it is full, when a [`Gate`] waits for it (the worker is about
//! to fetch, so every task of the last fetch has asked to start: see
//! `GatedConnection`, which makes apalis's fetches wait for the requests made so far,
//! as apalis's own fetch loop waits for its acknowledgements), or at the latest
//! `linger` after its first request.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use platform_core::{Error, Result};
use tokio::sync::{Notify, mpsc, oneshot};

type Request<Req, Resp> = (Req, oneshot::Sender<Result<Resp>>);

/// Moves queued requests into `batch` until it holds `max`.
fn take_queued<T>(rx: &mut mpsc::UnboundedReceiver<T>, batch: &mut Vec<T>, max: usize) {
    while batch.len() < max {
        match rx.try_recv() {
            Ok(next) => batch.push(next),
            Err(_) => return,
        }
    }
}

/// A handle to a background task that runs requests in batches of at most `max`.
/// The task ends when every handle is dropped.
pub(crate) struct Batcher<Req, Resp> {
    operation: &'static str,
    tx: mpsc::UnboundedSender<Request<Req, Resp>>,
    progress: Arc<Progress>,
    max: usize,
}

/// Requests submitted to a batcher and requests answered (successfully or not).
#[derive(Default)]
struct Progress {
    submitted: AtomicU64,
    answered: AtomicU64,
    changed: Notify,
    /// Asks the batching task to send what it holds now.
    flush: Notify,
}

impl Progress {
    fn answer(&self, n: usize) {
        self.answered.fetch_add(n as u64, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

/// Waits for a batcher's requests to be answered.
#[derive(Clone)]
pub(crate) struct Gate {
    progress: Arc<Progress>,
}

impl Gate {
    /// Sends the batch being collected at once and returns once every request
    /// submitted before this call has been answered. Requests submitted meanwhile are
    /// not waited for, so the wait is bounded by the batches already queued, whatever
    /// the load.
    pub(crate) async fn wait(&self) {
        let p = &self.progress;
        let target = p.submitted.load(Ordering::SeqCst);
        if p.answered.load(Ordering::SeqCst) >= target {
            return;
        }
        p.flush.notify_one();
        loop {
            let changed = p.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if p.answered.load(Ordering::SeqCst) >= target {
                return;
            }
            changed.await;
        }
    }
}

impl<Req, Resp> Batcher<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// Spawns the batching task. `run` receives the requests of one batch and must
    /// return one response per request, in order. A batch is sent when it holds `max`
    /// requests, when a [`Gate`] asks for it, or `linger` after its first request.
    pub(crate) fn spawn<F, Fut>(operation: &'static str, max: usize, linger: Duration, run: F) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<Resp>>> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<Request<Req, Resp>>();
        let max = max.max(1);
        let progress = Arc::new(Progress::default());
        let answered = progress.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                let deadline = tokio::time::sleep(linger);
                tokio::pin!(deadline);
                // Requests queue up in the channel meanwhile without waking this task
                // (nothing polls it): one wake-up per batch, not one per request.
                take_queued(&mut rx, &mut batch, max);
                if batch.len() < max {
                    tokio::select! {
                        biased;
                        () = answered.flush.notified() => {}
                        () = &mut deadline => {}
                    }
                    take_queued(&mut rx, &mut batch, max);
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
                answered.answer(n);
            }
        });
        Self {
            operation,
            tx,
            progress,
            max,
        }
    }

    /// A gate on the requests of this batcher.
    pub(crate) fn gate(&self) -> Gate {
        Gate {
            progress: self.progress.clone(),
        }
    }

    /// Queues one request and waits for its response.
    pub(crate) async fn call(&self, req: Req) -> Result<Resp> {
        let (reply, response) = oneshot::channel();
        let p = &self.progress;
        let submitted = p.submitted.fetch_add(1, Ordering::SeqCst) + 1;
        if self.tx.send((req, reply)).is_err() {
            p.answer(1);
            return Err(Error::unexpected("batcher stopped").with_operation(self.operation));
        }
        let unanswered = submitted.saturating_sub(p.answered.load(Ordering::SeqCst));
        if unanswered > 0 && unanswered.is_multiple_of(self.max as u64) {
            // A full batch is waiting: send it without lingering.
            p.flush.notify_one();
        }
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
        let b = Arc::new(Batcher::spawn(
            "double",
            3,
            Duration::ZERO,
            move |reqs: Vec<u32>| {
                s.lock().unwrap().push(reqs.len());
                async move { Ok(reqs.into_iter().map(|r| r * 2).collect::<Vec<_>>()) }
            },
        ));
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
        let b = Arc::new(Batcher::spawn(
            "fail",
            10,
            Duration::ZERO,
            |_reqs: Vec<u32>| async {
                Err::<Vec<u32>, _>(Error::new(ErrorKind::Unavailable, "down").with_provider("redis"))
            },
        ));
        let calls = (0..2).map(|n| {
            let b = b.clone();
            async move { b.call(n).await.unwrap_err() }
        });
        for err in futures::future::join_all(calls).await {
            assert_eq!(err.kind(), ErrorKind::Unavailable);
            assert_eq!(err.provider(), Some("redis"));
            assert!(err.is_retryable());
        }
        let short = Batcher::spawn("short", 10, Duration::ZERO, |_reqs: Vec<u32>| async {
            Ok(Vec::<u32>::new())
        });
        assert_eq!(short.call(1).await.unwrap_err().kind(), ErrorKind::Unexpected);
    }

    /// Requests below `max` wait for a gate or the linger time, whichever comes first;
    /// a gate returns once the requests made before it are answered.
    #[tokio::test(start_paused = true)]
    async fn a_gate_flushes_the_batch_and_waits_for_its_answers() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let s = sizes.clone();
        let b = Arc::new(Batcher::spawn(
            "echo",
            100,
            Duration::from_secs(3600),
            move |reqs: Vec<u32>| {
                s.lock().unwrap().push(reqs.len());
                async move { Ok(reqs) }
            },
        ));
        let gate = b.gate();
        gate.wait().await; // nothing submitted: returns at once
        let calls: Vec<_> = (0..3)
            .map(|n| {
                let b = b.clone();
                tokio::spawn(async move { b.call(n).await.unwrap() })
            })
            .collect();
        tokio::task::yield_now().await; // the calls are queued, the batch lingers
        assert!(sizes.lock().unwrap().is_empty());
        let start = tokio::time::Instant::now();
        gate.wait().await;
        assert_eq!(start.elapsed(), Duration::ZERO, "flushed, not lingered");
        assert_eq!(*sizes.lock().unwrap(), vec![3]);
        for (n, call) in calls.into_iter().enumerate() {
            assert_eq!(call.await.unwrap(), n as u32);
        }

        // Without a gate, a lone request is sent after the linger time.
        let start = tokio::time::Instant::now();
        assert_eq!(b.call(7).await.unwrap(), 7);
        assert_eq!(start.elapsed(), Duration::from_secs(3600));
        assert_eq!(*sizes.lock().unwrap(), vec![3, 1]);
    }
}
