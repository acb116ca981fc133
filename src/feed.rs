//! The hand-off from journal history to live events, for one subscription.
//!
//! This is the only place that joins the two sources, so it is the only
//! place that has to be right about gaps and duplicates. The rule:
//!
//! 1. Subscribe to the hub first. The hub returns a snapshot (`last_seq = L`)
//!    taken under its publish lock, and from then on queues every batch with
//!    `seq > L`.
//! 2. Read `since+1 ..= L` from the journal. The supervisor writes a batch to
//!    the file before publishing it, so all of those are there.
//! 3. Then deliver the queued live batches, dropping anything already sent.
//!
//! `delivered` (the last seq handed out, or `since`) is the only cursor;
//! every frame handed out passes through one filter on it. It is the last
//! seq rather than the next one so that `since = u64::MAX` needs no seq
//! past the top. If the live queue overflows (the subscriber reads more
//! slowly than the job writes), the feed simply starts over at step 1 after
//! `delivered`: slow is not stalled, and every subscriber, local or not,
//! is served from the journal at its own pace and rejoins the live stream
//! with nothing lost. (Only a subscriber that takes nothing at all is cut
//! off, by its connection's write-stall timeout.) What the journal lacks,
//! history reports as a gap (see `journal::history`).

use std::sync::Arc;
use std::task::{Context, Poll, ready};

use crate::event::{Batch, Frame};
use crate::history::{History, Reader};
use crate::hub::{Hub, Phase, Recv, Subscription};
use crate::journal::{HistoryItem, JournalError};
use crate::run_id::RunId;

/// Frames ready to send: shared batches, of which only `seq > after` are new.
#[derive(Debug)]
pub(crate) struct Delivery {
    batches: Vec<Arc<Batch>>,
    after: u64,
}

impl Delivery {
    pub(crate) fn frames(&self) -> impl Iterator<Item = &Frame> {
        let after = self.after;
        self.batches.iter().flat_map(|b| b.frames.iter()).filter(move |f| f.seq > after)
    }

    /// The shared batches and the last seq in them that is not new.
    pub(crate) fn into_parts(self) -> (Vec<Arc<Batch>>, u64) {
        (self.batches, self.after)
    }
}

#[derive(Debug)]
pub(crate) enum FeedItem {
    Frames(Delivery),
    /// Events `from..=to` were published but are not (intact) in the journal.
    Gap {
        from: u64,
        to: u64,
    },
    /// The run is over and everything has been delivered.
    End,
}

enum State {
    Start,
    History { reader: Reader, live: Option<Subscription> },
    Live(Subscription),
    Done,
}

pub(crate) struct Feed {
    history: History,
    hub: Hub,
    run: RunId,
    /// Last seq delivered (or `since`, before anything is).
    delivered: u64,
    /// Keep going after history (false: stop at the snapshot, like `logs` without `-f`).
    follow: bool,
    /// History is read and handed out this many bytes at a time.
    step: usize,
    state: State,
    /// Where the last history phase stopped (`(next seq, byte offset)` in a
    /// journal), so a replay after a lag continues there instead of
    /// re-reading the run from the start. Just two numbers:
    /// an idle subscriber holds no file or buffer.
    resume: Option<(u64, u64)>,
    /// Frames that came after a jump in seq, held while the gap is reported.
    held: Option<Box<Delivery>>,
}

impl Feed {
    pub(crate) fn new(history: impl Into<History>, hub: Hub, run: RunId, since: u64, follow: bool) -> Self {
        Feed {
            history: history.into(),
            hub,
            run,
            delivered: since,
            follow,
            step: crate::journal::HISTORY_STEP,
            state: State::Start,
            resume: None,
            held: None,
        }
    }

    /// Reads history `bytes` at a time: what this subscriber holds while it
    /// catches up.
    pub(crate) fn with_history_step(mut self, bytes: usize) -> Self {
        self.step = bytes;
        self
    }

    pub(crate) fn run_id(&self) -> &RunId {
        &self.run
    }

