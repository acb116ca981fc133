//! A connection's run streams, polled by the connection's one task.
//!
//! A connection may follow hundreds of runs (a pattern subscription), so
//! the set polls only the streams that were woken, in the order they were
//! woken: one busy run cannot starve the others, and an event costs the
//! same with one stream or a thousand. Each stream has a key (what the
//! connection calls it) and whatever the connection keeps with it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

use super::run_stream::{RunStream, StreamOut};

struct Entry<K, M> {
    key: K,
    meta: M,
    stream: RunStream,
    flag: Arc<SlotWaker>,
    waker: Waker,
}

/// What one stream produced. A stream's last item (`End`, `Fail`) comes
/// with the stream's key and data, the stream having left the set.
pub(crate) struct Polled<K, M> {
    pub(crate) slot: usize,
    pub(crate) out: StreamOut,
    pub(crate) removed: Option<(K, M)>,
}

/// Indexed by slot (a stream's index in its outbox's record of what was
/// written); a slot is reused once free.
pub(crate) struct Streams<K, M> {
    slots: Vec<Option<Entry<K, M>>>,
    len: usize,
    woken: Arc<WakeQueue>,
}

impl<K, M> Default for Streams<K, M> {
    fn default() -> Self {
        Streams { slots: Vec::new(), len: 0, woken: Arc::default() }
    }
}

/// The slots woken since the connection last looked, and its task's waker.
#[derive(Default)]
struct WakeQueue {
    slots: Mutex<VecDeque<usize>>,
    task: AtomicWaker,
}

/// The waker a stream's feed registers: it queues its slot once.
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
        self.queue.task.wake();
    }
}

impl SlotWaker {
    fn enqueue(&self) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.queue.slots.lock().unwrap_or_else(PoisonError::into_inner).push_back(self.slot);
        }
    }
}

impl<K: PartialEq, M> Streams<K, M> {
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn contains(&self, key: &K) -> bool {
        self.iter().any(|(k, _, _)| k == key)
    }

    /// The key and data of the stream in `slot`.
    pub(crate) fn get(&self, slot: usize) -> Option<(&K, &M)> {
        self.slots.get(slot)?.as_ref().map(|e| (&e.key, &e.meta))
    }

    /// Every stream: its key, its slot, its data.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, usize, &M)> {
        self.slots.iter().enumerate().filter_map(|(i, e)| e.as_ref().map(|e| (&e.key, i, &e.meta)))
    }

    /// Adds a stream; returns its slot (the lowest free one). The
    /// connection polls the set before it sleeps, so it is not woken.
    pub(crate) fn insert(&mut self, key: K, meta: M, stream: RunStream) -> usize {
        let slot = self.slots.iter().position(Option::is_none).unwrap_or(self.slots.len());
        if slot == self.slots.len() {
            // Most connections hold one stream; a Vec's first growth would make room for four.
            self.slots.reserve_exact(1);
            self.slots.push(None);
        }
        let flag = Arc::new(SlotWaker { slot, queued: AtomicBool::new(false), queue: self.woken.clone() });
        let waker = Waker::from(flag.clone());
        flag.enqueue();
        self.slots[slot] = Some(Entry { key, meta, stream, flag, waker });
        self.len += 1;
        slot
    }

    pub(crate) fn remove(&mut self, key: &K) {
        self.retain(|k, _| k != key);
    }

    /// Keeps the streams `keep` says yes to.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&K, &M) -> bool) {
        for slot in &mut self.slots {
            if slot.as_ref().is_some_and(|e| !keep(&e.key, &e.meta)) {
                *slot = None;
                self.len -= 1;
            }
        }
    }

    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Polled<K, M>> {
        self.woken.task.register(cx.waker());
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
            let Poll::Ready(out) = entry.stream.poll_next(&mut Context::from_waker(&entry.waker)) else {
                continue;
            };
            if !out.is_last() {
                // It may have more: after the others that are waiting. The
                // task polls again before it sleeps, so waking it (and
                // having it scheduled once more per event) is not needed.
                entry.flag.enqueue();
                return Poll::Ready(Polled { slot, out, removed: None });
            }
            let removed = self.slots[slot].take().map(|e| (e.key, e.meta));
            self.len -= 1;
            return Poll::Ready(Polled { slot, out, removed });
        }
    }
}
