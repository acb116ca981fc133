//! The shim's one reaper. The shim is a child subreaper, so whatever the
//! job leaves behind is reparented to it when its parent dies; one loop of
//! `waitpid(-1)` reaps them all and picks out the job's own exit. Nothing
//! else waits for children here, so no exit status is stolen (tokio's
//! process reaping would `waitpid` the job itself, racing this loop).

use std::io;

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::child::Outcome;

pub(crate) struct Reaper {
    sigchld: Signal,
    job: Option<Pid>,
    /// The job's exit, once reaped.
    exited: Option<Outcome>,
}

impl Reaper {
    /// Listens for SIGCHLD; make it before the job starts, so no exit is missed.
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Reaper { sigchld: signal(SignalKind::child())?, job: None, exited: None })
    }

    pub(crate) fn watch(&mut self, job: Pid) {
        self.job = Some(job);
    }

    /// Reaps every child that has exited, orphans included; the job's exit
    /// is kept for `wait`.
    fn reap(&mut self) -> io::Result<()> {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => return Ok(()),
                Ok(status) => {
                    if status.pid().is_some() && status.pid() == self.job {
                        self.exited = Some(status.into());
                    }
                }
                Err(nix::errno::Errno::ECHILD) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The job's exit (cancel-safe: the state is kept here between calls).
    pub(crate) async fn wait(&mut self) -> io::Result<Outcome> {
        loop {
            self.reap()?;
            if let Some(outcome) = self.exited {
                return Ok(outcome);
            }
            if self.job.is_none() {
                return Err(io::Error::other("no job to wait for"));
            }
            if self.sigchld.recv().await.is_none() {
                return Err(io::Error::other("SIGCHLD stream ended"));
            }
        }
    }
}
