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

use super::child::{SpawnLock, Spec};
use super::supervisor::{Channels, Control, Observer, Supervisor, Timing};
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
    /// One spawn at a time while a job's events pipe is inheritable.
    spawn_lock: SpawnLock,
    /// Lines dropped from jobs' events channels, for `/metrics`.
    bad_event_lines: std::sync::atomic::AtomicU64,
}

/// Longest cancel reason kept (a status line must stay small enough for
/// recovery to read back).
pub(crate) const MAX_REASON: usize = 1024;

/// Launch announcements buffered per listener; one that falls further
/// behind gets `Lagged` and rescans the table.
const LAUNCH_BACKLOG: usize = 1024;

impl RunTable {
    pub(crate) fn new(journal: Journal, hub: Hub, limits: RunLimits, tracker: TaskTracker) -> Self {
        let (launches, _) = broadcast::channel(LAUNCH_BACKLOG);
        let inner = Inner {
            runs: Mutex::default(),
            journal,
            hub,
            limits: Mutex::new(limits),
            tracker,
            launches,
            spawn_lock: SpawnLock::default(),
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

    /// Loads every run kept in the journal (closing interrupted ones as lost).
    pub(crate) fn recover(&self) -> Result<usize, JournalError> {
        let recovered = self.inner.journal.recover()?;
        let n = recovered.len();
        let mut runs = self.runs();
        for r in recovered {
            self.inner.hub.insert_closed(&r.run_id, r.last_seq);
            let id = r.run_id.clone();
            runs.insert(id, Entry { info: RunInfo::recovered(r), control: None });
        }
        Ok(n)
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
        let publisher = self.inner.hub.open(&id, 0);
        let lock = self.inner.spawn_lock.clone();
        let channels = Channels { writer, publisher, control: rx };
        let sup = Supervisor::new(id.clone(), spec, channels, self.clone(), limits.timing, lock);
        self.inner.tracker.spawn(sup.run());
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

    /// The row as it stands now: the hub knows the last seq, the journal
    /// whether it holds every event.
    fn with_seq(&self, mut info: RunInfo) -> RunInfo {
        if let Some(snap) = self.inner.hub.snapshot(&info.run_id) {
            info.last_seq = snap.last_seq;
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
    fn on_bad_event_line(&self) {
        self.inner.bad_event_lines.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn on_status(&self, id: &RunId, change: &StatusChange) {
        let mut runs = self.runs();
        let Some(e) = runs.get_mut(id) else { return };
        e.info.apply(change, &now_timestamp());
        if change.status.is_some_and(RunStatus::is_final) {
            // From here on the run counts as finished: cancel answers 409,
            // and it no longer counts against the concurrency cap.
            e.control = None;
        }
    }
}
