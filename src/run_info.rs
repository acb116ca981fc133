//! What `ps`, `GET /runs` and the socket's `status` show about a run, and
//! the one way it changes.
//!
//! The daemon's run table and the gateway's copy of each host both keep a
//! `RunInfo` per run. They learn about a run the same ways — launched (or
//! first forwarded), a status event, a journal found at start — so those
//! three transitions live here, and nowhere else decides what a status
//! event does to the row.

use serde::{Deserialize, Serialize};

use crate::event::{RunStatus, StatusChange};
pub use crate::journal::Health as JournalHealth;
use crate::journal::{RecoveredRun, RunMeta};
use crate::run_id::RunId;

/// A run as `ps`, `GET /runs` and the socket's `status` show it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RunInfo {
    pub run_id: RunId,
    pub status: RunStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub command: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    pub pty: bool,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// Last seq published (the number of events so far).
    pub last_seq: u64,
    /// Whether the journal holds every event; the journal's [`HealthBook`]
    /// (crate::journal::HealthBook) decides, and owners copy it in when they
    /// answer.
    pub journal: JournalHealth,
}

impl RunInfo {
    /// A run that has just been created from its launch metadata.
    pub fn queued(run_id: RunId, meta: RunMeta) -> Self {
        RunInfo {
            run_id,
            status: RunStatus::Queued,
            exit_code: None,
            signal: None,
            reason: None,
            pid: None,
            command: meta.command,
            cwd: meta.cwd,
            pty: meta.pty,
            created_at: meta.created_at,
            started_at: None,
            ended_at: None,
            last_seq: 0,
            journal: JournalHealth::Ok,
        }
    }

    /// A run as its journal left it (found at start).
    pub fn recovered(r: RecoveredRun) -> Self {
        let mut info = RunInfo::queued(r.run_id, r.meta);
        info.status = r.status;
        info.exit_code = r.last_status.exit_code;
        info.signal = r.last_status.signal;
        info.reason = r.last_status.reason;
        info.started_at = r.started_at;
        info.ended_at = r.ended_at;
        info.last_seq = r.last_seq;
        info.journal = r.journal;
        if !r.status.is_final() {
            info.pid = r.pid;
        }
        info
    }

    /// "run ID already STATUS", for a cancel that came too late.
    /// The run's final status event, rebuilt from this row: for a run
    /// whose journal lost it (a full disk), so a copy elsewhere still
    /// learns how the run ended. `None` until the run has ended.
    pub fn final_event(&self) -> Option<crate::event::Event> {
        if !self.status.is_final() {
            return None;
        }
        Some(crate::event::Event {
            run_id: self.run_id.as_str().to_owned(),
            seq: self.last_seq,
            kind: crate::event::EventType::Status,
            data: self.status.as_str().to_owned(),
            exit_code: self.exit_code,
            signal: self.signal,
            signal_name: self.signal.and_then(crate::event::signal_name),
            reason: self.reason.clone(),
            timestamp: self.ended_at.clone().unwrap_or_else(crate::event::now_timestamp),
            ..Default::default()
        })
    }

    pub fn finished_message(&self) -> String {
        format!("run {} already {}", self.run_id, self.status.as_str())
    }

    /// Applies a status event that happened at `timestamp`.
    pub fn apply(&mut self, change: &StatusChange, timestamp: &str) {
        let Some(status) = change.status else { return };
        self.status = status;
        match status {
            RunStatus::Running => {
                self.started_at = Some(timestamp.to_owned());
                self.pid = change.pid;
            }
            s if s.is_final() => {
                self.ended_at = Some(timestamp.to_owned());
                self.exit_code = change.exit_code;
                self.signal = change.signal;
                self.reason = change.reason.clone();
            }
            _ => {}
        }
    }
}

/// Why a cancel did not start.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("no run {0}")]
    NotFound(RunId),
    /// Already over; carries its final state (HTTP answers 409 with it).
    #[error("{}", .0.finished_message())]
    Finished(Box<RunInfo>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> RunInfo {
        let meta = RunMeta { command: vec!["true".into()], created_at: "t0".into(), ..RunMeta::default() };
        RunInfo::queued(RunId::parse("r").unwrap(), meta)
    }

    #[test]
    fn status_changes_fill_the_row() {
        let mut i = info();
        i.apply(&StatusChange { status: Some(RunStatus::Running), pid: Some(7), ..Default::default() }, "t1");
        assert_eq!((i.status, i.started_at.as_deref(), i.pid), (RunStatus::Running, Some("t1"), Some(7)));
        let done = StatusChange {
            status: Some(RunStatus::Failed),
            exit_code: Some(3),
            reason: Some("exited with code 3".into()),
            ..Default::default()
        };
        i.apply(&done, "t2");
        assert_eq!((i.status, i.exit_code, i.ended_at.as_deref()), (RunStatus::Failed, Some(3), Some("t2")));
        assert_eq!(i.pid, Some(7), "the pid stays after the end");
        i.apply(&StatusChange::default(), "t3");
        assert_eq!(i.ended_at.as_deref(), Some("t2"), "a change without a status changes nothing");
    }

    #[test]
    fn journal_health_keeps_its_wire_names() {
        assert_eq!(serde_json::to_string(&JournalHealth::Ok).unwrap(), r#""ok""#);
        assert_eq!(serde_json::to_string(&JournalHealth::Degraded).unwrap(), r#""degraded""#);
    }
}
