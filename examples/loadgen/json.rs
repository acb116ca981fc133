//! The `json` client: every text frame is parsed in full into a
//! `serde_json::Value`, as a browser dashboard's `JSON.parse` would, and
//! `seq`, `type` and `data` are then read from that value. `data` is
//! reassembled into the job's lines (the Node servers cut chunks anywhere)
//! and every line is checked: its head, its length, its index one more
//! than the last. `seq` must grow by exactly one (runtap, ws; socket.io
//! events carry none).

use memchr::memchr;
use serde_json::Value;

use crate::cli::{Proto, Scan};
use crate::frames::line_at;
use crate::histogram::Hist;
use crate::proc::now_ns;
use crate::stats::{Step, SubStats};

/// A text frame, decoded.
#[derive(Debug)]
pub(crate) enum Packet {
    /// An event object (runtap or ws: the frame; socket.io: `run-event`'s argument).
    Event(Value),
    /// Engine.IO ping (`2`).
    Ping,
    /// socket.io connect error or close.
    Refused(String),
    Other,
}

/// Parses a frame the way each server's browser client does: runtap and
/// ws frames are one JSON event; a socket.io frame is an Engine.IO packet
/// whose type `4` (message) + socket.io type `2` (event) is followed by a
/// JSON array `[name, arg]`.
pub(crate) fn decode(proto: Proto, b: &[u8]) -> Result<Packet, String> {
    match proto {
        Proto::Runtap | Proto::Ws => serde_json::from_slice::<Value>(b).map(Packet::Event).map_err(|e| e.to_string()),
        Proto::Socketio | Proto::RuntapSocketio => match b {
            b"2" => Ok(Packet::Ping),
            [b'4', b'2', rest @ ..] => match serde_json::from_slice::<Value>(rest).map_err(|e| e.to_string())? {
                Value::Array(mut a) if a.len() == 2 && a[0].as_str() == Some("run-event") => {
                    Ok(Packet::Event(a.swap_remove(1)))
                }
                _ => Ok(Packet::Other),
            },
            [b'4', b'4', ..] | [b'1', ..] => {
                Ok(Packet::Refused(String::from_utf8_lossy(b).chars().take(300).collect()))
            }
            _ => Ok(Packet::Other),
        },
    }
}

/// Handles one text frame; `last_seq` is the last event's `seq`.
pub(crate) fn json_frame(proto: Proto, b: &[u8], scan: Scan, st: &mut SubStats, last_seq: &mut u64) -> Step {
    let now = now_ns();
    let ev = match decode(proto, b) {
        Ok(Packet::Event(v)) => v,
        Ok(Packet::Ping) => return Step::Pong,
        Ok(Packet::Refused(s)) => return Step::Fail(s),
        Ok(Packet::Other) => return Step::Next,
        Err(e) => {
            return Step::Fail(format!("frame is not JSON ({e}): {}", String::from_utf8_lossy(&b[..b.len().min(200)])));
        }
    };
    if let Some(seq) = ev.get("seq").and_then(Value::as_u64) {
        if seq <= *last_seq {
            st.seq_dups += 1;
        } else {
            if seq != *last_seq + 1 {
                st.seq_gaps += 1;
            }
            *last_seq = seq;
        }
    }
    let data = ev.get("data").and_then(Value::as_str);
    match ev.get("type").and_then(Value::as_str) {
        Some(ty @ ("stdout" | "stderr")) => {
            let Some(data) = data else { return Step::Fail(format!("output event without data: {ev}")) };
            st.events += 1;
            st.first_at.get_or_insert_with(std::time::Instant::now);
            if ty == "stdout" {
                st.on_data(data.as_bytes(), scan, now);
            } else {
                st.stderr_bytes += data.len() as u64;
            }
            Step::Next
        }
        Some("status") => match data {
            Some("queued" | "running") => Step::Next,
            _ => Step::Done,
        },
        Some("error") => {
            if ev.get("code").and_then(Value::as_str) == Some("lagged") {
                if let Some(seq) = ev.get("lastSeq").and_then(Value::as_u64) {
                    *last_seq = seq;
                }
                Step::Next
            } else {
                Step::Fail(ev.to_string().chars().take(300).collect())
            }
        }
        _ => Step::Next,
    }
}

