//! The event envelope every consumer sees, and the run status vocabulary.
//!
//! An event is serialized exactly once, by the journal writer, into the
//! bytes that become both the journal line and the wire frame. Consumers
//! that need the fields (the CLI, tests) deserialize [`Event`].

use base64::Engine as _;
use bytes::BytesMut;
use serde::{Deserialize, Serialize};
pub use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Where a run stands. `Queued` and `Running` are the only non-final states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// The daemon died while the run was active; found at the next start.
    Lost,
}

impl RunStatus {
    pub fn is_final(self) -> bool {
        !matches!(self, RunStatus::Queued | RunStatus::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Lost => "lost",
        }
    }

    pub const ALL: [RunStatus; 6] = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Cancelled,
        RunStatus::Lost,
    ];
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    #[default]
    Stdout,
    Stderr,
    Status,
    /// The job reported steps and progress (see `run::steps`); their
    /// fields are in `payload`.
    StepStart,
    StepComplete,
    StepLog,
    Progress,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Stdout => "stdout",
            EventType::Stderr => "stderr",
            EventType::Status => "status",
            EventType::StepStart => "step_start",
            EventType::StepComplete => "step_complete",
            EventType::StepLog => "step_log",
            EventType::Progress => "progress",
        }
    }

    /// Output of the job (as opposed to what happened to it).
    pub fn is_output(self) -> bool {
        matches!(self, EventType::Stdout | EventType::Stderr)
    }

    pub const ALL: [EventType; 7] = [
        EventType::Stdout,
        EventType::Stderr,
        EventType::Status,
        EventType::StepStart,
        EventType::StepComplete,
        EventType::StepLog,
        EventType::Progress,
    ];

    pub fn from_wire(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The type of a journaled event, read from its leading fields
    /// (`{"runId":"..","seq":N,"type":"..`) without parsing the rest: a
    /// filtered subscription looks at every event it passes over. A run ID
    /// holds no `"`, so the first `"type":"` is the event's own.
    pub fn of_line(json: &[u8]) -> Option<Self> {
        const KEY: &[u8] = br#","type":""#;
        let head = &json[..json.len().min(MAX_HEAD)];
        let at = head.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
        let len = head[at..].iter().position(|b| *b == b'"')?;
        Self::from_wire(std::str::from_utf8(&head[at..at + len]).ok()?)
    }
}

/// Where `"type"` can be in an event line at the latest: after `runId`
/// (at most 128 bytes) and `seq` (at most 20 digits).
const MAX_HEAD: usize = 256;

/// Which event types a subscription wants (`"types":[..]`); all by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TypeSet(u8);

impl TypeSet {
    pub const ALL: TypeSet = TypeSet(u8::MAX);

    pub fn of(types: impl IntoIterator<Item = EventType>) -> Self {
        TypeSet(types.into_iter().fold(0, |bits, t| bits | 1 << t as u8))
    }

    pub fn is_all(self) -> bool {
        self == Self::ALL
    }

    pub fn contains(self, t: EventType) -> bool {
        self.0 & (1 << t as u8) != 0
    }

    /// Whether a journaled event line is of a wanted type. A line whose
    /// type cannot be read is passed on: better one event too many than
    /// a status change lost.
    pub fn wants_line(self, json: &[u8]) -> bool {
        self.is_all() || EventType::of_line(json).is_none_or(|t| self.contains(t))
    }
}

/// The level of a `step_log` event, in order of severity: what a job
/// writes on its events channel, and what Socket.IO's `filters.logLevel`
/// compares against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogLevel {
    Debug,
    Info,
    #[serde(alias = "warning")]
    Warn,
    Error,
}

