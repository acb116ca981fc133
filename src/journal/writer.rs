//! Appending one run's events: `seq` is assigned here.

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};

use super::encode::{MIN_BATCH_BUFFER, OutputBody, encoded_frame};
use super::state::{Health, HealthBook, RunState};
use super::{Journal, JournalStats};
use crate::event::{Batch, Event, EventType, Frame, Payload, RunStatus, StatusChange, escape_json_into};
use crate::run_id::RunId;

/// Appends one run's events. Owned by the run's supervisor task (or the
/// gateway's session for a host), so no locking.
pub struct RunWriter {
    pub(super) run_id: RunId,
    pub(super) host: Option<Arc<str>>,
    pub(super) path: PathBuf,
    /// Shared with the fsync job, so syncing needs no new file descriptor
    /// (a daemon out of fds must still be able to sync what it holds).
    pub(super) file: Arc<File>,
    /// `runs/<id>/state`, overwritten in place (see `state.rs`); `None` if it
    /// could not be opened.
    pub(super) state_file: Option<File>,
    pub(super) state: RunState,
    /// The final status appended in the current batch, with its timestamp.
    pub(super) final_status: Option<(StatusChange, String)>,
    pub(super) health: Arc<HealthBook>,
    pub(super) next_seq: u64,
    /// `{"runId":"<id>","seq":`, the start of every event line.
    pub(super) line_start: Vec<u8>,
    /// `,"host":"<host>"` when events carry a host, else empty.
    pub(super) host_field: Vec<u8>,
    /// `,"stepId":"<id>"` while a step is open, else empty.
    pub(super) step_field: Vec<u8>,
    pub(super) step: Option<String>,
    /// Serialized events of the current batch, newline-terminated. Each
    /// batch is split off the front, so its frames share one allocation,
    /// and the allocation is reused once every frame cut from it is gone.
    pub(super) buf: BytesMut,
    /// Ranges of `buf` holding each event (without the newline).
    pub(super) pending: Vec<(u64, usize, usize)>,
    /// Size of recent batches (the last, or half the one before if that
    /// was bigger), which sizes `buf`'s allocation.
    pub(super) recent_batch: usize,
    /// Set by the first failed write: the events file is left alone from
    /// then on, so it never holds a torn line in the middle.
    pub(super) degraded: bool,
    /// Bytes written since the last fsync.
    pub(super) unsynced: u64,
    pub(super) stats: Arc<JournalStats>,
    /// Where the next write lands: what a reader of the file may read up to.
    pub(super) offset: u64,
    /// The writer lock (`lock.rs`), when this writer took it.
    pub(super) lock: Option<nix::fcntl::Flock<File>>,
}

