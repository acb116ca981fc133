//! The two buckets as this replica sees them: which replica holds each
//! host's link (`runtap-hosts`) and every run's row (`runtap-runs`, behind
//! `GET /runs` and `GET /hosts`).
//!
//! Each replica mirrors both buckets in memory (`mirror`), so the server's
//! lookups stay synchronous and cheap; every write goes to the
//! bucket with compare-and-set, and reaches every mirror (this one too)
//! from there. A row only moves forward: a write that would take a
//! run back to fewer events, or to another status from a final one, is
//! dropped, so a stale replica cannot undo what a newer one recorded.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::mirror::mirror;
use super::names::{self, RunKey};
use super::store::StoreError;
use crate::event::now_timestamp;
use crate::run_id::RunId;
use crate::run_info::RunInfo;

/// A replica that has not renewed its hold on a host for this long is
/// taken for gone: the host shows as disconnected.
pub(super) const HOLD_FRESH: Duration = Duration::from_secs(15);
/// New runs and hosts buffered for waiting viewers and patterns.
const ARRIVALS_BACKLOG: usize = 1024;

/// A run's row.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RunEntry {
    pub host: String,
    pub epoch: String,
    pub info: RunInfo,
}

impl RunEntry {
    pub(super) fn key(&self) -> RunKey {
        RunKey::new(&self.host, &self.epoch, self.info.run_id.as_str(), &self.info.created_at)
    }

    /// True if `self` may replace `old`: a different incarnation, or the
    /// same one further on.
    fn supersedes(&self, old: &RunEntry) -> bool {
        if (old.epoch.as_str(), old.info.created_at.as_str()) != (self.epoch.as_str(), self.info.created_at.as_str()) {
            return true;
        }
        if old.info.status.is_final() && !self.info.status.is_final() {
            return false;
        }
        self.info.last_seq > old.info.last_seq || self.info.status != old.info.status
    }
}

/// A host's row: the life of its state dir, and who holds its link.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct HostEntry {
    pub host: String,
    pub epoch: String,
    /// The replica holding the link, while one does.
    pub holder: Option<String>,
    pub connected_since: Option<String>,
    pub last_seen: Option<String>,
    /// When the holder last renewed its hold (unix ms).
    #[serde(default)]
    pub renewed_ms: u64,
}

impl HostEntry {
    pub(super) fn connected(&self) -> bool {
        self.holder.is_some() && now_ms().saturating_sub(self.renewed_ms) < HOLD_FRESH.as_millis() as u64
    }
}

pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// This replica's copy of both buckets.
pub(super) struct Index {
    pub runs: Mutex<BTreeMap<(String, RunId), RunEntry>>,
    pub hosts: Mutex<BTreeMap<String, HostEntry>>,
    /// `(host, Some(run))` for each run first seen, `(host, None)` for each new host.
    pub arrivals: broadcast::Sender<(String, Option<RunId>)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Index {
    pub(super) fn new() -> Arc<Index> {
        let (arrivals, _) = broadcast::channel(ARRIVALS_BACKLOG);
        Arc::new(Index { runs: Mutex::default(), hosts: Mutex::default(), arrivals })
    }

    pub(super) fn run(&self, host: &str, run: &RunId) -> Option<RunEntry> {
        lock(&self.runs).get(&(host.to_owned(), run.clone())).cloned()
    }

    /// Every host holding a run of this ID.
    pub(super) fn holders(&self, run: &RunId) -> Vec<RunEntry> {
        lock(&self.runs).values().filter(|e| &e.info.run_id == run).cloned().collect()
    }

    pub(super) fn host(&self, host: &str) -> Option<HostEntry> {
        lock(&self.hosts).get(host).cloned()
    }

    fn apply_run(&self, entry: &kv::Entry) {
        if matches!(entry.operation, Operation::Delete | Operation::Purge) {
            let mut runs = lock(&self.runs);
            runs.retain(|(h, r), _| names::run_key(h, r.as_str()) != entry.key);
            return;
        }
        let Ok(row) = serde_json::from_slice::<RunEntry>(&entry.value) else {
            tracing::warn!(key = %entry.key, "run index: skipping a row that is not ours");
            return;
        };
        let id = (row.host.clone(), row.info.run_id.clone());
        let new = lock(&self.runs).insert(id.clone(), row).is_none();
        if new {
            let _ = self.arrivals.send((id.0, Some(id.1)));
        }
    }

    fn apply_host(&self, entry: &kv::Entry) {
        let Ok(row) = serde_json::from_slice::<HostEntry>(&entry.value) else { return };
        let host = row.host.clone();
        if lock(&self.hosts).insert(host.clone(), row).is_none() {
            let _ = self.arrivals.send((host, None));
        }
    }

    /// Mirrors both buckets until `stop`; `ready` turns true once both were
    /// read through once.
    pub(super) fn follow(
        self: &Arc<Self>,
        hosts: kv::Store,
        runs: kv::Store,
        stop: CancellationToken,
    ) -> watch::Receiver<usize> {
        let (ready, rx) = watch::channel(0usize);
        let ready = Arc::new(ready);
        let me = self.clone();
        let (r1, s1) = (ready.clone(), stop.clone());
        tokio::spawn(async move { mirror(runs, s1, r1, move |e| me.apply_run(e)).await });
        let me = self.clone();
        tokio::spawn(async move { mirror(hosts, stop, ready, move |e| me.apply_host(e)).await });
        rx
    }
}

/// Writes a run's row, unless the bucket already has it as far or further.
pub(super) async fn put_run(bucket: &kv::Store, row: &RunEntry) -> Result<(), StoreError> {
    let key = names::run_key(&row.host, row.info.run_id.as_str());
    let value: bytes::Bytes = serde_json::to_vec(row).map_err(|e| StoreError::Request(e.to_string()))?.into();
    for _ in 0..8 {
        let current = bucket.entry(key.clone()).await.map_err(|e| StoreError::Request(e.to_string()))?;
        let result = match current {
            Some(e) if matches!(e.operation, Operation::Put) => {
                if let Ok(old) = serde_json::from_slice::<RunEntry>(&e.value)
                    && !row.supersedes(&old)
                {
                    return Ok(());
                }
                bucket.update(key.clone(), value.clone(), e.revision).await.map(drop).map_err(|e| e.to_string())
            }
            Some(e) => bucket.update(key.clone(), value.clone(), e.revision).await.map(drop).map_err(|e| e.to_string()),
            None => bucket.create(key.clone(), value.clone()).await.map(drop).map_err(|e| e.to_string()),
        };
        match result {
            Ok(()) => return Ok(()),
            // Someone wrote it in between: look again.
            Err(_) => continue,
        }
    }
    Err(StoreError::Request(format!("run index row {key}: too many concurrent writers")))
}

/// What a replica holds of a host: the row's revision, to renew with.
pub(super) struct Hold {
    pub key: String,
    pub row: HostEntry,
    pub revision: u64,
}

/// Takes the host's link for `replica`, whoever held it.
pub(super) async fn claim_host(
    bucket: &kv::Store,
    host: &str,
    epoch: &str,
    replica: &str,
) -> Result<(Hold, Option<String>), StoreError> {
    let key = names::host_key(host);
    for _ in 0..8 {
        let current = bucket.entry(key.clone()).await.map_err(|e| StoreError::Request(e.to_string()))?;
        let old: Option<HostEntry> = current.as_ref().and_then(|e| serde_json::from_slice(&e.value).ok());
        let now = now_timestamp();
        let row = HostEntry {
            host: host.to_owned(),
            epoch: epoch.to_owned(),
            holder: Some(replica.to_owned()),
            connected_since: Some(now.clone()),
            last_seen: Some(now),
            renewed_ms: now_ms(),
        };
        let value: bytes::Bytes = serde_json::to_vec(&row).map_err(|e| StoreError::Request(e.to_string()))?.into();
        let written = match &current {
            Some(e) => bucket.update(key.clone(), value, e.revision).await.map_err(|e| e.to_string()),
            None => bucket.create(key.clone(), value).await.map_err(|e| e.to_string()),
        };
        if let Ok(revision) = written {
            let old_epoch = old.map(|o| o.epoch).filter(|e| !e.is_empty() && e != epoch);
            return Ok((Hold { key, row, revision }, old_epoch));
        }
    }
    Err(StoreError::Request(format!("host {host}: too many replicas claiming it at once")))
}

impl Hold {
    /// Renews the hold; `Fenced` if another replica took the host since.
    pub(super) async fn renew(&mut self, bucket: &kv::Store, connected: bool) -> Result<(), StoreError> {
        self.row.last_seen = Some(now_timestamp());
        self.row.renewed_ms = now_ms();
        if !connected {
            self.row.holder = None;
            self.row.connected_since = None;
        }
        let value: bytes::Bytes = serde_json::to_vec(&self.row).map_err(|e| StoreError::Request(e.to_string()))?.into();
        match bucket.update(self.key.clone(), value, self.revision).await {
            Ok(revision) => {
                self.revision = revision;
                Ok(())
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(StoreError::Fenced(self.key.clone())),
            Err(e) => Err(StoreError::Request(e.to_string())),
        }
    }
}

/// The rows of a host's runs from an older life of its state dir: they go,
/// as the local engine archives them, since run IDs and seqs start over.
pub(super) async fn forget_epoch(bucket: &kv::Store, index: &Index, host: &str, old_epoch: &str) {
    let old: Vec<String> = lock(&index.runs)
        .values()
        .filter(|e| e.host == host && e.epoch == old_epoch)
        .map(|e| names::run_key(host, e.info.run_id.as_str()))
        .collect();
    for key in &old {
        if let Err(error) = bucket.purge(key).await {
            tracing::warn!(host, key, %error, "cannot drop a run of the host's old state dir from the index");
        }
    }
}
