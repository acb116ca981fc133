//! The per-run append-only journal: the single source of truth and of `seq`.
//!
//! Layout under the state dir:
//!
//! ```text
//! runs/<run-id>/meta.json     how the run was launched (command, cwd, pty)
//! runs/<run-id>/events.jsonl  one event per line, exactly the wire JSON,
//!                             seq 1, 2, 3, ... in order
//! ```
//!
//! Events are written (handed to the OS) before they are fanned out, so a
//! subscriber that saw `seq = N` live can always re-read 1..=N from here.
//! Durability: the writer fsyncs at most every `fsync_interval` while a run
//! is producing (group commit) and always after the final status. A torn
//! last line left by a crash is cut off at the next start, and a run that
//! never got its final status is closed as `lost`.
//!
//! A failed write (disk full, I/O error) marks the run's journal degraded:
//! the writer stops touching the file, so it never holds a torn line in the
//! middle, and the run carries on live. See `RunWriter::append`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use base64::Engine as _;

use crate::event::{Batch, Event, EventType, Frame, Payload, RunStatus, StatusChange, Utf8Bytes, escape_json_into};
use crate::run_id::RunId;

const EVENTS_FILE: &str = "events.jsonl";
const META_FILE: &str = "meta.json";
/// Most frames, and bytes, one history read hands out: bounds what a slow
/// subscriber's pending delivery can hold, and lets a replay interleave
/// with other work.
const HISTORY_FRAMES: usize = 1024;
const HISTORY_BYTES: usize = 1024 * 1024;
/// Read size when replaying history; large enough that a replay is a few syscalls per MB.
const READ_CHUNK: usize = 256 * 1024;
/// How far back from the end recovery looks for the last complete line.
/// One event is at most ~90 KiB (64 KiB of output as base64 plus envelope).
const TAIL_SCAN: u64 = 512 * 1024;
/// Largest allocation the batch buffer grows by: several batches of a fast
/// job fit before it has to be reclaimed or replaced.
const BATCH_BUFFER: usize = 4 * 1024 * 1024;
/// Smallest one, for runs that print a little now and then.
const MIN_BATCH_BUFFER: usize = 64 * 1024;
/// Room for an output event's fixed fields (seq, type, encoding, timestamp).
const ENVELOPE_BYTES: usize = 128;

/// The `data` of an output event, as `push_output` takes it.
#[derive(Clone, Copy)]
enum OutputBody<'a> {
    /// Already a string: UTF-8 text, or base64 if `encoding` says so.
    Text(&'a str, Option<crate::event::Encoding>),
    /// Raw bytes that are not UTF-8, to be written as base64.
    Base64(&'a [u8]),
}

/// `n` in decimal, without allocating.
fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("run {0} already has a journal")]
    Exists(RunId),
    #[error("run {0} has no journal")]
    NotFound(RunId),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("corrupt journal {path}: {why}")]
    Corrupt { path: PathBuf, why: String },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> JournalError + 'a {
    move |source| JournalError::Io { what, path: path.to_owned(), source }
}

/// How a run was launched, stored beside its events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunMeta {
    pub run_id: Option<RunId>,
    pub command: Vec<String>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub pty: bool,
    pub created_at: String,
}

/// What recovery learned about one run from its files.
#[derive(Clone, Debug)]
pub struct RecoveredRun {
    pub run_id: RunId,
    pub meta: RunMeta,
    pub last_seq: u64,
    pub status: RunStatus,
    pub last_status: StatusChange,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub bytes: u64,
}

/// Counts shared by all writers, for `/healthz` and metrics.
#[derive(Debug, Default)]
pub struct JournalStats {
    pub write_errors: AtomicU64,
    pub bytes_written: AtomicU64,
}

/// The journal root. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Journal {
    root: Arc<PathBuf>,
    host: Option<Arc<str>>,
    pub stats: Arc<JournalStats>,
}

