//! What a starting daemon does with a run that has no final status and no
//! live writer: its shim is gone (or it never had one). The job's process
//! group is killed (nobody would read it, and it must not run on
//! unsupervised) and the run is closed `lost`, saying why.

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::child;
use super::shim::record::{self, Record};
use crate::journal::{Journal, RecoveredRun};

/// Closes `run` as lost; its row then shows how.
pub(super) fn close_orphan(journal: &Journal, run: &mut RecoveredRun) {
    let rec = Record::read(&journal.run_dir(&run.run_id));
    let rebooted = rec.as_ref().is_some_and(|r| r.boot_id != record::boot_id());
    let reason = match &rec {
        // Pids of another boot name nobody (or somebody else): kill nothing.
        Some(_) if rebooted => "host rebooted since the run started".to_owned(),
        Some(r) => format!("supervisor died: runtap shim (pid {}) is gone", r.pid),
        // A run from a daemon before shims, or a shim that died starting.
        None => "the daemon stopped while the run was active".to_owned(),
    };
    if !rebooted && let Some(pgid) = run.pid {
        let _ = child::signal_group(Pid::from_raw(pgid as i32), Signal::SIGKILL);
    }
    if let Some(r) = &rec {
        let _ = std::fs::remove_file(&r.socket);
    }
    if let Err(error) = journal.close_lost(run, &reason) {
        tracing::error!(run_id = %run.run_id, %error, "cannot close an interrupted run");
    }
}
