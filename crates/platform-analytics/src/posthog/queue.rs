//! The bounded in-memory queue between `capture` and the batching task.
//!
//! `capture` takes a short, uncontended lock and never waits for I/O. Every event
//! gets a sequence number; the batching task settles batches in order and
//! publishes the last settled sequence number, which `flush` waits on.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::pipeline::{Counters, log_drop};
use crate::types::{AnalyticsEvent, FlushReport};

pub(crate) struct Queue {
    state: Mutex<State>,
    capacity: usize,
    batch_size: usize,
    pub(crate) wake: Notify,
    settled: watch::Sender<u64>,
    pub(crate) counters: Counters,
}

struct State {
    events: VecDeque<(u64, AnalyticsEvent)>,
    in_flight: usize,
    last_seq: u64,
    flush_through: u64,
    closed: bool,
}

/// A batch taken by the batching task.
pub(crate) struct Batch {
    pub(crate) events: Vec<AnalyticsEvent>,
    pub(crate) last_seq: u64,
}

pub(crate) enum Take {
    Batch(Batch),
    Wait,
    Done,
}

impl Queue {
    pub(crate) fn new(capacity: usize, batch_size: usize) -> Self {
        Self {
            state: Mutex::new(State {
                events: VecDeque::with_capacity(capacity.min(4096)),
                in_flight: 0,
                last_seq: 0,
                flush_through: 0,
                closed: false,
            }),
            capacity,
            batch_size,
            wake: Notify::new(),
            settled: watch::Sender::new(0),
            counters: Counters::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `event`, or drops and counts it when full or closed.
    pub(crate) fn push(&self, event: AnalyticsEvent) {
        let mut state = self.lock();
        let reason = if state.closed {
            "captured after shutdown"
        } else if state.events.len() + state.in_flight >= self.capacity {
            "queue full"
        } else {
            state.last_seq += 1;
            let seq = state.last_seq;
            state.events.push_back((seq, event));
            let full_batch = state.events.len() >= self.batch_size;
            drop(state);
            if full_batch {
                self.wake.notify_one();
            }
            return;
        };
        drop(state);
        let total = self.counters.add_dropped(1);
        log_drop(total, 1, reason);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Asks for everything queued so far to be sent now; returns the sequence
    /// number to wait for.
    pub(crate) fn request_flush(&self) -> u64 {
        let mut state = self.lock();
        let target = state.last_seq;
        state.flush_through = state.flush_through.max(target);
        drop(state);
        self.wake.notify_one();
        target
    }

    /// Closes the queue (later pushes are dropped) and asks for a full drain.
    pub(crate) fn close(&self) -> u64 {
        let mut state = self.lock();
        state.closed = true;
        state.flush_through = u64::MAX;
        let target = state.last_seq;
        drop(state);
        self.wake.notify_one();
        target
    }

    /// Waits up to `timeout` until everything up to `target` has settled.
    pub(crate) async fn wait_settled(&self, target: u64, timeout: Duration) -> bool {
        let mut rx = self.settled.subscribe();
        matches!(
            tokio::time::timeout(timeout, rx.wait_for(|s| *s >= target)).await,
            Ok(Ok(_))
        )
    }

    /// Takes the next batch if one is due: a full batch, a requested flush,
    /// a closed queue, or `timer_fired` with anything queued.
    pub(crate) fn take(&self, timer_fired: bool) -> Take {
        let mut state = self.lock();
        let Some(&(head_seq, _)) = state.events.front() else {
            return if state.closed { Take::Done } else { Take::Wait };
        };
        let due = timer_fired
            || state.closed
            || state.events.len() >= self.batch_size
            || head_seq <= state.flush_through;
        if !due {
            return Take::Wait;
        }
        let n = state.events.len().min(self.batch_size);
        let mut events = Vec::with_capacity(n);
        let mut last_seq = head_seq;
        for (seq, event) in state.events.drain(..n) {
            last_seq = seq;
            events.push(event);
        }
        state.in_flight += n;
        Take::Batch(Batch { events, last_seq })
    }

    /// Records the outcome of events of a batch taken with [`take`](Self::take), as
    /// they are known (a batch sent in parts settles part by part): how many were
    /// delivered and how many dropped.
    pub(crate) fn resolve(&self, delivered: usize, dropped: usize) {
        if delivered > 0 {
            self.counters.add_delivered(delivered as u64);
        }
        if dropped > 0 {
            self.counters.add_dropped(dropped as u64);
        }
        let mut state = self.lock();
        state.in_flight = state.in_flight.saturating_sub(delivered + dropped);
    }

    /// Marks every event up to `last_seq` settled, once its batch is resolved.
    pub(crate) fn settle(&self, last_seq: u64) {
        self.settled.send_replace(last_seq);
    }

    /// Discards every event still queued or in flight, once the batching task has
    /// stopped for good (a shutdown past its deadline): counts them as dropped and
    /// marks everything settled, so that no later `flush` or `shutdown` waits for
    /// them. Returns how many were discarded.
    pub(crate) fn discard_all(&self) -> u64 {
        let mut state = self.lock();
        let n = (state.events.len() + state.in_flight) as u64;
        state.events.clear();
        state.in_flight = 0;
        drop(state);
        if n > 0 {
            self.counters.add_dropped(n);
        }
        self.settle(u64::MAX);
        n
    }

    pub(crate) fn pending(&self) -> u64 {
        let state = self.lock();
        (state.events.len() + state.in_flight) as u64
    }

    pub(crate) fn report(&self) -> FlushReport {
        self.counters.report(self.pending())
    }
}
