//! Where a feed reads a run's history: the run's journal on this machine,
//! or an event store elsewhere (a gateway replica on NATS JetStream reads
//! the shared stream).
//!
//! The feed's rules (no gap, no duplicate, slow is not stalled) live in
//! `feed.rs` once, whichever this is: a store only has to hand out intact
//! frames in seq order, report what it lacks as a gap, and say where it
//! stopped so a replay after a lag does not start over.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::journal::{HistoryItem, HistoryReader, Journal, JournalError};
use crate::run_id::RunId;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A run's history, wherever it is kept.
#[derive(Clone)]
pub(crate) enum History {
    Journal(Journal),
    Store(Arc<dyn HistoryStore>),
}

impl From<Journal> for History {
    fn from(journal: Journal) -> Self {
        History::Journal(journal)
    }
}

/// Events kept outside this machine's journals.
pub(crate) trait HistoryStore: Send + Sync + 'static {
    /// A reader over the events with `seq` in `from..=until`. `resume` is
    /// a position an earlier reader of the same run reported
    /// ([`HistoryRead::position`]), a hint the store may use to skip ahead.
    fn read<'a>(
        &'a self,
        run: &'a RunId,
        from: u64,
        until: u64,
        resume: Option<(u64, u64)>,
    ) -> BoxFuture<'a, Result<Box<dyn HistoryRead>, JournalError>>;
}

/// One pass over a stored run, as a journal's [`HistoryReader`] is.
pub(crate) trait HistoryRead: Send {
    /// Frames in order, a gap, or `End` once `until` is reached.
    fn next(&mut self) -> BoxFuture<'_, Result<HistoryItem, JournalError>>;
    /// `(next seq, the store's own position of it)`.
    fn position(&self) -> Option<(u64, u64)>;
}

/// An open pass over a run's history.
pub(crate) enum Reader {
    File(Box<HistoryReader>),
    Store(Box<dyn HistoryRead>),
}

impl Reader {
    pub(crate) async fn next(&mut self) -> Result<HistoryItem, JournalError> {
        match self {
            Reader::File(r) => r.next().await,
            Reader::Store(r) => r.next().await,
        }
    }

    pub(crate) fn position(&self) -> Option<(u64, u64)> {
        match self {
            Reader::File(r) => r.position(),
            Reader::Store(r) => r.position(),
        }
    }
}

impl History {
    /// Opens a pass over `from..=until`, `step` bytes at a time (a journal's
    /// read size; a store hands out what it stores together).
    pub(crate) async fn open(
        &self,
        run: &RunId,
        from: u64,
        until: u64,
        resume: Option<(u64, u64)>,
        step: usize,
    ) -> Result<Reader, JournalError> {
        match self {
            History::Journal(journal) => {
                let reader = match resume {
                    // Lines between the saved offset and `from` were sent
                    // live; the reader skips them.
                    Some((next, offset)) if next <= from => journal.history_at(run, offset, from, until).await?,
                    _ => journal.history(run, from, until).await?,
                };
                Ok(Reader::File(Box::new(reader.with_step(step))))
            }
            History::Store(store) => Ok(Reader::Store(store.read(run, from, until, resume).await?)),
        }
    }
}
