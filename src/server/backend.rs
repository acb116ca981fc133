//! What the HTTP/WebSocket server serves: this host's run table (daemon)
//! or every host's copy (gateway). Endpoints, auth, limits and the
//! WebSocket session are the same code for both.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::auth::Scope;
use crate::event::RunStatus;
use crate::gateway::{CancelReply, Gateway};
use crate::hub::Hub;
use crate::journal::Journal;
use crate::run::{CancelError, RunTable};
use crate::run_id::RunId;

pub enum Backend {
    Daemon(RunTable),
    Gateway(Gateway),
}

/// Where a subscription reads: a journal and the hub that goes with it.
pub struct Source {
    pub journal: Journal,
    pub hub: Hub,
}

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("no host {0}")]
    UnknownHost(String),
    #[error("run {0} exists on several hosts ({1}); add host=")]
    Ambiguous(RunId, String),
    #[error("no run {0}")]
    NotFound(String),
}

/// How a cancel request ended, for the HTTP answer.
pub enum CancelOutcome {
    /// 200: `{"runId", "status"}` (+ `host` at the gateway).
    Cancelling(Value),
    NotFound(String),
    /// 409 with the final status.
    Finished(Value),
    /// 503: the host is not connected.
    Unavailable(String),
    /// 504: the host did not answer in time.
    Timeout(String),
}

/// Counters the `/metrics` and `/healthz` pages need from the backend.
#[derive(Default)]
pub struct BackendStats {
    pub runs: usize,
    pub active: usize,
    pub degraded: usize,
    pub subscriptions: u64,
    pub events_in: u64,
    pub journal_bytes: u64,
    pub journal_errors: u64,
    pub by_status: HashMap<RunStatus, usize>,
}

impl Backend {
    pub fn table(&self) -> Option<&RunTable> {
        match self {
            Backend::Daemon(t) => Some(t),
            Backend::Gateway(_) => None,
        }
    }

    /// Finds where a run's stream lives. At the gateway, without a host, a
    /// run that no host has yet is waited for (the caller bounds the wait by
    /// the life of the connection).
    pub async fn source(&self, host: Option<&str>, run: &RunId) -> Result<Source, LookupError> {
        match self {
            Backend::Daemon(t) => Ok(Source { journal: t.journal().clone(), hub: t.hub().clone() }),
            Backend::Gateway(g) => g.source(host, run).await,
        }
    }

    pub fn list(&self, scope: &Scope) -> Vec<Value> {
        match self {
            Backend::Daemon(t) => t.list().into_iter().filter(|r| scope.allows(&r.run_id)).map(|r| json!(r)).collect(),
            Backend::Gateway(g) => g.list(scope),
        }
    }

    pub fn get(&self, host: Option<&str>, run: &RunId) -> Result<Value, LookupError> {
        match self {
            Backend::Daemon(t) => t.get(run).map(|r| json!(r)).ok_or_else(|| LookupError::NotFound(run.to_string())),
            Backend::Gateway(g) => g.get(host, run),
        }
    }

    pub async fn cancel(&self, host: Option<&str>, run: &RunId, reason: String) -> CancelOutcome {
        match self {
            Backend::Daemon(t) => match t.cancel(run, reason) {
                Ok(info) => CancelOutcome::Cancelling(json!({"runId": run.as_str(), "status": info.status})),
                Err(CancelError::NotFound(_)) => CancelOutcome::NotFound(format!("no run {run}")),
                Err(CancelError::Finished(info)) => CancelOutcome::Finished(json!(info)),
            },
            Backend::Gateway(g) => match g.cancel(host, run, reason).await {
                Ok(CancelReply { host, ok: true, status, .. }) => {
                    CancelOutcome::Cancelling(json!({"runId": run.as_str(), "host": host, "status": status}))
                }
                Ok(CancelReply { code, message, .. }) if code.as_deref() == Some("not-found") => {
                    CancelOutcome::NotFound(message.unwrap_or_default())
                }
                Ok(CancelReply { host, status, .. }) => {
                    let mut v =
                        g.get(Some(&host), run).unwrap_or_else(|_| json!({"runId": run.as_str(), "host": host}));
                    if let Some(s) = status {
                        v["status"] = json!(s);
                    }
                    CancelOutcome::Finished(v)
                }
                Err(crate::gateway::CancelError::Lookup(LookupError::NotFound(m))) => CancelOutcome::NotFound(m),
                Err(crate::gateway::CancelError::Lookup(e)) => CancelOutcome::NotFound(e.to_string()),
                Err(crate::gateway::CancelError::Offline(h)) => {
                    CancelOutcome::Unavailable(format!("host {h} is not connected"))
                }
                Err(crate::gateway::CancelError::Timeout(h)) => {
                    CancelOutcome::Timeout(format!("host {h} did not answer in time"))
                }
            },
        }
    }

    pub fn stats(&self) -> BackendStats {
        use std::sync::atomic::Ordering::Relaxed;
        match self {
            Backend::Daemon(t) => {
                let by_status = t.count_by_status();
                BackendStats {
                    runs: by_status.values().sum(),
                    active: t.active_count(),
                    degraded: t.degraded_count(),
                    subscriptions: t.hub().stats().subscriptions.load(Relaxed),
                    events_in: t.hub().stats().events_published.load(Relaxed),
                    journal_bytes: t.journal().stats.bytes_written.load(Relaxed),
                    journal_errors: t.journal().stats.write_errors.load(Relaxed),
                    by_status,
                }
            }
            Backend::Gateway(g) => g.stats(),
        }
    }

    /// Backend-specific lines for `/metrics` (the gateway's hosts).
    pub fn extra_metrics(&self) -> String {
        match self {
            Backend::Daemon(_) => String::new(),
            Backend::Gateway(g) => g.render_metrics(),
        }
    }
}
