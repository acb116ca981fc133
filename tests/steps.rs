//! Issue 12, structured events: a job reports steps and progress on
//! `RUNTAP_EVENTS_FD` (with `runtap step` / `runtap progress`, or by
//! writing JSON lines itself); they become events of its run, numbered by
//! the same `seq`, with output in a step carrying its `stepId`. Nothing on
//! the channel can harm the run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use runtap::event::{Event, EventType, RunStatus};
use serde_json::json;

fn of_type(events: &[Event], kind: EventType) -> Vec<&Event> {
    events.iter().filter(|e| e.kind == kind).collect()
}

fn stdout_with(events: &[Event], text: &str) -> Event {
    events
        .iter()
        .find(|e| e.kind == EventType::Stdout && e.data.contains(text))
        .unwrap_or_else(|| panic!("no output {text:?} in {events:#?}"))
        .clone()
}

async fn metric(d: &Daemon, name: &str) -> u64 {
    let (_, text) = http(d, "GET", "/metrics", None).await;
    text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_job_reports_steps_and_progress_with_runtap_step() {
    let d = Daemon::start();
    let rt = bin();
    let script = format!(
        "{rt} step start s1 --name Build && echo in-step && {rt} step log --level warn careful && \
         {rt} step end s1 && echo after && {rt} progress 0.5 --stage half halfway"
    );
    let out = d.run(&["run", "--id", "steps", "--", "sh", "-c", &script]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "in-step\nafter\n", "step events are not output");
    let events = d.events("steps").await;
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "step events share the run's seq");
    let start = of_type(&events, EventType::StepStart);
    assert_eq!(start.len(), 1);
    assert_eq!(start[0].payload, Some(json!({"stepId": "s1", "stepName": "Build"})));
    assert_eq!(stdout_with(&events, "in-step").step_id.as_deref(), Some("s1"), "output in a step carries it");
    let log = of_type(&events, EventType::StepLog);
    assert_eq!(log[0].payload, Some(json!({"stepId": "s1", "level": "warn", "message": "careful"})));
    let done = of_type(&events, EventType::StepComplete);
    let p = done[0].payload.clone().unwrap();
    assert_eq!(
        (p["stepId"].as_str(), p["stepName"].as_str(), p["status"].as_str()),
        (Some("s1"), Some("Build"), Some("success"))
    );
    assert!(p["duration"].is_u64(), "the daemon computes the duration: {p}");
    assert_eq!(stdout_with(&events, "after").step_id, None, "output after the step has none");
    let progress = of_type(&events, EventType::Progress);
    assert_eq!(progress[0].payload, Some(json!({"progress": 0.5, "stage": "half", "message": "halfway"})));
    // The order a reader sees is the order the job wrote in.
    let pos = |pred: &dyn Fn(&Event) -> bool| events.iter().position(pred).unwrap();
    assert!(pos(&|e| e.kind == EventType::StepStart) < pos(&|e| e.data.contains("in-step")));
    assert!(pos(&|e| e.data.contains("in-step")) < pos(&|e| e.kind == EventType::StepComplete));
    assert!(pos(&|e| e.kind == EventType::StepComplete) < pos(&|e| e.data.contains("after")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_on_the_channel_never_harm_the_run() {
    let d = Daemon::start();
    // Malformed, oversized, out of order, and two writers at once; the run
    // still succeeds with every good event and its own output.
    let py = r#"
import os, subprocess, sys
fd = int(os.environ["RUNTAP_EVENTS_FD"])
def w(b): os.write(fd, b)
w(b'not json at all\n')
w(b'{"type":"step_complete","stepId":"ghost"}\n')
w(b'{"type":"step_start","stepId":"big","stepName":"' + b'x' * 70000 + b'"}\n')
w(b'{"type":"step_start","stepId":"ok"}\n')
child = """
import os, sys
fd = int(os.environ["RUNTAP_EVENTS_FD"])
k = sys.argv[1]
for i in range(200):
    os.write(fd, ('{"type":"step_log","message":"w%s %d"}\\n' % (k, i)).encode())
"""
kids = [subprocess.Popen([sys.executable, "-c", child, str(k)], pass_fds=(fd,)) for k in range(2)]
for k in kids: k.wait()
print("job output", flush=True)
w(b'{"type":"step_complete","stepId":"ok"}\n')
"#;
    let out = d.run(&["run", "--id", "bad", "--", "python3", "-c", py]);
    assert!(out.status.success(), "{out:?}");
    let events = d.events("bad").await;
    assert_eq!(events.last().unwrap().status(), Some(RunStatus::Succeeded));
    assert_eq!(stdout_with(&events, "job output").step_id.as_deref(), Some("ok"));
    let logs = of_type(&events, EventType::StepLog);
    let warnings: Vec<_> = logs.iter().filter(|e| e.payload.as_ref().unwrap()["level"] == "warn").collect();
    assert_eq!(warnings.len(), 1, "dropped lines are reported once: {warnings:#?}");
    let interleaved = logs.iter().filter(|e| e.payload.as_ref().unwrap()["message"].as_str().unwrap().starts_with('w'));
    assert_eq!(interleaved.count(), 400, "every line of two concurrent writers arrives whole");
    assert_eq!(of_type(&events, EventType::StepStart).len(), 1, "only the good step started");
    assert_eq!(metric(&d, "runtap_event_lines_rejected_total").await, 3, "malformed, out of order, oversized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_left_open_is_closed_when_the_job_exits() {
    let d = Daemon::start();
    let rt = bin();
    let out = d.run(&["run", "--id", "open", "--", "sh", "-c", &format!("{rt} step start forgot && exit 3")]);
    assert_eq!(out.status.code(), Some(3));
    let events = d.events("open").await;
    let done = of_type(&events, EventType::StepComplete);
    assert_eq!(done.len(), 1);
    let p = done[0].payload.clone().unwrap();
    assert_eq!((p["stepId"].as_str(), p["status"].as_str()), (Some("forgot"), Some("failure")));
    let warn = of_type(&events, EventType::StepLog);
    assert!(warn[0].payload.as_ref().unwrap()["message"].as_str().unwrap().contains("still open"));
    assert!(done[0].seq < events.last().unwrap().seq, "closed before the final status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pty_jobs_get_the_channel_and_websocket_subscribers_the_events() {
    let d = Daemon::start();
    let rt = bin();
    let out =
        d.run(&["run", "--pty", "--id", "tty", "--", "sh", "-c", &format!("{rt} step start t && {rt} step end t")]);
    assert!(out.status.success(), "{out:?}");
    let mut ws = ws_connect(&d.ws_url(&format!("/runs?runId=tty&token={}", d.token())), &[]).await;
    let got = ws_read(&mut ws, |_| false).await;
    let kinds: Vec<EventType> = got.events.iter().map(|e| e.kind).filter(|k| *k != EventType::Status).collect();
    assert_eq!(kinds, [EventType::StepStart, EventType::StepComplete]);
}

#[test]
fn runtap_step_outside_a_job_says_why() {
    let out =
        std::process::Command::new(bin()).args(["step", "start", "x"]).env_remove("RUNTAP_EVENTS_FD").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("RUNTAP_EVENTS_FD"), "{out:?}");
}

/// Step events are events like any other: the gateway's copy of the run
/// holds them, each once, with `stepId` on output, and serves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_events_reach_the_gateway_unchanged() {
    let gw = Gateway::start();
    let h1 = gw.start_host("h1");
    let rt = bin();
    let script = format!("{rt} step start s1 && echo in-step && {rt} step end s1 && {rt} progress 1");
    let out = h1.run(&["run", "--id", "gw-steps", "--", "sh", "-c", &script]);
    assert!(out.status.success(), "{out:?}");
    let events = assert_same_copy(&gw, "h1", &h1, "gw-steps").await;
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).filter(|t| *t != "status").collect();
    assert_eq!(kinds, ["step_start", "stdout", "step_complete", "progress"]);
    let in_step = events.iter().find(|e| e["type"] == "stdout").unwrap();
    assert_eq!(in_step["stepId"], "s1", "{in_step}");
}
