//! A run's history read back from the stream by direct get, chunk after
//! chunk on its subject: no consumer per viewer (creating thousands of
//! them is slow, and idle ones cost the servers CPU).

use std::sync::Arc;

use bytes::Bytes;

use super::names::RunKey;
use super::store::{Chunk, Store};
use crate::event::{Frame, Utf8Bytes};
use crate::history::{HistoryRead, HistoryStore};
use crate::journal::{HistoryItem, JournalError};
use crate::run_id::RunId;

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// One run incarnation's chunks, as a feed's history.
pub(super) struct RunChunks {
    pub store: Store,
    pub key: RunKey,
}

impl HistoryStore for RunChunks {
    fn read<'a>(
        &'a self,
        _run: &'a RunId,
        from: u64,
        until: u64,
        resume: Option<(u64, u64)>,
    ) -> BoxFuture<'a, Result<Box<dyn HistoryRead>, JournalError>> {
        let cursor = match resume {
            Some((next, cursor)) if next <= from => cursor,
            _ => 1,
        };
        let reader =
            ChunkReader { store: self.store.clone(), key: self.key.clone(), next: from, until, cursor, held: None };
        Box::pin(std::future::ready(Ok(Box::new(reader) as Box<dyn HistoryRead>)))
    }
}

struct ChunkReader {
    store: Store,
    key: RunKey,
    /// The next event seq to hand out.
    next: u64,
    until: u64,
    /// The stream sequence to read on from.
    cursor: u64,
    /// A chunk read past a gap, handed out after it.
    held: Option<Chunk>,
}

impl HistoryRead for ChunkReader {
    fn next(&mut self) -> BoxFuture<'_, Result<HistoryItem, JournalError>> {
        Box::pin(self.read_next())
    }

    fn position(&self) -> Option<(u64, u64)> {
        Some((self.next, self.cursor))
    }
}

impl ChunkReader {
    async fn read_next(&mut self) -> Result<HistoryItem, JournalError> {
        loop {
            if self.next > self.until {
                return Ok(HistoryItem::End);
            }
            let chunk = match self.held.take() {
                Some(c) => c,
                None => match self.store.chunk_from(&self.key, self.cursor).await {
                    Ok(Some(c)) => c,
                    // The stream lacks the rest (retention took it): say so.
                    Ok(None) => return Ok(self.gap_to(self.until)),
                    Err(e) => return Err(JournalError::Store(e.to_string())),
                },
            };
            self.cursor = chunk.stream_seq + 1;
            if chunk.last < self.next {
                continue;
            }
            if chunk.first > self.next {
                // Older chunks aged out of the stream (or a gap the host
                // reported): the hole first, then this chunk.
                let to = (chunk.first - 1).min(self.until);
                self.held = Some(chunk);
                return Ok(self.gap_to(to));
            }
            if chunk.gap {
                return Ok(self.gap_to(chunk.last.min(self.until)));
            }
            match frames(&chunk.body, chunk.first, self.next, self.until) {
                Some(frames) if !frames.is_empty() => {
                    self.next = frames.last().map_or(self.next, |f| f.seq + 1);
                    return Ok(HistoryItem::Frames(frames));
                }
                // A chunk that does not hold what its headers say (not
                // written by a replica): its range is a gap.
                _ => return Ok(self.gap_to(chunk.last.min(self.until))),
            }
        }
    }

    fn gap_to(&mut self, to: u64) -> HistoryItem {
        let gap = HistoryItem::Gap { from: self.next, to };
        self.next = to.saturating_add(1);
        gap
    }
}

/// The frames of a chunk's body (one event per line, `first` on) that fall
/// in `from..=until`; `None` if the body is not that.
pub(super) fn frames(body: &Bytes, first: u64, from: u64, until: u64) -> Option<Vec<Frame>> {
    let mut out = Vec::new();
    let mut start = 0;
    for (seq, nl) in (first..).zip(memchr::memchr_iter(b'\n', body)) {
        let line = body.slice(start..nl);
        start = nl + 1;
        if (from..=until).contains(&seq) {
            out.push(Frame { seq, json: Utf8Bytes::try_from(line).ok()? });
        }
    }
    (start == body.len()).then_some(out)
}

/// The history of `key` behind a feed.
pub(super) fn of(store: &Store, key: RunKey) -> crate::history::History {
    crate::history::History::Store(Arc::new(RunChunks { store: store.clone(), key }))
}
