//! Runs outlive the daemon (issue 15): every run has its own supervisor,
//! `runtap shim`, which records itself in `STATE/runs/ID/supervisor.json`
//! (`pid`, `bootId`, `socket`) and holds the job. A daemon that is stopped
//! (`runs.on_shutdown = "detach"`, the default) or killed leaves them
//! running: [`end_leftovers`] ends them when its test is over. And the
//! small process helpers the tests of issue 15 use.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde_json::Value;

use super::{Daemon, WAIT};

/// The variable the harness sets on every `runtap` process it starts (the
/// instance's temp dir): a shim and a job inherit the daemon's
/// environment, so the cleanup finds them even when their files are gone
/// (a tmpfs unmounted first, a supervisor.json not written yet).
pub const INSTANCE_ENV: &str = "RUNTAP_TEST_INSTANCE";

/// How long shims get to cancel their runs (TERM, the job exits) before
/// they and their jobs are killed.
const SHIM_TERM_WAIT: Duration = Duration::from_secs(5);

/// Clock ticks per second in /proc: USER_HZ, 100 on every Linux ABI.
const TICKS_PER_SEC: f64 = 100.0;

// ---------------------------------------------------------------------------
// Processes, read from /proc.

/// Now, in the clock ticks since boot that /proc/PID/stat's start time
/// counts (less one, for the rounding of either).
pub fn ticks_since_boot() -> u64 {
    let up = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    let secs: f64 = up.split_whitespace().next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
    ((secs * TICKS_PER_SEC) as u64).saturating_sub(1)
}

/// The fields of /proc/PID/stat after `(comm)`: state is [0], ppid [1],
/// pgrp [2], start time [19].
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// When the process started, in clock ticks since boot.
pub fn start_ticks(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// A live process (a zombie is not: orphans wait for PID 1 to reap them).
pub fn alive(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().is_some_and(|s| s != "Z"))
}

/// Its argv.
pub fn cmdline(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    raw.split(|&b| b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
}

/// A `runtap shim` process: argv is `runtap shim --run-id ID`.
pub fn is_shim(pid: u32) -> bool {
    cmdline(pid).get(1).is_some_and(|a| a == "shim")
}

/// The run a shim supervises (`--run-id ID` in its argv).
pub fn shim_run_id(pid: u32) -> Option<String> {
    let args = cmdline(pid);
    let at = args.iter().position(|a| a == "--run-id")?;
    args.get(at + 1).cloned()
}

fn has_marker(pid: u32, marker: &Path) -> bool {
    let want = format!("{INSTANCE_ENV}={}", marker.display()).into_bytes();
    std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == want))
}

fn all_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect()
}

/// Live processes that carry this instance's marker: its daemon, shims,
/// jobs and what they started (unless they changed their environment).
pub fn marked_processes(marker: &Path) -> Vec<u32> {
    all_pids().into_iter().filter(|&p| alive(p) && has_marker(p, marker)).collect()
}

/// Live `runtap shim` processes of this instance.
pub fn marked_shims(marker: &Path) -> Vec<u32> {
    marked_processes(marker).into_iter().filter(|&p| is_shim(p)).collect()
}

/// Live members of a process group.
pub fn group_members(pgid: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&p| stat_fields(p).is_some_and(|f| f.len() > 2 && f[0] != "Z" && f[2] == pgid.to_string()))
        .collect()
}

/// `kill(-pgid, 0)` fails with ESRCH: no process of the group is left,
/// not even a zombie.
pub fn group_gone(pgid: u32) -> bool {
    killpg(Pid::from_raw(pgid as i32), None) == Err(nix::errno::Errno::ESRCH)
}

