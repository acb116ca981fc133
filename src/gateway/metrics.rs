//! The gateway's counters, for `/metrics` and `/healthz`.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Gateway, lock};
use crate::server::backend::BackendStats;

#[derive(Default)]
pub(crate) struct GatewayMetrics {
    pub events_received: AtomicU64,
    pub duplicates_dropped: AtomicU64,
    pub agent_sessions: AtomicU64,
    pub acks_sent: AtomicU64,
    /// Ranges of events hosts said their journals lost.
    pub gaps_received: AtomicU64,
    /// Runs whose journal here could not be opened or written: their
    /// events are not acknowledged (the host keeps them), the other runs flow.
    pub runs_refused: AtomicU64,
    /// Run directories moved aside because they could not be read.
    pub quarantined: AtomicU64,
}

impl Gateway {
    pub(crate) fn stats(&self) -> BackendStats {
        use std::sync::atomic::Ordering::Relaxed;
        let mut s = BackendStats::default();
        for h in self.all_hosts() {
            let st = lock(&h.state);
            for r in st.runs.values() {
                *s.by_status.entry(r.status).or_default() += 1;
                s.runs += 1;
                s.active += usize::from(!r.status.is_final());
            }
            s.degraded += h.journal.health.count(|id| st.runs.contains_key(id));
            s.subscriptions += h.hub.stats().subscriptions.load(Relaxed);
            s.events_in += h.hub.stats().events_published.load(Relaxed);
            s.journal_bytes += h.journal.stats.bytes_written.load(Relaxed);
            s.journal_errors += h.journal.stats.write_errors.load(Relaxed);
            s.quarantined += h.journal.stats.quarantined.load(Relaxed);
        }
        s
    }

    pub(crate) fn render_metrics(&self) -> String {
        use std::fmt::Write as _;
        let m = &self.inner.metrics;
        let mut out = String::new();
        let _ = writeln!(out, "# HELP runtap_gateway_host_connected Whether the host's agent is connected.");
        let _ = writeln!(out, "# TYPE runtap_gateway_host_connected gauge");
        for h in self.all_hosts() {
            let connected = lock(&h.state).link.is_some();
            let _ = writeln!(out, "runtap_gateway_host_connected{{host=\"{}\"}} {}", h.id, u8::from(connected));
        }
        for (name, help, value) in [
            ("runtap_gateway_events_received_total", "Events received from hosts.", &m.events_received),
            ("runtap_gateway_duplicates_dropped_total", "Events received again and dropped.", &m.duplicates_dropped),
            ("runtap_gateway_agent_sessions_total", "Agent sessions accepted.", &m.agent_sessions),
            ("runtap_gateway_acks_sent_total", "Acknowledgement batches sent.", &m.acks_sent),
            ("runtap_gateway_gaps_received_total", "Event ranges hosts' journals lost.", &m.gaps_received),
            (
                "runtap_gateway_runs_refused_total",
                "Runs not stored here (journal error): not acknowledged.",
                &m.runs_refused,
            ),
            ("runtap_gateway_quarantined_total", "Unreadable run directories moved to quarantine.", &m.quarantined),
        ] {
            let _ =
                writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", value.load(Ordering::Relaxed));
        }
        out
    }
}
