//! Output events decoded in place: the data string is unescaped straight
//! into the sink's buffer, with no `Event` built per chunk.

use serde::Deserializer;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use super::{ClientError, OutputSink, Streamed, bad_line};
use crate::event::{Encoding, EventType};

/// One event line, from the Unix socket or a WebSocket frame: an output
/// event's data goes into `sink` (`Output` with its seq, read on the way),
/// any other event comes back. Both transports go through here, so `logs`
/// prints the same bytes either way.
pub(super) fn into_sink(line: &[u8], sink: &mut OutputSink) -> Result<Streamed, ClientError> {
    if let Some((stream, seq, encoding)) = parse_output_fast(line, &mut sink.data) {
        sink.take_data(stream, encoding, seq)?;
        return Ok(Streamed::Output(seq));
    }
    sink.data.clear();
    let mut de = serde_json::Deserializer::from_slice(line);
    let head = OutputSeed(&mut sink.data).deserialize(&mut de).map_err(|e| bad_line(e, line))?;
    match head.kind {
        Some(stream @ (EventType::Stdout | EventType::Stderr)) => {
            sink.take_data(stream, head.encoding, head.seq)?;
            Ok(Streamed::Output(head.seq))
        }
        _ => {
            sink.data.clear();
            Ok(Streamed::Event(Box::new(serde_json::from_slice(line).map_err(|e| bad_line(e, line))?)))
        }
    }
}