impl LogLevel {
    pub(crate) fn parse(s: &str) -> Option<LogLevel> {
        match s {
            "debug" => Some(LogLevel::Debug),
            "info" => Some(LogLevel::Info),
            "warn" | "warning" => Some(LogLevel::Warn),
            "error" => Some(LogLevel::Error),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Base64,
}

/// What a producer hands to the journal; the journal adds `seq` and time.
#[derive(Clone, Debug, PartialEq)]
pub enum Payload {
    Output {
        stream: EventType,
        data: OutputData,
    },
    Status(StatusChange),
    /// A step or progress report (`kind` is one of the step types).
    Structured {
        kind: EventType,
        payload: serde_json::Value,
    },
}

/// Output bytes, already split into a text or a base64 representation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputData {
    pub text: String,
    pub encoding: Option<Encoding>,
}

impl OutputData {
    /// Text when the bytes are valid UTF-8, base64 otherwise: lossless either way.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        match String::from_utf8(bytes) {
            Ok(text) => OutputData { text, encoding: None },
            Err(e) => OutputData {
                text: base64::engine::general_purpose::STANDARD.encode(e.as_bytes()),
                encoding: Some(Encoding::Base64),
            },
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusChange {
    pub status: Option<RunStatus>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: Option<String>,
    pub pid: Option<u32>,
}

/// The wire and journal form of one event.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub run_id: String,
    pub seq: u64,
    #[serde(rename = "type")]
    pub kind: EventType,
    #[serde(default)]
    pub data: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<Encoding>,
    /// Output written while a step was open: that step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_id: Option<String>,
    /// The fields of a step or progress event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// `SIGKILL` etc., next to the number, for people reading dashboards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub timestamp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

impl Event {
    /// The raw bytes of an output event (decoding base64 if needed).
    pub fn output_bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        match self.encoding {
            Some(Encoding::Base64) => base64::engine::general_purpose::STANDARD.decode(&self.data),
            None => Ok(self.data.clone().into_bytes()),
        }
    }

    pub fn status(&self) -> Option<RunStatus> {
        if self.kind != EventType::Status {
            return None;
        }
        serde_json::from_value(serde_json::Value::String(self.data.clone())).ok()
    }

    /// A status event's fields, as the producer handed them to the journal.
    pub fn status_change(&self) -> Option<StatusChange> {
        let status = self.status()?;
        Some(StatusChange {
            status: Some(status),
            exit_code: self.exit_code,
            signal: self.signal,
            reason: self.reason.clone(),
            pid: self.pid,
        })
    }
}

/// One serialized event: the JSON object without a newline. Kept as
/// `Utf8Bytes` (checked once, when journaled) so that every WebSocket
/// subscriber sends the same buffer as a text frame, with no copy.
#[derive(Clone, Debug)]
pub struct Frame {
    pub seq: u64,
    pub json: Utf8Bytes,
}

impl Frame {
    pub fn bytes(&self) -> &[u8] {
        self.json.as_bytes()
    }
}

/// Frames journaled together and fanned out together. Sharing one batch
/// across subscribers is what makes fan-out cost one pointer per subscriber.
#[derive(Debug)]
pub struct Batch {
    pub frames: Vec<Frame>,
    /// Set on the batch that carries the run's final status.
    pub last: bool,
}

impl Batch {
    pub fn byte_len(&self) -> usize {
        self.frames.iter().map(|f| f.json.len()).sum()
    }
}

/// Appends `s` as the inside of a JSON string, escaped exactly as
/// `serde_json` escapes it, so hand-built events are byte-identical to
/// serialized ones. serde_json looks up every byte in a table; output is
/// most of what a busy daemon serializes (10–13 % of its CPU on a 1 GiB
/// job), so this tests eight bytes at a time and copies clean runs whole.
pub fn escape_json_into(out: &mut BytesMut, s: &str) {
    let mut rest = s.as_bytes();
    while let Some(i) = find_json_special(rest) {
        out.extend_from_slice(&rest[..i]);
        match rest[i] {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            byte => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.extend_from_slice(&[HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0xf)]]);
            }
        }
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
}

