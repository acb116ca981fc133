//! The link's state and counters: `/metrics`, shutdown's drain, and
//! retention's warning about events the gateway never got.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Instant;

use crate::run::RunTable;
use crate::run_id::RunId;

/// Where the link to the gateway stands (`runtap_upstream_state` shows the number).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum LinkState {
    #[default]
    Disconnected = 0,
    Connecting = 1,
    Connected = 2,
}

impl LinkState {
    fn from_u8(n: u8) -> Self {
        match n {
            1 => LinkState::Connecting,
            2 => LinkState::Connected,
            _ => LinkState::Disconnected,
        }
    }
}

/// Link state and counters, for `/metrics` and retention.
#[derive(Default)]
pub(crate) struct UpstreamStatus {
    state: AtomicU8,
    pub forwarded: AtomicU64,
    pub acknowledged: AtomicU64,
    pub reconnects: AtomicU64,
    /// Events deleted by retention before the gateway had them.
    pub lost_to_retention: AtomicU64,
    /// Per run: the last seq the gateway acknowledged.
    pub(super) acked: Mutex<HashMap<RunId, u64>>,
    /// When the oldest unacknowledged event was sent (for the lag in seconds).
    pub(super) unacked_since: Mutex<Option<Instant>>,
}

impl UpstreamStatus {
    pub(crate) fn state(&self) -> LinkState {
        LinkState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub(super) fn set_state(&self, state: LinkState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    pub(crate) fn acked(&self, run: &RunId) -> Option<u64> {
        self.acked.lock().unwrap_or_else(|p| p.into_inner()).get(run).copied()
    }

    pub(crate) fn lag_seconds(&self) -> f64 {
        self.unacked_since.lock().unwrap_or_else(|p| p.into_inner()).map_or(0.0, |t| t.elapsed().as_secs_f64())
    }

    /// Events this host has that the gateway has not acknowledged.
    pub(crate) fn pending(&self, table: &RunTable) -> u64 {
        let seqs = table.hub().last_seqs();
        let acked = self.acked.lock().unwrap_or_else(|p| p.into_inner());
        seqs.iter().map(|(run, seq)| seq.saturating_sub(acked.get(run).copied().unwrap_or(0))).sum()
    }

    /// Called by retention before deleting a run: loud if the gateway lacks some of it.
    pub(crate) fn note_deleted(&self, run: &RunId, last_seq: u64) {
        let acked = self.acked(run).unwrap_or(0);
        if acked < last_seq {
            let lost = last_seq - acked;
            self.lost_to_retention.fetch_add(lost, Ordering::Relaxed);
            tracing::error!(run_id = %run, acked, last_seq, lost,
                "retention deleted events the gateway never received; they are lost upstream");
        }
    }

    pub(crate) fn render(&self, table: &RunTable) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let mut m = |name: &str, kind: &str, help: &str, v: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        m(
            "runtap_upstream_state",
            "gauge",
            "0 disconnected, 1 connecting, 2 connected.",
            (self.state() as u8).to_string(),
        );
        m(
            "runtap_upstream_events_forwarded_total",
            "counter",
            "Events sent to the gateway.",
            self.forwarded.load(Ordering::Relaxed).to_string(),
        );
        m(
            "runtap_upstream_events_acknowledged_total",
            "counter",
            "Events the gateway acknowledged.",
            self.acknowledged.load(Ordering::Relaxed).to_string(),
        );
        m(
            "runtap_upstream_events_pending",
            "gauge",
            "Events not yet acknowledged by the gateway.",
            self.pending(table).to_string(),
        );
        m(
            "runtap_upstream_lag_seconds",
            "gauge",
            "Age of the oldest unacknowledged event.",
            format!("{:.3}", self.lag_seconds()),
        );
        m(
            "runtap_upstream_reconnects_total",
            "counter",
            "Connections to the gateway started after the first.",
            self.reconnects.load(Ordering::Relaxed).to_string(),
        );
        m(
            "runtap_upstream_lost_events_total",
            "counter",
            "Events retention deleted before the gateway had them.",
            self.lost_to_retention.load(Ordering::Relaxed).to_string(),
        );
        out
    }
}
