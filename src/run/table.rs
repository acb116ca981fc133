//! The table of runs: launch, cancel, look up, list, retention.
//!
//! Each active run is owned by its supervisor task; the table holds what
//! `ps` shows and the run's control channel. It is a plain map behind a
//! mutex held only for short, non-async updates: no I/O happens under it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio_util::task::TaskTracker;

use super::attach::{Attach, Observer};
use super::child::Spec;
use super::shim::{record, wire};
use super::supervisor::{Control, Timing};
use super::tail::Tail;
use crate::event::{RunStatus, StatusChange, now_timestamp};
use crate::hub::Hub;
use crate::journal::{Journal, JournalError, RunMeta};
use crate::run_id::RunId;
use crate::run_info::{CancelError, RunInfo};

#[derive(Debug, thiserror::Error)]
pub(crate) enum LaunchError {
    #[error("empty command")]
    EmptyCommand,
    /// An environment variable name that is empty or holds `=`, or a NUL
    /// byte anywhere: the kernel would read them as something else.
    #[error("{0}")]
    BadSpec(String),
    #[error("run {0} is already active")]
    Active(RunId),
    #[error(
        "run ID {0} is taken by a finished run whose journal is still kept; run IDs are unique while their journal is retained"
    )]
    Exists(RunId),
    #[error("too many active runs (limit {0}); try again when one finishes")]
    TooMany(usize),
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error("create journal: {0}")]
    Journal(JournalError),
}

/// What `execve` cannot carry as given: refused, not half-applied.
pub(crate) fn check_spec(spec: &Spec) -> Result<(), LaunchError> {
    if let Some(arg) = spec.argv.iter().position(|a| a.contains('\0')) {
        return Err(LaunchError::BadSpec(format!("command argument {arg} contains a NUL byte")));
    }
    for (key, value) in &spec.env {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(LaunchError::BadSpec(format!("invalid environment variable name {key:?}")));
        }
        if value.contains('\0') {
            return Err(LaunchError::BadSpec(format!("environment variable {key} contains a NUL byte")));
        }
    }
    if spec.cwd.as_deref().is_some_and(|c| c.contains('\0')) {
        return Err(LaunchError::BadSpec("cwd contains a NUL byte".into()));
    }
    Ok(())
}

/// Where runs' shims listen and how they log, fixed for the daemon's life.
#[derive(Clone, Debug)]
pub(crate) struct ShimSetup {
    /// The directory of the runs' sockets (beside the daemon's own).
    pub socket_dir: std::path::PathBuf,
    pub state_dir: std::path::PathBuf,
    pub log_level: String,
}

/// Limits and timing for runs, from `[runs]` and `[journal]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RunLimits {
    pub max_concurrent: usize,
    pub timing: Timing,
}

struct Entry {
    info: RunInfo,
    /// Present while the run's supervisor is alive.
    control: Option<mpsc::UnboundedSender<Control>>,
}

/// Cheap to clone.
#[derive(Clone)]
pub(crate) struct RunTable {
    inner: Arc<Inner>,
}

