//! Steps and progress that a job reports on `RUNTAP_EVENTS_FD`, one JSON
//! object per line, turned into events of its run.
//!
//! The channel is the job's to write and anything may arrive on it, so
//! nothing on it can harm the run: a line that is malformed, oversized or
//! out of order (a step ended that never started) is dropped, counted,
//! and reported once per run as a `step_log` warning. The daemon keeps the
//! open steps: output while one is open carries its `stepId`, a
//! `step_complete` gets its `duration` from the daemon's clock, and a step
//! still open when the job exits is closed for it.

use std::time::Instant;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::event::{EventType, LogLevel};

/// Longest line read from the channel; longer ones are dropped.
pub(crate) const MAX_LINE: usize = 64 * 1024;
/// Longest step ID and step name kept.
const MAX_ID: usize = 128;
const MAX_NAME: usize = 256;
/// Steps open at once (nested); more are refused.
const MAX_OPEN: usize = 64;

/// One event to journal: its type and `payload`.
#[derive(Debug, PartialEq)]
pub(crate) struct StepEvent {
    pub kind: EventType,
    pub payload: Value,
}

/// A line as the job writes it (`runtap step` / `runtap progress` write these).
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Line {
    #[serde(rename_all = "camelCase")]
    StepStart {
        step_id: String,
        step_name: Option<String>,
    },
    #[serde(rename_all = "camelCase")]
    StepComplete {
        step_id: String,
        status: Option<StepStatus>,
    },
    #[serde(rename_all = "camelCase")]
    StepLog {
        step_id: Option<String>,
        level: Option<LogLevel>,
        message: String,
    },
    Progress {
        progress: f64,
        stage: Option<String>,
        message: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum StepStatus {
    Success,
    Failure,
    Skipped,
}

impl StepStatus {
    fn as_str(self) -> &'static str {
        match self {
            StepStatus::Success => "success",
            StepStatus::Failure => "failure",
            StepStatus::Skipped => "skipped",
        }
    }
}

struct Open {
    id: String,
    name: String,
    since: Instant,
}

/// The open steps of one run, and what was dropped.
#[derive(Default)]
pub(crate) struct Steps {
    open: Vec<Open>,
    /// Lines dropped so far.
    rejected: u64,
}

impl Steps {
    /// The step output belongs to now: the innermost open one.
    pub(crate) fn current(&self) -> Option<&str> {
        self.open.last().map(|s| s.id.as_str())
    }

    pub(crate) fn rejected(&self) -> u64 {
        self.rejected
    }

    /// The events one line of the channel makes: its own, or (once per
    /// run) a warning that a line was dropped, or nothing.
    pub(crate) fn line(&mut self, line: &[u8]) -> Vec<StepEvent> {
        match self.accept(line) {
            Ok(event) => vec![event],
            Err(why) => self.reject(why),
        }
    }

    /// A line too long to read whole: dropped like a malformed one.
    pub(crate) fn oversized(&mut self) -> Vec<StepEvent> {
        self.reject(format!("a line over {MAX_LINE} bytes"))
    }

    fn reject(&mut self, why: String) -> Vec<StepEvent> {
        self.rejected += 1;
        if self.rejected > 1 {
            return Vec::new();
        }
        let message =
            format!("runtap dropped a line on RUNTAP_EVENTS_FD ({why}); later dropped lines are only counted");
        vec![log(self.current(), "warn", &message)]
    }

    fn accept(&mut self, line: &[u8]) -> Result<StepEvent, String> {
        let line: Line = serde_json::from_slice(line).map_err(|e| format!("not a step event: {e}"))?;
        match line {
            Line::StepStart { step_id, step_name } => {
                let id = checked(step_id, MAX_ID, "stepId")?;
                if self.open.iter().any(|s| s.id == id) {
                    return Err(format!("step {id:?} is already open"));
                }
                if self.open.len() >= MAX_OPEN {
                    return Err(format!("more than {MAX_OPEN} steps open"));
                }
                let name = checked(step_name.unwrap_or_else(|| id.clone()), MAX_NAME, "stepName")?;
                let payload = json!({"stepId": id, "stepName": name});
                self.open.push(Open { id, name, since: Instant::now() });
                Ok(StepEvent { kind: EventType::StepStart, payload })
            }
            Line::StepComplete { step_id, status } => {
                let at = self.open.iter().position(|s| s.id == step_id).ok_or_else(|| {
                    format!("step {:?} ended but is not open", step_id.chars().take(MAX_ID).collect::<String>())
                })?;
                let step = self.open.remove(at);
                Ok(complete(step, status.unwrap_or(StepStatus::Success)))
            }
            Line::StepLog { step_id, level, message } => {
                let step = match step_id {
                    Some(id) if self.open.iter().any(|s| s.id == id) => Some(id),
                    Some(id) => return Err(format!("log for step {:?}, which is not open", truncate(&id, MAX_ID))),
                    None => self.current().map(str::to_owned),
                };
                let message = checked(message, MAX_LINE, "message")?;
                Ok(log(step.as_deref(), level.unwrap_or(LogLevel::Info).as_str(), &message))
            }
            Line::Progress { progress, stage, message } => {
                if !(0.0..=1.0).contains(&progress) {
                    return Err(format!("progress {progress} is not between 0 and 1"));
                }
                let mut payload = json!({"progress": progress});
                if let Some(stage) = stage {
                    payload["stage"] = json!(checked(stage, MAX_NAME, "stage")?);
                }
                if let Some(message) = message {
                    payload["message"] = json!(message);
                }
                if let Some(step) = self.current() {
                    payload["stepId"] = json!(step);
                }
                Ok(StepEvent { kind: EventType::Progress, payload })
            }
        }
    }

    /// Closes the steps the job left open when it exited: `success` if
    /// the run did, `failure` otherwise, each with a warning first.
    pub(crate) fn close_all(&mut self, succeeded: bool) -> Vec<StepEvent> {
        let status = if succeeded { StepStatus::Success } else { StepStatus::Failure };
        let mut out = Vec::new();
        while let Some(step) = self.open.pop() {
            let message = format!("step {:?} was still open when the job exited; runtap closed it", step.id);
            out.push(log(Some(&step.id), "warn", &message));
            out.push(complete(step, status));
        }
        out
    }
}

fn complete(step: Open, status: StepStatus) -> StepEvent {
    let duration = u64::try_from(step.since.elapsed().as_millis()).unwrap_or(u64::MAX);
    let payload = json!({"stepId": step.id, "stepName": step.name, "status": status.as_str(), "duration": duration});
    StepEvent { kind: EventType::StepComplete, payload }
}

fn log(step: Option<&str>, level: &str, message: &str) -> StepEvent {
    let mut payload = json!({"level": level, "message": message});
    if let Some(step) = step {
        payload["stepId"] = json!(step);
    }
    StepEvent { kind: EventType::StepLog, payload }
}

fn checked(value: String, max: usize, what: &str) -> Result<String, String> {
    if value.is_empty() || value.len() > max {
        return Err(format!("{what} must be 1 to {max} bytes"));
    }
    Ok(value)
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// What the events channel yields.
pub(crate) enum Got {
    Line(bytes::Bytes),
    /// A line longer than [`MAX_LINE`] (its bytes are skipped).
    Oversized,
}

/// The job's events pipe, cut into lines, at most [`MAX_LINE`] held.
pub(crate) struct EventLines {
    pipe: tokio::net::unix::pipe::Receiver,
    buf: bytes::BytesMut,
    /// In the middle of an oversized line: drop until its newline.
    skipping: bool,
    done: bool,
}

impl EventLines {
    pub(crate) fn new(pipe: tokio::net::unix::pipe::Receiver) -> Self {
        EventLines { pipe, buf: bytes::BytesMut::new(), skipping: false, done: false }
    }

    /// True once the channel has ended (every writer closed it) or was stopped.
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// Stops reading (the drain deadline passed).
    pub(crate) fn stop(&mut self) {
        self.done = true;
        self.buf = bytes::BytesMut::new();
    }

    /// The next line; `None` at the end. Cancel-safe: all state is in `self`.
    pub(crate) async fn next(&mut self) -> Option<Got> {
        use tokio::io::AsyncReadExt as _;
        loop {
            if let Some(nl) = memchr::memchr(b'\n', &self.buf) {
                let line = self.buf.split_to(nl + 1).freeze().slice(..nl);
                if std::mem::take(&mut self.skipping) {
                    continue;
                }
                return Some(Got::Line(line));
            }
            if self.buf.len() > MAX_LINE {
                self.buf.clear();
                if !std::mem::replace(&mut self.skipping, true) {
                    return Some(Got::Oversized);
                }
            }
            if self.done {
                return None;
            }
            self.buf.reserve(4096);
            match self.pipe.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => {
                    self.done = true;
                    // A last line without its newline still counts.
                    if !self.buf.is_empty() && !std::mem::take(&mut self.skipping) {
                        return Some(Got::Line(self.buf.split().freeze()));
                    }
                    return None;
                }
                Ok(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_opens_closes_with_a_duration_and_owns_the_logs() {
        let mut s = Steps::default();
        let start = s.line(br#"{"type":"step_start","stepId":"s1","stepName":"Build"}"#);
        assert_eq!(
            start,
            vec![StepEvent { kind: EventType::StepStart, payload: json!({"stepId":"s1","stepName":"Build"}) }]
        );
        assert_eq!(s.current(), Some("s1"));
        let log = s.line(br#"{"type":"step_log","level":"warn","message":"careful"}"#);
        assert_eq!(log[0].payload, json!({"stepId":"s1","level":"warn","message":"careful"}));
        let done = s.line(br#"{"type":"step_complete","stepId":"s1","status":"failure"}"#);
        assert_eq!(done[0].kind, EventType::StepComplete);
        assert_eq!(done[0].payload["status"], "failure");
        assert!(done[0].payload["duration"].is_u64());
        assert_eq!(s.current(), None);
        assert_eq!(s.rejected(), 0);
    }

    #[test]
    fn bad_lines_are_dropped_counted_and_reported_once() {
        let mut s = Steps::default();
        for bad in [
            &br#"not json"#[..],
            br#"{"type":"step_complete","stepId":"never"}"#,
            br#"{"type":"progress","progress":1.5}"#,
            br#"{"type":"step_start","stepId":""}"#,
            br#"{"type":"nope"}"#,
            br#"{"type":"step_start","stepId":"a","extra":1}"#,
        ] {
            let out = s.line(bad);
            assert!(out.len() <= 1, "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(s.rejected(), 6);
        let mut first = Steps::default();
        let warn = first.line(b"garbage");
        assert_eq!((warn[0].kind, warn[0].payload["level"].as_str()), (EventType::StepLog, Some("warn")));
        assert!(first.oversized().is_empty(), "reported once per run");
    }

    #[test]
    fn steps_left_open_are_closed_innermost_first() {
        let mut s = Steps::default();
        s.line(br#"{"type":"step_start","stepId":"outer"}"#);
        s.line(br#"{"type":"step_start","stepId":"inner"}"#);
        let out = s.close_all(false);
        let closed: Vec<_> =
            out.iter().filter(|e| e.kind == EventType::StepComplete).map(|e| e.payload["stepId"].clone()).collect();
        assert_eq!(closed, [json!("inner"), json!("outer")]);
        assert!(out.iter().all(|e| e.kind != EventType::StepComplete || e.payload["status"] == "failure"));
    }
}
