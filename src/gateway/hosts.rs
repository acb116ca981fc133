//! One host's copy at the gateway, and the agent session that feeds it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::cancel::CancelRequest;
use super::{Gateway, GatewayError, lock};
use crate::event::now_timestamp;
use crate::hub::Hub;
use crate::journal::Journal;
use crate::run_id::RunId;
use crate::run_info::RunInfo;

/// One host's copy.
pub(crate) struct Host {
    pub id: String,
    pub journal: Journal,
    pub hub: Hub,
    pub(super) state: Mutex<HostState>,
    /// Held by the host's agent session: one appender at a time.
    pub(super) session: tokio::sync::Mutex<()>,
}

#[derive(Default)]
pub(super) struct HostState {
    pub(super) epoch: Option<String>,
    pub(super) runs: HashMap<RunId, RunInfo>,
    pub(super) link: Option<Link>,
    pub(super) last_seen: Option<String>,
    pub(super) connected_since: Option<String>,
}

/// The connected agent session of a host.
pub(super) struct Link {
    pub(super) id: u64,
    pub(super) cancels: mpsc::Sender<CancelRequest>,
    pub(super) stop: CancellationToken,
}

impl Host {
    pub(super) fn open(state_dir: &Path, id: &str) -> Result<Host, GatewayError> {
        let dir = state_dir.join("hosts").join(id);
        std::fs::create_dir_all(&dir).map_err(|error| GatewayError::StateDir { path: dir.clone(), error })?;
        let journal = Journal::open(&dir).map_err(GatewayError::Journal)?.with_host(id);
        let hub = Hub::default();
        let mut state = HostState {
            epoch: std::fs::read_to_string(dir.join("epoch")).ok().map(|s| s.trim().to_owned()),
            ..HostState::default()
        };
        for mut r in journal.scan_open().map_err(GatewayError::Journal)? {
            // Resume after what the file holds: seqs this copy saw but could
            // not store (a full disk here) are sent again by the host.
            r.last_seq = r.file_seq;
            if r.status.is_final() {
                hub.insert_closed(&r.run_id, r.last_seq);
            } else {
                drop(hub.open(&r.run_id, r.last_seq));
            }
            state.runs.insert(r.run_id.clone(), RunInfo::recovered(r));
        }
        Ok(Host { id: id.to_owned(), journal, hub, state: Mutex::new(state), session: tokio::sync::Mutex::new(()) })
    }

    fn dir(&self) -> PathBuf {
        self.journal.root().parent().map(Path::to_path_buf).unwrap_or_default()
    }

    /// Last seq held for every run: what the host resumes after.
    pub(crate) fn cursors(&self) -> HashMap<String, u64> {
        lock(&self.state).runs.iter().map(|(id, r)| (id.to_string(), r.last_seq)).collect()
    }

    /// A run as it stands now (its journal's health included).
    pub(crate) fn run_info(&self, run: &RunId) -> Option<RunInfo> {
        let mut info = lock(&self.state).runs.get(run).cloned()?;
        info.journal = self.journal.health.of(run);
        Some(info)
    }

    pub(crate) fn update_run(&self, run: &RunId, f: impl FnOnce(&mut RunInfo)) {
        if let Some(info) = lock(&self.state).runs.get_mut(run) {
            f(info);
        }
    }

    pub(crate) fn remove_run(&self, run: &RunId) {
        lock(&self.state).runs.remove(run);
    }

    pub(crate) fn insert_run(&self, info: RunInfo) {
        lock(&self.state).runs.insert(info.run_id.clone(), info);
    }

    pub(super) fn to_json(&self) -> Value {
        let st = lock(&self.state);
        let active = st.runs.values().filter(|r| !r.status.is_final()).count();
        json!({
            "host": self.id,
            "connected": st.link.is_some(),
            "connectedSince": st.connected_since,
            "lastSeen": st.last_seen,
            "epoch": st.epoch,
            "runs": st.runs.len(),
            "activeRuns": active,
        })
    }
}

impl Gateway {
    /// The host's copy for a session that says it has `epoch`. A different
    /// epoch than the one held means the host's state dir was wiped: the
    /// old copy is archived (never merged: run IDs and seqs start over).
    pub(crate) fn host_for_session(&self, id: &str, epoch: &str) -> Result<Arc<Host>, GatewayError> {
        if let Some(host) = self.host(id) {
            let held = lock(&host.state).epoch.clone();
            match held {
                Some(e) if e != epoch => {
                    tracing::warn!(host = id, old_epoch = %e, new_epoch = epoch,
                        "host state dir was reset: archiving the gateway's old copy of its runs");
                    let archive = self.inner.state_dir.join("archive");
                    std::fs::create_dir_all(&archive)
                        .map_err(|error| GatewayError::StateDir { path: archive.clone(), error })?;
                    let to = archive.join(format!("{id}-{e}"));
                    std::fs::rename(host.dir(), &to)
                        .map_err(|error| GatewayError::StateDir { path: to.clone(), error })?;
                    for run in lock(&host.state).runs.keys() {
                        host.hub.remove(run);
                    }
                }
                _ => {
                    self.write_epoch(&host, epoch)?;
                    return Ok(host);
                }
            }
        }
        let host = Arc::new(Host::open(&self.inner.state_dir, id)?);
        self.write_epoch(&host, epoch)?;
        lock(&self.inner.hosts).insert(id.to_owned(), host.clone());
        self.announce(id, None);
        Ok(host)
    }

    fn write_epoch(&self, host: &Host, epoch: &str) -> Result<(), GatewayError> {
        let mut st = lock(&host.state);
        if st.epoch.as_deref() != Some(epoch) {
            let path = host.dir().join("epoch");
            std::fs::write(&path, epoch).map_err(|error| GatewayError::StateDir { path, error })?;
            st.epoch = Some(epoch.to_owned());
        }
        Ok(())
    }

    /// Records a session as the host's live link, stopping any older one.
    pub(super) fn attach(
        &self,
        host: &Host,
        link_id: u64,
        cancels: mpsc::Sender<CancelRequest>,
        stop: CancellationToken,
    ) {
        let mut st = lock(&host.state);
        if let Some(old) = st.link.take() {
            old.stop.cancel();
        }
        st.link = Some(Link { id: link_id, cancels, stop });
        st.connected_since = Some(now_timestamp());
        st.last_seen = Some(now_timestamp());
    }

    pub(super) fn detach(&self, host: &Host, link_id: u64) {
        let mut st = lock(&host.state);
        if st.link.as_ref().is_some_and(|l| l.id == link_id) {
            st.link = None;
            st.connected_since = None;
        }
        st.last_seen = Some(now_timestamp());
    }
}