    /// The last seq delivered so far.
    pub(crate) fn last_seq(&self) -> u64 {
        self.delivered
    }

    /// The next thing to send. Cancel-safe only between calls: callers
    /// should not drop a pending `next()` and then call it again.
    pub(crate) async fn next(&mut self) -> Result<FeedItem, JournalError> {
        loop {
            if let Some(item) = self.step().await? {
                return Ok(item);
            }
            if let Some(item) = std::future::poll_fn(|cx| self.poll_live(cx)).await {
                return Ok(item);
            }
        }
    }

    /// Works through the phases that read the journal. Ok(None) once the
    /// feed is live: from then on `poll_live` yields, with no future held
    /// while waiting (what an idle WebSocket subscriber costs).
    pub(crate) async fn step(&mut self) -> Result<Option<FeedItem>, JournalError> {
        loop {
            match std::mem::replace(&mut self.state, State::Done) {
                State::Done => return Ok(Some(FeedItem::End)),
                State::Start => self.start().await?,
                State::History { mut reader, live } => {
                    let item = match reader.next().await? {
                        HistoryItem::Frames(frames) => self.deliver(vec![Arc::new(Batch { frames, last: false })]),
                        HistoryItem::Gap { from, to } => {
                            self.delivered = self.delivered.max(to);
                            Some(FeedItem::Gap { from, to })
                        }
                        HistoryItem::End => None,
                    };
                    if let Some(item) = item {
                        self.state = State::History { reader, live };
                        return Ok(Some(item));
                    }
                    self.state = match live {
                        Some(sub) => State::Live(sub),
                        None => State::Done,
                    };
                    self.resume = reader.position();
                }
                State::Live(sub) => {
                    self.state = State::Live(sub);
                    return Ok(None);
                }
            }
        }
    }

    /// The live phase: Ready(Some) with the next item, Ready(None) when the
    /// feed is not live (any more), and `step` has to run.
    pub(crate) fn poll_live(&mut self, cx: &mut Context<'_>) -> Poll<Option<FeedItem>> {
        if let Some(held) = self.held.take() {
            return Poll::Ready(Some(FeedItem::Frames(*held)));
        }
        loop {
            let State::Live(sub) = &mut self.state else {
                return Poll::Ready(None);
            };
            let item = match ready!(sub.poll_recv(cx)) {
                Recv::Batches(batches) => self.deliver(batches),
                Recv::Closed => {
                    self.state = State::Done;
                    Some(FeedItem::End)
                }
                Recv::Lagged => {
                    // Behind the live stream: back to the journal from here.
                    self.state = State::Start;
                    None
                }
            };
            if item.is_some() {
                return Poll::Ready(item);
            }
        }
    }

    async fn start(&mut self) -> Result<(), JournalError> {
        let (snap, sub) = self.hub.subscribe(&self.run);
        let live = if self.follow { sub } else { None };
        if snap.phase == Phase::Pending && !self.follow {
            self.state = State::Done;
            return Ok(());
        }
        self.state = if snap.last_seq > self.delivered {
            let from = self.delivered + 1;
            let reader = self.history.open(&self.run, from, snap.last_seq, self.resume.take(), self.step).await?;
            State::History { reader, live }
        } else {
            match live {
                Some(sub) => State::Live(sub),
                None => State::Done,
            }
        };
        Ok(())
    }

    /// Advances the cursor over the new frames; None if there are none.
    /// Published seqs are consecutive, but for one case: a gateway's copy
    /// of a host's run whose host journal lost events (the link's `gap`).
    /// A jump is reported as the gap it is, then the frames follow.
    fn deliver(&mut self, batches: Vec<Arc<Batch>>) -> Option<FeedItem> {
        let delivery = Delivery { batches, after: self.delivered };
        let first = delivery.frames().next().map(|f| f.seq)?;
        let last = delivery.frames().last().map(|f| f.seq)?;
        let from = self.delivered.saturating_add(1);
        self.delivered = last;
        if first > from {
            self.held = Some(Box::new(delivery));
            return Some(FeedItem::Gap { from, to: first - 1 });
        }
        Some(FeedItem::Frames(delivery))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventType, OutputData, Payload};
    use crate::hub::QueueLimits;
    use crate::journal::Journal;
    use crate::journal::{RunMeta, RunWriter};

