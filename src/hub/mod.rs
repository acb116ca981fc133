//! Live fan-out of journaled batches to subscribers.
//!
//! The hub knows, for every run it has heard of, the last `seq` published and
//! whether the run is still open; that snapshot, taken under the same lock
//! that publishing holds, is what lets a feed (see `feed.rs`) switch from
//! journal history to live events with no gap and no duplicate.
//!
//! Each subscription has its own bounded queue (in batches and in bytes).
//! Publishing never waits: a subscriber whose queue is full is marked lagged
//! and dropped from the topic, so a slow reader can never hold up the run,
//! the journal or anyone else (its feed catches up from the journal).
//!
//! Each topic also counts the subscribers that have not yet taken what was
//! published ([`Delivered`]): the run's output is batched while that count
//! is above zero, so events grow with what subscribers can take instead of
//! with how often the job writes.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use crate::event::Batch;
use crate::run_id::RunId;

mod delivered;
pub(crate) use delivered::Delivered;

/// Bounds of one subscription's queue of not-yet-sent batches.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QueueLimits {
    pub max_bytes: usize,
    pub max_batches: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits { max_bytes: 8 * 1024 * 1024, max_batches: 4096 }
    }
}

/// Where a run's stream stands, as of a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Someone subscribed before the run exists.
    Pending,
    Open,
    /// The final status has been published; nothing more will come.
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub last_seq: u64,
    pub phase: Phase,
}

#[derive(Debug, Default)]
pub(crate) struct HubStats {
    pub lagged: AtomicU64,
    pub subscriptions: AtomicU64,
    pub batches_published: AtomicU64,
    pub events_published: AtomicU64,
}

/// Cheap to clone; all clones share the same topics.
#[derive(Clone, Default)]
pub(crate) struct Hub {
    inner: Arc<HubInner>,
}

#[derive(Default)]
struct HubInner {
    topics: Mutex<HashMap<RunId, Arc<Topic>>>,
    limits: QueueLimits,
    stats: Arc<HubStats>,
}

struct Topic {
    state: Mutex<TopicState>,
    delivered: Arc<Delivered>,
}

struct TopicState {
    last_seq: u64,
    phase: Phase,
    subs: Vec<Arc<SubQueue>>,
    /// Where the next publish starts handing out, so that the same
    /// subscribers are not always woken last (the tail of the latency).
    turn: usize,
}

struct SubQueue {
    state: Mutex<QueueState>,
}

#[derive(Default)]
struct QueueState {
    batches: VecDeque<Arc<Batch>>,
    bytes: usize,
    lagged: bool,
    closed: bool,
    /// Counted in the topic's [`Delivered`]: holds batches and is in the topic.
    counted: bool,
    /// The one consumer, if it is waiting. Kept here rather than in a
    /// `Notify` so that waiting needs no future: an idle WebSocket
    /// subscriber polls its queue directly and holds no waiter state.
    waker: Option<Waker>,
}

impl QueueState {
    /// Marks the queue changed; the caller wakes the returned waker after unlocking.
    fn changed(&mut self) -> Option<Waker> {
        self.waker.take()
    }
}

fn wake(waker: Option<Waker>) {
    if let Some(w) = waker {
        w.wake();
    }
}

