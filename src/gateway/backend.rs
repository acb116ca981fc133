//! The gateway as the server sees it: every host's copy behind the same
//! [`Backend`] a daemon serves, plus `/hosts` and the `/agent` endpoint.

use hyper::upgrade::Upgraded;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::cancel::{CancelError, CancelReply};
use super::{Gateway, agent};
use crate::auth::Scope;
use crate::run_id::RunId;
use crate::server::Backend;
use crate::server::backend::{
    ActiveRun, AgentEndpoint, BackendStats, BoxFuture, CancelOutcome, LookupError, RunRef, RunWatch, Source,
    watch_broadcast,
};

impl Backend for Gateway {
    fn source<'a>(&'a self, host: Option<&'a str>, run: &'a RunId) -> BoxFuture<'a, Result<Source, LookupError>> {
        Box::pin(Gateway::source(self, host, run))
    }

    fn list(&self, scope: &Scope) -> Vec<Value> {
        Gateway::list(self, scope)
    }

    fn get(&self, host: Option<&str>, run: &RunId) -> Result<Value, LookupError> {
        Gateway::get(self, host, run)
    }

    fn cancel<'a>(&'a self, host: Option<&'a str>, run: &'a RunId, reason: String) -> BoxFuture<'a, CancelOutcome> {
        Box::pin(async move {
            let reply = Gateway::cancel(self, host, run, reason).await;
            cancel_outcome(reply, run, |host| self.get(Some(host), run).ok())
        })
    }

    fn stats(&self) -> BackendStats {
        Gateway::stats(self)
    }

    fn extra_metrics(&self) -> String {
        self.render_metrics()
    }

    fn has_hosts(&self) -> bool {
        true
    }

    fn hosts(&self) -> Option<Value> {
        Some(self.hosts_json())
    }

    fn agent(&self) -> Option<&dyn AgentEndpoint> {
        Some(self)
    }

    fn watch(&self) -> RunWatch {
        watch_broadcast(self.arrivals(), |(host, run)| run.map(|run| RunRef { host: Some(host), run }))
    }

    fn active(&self) -> Vec<ActiveRun> {
        self.active_runs()
    }
}

impl AgentEndpoint for Gateway {
    fn serve(&self, upgraded: Upgraded, stop: CancellationToken) -> BoxFuture<'static, ()> {
        Box::pin(agent::serve(upgraded, self.clone(), stop))
    }
}

/// The HTTP answer to a routed cancel: the host's reply, or why there was
/// none. `get` gives the run's row at its host, for a 409.
pub(super) fn cancel_outcome(
    reply: Result<CancelReply, CancelError>,
    run: &RunId,
    get: impl FnOnce(&str) -> Option<Value>,
) -> CancelOutcome {
    match reply {
        Ok(CancelReply { host, ok: true, status, .. }) => {
            CancelOutcome::Cancelling(json!({"runId": run.as_str(), "host": host, "status": status}))
        }
        Ok(CancelReply { code, message, .. }) if code.as_deref() == Some("not-found") => {
            CancelOutcome::NotFound(message.unwrap_or_default())
        }
        Ok(CancelReply { host, status, .. }) => {
            let mut v = get(&host).unwrap_or_else(|| json!({"runId": run.as_str(), "host": host}));
            if let Some(s) = status {
                v["status"] = json!(s);
            }
            CancelOutcome::Finished(v)
        }
        Err(CancelError::Lookup(LookupError::NotFound(m))) => CancelOutcome::NotFound(m),
        Err(CancelError::Lookup(e)) => CancelOutcome::NotFound(e.to_string()),
        Err(CancelError::Offline(h)) => CancelOutcome::Unavailable(format!("host {h} is not connected")),
        Err(CancelError::Timeout(h)) => CancelOutcome::Timeout(format!("host {h} did not answer in time")),
    }
}