impl RunWriter {
    pub(super) fn new(journal: &Journal, run_id: RunId, path: PathBuf, file: File, last_seq: u64) -> Self {
        let state_path = journal.state_path(&run_id);
        let state = RunState::read(&state_path).unwrap_or_default();
        let state_file = RunState::open(&state_path);
        // What is in the file now was checked by recovery or by nobody;
        // what this writer appends is ours.
        let len = file.metadata().ok().map(|m| m.len());
        journal.health.set_written_from(&run_id, len);
        let mut line_start = BytesMut::from(&br#"{"runId":""#[..]);
        escape_json_into(&mut line_start, run_id.as_str());
        line_start.extend_from_slice(br#"","seq":"#);
        let mut host_field = BytesMut::new();
        if let Some(host) = &journal.host {
            host_field.extend_from_slice(br#","host":""#);
            escape_json_into(&mut host_field, host);
            host_field.extend_from_slice(b"\"");
        }
        RunWriter {
            run_id,
            host: journal.host.clone(),
            path,
            file: Arc::new(file),
            state_file,
            state: RunState { last_seq, ..state },
            final_status: None,
            health: journal.health.clone(),
            next_seq: last_seq + 1,
            line_start: line_start.to_vec(),
            host_field: host_field.to_vec(),
            step_field: Vec::new(),
            step: None,
            buf: BytesMut::new(),
            pending: Vec::new(),
            recent_batch: 0,
            // A new writer may try again: recovery cut any torn tail, so an
            // append cannot leave a torn line in the middle. The record
            // keeps saying whether the file is whole.
            degraded: false,
            unsynced: 0,
            stats: journal.stats.clone(),
            offset: len.unwrap_or(0),
            lock: None,
        }
    }

    pub fn run_id(&self) -> &RunId {
        &self.run_id
    }

    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// The end of what this writer has written: every event up to
    /// `last_seq` is below it (unless the journal is degraded).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn is_degraded(&self) -> bool {
        self.degraded
    }

    /// The step that output from now on belongs to (`None`: no step).
    pub fn set_step(&mut self, step: Option<&str>) {
        self.step = step.map(str::to_owned);
        self.step_field.clear();
        if let Some(id) = step {
            let mut field = BytesMut::from(&br#","stepId":""#[..]);
            escape_json_into(&mut field, id);
            field.extend_from_slice(b"\"");
            self.step_field = field.to_vec();
        }
    }

    /// Assigns the next `seq` and serializes the event into the current batch.
    pub fn append(&mut self, payload: Payload) -> u64 {
        if let Payload::Output { stream, data } = &payload {
            return self.push_output(*stream, OutputBody::Text(&data.text, data.encoding));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut event = Event {
            run_id: self.run_id.as_str().to_owned(),
            seq,
            kind: EventType::Status,
            timestamp: crate::event::now_timestamp(),
            host: self.host.as_deref().map(str::to_owned),
            ..Event::default()
        };
        match payload {
            Payload::Output { stream, data } => {
                event.kind = stream;
                event.data = data.text;
                event.encoding = data.encoding;
                event.step_id = self.step.clone();
            }
            Payload::Structured { kind, payload } => {
                event.kind = kind;
                event.payload = Some(payload);
            }
            Payload::Status(change) => {
                if change.status.is_some_and(RunStatus::is_final) {
                    self.final_status = Some((change.clone(), event.timestamp.clone()));
                }
                event.data = change.status.map(RunStatus::as_str).unwrap_or_default().to_owned();
                event.exit_code = change.exit_code;
                event.signal = change.signal;
                event.signal_name = change.signal.and_then(crate::event::signal_name);
                event.reason = change.reason;
                event.pid = change.pid;
            }
        }
        self.push_event(&event);
        seq
    }

    /// Appends an event that already has its `seq` (the gateway's copy of a
    /// host's journal). Returns false, writing nothing, unless it is the next one.
    pub fn append_event(&mut self, event: &Event) -> bool {
        if event.seq != self.next_seq {
            return false;
        }
        self.next_seq += 1;
        if let Some(change) = event.status_change().filter(|c| c.status.is_some_and(RunStatus::is_final)) {
            self.final_status = Some((change, event.timestamp.clone()));
        }
        self.push_event(event);
        true
    }

    /// Records that events `from..=to` will never come (the host's journal
    /// lost them): the next expected seq is `to + 1`, and the run is
    /// degraded, so history reports the hole as a gap. Returns false,
    /// changing nothing, unless `from` is the next seq.
    pub fn skip_gap(&mut self, from: u64, to: u64) -> bool {
        if from != self.next_seq || to < from {
            return false;
        }
        self.next_seq = to + 1;
        self.health.mark(&self.run_id);
        self.state.journal = Health::Degraded;
        self.state.last_seq = to;
        self.save_state();
        true
    }

    /// Journals output bytes as one event: text when they are UTF-8,
    /// base64 otherwise (lossless either way), with no intermediate string.
    pub fn append_output(&mut self, stream: EventType, bytes: &[u8]) -> u64 {
        match std::str::from_utf8(bytes) {
            Ok(text) => self.push_output(stream, OutputBody::Text(text, None)),
            Err(_) => self.push_output(stream, OutputBody::Base64(bytes)),
        }
    }

    /// Writes the batch to the file and returns it for fan-out. Call this
    /// before publishing: history readers rely on published events being in
    /// the file.
    pub fn finish_batch(&mut self, last: bool) -> Batch {
        let bytes: Bytes = self.buf.split().freeze();
        self.recent_batch = bytes.len().max(self.recent_batch / 2);
        if bytes.len() < MIN_BATCH_BUFFER {
            // A quiet spell (or a run's tail): let go of a buffer that a
            // burst may have grown, rather than keep it while the run idles.
            self.buf = BytesMut::new();
        }
        if !self.degraded && !bytes.is_empty() {
            let mut file = &*self.file;
            let written = super::off_workers(|| {
                if let Some(delay) = super::fault_write_delay() {
                    tracing::debug!(run_id = %self.run_id, ?delay, "journal write delayed (fault injection)");
                    std::thread::sleep(delay);
                }
                file.write_all(&bytes)
            });
            match written {
                Ok(()) => {
                    self.offset += bytes.len() as u64;
                    self.unsynced += bytes.len() as u64;
                    self.stats.bytes_written.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                }
                Err(error) => self.degrade(error),
            }
        }
        let frames: Vec<Frame> =
            self.pending.drain(..).map(|(seq, start, end)| encoded_frame(seq, bytes.slice(start..end))).collect();
        if let Some(frame) = frames.last() {
            self.state.last_seq = frame.seq;
        }
        let ended = self.final_status.take();
        // The record only has to keep up when the file cannot: while the
        // journal is degraded, and once, with the final status.
        if self.degraded || ended.is_some() {
            self.state.ended = ended.or(self.state.ended.take());
            self.save_state();
        }
        Batch { frames, last }
    }

    /// Writing the events file failed: from now on only the state record
    /// (which needs no new space) and live subscribers see what happens.
    fn degrade(&mut self, error: io::Error) {
        tracing::error!(run_id = %self.run_id, path = %self.path.display(), %error,
            "journal write failed; run continues live, its journal is degraded");
        self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
        self.degraded = true;
        self.health.mark(&self.run_id);
        // A failed write may have left part of a line: read it all checked.
        self.health.set_written_from(&self.run_id, None);
        self.state.journal = Health::Degraded;
        self.save_state();
    }

    fn save_state(&mut self) {
        let Some(file) = &self.state_file else { return };
        if let Err(error) = super::off_workers(|| self.state.write_to(file)) {
            tracing::error!(run_id = %self.run_id, %error, "cannot update the run's state record");
        }
    }

    /// A handle for an fsync off the async threads, if there is anything to
    /// sync. It shares the writer's descriptor: syncing never needs a new one.
    pub fn take_sync_job(&mut self) -> Option<Arc<File>> {
        if self.unsynced == 0 || self.degraded {
            return None;
        }
        self.unsynced = 0;
        Some(self.file.clone())
    }

    /// An fsync failed: the kernel may have dropped what it could not write.
    pub fn sync_failed(&mut self, error: io::Error) {
        if !self.degraded {
            self.degrade(error);
        }
    }

    /// Blocking fsync, for recovery and tests.
    pub fn sync_now(&mut self) {
        if let Some(f) = self.take_sync_job()
            && let Err(error) = f.sync_data()
        {
            self.sync_failed(error);
        }
    }

    #[cfg(test)]
    fn with_file(mut self, file: File) -> Self {
        self.file = Arc::new(file);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{meta, out};
    use super::*;
    use std::fs::OpenOptions;

    #[test]
    fn failed_write_degrades_without_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let id = RunId::parse("full").unwrap();
        let full = OpenOptions::new().write(true).open("/dev/full").unwrap();
        let mut w = j.create_run(&id, &meta()).unwrap().with_file(full);
        w.append(out("x\n"));
        let batch = w.finish_batch(false);
        assert_eq!(batch.frames.len(), 1, "live fan-out still gets the event");
        assert!(w.is_degraded());
        assert_eq!(j.stats.write_errors.load(Ordering::Relaxed), 1);
        w.append(out("y\n"));
        assert_eq!(w.finish_batch(false).frames[0].seq, 2);
        assert_eq!(j.stats.write_errors.load(Ordering::Relaxed), 1, "no retry storm");
    }
}
