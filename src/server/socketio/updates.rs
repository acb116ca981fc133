//! The one place where a journaled event becomes what a `/workflow`
//! subscription sends: `update {type, payload, timestamp}` while live, and
//! the same payloads in `initial_data` pieces for history.
//!
//! A new event type is one arm of [`update_for`]. Step events (fields in
//! `payload`, `stepId` on output written in a step) become `step.started`
//! / `step.completed` / `step.failed` and `execution.progress` for
//! `execution`, and `log.created` for `logs`.

use serde_json::{Value, json};

use crate::event::LogLevel;

/// What a subscription follows, and how it filters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Topic {
    /// One run's status, steps and progress.
    Execution,
    /// One run's output (stdout as `info`, stderr as `error`) and step
    /// logs; with `step`, only what was written in that step.
    Logs { min_level: Option<LogLevel>, step: Option<String> },
    /// The status of each of many runs (`workflow`, `tenant_activity`).
    Lifecycle,
}

/// The `update` a journaled event makes for `topic`: its `type` and
/// `payload`, or `None` when the event is not for this subscription.
pub(super) fn update_for(topic: &Topic, event: &Value) -> Option<(&'static str, Value)> {
    let kind = event.get("type").and_then(Value::as_str)?;
    match (topic, kind) {
        (Topic::Execution, "status") => {
            let status = event.get("data").and_then(Value::as_str)?;
            let kind = match status {
                "running" => "execution.started",
                "succeeded" => "execution.completed",
                "failed" | "lost" => "execution.failed",
                "cancelled" => "execution.cancelled",
                // `queued` is where every run starts: it is in `initial_data`.
                _ => return None,
            };
            Some((kind, execution_payload(event, status)))
        }
        (Topic::Lifecycle, "status") => update_for(&Topic::Execution, event),
        (Topic::Execution, "step_start") => Some(("step.started", step_payload(event))),
        (Topic::Execution, "step_complete") => {
            let failed = event.pointer("/payload/status").and_then(Value::as_str) == Some("failure");
            Some((if failed { "step.failed" } else { "step.completed" }, step_payload(event)))
        }
        (Topic::Execution, "progress") => Some(("execution.progress", step_payload(event))),
        (Topic::Logs { min_level, step }, "stdout" | "stderr" | "step_log") => {
            let step_of = if kind == "step_log" { event.pointer("/payload/stepId") } else { event.get("stepId") };
            if step.as_ref().is_some_and(|want| step_of.and_then(Value::as_str) != Some(want)) {
                return None;
            }
            let level = match kind {
                "stderr" => LogLevel::Error,
                "stdout" => LogLevel::Info,
                _ => event
                    .pointer("/payload/level")
                    .and_then(Value::as_str)
                    .and_then(LogLevel::parse)
                    .unwrap_or(LogLevel::Info),
            };
            if min_level.is_some_and(|min| level < min) {
                return None;
            }
            Some(("log.created", log_payload(event, kind, level)))
        }
        _ => None,
    }
}

fn run_id(event: &Value) -> Value {
    event.get("runId").cloned().unwrap_or(Value::Null)
}

fn execution_payload(event: &Value, status: &str) -> Value {
    let mut p = json!({
        "executionId": run_id(event),
        "runId": run_id(event),
        "status": status,
        "seq": event.get("seq"),
        "timestamp": event.get("timestamp"),
    });
    for key in ["exitCode", "signal", "reason", "host"] {
        if let Some(v) = event.get(key) {
            p[key] = v.clone();
        }
    }
    p
}

/// A step or progress event: its `payload` fields, and where it is from.
fn step_payload(event: &Value) -> Value {
    let mut p = event.get("payload").cloned().filter(Value::is_object).unwrap_or_else(|| json!({}));
    p["executionId"] = run_id(event);
    p["runId"] = run_id(event);
    p["seq"] = event.get("seq").cloned().unwrap_or(Value::Null);
    p["timestamp"] = event.get("timestamp").cloned().unwrap_or(Value::Null);
    if let Some(h) = event.get("host") {
        p["host"] = h.clone();
    }
    p
}