/// Waits (bounded by WAIT) until `cond` holds; panics with `what()`.
pub fn wait_for(what: impl Fn() -> String, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting: {}", what());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (bounded) until `pid` is no live process.
pub fn wait_dead(pid: u32, what: &str) {
    wait_for(|| format!("{what} (pid {pid}) to be gone: {:?}", cmdline(pid)), || !alive(pid));
}

// ---------------------------------------------------------------------------
// A run's files.

pub fn supervisor_path(state: &Path, id: &str) -> PathBuf {
    state.join("runs").join(id).join("supervisor.json")
}

/// A run's supervisor.json, if it is there and whole.
pub fn supervisor(state: &Path, id: &str) -> Option<Value> {
    let text = std::fs::read_to_string(supervisor_path(state, id)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The job's pid (its process group) from the journal's `running` status
/// event; lenient: lines that are not JSON are skipped.
pub fn job_pid_in_journal(events: &Path) -> Option<u32> {
    let text = std::fs::read(events).ok()?;
    text.split(|&b| b == b'\n').find_map(|line| {
        let v: Value = serde_json::from_slice(line).ok()?;
        (v["type"] == "status" && v["data"] == "running").then(|| v["pid"].as_u64()).flatten().map(|p| p as u32)
    })
}

/// For every run dir: (run ID, shim pid, job pid), each as far as its files say.
fn recorded(state: &Path) -> Vec<(String, Option<u32>, Option<u32>)> {
    let Ok(dir) = std::fs::read_dir(state.join("runs")) else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .map(|id| {
            let shim = supervisor(state, &id).and_then(|s| s["pid"].as_u64()).map(|p| p as u32);
            let job = job_pid_in_journal(&state.join("runs").join(&id).join("events.jsonl"));
            (id, shim, job)
        })
        .collect()
}

/// A run's shim pid, from its supervisor.json (waits, bounded, for the
/// file: the shim writes it when it starts).
pub fn shim_pid(d: &Daemon, id: &str) -> u32 {
    let mut pid = None;
    wait_for(
        || format!("a supervisor.json with a pid for run {id}: {:?}", supervisor(&d.state_dir(), id)),
        || {
            pid = supervisor(&d.state_dir(), id).and_then(|s| s["pid"].as_u64());
            pid.is_some()
        },
    );
    pid.unwrap() as u32
}

/// Where the shims' sockets are: `shims/` beside the daemon's socket.
pub fn shims_dir(d: &Daemon) -> PathBuf {
    d.socket().parent().unwrap().join("shims")
}

/// Socket files left in the shims dir.
pub fn shim_sockets(d: &Daemon) -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(shims_dir(d)) else { return Vec::new() };
    dir.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "sock")).collect()
}

// ---------------------------------------------------------------------------
// The cleanup.

/// Ends every shim and job an instance leaves behind. Shims are found
/// through `STATE/runs/*/supervisor.json` and the instance's marker; each
/// gets SIGTERM (a shim cancels its run) and a few seconds, then SIGKILL.
/// Then each job's process group (from its `running` event) and whatever
/// else carries the marker is killed. A pid is only signalled if its
/// process started after the instance was created (pids are reused, and
/// the machine is shared), and a shim pid only if it is a shim. Files may
/// be missing or partial: what cannot be read is skipped.
pub fn end_leftovers(state: &Path, marker: &Path, created: u64) {
    let ours = |pid: u32| pid != std::process::id() && start_ticks(pid).is_some_and(|t| t >= created);
    let runs = recorded(state);
    let mut shims: Vec<u32> = runs.iter().filter_map(|r| r.1).filter(|&p| alive(p) && is_shim(p) && ours(p)).collect();
    shims.extend(marked_shims(marker));
    shims.sort_unstable();
    shims.dedup();
    for &pid in &shims {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + SHIM_TERM_WAIT;
    while shims.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for &pid in shims.iter().filter(|&&p| alive(p)) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    for pgid in runs.iter().filter_map(|r| r.2) {
        let members = group_members(pgid);
        if !members.is_empty() && members.iter().all(|&p| ours(p)) {
            let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
        }
    }
    for pid in marked_processes(marker) {
        if ours(pid) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while !marked_processes(marker).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}
