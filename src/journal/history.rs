//! Reading a run's journal back: history for subscribers and replays.
//!
//! One rule for damage, whatever its kind (a torn or deleted line, a line
//! that is not JSON or not UTF-8, a file that ends early or is missing):
//! every intact event is served, each missing range is reported once as a
//! [`HistoryItem::Gap`], and the run is marked degraded in the journal's
//! [`HealthBook`] and its state record. A reader never fails on what it
//! finds in the file, only on I/O errors.

use std::io::{self, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;

use super::layout::EVENTS_FILE;
use super::lines::{event_seq, line_seq};
use super::state::{Health, HealthBook, RunState};
use super::{Journal, JournalError, io_err};
use crate::event::{Frame, Utf8Bytes};
use crate::run_id::RunId;

/// Most frames one history read hands out.
const HISTORY_FRAMES: usize = 1024;
/// Most bytes one history read hands out, and reads from the file at a
/// time, unless the reader asks for another step (`with_step`): large
/// enough that a replay is a few syscalls per MB.
pub const HISTORY_STEP: usize = 1024 * 1024;
/// Largest read from the file: a few syscalls per MB, and no more memory
/// in flight per reader than this plus what it handed out.
const READ_CHUNK: usize = 256 * 1024;
/// Opening a journal that fails for want of file descriptors (EMFILE,
/// ENFILE) is retried this many times, waiting twice as long each time from
/// [`OPEN_RETRY_FIRST`] (about 2.5 s in all): a connection flood passes, a
/// subscriber should not be cut off for it.
const OPEN_RETRIES: u32 = 8;
const OPEN_RETRY_FIRST: Duration = Duration::from_millis(10);

/// What a history read hands out.
#[derive(Debug)]
pub enum HistoryItem {
    /// Intact events, in order, with no gap between them.
    Frames(Vec<Frame>),
    /// Events `from..=to` are not (intact) in the file.
    Gap { from: u64, to: u64 },
    /// `until` is reached.
    End,
}

impl Journal {
    /// Opens a reader over the events with `seq` in `from..=until`. A
    /// missing events file reads as a gap over the whole range.
    pub async fn history(&self, id: &RunId, from: u64, until: u64) -> Result<HistoryReader, JournalError> {
        let path = self.run_dir(id).join(EVENTS_FILE);
        let mut wait = OPEN_RETRY_FIRST;
        let mut retries = 0;
        let file = loop {
            match tokio::fs::File::open(&path).await {
                Ok(f) => break Some(f),
                Err(e) if e.kind() == io::ErrorKind::NotFound => break None,
                Err(e) if out_of_fds(&e) && retries < OPEN_RETRIES => {
                    tracing::debug!(run_id = %id, error = %e, ?wait, "no file descriptor to read a journal; retrying");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                    retries += 1;
                }
                Err(e) => return Err(io_err("open journal", &path)(e)),
            }
        };
        Ok(HistoryReader {
            run: id.clone(),
            health: self.health.clone(),
            state_path: self.state_path(id),
            path,
            file,
            buf: BytesMut::new(),
            next: from,
            until,
            eof: false,
            consumed: 0,
            gap: None,
            step: HISTORY_STEP,
            written_from: self.health.written_from(id),
        })
    }

    /// Like `history`, but starting at a byte offset a previous reader
    /// reported (`HistoryReader::position`), so a replay does not re-read
    /// the journal from its start.
    pub async fn history_at(
        &self,
        id: &RunId,
        offset: u64,
        from: u64,
        until: u64,
    ) -> Result<HistoryReader, JournalError> {
        use tokio::io::AsyncSeekExt;
        let mut reader = self.history(id, from, until).await?;
        if let Some(file) = &mut reader.file {
            file.seek(SeekFrom::Start(offset)).await.map_err(io_err("seek journal", &reader.path))?;
            reader.consumed = offset;
        }
        Ok(reader)
    }
}

/// EMFILE or ENFILE: the process or the system is out of descriptors.
fn out_of_fds(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Reads a run's journal from `seq = from` up to `until`, in chunks.
pub struct HistoryReader {
    run: RunId,
    health: Arc<HealthBook>,
    state_path: PathBuf,
    path: PathBuf,
    /// `None`: the events file is missing.
    file: Option<tokio::fs::File>,
    buf: BytesMut,
    next: u64,
    until: u64,
    eof: bool,
    /// Bytes of the file handed out or skipped: where line `next` starts
    /// (once `buf` is drained).
    consumed: u64,
    /// A gap found after the frames just handed out, to hand out next.
    gap: Option<(u64, u64)>,
    /// Bytes handed out, and read from the file, at a time.
    step: usize,
    /// From this offset on, lines were written by this process (see
    /// `HealthBook::written_from`): their syntax is not checked again.
    written_from: Option<u64>,
}

impl HistoryReader {
    /// Reads and hands out `bytes` at a time: what one subscriber catching
    /// up holds in memory. Small for network subscribers (a thousand may
    /// catch up at once), large for one fast local reader.
    pub fn with_step(mut self, bytes: usize) -> Self {
        self.step = bytes.max(4096);
        self
    }

    /// `(next seq, byte offset of its line)`, for `Journal::history_at`.
    /// `consumed` counts exactly the lines handed out or skipped, so this
    /// holds whatever is still buffered beyond them.
    pub fn position(&self) -> Option<(u64, u64)> {
        self.file.as_ref().map(|_| (self.next, self.consumed))
    }

    /// The next frames (up to `HISTORY_FRAMES` and the step), or the
    /// next gap, or `End` once `until` is reached.
    pub async fn next(&mut self) -> Result<HistoryItem, JournalError> {
        if let Some((from, to)) = self.gap.take() {
            return Ok(HistoryItem::Gap { from, to });
        }
        let mut frames = Vec::new();
        let mut bytes = 0;
        while frames.len() < HISTORY_FRAMES && bytes < self.step && self.next <= self.until {
            let Some(nl) = memchr::memchr(b'\n', &self.buf) else {
                if !frames.is_empty() {
                    break; // hand out what we have before reading on
                }
                if self.eof || self.file.is_none() {
                    // The file ends before `until`: the rest never reached it.
                    let gap = (self.next, self.until);
                    self.next = self.until.saturating_add(1);
                    return Ok(self.found_gap(gap, frames));
                }
                self.read_more().await?;
                continue;
            };
            let line = self.buf.split_to(nl + 1).freeze();
            self.consumed += line.len() as u64;
            let json = line.slice(..nl);
            let ours = self.written_from.is_some_and(|from| self.consumed - line.len() as u64 >= from);
            let seq = if ours { line_seq(&json) } else { event_seq(&json) };
            let Some((seq, json)) = seq.and_then(|seq| Some((seq, Utf8Bytes::try_from(json).ok()?))) else {
                // Damaged: skipped; the next intact line's seq (or the end
                // of the file) says which events it took with it.
                self.mark_degraded();
                continue;
            };
            if seq < self.next {
                continue; // before the range, or a line repeated
            }
            if seq > self.next || seq > self.until {
                // Lines are missing before this one (or it is past the range,
                // which ends with events the file does not hold): put it back,
                // so `position` points at it, and report the gap.
                self.put_back(line);
                let gap = (self.next, (seq - 1).min(self.until));
                self.next = gap.1.saturating_add(1);
                return Ok(self.found_gap(gap, frames));
            }
            self.next = seq.saturating_add(1);
            bytes += json.len();
            frames.push(Frame { seq, json });
        }
        Ok(if frames.is_empty() { HistoryItem::End } else { HistoryItem::Frames(frames) })
    }

    /// The first seq not yet returned.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    async fn read_more(&mut self) -> Result<(), JournalError> {
        let Some(file) = &mut self.file else { return Ok(()) };
        self.buf.reserve(self.step.min(READ_CHUNK));
        let n = file.read_buf(&mut self.buf).await.map_err(io_err("read journal", &self.path))?;
        self.eof = n == 0;
        Ok(())
    }

    fn put_back(&mut self, line: Bytes) {
        self.consumed -= line.len() as u64;
        let mut rest = BytesMut::with_capacity(line.len() + self.buf.len());
        rest.extend_from_slice(&line);
        rest.extend_from_slice(&self.buf);
        self.buf = rest;
    }

    /// Hands out `frames` first if there are any, the gap after them.
    fn found_gap(&mut self, (from, to): (u64, u64), frames: Vec<Frame>) -> HistoryItem {
        self.mark_degraded();
        tracing::warn!(run_id = %self.run, from, to, "events missing from the journal; reported as a gap");
        if frames.is_empty() {
            HistoryItem::Gap { from, to }
        } else {
            self.gap = Some((from, to));
            HistoryItem::Frames(frames)
        }
    }

    /// Damage found: the run's journal is degraded, in memory and in its
    /// state record, so that it is reported so after a restart too.
    fn mark_degraded(&self) {
        if !self.health.mark(&self.run) {
            return;
        }
        tracing::warn!(run_id = %self.run, path = %self.path.display(), "damaged journal: the run is marked degraded");
        let mut state = RunState::read(&self.state_path).unwrap_or_default();
        state.journal = Health::Degraded;
        if let Some(file) = RunState::open(&self.state_path)
            && let Err(error) = state.write_to(&file)
        {
            tracing::error!(run_id = %self.run, %error, "cannot record the damage in the run's state record");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{meta, out};
    use super::*;

    #[tokio::test]
    async fn appends_and_replays_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let id = RunId::parse("r1").unwrap();
        let mut w = j.create_run(&id, &meta()).unwrap();
        for i in 0..10 {
            w.append(out(&format!("line {i}\n")));
        }
        let batch = w.finish_batch(false);
        assert_eq!(batch.frames.iter().map(|f| f.seq).collect::<Vec<_>>(), (1..=10).collect::<Vec<_>>());
        let mut r = j.history(&id, 4, 7).await.unwrap();
        let mut seqs = Vec::new();
        while let HistoryItem::Frames(frames) = r.next().await.unwrap() {
            seqs.extend(frames.iter().map(|f| f.seq));
        }
        assert_eq!(seqs, vec![4, 5, 6, 7]);
        assert!(matches!(j.create_run(&id, &meta()), Err(JournalError::Exists(_))));
    }
}