/// Index of the first byte of `bytes` that a JSON string cannot hold as
/// it is: a control character, `"` or `\`. Shared by the escaper and the
/// client's unescaper.
pub fn find_json_special(bytes: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(word) = bytes.get(i..i + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        let mask = escape_mask(u64::from_le_bytes(w));
        if mask != 0 {
            // The lowest flagged byte is always a real one (see `escape_mask`).
            return Some(i + (mask.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    bytes[i..].iter().position(|&b| needs_escape(b)).map(|j| i + j)
}

fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// High bit set in each byte of `w` that is a control character, `"` or
/// `\`. Bytes above a flagged one may be flagged falsely (a borrow carries
/// into them), never bytes below it: the lowest flag is exact.
fn escape_mask(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x;
    let control = w.wrapping_sub(ONES * 0x20) & !w;
    let quote = zero_byte(w ^ (ONES * u64::from(b'"')));
    let backslash = zero_byte(w ^ (ONES * u64::from(b'\\')));
    (control | quote | backslash) & HIGH
}

/// RFC 3339 UTC with microseconds, as the spec's examples show.
pub fn now_timestamp() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Conventional name of a signal number, for humans.
pub fn signal_name(signal: i32) -> Option<String> {
    nix::sys::signal::Signal::try_from(signal).ok().map(|s| s.as_str().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_goes_base64_and_round_trips() {
        let bytes = vec![b'a', 0xff, 0xfe, b'\n'];
        let data = OutputData::from_bytes(bytes.clone());
        assert_eq!(data.encoding, Some(Encoding::Base64));
        let ev = Event {
            run_id: "r".into(),
            seq: 1,
            kind: EventType::Stdout,
            data: data.text,
            encoding: data.encoding,
            exit_code: None,
            signal: None,
            signal_name: None,
            reason: None,
            pid: None,
            timestamp: now_timestamp(),
            host: None,
            step_id: None,
            payload: None,
        };
        let json = serde_json::to_string(&ev).unwrap();
        assert!(json.contains(r#""encoding":"base64""#), "{json}");
        let back: Event = serde_json::from_str(&json).unwrap();
        assert_eq!(back.output_bytes().unwrap(), bytes);
    }

    #[test]
    fn escaping_matches_serde_json() {
        let mut cases: Vec<String> = (0u8..0x80).map(|b| format!("ab{}cdefghijklmnop", b as char)).collect();
        cases.extend((0u8..0x80).map(|b| (b as char).to_string().repeat(19)));
        cases.push("€ \"quoted\" back\\slash\ttab\u{1}\u{1f}\u{7f} é\r\n".repeat(37));
        cases.push(String::new());
        cases.push("x".repeat(100) + "\n");
        for s in cases {
            let mut out = BytesMut::new();
            out.extend_from_slice(b"\"");
            escape_json_into(&mut out, &s);
            out.extend_from_slice(b"\"");
            assert_eq!(std::str::from_utf8(&out).unwrap(), serde_json::to_string(&s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn timestamp_has_microseconds_and_z() {
        let ts = now_timestamp();
        assert!(ts.ends_with('Z'), "{ts}");
        let frac = ts.split('.').nth(1).unwrap();
        assert_eq!(frac.len(), 7, "{ts}");
    }

    #[test]
    fn status_names_match_spec() {
        let names: Vec<_> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(names, ["queued", "running", "succeeded", "failed", "cancelled", "lost"]);
        for s in RunStatus::ALL {
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{}\"", s.as_str()));
        }
    }

    #[test]
    fn type_is_read_from_the_line_head() {
        for t in EventType::ALL {
            let ev = Event {
                run_id: "a-1".into(),
                seq: 12,
                kind: t,
                data: r#","type":"status""#.into(),
                ..Event::default()
            };
            let line = serde_json::to_vec(&ev).unwrap();
            assert_eq!(EventType::of_line(&line), Some(t));
        }
        let only = TypeSet::of([EventType::Status, EventType::StepStart]);
        assert!(only.wants_line(br#"{"runId":"a","seq":1,"type":"status","data":""}"#));
        assert!(!only.wants_line(br#"{"runId":"a","seq":2,"type":"stdout","data":"\"type\":\"status\""}"#));
        assert!(only.wants_line(b"not an event"));
        assert!(TypeSet::ALL.is_all() && !only.is_all());
    }
}
