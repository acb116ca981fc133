//! The daemon's runs as the server sees them: its run table behind the
//! HTTP/WebSocket [`Backend`] and the Unix socket's [`Runs`].

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use serde_json::{Value, json};

use crate::auth::{At, Scope};
use crate::protocol::unix::LaunchRequest;
use crate::run::{LaunchError, RunTable, Spec};
use crate::run_id::RunId;
use crate::run_info::{CancelError, RunInfo};
use crate::server::Backend;
use crate::server::backend::{
    ActiveRun, BackendStats, BoxFuture, CancelOutcome, LookupError, RunRef, RunWatch, Source, watch_broadcast,
};
use crate::server::unix::{Refusal, Runs};
use crate::upstream::UpstreamStatus;

/// This host's run table, and the upstream link's state for `/metrics`.
pub(super) struct DaemonRuns {
    pub(super) table: RunTable,
    pub(super) upstream: Option<Arc<UpstreamStatus>>,
    /// Terminal size for `--pty` launches that do not say.
    pub(super) pty_size: (u16, u16),
}

impl DaemonRuns {
    fn source(&self) -> Source {
        Source { history: self.table.journal().clone().into(), hub: self.table.hub().clone() }
    }
}

impl Backend for DaemonRuns {
    fn source<'a>(&'a self, _host: Option<&'a str>, _run: &'a RunId) -> BoxFuture<'a, Result<Source, LookupError>> {
        Box::pin(std::future::ready(Ok(DaemonRuns::source(self))))
    }

    fn list(&self, scope: &Scope) -> Vec<Value> {
        self.table.list().into_iter().filter(|r| scope.allows(At::Local, &r.run_id)).map(|r| json!(r)).collect()
    }

    fn get(&self, _host: Option<&str>, run: &RunId) -> Result<Value, LookupError> {
        self.table.get(run).map(|r| json!(r)).ok_or_else(|| LookupError::NotFound(run.to_string()))
    }

    fn cancel<'a>(&'a self, _host: Option<&'a str>, run: &'a RunId, reason: String) -> BoxFuture<'a, CancelOutcome> {
        let outcome = match self.table.cancel(run, reason) {
            Ok(info) => CancelOutcome::Cancelling(json!({"runId": run.as_str(), "status": info.status})),
            Err(CancelError::NotFound(_)) => CancelOutcome::NotFound(format!("no run {run}")),
            Err(CancelError::Finished(info)) => CancelOutcome::Finished(json!(info)),
        };
        Box::pin(std::future::ready(outcome))
    }

    fn stats(&self) -> BackendStats {
        let t = &self.table;
        let by_status = t.count_by_status();
        BackendStats {
            runs: by_status.values().sum(),
            active: t.active_count(),
            degraded: t.degraded_count(),
            subscriptions: t.hub().stats().subscriptions.load(Relaxed),
            events_in: t.hub().stats().events_published.load(Relaxed),
            journal_bytes: t.journal().stats.bytes_written.load(Relaxed),
            journal_errors: t.journal().stats.write_errors.load(Relaxed),
            quarantined: t.journal().stats.quarantined.load(Relaxed),
            by_status,
        }
    }

    fn watch(&self) -> RunWatch {
        watch_broadcast(self.table.subscribe_launches(), |run| Some(RunRef { host: None, run }))
    }

    fn active(&self) -> Vec<ActiveRun> {
        self.table
            .active()
            .into_iter()
            .map(|(run, status, last_seq)| ActiveRun { at: RunRef { host: None, run }, status, last_seq })
            .collect()
    }

    fn extra_metrics(&self) -> String {
        let name = "runtap_event_lines_rejected_total";
        let mut out = format!(
            "# HELP {name} Lines dropped from jobs' RUNTAP_EVENTS_FD (malformed, oversized, out of order).\n# TYPE {name} counter\n{name} {}\n",
            self.table.bad_event_lines()
        );
        if let Some(up) = &self.upstream {
            out.push_str(&up.render(&self.table));
        }
        out
    }
}

impl Runs for DaemonRuns {
    fn launch(&self, id: Option<RunId>, req: LaunchRequest) -> Result<RunId, Refusal> {
        let (cols, rows) = self.pty_size;
        let spec = Spec {
            argv: req.command,
            env: req.env,
            clear_env: req.clear_env,
            cwd: req.cwd,
            pty: req.pty.then(|| (req.cols.unwrap_or(cols).max(1), req.rows.unwrap_or(rows).max(1))),
        };
        self.table.launch(id, spec).map_err(|e| {
            let code = match &e {
                LaunchError::EmptyCommand | LaunchError::BadSpec(_) => "bad-request",
                LaunchError::Active(_) => "run-active",
                LaunchError::Exists(_) => "run-exists",
                LaunchError::TooMany(_) => "too-many-runs",
                LaunchError::ShuttingDown => "shutting-down",
                LaunchError::Journal(_) => "journal",
            };
            Refusal { code, message: e.to_string() }
        })
    }

    fn cancel(&self, run: &RunId, reason: String) -> Result<RunInfo, CancelError> {
        self.table.cancel(run, reason)
    }

    fn get(&self, run: &RunId) -> Option<RunInfo> {
        self.table.get(run)
    }

    fn list(&self) -> Vec<RunInfo> {
        self.table.list()
    }

    fn source(&self) -> Source {
        DaemonRuns::source(self)
    }
}
