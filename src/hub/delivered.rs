//! The delivery count of a topic: what output batching waits on.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use super::lock;

/// How many of a topic's subscribers still have published batches they
/// have not taken, who wants to know when none has, and how long the last
/// round of delivery took (from a publish to everyone having taken it).
#[derive(Default)]
pub(crate) struct Delivered {
    outstanding: AtomicUsize,
    /// Subscribers following the live stream now.
    subscribers: AtomicUsize,
    waker: AtomicWaker,
    rounds: Mutex<Rounds>,
}

#[derive(Default)]
struct Rounds {
    started: Option<std::time::Instant>,
    last: std::time::Duration,
}

impl Delivered {
    /// How many subscribers follow the live stream now.
    pub(crate) fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Relaxed)
    }

    /// How long the last complete round of delivery took: what one more
    /// event costs the run's subscribers, measured.
    pub(crate) fn last_round(&self) -> std::time::Duration {
        lock(&self.rounds).last
    }

    /// A run's shim keeps a copy of the daemon's delivery state, which it
    /// hears of over its socket (`run::shim::link`): what it wrote is now
    /// out, and outstanding while anyone reads.
    pub(crate) fn remote_written(&self) {
        if self.subscribers() > 0 && self.is_idle() {
            self.round_starts();
            self.add();
        }
    }

    /// ...and the daemon said everyone took it (`subscribers` now read).
    pub(crate) fn remote_idle(&self, subscribers: usize) {
        self.set_subscribers(subscribers);
        if !self.is_idle() {
            self.done();
        }
    }

    pub(super) fn round_starts(&self) {
        lock(&self.rounds).started.get_or_insert_with(std::time::Instant::now);
    }

    pub(super) fn set_subscribers(&self, n: usize) {
        self.subscribers.store(n, Ordering::Relaxed);
    }

    /// No subscriber holds anything: whoever waits need not.
    pub(super) fn wake_if_idle(&self) {
        if self.is_idle() {
            self.waker.wake();
        }
    }

    /// Every subscriber has taken everything published (or there are none).
    pub(crate) fn is_idle(&self) -> bool {
        self.outstanding.load(Ordering::Acquire) == 0
    }

    /// Ready once every subscriber has taken everything published.
    pub(crate) fn poll_idle(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_idle() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.is_idle() { Poll::Ready(()) } else { Poll::Pending }
    }

    pub(super) fn add(&self) {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
    }

    pub(super) fn done(&self) {
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            let mut rounds = lock(&self.rounds);
            if let Some(started) = rounds.started.take() {
                rounds.last = started.elapsed();
            }
            drop(rounds);
            self.waker.wake();
        }
    }
}
