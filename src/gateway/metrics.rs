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
        ] {
            let _ =
                writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", value.load(Ordering::Relaxed));
        }
        out
    }
}