/// The `seq` of an event line: from its leading `{"runId":"ID","seq":N`
/// (the order the daemon writes), else by parsing the line.
pub(super) fn seq_of(line: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Seq {
        seq: u64,
    }
    let fast = || {
        let rest = line.strip_prefix(br#"{"runId":""#)?;
        let rest = rest[memchr::memchr(b'"', rest)?..].strip_prefix(br#"","seq":"#)?;
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
    };
    fast().or_else(|| serde_json::from_slice::<Seq>(line).ok().map(|s| s.seq))
}

/// The daemon's own output lines, decoded without serde: they start
/// `{"runId":"ID","seq":N,"type":"stdout","data":"` (the field order of
/// `Event`), and the data string is unescaped straight into `data`, a
/// clean run at a time. serde_json copies each run between escapes into
/// a scratch buffer first and was most of the client's CPU. Anything
/// unexpected returns None, and the line goes through serde instead.
pub(super) fn parse_output_fast(line: &[u8], data: &mut Vec<u8>) -> Option<(EventType, u64, Option<Encoding>)> {
    let rest = line.strip_prefix(br#"{"runId":""#)?;
    // Run IDs have no quote or backslash (see `RunId`).
    let rest = &rest[memchr::memchr(b'"', rest)?..];
    let rest = rest.strip_prefix(br#"","seq":"#)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let seq = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let rest = &rest[digits..];
    let (stream, mut rest) = if let Some(r) = rest.strip_prefix(br#","type":"stdout","data":""#) {
        (EventType::Stdout, r)
    } else {
        (EventType::Stderr, rest.strip_prefix(br#","type":"stderr","data":""#)?)
    };
    data.clear();
    loop {
        let i = crate::event::find_json_special(rest)?;
        data.extend_from_slice(&rest[..i]);
        let (escape, after) = match rest[i] {
            b'"' => {
                rest = &rest[i + 1..];
                break;
            }
            b'\\' => (*rest.get(i + 1)?, &rest[i + 2..]),
            _ => return None, // a raw control character is not JSON
        };
        rest = after;
        data.push(match escape {
            b'"' | b'\\' | b'/' => escape,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'b' => 0x08,
            b'f' => 0x0c,
            // serde_json only writes \u00XX; anything else takes the slow path.
            b'u' => {
                let hex = std::str::from_utf8(rest.get(..4)?).ok()?;
                rest = &rest[4..];
                u8::try_from(u16::from_str_radix(hex, 16).ok()?).ok().filter(u8::is_ascii)?
            }
            _ => return None,
        });
    }
    // The bytes were read off a socket: text must still be UTF-8.
    std::str::from_utf8(data).ok()?;
    // The remaining fields (encoding, timestamp, host) as an object of their own.
    let tail = rest.strip_prefix(b",")?;
    let mut object = Vec::with_capacity(tail.len() + 1);
    object.push(b'{');
    object.extend_from_slice(tail);
    let tail: OutputTail = serde_json::from_slice(&object).ok()?;
    Some((stream, seq, tail.encoding))
}

#[derive(serde::Deserialize)]
struct OutputTail {
    #[serde(default)]
    encoding: Option<Encoding>,
}

/// The fields of an event that say where its output goes; `data` itself
/// is unescaped into the sink by [`OutputSeed`].
pub(super) struct OutputHead {
    pub(super) seq: u64,
    pub(super) kind: Option<EventType>,
    pub(super) encoding: Option<Encoding>,
}

#[derive(serde::Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Field {
    Seq,
    Type,
    Encoding,
    Data,
    #[serde(other)]
    Other,
}

/// Decodes one event line, appending its `data` string to the vector.
pub(super) struct OutputSeed<'a>(pub(super) &'a mut Vec<u8>);

impl<'de> DeserializeSeed<'de> for OutputSeed<'_> {
    type Value = OutputHead;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<OutputHead, D::Error> {
        de.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for OutputSeed<'_> {
    type Value = OutputHead;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OutputHead, A::Error> {
        let mut head = OutputHead { seq: 0, kind: None, encoding: None };
        while let Some(key) = map.next_key::<Field>()? {
            match key {
                Field::Seq => head.seq = map.next_value()?,
                Field::Type => head.kind = Some(map.next_value()?),
                Field::Encoding => head.encoding = map.next_value()?,
                Field::Data => map.next_value_seed(DataSeed(&mut *self.0))?,
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(head)
    }
}

/// A JSON string appended to the vector as it is decoded.
struct DataSeed<'a>(&'a mut Vec<u8>);

impl<'de> DeserializeSeed<'de> for DataSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_str(self)
    }
}

impl Visitor<'_> for DataSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<(), E> {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    #[test]
    fn fast_output_parse_agrees_with_serde() {
        let texts = ["plain\n", "tab\t \"q\" \\ / \u{1}\u{1f}\u{7f} \u{20ac} é\r\n", "", "x"];
        for (i, text) in texts.iter().enumerate() {
            for (encoding, data) in [(None, text.to_string()), (Some(Encoding::Base64), "AP8K".to_string())] {
                let ev = Event {
                    run_id: "r-1".into(),
                    seq: 40 + i as u64,
                    kind: if i % 2 == 0 { EventType::Stdout } else { EventType::Stderr },
                    data,
                    encoding,
                    exit_code: None,
                    signal: None,
                    signal_name: None,
                    reason: None,
                    pid: None,
                    timestamp: "2026-11-22T00:00:00.000000Z".into(),
                    host: (i == 1).then(|| "h".into()),
                    step_id: (i == 2).then(|| "s1".into()),
                    payload: None,
                };
                let line = serde_json::to_vec(&ev).unwrap();
                let mut data = Vec::new();
                let (stream, seq, enc) = parse_output_fast(&line, &mut data).expect("fast path");
                assert_eq!((stream, seq, enc), (ev.kind, ev.seq, ev.encoding));
                assert_eq!(data, ev.data.as_bytes());
            }
        }
        let mut data = Vec::new();
        let reordered = br#"{"runId":"r","type":"stdout","seq":1,"data":"x","timestamp":"t"}"#;
        assert!(parse_output_fast(reordered, &mut data).is_none(), "left to serde");
        let status = br#"{"runId":"r","seq":1,"type":"status","data":"running","timestamp":"t"}"#;
        assert!(parse_output_fast(status, &mut data).is_none());
        assert_eq!((seq_of(status), seq_of(reordered), seq_of(b"{}")), (Some(1), Some(1), None));
    }
}
