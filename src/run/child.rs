//! Starting a job's process and signalling its process group.
//!
//! Every run gets its own process group (pipes: `setpgid(0, 0)`; PTY: a new
//! session), so that cancel reaches everything the job started with one
//! `killpg`. tokio reaps the child; grandchildren left behind are reparented
//! to init (or systemd), which reaps them.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

use super::pty::{self, PtyReader};
use crate::run_id::RunId;

/// How a job's process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    Signaled(i32),
}

impl From<ExitStatus> for Outcome {
    fn from(status: ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => Outcome::Exited(code),
            (None, Some(sig)) => Outcome::Signaled(sig),
            // Neither code nor signal: stopped/continued never reach `wait`.
            (None, None) => Outcome::Exited(-1),
        }
    }
}

/// What to run, as the launcher asked for it.
#[derive(Clone, Debug, Default)]
pub struct Spec {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Start from an empty environment instead of the daemon's.
    pub clear_env: bool,
    pub cwd: Option<String>,
    pub pty: Option<(u16, u16)>,
}

/// The streams to read from a started job.
pub enum Streams {
    Pipes { stdout: ChildStdout, stderr: ChildStderr },
    Pty(PtyReader),
}

pub struct Started {
    pub child: Child,
    pub pgid: Pid,
    pub streams: Streams,
}

/// Starts the job in its own process group with `RUNTAP_RUN_ID` set.
pub fn spawn(run_id: &RunId, spec: &Spec) -> io::Result<Started> {
    let (program, args) =
        spec.argv.split_first().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let mut cmd = Command::new(program);
    cmd.args(args).kill_on_drop(false);
    if spec.clear_env {
        cmd.env_clear();
    }
    cmd.envs(&spec.env).env("RUNTAP_RUN_ID", run_id.as_str());
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    let (mut child, pty_reader) = match spec.pty {
        None => {
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
            (cmd.spawn()?, None)
        }
        Some((cols, rows)) => {
            let (reader, slave) = pty::open(cols, rows)?;
            cmd.stdin(slave.try_clone()?).stdout(slave.try_clone()?).stderr(slave);
            cmd.env("TERM", spec.env.get("TERM").map_or("xterm-256color", String::as_str));
            pty::set_controlling_terminal(&mut cmd);
            let child = cmd.spawn()?;
            // `cmd` still holds our copies of the slave; drop them now or the
            // terminal would never report end of stream.
            drop(cmd);
            (child, Some(reader))
        }
    };
    let pid = child.id().ok_or_else(|| io::Error::other("child exited before its pid was read"))?;
    let pgid = Pid::from_raw(pid as i32);
    let streams = match pty_reader {
        Some(reader) => Streams::Pty(reader),
        None => match (child.stdout.take(), child.stderr.take()) {
            (Some(stdout), Some(stderr)) => Streams::Pipes { stdout, stderr },
            _ => return Err(io::Error::other("child pipes missing")),
        },
    };
    Ok(Started { child, pgid, streams })
}

/// Signals a whole process group. Refuses pgid ≤ 1: `kill(-1)` would signal
/// every process we may signal, and `kill(0)` our own group.
pub fn signal_group(pgid: Pid, signal: Signal) -> io::Result<()> {
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
    fn refuses_dangerous_groups() {
        for pgid in [-1, 0, 1] {
            assert!(signal_group(Pid::from_raw(pgid), Signal::SIGTERM).is_err());
        }
    }
}
