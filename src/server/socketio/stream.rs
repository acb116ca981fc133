//! One run's stream for a Socket.IO connection: its `Feed`, polled by the
//! connection's task.
//!
//! The same shape as `ws::subscription::Sub`: while the feed follows the
//! live stream it is polled directly, so an idle subscriber holds no
//! future; finding the run (at a gateway this may wait for a host) and
//! reading history run as a boxed future that hands the feed back. A feed
//! that falls behind the live stream goes back to the journal on its own
//! (slow is not stalled), which is why nothing here buffers.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use super::limits::HISTORY_STEP;
use crate::feed::{Delivery, Feed, FeedItem};
use crate::journal::JournalError;
use crate::run_id::RunId;
use crate::server::Shared;
use crate::server::backend::LookupError;

/// What a run's stream hands the connection.
pub(super) enum StreamOut {
    /// Events with `seq` beyond what was handed out before.
    Frames(Delivery),
    /// Events `from..=to` are missing from a degraded journal.
    Gap { from: u64, to: u64 },
    /// The run is over and all of it was handed out.
    End { last_seq: u64 },
    /// The stream cannot go on: `code` (`not-found`, `ambiguous-run-id`, `journal`) and why.
    Fail { code: &'static str, message: String },
}

type Stepped = Result<(Feed, Result<Option<FeedItem>, JournalError>), LookupError>;

pub(super) enum RunStream {
    Live(Feed),
    Busy(Pin<Box<dyn Future<Output = Stepped> + Send>>),
    Done,
}

impl RunStream {
    /// Every event of `run` with `seq > since`, history then live.
    pub(super) fn new(shared: Arc<Shared>, run: RunId, since: u64, host: Option<String>) -> Self {
        RunStream::Busy(Box::pin(async move {
            let source = shared.backend.source(host.as_deref(), &run).await?;
            let mut feed = Feed::new(source.journal, source.hub, run, since, true).with_history_step(HISTORY_STEP);
            let item = feed.step().await;
            Ok((feed, item))
        }))
    }

    pub(super) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<StreamOut> {
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
                        let code = match e {
                            LookupError::Ambiguous(..) => "ambiguous-run-id",
                            LookupError::NotFound(_) | LookupError::UnknownHost(_) => "not-found",
                        };
                        return Poll::Ready(StreamOut::Fail { code, message: e.to_string() });
                    }
                },
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

impl StreamOut {
    fn is_last(&self) -> bool {
        matches!(self, StreamOut::End { .. } | StreamOut::Fail { .. })
    }

    fn from_item(feed: &Feed, item: Result<FeedItem, JournalError>) -> StreamOut {
        match item {
            Ok(FeedItem::Frames(d)) => StreamOut::Frames(d),
            Ok(FeedItem::Gap { from, to }) => StreamOut::Gap { from, to },
            Ok(FeedItem::End) => StreamOut::End { last_seq: feed.last_seq() },
            Err(error) => {
                tracing::warn!(run_id = %feed.run_id(), %error, "reading history failed");
                StreamOut::Fail { code: "journal", message: error.to_string() }
            }
        }
    }
}
