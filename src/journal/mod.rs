//! The per-run append-only journal: the single source of truth and of `seq`.
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
//! middle, and the run carries on live. See `RunWriter::finish_batch`.
//!
//! - `layout`: where a run's files are, and whole-run file operations.
//! - `lock`: the one writer of a run, proved by a lock the kernel drops when it dies.
//! - `recover`: what a start finds in the files; closing interrupted runs.
//! - `writer`: appending one run's events ([`RunWriter`]).
//! - `encode`: output events serialized by hand, byte-identical to serde.
//! - `lines`: what an intact journal line is, checked cheaply.
//! - `history`: reading a run back ([`HistoryReader`]), damage reported as gaps.
//! - `state`: the per-run state record and the [`HealthBook`].

mod encode;
mod history;
mod layout;
pub(crate) mod lines;
mod lock;
mod recover;
mod state;
mod writer;

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use serde::{Deserialize, Serialize};

use crate::run_id::RunId;

pub(crate) use encode::reserve_reusing;
pub use history::{HISTORY_STEP, HistoryItem, HistoryReader};
pub use lines::line_seq;
pub use lock::WriterLock;
pub use recover::RecoveredRun;
pub use state::{Health, HealthBook};
pub use writer::RunWriter;

use layout::{EVENTS_FILE, META_FILE};
use state::RunState;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("run {0} already has a journal")]
    Exists(RunId),
    #[error("run {0} has no journal")]
    NotFound(RunId),
    #[error("run {0}'s journal is being written by another process")]
    Locked(RunId),
    /// The OS reason is in the message, not a `source`: printing the
    /// chain would repeat it.
    #[error("{what} {}: {error}", .path.display())]
    Io { what: &'static str, path: PathBuf, error: io::Error },
    #[error("corrupt journal {}: {why}", .path.display())]
    Corrupt { path: PathBuf, why: String },
    /// Reading a store elsewhere (a gateway replica's JetStream) failed.
    #[error("event store: {0}")]
    Store(String),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> JournalError + 'a {
    move |error| JournalError::Io { what, path: path.to_owned(), error }
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

/// Counts shared by all writers, for `/healthz` and metrics.
#[derive(Debug, Default)]
pub struct JournalStats {
    pub write_errors: AtomicU64,
    pub bytes_written: AtomicU64,
    /// Run directories moved to quarantine because they could not be read.
    pub quarantined: AtomicU64,
}

/// The journal root. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Journal {
    root: Arc<PathBuf>,
    host: Option<Arc<str>>,
    pub stats: Arc<JournalStats>,
    /// Which runs' events are not all in their files.
    pub health: Arc<HealthBook>,
}

impl Journal {
    /// Opens (creating if needed) `<state_dir>/runs`.
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        let root = state_dir.join("runs");
        fs::create_dir_all(&root).map_err(io_err("create journal dir", &root))?;
        Ok(Journal { root: Arc::new(root), host: None, stats: Arc::default(), health: Arc::default() })
    }

    /// A journal whose events carry `"host"` (the gateway's copy of a host).
    pub fn with_host(mut self, host: &str) -> Self {
        self.host = Some(Arc::from(host));
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the run's directory and files; refuses an ID that has one.
    pub fn create_run(&self, id: &RunId, meta: &RunMeta) -> Result<RunWriter, JournalError> {
        let dir = self.run_dir(id);
        // 0750 whatever the state dir's mode: the files below get the
        // umask's (0644) and hold the command line and all the output.
        match fs::DirBuilder::new().mode(0o750).create(&dir) {
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
        let state_path = self.state_path(id);
        RunState::create(&state_path).map_err(io_err("create run state", &state_path))?;
        // meta.json last: its presence is what marks the run as existing.
        fs::write(&meta_path, meta_json).map_err(io_err("write run meta", &meta_path))?;
        Ok(RunWriter::new(self, id.clone(), events_path, file, 0))
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
}

/// Runs file I/O that may block (a slow or stalled disk) without holding
/// an async worker: on the multi-threaded runtime the worker hands its
/// other tasks to another thread for the duration (`block_in_place`), so
/// WebSocket sessions and the Unix socket keep being served while a disk
/// stalls; only the run (or host link) that writes waits, as it must
/// (history readers rely on a published event being in the file).
pub(crate) fn off_workers<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Fault injection for tests and soaks (docs/bad-input.md): every journal
/// write first sleeps `RUNTAP_FAULT_JOURNAL_WRITE_DELAY_MS`, a disk that
/// stalls. Read once; unset (always, in production) costs one branch.
fn fault_write_delay() -> Option<std::time::Duration> {
    static DELAY: std::sync::OnceLock<Option<std::time::Duration>> = std::sync::OnceLock::new();
    *DELAY.get_or_init(|| {
        let ms: u64 = std::env::var("RUNTAP_FAULT_JOURNAL_WRITE_DELAY_MS").ok()?.parse().ok()?;
        tracing::warn!(ms, "fault injection: every journal write is delayed");
        Some(std::time::Duration::from_millis(ms))
    })
}

/// Fixtures the journal's unit tests share.
#[cfg(test)]
mod test_util {
    use super::RunMeta;
    use crate::event::{EventType, OutputData, Payload};

    pub(super) fn out(text: &str) -> Payload {
        Payload::Output { stream: EventType::Stdout, data: OutputData::from_bytes(text.as_bytes().to_vec()) }
    }

    pub(super) fn meta() -> RunMeta {
        RunMeta { command: vec!["true".into()], created_at: crate::event::now_timestamp(), ..RunMeta::default() }
    }
}