struct Inner {
    runs: Mutex<HashMap<RunId, Entry>>,
    journal: Journal,
    hub: Hub,
    /// Swapped on config reload; a run keeps the timing it started with.
    limits: Mutex<RunLimits>,
    /// Supervisor tasks, so shutdown can wait for them.
    tracker: TaskTracker,
    /// Announces each launch (the upstream link starts forwarding it).
    launches: broadcast::Sender<RunId>,
    shims: ShimSetup,
    /// Cancelled at a shutdown that leaves the runs to their shims.
    detach: tokio_util::sync::CancellationToken,
    /// Lines dropped from jobs' events channels, for `/metrics`.
    bad_event_lines: std::sync::atomic::AtomicU64,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Longest cancel reason kept (a status line must stay small enough for
/// recovery to read back).
pub(crate) const MAX_REASON: usize = 1024;

/// Launch announcements buffered per listener; one that falls further
/// behind gets `Lagged` and rescans the table.
const LAUNCH_BACKLOG: usize = 1024;

impl RunTable {
    pub(crate) fn new(journal: Journal, hub: Hub, limits: RunLimits, tracker: TaskTracker, shims: ShimSetup) -> Self {
        let (launches, _) = broadcast::channel(LAUNCH_BACKLOG);
        let inner = Inner {
            runs: Mutex::default(),
            journal,
            hub,
            limits: Mutex::new(limits),
            tracker,
            launches,
            shims,
            detach: Default::default(),
            bad_event_lines: Default::default(),
        };
        RunTable { inner: Arc::new(inner) }
    }

    /// Every run launched from now on.
    pub(crate) fn subscribe_launches(&self) -> broadcast::Receiver<RunId> {
        self.inner.launches.subscribe()
    }

    pub(crate) fn journal(&self) -> &Journal {
        &self.inner.journal
    }

    pub(crate) fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    pub(crate) fn limits(&self) -> RunLimits {
        *self.inner.limits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// New limits for runs launched from now on (config reload).
    pub(crate) fn set_limits(&self, limits: RunLimits) {
        *self.inner.limits.lock().unwrap_or_else(|p| p.into_inner()) = limits;
    }

    fn runs(&self) -> MutexGuard<'_, HashMap<RunId, Entry>> {
        // Entries are plain data; a panic elsewhere cannot leave them half-built.
        self.inner.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads every run kept in the journal and takes back the runs whose
    /// shims still hold them; the others, interrupted, are closed `lost`
    /// (see `reconcile`). Returns (runs, runs taken back).
    pub(crate) fn recover(&self) -> Result<(usize, usize), JournalError> {
        let recovered = self.inner.journal.scan_open()?;
        let n = recovered.len();
        let mut taken_back = 0;
        for mut r in recovered {
            if !r.status.is_final() && r.supervised {
                taken_back += 1;
                self.reattach(r);
                continue;
            }
            if !r.status.is_final() {
                super::reconcile::close_orphan(&self.inner.journal, &mut r);
            }
            self.inner.hub.insert_closed(&r.run_id, r.last_seq);
            let id = r.run_id.clone();
            self.runs().insert(id, Entry { info: RunInfo::recovered(r), control: None });
        }
        Ok((n, taken_back))
    }

    /// Follows a run whose shim outlived the previous daemon.
    fn reattach(&self, r: crate::journal::RecoveredRun) {
        let id = r.run_id.clone();
        let file = match std::fs::File::open(self.inner.journal.run_dir(&id).join("events.jsonl")) {
            Ok(f) => f,
            Err(error) => {
                tracing::error!(run_id = %id, %error, "cannot read the journal of a run to take back");
                return;
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let publisher = self.inner.hub.open(&id, r.last_seq);
        let attach = Attach {
            run_id: id.clone(),
            journal: self.inner.journal.clone(),
            publisher,
            observer: self.clone(),
            control: rx,
            detach: self.inner.detach.clone(),
            tail: Tail::new(file, r.offset),
            read_seq: r.file_seq,
            pgid: r.pid,
            shim: None,
            socket: None,
        };
        tracing::info!(run_id = %id, last_seq = r.last_seq, "taking back a run from its shim");
        self.runs().insert(id, Entry { info: RunInfo::recovered(r), control: Some(tx) });
        self.inner.tracker.spawn(attach.reattach());
    }

    /// Leaves every active run to its shim (shutdown with `detach`).
    pub(crate) fn detach_all(&self) {
        self.inner.detach.cancel();
    }

    /// Registers and starts a run. Checks, in order: command, shutdown,
    /// duplicate ID, concurrency cap; then creates the journal.
    pub(crate) fn launch(&self, id: Option<RunId>, spec: Spec) -> Result<RunId, LaunchError> {
        if spec.argv.is_empty() || spec.argv[0].is_empty() {
            return Err(LaunchError::EmptyCommand);
        }
        check_spec(&spec)?;
        if self.inner.tracker.is_closed() {
            return Err(LaunchError::ShuttingDown);
        }
        let id = id.unwrap_or_else(RunId::generate);
        let meta = RunMeta {
            run_id: Some(id.clone()),
            command: spec.argv.clone(),
            cwd: spec.cwd.clone(),
            pty: spec.pty.is_some(),
            created_at: now_timestamp(),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let limits = self.limits();
        let writer = {
            let mut runs = self.runs();
            if let Some(e) = runs.get(&id) {
                return Err(if e.control.is_some() { LaunchError::Active(id) } else { LaunchError::Exists(id) });
            }
            let active = runs.values().filter(|e| e.control.is_some()).count();
            if active >= limits.max_concurrent {
                return Err(LaunchError::TooMany(limits.max_concurrent));
            }
            // Creating the journal under the lock makes "check then create" atomic;
            // it is two small file creations.
            let writer = self.inner.journal.create_run(&id, &meta).map_err(LaunchError::Journal)?;
            let info = RunInfo::queued(id.clone(), meta);
            runs.insert(id.clone(), Entry { info, control: Some(tx) });
            writer
        };
        let file = match std::fs::File::open(self.inner.journal.run_dir(&id).join("events.jsonl")) {
            Ok(f) => f,
            Err(error) => {
                self.runs().remove(&id);
                return Err(LaunchError::Journal(JournalError::Io {
                    what: "open journal",
                    path: self.inner.journal.run_dir(&id),
                    error,
                }));
            }
        };
        drop(writer);
        let shims = &self.inner.shims;
        let launch = wire::Launch {
            version: wire::VERSION,
            run_id: id.as_str().to_owned(),
            state_dir: shims.state_dir.clone(),
            socket: record::socket_path(&shims.socket_dir, &id),
            argv: spec.argv,
            env: spec.env,
            clear_env: spec.clear_env,
            cwd: spec.cwd,
            pty: spec.pty,
            grace_ms: millis(limits.timing.grace_period),
            drain_ms: millis(limits.timing.drain_timeout),
            line_hold_ms: millis(limits.timing.pacing.line_hold),
            coalesce_ms: millis(limits.timing.pacing.coalesce),
            fsync_ms: millis(limits.timing.fsync_interval),
            log_level: shims.log_level.clone(),
        };
        let attach = Attach {
            run_id: id.clone(),
            journal: self.inner.journal.clone(),
            publisher: self.inner.hub.open(&id, 0),
            observer: self.clone(),
            control: rx,
            detach: self.inner.detach.clone(),
            tail: Tail::new(file, 0),
            read_seq: 0,
            pgid: None,
            shim: None,
            socket: None,
        };
        self.inner.tracker.spawn(attach.launch(launch));
        let _ = self.inner.launches.send(id.clone());
        Ok(id)
    }

    /// Asks an active run to stop. Harmless if it is already stopping.
    /// The reason is cut to [`MAX_REASON`] bytes: it goes into the journal.
    pub(crate) fn cancel(&self, id: &RunId, mut reason: String) -> Result<RunInfo, CancelError> {
        if reason.len() > MAX_REASON {
            let mut cut = MAX_REASON;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        let runs = self.runs();
        let entry = runs.get(id).ok_or_else(|| CancelError::NotFound(id.clone()))?;
        match &entry.control {
            Some(tx) if tx.send(Control::Cancel { reason }).is_ok() => Ok(self.with_seq(entry.info.clone())),
            _ => Err(CancelError::Finished(Box::new(self.with_seq(entry.info.clone())))),
        }
    }

    /// Cancels every active run (daemon shutdown).
    pub(crate) fn cancel_all(&self, reason: &str) -> usize {
        let runs = self.runs();
        runs.values()
            .filter_map(|e| e.control.as_ref())
            .filter(|tx| tx.send(Control::Cancel { reason: reason.to_owned() }).is_ok())
            .count()
    }

    pub(crate) fn get(&self, id: &RunId) -> Option<RunInfo> {
        let info = self.runs().get(id)?.info.clone();
        Some(self.with_seq(info))
    }

    /// All runs, oldest first.
    pub(crate) fn list(&self) -> Vec<RunInfo> {
        let mut all: Vec<RunInfo> = self.runs().values().map(|e| e.info.clone()).collect();
        all.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.run_id.cmp(&b.run_id)));
        all.into_iter().map(|i| self.with_seq(i)).collect()
    }

    /// The runs not over yet, with their status and last seq: what a
    /// pattern subscription starts from. Cheaper than `list` with
    /// thousands of finished runs.
    pub(crate) fn active(&self) -> Vec<(RunId, RunStatus, u64)> {
        let runs: Vec<(RunId, RunStatus)> = self
            .runs()
            .values()
            .filter(|e| !e.info.status.is_final())
            .map(|e| (e.info.run_id.clone(), e.info.status))
            .collect();
        runs.into_iter()
            .map(|(run, status)| {
                let last_seq = self.inner.hub.snapshot(&run).map_or(0, |s| s.last_seq);
                (run, status, last_seq)
            })
            .collect()
    }

    pub(crate) fn active_count(&self) -> usize {
        self.runs().values().filter(|e| e.control.is_some()).count()
    }

    pub(crate) fn count_by_status(&self) -> HashMap<RunStatus, usize> {
        let mut counts = HashMap::new();
        for e in self.runs().values() {
            *counts.entry(e.info.status).or_default() += 1;
        }
        counts
    }

    /// Lines dropped from jobs' events channels since start.
    pub(crate) fn bad_event_lines(&self) -> u64 {
        self.inner.bad_event_lines.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn degraded_count(&self) -> usize {
        let runs = self.runs();
        self.inner.journal.health.count(|id| runs.contains_key(id))
    }

    /// The row as it stands now: the hub knows the last seq (the row may
    /// know a status event's the hub is about to get), the journal whether
    /// it holds every event.
    fn with_seq(&self, mut info: RunInfo) -> RunInfo {
        if let Some(snap) = self.inner.hub.snapshot(&info.run_id) {
            info.last_seq = info.last_seq.max(snap.last_seq);
        }
        info.journal = self.inner.journal.health.of(&info.run_id);
        info
    }

    /// Deletes finished runs older than `max_age`, then the oldest finished
    /// runs until the total is under `max_bytes`. Never touches active runs.
    pub(crate) fn sweep_retention(
        &self,
        max_age: Duration,
        max_bytes: u64,
        before_delete: impl Fn(&RunId, u64),
    ) -> usize {
        let now = chrono::Utc::now();
        let finished: Vec<(RunId, String, bool)> = {
            let runs = self.runs();
            runs.values()
                .filter(|e| e.control.is_none())
                .map(|e| {
                    let ended = e.info.ended_at.clone().unwrap_or_else(|| e.info.created_at.clone());
                    let old = chrono::DateTime::parse_from_rfc3339(&ended)
                        .map(|t| (now - t.with_timezone(&chrono::Utc)).to_std().unwrap_or_default() > max_age)
                        .unwrap_or(false);
                    (e.info.run_id.clone(), ended, old)
                })
                .collect()
        };
        let mut sized: Vec<(RunId, String, bool, u64)> = finished
            .into_iter()
            .map(|(id, ended, old)| {
                let bytes = self.inner.journal.run_bytes(&id);
                (id, ended, old, bytes)
            })
            .collect();
        sized.sort_by(|a, b| a.1.cmp(&b.1));
        let active_bytes: u64 = {
            let ids: Vec<RunId> =
                self.runs().values().filter(|e| e.control.is_some()).map(|e| e.info.run_id.clone()).collect();
            ids.iter().map(|id| self.inner.journal.run_bytes(id)).sum()
        };
        let mut total: u64 = active_bytes + sized.iter().map(|s| s.3).sum::<u64>();
        let mut removed = 0;
        for (id, _, old, bytes) in sized {
            if !old && total <= max_bytes {
                continue;
            }
            if let Some(info) = self.get(&id) {
                before_delete(&id, info.last_seq);
            }
            if self.remove_finished(&id) {
                total = total.saturating_sub(bytes);
                removed += 1;
            }
        }
        removed
    }

    fn remove_finished(&self, id: &RunId) -> bool {
        {
            let mut runs = self.runs();
            match runs.get(id) {
                Some(e) if e.control.is_none() => {
                    runs.remove(id);
                }
                _ => return false,
            }
        }
        self.inner.hub.remove(id);
        match self.inner.journal.remove_run(id) {
            Ok(()) => {
                tracing::info!(run_id = %id, "retention removed run");
                true
            }
            Err(error) => {
                tracing::warn!(run_id = %id, %error, "retention could not remove run");
                false
            }
        }
    }
}

/// What a supervisor reports lands in the table's row for its run.
impl Observer for RunTable {
    fn on_bad_event_lines(&self, n: u64) {
        self.inner.bad_event_lines.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    fn on_status(&self, id: &RunId, seq: u64, change: &StatusChange) {
        let mut runs = self.runs();
        let Some(e) = runs.get_mut(id) else { return };
        e.info.apply(change, &now_timestamp());
        e.info.last_seq = e.info.last_seq.max(seq);
        if change.status.is_some_and(RunStatus::is_final) {
            // From here on the run counts as finished: cancel answers 409,
            // and it no longer counts against the concurrency cap.
            e.control = None;
        }
    }
}
