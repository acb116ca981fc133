//! Finding where a run lives at the gateway: by host, or by run ID across
//! hosts (unique there), waiting for one that is not known yet.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::hosts::Host;
use super::{Gateway, lock};
use crate::auth::{At, Scope};
use crate::run_id::RunId;
use crate::run_info::RunInfo;
use crate::server::backend::{ActiveRun, LookupError, RunRef, Source};

/// What a waiting subscription is waiting for.
enum Arrival {
    Run(RunId),
    Host(String),
}

impl Arrival {
    fn matches(&self, host: &str, run: Option<&RunId>) -> bool {
        match self {
            Arrival::Run(want) => run == Some(want),
            Arrival::Host(want) => host == want,
        }
    }
}

impl Gateway {
    /// Hosts that hold `run`.
    fn holders(&self, run: &RunId) -> Vec<Arc<Host>> {
        self.all_hosts().into_iter().filter(|h| lock(&h.state).runs.contains_key(run)).collect()
    }

    pub(super) fn resolve(&self, host: Option<&str>, run: &RunId) -> Result<Arc<Host>, LookupError> {
        match host {
            Some(h) => self.host(h).ok_or_else(|| LookupError::UnknownHost(h.to_owned())),
            None => {
                let holders = self.holders(run);
                match holders.len() {
                    1 => Ok(holders[0].clone()),
                    0 => Err(LookupError::NotFound(run.to_string())),
                    _ => {
                        let names: Vec<_> = holders.iter().map(|h| h.id.clone()).collect();
                        Err(LookupError::Ambiguous(run.clone(), names.join(", ")))
                    }
                }
            }
        }
    }

    /// Where a run's stream lives. A run (without `host`) or a host (with
    /// it) that is not known yet is waited for, as a daemon waits for a run
    /// that does not exist yet; the caller bounds the wait.
    pub(crate) async fn source(&self, host: Option<&str>, run: &RunId) -> Result<Source, LookupError> {
        let mut arrivals = self.inner.arrivals.subscribe();
        loop {
            let waiting_for = match self.resolve(host, run) {
                Ok(h) => return Ok(Source { history: h.journal.clone().into(), hub: h.hub.clone() }),
                Err(LookupError::NotFound(_)) if host.is_none() => Arrival::Run(run.clone()),
                Err(LookupError::UnknownHost(h)) => Arrival::Host(h),
                Err(e) => return Err(e),
            };
            loop {
                match arrivals.recv().await {
                    Ok((h, r)) if waiting_for.matches(&h, r.as_ref()) => break,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return Err(LookupError::NotFound(run.to_string())),
                }
            }
        }
    }

    fn with_host(host: &Host, info: &RunInfo) -> Value {
        let mut v = json!(info);
        v["host"] = json!(host.id);
        v["journal"] = json!(host.journal.health.of(&info.run_id));
        v
    }

    pub(crate) fn list(&self, scope: &Scope) -> Vec<Value> {
        let mut out = Vec::new();
        for h in self.all_hosts() {
            let st = lock(&h.state);
            let mut runs: Vec<&RunInfo> =
                st.runs.values().filter(|r| scope.allows(At::Host(&h.id), &r.run_id)).collect();
            runs.sort_by(|a, b| a.created_at.cmp(&b.created_at));
            out.extend(runs.into_iter().map(|r| Self::with_host(&h, r)));
        }
        out
    }

    pub(crate) fn get(&self, host: Option<&str>, run: &RunId) -> Result<Value, LookupError> {
        let h = self.resolve(host, run)?;
        let info = h.run_info(run).ok_or_else(|| LookupError::NotFound(run.to_string()))?;
        Ok(Self::with_host(&h, &info))
    }

    /// Runs that hosts are forwarding from now on: `(host, Some(run))`.
    pub(crate) fn arrivals(&self) -> broadcast::Receiver<(String, Option<RunId>)> {
        self.inner.arrivals.subscribe()
    }

    /// Every host's runs that are not over.
    pub(crate) fn active_runs(&self) -> Vec<ActiveRun> {
        let mut out = Vec::new();
        for h in self.all_hosts() {
            let st = lock(&h.state);
            out.extend(st.runs.values().filter(|r| !r.status.is_final()).map(|r| ActiveRun {
                at: RunRef { host: Some(h.id.clone()), run: r.run_id.clone() },
                status: r.status,
                last_seq: r.last_seq,
            }));
        }
        out
    }

    pub(crate) fn hosts_json(&self) -> Value {
        Value::Array(self.all_hosts().iter().map(|h| h.to_json()).collect())
    }
}