impl Journal {
    /// Opens (creating if needed) `<state_dir>/runs`.
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        let root = state_dir.join("runs");
        fs::create_dir_all(&root).map_err(io_err("create journal dir", &root))?;
        Ok(Journal { root: Arc::new(root), host: None, stats: Arc::default() })
    }

    /// A journal whose events carry `"host"` (the gateway's copy of a host).
    pub fn with_host(mut self, host: &str) -> Self {
        self.host = Some(Arc::from(host));
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn run_dir(&self, id: &RunId) -> PathBuf {
        // RunId's grammar has no '/' and no leading '.', so this stays inside root.
        self.root.join(id.as_str())
    }

    pub fn exists(&self, id: &RunId) -> bool {
        self.run_dir(id).join(META_FILE).exists()
    }

    /// Creates the run's directory and files; refuses an ID that has one.
    pub fn create_run(&self, id: &RunId, meta: &RunMeta) -> Result<RunWriter, JournalError> {
        let dir = self.run_dir(id);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if dir.join(META_FILE).exists() {
                    return Err(JournalError::Exists(id.clone()));
                }
                // A directory without meta is a launch that crashed half-way: reuse it.
            }
            Err(e) => return Err(io_err("create run dir", &dir)(e)),
        }
        let meta_path = dir.join(META_FILE);
        let meta_json = serde_json::to_vec_pretty(meta)
            .map_err(|e| JournalError::Corrupt { path: meta_path.clone(), why: e.to_string() })?;
        let events_path = dir.join(EVENTS_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&events_path)
            .map_err(io_err("create journal", &events_path))?;
        // meta.json last: its presence is what marks the run as existing.
        fs::write(&meta_path, meta_json).map_err(io_err("write run meta", &meta_path))?;
        Ok(RunWriter::new(self, id.clone(), events_path, file, 0))
    }

    /// Scans every run, cuts torn tails, and closes runs that were active
    /// when the previous daemon died as `lost`.
    pub fn recover(&self) -> Result<Vec<RecoveredRun>, JournalError> {
        self.scan(true)
    }

    /// Like `recover`, but leaves unfinished runs open: the gateway's copy of
    /// a host's run is only finished when the host says so.
    pub fn scan_open(&self) -> Result<Vec<RecoveredRun>, JournalError> {
        self.scan(false)
    }

    fn scan(&self, close_active: bool) -> Result<Vec<RecoveredRun>, JournalError> {
        let mut runs = Vec::new();
        let entries = fs::read_dir(&*self.root).map_err(io_err("read journal dir", &self.root))?;
        for entry in entries {
            let entry = entry.map_err(io_err("read journal dir", &self.root))?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|s| RunId::parse(s).ok()) else {
                tracing::warn!(entry = ?name, "ignoring unexpected entry in journal dir");
                continue;
            };
            match self.recover_run(&id, close_active) {
                Ok(Some(run)) => runs.push(run),
                Ok(None) => {}
                Err(error) => tracing::error!(run_id = %id, %error, "cannot recover run; leaving it alone"),
            }
        }
        runs.sort_by(|a, b| a.meta.created_at.cmp(&b.meta.created_at));
        Ok(runs)
    }

    fn recover_run(&self, id: &RunId, close_active: bool) -> Result<Option<RecoveredRun>, JournalError> {
        let dir = self.run_dir(id);
        let meta_path = dir.join(META_FILE);
        let meta_bytes = match fs::read(&meta_path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Launch crashed before meta was written: nothing was ever visible.
                let _ = fs::remove_dir_all(&dir);
                return Ok(None);
            }
            Err(e) => return Err(io_err("read run meta", &meta_path)(e)),
        };
        let meta: RunMeta = serde_json::from_slice(&meta_bytes)
            .map_err(|e| JournalError::Corrupt { path: meta_path.clone(), why: e.to_string() })?;
        let events_path = dir.join(EVENTS_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&events_path)
            .map_err(io_err("open journal", &events_path))?;
        let len = file.metadata().map_err(io_err("stat journal", &events_path))?.len();
        let tail_start = len.saturating_sub(TAIL_SCAN);
        let mut tail = Vec::new();
        file.seek(SeekFrom::Start(tail_start)).map_err(io_err("read journal", &events_path))?;
        file.read_to_end(&mut tail).map_err(io_err("read journal", &events_path))?;
        let complete = tail.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if complete < tail.len() {
            let keep = tail_start + complete as u64;
            tracing::warn!(run_id = %id, cut = len - keep, "cutting torn journal tail");
            file.set_len(keep).map_err(io_err("truncate journal", &events_path))?;
            tail.truncate(complete);
        }
        let last_line = tail[..complete.saturating_sub(1)].rsplit(|&b| b == b'\n').next().filter(|l| !l.is_empty());
        let last: Option<Event> = match last_line {
            Some(line) => Some(
                serde_json::from_slice(line)
                    .map_err(|e| JournalError::Corrupt { path: events_path.clone(), why: format!("last line: {e}") })?,
            ),
            None => None,
        };
        let head = read_head_events(&events_path)?;
        let started = head.iter().find(|e| e.status() == Some(RunStatus::Running));
        let mut run = RecoveredRun {
            run_id: id.clone(),
            meta,
            last_seq: last.as_ref().map_or(0, |e| e.seq),
            status: RunStatus::Queued,
            last_status: StatusChange::default(),
            started_at: started.map(|e| e.timestamp.clone()),
            ended_at: None,
            bytes: len + meta_bytes.len() as u64,
        };
        if started.is_some() {
            run.status = RunStatus::Running;
        }
        if let Some(ev) = &last
            && let Some(status) = ev.status()
            && status.is_final()
        {
            run.status = status;
            run.ended_at = Some(ev.timestamp.clone());
            run.last_status = StatusChange {
                status: Some(status),
                exit_code: ev.exit_code,
                signal: ev.signal,
                reason: ev.reason.clone(),
                pid: ev.pid,
            };
            return Ok(Some(run));
        }
        if !close_active {
            return Ok(Some(run));
        }
        // Active when the last daemon died: close it so nobody waits forever.
        drop(file);
        let file = OpenOptions::new().append(true).open(&events_path).map_err(io_err("open journal", &events_path))?;
        let mut writer = RunWriter::new(self, id.clone(), events_path, file, run.last_seq);
        let change = StatusChange {
            status: Some(RunStatus::Lost),
            reason: Some("the daemon stopped while the run was active".into()),
            ..StatusChange::default()
        };
        writer.append(Payload::Status(change.clone()));
        let batch = writer.finish_batch(true);
        writer.sync_now();
        run.last_seq = writer.last_seq();
        run.status = RunStatus::Lost;
        // The `lost` event's own timestamp (nothing reads this batch otherwise).
        run.ended_at = batch.frames.last().and_then(|f| line_timestamp(f.bytes()));
        run.last_status = change;
        tracing::warn!(run_id = %id, last_seq = run.last_seq, "run was active when the daemon died; marked lost");
        Ok(Some(run))
    }

    /// Reopens an existing run's journal for appending after `last_seq`.
    pub fn open_writer(&self, id: &RunId, last_seq: u64) -> Result<RunWriter, JournalError> {
        let path = self.run_dir(id).join(EVENTS_FILE);
        let file = OpenOptions::new().append(true).open(&path).map_err(io_err("open journal", &path))?;
        Ok(RunWriter::new(self, id.clone(), path, file, last_seq))
    }

    pub fn read_meta(&self, id: &RunId) -> Result<RunMeta, JournalError> {
        let path = self.run_dir(id).join(META_FILE);
        let bytes = fs::read(&path).map_err(io_err("read run meta", &path))?;
        serde_json::from_slice(&bytes).map_err(|e| JournalError::Corrupt { path, why: e.to_string() })
    }

    /// Moves a run's files to `<root>/../archive/<run>.<id>` (the gateway,
    /// when a host reuses a run ID).
    pub fn archive_run(&self, id: &RunId) -> Result<(), JournalError> {
        let archive = self.root.parent().unwrap_or(&self.root).join("archive");
        fs::create_dir_all(&archive).map_err(io_err("create archive dir", &archive))?;
        let to = archive.join(format!("{id}.{}", RunId::generate()));
        let from = self.run_dir(id);
        fs::rename(&from, &to).map_err(io_err("archive run", &from))
    }

    /// Deletes a finished run's files (retention).
    pub fn remove_run(&self, id: &RunId) -> Result<(), JournalError> {
        let dir = self.run_dir(id);
        fs::remove_dir_all(&dir).map_err(io_err("remove run", &dir))
    }

    /// Size on disk of a run's files.
    pub fn run_bytes(&self, id: &RunId) -> u64 {
        let dir = self.run_dir(id);
        [EVENTS_FILE, META_FILE].iter().filter_map(|f| fs::metadata(dir.join(f)).ok()).map(|m| m.len()).sum()
    }

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