    struct Fixture {
        _dir: tempfile::TempDir,
        journal: Journal,
        hub: Hub,
        id: RunId,
    }

    fn fixture(limits: QueueLimits) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        Fixture { _dir: dir, journal, hub: Hub::new(limits), id: RunId::parse("feed").unwrap() }
    }

    fn append(w: &mut RunWriter, n: usize) {
        for i in 0..n {
            w.append(Payload::Output {
                stream: EventType::Stdout,
                data: OutputData::from_bytes(format!("{i}\n").into_bytes()),
            });
        }
    }

    async fn collect(feed: &mut Feed) -> (Vec<u64>, FeedItem) {
        let mut seqs = Vec::new();
        loop {
            match feed.next().await.unwrap() {
                FeedItem::Frames(d) => seqs.extend(d.frames().map(|f| f.seq)),
                other => return (seqs, other),
            }
        }
    }

    /// A writer races a set of subscribers that join at every point of the
    /// run; each must see exactly 1..=N.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_gap_no_duplicate_whatever_the_timing() {
        let f = fixture(QueueLimits::default());
        let meta = RunMeta { command: vec!["x".into()], created_at: "t".into(), ..Default::default() };
        let mut w = f.journal.create_run(&f.id, &meta).unwrap();
        let publ = f.hub.open(&f.id, 0);
        const BATCHES: usize = 400;
        let mut handles = Vec::new();
        let writer = tokio::spawn(async move {
            for i in 0..BATCHES {
                append(&mut w, 1 + i % 3);
                publ.publish(w.finish_batch(i == BATCHES - 1));
                if i % 7 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            w.last_seq()
        });
        for k in 0..40u64 {
            let mut feed = Feed::new(f.journal.clone(), f.hub.clone(), f.id.clone(), k % 5, true);
            handles.push(tokio::spawn(async move { (k % 5, collect(&mut feed).await) }));
            tokio::task::yield_now().await;
        }
        let total = writer.await.unwrap();
        for h in handles {
            let (since, (seqs, end)) = h.await.unwrap();
            assert!(matches!(end, FeedItem::End), "{end:?}");
            assert_eq!(seqs, (since + 1..=total).collect::<Vec<_>>());
        }
        // And one that arrives after the end.
        let mut late = Feed::new(f.journal.clone(), f.hub.clone(), f.id.clone(), 0, true);
        let (seqs, _) = collect(&mut late).await;
        assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
    }

    /// A gateway's copy skips what a host's journal lost: a live
    /// subscriber gets the hole as a gap, then the frames after it.
    #[tokio::test]
    async fn a_live_seq_jump_is_reported_as_a_gap_before_the_frames() {
        let f = fixture(QueueLimits::default());
        let meta = RunMeta { command: vec!["x".into()], created_at: "t".into(), ..Default::default() };
        let mut w = f.journal.create_run(&f.id, &meta).unwrap();
        let publ = f.hub.open(&f.id, 0);
        append(&mut w, 2);
        publ.publish(w.finish_batch(false));
        let mut feed = Feed::new(f.journal.clone(), f.hub.clone(), f.id.clone(), 0, true);
        let FeedItem::Frames(first) = feed.next().await.unwrap() else { panic!("frames first") };
        assert_eq!(first.frames().map(|f| f.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert!(w.skip_gap(3, 5));
        append(&mut w, 1);
        publ.publish(w.finish_batch(true));
        assert!(matches!(feed.next().await.unwrap(), FeedItem::Gap { from: 3, to: 5 }));
        let FeedItem::Frames(after) = feed.next().await.unwrap() else { panic!("then the frames") };
        assert_eq!(after.frames().map(|f| f.seq).collect::<Vec<_>>(), vec![6]);
        assert!(matches!(feed.next().await.unwrap(), FeedItem::End));
    }

    #[tokio::test]
    async fn subscribe_before_run_exists_waits_for_it() {
        let f = fixture(QueueLimits::default());
        let mut feed = Feed::new(f.journal.clone(), f.hub.clone(), f.id.clone(), 0, true);
        let reader = tokio::spawn(async move { collect(&mut feed).await });
        tokio::task::yield_now().await;
        let meta = RunMeta { command: vec!["x".into()], created_at: "t".into(), ..Default::default() };
        let mut w = f.journal.create_run(&f.id, &meta).unwrap();
        let publ = f.hub.open(&f.id, 0);
        append(&mut w, 5);
        publ.publish(w.finish_batch(true));
        let (seqs, end) = tokio::time::timeout(std::time::Duration::from_secs(5), reader).await.unwrap().unwrap();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
        assert!(matches!(end, FeedItem::End));
    }

    #[tokio::test]
    async fn a_lagging_feed_catches_up_from_the_journal() {
        let f = fixture(QueueLimits { max_bytes: usize::MAX, max_batches: 2 });
        let meta = RunMeta { command: vec!["x".into()], created_at: "t".into(), ..Default::default() };
        let mut w = f.journal.create_run(&f.id, &meta).unwrap();
        let publ = f.hub.open(&f.id, 0);
        let mut feed = Feed::new(f.journal.clone(), f.hub.clone(), f.id.clone(), 0, true);
        append(&mut w, 1);
        publ.publish(w.finish_batch(false));
        let FeedItem::Frames(d) = feed.next().await.unwrap() else { panic!() };
        assert_eq!(d.frames().map(|f| f.seq).collect::<Vec<_>>(), vec![1]);
        for i in 0..5 {
            append(&mut w, 1);
            publ.publish(w.finish_batch(i == 4));
        }
        let (seqs, end) = collect(&mut feed).await;
        assert_eq!(seqs, vec![2, 3, 4, 5, 6]);
        assert!(matches!(end, FeedItem::End));
    }

    /// A feed that lags again and again delivers everything once, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replay_feed_survives_repeated_lags() {
        let f = fixture(QueueLimits { max_bytes: usize::MAX, max_batches: 3 });
        let meta = RunMeta { command: vec!["x".into()], created_at: "t".into(), ..Default::default() };
        let mut w = f.journal.create_run(&f.id, &meta).unwrap();
        let publ = f.hub.open(&f.id, 0);
        let mut feed = Feed::new(f.journal.clone(), f.hub.clone(), f.id.clone(), 0, true);
        let mut seqs = Vec::new();
        for round in 0..20 {
            for i in 0..10 {
                append(&mut w, 1 + i % 2);
                publ.publish(w.finish_batch(round == 19 && i == 9));
            }
            // Read a little each round: always behind, so it lags and replays.
            if let FeedItem::Frames(d) = feed.next().await.unwrap() {
                seqs.extend(d.frames().map(|f| f.seq));
            }
        }
        let (rest, end) = collect(&mut feed).await;
        seqs.extend(rest);
        assert!(matches!(end, FeedItem::End), "{end:?}");
        assert_eq!(seqs, (1..=w.last_seq()).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn no_follow_stops_at_snapshot() {
        let f = fixture(QueueLimits::default());
        let meta = RunMeta { command: vec!["x".into()], created_at: "t".into(), ..Default::default() };
        let mut w = f.journal.create_run(&f.id, &meta).unwrap();
        let publ = f.hub.open(&f.id, 0);
        append(&mut w, 3);
        publ.publish(w.finish_batch(false));
        let mut feed = Feed::new(f.journal.clone(), f.hub.clone(), f.id.clone(), 1, false);
        let (seqs, end) = collect(&mut feed).await;
        assert_eq!(seqs, vec![2, 3]);
        assert!(matches!(end, FeedItem::End));
    }
}
