//! One run as a host's link at a NATS replica forwards it: where its
//! subject stands (the fence), what is stored, and the chunks waiting.

use std::time::Instant;

use bytes::{BufMut, BytesMut};

use super::NatsGateway;
use super::index::RunEntry;
use super::names::RunKey;
use super::store::StoreError;
use crate::event::Event;
use crate::run_info::RunInfo;

/// A chunk is appended once it holds this much, without waiting for the
/// tick: well under NATS's default 1 MiB `max_payload`, and a history
/// read hands out about this much at a time.
pub(super) const CHUNK_BYTES: usize = 256 * 1024;

/// One run being forwarded over this link.
pub(super) struct RunLink {
    pub(super) key: RunKey,
    pub(super) info: RunInfo,
    /// Stream sequence of the subject's last chunk (the fence).
    pub(super) expected: u64,
    /// Last event seq JetStream acknowledged.
    pub(super) stored: u64,
    /// Chunks waiting to be appended: `(first, last, gap, final, body)`.
    pub(super) chunks: Vec<(u64, u64, bool, bool, BytesMut)>,
    /// The next event seq the host may send.
    pub(super) next: u64,
    pub(super) row_dirty: bool,
    pub(super) status_changed: bool,
    pub(super) row_written: Option<Instant>,
}

impl RunLink {
    pub(super) fn queued_bytes(&self) -> usize {
        self.chunks.last().map_or(0, |c| c.4.len())
    }

    /// Adds an event (the next seq) to the last chunk, or starts one.
    pub(super) fn push(&mut self, event: &Event, last_chunk: bool) {
        self.row_dirty = true;
        let open = self.chunks.last().is_some_and(|c| !c.2 && !c.3 && c.4.len() < CHUNK_BYTES);
        if !open {
            self.chunks.push((event.seq, event.seq, false, false, BytesMut::new()));
        }
        if let Some(chunk) = self.chunks.last_mut() {
            chunk.1 = event.seq;
            chunk.3 = last_chunk;
            let mut w = std::mem::take(&mut chunk.4).writer();
            // Serializing plain structs of strings and integers into memory cannot fail.
            let _ = serde_json::to_writer(&mut w, event);
            chunk.4 = w.into_inner();
            chunk.4.put_u8(b'\n');
        }
        self.next = event.seq + 1;
    }

    pub(super) async fn append(&mut self, gw: &NatsGateway) -> Result<bool, StoreError> {
        let any = !self.chunks.is_empty();
        for (first, last, gap, last_chunk, body) in std::mem::take(&mut self.chunks) {
            let seq = gw
                .store()
                .append(&self.key, self.expected, (first, last), (gap, last_chunk), gw.replica(), body.freeze())
                .await?;
            self.expected = seq;
            self.stored = last;
            gw.count_appended(last + 1 - first);
        }
        Ok(any)
    }

    pub(super) fn row(&self, host: &str, epoch: &str) -> RunEntry {
        let mut info = self.info.clone();
        info.last_seq = self.stored;
        RunEntry { host: host.to_owned(), epoch: epoch.to_owned(), info }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run_id::RunId;

    fn event(seq: u64, data: &str) -> Event {
        let line = format!(r#"{{"runId":"r","seq":{seq},"type":"stdout","data":"{data}","timestamp":"t"}}"#);
        serde_json::from_str(&line).unwrap()
    }

    fn run_link() -> RunLink {
        let info = RunInfo::queued(RunId::parse("r").unwrap(), crate::journal::RunMeta::default());
        RunLink {
            key: RunKey::new("h", "e", "r", "t"),
            info,
            expected: 0,
            stored: 0,
            chunks: Vec::new(),
            next: 1,
            row_dirty: false,
            status_changed: false,
            row_written: None,
        }
    }

    /// Events go into chunks of consecutive seqs, one line each, a new
    /// chunk once one is full; a history read gets them back as they were.
    #[test]
    fn chunks_hold_consecutive_lines_and_read_back() {
        let mut r = run_link();
        let big = "x".repeat(100 * 1024);
        for seq in 1..=5 {
            r.push(&event(seq, &big), false);
        }
        r.push(&event(6, "last"), true);
        let ranges: Vec<(u64, u64, bool)> = r.chunks.iter().map(|c| (c.0, c.1, c.3)).collect();
        assert_eq!(ranges, vec![(1, 3, false), (4, 6, true)]);
        assert_eq!(r.next, 7);
        let body = r.chunks[1].4.clone().freeze();
        let frames = super::super::history::frames(&body, 4, 5, u64::MAX).unwrap();
        assert_eq!(frames.iter().map(|f| f.seq).collect::<Vec<_>>(), vec![5, 6]);
        let back: Event = serde_json::from_str(frames[1].json.as_str()).unwrap();
        assert_eq!((back.seq, back.data.as_str()), (6, "last"));
        // A body that does not end in a newline is not a chunk.
        assert!(super::super::history::frames(&body.slice(..body.len() - 1), 4, 4, u64::MAX).is_none());
    }
}