impl SubStats {
    /// Appends a stdout event's text to the lines received so far.
    pub(crate) fn on_data(&mut self, data: &[u8], scan: Scan, now: u64) {
        self.data_bytes += data.len() as u64;
        // Ends: only the first line this event completes is a latency sample.
        let mut sample = true;
        let mut rest = data;
        if !self.carry.is_empty() {
            let Some(p) = memchr(b'\n', rest) else {
                self.carry.extend_from_slice(rest);
                return;
            };
            let mut line = std::mem::take(&mut self.carry);
            line.extend_from_slice(&rest[..=p]);
            self.on_line(&line, sample, now);
            sample = scan == Scan::All;
            line.clear();
            self.carry = line;
            rest = &rest[p + 1..];
        }
        while let Some(p) = memchr(b'\n', rest) {
            self.on_line(&rest[..=p], sample, now);
            sample = scan == Scan::All;
            rest = &rest[p + 1..];
        }
        self.carry.extend_from_slice(rest);
    }

    fn on_line(&mut self, line: &[u8], sample: bool, now: u64) {
        let Some((t, i)) = line_at(line, 0) else {
            self.bad_lines += 1;
            return;
        };
        if self.line_len == 0 {
            self.line_len = line.len();
        } else if line.len() != self.line_len {
            self.bad_lines += 1;
        }
        if sample {
            self.hist.get_or_insert_with(Hist::new).record(now.saturating_sub(t) / 1000);
        }
        if i < self.next_idx {
            self.dups += 1;
            return;
        }
        if i > self.next_idx {
            self.gaps += 1;
        }
        self.next_idx = i + 1;
        self.max_idx = i as i64;
        self.lines += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Decode;

    fn line(i: u64) -> String {
        format!("t={:019} i={i:08} {}\n", 1_700_000_000_000_000_000u64 + i, "x".repeat(66))
    }

    fn event(seq: u64, ty: &str, data: &str) -> String {
        serde_json::json!({"runId": "r", "seq": seq, "type": ty, "data": data, "timestamp": "2026-01-01T00:00:00Z"})
            .to_string()
    }

    #[test]
    fn lines_cut_anywhere_are_reassembled_and_checked() {
        let text: String = (0..5).map(line).collect();
        let (a, b) = text.split_at(150);
        let mut st = SubStats::new();
        let mut seq = 0;
        for (n, f) in [event(1, "status", "queued"), event(2, "stdout", a), event(3, "stdout", b)].iter().enumerate() {
            assert!(matches!(json_frame(Proto::Ws, f.as_bytes(), Scan::All, &mut st, &mut seq), Step::Next), "{n}");
        }
        let end = event(4, "status", "succeeded");
        assert!(matches!(json_frame(Proto::Ws, end.as_bytes(), Scan::All, &mut st, &mut seq), Step::Done));
        st.done_at = Some(std::time::Instant::now());
        assert_eq!((st.lines, st.gaps, st.dups, st.bad_lines, st.seq_gaps), (5, 0, 0, 0, 0));
        assert_eq!(st.hist.as_ref().map(|h| h.n), Some(5));
        assert!(st.complete(Decode::Json, 5, Some(text.len() as u64)));
        assert!(!st.complete(Decode::Json, 6, None));
    }

    #[test]
    fn missing_lines_and_seqs_are_caught() {
        let mut st = SubStats::new();
        let mut seq = 0;
        let frames = [event(1, "stdout", &line(0)), event(3, "stdout", &line(2)), event(3, "stdout", &line(2))];
        for f in &frames {
            json_frame(Proto::Runtap, f.as_bytes(), Scan::Ends, &mut st, &mut seq);
        }
        assert_eq!((st.gaps, st.dups, st.seq_gaps, st.seq_dups), (1, 1, 1, 1));
    }

    #[test]
    fn socketio_packets() {
        let ev = format!("42[\"run-event\",{}]", event(1, "stdout", "hi\n"));
        assert!(matches!(decode(Proto::Socketio, ev.as_bytes()), Ok(Packet::Event(v)) if v["data"] == "hi\n"));
        assert!(matches!(decode(Proto::Socketio, b"2"), Ok(Packet::Ping)));
        assert!(matches!(decode(Proto::Socketio, b"42[\"subscribed\",\"r\"]"), Ok(Packet::Other)));
        assert!(decode(Proto::Runtap, b"{\"seq\":").is_err());
    }
}
