//! The idle-poll timer of Redis workers.
//!
//! apalis wakes a worker whose last fetch came back empty only through its poll
//! strategy (and its heartbeat timer). apalis-core 1.0's `IntervalStrategy` breaks the
//! [`PollStrategy`] contract: when its delay fires it returns `Ready` and replaces the
//! delay with a new one that it does not poll, so no wake-up is registered for the next
//! tick. When the same `poll_next` then finds the queue empty (the delay expired while
//! the fetch was in flight, e.g. on a loaded machine or a short interval), the worker
//! parks with nothing to wake it but the next heartbeat (30 s by default), and jobs
//! enqueued meanwhile wait that long. [`IdlePoll`] always leaves a wake-up armed.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis::prelude::{PollSnapshot, PollStrategy};
use tokio::time::{Instant, Sleep};

/// Wakes the worker every `period` while it polls; after each tick the next one is
/// armed before returning, so a wake-up is always registered.
#[derive(Debug)]
pub(crate) struct IdlePoll {
    period: Duration,
    /// Created on the first poll (inside the runtime).
    sleep: Option<Pin<Box<Sleep>>>,
}

impl IdlePoll {
    pub(crate) fn new(period: Duration) -> Self {
        Self { period, sleep: None }
    }
}

impl Clone for IdlePoll {
    fn clone(&self) -> Self {
        Self::new(self.period)
    }
}

impl PollStrategy for IdlePoll {
    fn poll_drive(&mut self, cx: &mut Context<'_>, _snapshot: &PollSnapshot) -> Poll<Option<()>> {
        let period = self.period;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(period)));
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        // Fired: arm the next tick AND register this waker with it before reporting
        // the tick (the caller may not poll again before parking).
        sleep.as_mut().reset(Instant::now() + period);
        if sleep.as_mut().poll(cx).is_ready() {
            // Only with a zero period: keep the worker polling rather than park it.
            cx.waker().wake_by_ref();
        }
        Poll::Ready(Some(()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use apalis::prelude::{Backend, PollWith, WorkerContext};
    use futures::task::{ArcWake, waker};

    use super::*;

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl ArcWake for Count {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The case that stalled workers until their heartbeat: the strategy reports a
    /// tick and is then not polled again (the fetch it triggered came back empty and
    /// the worker parked). It must still wake the worker one period later, and every
    /// period after that.
    #[tokio::test(start_paused = true)]
    async fn a_reported_tick_leaves_the_next_wake_up_armed() {
        let count = Arc::new(Count::default());
        let w = waker(count.clone());
        let mut cx = Context::from_waker(&w);
        let snap = PollSnapshot::default();
        let mut poll = IdlePoll::new(Duration::from_millis(100));
        assert!(poll.poll_drive(&mut cx, &snap).is_pending());
        for tick in 1..=3 {
            tokio::time::advance(Duration::from_millis(101)).await;
            assert_eq!(
                count.0.load(Ordering::SeqCst),
                tick,
                "tick {tick} woke the worker"
            );
            assert_eq!(poll.poll_drive(&mut cx, &snap), Poll::Ready(Some(())));
            // Not polled again before the next period: the wake-up must be armed.
        }
        // No spurious wake-up before the period is over.
        tokio::time::advance(Duration::from_millis(50)).await;
        assert_eq!(count.0.load(Ordering::SeqCst), 3);
        assert!(poll.poll_drive(&mut cx, &snap).is_pending());
    }

    /// A backend whose fetch always comes back empty at once, registering no waker of
    /// its own (as apalis's `Persisted` after an empty fetch): only the poll strategy
    /// can wake the worker.
    struct AlwaysEmpty;

    impl Backend for AlwaysEmpty {
        type Task = ();
        type Error = std::io::Error;

        fn poll_ready(&mut self, _: &mut Context<'_>, _: &WorkerContext) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_next(&mut self, _: &mut Context<'_>, _: &WorkerContext) -> Poll<Option<std::io::Result<()>>> {
            Poll::Pending
        }

        fn poll_close(&mut self, _: &mut Context<'_>, _: &WorkerContext) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// The same through apalis's `PollWith` (as a worker drives it): each tick leads to
    /// one more `poll_next`, whose empty fetch parks the worker in the same call; an
    /// idle worker must still be woken every period, never left for its heartbeat.
    #[tokio::test(start_paused = true)]
    async fn an_idle_worker_is_woken_every_period_after_empty_fetches() {
        let count = Arc::new(Count::default());
        let w = waker(count.clone());
        let mut cx = Context::from_waker(&w);
        let worker = WorkerContext::from("idle-poll-test");
        let mut backend = PollWith::new(AlwaysEmpty, IdlePoll::new(Duration::from_millis(100)));
        assert!(backend.poll_next(&mut cx, &worker).is_pending());
        for tick in 1..=5 {
            tokio::time::advance(Duration::from_millis(101)).await;
            assert_eq!(count.0.load(Ordering::SeqCst), tick, "woken for tick {tick}");
            assert!(backend.poll_next(&mut cx, &worker).is_pending());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_period_keeps_the_worker_polling() {
        let count = Arc::new(Count::default());
        let w = waker(count.clone());
        let mut cx = Context::from_waker(&w);
        let mut poll = IdlePoll::new(Duration::ZERO);
        assert_eq!(
            poll.poll_drive(&mut cx, &PollSnapshot::default()),
            Poll::Ready(Some(()))
        );
        // Woken again at once: a zero period never parks the worker.
        assert!(count.0.load(Ordering::SeqCst) >= 1);
    }
}
