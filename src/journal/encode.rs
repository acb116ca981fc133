//! Output events serialized by hand: most of what a busy daemon writes.
//!
//! serde would need an owned `Event` per chunk and escapes a byte at a
//! time; these lines are byte-identical to serializing `Event` (the tests
//! compare the two).

use bytes::{Bytes, BytesMut};

use base64::Engine as _;
use bytes::BufMut as _;

use super::RunWriter;
use crate::event::{Event, EventType, Frame, Utf8Bytes, escape_json_into};

/// Largest allocation the batch buffer grows by: several batches of a fast
/// job fit before it has to be reclaimed or replaced.
const BATCH_BUFFER: usize = 4 * 1024 * 1024;
/// Smallest one, for runs that print a little now and then.
pub(super) const MIN_BATCH_BUFFER: usize = 64 * 1024;
/// Room for an output event's fixed fields (seq, type, encoding, timestamp).
const ENVELOPE_BYTES: usize = 128;

/// The `data` of an output event, as `push_output` takes it.
#[derive(Clone, Copy)]
pub(super) enum OutputBody<'a> {
    /// Already a string: UTF-8 text, or base64 if `encoding` says so.
    Text(&'a str, Option<crate::event::Encoding>),
    /// Raw bytes that are not UTF-8, to be written as base64.
    Base64(&'a [u8]),
}

/// One event of a batch this module encoded, as the text frame every
/// subscriber shares. Checking it for UTF-8 again would cost a pass over
/// every byte a run writes, and a check that cannot fail, if it ever did,
/// could only drop the event from live fan-out.
#[allow(unsafe_code)]
pub(super) fn encoded_frame(seq: u64, json: Bytes) -> Frame {
    debug_assert!(std::str::from_utf8(&json).is_ok(), "an encoded event is not UTF-8");
    // SAFETY: every byte of a batch is appended either by `push_output`
    // (ASCII punctuation, digits and field names, a `&str` escaped by
    // `escape_json_into`, which copies whole characters and writes ASCII
    // escapes, or base64) or by serde_json from `String`s, which writes
    // UTF-8; events are cut at the offsets recorded as they were appended,
    // so every slice starts and ends on a character boundary.
    Frame { seq, json: unsafe { Utf8Bytes::from_bytes_unchecked(json) } }
}

/// `n` in decimal, without allocating.
fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

impl RunWriter {
    /// Writes an output event by hand, in `Event`'s field order and with
    /// serde_json's escaping (the tests compare the two): serde would need
    /// an owned `Event` per chunk and escapes a byte at a time.
    pub(super) fn push_output(&mut self, stream: EventType, body: OutputBody<'_>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let data_len = match body {
            OutputBody::Text(text, _) => text.len(),
            OutputBody::Base64(bytes) => bytes.len().div_ceil(3) * 4,
        };
        let step_len = self.step_field.len();
        self.reserve(data_len + self.line_start.len() + self.host_field.len() + step_len + ENVELOPE_BYTES);
        let start = self.buf.len();
        self.buf.extend_from_slice(&self.line_start);
        self.buf.extend_from_slice(itoa(seq, &mut [0; 20]));
        self.buf.extend_from_slice(br#","type":""#);
        self.buf.extend_from_slice(stream.as_str().as_bytes());
        self.buf.extend_from_slice(br#"","data":""#);
        let base64 = match body {
            OutputBody::Text(text, encoding) => {
                escape_json_into(&mut self.buf, text);
                encoding.is_some()
            }
            OutputBody::Base64(bytes) => {
                let at = self.buf.len();
                self.buf.resize(at + data_len, 0);
                // The slice is exactly the encoded length, so this cannot fail.
                let _ = base64::engine::general_purpose::STANDARD.encode_slice(bytes, &mut self.buf[at..]);
                true
            }
        };
        self.buf.extend_from_slice(if base64 { br#"","encoding":"base64""# } else { br#"""# });
        self.buf.extend_from_slice(&self.step_field);
        self.buf.extend_from_slice(br#","timestamp":""#);
        self.buf.extend_from_slice(crate::event::now_timestamp().as_bytes());
        self.buf.extend_from_slice(b"\"");
        self.buf.extend_from_slice(&self.host_field);
        let end = self.buf.len() + 1;
        self.buf.extend_from_slice(b"}\n");
        self.pending.push((seq, start, end));
        seq
    }

    /// Makes room for `additional` bytes, with room for a few batches of
    /// the size this run writes now.
    fn reserve(&mut self, additional: usize) {
        let want = self.recent_batch.saturating_mul(4).clamp(MIN_BATCH_BUFFER, BATCH_BUFFER);
        reserve_reusing(&mut self.buf, additional, want);
    }

    pub(super) fn push_event(&mut self, event: &Event) {
        let start = self.buf.len();
        let mut w = std::mem::take(&mut self.buf).writer();
        // Serializing plain structs of strings and integers into memory cannot fail.
        let _ = serde_json::to_writer(&mut w, event);
        self.buf = w.into_inner();
        let end = self.buf.len();
        self.buf.extend_from_slice(b"\n");
        self.pending.push((event.seq, start, end));
    }
}

/// Makes room for `additional` bytes in `buf`, whose frozen pieces may
/// still be shared (journal batches, output read buffers). It reuses the
/// spent allocation once nothing else holds it, since fresh buffers cost
/// page faults (13 % of the daemon's CPU on a 1 GiB job), unless that
/// allocation is over 4× `want`: a buffer grown for a burst is let go once
/// output is small again, so a quiet run does not keep megabytes resident.
pub(crate) fn reserve_reusing(buf: &mut BytesMut, additional: usize, want: usize) {
    if buf.capacity() - buf.len() >= additional {
        return;
    }
    let want = want.max(additional);
    if buf.try_reclaim(additional) && buf.capacity() <= 4 * want {
        return;
    }
    let mut fresh = BytesMut::with_capacity(want.max(buf.len() + additional));
    fresh.extend_from_slice(buf);
    *buf = fresh;
}

#[cfg(test)]
mod tests {
    use super::super::{Journal, test_util::meta};
    use crate::event::{Event, EventType, OutputData, Payload};
    use crate::run_id::RunId;

    /// Hand-built output lines must be exactly what serializing `Event` gives.
    #[test]
    fn output_lines_match_serde() {
        let dir = tempfile::tempdir().unwrap();
        for host in [None, Some("h\"1")] {
            let mut j = Journal::open(dir.path()).unwrap();
            if let Some(h) = host {
                j = j.with_host(h);
            }
            let id = RunId::parse(if host.is_some() { "o2" } else { "o1" }).unwrap();
            let mut w = j.create_run(&id, &meta()).unwrap();
            let inputs: Vec<(EventType, Vec<u8>)> = vec![
                (EventType::Stdout, b"plain\n".to_vec()),
                (EventType::Stderr, "tab\t \"q\" \\ \u{1} \u{7f} \u{20ac}\r\n".as_bytes().to_vec()),
                (EventType::Stdout, vec![b'a', 0xff, 0xfe, b'\n']),
                (EventType::Stdout, Vec::new()),
            ];
            // Outside a step, then inside one (an ID that needs escaping).
            for step in [None, Some("s\"1")] {
                w.set_step(step);
                for (stream, bytes) in &inputs {
                    w.append_output(*stream, bytes);
                    w.append(Payload::Output { stream: *stream, data: OutputData::from_bytes(bytes.clone()) });
                }
            }
            let batch = w.finish_batch(false);
            assert_eq!(batch.frames.len(), inputs.len() * 4);
            for (i, frame) in batch.frames.iter().enumerate() {
                let ev: Event = serde_json::from_slice(frame.bytes()).unwrap();
                assert_eq!(ev.seq, i as u64 + 1);
                assert_eq!(ev.host.as_deref(), host);
                assert_eq!(ev.step_id.as_deref(), (i >= inputs.len() * 2).then_some("s\"1"));
                assert_eq!(ev.output_bytes().unwrap(), inputs[(i / 2) % inputs.len()].1);
                assert_eq!(serde_json::to_string(&ev).unwrap().as_bytes(), frame.bytes());
            }
        }
    }
}