/// The first few events (queued, running) to learn when a run started.
fn read_head_events(path: &Path) -> Result<Vec<Event>, JournalError> {
    let mut file = File::open(path).map_err(io_err("open journal", path))?;
    let mut head = vec![0u8; 4096];
    let n = file.read(&mut head).map_err(io_err("read journal", path))?;
    head.truncate(n);
    Ok(head.split(|&b| b == b'\n').take(3).filter_map(|l| serde_json::from_slice(l).ok()).collect())
}

/// Appends one run's events. Owned by the run's supervisor task, so no locking.
/// Makes room for `additional` bytes in `buf`, whose frozen pieces may
/// still be shared (journal batches, output read buffers). It reuses the
/// spent allocation once nothing else holds it, since fresh buffers cost
/// page faults (13 % of the daemon's CPU on a 1 GiB job), unless that
/// allocation is over 4× `want`: a buffer grown for a burst is let go once
/// output is small again, so a quiet run does not keep megabytes resident.
pub(crate) fn reserve_reusing(buf: &mut BytesMut, additional: usize, want: usize) {
    if buf.capacity() - buf.len() >= additional {
        return;
    }
    let want = want.max(additional);
    if buf.try_reclaim(additional) && buf.capacity() <= 4 * want {
        return;
    }
    let mut fresh = BytesMut::with_capacity(want.max(buf.len() + additional));
    fresh.extend_from_slice(buf);
    *buf = fresh;
}

