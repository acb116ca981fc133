//! What the journal knows about each run beyond its events: whether the
//! events file is intact, the last seq handed out, and the final status.
//!
//! `runs/<id>/state` holds one JSON record, padded with spaces to
//! [`RECORD_BYTES`] when the run is created, and only ever overwritten in
//! place. Overwriting allocated bytes needs no free space, so the record
//! can still say "degraded, last seq 66, succeeded" when the disk that
//! filled up refuses the events themselves. Recovery reads it: a degraded
//! run stays degraded across restarts, its seqs are never handed out
//! twice, and a run that ended while its journal was failing is not
//! mistaken for one that was cut short.
//!
//! The [`HealthBook`] is the same knowledge in memory, shared by a
//! journal's writers and readers: a history read that finds a damaged
//! line marks the run there, and everything that reports a run's health
//! (`ps`, `GET /runs`, `/healthz`) asks it.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::event::StatusChange;
use crate::run_id::RunId;

/// Size of the state record. A final status with a 1 KiB reason fits.
pub(super) const RECORD_BYTES: usize = 2048;

/// Whether every event of the run is in its journal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    #[default]
    Ok,
    /// A write failed or a line is damaged: live subscribers got every
    /// event, the file does not hold them all. History reports the missing
    /// ranges as `journal-gap`.
    Degraded,
}

/// The record in `runs/<id>/state`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RunState {
    pub(super) journal: Health,
    /// The last seq handed out (published), whether or not it reached the file.
    pub(super) last_seq: u64,
    /// The final status, once the run has one, with the time it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) ended: Option<(StatusChange, String)>,
}

impl RunState {
    /// Reads the record; `None` if there is none (a run from before
    /// records existed) or it is not readable.
    pub(super) fn read(path: &Path) -> Option<RunState> {
        let bytes = std::fs::read(path).ok()?;
        match serde_json::from_slice(bytes.trim_ascii_end()) {
            Ok(state) => Some(state),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "unreadable run state record; ignoring it");
                None
            }
        }
    }

    /// The record's bytes, padded to [`RECORD_BYTES`]; `None` if it does
    /// not fit (a record never grows the file).
    fn encode(&self) -> Option<Vec<u8>> {
        let mut bytes = serde_json::to_vec(self).ok()?;
        if bytes.len() >= RECORD_BYTES {
            return None;
        }
        bytes.resize(RECORD_BYTES - 1, b' ');
        bytes.push(b'\n');
        Some(bytes)
    }

    /// Creates the record file at its full size.
    pub(super) fn create(path: &Path) -> io::Result<File> {
        let file = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(path)?;
        RunState::default().write_to(&file)?;
        Ok(file)
    }

    /// Overwrites the record in place.
    pub(super) fn write_to(&self, file: &File) -> io::Result<()> {
        let bytes = self.encode().ok_or_else(|| io::Error::other("run state record too large"))?;
        file.write_all_at(&bytes, 0)
    }

    /// Opens an existing record to overwrite it (best effort: `None` if it
    /// cannot be opened, e.g. a run from before records existed on a full disk).
    pub(super) fn open(path: &Path) -> Option<File> {
        match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => RunState::create(path).ok(),
            Err(_) => None,
        }
    }
}

/// The runs of one journal whose events are not all in their files.
#[derive(Debug, Default)]
pub struct HealthBook {
    degraded: Mutex<HashSet<RunId>>,
    /// Per run being written now: the byte offset from which its events
    /// file holds only what this process wrote (and checked as it wrote
    /// it). History reads need not check those lines again.
    written_from: Mutex<HashMap<RunId, u64>>,
}

impl HealthBook {
    fn set(&self) -> MutexGuard<'_, HashSet<RunId>> {
        // A set of IDs: a panic elsewhere cannot leave it half-updated.
        self.degraded.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn of(&self, run: &RunId) -> Health {
        if self.set().contains(run) { Health::Degraded } else { Health::Ok }
    }

    /// Marks a run degraded; true if it was not already.
    pub(super) fn mark(&self, run: &RunId) -> bool {
        self.set().insert(run.clone())
    }

    /// The run's writer, in another process (its shim), stopped writing
    /// the file (a full disk): degraded, and its lines read checked.
    pub fn writer_degraded(&self, run: &RunId) {
        if self.mark(run) {
            self.set_written_from(run, None);
        }
    }

    pub(super) fn forget(&self, run: &RunId) {
        self.set().remove(run);
        self.written().remove(run);
    }

    fn written(&self) -> MutexGuard<'_, HashMap<RunId, u64>> {
        self.written_from.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This process writes the run's file from `offset` on (or, `None`,
    /// no longer vouches for it: a write failed).
    pub(super) fn set_written_from(&self, run: &RunId, offset: Option<u64>) {
        match offset {
            Some(o) => self.written().insert(run.clone(), o),
            None => self.written().remove(run),
        };
    }

    /// Where the lines this process wrote for the run begin, if it did.
    pub(super) fn written_from(&self, run: &RunId) -> Option<u64> {
        self.written().get(run).copied()
    }

    /// How many of the runs `keep` accepts are degraded.
    pub fn count(&self, keep: impl Fn(&RunId) -> bool) -> usize {
        self.set().iter().filter(|r| keep(r)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::RunStatus;

    #[test]
    fn record_round_trips_at_a_fixed_size_and_is_overwritten_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let file = RunState::create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), RECORD_BYTES as u64);
        assert_eq!(RunState::read(&path), Some(RunState::default()));
        let change =
            StatusChange { status: Some(RunStatus::Failed), reason: Some("x".repeat(1024)), ..Default::default() };
        let state = RunState { journal: Health::Degraded, last_seq: 66, ended: Some((change, "t".into())) };
        state.write_to(&file).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), RECORD_BYTES as u64);
        assert_eq!(RunState::read(&path), Some(state));
    }
}
