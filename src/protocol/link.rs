//! The daemon ↔ gateway link: one WebSocket, opened by the daemon to the
//! gateway's `/agent` endpoint with an agent token.
//!
//! ```text
//! daemon                                   gateway
//!   hello {host, epoch, runs:[{runId,lastSeq}]} ->
//!                                     <- welcome {acked:{runId: seq}}
//!   run {runId, meta}                  ->   (before a run's first events)
//!   <raw event JSON, as journaled>     ->   (seq > acked, in order per run)
//!   gap {runId, from, to}              ->   (events the host's journal lost: skipped)
//!                                     <- ack {acked:{runId: seq}}   (batched, after fsync)
//!                                     <- cancel {reqId, runId, reason}
//!   cancel-result {reqId, ...}         ->
//! ```
//!
//! Delivery is at-least-once on the wire (after a reconnect the daemon
//! resends from the gateway's `acked`), exactly-once in effect (the gateway
//! appends an event only if its seq is the next one for that run).
//! `epoch` names one life of the daemon's state dir: if it changes, the
//! host's run IDs and seqs start over, and the gateway must not dedupe the
//! new events against the old ones.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::event::RunStatus;
use crate::journal::RunMeta;

/// Both ends ping this often...
pub const LINK_PING: std::time::Duration = std::time::Duration::from_secs(5);
/// ...and drop a link that has been silent (no message, no pong) this long.
/// Short because a host with several gateway URLs fails over only once it
/// gives up on a gateway that hangs (frozen, cut off without a reset):
/// 15 s of no events at the viewers, against a ping per host every 5 s.
pub const LINK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Largest link message: a `hello` lists every run the host keeps.
pub const MAX_LINK_MESSAGE: usize = 16 * 1024 * 1024;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RunCursor {
    pub run_id: String,
    pub last_seq: u64,
    /// Which run of that ID (its `createdAt`): an ID can be used again once
    /// retention deleted the old run, and the two must never be merged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

/// Daemon → gateway (besides raw events, which start with `{"runId"`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum AgentMsg {
    Hello {
        host: String,
        epoch: String,
        runs: Vec<RunCursor>,
    },
    #[serde(rename_all = "camelCase")]
    Run {
        run_id: String,
        meta: RunMeta,
    },
    /// Events `from..=to` of the run are not in the host's journal (it was
    /// degraded: a full disk, damage), so they can never be forwarded. The
    /// gateway records the gap (its subscribers get `journal-gap`) and
    /// expects `to + 1` next, instead of refusing the link at the hole.
    #[serde(rename_all = "camelCase")]
    Gap {
        run_id: String,
        from: u64,
        to: u64,
    },
    #[serde(rename_all = "camelCase")]
    CancelResult {
        req_id: u64,
        ok: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<RunStatus>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
}

/// Gateway → daemon.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum GatewayMsg {
    Welcome {
        acked: HashMap<String, u64>,
    },
    Ack {
        acked: HashMap<String, u64>,
    },
    #[serde(rename_all = "camelCase")]
    Cancel {
        req_id: u64,
        run_id: String,
        reason: String,
    },
}

/// True for a raw event line (the journal's field order puts `runId` first).
pub fn is_event(text: &str) -> bool {
    text.starts_with(r#"{"runId""#)
}
