//! The one place where a journaled event becomes what a `/workflow`
//! subscription sends: `update {type, payload, timestamp}` while live, and
//! the same payloads in `initial_data` pieces for history.
//!
//! A new event type is one arm of [`update_for`]. The step events being
//! added to runs (`step_start`, `step_complete`, `step_log`, `progress`,
//! with their fields in `payload`, and `stepId` on output) map here, once
//! they exist, to `step.started` / `step.completed` / `step.failed` for
//! `execution` and `log.created` for `logs`; until then those arms are
//! marked `SEAM:`.

use serde_json::{Value, json};

/// A log level, in order: `filters.logLevel` keeps this level and above.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    pub(super) fn parse(s: &str) -> Option<Level> {
        match s {
            "debug" => Some(Level::Debug),
            "info" => Some(Level::Info),
            "warn" | "warning" => Some(Level::Warn),
            "error" => Some(Level::Error),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// What a subscription follows, and how it filters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Topic {
    /// One run's status (and, later, its steps).
    Execution,
    /// One run's output: stdout as `info`, stderr as `error`.
    Logs { min_level: Option<Level> },
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
        (Topic::Logs { min_level }, "stdout" | "stderr") => {
            let level = if kind == "stderr" { Level::Error } else { Level::Info };
            if min_level.is_some_and(|min| level < min) {
                return None;
            }
            Some(("log.created", log_payload(event, kind, level)))
        }
        // SEAM: step events. `(Topic::Execution, "step_start")` → "step.started",
        // `"step_complete"` → "step.completed" / "step.failed" by `payload.status`;
        // `(Topic::Logs { .. }, "step_log")` → "log.created" with `payload.level`;
        // `"progress"` → "execution.progress". `filters.stepId` then compares
        // `event["stepId"]` (refused at subscribe until then: workflow_ns).
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

fn log_payload(event: &Value, stream: &str, level: Level) -> Value {
    let mut p = json!({
        "executionId": run_id(event),
        "runId": run_id(event),
        "seq": event.get("seq"),
        "stream": stream,
        "level": level.as_str(),
        "message": event.get("data"),
        "timestamp": event.get("timestamp"),
    });
    for key in ["encoding", "stepId", "host"] {
        if let Some(v) = event.get(key) {
            p[key] = v.clone();
        }
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
        let all = Topic::Logs { min_level: None };
        let (kind, p) = update_for(&all, &out).unwrap();
        assert_eq!(
            (kind, &p["level"], &p["message"], &p["seq"]),
            ("log.created", &json!("info"), &json!("hi\n"), &json!(4))
        );
        assert_eq!(update_for(&all, &err).unwrap().1["level"], "error");
        let errors = Topic::Logs { min_level: Some(Level::Error) };
        assert_eq!(update_for(&errors, &out), None);
        assert!(update_for(&errors, &err).is_some());
        let status = json!({"runId": "r", "seq": 6, "type": "status", "data": "succeeded"});
        assert_eq!(update_for(&all, &status), None);
    }
}
