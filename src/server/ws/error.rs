//! The error events a WebSocket session ends with, and their close codes.

use serde_json::json;

use crate::event::Utf8Bytes;
use crate::run_id::RunId;

/// An error event plus the close code that follows it (the spec's table).
#[derive(Debug, Clone)]
pub(crate) struct WsError {
    pub code: &'static str,
    pub close: u16,
    pub message: String,
    pub last_seq: Option<u64>,
    /// The run it is about, on `/ws` where a session has several.
    pub run: Option<RunId>,
}

impl WsError {
    pub(crate) fn new(code: &'static str, close: u16, message: impl Into<String>) -> Self {
        WsError { code, close, message: message.into(), last_seq: None, run: None }
    }
    pub(crate) fn unauthorized() -> Self {
        Self::new("unauthorized", 4401, "missing or wrong token")
    }
    pub(crate) fn forbidden(run: &RunId) -> Self {
        Self::new("forbidden", 4403, format!("this token may not see run {run}"))
    }
    pub(crate) fn host_token() -> Self {
        Self::new("forbidden", 4403, "host (agent) tokens cannot subscribe to runs")
    }
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new("bad-request", 4400, message)
    }
    pub(crate) fn missing_run_id() -> Self {
        Self::new("missing-run-id", 4400, "no run ID given")
    }
    /// From a raw `runId` value: missing, or malformed.
    pub(crate) fn for_run_id(raw: Option<&str>) -> Result<RunId, WsError> {
        match raw {
            None | Some("") => Err(Self::missing_run_id()),
            Some(s) => RunId::parse(s).map_err(|e| Self::bad_request(format!("invalid run ID {s:?}: {e}"))),
        }
    }

    pub(crate) fn with_run(mut self, run: RunId) -> Self {
        self.run = Some(run);
        self
    }

    pub(crate) fn to_json(&self) -> Utf8Bytes {
        let mut v = json!({"type": "error", "code": self.code, "message": self.message});
        if let Some(seq) = self.last_seq {
            v["lastSeq"] = seq.into();
        }
        if let Some(run) = &self.run {
            v["runId"] = run.as_str().into();
        }
        Utf8Bytes::from(v.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_id_errors_follow_the_spec_table() {
        assert_eq!(WsError::for_run_id(None).unwrap_err().code, "missing-run-id");
        assert_eq!(WsError::for_run_id(Some("")).unwrap_err().code, "missing-run-id");
        let e = WsError::for_run_id(Some("../x")).unwrap_err();
        assert_eq!((e.code, e.close), ("bad-request", 4400));
    }
}
