//! What a text frame is, and the job's line heads inside it, from a cheap
//! byte scan (the `light` client).

use crate::cli::{Proto, Scan};

/// What a text frame is, from a cheap look at its head (never the payload).
#[derive(Debug, PartialEq)]
pub(crate) enum Kind {
    Output,
    Status {
        last: bool,
        running: bool,
    },
    Lagged {
        last_seq: Option<u64>,
    },
    OtherError(String),
    /// socket.io: `subscribed` acknowledgement.
    Subscribed,
    /// Engine.IO ping (`2`).
    Ping,
    Other,
}

pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The string value after `key` (e.g. `"type":"`) in `s`.
pub(crate) fn str_after<'a>(s: &'a str, key: &str) -> Option<&'a str> {
    let start = find(s.as_bytes(), key.as_bytes())? + key.len();
    let len = s[start..].find('"')?;
    Some(&s[start..start + len])
}

pub(crate) fn num_after(s: &str, key: &str) -> Option<u64> {
    let start = find(s.as_bytes(), key.as_bytes())? + key.len();
    let digits: &str = &s[start..];
    let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// Classifies an event object. `type` precedes `data` in all three servers'
/// encodings, so the first `"type":"` is the real one.
pub(crate) fn classify_event(s: &str) -> Kind {
    match str_after(s, "\"type\":\"") {
        Some("stdout" | "stderr") => Kind::Output,
        Some("status") => {
            let data = str_after(s, "\"data\":\"").unwrap_or("");
            Kind::Status { last: !matches!(data, "queued" | "running"), running: data == "running" }
        }
        Some("error") => match str_after(s, "\"code\":\"") {
            Some("lagged") => Kind::Lagged { last_seq: num_after(s, "\"lastSeq\":") },
            _ => Kind::OtherError(s.chars().take(300).collect()),
        },
        _ => Kind::Other,
    }
}

pub(crate) fn classify(proto: Proto, s: &str) -> Kind {
    match proto {
        Proto::Runtap | Proto::Ws => classify_event(s),
        Proto::Socketio | Proto::RuntapSocketio => {
            if let Some(rest) = s.strip_prefix("42[\"run-event\",") {
                classify_event(rest)
            } else if s.starts_with("42[\"subscribed\"") {
                Kind::Subscribed
            } else if s == "2" {
                Kind::Ping
            } else if s.starts_with("44") || s.starts_with('1') {
                Kind::OtherError(s.chars().take(300).collect())
            } else {
                Kind::Other
            }
        }
    }
}

/// Length of a line's fixed head: `t=` 19 digits ` i=` 8 digits ` `.
pub(crate) const LINE_HEAD: usize = 33;

/// Parses a line head at `p`: (write time in ns, line index).
pub(crate) fn line_at(b: &[u8], p: usize) -> Option<(u64, u64)> {
    let h = b.get(p..p + LINE_HEAD)?;
    if &h[..2] != b"t=" || &h[21..24] != b" i=" || h[32] != b' ' {
        return None;
    }
    let num = |d: &[u8]| d.iter().try_fold(0u64, |acc, &c| c.is_ascii_digit().then(|| acc * 10 + u64::from(c - b'0')));
    Some((num(&h[2..21])?, num(&h[24..32])?))
}

/// Finds line heads in a frame: all of them, or the first and the last.
pub(crate) fn scan_lines(b: &[u8], scan: Scan, mut each: impl FnMut(u64, u64, bool)) {
    let mut first = true;
    let mut p = 0;
    let mut last_found = None;
    while p + LINE_HEAD <= b.len() {
        if b[p] == b't'
            && b[p + 1] == b'='
            && let Some((t, i)) = line_at(b, p)
        {
            if first || scan == Scan::All {
                each(t, i, true);
                first = false;
                if scan == Scan::Ends {
                    last_found = Some(i);
                    break;
                }
            }
            p += LINE_HEAD;
            continue;
        }
        p += 1;
    }
    if scan == Scan::Ends && last_found.is_some() {
        // The last complete head, searching back from the end.
        let mut q = b.len().saturating_sub(LINE_HEAD);
        while q > p {
            if b[q] == b't'
                && b[q + 1] == b'='
                && let Some((t, i)) = line_at(b, q)
            {
                each(t, i, false);
                return;
            }
            q -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_heads_are_found_in_escaped_frames() {
        let line = |i: u64| format!("t={:019} i={i:08} {}\\n", 1_700_000_000_000_000_000u64 + i, "x".repeat(67));
        let frame = format!(
            "{{\"runId\":\"r\",\"seq\":3,\"type\":\"stdout\",\"data\":\"{}{}{}\",\"timestamp\":\"2026-01-01T00:00:00Z\"}}",
            line(5),
            line(6),
            line(7)
        );
        let mut all = Vec::new();
        scan_lines(frame.as_bytes(), Scan::All, |_, i, s| all.push((i, s)));
        assert_eq!(all, vec![(5, true), (6, true), (7, true)]);
        let mut ends = Vec::new();
        scan_lines(frame.as_bytes(), Scan::Ends, |_, i, s| ends.push((i, s)));
        assert_eq!(ends, vec![(5, true), (7, false)]);
        assert_eq!(classify(Proto::Runtap, &frame), Kind::Output);
        assert_eq!(num_after(&frame, "\"seq\":"), Some(3));
    }

    #[test]
    fn socketio_frames() {
        assert_eq!(classify(Proto::Socketio, "2"), Kind::Ping);
        assert_eq!(
            classify(Proto::Socketio, r#"42["run-event",{"type":"status","data":"succeeded","exitCode":0}]"#),
            Kind::Status { last: true, running: false }
        );
        assert_eq!(classify(Proto::Socketio, r#"42["subscribed","r"]"#), Kind::Subscribed);
    }
}
