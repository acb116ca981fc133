//! The link's state and counters: `/metrics` (including which gateway URL
//! the link is connected to now), shutdown's drain, and retention's warning
//! about events the gateway never got.

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
    /// The configured gateway URLs, in the order they are tried.
    urls: Vec<String>,
    /// Index in `urls` of the gateway the link is connected to; `None` unless connected.
    connected: Mutex<Option<usize>>,
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
    pub(crate) fn new(urls: &[String]) -> Self {
        UpstreamStatus { urls: urls.to_vec(), ..UpstreamStatus::default() }
    }

    /// The URL of the gateway the link is connected to now, if it is.
    pub(crate) fn connected_url(&self) -> Option<&str> {
        let at = *self.connected.lock().unwrap_or_else(|p| p.into_inner());
        at.and_then(|i| self.urls.get(i)).map(String::as_str)
    }

    /// Records the link's state and, when connected, to which of `urls`.
    pub(super) fn set_link(&self, state: LinkState, url: Option<usize>) {
        *self.connected.lock().unwrap_or_else(|p| p.into_inner()) = url.filter(|_| state == LinkState::Connected);
        self.set_state(state);
    }

    pub(crate) fn state(&self) -> LinkState {
        LinkState::from_u8(self.state.load(Ordering::Relaxed))
    }

    fn set_state(&self, state: LinkState) {
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
        let name = "runtap_upstream_url_connected";
        let _ = writeln!(
            out,
            "# HELP {name} 1 for the gateway URL the link is connected to now, 0 for the other configured ones.\n# TYPE {name} gauge"
        );
        let now = self.connected_url();
        for url in &self.urls {
            let _ = writeln!(out, "{name}{{url=\"{}\"}} {}", label_value(url), u8::from(now == Some(url.as_str())));
        }
        out
    }
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label_value(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connected_url_follows_the_link() {
        let s = UpstreamStatus::new(&["ws://a:1".into(), "ws://b:2".into()]);
        assert_eq!(s.connected_url(), None);
        s.set_link(LinkState::Connected, Some(1));
        assert_eq!(s.connected_url(), Some("ws://b:2"));
        s.set_link(LinkState::Connecting, Some(0));
        assert_eq!((s.connected_url(), s.state()), (None, LinkState::Connecting));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_value(r#"ws://a"b\c"#), r#"ws://a\"b\\c"#);
    }
}
