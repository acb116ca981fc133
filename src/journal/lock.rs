//! Who writes a run's journal. A run's events have one writer at a time
//! (its supervisor, `runtap shim`, while it lives), and it proves it with
//! an exclusive `flock` on the events file: the kernel drops the lock when
//! the writer's process dies, however it dies, so "the lock is free" means
//! exactly "nobody will append any more".

use std::fs::{File, OpenOptions};
use std::io;

use nix::fcntl::{Flock, FlockArg};

use super::layout::EVENTS_FILE;
use super::{Journal, JournalError, RunWriter, io_err};
use crate::run_id::RunId;

/// Whether a run's events file has a live writer.
pub enum WriterLock {
    /// Someone holds the lock: the file may still grow; leave it alone.
    Held,
    /// Nobody does; while this is kept, nobody else can start writing.
    Free(Option<Flock<File>>),
}

impl Journal {
    /// Tries the run's writer lock without waiting. A run with no events
    /// file has no writer.
    pub fn try_writer_lock(&self, id: &RunId) -> Result<WriterLock, JournalError> {
        let path = self.run_dir(id).join(EVENTS_FILE);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(WriterLock::Free(None)),
            Err(e) => return Err(io_err("open journal", &path)(e)),
        };
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(WriterLock::Free(Some(lock))),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(WriterLock::Held),
            Err((_, errno)) => Err(io_err("lock journal", &path)(errno.into())),
        }
    }

    /// Opens an existing run's journal for appending after `last_seq`, as
    /// its only writer: fails with `Locked` if another process writes it.
    /// The lock lasts as long as the writer.
    pub fn open_sole_writer(&self, id: &RunId, last_seq: u64) -> Result<RunWriter, JournalError> {
        let path = self.run_dir(id).join(EVENTS_FILE);
        let file = OpenOptions::new().append(true).open(&path).map_err(io_err("open journal", &path))?;
        let lock = file.try_clone().map_err(io_err("open journal", &path))?;
        let lock = match Flock::lock(lock, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Err(JournalError::Locked(id.clone())),
            Err((_, errno)) => return Err(io_err("lock journal", &path)(errno.into())),
        };
        let mut writer = RunWriter::new(self, id.clone(), path, file, last_seq);
        writer.lock = Some(lock);
        Ok(writer)
    }
}