/// A poisoned lock only means another thread panicked mid-update of plain
/// counters and queues; the data is still usable, so carry on.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    pub(crate) fn new(limits: QueueLimits) -> Self {
        Hub { inner: Arc::new(HubInner { topics: Mutex::default(), limits, stats: Arc::default() }) }
    }

    pub(crate) fn stats(&self) -> &Arc<HubStats> {
        &self.inner.stats
    }

    fn topic(&self, run: &RunId) -> Arc<Topic> {
        Self::topic_in(&mut lock(&self.inner.topics), run)
    }

    /// The run's topic, created pending if new. Callers that must keep the
    /// map locked pass its guard's map (lock order: map, then topic).
    fn topic_in(topics: &mut HashMap<RunId, Arc<Topic>>, run: &RunId) -> Arc<Topic> {
        topics
            .entry(run.clone())
            .or_insert_with(|| {
                Arc::new(Topic {
                    state: Mutex::new(TopicState { last_seq: 0, phase: Phase::Pending, subs: Vec::new(), turn: 0 }),
                    delivered: Arc::default(),
                })
            })
            .clone()
    }

    /// Takes a snapshot of the run and, unless it is closed, starts queueing
    /// every batch published after that snapshot.
    pub(crate) fn subscribe(&self, run: &RunId) -> (Snapshot, Option<Subscription>) {
        // The map lock is held until the subscriber is registered, so a
        // concurrent `unsubscribe` cannot drop the topic from the map in
        // between (the subscriber would wait on a topic nobody publishes to).
        let mut topics = lock(&self.inner.topics);
        let topic = Self::topic_in(&mut topics, run);
        let mut st = lock(&topic.state);
        let snap = Snapshot { last_seq: st.last_seq, phase: st.phase };
        if st.phase == Phase::Closed {
            return (snap, None);
        }
        let queue = Arc::new(SubQueue { state: Mutex::default() });
        st.subs.push(queue.clone());
        topic.delivered.set_subscribers(st.subs.len());
        drop(st);
        self.inner.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
        let sub = Subscription { queue, topic, hub: self.clone(), run: run.clone() };
        (snap, Some(sub))
    }

    /// Opens a run's topic for publishing, adopting early subscribers.
    pub(crate) fn open(&self, run: &RunId, last_seq: u64) -> Publisher {
        let mut topics = lock(&self.inner.topics);
        let topic = Self::topic_in(&mut topics, run);
        {
            // Still under the map lock (see `subscribe`).
            let mut st = lock(&topic.state);
            st.phase = Phase::Open;
            st.last_seq = last_seq;
        }
        Publisher { topic, limits: self.inner.limits, stats: self.inner.stats.clone() }
    }

    /// Records a run that is already over (found in the journal at start).
    pub(crate) fn insert_closed(&self, run: &RunId, last_seq: u64) {
        let topic = self.topic(run);
        let mut st = lock(&topic.state);
        st.phase = Phase::Closed;
        st.last_seq = last_seq;
        close_all(&mut st);
    }

    /// Forgets a finished run (retention).
    pub(crate) fn remove(&self, run: &RunId) {
        if let Some(topic) = lock(&self.inner.topics).remove(run) {
            close_all(&mut lock(&topic.state));
        }
    }

    pub(crate) fn snapshot(&self, run: &RunId) -> Option<Snapshot> {
        let topic = lock(&self.inner.topics).get(run).cloned()?;
        let st = lock(&topic.state);
        Some(Snapshot { last_seq: st.last_seq, phase: st.phase })
    }

    /// Every known run's last published seq.
    pub(crate) fn last_seqs(&self) -> Vec<(RunId, u64)> {
        let topics: Vec<(RunId, Arc<Topic>)> =
            lock(&self.inner.topics).iter().map(|(id, t)| (id.clone(), t.clone())).collect();
        topics.into_iter().map(|(id, t)| (id, lock(&t.state).last_seq)).collect()
    }

    fn unsubscribe(&self, run: &RunId, topic: &Arc<Topic>, queue: &Arc<SubQueue>) {
        let now_empty_pending = {
            let mut st = lock(&topic.state);
            st.subs.retain(|q| !Arc::ptr_eq(q, queue));
            uncount(&mut lock(&queue.state), &topic.delivered);
            topic.delivered.set_subscribers(st.subs.len());
            st.subs.is_empty() && st.phase == Phase::Pending
        };
        if now_empty_pending {
            let mut topics = lock(&self.inner.topics);
            // Re-check under the map lock: a subscriber or the run may have arrived.
            if let Some(t) = topics.get(run)
                && Arc::ptr_eq(t, topic)
            {
                let st = lock(&t.state);
                if st.subs.is_empty() && st.phase == Phase::Pending {
                    drop(st);
                    topics.remove(run);
                }
            }
        }
    }
}

fn close_all(st: &mut TopicState) {
    for q in st.subs.drain(..) {
        let mut qs = lock(&q.state);
        qs.closed = true;
        let waker = qs.changed();
        drop(qs);
        wake(waker);
    }
}

