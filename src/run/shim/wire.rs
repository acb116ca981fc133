//! What the daemon and a run's shim say to each other: one JSON object per
//! line on the run's Unix socket, and the launch order on the shim's stdin.
//!
//! A shim outlives the daemon that started it, and an upgrade can put a
//! newer daemon in front of an older shim: the shim says its version in
//! `hello`, and a daemon attaches to [`ATTACHES_TO`], the current version
//! and the one before. New fields are optional, so the lines only grow.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The protocol this build's shim speaks.
pub(crate) const VERSION: u32 = 1;
/// The shim versions this build's daemon can take runs back from.
pub(crate) const ATTACHES_TO: &[u32] = &[1];
/// Longest line either side accepts: an `events` message of at most
/// [`MAX_EVENTS_BYTES`] of events, escaped into JSON strings.
pub(crate) const MAX_LINE: usize = 16 * 1024 * 1024;
/// Events carried in one `events` message, at most (then another follows).
pub(crate) const MAX_EVENTS_BYTES: usize = 2 * 1024 * 1024;

/// How far the run's journal is written: every event up to `seq` is in
/// the events file below `offset` (unless the journal is degraded, when
/// the file stops short and the daemon reports the rest as a gap).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Mark {
    pub seq: u64,
    pub offset: u64,
    /// The final status is written and synced: nothing follows.
    #[serde(default)]
    pub done: bool,
    /// Lines the job's events channel dropped so far (for `/metrics`).
    #[serde(default)]
    pub bad_lines: u64,
    /// The events file stopped short (a write failed): what it lacks comes
    /// in `events` messages while a daemon is attached.
    #[serde(default)]
    pub degraded: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub(crate) enum FromShim {
    /// First line on every connection.
    #[serde(rename_all = "camelCase")]
    Hello { version: u32, run_id: String, pid: u32, mark: Mark },
    /// The journal grew (sent as it grows; a newer mark replaces an unsent one).
    Mark { mark: Mark },
    /// Events the journal could not keep (its disk is full), for live
    /// readers: what the file would have held, one JSON line each. They
    /// follow what the file holds below `offset` (read that first).
    Events { offset: u64, lines: Vec<String> },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub(crate) enum ToShim {
    Cancel {
        reason: String,
    },
    /// Every subscriber took what the last mark brought: what output
    /// batching waits on (see `run::output`), across the process boundary.
    Idle {
        subscribers: u32,
    },
}

/// What to run and how: the daemon writes it to the shim's stdin, which
/// keeps the job's environment off the disk.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Launch {
    pub version: u32,
    pub run_id: String,
    pub state_dir: std::path::PathBuf,
    pub socket: std::path::PathBuf,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub clear_env: bool,
    pub cwd: Option<String>,
    pub pty: Option<(u16, u16)>,
    pub grace_ms: u64,
    pub drain_ms: u64,
    pub line_hold_ms: u64,
    pub coalesce_ms: u64,
    pub fsync_ms: u64,
    pub log_level: String,
}

/// One line: the message and its newline.
pub(crate) fn line(msg: &impl Serialize) -> Vec<u8> {
    // Plain structs of strings and integers always serialize.
    let mut out = serde_json::to_vec(msg).unwrap_or_default();
    out.push(b'\n');
    out
}
