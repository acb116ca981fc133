//! Reading a run's journal back: history for subscribers and replays.

use std::io::{self, SeekFrom};
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;

use super::layout::EVENTS_FILE;
use super::{Journal, JournalError, io_err};
use crate::event::{Event, Frame, Utf8Bytes};
use crate::run_id::RunId;

/// Most frames, and bytes, one history read hands out: bounds what a slow
/// subscriber's pending delivery can hold, and lets a replay interleave
/// with other work.
const HISTORY_FRAMES: usize = 1024;
const HISTORY_BYTES: usize = 1024 * 1024;
/// Read size when replaying history; large enough that a replay is a few syscalls per MB.
const READ_CHUNK: usize = 256 * 1024;

impl Journal {
    /// Opens a reader over the events with `seq` in `from..=until`.
    pub async fn history(&self, id: &RunId, from: u64, until: u64) -> Result<HistoryReader, JournalError> {
        let path = self.run_dir(id).join(EVENTS_FILE);
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(JournalError::NotFound(id.clone())),
            Err(e) => return Err(io_err("open journal", &path)(e)),
        };
        Ok(HistoryReader { path, file, buf: BytesMut::new(), next: from, until, eof: false, consumed: 0 })
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
        reader.file.seek(SeekFrom::Start(offset)).await.map_err(io_err("seek journal", &reader.path))?;
        reader.consumed = offset;
        Ok(reader)
    }
}

/// Reads a run's journal from `seq = from` up to `until`, in chunks.
pub struct HistoryReader {
    path: PathBuf,
    file: tokio::fs::File,
    buf: BytesMut,
    next: u64,
    until: u64,
    eof: bool,
    /// Bytes of the file handed out or skipped: where line `next` starts
    /// (once `buf` is drained).
    consumed: u64,
}

impl HistoryReader {
    /// `(next seq, byte offset of its line)`, for `Journal::history_at`.
    /// `consumed` counts exactly the lines handed out or skipped, so this
    /// holds whatever is still buffered beyond them.
    pub fn position(&self) -> Option<(u64, u64)> {
        Some((self.next, self.consumed))
    }

    /// The next frames (up to `HISTORY_FRAMES` and `HISTORY_BYTES`), or an empty vec once
    /// `until` (or the end of the file) is reached.
    pub async fn next_frames(&mut self) -> Result<Vec<Frame>, JournalError> {
        let mut frames = Vec::new();
        let mut bytes = 0;
        while frames.len() < HISTORY_FRAMES && bytes < HISTORY_BYTES && self.next <= self.until {
            let Some(nl) = memchr::memchr(b'\n', &self.buf) else {
                if !frames.is_empty() || self.eof {
                    // Hand out what we have; or the file ends before `until`
                    // (a degraded journal) and the caller reports the gap.
                    break;
                }
                self.buf.reserve(READ_CHUNK);
                let n = self.file.read_buf(&mut self.buf).await.map_err(io_err("read journal", &self.path))?;
                self.eof = n == 0;
                continue;
            };
            let line = self.buf.split_to(nl + 1).freeze();
            self.consumed += line.len() as u64;
            let json = line.slice(..nl);
            let corrupt = |why: &str| JournalError::Corrupt { path: self.path.clone(), why: why.to_owned() };
            let seq = line_seq(&json).ok_or_else(|| corrupt("line without a seq"))?;
            if seq > self.until {
                // Not ours yet: put it back, so `position` points at it.
                self.consumed -= line.len() as u64;
                let mut rest = BytesMut::from(&line[..]);
                rest.extend_from_slice(&self.buf);
                self.buf = rest;
                self.next = self.until + 1;
                break;
            }
            if seq >= self.next {
                let json = Utf8Bytes::try_from(json).map_err(|_| corrupt("line is not UTF-8"))?;
                self.next = seq + 1;
                bytes += json.len();
                frames.push(Frame { seq, json });
            }
        }
        Ok(frames)
    }

    /// The first seq not yet returned.
    pub fn next_seq(&self) -> u64 {
        self.next
    }
}

/// The `timestamp` of one journal line.
pub(super) fn line_timestamp(json: &[u8]) -> Option<String> {
    serde_json::from_slice::<Event>(json).ok().map(|e| e.timestamp)
}

/// serde_json writes UTF-8, so this cannot fail for our own events; it is
/// the one validation each event gets before being shared as a text frame.
pub(super) fn utf8(bytes: Bytes) -> Option<Utf8Bytes> {
    Utf8Bytes::try_from(bytes).ok()
}

/// Pulls `seq` out of a journal line without parsing the whole event.
/// Every line starts `{"runId":"<id>","seq":N,` (field order is fixed by `Event`).
pub fn line_seq(json: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"seq\":";
    let search = &json[..json.len().min(MAX_SEQ_OFFSET)];
    let at = search.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = json[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&json[at..at + digits]).ok()?.parse().ok()
}

/// `{"runId":"` + 128-byte ID + `","seq":` fits well within this.
const MAX_SEQ_OFFSET: usize = 200;

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
        loop {
            let frames = r.next_frames().await.unwrap();
            if frames.is_empty() {
                break;
            }
            seqs.extend(frames.iter().map(|f| f.seq));
        }
        assert_eq!(seqs, vec![4, 5, 6, 7]);
        assert!(matches!(j.create_run(&id, &meta()), Err(JournalError::Exists(_))));
    }

    #[test]
    fn line_seq_reads_prefix() {
        assert_eq!(line_seq(br#"{"runId":"a","seq":17,"type":"stdout"}"#), Some(17));
        assert_eq!(line_seq(br#"{"runId":"a"}"#), None);
    }
}
