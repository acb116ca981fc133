//! The `light` client: a frame is never decoded; a byte scan finds its
//! `type`, `seq` and the job's line heads (`frames.rs`).

use std::time::Instant;

use crate::cli::{Proto, Scan};
use crate::frames::{Kind, classify, num_after, scan_lines};
use crate::histogram::Hist;
use crate::proc::now_ns;
use crate::stats::{Step, SubStats};

/// Handles one text frame; `last_seq` is runtap's, for resubscribing.
pub(crate) fn light_frame(proto: Proto, s: &str, scan: Scan, st: &mut SubStats, last_seq: &mut u64) -> Step {
    let kind = classify(proto, s);
    if proto.is_runtap() && matches!(kind, Kind::Output | Kind::Status { .. }) {
        *last_seq = num_after(s, "\"seq\":").unwrap_or(*last_seq);
    }
    match kind {
        Kind::Output => {
            st.first_at.get_or_insert_with(Instant::now);
            st.on_output(s, scan);
            Step::Next
        }
        Kind::Status { last: true, .. } => Step::Done,
        Kind::Ping => Step::Pong,
        Kind::Lagged { last_seq: Some(seq) } => {
            *last_seq = seq;
            Step::Next
        }
        Kind::OtherError(e) => Step::Fail(e),
        _ => Step::Next,
    }
}

impl SubStats {
    pub(crate) fn on_output(&mut self, text: &str, scan: Scan) {
        let now = now_ns();
        self.events += 1;
        let b = text.as_bytes();
        let hist = self.hist.get_or_insert_with(Hist::new);
        let (mut lo, mut hi) = (None, None);
        scan_lines(b, scan, |t, i, sample| {
            if sample {
                hist.record(now.saturating_sub(t) / 1000);
            }
            lo = Some(lo.map_or(i, |l: u64| l.min(i)));
            hi = Some(hi.map_or(i, |h: u64| h.max(i)));
        });
        if let (Some(lo), Some(hi)) = (lo, hi) {
            let (lo, hi) = (lo as i64, hi as i64);
            // A line cut between two chunks (the Node servers cut anywhere)
            // may be unreadable in both: allow one skipped index.
            if lo > self.max_idx + 2 {
                self.gaps += 1;
            }
            if lo <= self.max_idx {
                self.dups += 1;
            }
            if hi > self.max_idx {
                self.lines += (hi - self.max_idx) as u64;
                self.max_idx = hi;
            }
        }
    }
}
