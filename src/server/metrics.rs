//! Counters for `/metrics` (Prometheus text format) and `/healthz`.
//!
//! Counters that belong to other parts (journal bytes, hub fan-out) live
//! there and are read at render time; this struct holds the server's own.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use super::backend::Backend;
use crate::event::RunStatus;

#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// Open TCP connections (HTTP and WebSocket).
    pub connections: AtomicI64,
    /// Open WebSocket sessions.
    pub websockets: AtomicI64,
    /// Connections refused because `max_connections` was reached.
    pub connections_refused: AtomicU64,
    pub events_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub lagged_disconnects: AtomicU64,
    pub auth_failures: AtomicU64,
    pub rate_limited: AtomicU64,
    pub oversized_messages: AtomicU64,
    pub heartbeat_timeouts: AtomicU64,
    pub write_stalls: AtomicU64,
    /// TLS handshakes that failed or timed out (plain HTTP on the TLS port is not one).
    pub tls_handshake_failures: AtomicU64,
    /// Accepted JWTs by `sub`, so an operator sees who uses the API.
    subjects: Subjects,
}

/// Subjects beyond this many are counted together, so a stream of
/// distinct subjects cannot grow `/metrics` (or memory) without bound.
const MAX_SUBJECTS: usize = 256;
/// The label of the subjects past [`MAX_SUBJECTS`].
const OTHER_SUBJECTS: &str = "_other";

#[derive(Debug, Default)]
struct Subjects(std::sync::Mutex<std::collections::BTreeMap<String, u64>>);

impl Subjects {
    fn note(&self, sub: &str) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(sub) {
            *n += 1;
            return;
        }
        let key = if map.len() < MAX_SUBJECTS { sub } else { OTHER_SUBJECTS };
        *map.entry(key.to_owned()).or_insert(0) += 1;
    }

    fn render(&self, out: &mut String) {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(
            out,
            "# HELP runtap_jwt_accepted_total Requests and sessions let in by a JWT, by its sub.\n# TYPE runtap_jwt_accepted_total counter"
        );
        for (sub, n) in map.iter() {
            let _ = writeln!(out, "runtap_jwt_accepted_total{{sub=\"{}\"}} {n}", label_value(sub));
        }
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl Metrics {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// A JWT with this `sub` let a request or session in.
    pub(crate) fn note_subject(&self, sub: &str) {
        self.subjects.note(sub);
    }

    pub(crate) fn render(&self, backend: &dyn Backend) -> String {
        let stats = backend.stats();
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        metric(
            "runtap_connections",
            "gauge",
            "Open HTTP and WebSocket connections.",
            self.connections.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "runtap_websockets",
            "gauge",
            "Open WebSocket sessions.",
            self.websockets.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "runtap_subscriptions",
            "gauge",
            "Live run subscriptions (WebSocket and Unix socket).",
            stats.subscriptions.to_string(),
        );
        metric(
            "runtap_connections_refused_total",
            "counter",
            "Connections refused at max_connections.",
            get(&self.connections_refused).to_string(),
        );
        metric("runtap_events_in_total", "counter", "Events journaled and published.", stats.events_in.to_string());
        metric(
            "runtap_journal_bytes_total",
            "counter",
            "Bytes written to run journals.",
            stats.journal_bytes.to_string(),
        );
        metric(
            "runtap_events_out_total",
            "counter",
            "Events sent to WebSocket subscribers.",
            get(&self.events_out).to_string(),
        );
        metric(
            "runtap_bytes_out_total",
            "counter",
            "Event bytes sent to WebSocket subscribers.",
            get(&self.bytes_out).to_string(),
        );
        metric(
            "runtap_lagged_disconnects_total",
            "counter",
            "Subscribers closed with `lagged` (1013).",
            get(&self.lagged_disconnects).to_string(),
        );
        metric(
            "runtap_auth_failures_total",
            "counter",
            "Requests and sessions refused for a missing or wrong token.",
            get(&self.auth_failures).to_string(),
        );
        metric(
            "runtap_rate_limited_total",
            "counter",
            "Sessions closed with `rate-limited` (4429).",
            get(&self.rate_limited).to_string(),
        );
        metric(
            "runtap_oversized_messages_total",
            "counter",
            "Sessions closed with `message-too-large` (1009).",
            get(&self.oversized_messages).to_string(),
        );
        metric(
            "runtap_heartbeat_timeouts_total",
            "counter",
            "Peers closed for not answering pings.",
            get(&self.heartbeat_timeouts).to_string(),
        );
        metric(
            "runtap_write_stalls_total",
            "counter",
            "Peers closed because a write made no progress.",
            get(&self.write_stalls).to_string(),
        );
        metric(
            "runtap_tls_handshake_failures_total",
            "counter",
            "TLS handshakes that failed or timed out.",
            get(&self.tls_handshake_failures).to_string(),
        );
        metric(
            "runtap_journal_quarantined_total",
            "counter",
            "Unreadable run directories moved to quarantine (see docs/bad-input.md).",
            stats.quarantined.to_string(),
        );
        metric(
            "runtap_journal_errors_total",
            "counter",
            "Failed journal writes (the run continues; its journal is degraded).",
            stats.journal_errors.to_string(),
        );
        let counts = &stats.by_status;
        let _ = writeln!(out, "# HELP runtap_runs Runs known to the daemon, by status.\n# TYPE runtap_runs gauge");
        for status in RunStatus::ALL {
            let n = counts.get(&status).copied().unwrap_or(0);
            let _ = writeln!(out, "runtap_runs{{status=\"{}\"}} {n}", status.as_str());
        }
        self.subjects.render(&mut out);
        out.push_str(&backend.extra_metrics());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_bounded_and_their_labels_escaped() {
        let s = Subjects::default();
        s.note("ci \"bot\"\n");
        for i in 0..MAX_SUBJECTS + 10 {
            s.note(&format!("user-{i}"));
        }
        let mut out = String::new();
        s.render(&mut out);
        assert!(out.contains(r#"runtap_jwt_accepted_total{sub="ci \"bot\"\n"} 1"#), "{out}");
        assert!(out.contains(r#"runtap_jwt_accepted_total{sub="_other"} 11"#), "{out}");
        assert_eq!(out.lines().filter(|l| l.starts_with("runtap_jwt")).count(), MAX_SUBJECTS + 1);
    }
}
