//! The Unix socket protocol: newline-delimited JSON, one object per line.
//!
//! Requests carry a `type`; answers are control objects (`launched`,
//! `subscribed`, `end`, `run`, `runs`, `cancelling`, `error`) or, after a
//! `subscribe`, the run's events exactly as the journal holds them. See
//! `docs/socket-protocol.md` for examples.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::run_info::RunInfo;

/// Longest request line accepted (a launch with a large environment fits easily).
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    Launch(LaunchRequest),
    #[serde(rename_all = "camelCase")]
    Subscribe {
        run_id: String,
        #[serde(default)]
        since: u64,
        /// false: stop after the history that exists now (`runtap logs` without -f).
        #[serde(default = "yes")]
        follow: bool,
    },
    #[serde(rename_all = "camelCase")]
    Unsubscribe {
        run_id: String,
    },
    #[serde(rename_all = "camelCase")]
    Cancel {
        run_id: String,
        #[serde(default)]
        reason: Option<String>,
    },
    #[serde(rename_all = "camelCase")]
    Status {
        run_id: String,
    },
    List,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LaunchRequest {
    #[serde(default)]
    pub run_id: Option<String>,
    pub command: Vec<String>,
    /// Added to (or, with `clearEnv`, replacing) the daemon's environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub clear_env: bool,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub pty: bool,
    #[serde(default)]
    pub cols: Option<u16>,
    #[serde(default)]
    pub rows: Option<u16>,
}

/// Control answers (events are sent as their raw journal lines instead).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Response {
    #[serde(rename_all = "camelCase")]
    Launched {
        run_id: String,
    },
    #[serde(rename_all = "camelCase")]
    Subscribed {
        run_id: String,
        since: u64,
    },
    #[serde(rename_all = "camelCase")]
    Unsubscribed {
        run_id: String,
    },
    /// A subscription is complete: the run is over (or, without follow, history is done).
    #[serde(rename_all = "camelCase")]
    End {
        run_id: String,
        last_seq: u64,
    },
    Cancelling {
        run: Box<RunInfo>,
    },
    Run {
        run: Box<RunInfo>,
    },
    Runs {
        runs: Vec<RunInfo>,
    },
    #[serde(rename_all = "camelCase")]
    Error {
        code: String,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run: Option<Box<RunInfo>>,
    },
}

impl Response {
    pub fn error(code: &str, message: impl Into<String>) -> Self {
        Response::Error { code: code.into(), message: message.into(), run_id: None, run: None }
    }

    /// One line, newline-terminated.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_else(|_| br#"{"type":"error","code":"internal"}"#.to_vec());
        line.push(b'\n');
        line
    }
}
