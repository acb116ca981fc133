//! A NATS replica as the server sees it: the same [`Backend`] as the local
//! gateway, answered from the mirrored buckets, the stream and this
//! replica's hubs.

use std::sync::atomic::Ordering::Relaxed;

use hyper::upgrade::Upgraded;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::index::{HostEntry, RunEntry};
use super::{NatsGateway, link};
use crate::auth::{At, Scope};
use crate::gateway::backend::cancel_outcome;
use crate::run_id::RunId;
use crate::server::Backend;
use crate::server::backend::{
    ActiveRun, AgentEndpoint, BackendStats, BoxFuture, CancelOutcome, LookupError, RunRef, RunWatch, Source,
    watch_broadcast,
};

fn row_json(e: &RunEntry) -> Value {
    let mut v = json!(e.info);
    v["host"] = json!(e.host);
    v
}

fn host_json(h: &HostEntry, runs: usize, active: usize) -> Value {
    let connected = h.connected();
    json!({
        "host": h.host,
        "connected": connected,
        "connectedSince": if connected { h.connected_since.clone() } else { None },
        "lastSeen": h.last_seen,
        "epoch": h.epoch,
        "runs": runs,
        "activeRuns": active,
        "replica": if connected { h.holder.clone() } else { None },
    })
}

impl NatsGateway {
    /// Waits until the run (or, with `host`, that host's run) is in the
    /// index, as a daemon waits for a run that does not exist yet.
    async fn find(&self, host: Option<&str>, run: &RunId) -> Result<RunEntry, LookupError> {
        let mut arrivals = self.index().arrivals.subscribe();
        loop {
            match self.resolve(host, run) {
                Ok(entry) => return Ok(entry),
                Err(LookupError::NotFound(_) | LookupError::UnknownHost(_)) => {}
                Err(e) => return Err(e),
            }
            match arrivals.recv().await {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return Err(LookupError::NotFound(run.to_string())),
            }
        }
    }
}

impl Backend for NatsGateway {
    fn source<'a>(&'a self, host: Option<&'a str>, run: &'a RunId) -> BoxFuture<'a, Result<Source, LookupError>> {
        Box::pin(async move {
            let entry = self.find(host, run).await?;
            let ended = entry.info.status.is_final().then_some(entry.info.last_seq);
            self.inner.live.source(&entry.key(), ended).await.map_err(|e| {
                tracing::warn!(host = %entry.host, run_id = %run, error = %e, "cannot follow the run");
                LookupError::NotFound(format!("{run} (the event store is not answering: {e})"))
            })
        })
    }

    fn list(&self, scope: &Scope) -> Vec<Value> {
        let runs = self.index().runs.lock().map(|r| r.values().cloned().collect::<Vec<_>>()).unwrap_or_default();
        let mut rows: Vec<&RunEntry> =
            runs.iter().filter(|e| scope.allows(At::Host(&e.host), &e.info.run_id)).collect();
        rows.sort_by(|a, b| (&a.host, &a.info.created_at).cmp(&(&b.host, &b.info.created_at)));
        rows.into_iter().map(row_json).collect()
    }

    fn get(&self, host: Option<&str>, run: &RunId) -> Result<Value, LookupError> {
        self.resolve(host, run).map(|e| row_json(&e))
    }

    fn cancel<'a>(&'a self, host: Option<&'a str>, run: &'a RunId, reason: String) -> BoxFuture<'a, CancelOutcome> {
        Box::pin(async move {
            let reply = self.route_cancel(host, run, reason).await;
            cancel_outcome(reply, run, |host| self.get(Some(host), run).ok())
        })
    }

    fn stats(&self) -> BackendStats {
        let mut s = BackendStats::default();
        if let Ok(runs) = self.index().runs.lock() {
            for e in runs.values() {
                *s.by_status.entry(e.info.status).or_default() += 1;
                s.runs += 1;
                s.active += usize::from(!e.info.status.is_final());
            }
        }
        for hub in self.inner.live.hubs() {
            s.subscriptions += hub.stats().subscriptions.load(Relaxed);
        }
        s.events_in = self.inner.events_in.load(Relaxed);
        s
    }

    fn extra_metrics(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP runtap_gateway_duplicates_dropped_total Events a host sent again that the stream already held.\n",
        );
        out.push_str("# TYPE runtap_gateway_duplicates_dropped_total counter\n");
        out.push_str(&format!("runtap_gateway_duplicates_dropped_total {}\n", self.inner.duplicates.load(Relaxed)));
        out
    }

    fn has_hosts(&self) -> bool {
        true
    }

    fn hosts(&self) -> Option<Value> {
        let hosts = self.index().hosts.lock().map(|h| h.values().cloned().collect::<Vec<_>>()).unwrap_or_default();
        let runs = self.index().runs.lock().map(|r| r.values().cloned().collect::<Vec<_>>()).unwrap_or_default();
        let rows = hosts.iter().map(|h| {
            let mine = runs.iter().filter(|r| r.host == h.host);
            let (n, active) = mine.fold((0, 0), |(n, a), r| (n + 1, a + usize::from(!r.info.status.is_final())));
            host_json(h, n, active)
        });
        Some(Value::Array(rows.collect()))
    }

    fn agent(&self) -> Option<&dyn AgentEndpoint> {
        Some(self)
    }

    fn watch(&self) -> RunWatch {
        watch_broadcast(self.index().arrivals.subscribe(), |(host, run)| {
            run.map(|run| RunRef { host: Some(host), run })
        })
    }

    fn active(&self) -> Vec<ActiveRun> {
        let runs = self.index().runs.lock().map(|r| r.values().cloned().collect::<Vec<_>>()).unwrap_or_default();
        runs.into_iter()
            .filter(|e| !e.info.status.is_final())
            .map(|e| ActiveRun {
                at: RunRef { host: Some(e.host.clone()), run: e.info.run_id.clone() },
                status: e.info.status,
                last_seq: e.info.last_seq,
            })
            .collect()
    }
}

impl AgentEndpoint for NatsGateway {
    fn serve(&self, upgraded: Upgraded, stop: CancellationToken) -> BoxFuture<'static, ()> {
        Box::pin(link::serve(upgraded, self.clone(), stop))
    }
}
