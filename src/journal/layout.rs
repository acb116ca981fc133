//! Where a run's files live, and operations on a run's files as a whole.
//!
//! ```text
//! runs/<run-id>/meta.json     how the run was launched (command, cwd, pty)
//! runs/<run-id>/events.jsonl  one event per line, exactly the wire JSON,
//!                             seq 1, 2, 3, ... in order
//! runs/<run-id>/state         health, last seq and final status (state.rs)
//! runs/<run-id>/supervisor.json  the run's supervisor process (run::shim)
//! ```

use std::fs;
use std::path::PathBuf;

use super::{Journal, JournalError, io_err};
use crate::run_id::RunId;

pub(super) const EVENTS_FILE: &str = "events.jsonl";
pub(super) const META_FILE: &str = "meta.json";
pub(super) const STATE_FILE: &str = "state";

impl Journal {
    pub fn run_dir(&self, id: &RunId) -> PathBuf {
        // RunId's grammar has no '/' and no leading '.', so this stays inside root.
        self.root.join(id.as_str())
    }

    pub fn exists(&self, id: &RunId) -> bool {
        self.run_dir(id).join(META_FILE).exists()
    }

    pub(super) fn state_path(&self, id: &RunId) -> PathBuf {
        self.run_dir(id).join(STATE_FILE)
    }

    /// Moves a run's files to `<root>/../archive/<run>.<id>` (the gateway,
    /// when a host reuses a run ID).
    pub fn archive_run(&self, id: &RunId) -> Result<(), JournalError> {
        let archive = self.root.parent().unwrap_or(&self.root).join("archive");
        fs::create_dir_all(&archive).map_err(io_err("create archive dir", &archive))?;
        let to = archive.join(format!("{id}.{}", RunId::generate()));
        let from = self.run_dir(id);
        fs::rename(&from, &to).map_err(io_err("archive run", &from))?;
        self.health.forget(id);
        Ok(())
    }

    /// Deletes a finished run's files (retention).
    pub fn remove_run(&self, id: &RunId) -> Result<(), JournalError> {
        let dir = self.run_dir(id);
        fs::remove_dir_all(&dir).map_err(io_err("remove run", &dir))?;
        self.health.forget(id);
        Ok(())
    }

    /// Size on disk of a run's files.
    pub fn run_bytes(&self, id: &RunId) -> u64 {
        let dir = self.run_dir(id);
        [EVENTS_FILE, META_FILE, STATE_FILE]
            .iter()
            .filter_map(|f| fs::metadata(dir.join(f)).ok())
            .map(|m| m.len())
            .sum()
    }
}
