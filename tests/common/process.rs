//! Child processes: signals, bounded waits, fds and zombies.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::WAIT;

pub fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

/// SIGSTOP, returning once every thread of `pid` is stopped: the signal
/// is only queued by kill(2), and a thread still running could answer one
/// more request after "frozen".
pub fn freeze(pid: i32) {
    signal(pid, nix::sys::signal::Signal::SIGSTOP);
    let deadline = Instant::now() + WAIT;
    let stopped = || {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return true };
        tasks.flatten().all(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            // A task that is gone is not running either.
            stat.rsplit_once(')')
                .is_none_or(|(_, rest)| matches!(rest.split_whitespace().next(), Some("T" | "t" | "Z" | "X") | None))
        })
    };
    while !stopped() {
        assert!(Instant::now() < deadline, "process {pid} did not stop within {WAIT:?} of SIGSTOP");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// True while a live (not zombie) process is in the group. Zombies are
/// ignored: orphans are reparented to PID 1, which may not reap them here.
pub fn group_alive(pgid: u32) -> bool {
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        // state ppid pgrp ...
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string() {
            return true;
        }
    }
    false
}

pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A command started now, its output collected (by two threads, so
/// neither pipe fills) until it exits.
pub struct Collecting {
    child: Child,
    out: std::thread::JoinHandle<Vec<u8>>,
    err: std::thread::JoinHandle<Vec<u8>>,
}

impl Collecting {
    pub fn start(mut cmd: Command) -> Collecting {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let read_all = |mut pipe: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                pipe.read_to_end(&mut v).unwrap();
                v
            })
        };
        let out = read_all(Box::new(child.stdout.take().unwrap()));
        let err = read_all(Box::new(child.stderr.take().unwrap()));
        Collecting { child, out, err }
    }

    /// Waits for the exit and returns the output; None (and the command
    /// killed) if it has not exited within `timeout`.
    pub fn finish(mut self, timeout: Duration) -> Option<Output> {
        let Some(status) = wait_child(&mut self.child, timeout) else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            return None;
        };
        Some(Output { status, stdout: self.out.join().unwrap(), stderr: self.err.join().unwrap() })
    }
}

/// Runs a command, collecting output, killing it if it exceeds `timeout`.
pub fn output_with_timeout(cmd: Command, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    Collecting::start(cmd).finish(timeout).unwrap_or_else(|| panic!("command timed out: {what}"))
}

/// Open fds of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Zombie children of `pid`.
pub fn zombies_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        // pid (comm) state ppid ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r.trim().to_owned()) else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 1 && fields[0] == "Z" && fields[1] == pid.to_string() {
            out.push(p);
        }
    }
    out
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}

/// Polls `cond` every 20 ms until it holds; panics with `what()` after WAIT.
pub async fn wait_until<F, Fut>(what: impl Fn() -> String, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting: {}", what());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