/// Takes a queue out of its topic's count of subscribers that have not
/// taken everything yet.
fn uncount(qs: &mut QueueState, delivered: &Delivered) {
    if std::mem::take(&mut qs.counted) {
        delivered.done();
    }
}

/// The one writer of a run's topic, held by its supervisor.
pub(crate) struct Publisher {
    topic: Arc<Topic>,
    limits: QueueLimits,
    stats: Arc<HubStats>,
}

impl Publisher {
    /// Whether every subscriber has taken what was published, and a way to
    /// wait for it (see [`Delivered`]).
    pub(crate) fn delivered(&self) -> Arc<Delivered> {
        self.topic.delivered.clone()
    }

    /// Hands the batch to every subscriber without waiting on any of them.
    pub(crate) fn publish(&self, batch: Batch) {
        let Some(last_seq) = batch.frames.last().map(|f| f.seq) else {
            return;
        };
        let closing = batch.last;
        let bytes = batch.byte_len();
        let events = batch.frames.len() as u64;
        let batch = Arc::new(batch);
        let mut st = lock(&self.topic.state);
        st.last_seq = last_seq;
        let limits = self.limits;
        let stats = &self.stats;
        let delivered = &self.topic.delivered;
        if delivered.is_idle() && !st.subs.is_empty() {
            delivered.round_starts();
        }
        let n = st.subs.len();
        let start = if n == 0 { 0 } else { st.turn % n };
        st.turn = st.turn.wrapping_add(1);
        let mut dropped = Vec::new();
        for k in 0..n {
            let i = (start + k) % n;
            let mut qs = lock(&st.subs[i].state);
            let keep = if qs.batches.len() >= limits.max_batches || qs.bytes + bytes > limits.max_bytes {
                qs.lagged = true;
                stats.lagged.fetch_add(1, Ordering::Relaxed);
                uncount(&mut qs, delivered);
                false
            } else {
                qs.batches.push_back(batch.clone());
                qs.bytes += bytes;
                if !qs.counted {
                    qs.counted = true;
                    delivered.add();
                }
                true
            };
            let waker = qs.changed();
            drop(qs);
            wake(waker);
            if !keep {
                dropped.push(i);
            }
        }
        dropped.sort_unstable();
        for i in dropped.into_iter().rev() {
            st.subs.swap_remove(i);
        }
        if closing {
            st.phase = Phase::Closed;
            close_all(&mut st);
        }
        self.topic.delivered.set_subscribers(st.subs.len());
        self.topic.delivered.wake_if_idle();
        drop(st);
        self.stats.batches_published.fetch_add(1, Ordering::Relaxed);
        self.stats.events_published.fetch_add(events, Ordering::Relaxed);
    }
}

/// What a subscription yields.
#[derive(Debug)]
pub(crate) enum Recv {
    Batches(Vec<Arc<Batch>>),
    /// The queue overflowed; later events were not queued.
    Lagged,
    /// The run is over and everything queued has been taken.
    Closed,
}

/// A subscriber's end of its queue. Dropping it unsubscribes.
pub(crate) struct Subscription {
    queue: Arc<SubQueue>,
    topic: Arc<Topic>,
    hub: Hub,
    run: RunId,
}

impl Subscription {
    /// Waits for queued batches and takes all of them at once (the tests'
    /// way in; the server polls).
    #[cfg(test)]
    pub(crate) async fn recv(&mut self) -> Recv {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// `recv` without a future, for callers that poll many subscriptions.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Recv> {
        let mut qs = lock(&self.queue.state);
        if !qs.batches.is_empty() {
            qs.bytes = 0;
            uncount(&mut qs, &self.topic.delivered);
            return Poll::Ready(Recv::Batches(qs.batches.drain(..).collect()));
        }
        if qs.lagged {
            return Poll::Ready(Recv::Lagged);
        }
        if qs.closed {
            return Poll::Ready(Recv::Closed);
        }
        if !qs.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            qs.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(&self.run, &self.topic, &self.queue);
        self.hub.inner.stats.subscriptions.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
