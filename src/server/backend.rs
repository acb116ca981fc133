//! What the HTTP/WebSocket server serves, as the server sees it.
//!
//! The server is transport: endpoints, tokens, limits and the WebSocket
//! session are the same code whoever is behind them. A [`Backend`] is the
//! one thing it asks about runs. The daemon implements it over its run
//! table (`daemon::backend`), the gateway over every host's copy
//! (`gateway::backend`); the server imports neither.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use hyper::upgrade::Upgraded;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::auth::Scope;
use crate::event::RunStatus;
use crate::history::History;
use crate::hub::Hub;
use crate::run_id::RunId;

/// A boxed future, so that [`Backend`] can be used as a trait object.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The runs behind the listener.
pub(crate) trait Backend: Send + Sync + 'static {
    /// Where a run's stream lives. A backend may wait for a run (or host)
    /// that is not known yet, as a daemon's hub waits for a run that does
    /// not exist yet; the caller bounds the wait by the connection's life.
    fn source<'a>(&'a self, host: Option<&'a str>, run: &'a RunId) -> BoxFuture<'a, Result<Source, LookupError>>;

    /// `GET /runs`: every run the scope allows, as JSON objects.
    fn list(&self, scope: &Scope) -> Vec<Value>;

    /// `GET /runs/ID`.
    fn get(&self, host: Option<&str>, run: &RunId) -> Result<Value, LookupError>;

    /// `POST /runs/ID/cancel`.
    fn cancel<'a>(&'a self, host: Option<&'a str>, run: &'a RunId, reason: String) -> BoxFuture<'a, CancelOutcome>;

    /// Counters for `/metrics` and `/healthz`.
    fn stats(&self) -> BackendStats;

    /// Lines for `/metrics` beyond the server's own (Prometheus text).
    fn extra_metrics(&self) -> String {
        String::new()
    }

    /// True when runs are named by host as well as ID (a gateway). Without
    /// hosts, `host=` is ignored, so it cannot make two subscriptions to one run.
    fn has_hosts(&self) -> bool {
        false
    }

    /// `GET /hosts`; `None` answers 404.
    fn hosts(&self) -> Option<Value> {
        None
    }

    /// `GET /agent` (WebSocket, agent tokens only); `None` answers 404.
    fn agent(&self) -> Option<&dyn AgentEndpoint> {
        None
    }

    /// Every run that starts (or, at a gateway, first arrives) from now on,
    /// for pattern subscriptions. `None` in the stream: some were missed
    /// (the watcher fell behind); look at `active` again.
    fn watch(&self) -> RunWatch;

    /// The runs that are active now.
    fn active(&self) -> Vec<ActiveRun>;
}

/// A run that has not ended, as a pattern subscription first sees it.
#[derive(Clone, Debug)]
pub(crate) struct ActiveRun {
    pub at: RunRef,
    pub status: RunStatus,
    /// Its last event so far: a pattern follows it from there.
    pub last_seq: u64,
}

/// A run as a pattern subscription learns of it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct RunRef {
    /// The host it runs on, where the backend has hosts.
    pub host: Option<String>,
    pub run: RunId,
}

/// Runs as they start; `None`: some were missed.
pub(crate) type RunWatch = Pin<Box<dyn futures_util::Stream<Item = Option<RunRef>> + Send>>;

/// A `RunWatch` over a broadcast of new runs.
pub(crate) fn watch_broadcast<T: Clone + Send + 'static>(
    rx: tokio::sync::broadcast::Receiver<T>,
    to_ref: impl Fn(T) -> Option<RunRef> + Send + 'static,
) -> RunWatch {
    use futures_util::StreamExt as _;
    use tokio_stream::wrappers::BroadcastStream;
    Box::pin(BroadcastStream::new(rx).filter_map(move |item| {
        let out = match item {
            Ok(t) => to_ref(t).map(Some),
            Err(_) => Some(None),
        };
        std::future::ready(out)
    }))
}

/// The other end of `GET /agent`: the server authenticates the agent token
/// and upgrades; what is spoken after that is the backend's.
pub(crate) trait AgentEndpoint: Send + Sync {
    fn serve(&self, upgraded: Upgraded, stop: CancellationToken) -> BoxFuture<'static, ()>;
}

/// Where a subscription reads: a run's history (a journal, or a store
/// elsewhere) and the hub that goes with it.
pub(crate) struct Source {
    pub history: History,
    pub hub: Hub,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum LookupError {
    #[error("no host {0}")]
    UnknownHost(String),
    #[error("run {0} exists on several hosts ({1}); add host=")]
    Ambiguous(RunId, String),
    #[error("no run {0}")]
    NotFound(String),
}

/// How a cancel request ended, for the HTTP answer.
pub(crate) enum CancelOutcome {
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
pub(crate) struct BackendStats {
    pub runs: usize,
    pub active: usize,
    pub degraded: usize,
    pub subscriptions: u64,
    pub events_in: u64,
    pub journal_bytes: u64,
    pub journal_errors: u64,
    /// Run directories moved to quarantine (unreadable) since start.
    pub quarantined: u64,
    pub by_status: HashMap<RunStatus, usize>,
}
