//! Natural batching of per-attempt state changes: requests made close together go to
//! Redis as ONE atomic Lua script call.
//!
//! apalis hands a worker up to `batch_size` tasks at once, so their `start` (and, for
//! quick jobs, their `complete`) requests arrive together. One script over N jobs
//! costs Redis one script execution instead of N, and the client one round trip.
//!
//! Requests wait in a queue. The batch is sent by whoever needs it first (no batching
//! task polling a channel: no thread wake-up per request): a [`Gate`] (the worker is
//! about to fetch, so every task of the last fetch has asked to start: see
//! `WorkerConnection::fetch`, which waits for the requests made so far, as apalis's
//! own fetch loop waits for its acknowledgements), the request that fills
//! the batch or completes the quorum (every caller that may make a request has one
//! unanswered, see [`Batcher::with_quorum`]), or the batch's first request (its leader)
//! when still unanswered `linger` after it was made. Only the leader sets a timer, one
//! per batch. Requests send their batch inline (all of a worker's jobs are driven
//! together, so one that sends for the others is always polled); a gate spawns a task
//! for it, and so does a leader dropped before its batch was sent (its job was
//! cancelled), so that the batch's other requests are still answered.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use platform_core::{Error, ErrorKind, Result};
use tokio::sync::{Notify, oneshot};

type Request<Req, Resp> = (Req, oneshot::Sender<Result<Resp>>);
type Run<Req, Resp> =
    dyn Fn(Vec<Req>) -> Pin<Box<dyn Future<Output = Result<Vec<Resp>>> + Send>> + Send + Sync;

/// Batches requests of one kind; cheap to share behind an `Arc`.
pub(crate) struct Batcher<Req, Resp> {
    shared: Arc<Shared<Req, Resp>>,
    max: usize,
    linger: Duration,
    /// How many callers may be making a request now (see [`Batcher::with_quorum`]).
    quorum: Option<Box<dyn Fn() -> u64 + Send + Sync>>,
}

struct Shared<Req, Resp> {
    operation: &'static str,
    queue: Mutex<Vec<Request<Req, Resp>>>,
    run: Box<Run<Req, Resp>>,
    /// Requests queued so far, and requests answered (successfully or not).
    submitted: AtomicU64,
    answered: AtomicU64,
    changed: Notify,
}

/// Held by a batch's leader while it lingers: if the leader is dropped then (its job
/// was cancelled), the batch is sent from a task of its own, so that the batch's other
/// requests, which set no timer, are still answered.
struct Leader<Req: Send + 'static, Resp: Send + 'static> {
    shared: Option<Arc<Shared<Req, Resp>>>,
}

impl<Req: Send + 'static, Resp: Send + 'static> Drop for Leader<Req, Resp> {
    fn drop(&mut self) {
        let Some(shared) = self.shared.take() else {
            return;
        };
        if !shared.queued().is_empty() {
            shared.flush_detached();
        }
    }
}

/// Counts a taken batch as answered when dropped: also when the task sending it is
/// cancelled mid-call (its requests then fail with "dropped"), so no gate waits for
/// it for ever.
struct Answered<'a, Req, Resp>(&'a Shared<Req, Resp>, usize);

