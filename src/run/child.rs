//! Starting a job's process and signalling its process group.
//!
//! Every run gets its own process group (pipes: `setpgid(0, 0)`; PTY: a new
//! session), so that cancel reaches everything the job started with one
//! `killpg`. The job is started with std's `Command` and reaped by the
//! shim's one reaper (`reaper.rs`), which also reaps what the job leaves
//! behind: nothing else calls `waitpid`, so nothing races it.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};

use std::os::fd::{AsRawFd as _, OwnedFd};

use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::net::unix::pipe::Receiver;

use super::pty::{self, PtyReader};
use crate::run_id::RunId;

/// How a job's process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Exited(i32),
    Signaled(i32),
    /// Waiting for it failed, or the OS reported neither a code nor a signal.
    Unknown,
}

impl From<nix::sys::wait::WaitStatus> for Outcome {
    fn from(status: nix::sys::wait::WaitStatus) -> Self {
        use nix::sys::wait::WaitStatus;
        match status {
            WaitStatus::Exited(_, code) => Outcome::Exited(code),
            WaitStatus::Signaled(_, sig, _) => Outcome::Signaled(sig as i32),
            _ => Outcome::Unknown,
        }
    }
}

impl From<ExitStatus> for Outcome {
    fn from(status: ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => Outcome::Exited(code),
            (None, Some(sig)) => Outcome::Signaled(sig),
            // Neither code nor signal: stopped/continued never reach `wait`.
            (None, None) => Outcome::Unknown,
        }
    }
}

/// What to run, as the launcher asked for it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Spec {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Start from an empty environment instead of the daemon's.
    pub clear_env: bool,
    pub cwd: Option<String>,
    pub pty: Option<(u16, u16)>,
}

/// The streams to read from a started job.
pub(crate) enum Streams {
    Pipes { stdout: Receiver, stderr: Receiver },
    Pty(PtyReader),
}

pub(crate) struct Started {
    /// The job's pid, which is also its process group's ID.
    pub pgid: Pid,
    pub streams: Streams,
    /// Where the job writes its step and progress reports (`RUNTAP_EVENTS_FD`).
    pub events: tokio::net::unix::pipe::Receiver,
}

/// Held while a job's events pipe is inheritable. The write end must
/// survive `exec` in this job and in no other: spawns that could overlap
/// (other runs starting on other threads) wait for it.
#[derive(Clone, Default)]
pub(crate) struct SpawnLock(std::sync::Arc<std::sync::Mutex<()>>);

/// Starts the job in its own process group with `RUNTAP_RUN_ID` set, and
/// `RUNTAP_EVENTS_FD` naming the write end of its events pipe.
pub(crate) fn spawn(run_id: &RunId, spec: &Spec, lock: &SpawnLock) -> io::Result<Started> {
    let (program, args) =
        spec.argv.split_first().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let mut cmd = Command::new(resolve_program(program, spec)?);
    cmd.args(args);
    if spec.clear_env {
        cmd.env_clear();
    }
    cmd.envs(&spec.env).env("RUNTAP_RUN_ID", run_id.as_str());
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    let (events, events_writer) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    cmd.env("RUNTAP_EVENTS_FD", events_writer.as_raw_fd().to_string());
    let pty_reader = match spec.pty {
        None => {
            std::os::unix::process::CommandExt::process_group(
                cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()),
                0,
            );
            None
        }
        Some((cols, rows)) => {
            let (reader, slave) = pty::open(cols, rows)?;
            cmd.stdin(slave.try_clone()?).stdout(slave.try_clone()?).stderr(slave);
            cmd.env("TERM", spec.env.get("TERM").map_or("xterm-256color", String::as_str));
            pty::set_controlling_terminal(&mut cmd);
            Some(reader)
        }
    };
    let spawned = {
        // A poisoned lock guards nothing but this window: carry on.
        let _inheritable = lock.0.lock().unwrap_or_else(|p| p.into_inner());
        fcntl(&events_writer, FcntlArg::F_SETFD(FdFlag::empty()))?;
        let spawned = cmd.spawn();
        // Our copy of the write end goes before anyone else may spawn: the
        // job holds its own, and ours would keep the channel from ending.
        drop(events_writer);
        spawned
    };
    // The same for our copies of a terminal's slave.
    drop(cmd);
    let mut child = spawned?;
    let pgid = Pid::from_raw(child.id() as i32);
    let streams = match pty_reader {
        Some(reader) => Streams::Pty(reader),
        None => match (child.stdout.take(), child.stderr.take()) {
            (Some(stdout), Some(stderr)) => {
                grow_pipe(&stdout);
                grow_pipe(&stderr);
                let stdout = Receiver::from_owned_fd(OwnedFd::from(stdout))?;
                let stderr = Receiver::from_owned_fd(OwnedFd::from(stderr))?;
                Streams::Pipes { stdout, stderr }
            }
            _ => return Err(io::Error::other("child pipes missing")),
        },
    };
    let events = Receiver::from_owned_fd(events)?;
    // Dropping std's handle neither waits nor kills: the reaper owns the pid.
    drop(child);
    Ok(Started { pgid, streams, events })
}