pub struct RunWriter {
    run_id: RunId,
    host: Option<Arc<str>>,
    path: PathBuf,
    file: File,
    next_seq: u64,
    /// `{"runId":"<id>","seq":`, the start of every event line.
    line_start: Vec<u8>,
    /// `,"host":"<host>"` when events carry a host, else empty.
    host_field: Vec<u8>,
    /// Serialized events of the current batch, newline-terminated. Each
    /// batch is split off the front, so its frames share one allocation,
    /// and the allocation is reused once every frame cut from it is gone.
    buf: BytesMut,
    /// Ranges of `buf` holding each event (without the newline).
    pending: Vec<(u64, usize, usize)>,
    /// Size of recent batches (the last, or half the one before if that
    /// was bigger), which sizes `buf`'s allocation.
    recent_batch: usize,
    /// Set by the first failed write; the file is left alone from then on.
    degraded: Option<io::ErrorKind>,
    /// Bytes written since the last fsync.
    unsynced: u64,
    stats: Arc<JournalStats>,
}

impl RunWriter {
    fn new(journal: &Journal, run_id: RunId, path: PathBuf, file: File, last_seq: u64) -> Self {
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
            file,
            next_seq: last_seq + 1,
            line_start: line_start.to_vec(),
            host_field: host_field.to_vec(),
            buf: BytesMut::new(),
            pending: Vec::new(),
            recent_batch: 0,
            degraded: None,
            unsynced: 0,
            stats: journal.stats.clone(),
        }
    }

    pub fn run_id(&self) -> &RunId {
        &self.run_id
    }

    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    pub fn is_degraded(&self) -> bool {
        self.degraded.is_some()
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
            data: String::new(),
            encoding: None,
            exit_code: None,
            signal: None,
            signal_name: None,
            reason: None,
            pid: None,
            timestamp: crate::event::now_timestamp(),
            host: self.host.as_deref().map(str::to_owned),
        };
        match payload {
            Payload::Output { stream, data } => {
                event.kind = stream;
                event.data = data.text;
                event.encoding = data.encoding;
            }
            Payload::Status(change) => {
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
        self.push_event(event);
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

    /// Writes an output event by hand, in `Event`'s field order and with
    /// serde_json's escaping (the tests compare the two): serde would need
    /// an owned `Event` per chunk and escapes a byte at a time.
    fn push_output(&mut self, stream: EventType, body: OutputBody<'_>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let data_len = match body {
            OutputBody::Text(text, _) => text.len(),
            OutputBody::Base64(bytes) => bytes.len().div_ceil(3) * 4,
        };
        self.reserve(data_len + self.line_start.len() + self.host_field.len() + ENVELOPE_BYTES);
        let start = self.buf.len();
        self.buf.extend_from_slice(&self.line_start);
        self.buf.extend_from_slice(itoa(seq, &mut [0; 20]));
        self.buf.extend_from_slice(match stream {
            EventType::Stdout => br#","type":"stdout","data":""#,
            EventType::Stderr => br#","type":"stderr","data":""#,
            EventType::Status => br#","type":"status","data":""#,
        });
        let base64 = match body {
            OutputBody::Text(text, encoding) => {
                escape_json_into(&mut self.buf, text);
                encoding.is_some()
            }
            OutputBody::Base64(bytes) => {
                let at = self.buf.len();
                self.buf.resize(at + data_len, 0);
                // The slice is exactly the encoded length, so this cannot fail.
                let _ = base64::engine::general_purpose::STANDARD.encode_slice(bytes, &mut self.buf[at..]);
                true
            }
        };
        self.buf.extend_from_slice(if base64 {
            br#"","encoding":"base64","timestamp":""#
        } else {
            br#"","timestamp":""#
        });
        self.buf.extend_from_slice(crate::event::now_timestamp().as_bytes());
        self.buf.extend_from_slice(b"\"");
        self.buf.extend_from_slice(&self.host_field);
        let end = self.buf.len() + 1;
        self.buf.extend_from_slice(b"}\n");
        self.pending.push((seq, start, end));
        seq
    }

    /// Makes room for `additional` bytes, with room for a few batches of
    /// the size this run writes now.
    fn reserve(&mut self, additional: usize) {
        let want = self.recent_batch.saturating_mul(4).clamp(MIN_BATCH_BUFFER, BATCH_BUFFER);
        reserve_reusing(&mut self.buf, additional, want);
    }

    fn push_event(&mut self, event: &Event) {
        let start = self.buf.len();
        let mut w = std::mem::take(&mut self.buf).writer();
        // Serializing plain structs of strings and integers into memory cannot fail.
        let _ = serde_json::to_writer(&mut w, event);
        self.buf = w.into_inner();
        let end = self.buf.len();
        self.buf.extend_from_slice(b"\n");
        self.pending.push((event.seq, start, end));
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
        if self.degraded.is_none() && !bytes.is_empty() {
            match self.file.write_all(&bytes) {
                Ok(()) => {
                    self.unsynced += bytes.len() as u64;
                    self.stats.bytes_written.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                }
                Err(error) => self.degrade(error),
            }
        }
        let frames = self
            .pending
            .drain(..)
            .filter_map(|(seq, start, end)| Some(Frame { seq, json: utf8(bytes.slice(start..end))? }))
            .collect();
        Batch { frames, last }
    }

    fn degrade(&mut self, error: io::Error) {
        tracing::error!(run_id = %self.run_id, path = %self.path.display(), %error,
            "journal write failed; run continues live, its journal is degraded");
        self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
        self.degraded = Some(error.kind());
    }

    /// A handle for an fsync off the async threads, if there is anything to sync.
    pub fn take_sync_job(&mut self) -> Option<File> {
        if self.unsynced == 0 || self.degraded.is_some() {
            return None;
        }
        match self.file.try_clone() {
            Ok(f) => {
                self.unsynced = 0;
                Some(f)
            }
            Err(error) => {
                self.degrade(error);
                None
            }
        }
    }

    /// Blocking fsync, for recovery and tests.
    pub fn sync_now(&mut self) {
        if let Some(f) = self.take_sync_job()
            && let Err(error) = f.sync_data()
        {
            self.degrade(error);
        }
    }

    #[cfg(test)]
    fn with_file(mut self, file: File) -> Self {
        self.file = file;
        self
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
fn line_timestamp(json: &[u8]) -> Option<String> {
    serde_json::from_slice::<Event>(json).ok().map(|e| e.timestamp)
}

/// serde_json writes UTF-8, so this cannot fail for our own events; it is
/// the one validation each event gets before being shared as a text frame.
fn utf8(bytes: Bytes) -> Option<Utf8Bytes> {
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

use bytes::BufMut as _;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::OutputData;

    fn out(text: &str) -> Payload {
        Payload::Output { stream: EventType::Stdout, data: OutputData::from_bytes(text.as_bytes().to_vec()) }
    }

    fn meta() -> RunMeta {
        RunMeta { command: vec!["true".into()], created_at: crate::event::now_timestamp(), ..RunMeta::default() }
    }

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

    /// Hand-built output lines must be exactly what serializing `Event` gives.
    #[test]
    fn output_lines_match_serde() {
        let dir = tempfile::tempdir().unwrap();
        for host in [None, Some("h\"1")] {
            let mut j = Journal::open(dir.path()).unwrap();
            if let Some(h) = host {
                j = j.with_host(h);
            }
            let id = RunId::parse(if host.is_some() { "o2" } else { "o1" }).unwrap();
            let mut w = j.create_run(&id, &meta()).unwrap();
            let inputs: Vec<(EventType, Vec<u8>)> = vec![
                (EventType::Stdout, b"plain\n".to_vec()),
                (EventType::Stderr, "tab\t \"q\" \\ \u{1} \u{7f} \u{20ac}\r\n".as_bytes().to_vec()),
                (EventType::Stdout, vec![b'a', 0xff, 0xfe, b'\n']),
                (EventType::Stdout, Vec::new()),
            ];
            for (stream, bytes) in &inputs {
                w.append_output(*stream, bytes);
                w.append(Payload::Output { stream: *stream, data: OutputData::from_bytes(bytes.clone()) });
            }
            let batch = w.finish_batch(false);
            assert_eq!(batch.frames.len(), inputs.len() * 2);
            for (i, frame) in batch.frames.iter().enumerate() {
                let ev: Event = serde_json::from_slice(frame.bytes()).unwrap();
                assert_eq!(ev.seq, i as u64 + 1);
                assert_eq!(ev.host.as_deref(), host);
                assert_eq!(ev.output_bytes().unwrap(), inputs[i / 2].1);
                assert_eq!(serde_json::to_string(&ev).unwrap().as_bytes(), frame.bytes());
            }
        }
    }

    #[test]
    fn line_seq_reads_prefix() {
        assert_eq!(line_seq(br#"{"runId":"a","seq":17,"type":"stdout"}"#), Some(17));
        assert_eq!(line_seq(br#"{"runId":"a"}"#), None);
    }

    #[test]
    fn recovery_cuts_torn_tail_and_marks_lost() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let id = RunId::parse("r2").unwrap();
        let mut w = j.create_run(&id, &meta()).unwrap();
        w.append(Payload::Status(StatusChange { status: Some(RunStatus::Running), ..Default::default() }));
        w.append(out("hello\n"));
        w.finish_batch(false);
        drop(w);
        let path = dir.path().join("runs/r2/events.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"runId":"r2","seq":3,"ty"#).unwrap();
        let runs = j.recover().unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].status, RunStatus::Lost);
        assert_eq!(runs[0].last_seq, 3);
        assert!(runs[0].started_at.is_some());
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<Event> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(lines[2].status(), Some(RunStatus::Lost));
        // A second recovery changes nothing.
        let again = j.recover().unwrap();
        assert_eq!(again[0].last_seq, 3);
        assert_eq!(again[0].status, RunStatus::Lost);
    }

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
