//! `runtap step` and `runtap progress`: run inside a job, they write one
//! JSON line to the job's events channel (`RUNTAP_EVENTS_FD`), which the
//! daemon turns into events of the job's own run (see `run::steps`).

use std::io::Write;

use serde_json::{Value, json};

use super::ClientError;

/// Lines up to this size reach the pipe in one piece even when several
/// processes of the job report at once (POSIX `PIPE_BUF` on Linux).
const ATOMIC_LINE: usize = 4096;

/// What `runtap step` reports.
pub enum StepReport {
    Start { id: String, name: Option<String> },
    End { id: String, status: String },
    Log { level: String, message: String },
}

/// `runtap step start|end|log`.
pub fn step(report: StepReport) -> Result<i32, ClientError> {
    let line = match report {
        StepReport::Start { id, name } => {
            let mut v = json!({"type": "step_start", "stepId": id});
            if let Some(name) = name {
                v["stepName"] = json!(name);
            }
            v
        }
        StepReport::End { id, status } => json!({"type": "step_complete", "stepId": id, "status": status}),
        StepReport::Log { level, message } => json!({"type": "step_log", "level": level, "message": message}),
    };
    send(&line)
}

/// `runtap progress FRACTION [--stage S] [MESSAGE]`.
pub fn progress(fraction: f64, stage: Option<String>, message: Option<String>) -> Result<i32, ClientError> {
    if !(0.0..=1.0).contains(&fraction) {
        return Err(ClientError::Usage(format!("progress must be between 0 and 1, got {fraction}")));
    }
    let mut line = json!({"type": "progress", "progress": fraction});
    if let Some(stage) = stage {
        line["stage"] = json!(stage);
    }
    if let Some(message) = message {
        line["message"] = json!(message);
    }
    send(&line)
}

/// Writes the line, in one `write`, to the fd the job was given.
fn send(line: &Value) -> Result<i32, ClientError> {
    let fd = std::env::var("RUNTAP_EVENTS_FD").ok().and_then(|v| v.parse::<u32>().ok()).ok_or_else(|| {
        ClientError::Usage("RUNTAP_EVENTS_FD is not set: run this inside a job started by runtap".into())
    })?;
    let mut text = line.to_string();
    text.push('\n');
    if text.len() > ATOMIC_LINE {
        eprintln!("runtap: warning: a report over {ATOMIC_LINE} bytes may interleave with others written at once");
    }
    // A new descriptor for the inherited pipe, opened by path: no raw fd is
    // taken over, so nothing here can close or misuse someone else's fd.
    let path = format!("/proc/self/fd/{fd}");
    let mut pipe = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| ClientError::Usage(format!("RUNTAP_EVENTS_FD={fd} cannot be opened: {e}")))?;
    pipe.write_all(text.as_bytes())?;
    wait_until_read(&pipe);
    Ok(0)
}

/// The job's output and its step lines travel on different pipes, and
/// the daemon cannot tell which was written first when both are waiting.
/// So a report returns only once the daemon has taken its line (the pipe
/// is empty): output the shell writes after `runtap step start` is then
/// read after the step began. Bounded: a daemon that stopped reading
/// costs the job at most this, once per report.
fn wait_until_read(pipe: &std::fs::File) {
    const BOUND: std::time::Duration = std::time::Duration::from_secs(1);
    const POLL: std::time::Duration = std::time::Duration::from_micros(200);
    let deadline = std::time::Instant::now() + BOUND;
    while matches!(crate::sys::pipe_unread(pipe), Ok(n) if n > 0) && std::time::Instant::now() < deadline {
        std::thread::sleep(POLL);
    }
}
