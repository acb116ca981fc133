//! One run's events for one subscriber of any transport (WebSocket,
//! Socket.IO): its `Feed`, polled by the connection's task.
//!
//! While the feed follows the live stream it is polled directly, so an
//! idle subscriber holds no future. Finding the run (at a gateway this may
//! wait for a host to start it) and reading history run as a boxed future
//! that hands the feed back. A feed that falls behind the live stream goes
//! back to the journal on its own (slow is not stalled), which is why
//! nothing here buffers.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use super::Shared;
use super::backend::LookupError;
use crate::feed::{Delivery, Feed, FeedItem};
use crate::journal::JournalError;
use crate::run_id::RunId;

/// History is read this much at a time for a network subscriber: what one
/// catching up holds (plus its outbox's refill mark), so that a thousand
/// catching up at once stay within tens of MB.
const HISTORY_STEP: usize = 32 * 1024;

/// What a run's stream hands its connection.
pub(crate) enum StreamOut {
    /// Events with `seq` beyond what was handed out before.
    Frames(Delivery),
    /// Events `from..=to` are missing from a degraded journal.
    Gap { from: u64, to: u64 },
    /// The run is over and all of it was handed out.
    End { last_seq: u64 },
    /// The stream cannot go on.
    Fail(StreamError),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error("reading the journal failed: {0}")]
    Journal(#[from] JournalError),
}

impl StreamError {
    /// The error code a client is told (Socket.IO's `error` events).
    pub(crate) fn code(&self) -> &'static str {
        match self {
            StreamError::Lookup(LookupError::Ambiguous(..)) => "ambiguous-run-id",
            StreamError::Lookup(LookupError::NotFound(_) | LookupError::UnknownHost(_)) => "not-found",
            StreamError::Journal(_) => "journal",
        }
    }
}

impl StreamOut {
    pub(crate) fn is_last(&self) -> bool {
        matches!(self, StreamOut::End { .. } | StreamOut::Fail(_))
    }

    fn from_item(feed: &Feed, item: Result<FeedItem, JournalError>) -> StreamOut {
        match item {
            Ok(FeedItem::Frames(d)) => StreamOut::Frames(d),
            Ok(FeedItem::Gap { from, to }) => StreamOut::Gap { from, to },
            Ok(FeedItem::End) => StreamOut::End { last_seq: feed.last_seq() },
            Err(error) => {
                tracing::warn!(run_id = %feed.run_id(), %error, "reading history failed");
                StreamOut::Fail(error.into())
            }
        }
    }
}

type Stepped = Result<(Feed, Result<Option<FeedItem>, JournalError>), LookupError>;

pub(crate) enum RunStream {
    Live(Feed),
    Busy(Pin<Box<dyn Future<Output = Stepped> + Send>>),
    Done,
}

impl RunStream {
    /// Every event of `run` with `seq > since`, history then live.
    pub(crate) fn new(shared: Arc<Shared>, run: RunId, since: u64, host: Option<String>) -> Self {
        RunStream::Busy(Box::pin(async move {
            let source = shared.backend.source(host.as_deref(), &run).await?;
            let mut feed = Feed::new(source.history, source.hub, run, since, true).with_history_step(HISTORY_STEP);
            let item = feed.step().await;
            Ok((feed, item))
        }))
    }

    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<StreamOut> {
        loop {
            let (feed, item) = match self {
                RunStream::Live(feed) => match feed.poll_live(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(item)) => {
                        let out = StreamOut::from_item(feed, Ok(item));
                        if out.is_last() {
                            *self = RunStream::Done;
                        }
                        return Poll::Ready(out);
                    }
                    // Not live (any more): back to the journal.
                    Poll::Ready(None) => {
                        let RunStream::Live(mut feed) = std::mem::replace(self, RunStream::Done) else {
                            return Poll::Pending;
                        };
                        *self = RunStream::Busy(Box::pin(async move {
                            let item = feed.step().await;
                            Ok((feed, item))
                        }));
                        continue;
                    }
                },
                RunStream::Busy(fut) => match ready!(fut.as_mut().poll(cx)) {
                    Ok(stepped) => stepped,
                    Err(e) => {
                        *self = RunStream::Done;
                        return Poll::Ready(StreamOut::Fail(e.into()));
                    }
                },
                // A finished stream is dropped on its last item, before this.
                RunStream::Done => return Poll::Pending,
            };
            match item {
                Ok(None) => *self = RunStream::Live(feed),
                item => {
                    let out = StreamOut::from_item(&feed, item.map(|i| i.unwrap_or(FeedItem::End)));
                    *self = if out.is_last() { RunStream::Done } else { RunStream::Live(feed) };
                    return Poll::Ready(out);
                }
            }
        }
    }
}
