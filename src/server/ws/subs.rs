//! A WebSocket session's subscriptions, polled by the session's one task.
//!
//! A connection may follow hundreds of runs (a pattern subscription), so
//! the set polls only the subscriptions that were woken, in the order they
//! were woken: one busy run cannot starve the others, and an event costs
//! the same with one subscription or a thousand.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

use super::subscription::{Sub, SubOut};
use crate::event::TypeSet;
use crate::run_id::RunId;

/// A subscription is to a run, at a host where the backend has hosts.
pub(super) type SubKey = (Option<String>, RunId);

/// Why the session follows a run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Origin {
    /// The client subscribed to it by name.
    Named,
    /// A pattern subscription matched it.
    Pattern,
}

/// What one subscription produced, with what the session needs to send it.
pub(super) struct Polled {
    pub(super) out: SubOut,
    pub(super) slot: usize,
    pub(super) types: TypeSet,
    pub(super) host: Option<String>,
    pub(super) origin: Origin,
}

struct Entry {
    key: SubKey,
    sub: Sub,
    since: u64,
    types: TypeSet,
    origin: Origin,
    flag: Arc<SlotWaker>,
    waker: Waker,
}

/// Indexed by slot (a subscription's index in the outbox's record of what
/// was written); a slot is reused once free.
#[derive(Default)]
pub(super) struct Subs {
    slots: Vec<Option<Entry>>,
    len: usize,
    woken: Arc<WakeQueue>,
}

/// The slots woken since the session last looked, and the session's waker.
#[derive(Default)]
struct WakeQueue {
    slots: Mutex<VecDeque<usize>>,
    session: AtomicWaker,
}

/// The waker a subscription's feed registers: it queues its slot once.
struct SlotWaker {
    slot: usize,
    queued: AtomicBool,
    queue: Arc<WakeQueue>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.enqueue();
        self.queue.session.wake();
    }
}

impl SlotWaker {
    fn enqueue(&self) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.queue.slots.lock().unwrap_or_else(PoisonError::into_inner).push_back(self.slot);
        }
    }
}

impl Subs {
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn count(&self, origin: Origin) -> usize {
        self.entries().filter(|e| e.origin == origin).count()
    }

    pub(super) fn contains(&self, key: &SubKey) -> bool {
        self.entries().any(|e| &e.key == key)
    }

    /// Adds a subscription; returns its outbox slot (the lowest free one).
    pub(super) fn insert(&mut self, key: SubKey, sub: Sub, since: u64, types: TypeSet, origin: Origin) -> usize {
        let slot = self.slots.iter().position(Option::is_none).unwrap_or(self.slots.len());
        if slot == self.slots.len() {
            // Most sessions hold one subscription; a Vec's first growth would make room for four.
            self.slots.reserve_exact(1);
            self.slots.push(None);
        }
        let flag = Arc::new(SlotWaker { slot, queued: AtomicBool::new(false), queue: self.woken.clone() });
        let waker = Waker::from(flag.clone());
        // Polled on the session's next turn: that starts its feed.
        flag.enqueue();
        self.slots[slot] = Some(Entry { key, sub, since, types, origin, flag, waker });
        self.len += 1;
        slot
    }

    pub(super) fn remove(&mut self, key: &SubKey) {
        self.retain(|k, _| k != key);
    }

    /// Keeps the subscriptions `keep` says yes to.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&SubKey, Origin) -> bool) {
        for slot in &mut self.slots {
            if slot.as_ref().is_some_and(|e| !keep(&e.key, e.origin)) {
                *slot = None;
                self.len -= 1;
            }
        }
    }

    /// Each subscription: its run, its slot, and the `since` it started from.
    pub(super) fn positions(&self) -> impl Iterator<Item = (&RunId, usize, u64)> {
        self.slots.iter().enumerate().filter_map(|(i, e)| e.as_ref().map(|e| (&e.key.1, i, e.since)))
    }

    fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.slots.iter().flatten()
    }

    pub(super) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Polled> {
        self.woken.session.register(cx.waker());
        loop {
            let next = self.woken.slots.lock().unwrap_or_else(PoisonError::into_inner).pop_front();
            let Some(slot) = next else {
                return Poll::Pending;
            };
            // A slot freed (or reused) since it was woken is polled for nothing.
            let Some(entry) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            // Cleared before polling: a wake while it runs queues it again.
            entry.flag.queued.store(false, Ordering::Release);
            let Poll::Ready(out) = entry.sub.poll(&mut Context::from_waker(&entry.waker)) else {
                continue;
            };
            let polled = Polled { slot, types: entry.types, host: entry.key.0.clone(), origin: entry.origin, out };
            if polled.out.is_last() {
                self.slots[slot] = None;
                self.len -= 1;
            } else {
                // It may have more: after the others that are waiting. The
                // session polls again before it sleeps, so waking it (and
                // having it scheduled once more per event) is not needed.
                entry.flag.enqueue();
            }
            return Poll::Ready(polled);
        }
    }
}