/// Capacity asked for the job's output pipes (Linux defaults to 64 KiB):
/// a job that writes fast can run ahead while the daemon is busy elsewhere.
const PIPE_SIZE: i32 = 1024 * 1024;

fn grow_pipe(fd: &impl std::os::fd::AsFd) {
    // Best effort: above /proc/sys/fs/pipe-max-size an unprivileged daemon gets EPERM.
    let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
}

/// The program's path, looked up in the job's `PATH` the way `execvp`
/// would. Doing it here, not in the child, lets std start the job with
/// `posix_spawn` (vfork semantics) instead of `fork()`: std must fall back
/// to `fork()` when it has to search a `PATH` the caller overrode, and
/// forking a large daemon costs a page-table copy per launch.
fn resolve_program(program: &str, spec: &Spec) -> io::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if program.contains('/') {
        return Ok(program.into());
    }
    let path = match spec.env.get("PATH") {
        Some(p) => Some(p.clone().into()),
        None if spec.clear_env => None,
        None => std::env::var_os("PATH"),
    }
    .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let base = spec.cwd.as_deref().map(std::path::Path::new);
    for dir in std::env::split_paths(&path) {
        // An empty or relative PATH entry is relative to the job's cwd.
        let dir = match base {
            Some(b) if dir.is_relative() => b.join(dir),
            _ => dir,
        };
        let candidate = dir.join(program);
        if let Ok(meta) = std::fs::metadata(&candidate)
            && meta.is_file()
            && meta.permissions().mode() & 0o111 != 0
        {
            return Ok(candidate);
        }
    }
    Err(io::Error::new(io::ErrorKind::NotFound, format!("{program}: command not found in PATH")))
}

/// Signals a whole process group. Refuses pgid ≤ 1: `kill(-1)` would signal
/// every process we may signal, and `kill(0)` our own group.
pub(crate) fn signal_group(pgid: Pid, signal: Signal) -> io::Result<()> {
    if pgid.as_raw() <= 1 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("refusing to signal process group {pgid}")));
    }
    match killpg(pgid, signal) {
        Ok(()) => Ok(()),
        // The group is already gone: the goal is reached.
        Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_bare_names_in_the_jobs_path() {
        let spec = Spec { env: [("PATH".into(), "/nonexistent:/bin:/usr/bin".into())].into(), ..Spec::default() };
        let p = resolve_program("sh", &spec).unwrap();
        assert!(p.is_absolute() && p.ends_with("sh"), "{p:?}");
        assert_eq!(resolve_program("./x", &spec).unwrap(), std::path::PathBuf::from("./x"));
        let err = resolve_program("no-such-program-xyz", &spec).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn refuses_dangerous_groups() {
        for pgid in [-1, 0, 1] {
            assert!(signal_group(Pid::from_raw(pgid), Signal::SIGTERM).is_err());
        }
    }
}