impl<Req, Resp> Drop for Answered<'_, Req, Resp> {
    fn drop(&mut self) {
        self.0.answered.fetch_add(self.1 as u64, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

impl<Req, Resp> Shared<Req, Resp> {
    /// The queued requests (a panic while the lock was held leaves them usable).
    fn queued(&self) -> MutexGuard<'_, Vec<Request<Req, Resp>>> {
        crate::lock(&self.queue)
    }

    /// Sends the queued requests from a task of their own (when inside a runtime).
    fn flush_detached(self: Arc<Self>)
    where
        Req: Send + 'static,
        Resp: Send + 'static,
    {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { self.flush().await });
        }
    }

    /// Sends every queued request as one batch (if any) and answers them.
    async fn flush(&self) {
        let batch = std::mem::take(&mut *self.queued());
        if batch.is_empty() {
            return;
        }
        let n = batch.len();
        let _answered = Answered(self, n);
        let (reqs, replies): (Vec<Req>, Vec<_>) = batch.into_iter().unzip();
        let operation = self.operation;
        match (self.run)(reqs).await {
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
}

/// Sends a batcher's queued requests and waits for their answers.
pub(crate) struct Gate<Req, Resp> {
    shared: Arc<Shared<Req, Resp>>,
}

impl<Req, Resp> Clone for Gate<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Gate<Req, Resp> {
    /// Sends the queued requests at once and returns once every request made before
    /// this call has been answered. Requests made meanwhile are not waited for, so the
    /// wait is bounded by the batches already sent, whatever the load.
    ///
    /// The batch is sent from a task of its own, not inside this future: the future
    /// waiting here (a worker's fetch) may be left unpolled for a long time (a worker at
    /// full concurrency does not drive its fetch) or dropped (at shutdown), while the
    /// jobs whose requests it would hold wait for their answers.
    pub(crate) async fn wait(&self) {
        let p = &*self.shared;
        let target = p.submitted.load(Ordering::SeqCst);
        if p.answered.load(Ordering::SeqCst) >= target {
            return;
        }
        self.shared.clone().flush_detached();
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
    /// A batcher whose batches `run` sends: it receives the requests of one batch and
    /// must return one response per request, in order. A batch is sent when a
    /// [`Gate`] asks for it, when it holds `max` requests, or by its first request
    /// still unanswered `linger` after it was made.
    pub(crate) fn new<F, Fut>(operation: &'static str, max: usize, linger: Duration, run: F) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<Resp>>> + Send + 'static,
    {
        Self {
            shared: Arc::new(Shared {
                operation,
                queue: Mutex::new(Vec::new()),
                run: Box::new(move |reqs| Box::pin(run(reqs))),
                submitted: AtomicU64::new(0),
                answered: AtomicU64::new(0),
                changed: Notify::new(),
            }),
            max: max.max(1),
            linger,
            quorum: None,
        }
    }

    /// Sends the batch at once, without lingering, when as many requests are
    /// unanswered as `quorum` says callers may be making requests now: no other
    /// request can come before an answer, so waiting would only delay this batch.
    /// A quorum counted high makes a batch linger as without one; counted low, it
    /// splits a batch in two.
    pub(crate) fn with_quorum(mut self, quorum: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        self.quorum = Some(Box::new(quorum));
        self
    }

    /// A gate on the requests of this batcher.
    pub(crate) fn gate(&self) -> Gate<Req, Resp> {
        Gate {
            shared: self.shared.clone(),
        }
    }

    /// Queues one request and waits for its response.
    pub(crate) async fn call(&self, req: Req) -> Result<Resp> {
        let (reply, mut response) = oneshot::channel();
        let (leads, full) = {
            let mut queue = self.shared.queued();
            let leads = queue.is_empty();
            queue.push((req, reply));
            self.shared.submitted.fetch_add(1, Ordering::SeqCst);
            (leads, queue.len() >= self.max)
        };
        if full || self.quorate() {
            self.shared.flush().await;
        } else if leads {
            let mut leader = Leader {
                shared: Some(self.shared.clone()),
            };
            let answered = tokio::select! {
                biased;
                answer = &mut response => Some(answer),
                () = tokio::time::sleep(self.linger) => None,
            };
            leader.shared = None;
            if let Some(answer) = answered {
                return self.answer(answer);
            }
            self.shared.flush().await;
        }
        let answer = response.await;
        self.answer(answer)
    }

    /// Whether every caller that may be making a request now (see
    /// [`with_quorum`](Self::with_quorum)) has one unanswered.
    fn quorate(&self) -> bool {
        self.quorum.as_ref().is_some_and(|quorum| {
            let p = &*self.shared;
            let unanswered = p
                .submitted
                .load(Ordering::SeqCst)
                .saturating_sub(p.answered.load(Ordering::SeqCst));
            unanswered >= quorum()
        })
    }

    /// A batch dropped before its answer (the task sending it was cancelled, e.g. a
    /// fetch apalis abandons at shutdown) is `Unavailable`: whether its script ran is
    /// unknown, and every settle script is safe to run again, so callers retry.
    fn answer(&self, answer: std::result::Result<Result<Resp>, oneshot::error::RecvError>) -> Result<Resp> {
        answer.map_err(|_| {
            Error::new(
                ErrorKind::Unavailable,
                "the batch of this request was dropped before its answer",
            )
            .with_operation(self.shared.operation)
        })?
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn requests_queued_together_run_as_one_batch_in_order() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let s = sizes.clone();
        let b = Arc::new(Batcher::new(
            "double",
            3,
            Duration::from_secs(3600),
            move |reqs: Vec<u32>| {
                s.lock().unwrap().push(reqs.len());
                async move { Ok(reqs.into_iter().map(|r| r * 2).collect::<Vec<_>>()) }
            },
        ));
        // Five calls made together: the third fills a batch and sends it, the last two
        // are sent by the first of them (their batch's leader) after the linger time;
        // responses match their requests.
        let calls = (1..=5).map(|n| {
            let b = b.clone();
            async move { b.call(n).await.unwrap() }
        });
        assert_eq!(futures::future::join_all(calls).await, vec![2, 4, 6, 8, 10]);
        assert_eq!(*sizes.lock().unwrap(), vec![3, 2]);
    }

    #[tokio::test]
    async fn a_failed_batch_fails_every_request_with_its_kind() {
        let b = Arc::new(Batcher::new(
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
        let short = Batcher::new("short", 10, Duration::ZERO, |_reqs: Vec<u32>| async {
            Ok(Vec::<u32>::new())
        });
        assert_eq!(short.call(1).await.unwrap_err().kind(), ErrorKind::Unexpected);
    }

    /// Sizes of the batches a batcher sent, in order.
    type Sizes = Arc<Mutex<Vec<usize>>>;

    /// A batcher answering each request with itself (batches of up to 100, lingering
    /// an hour), and the sizes of the batches it sent.
    fn echo_recording_sizes() -> (Arc<Batcher<u32, u32>>, Sizes) {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let s = sizes.clone();
        let b = Batcher::new("echo", 100, Duration::from_secs(3600), move |reqs: Vec<u32>| {
            s.lock().unwrap().push(reqs.len());
            async move { Ok(reqs) }
        });
        (Arc::new(b), sizes)
    }

    /// A batch is sent as soon as every caller that may make a request (the quorum)
    /// has one unanswered, without lingering; short of the quorum, it lingers.
    #[tokio::test(start_paused = true)]
    async fn a_batch_is_sent_at_once_when_the_quorum_has_asked() {
        let sizes: Sizes = Arc::default();
        let s = sizes.clone();
        let b = Batcher::new("echo", 100, Duration::from_secs(3600), move |reqs: Vec<u32>| {
            s.lock().unwrap().push(reqs.len());
            async move { Ok(reqs) }
        })
        .with_quorum(|| 3);
        let b = Arc::new(b);
        let calls = |n: u32| {
            futures::future::join_all((0..n).map(|n| {
                let b = b.clone();
                async move { b.call(n).await.unwrap() }
            }))
        };
        let start = tokio::time::Instant::now();
        assert_eq!(calls(3).await, vec![0, 1, 2]);
        assert_eq!(start.elapsed(), Duration::ZERO, "sent at once, not lingered");
        assert_eq!(*sizes.lock().unwrap(), vec![3]);

        assert_eq!(calls(2).await, vec![0, 1]);
        assert_eq!(start.elapsed(), Duration::from_secs(3600), "two of three linger");
        assert_eq!(*sizes.lock().unwrap(), vec![3, 2]);
    }

    /// Requests below `max` wait for a gate or the linger time, whichever comes first;
    /// a gate returns once the requests made before it are answered.
    #[tokio::test(start_paused = true)]
    async fn a_gate_flushes_the_batch_and_waits_for_its_answers() {
        let (b, sizes) = echo_recording_sizes();
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

    /// A task cancelled while it sends a batch (a worker aborted at its shutdown
    /// deadline) fails the batch's other requests and leaves no gate waiting for it.
    #[tokio::test(start_paused = true)]
    async fn a_cancelled_batch_fails_its_requests_and_releases_gates() {
        let b = Arc::new(Batcher::new(
            "stuck",
            2,
            Duration::from_secs(3600),
            |_reqs: Vec<u32>| std::future::pending::<Result<Vec<u32>>>(),
        ));
        let waiting = {
            let b = b.clone();
            tokio::spawn(async move { b.call(1).await })
        };
        tokio::task::yield_now().await; // queued, lingering
        let sender = {
            let b = b.clone();
            tokio::spawn(async move { b.call(2).await }) // fills the batch and sends it
        };
        tokio::task::yield_now().await;
        sender.abort();
        assert!(sender.await.unwrap_err().is_cancelled());
        let err = waiting.await.unwrap().unwrap_err();
        assert!(err.to_string().contains("dropped"), "{err}");
        assert!(err.is_retryable(), "settle scripts are safe to run again: {err}");
        let start = tokio::time::Instant::now();
        b.gate().wait().await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    /// A leader cancelled before sending its batch (its job was aborted) hands the
    /// batch to a task of its own: the other requests are still answered, at once.
    #[tokio::test(start_paused = true)]
    async fn a_dropped_leader_still_gets_its_batch_sent() {
        let (b, sizes) = echo_recording_sizes();
        let leader = {
            let b = b.clone();
            tokio::spawn(async move { b.call(1).await })
        };
        tokio::task::yield_now().await; // leads the batch, lingering
        let follower = {
            let b = b.clone();
            tokio::spawn(async move { b.call(2).await })
        };
        tokio::task::yield_now().await; // queued behind the leader
        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());
        let start = tokio::time::Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(60), follower)
            .await
            .expect("the follower must be answered without its leader");
        assert_eq!(answer.unwrap().unwrap(), 2);
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "sent when the leader was dropped"
        );
        assert_eq!(*sizes.lock().unwrap(), vec![2]);
    }
}