fn log_payload(event: &Value, kind: &str, level: LogLevel) -> Value {
    let step_log = kind == "step_log";
    let message = if step_log { event.pointer("/payload/message") } else { event.get("data") };
    let mut p = json!({
        "executionId": run_id(event),
        "runId": run_id(event),
        "seq": event.get("seq"),
        "stream": if step_log { "step" } else { kind },
        "level": level.as_str(),
        "message": message,
        "timestamp": event.get("timestamp"),
    });
    for key in ["encoding", "stepId", "host"] {
        if let Some(v) = event.get(key) {
            p[key] = v.clone();
        }
    }
    if let Some(step) = event.pointer("/payload/stepId").filter(|_| step_log) {
        p["stepId"] = step.clone();
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_execution_updates() {
        let ev = |data: &str| json!({"runId": "r", "seq": 3, "type": "status", "data": data, "timestamp": "t"});
        let kind = |data: &str| update_for(&Topic::Execution, &ev(data)).map(|(k, _)| k);
        assert_eq!(kind("queued"), None);
        assert_eq!(kind("running"), Some("execution.started"));
        assert_eq!(kind("succeeded"), Some("execution.completed"));
        assert_eq!(kind("failed"), Some("execution.failed"));
        assert_eq!(kind("lost"), Some("execution.failed"));
        assert_eq!(kind("cancelled"), Some("execution.cancelled"));
        let mut done = ev("failed");
        done["exitCode"] = json!(3);
        let (_, payload) = update_for(&Topic::Execution, &done).unwrap();
        assert_eq!(payload["exitCode"], 3);
        assert_eq!(payload["executionId"], "r");
        let out = json!({"runId": "r", "seq": 4, "type": "stdout", "data": "hi\n"});
        assert_eq!(update_for(&Topic::Execution, &out), None);
    }

    #[test]
    fn output_maps_to_log_lines_filtered_by_level() {
        let out = json!({"runId": "r", "seq": 4, "type": "stdout", "data": "hi\n", "timestamp": "t"});
        let err = json!({"runId": "r", "seq": 5, "type": "stderr", "data": "oops\n", "timestamp": "t"});
        let all = Topic::Logs { min_level: None, step: None };
        let (kind, p) = update_for(&all, &out).unwrap();
        assert_eq!(
            (kind, &p["level"], &p["message"], &p["seq"]),
            ("log.created", &json!("info"), &json!("hi\n"), &json!(4))
        );
        assert_eq!(update_for(&all, &err).unwrap().1["level"], "error");
        let errors = Topic::Logs { min_level: Some(LogLevel::Error), step: None };
        assert_eq!(update_for(&errors, &out), None);
        assert!(update_for(&errors, &err).is_some());
        let status = json!({"runId": "r", "seq": 6, "type": "status", "data": "succeeded"});
        assert_eq!(update_for(&all, &status), None);
    }

    #[test]
    fn steps_map_to_step_updates_and_step_logs() {
        let ev = |kind: &str, payload: Value| json!({"runId": "r", "seq": 7, "type": kind, "data": "", "payload": payload, "timestamp": "t"});
        let start = ev("step_start", json!({"stepId": "s1", "stepName": "Build"}));
        let (kind, p) = update_for(&Topic::Execution, &start).unwrap();
        assert_eq!(
            (kind, &p["stepId"], &p["stepName"], &p["executionId"]),
            ("step.started", &json!("s1"), &json!("Build"), &json!("r"))
        );
        let done = |status: &str| ev("step_complete", json!({"stepId": "s1", "status": status, "duration": 12}));
        assert_eq!(update_for(&Topic::Execution, &done("success")).unwrap().0, "step.completed");
        assert_eq!(update_for(&Topic::Execution, &done("skipped")).unwrap().0, "step.completed");
        let (kind, p) = update_for(&Topic::Execution, &done("failure")).unwrap();
        assert_eq!((kind, &p["duration"]), ("step.failed", &json!(12)));
        assert_eq!(
            update_for(&Topic::Execution, &ev("progress", json!({"progress": 0.5}))).unwrap().0,
            "execution.progress"
        );
        assert_eq!(update_for(&Topic::Lifecycle, &start), None, "lifecycle is status only");

        let log = ev("step_log", json!({"stepId": "s1", "level": "warn", "message": "careful"}));
        let in_s1 = json!({"runId": "r", "seq": 8, "type": "stdout", "data": "x\n", "stepId": "s1", "timestamp": "t"});
        let outside = json!({"runId": "r", "seq": 9, "type": "stdout", "data": "y\n", "timestamp": "t"});
        let s1 = Topic::Logs { min_level: None, step: Some("s1".into()) };
        let (kind, p) = update_for(&s1, &log).unwrap();
        assert_eq!(
            (kind, &p["level"], &p["message"], &p["stepId"]),
            ("log.created", &json!("warn"), &json!("careful"), &json!("s1"))
        );
        assert!(update_for(&s1, &in_s1).is_some());
        assert_eq!(update_for(&s1, &outside), None);
        let errors = Topic::Logs { min_level: Some(LogLevel::Error), step: None };
        assert_eq!(update_for(&errors, &log), None, "warn is below error");
    }
}
