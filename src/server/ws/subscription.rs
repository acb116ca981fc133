//! One subscription of a WebSocket session.
//!
//! While a subscription follows the live stream it is just its `Feed`,
//! polled directly, so an idle subscriber holds no future. Finding the run
//! (at a gateway this may wait for a host to start it) and reading history
//! run as a boxed future that hands the feed back.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use super::error::WsError;
use crate::event::Utf8Bytes;
use crate::feed::{Delivery, Feed, FeedItem};
use crate::journal::JournalError;
use crate::run_id::RunId;
use crate::server::Shared;

/// History is read this much at a time for a WebSocket subscriber: what
/// one catching up holds (plus the outbox's refill mark), so that a
/// thousand catching up at once stay within tens of MB.
const HISTORY_STEP: usize = 32 * 1024;

/// What a subscription hands the session.
pub(super) enum SubOut {
    /// Events of the run.
    Frames(Delivery),
    /// A message of the session's own (a journal gap notice).
    Text(Utf8Bytes),
    /// The run is over and all of it was delivered.
    End { run: RunId, last_seq: u64 },
    /// The subscription failed; the session closes with this error.
    Fail(WsError),
}

/// What a step through the journal gives back: the feed, and what it found.
pub(super) type Stepped = Result<(Feed, Result<Option<FeedItem>, JournalError>), WsError>;

/// One subscription. While it follows the live stream it is just its feed,
/// polled directly: an idle subscriber holds no future. Finding the run (at
/// a gateway this may wait for a host to start it) and reading history
/// run as a boxed future that hands the feed back.
pub(super) enum Sub {
    Live(Feed),
    Busy(Pin<Box<dyn Future<Output = Stepped> + Send>>),
    Done,
}

impl Sub {
    pub(super) fn new(shared: Arc<Shared>, run: RunId, since: u64, host: Option<String>) -> Self {
        Sub::Busy(Box::pin(async move {
            let source = match shared.backend.source(host.as_deref(), &run).await {
                Ok(source) => source,
                Err(e) => return Err(WsError::bad_request(e.to_string()).with_run(run)),
            };
            // Slow is not stalled: a subscriber that falls behind the live
            // stream catches up from the journal at its own pace.
            let mut feed = Feed::new(source.journal, source.hub, run, since, true).with_history_step(HISTORY_STEP);
            let item = feed.step().await;
            Ok((feed, item))
        }))
    }

    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<SubOut> {
        loop {
            let (feed, item) = match self {
                Sub::Live(feed) => match feed.poll_live(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(item)) => {
                        let out = SubOut::from_item(feed, Ok(item));
                        if out.is_last() {
                            *self = Sub::Done;
                        }
                        return Poll::Ready(out);
                    }
                    // Not live (any more): back to the journal.
                    Poll::Ready(None) => {
                        let Sub::Live(mut feed) = std::mem::replace(self, Sub::Done) else {
                            return Poll::Pending;
                        };
                        *self = Sub::Busy(Box::pin(async move {
                            let item = feed.step().await;
                            Ok((feed, item))
                        }));
                        continue;
                    }
                },
                Sub::Busy(fut) => match ready!(fut.as_mut().poll(cx)) {
                    Ok(stepped) => stepped,
                    Err(err) => {
                        *self = Sub::Done;
                        return Poll::Ready(SubOut::Fail(err));
                    }
                },
                // A finished subscription is removed on its last item, before this.
                Sub::Done => return Poll::Pending,
            };
            match item {
                Ok(None) => *self = Sub::Live(feed),
                item => {
                    let out = SubOut::from_item(&feed, item.map(|i| i.unwrap_or(FeedItem::End)));
                    *self = if out.is_last() { Sub::Done } else { Sub::Live(feed) };
                    return Poll::Ready(out);
                }
            }
        }
    }
}

impl SubOut {
    pub(super) fn is_last(&self) -> bool {
        matches!(self, SubOut::End { .. } | SubOut::Fail(_))
    }

    fn from_item(feed: &Feed, item: Result<FeedItem, JournalError>) -> SubOut {
        let run = || feed.run_id().clone();
        match item {
            Ok(FeedItem::Frames(d)) => SubOut::Frames(d),
            Ok(FeedItem::Gap { from, to }) => {
                let msg = format!("events {from}..={to} are missing from the degraded journal");
                SubOut::Text(WsError::new("journal-gap", 0, msg).with_run(run()).to_json())
            }
            Ok(FeedItem::End) => SubOut::End { run: run(), last_seq: feed.last_seq() },
            Err(error) => {
                tracing::warn!(run_id = %feed.run_id(), %error, "reading history failed");
                SubOut::Fail(WsError::new("journal", 1011, error.to_string()).with_run(run()))
            }
        }
    }
}
