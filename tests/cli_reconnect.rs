//! Issue 15, the CLI's side: `runtap run` and `runtap logs -f` follow their
//! run across a daemon restart (kill -9, or a clean stop that leaves the
//! runs to their shims), with the output complete, once, in order.
//!
//! Each job writes numbered lines in three parts: the first while the old
//! daemon runs, the second (after the test creates `gate1`) while no
//! daemon runs, the third (after `gate2`) once the new one is up. The gates
//! are waits the job bounds itself, so a failed test leaves no job behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use runtap::event::{Event, EventType};

/// Lines per part of the job.
const PART: usize = 10;
const LOST: &str = "runtap: lost the daemon's socket; reconnecting to follow run";

/// A job writing lines 1..=3*PART, waiting for `gate1` after the first part
/// and `gate2` after the second (each wait bounded by WAIT), then exiting 7.
fn gated_job(dir: &Path) -> (String, PathBuf, PathBuf) {
    let (gate1, gate2) = (dir.join("gate1"), dir.join("gate2"));
    let part =
        |from: usize| format!("i={from}; while [ $i -lt {} ]; do echo $i; sleep 0.01; i=$((i+1)); done; ", from + PART);
    let wait = |gate: &Path| {
        let polls = WAIT.as_millis() / 50;
        format!("n=0; while [ ! -e '{}' ] && [ $n -lt {polls} ]; do sleep 0.05; n=$((n+1)); done; ", gate.display())
    };
    let script = [part(1), wait(&gate1), part(PART + 1), wait(&gate2), part(2 * PART + 1), "exit 7".into()].concat();
    (script, gate1, gate2)
}

fn numbered(to: usize) -> String {
    (1..=to).map(|i| format!("{i}\n")).collect()
}

/// A CLI process whose stdout and stderr are collected as they come.
/// Killed if the test ends before it exits.
struct Cli {
    child: Child,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Cli {
    fn start(d: &Daemon, args: &[&str]) -> Cli {
        let mut child =
            d.cli().args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let (out, err) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
        let collect = |mut pipe: Box<dyn Read + Send>, into: Arc<Mutex<Vec<u8>>>| {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = pipe.read(&mut buf) {
                    into.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            })
        };
        let readers = vec![
            collect(Box::new(child.stdout.take().unwrap()), out.clone()),
            collect(Box::new(child.stderr.take().unwrap()), err.clone()),
        ];
        Cli { child, out, err, readers }
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned()
    }

    /// Waits (bounded) until stdout holds `line` as a line of its own.
    fn wait_for_line(&self, line: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.stdout().lines().any(|l| l == line) {
            assert!(Instant::now() < deadline, "no line {line:?} in time: {:?} / {:?}", self.stdout(), self.stderr());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits (bounded) for the exit; returns its code, stdout and stderr.
    fn finish(mut self) -> (Option<i32>, String, String) {
        let status = wait_child(&mut self.child, WAIT)
            .unwrap_or_else(|| panic!("the CLI did not exit in time: {:?} / {:?}", self.stdout(), self.stderr()));
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
        (status.code(), self.stdout(), self.stderr())
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits (bounded) until the run's journal holds output `line` (written
/// by its shim while no daemon runs).
fn wait_journaled(d: &Daemon, id: &str, line: &str) {
    let path = events_path(d, id);
    let journaled = || {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        // The last line may be half written.
        let events = text.lines().filter_map(|l| serde_json::from_str::<Event>(l).ok());
        let stdout: String = events.filter(|e| e.kind == EventType::Stdout).map(|e| e.data).collect();
        stdout.lines().any(|l| l == line)
    };
    let deadline = Instant::now() + WAIT;
    while !journaled() {
        assert!(Instant::now() < deadline, "line {line:?} not journaled in time");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn touch(path: &Path) {
    std::fs::write(path, b"").unwrap();
}

#[test]
fn run_follows_its_run_across_a_daemon_kill9() {
    let mut d = Daemon::start();
    let (script, gate1, gate2) = gated_job(d.dir.path());
    let cli = Cli::start(&d, &["run", "--id", "across-kill", "--", "sh", "-c", &script]);
    cli.wait_for_line(&PART.to_string());
    d.kill9();
    touch(&gate1);
    wait_journaled(&d, "across-kill", &(2 * PART).to_string());
    d.spawn();
    touch(&gate2);
    let (code, stdout, stderr) = cli.finish();
    assert_eq!(stdout, numbered(3 * PART), "every line once, in order (stderr: {stderr:?})");
    assert_eq!(code, Some(7), "the job's exit code: {stderr:?}");
    assert_eq!(stderr.matches(LOST).count(), 1, "says once that it reconnects: {stderr:?}");
}

#[test]
fn logs_follow_goes_on_across_a_clean_stop_and_start() {
    let mut d = Daemon::start();
    let (script, gate1, gate2) = gated_job(d.dir.path());
    let out = d.run(&["run", "--detach", "--id", "across-stop", "--", "sh", "-c", &script]);
    assert!(out.status.success(), "{out:?}");
    let cli = Cli::start(&d, &["logs", "-f", "across-stop"]);
    cli.wait_for_line(&PART.to_string());
    // SIGTERM with the default runs.on_shutdown = "detach": the run goes on.
    assert!(d.stop().success(), "{}", d.log());
    touch(&gate1);
    wait_journaled(&d, "across-stop", &(2 * PART).to_string());
    d.spawn();
    touch(&gate2);
    let (code, stdout, stderr) = cli.finish();
    assert_eq!(stdout, numbered(3 * PART), "every line once, in order (stderr: {stderr:?})");
    assert_eq!(code, Some(0), "{stderr:?}");
    assert_eq!(stderr.matches(LOST).count(), 1, "says once that it reconnects: {stderr:?}");
}

/// Missing events are the daemon speaking, not the connection failing:
/// reported once, and the stream goes on to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_in_the_history_is_not_a_lost_connection() {
    let mut removed = Vec::new();
    let (d, _, _, _) = with_middle_line_damaged(|lines, i| removed = lines.remove(i)).await;
    let removed: Event = serde_json::from_slice(&removed).unwrap();
    let out = d.run(&["logs", "-f", "bad"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.starts_with("line 1\n") && stdout.ends_with("line 6\n"), "{stdout:?}");
    assert!(!stdout.contains(&removed.data), "{stdout:?} holds the removed {:?}", removed.data);
    assert_eq!(stderr.matches("missing from its degraded journal").count(), 1, "{stderr}");
    assert!(!stderr.contains(LOST), "{stderr}");
}
