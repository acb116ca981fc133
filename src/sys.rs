//! The few direct OS calls that have no safe wrapper in nix or std, and
//! small OS helpers the daemon and the gateway share. `unsafe` is denied
//! crate-wide and allowed only here, in `run::pty`, and in one constructor
//! of `journal::encode` (a frame the journal encoded itself).

#![allow(unsafe_code)]

use std::io;

/// Marks every fd above stderr close-on-exec. A daemon started from a shell
/// or test harness inherits whatever its parent leaked; without this, every
/// job would inherit those fds too (and could keep pipes of strangers open).
pub fn cloexec_inherited_fds() -> io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on fds in
    // the range; it closes nothing and touches no memory.
    let rc = unsafe { libc::close_range(3, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_int) };
    if rc == 0 {
        return Ok(());
    }
    // Kernels before 5.11: walk /proc/self/fd instead.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_SETFD on a possibly-closed fd fails with EBADF, nothing more.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

nix::ioctl_read_bad!(tiocgwinsz, libc::TIOCGWINSZ, libc::winsize);

/// The size (cols, rows) of the terminal on stdout, if it is one.
pub fn terminal_size() -> Option<(u16, u16)> {
    if !nix::unistd::isatty(std::io::stdout()).unwrap_or(false) {
        return None;
    }
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the valid, exclusive pointer.
    let ok = unsafe { tiocgwinsz(1, &mut ws) }.is_ok();
    (ok && ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
}

/// The open-file soft limit, if it can be read.
pub fn open_file_limit() -> Option<u64> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok().map(|(soft, _)| soft)
}

/// Raises the open-file soft limit to the hard limit: every subscriber is a
/// socket, and the common soft default (1024) is far below what a daemon
/// serving thousands of dashboards needs. Returns the new soft limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
}

/// Creates a state dir (and parents) with mode 0750: job output and tokens
/// live below it, and must not be readable by other users.
pub fn create_private_dir(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o750).create(path)
}

/// Name of the lock file in a state dir.
const LOCK_FILE: &str = "lock";

/// An exclusive `flock` on `STATE_DIR/lock`, held for as long as this
/// value lives (the kernel drops it when the process dies, however it
/// dies). Two daemons on one state dir would close each other's runs and
/// interleave writes in the same journals.
#[derive(Debug)]
pub struct StateDirLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("state dir {} is in use by another runtap process{}: stop it or use another --state-dir", .dir.display(), .pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    InUse { dir: std::path::PathBuf, pid: Option<u32> },
    #[error("lock state dir {}: {error}", .dir.display())]
    Io { dir: std::path::PathBuf, error: io::Error },
}

/// Takes the state dir's lock, or says which process holds it.
pub fn lock_state_dir(dir: &std::path::Path) -> Result<StateDirLock, LockError> {
    use nix::fcntl::{Flock, FlockArg};
    use std::io::{Read, Seek, Write};
    let io_err = |error| LockError::Io { dir: dir.to_owned(), error };
    let path = dir.join(LOCK_FILE);
    let file =
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io_err)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            // Ours now: say who holds it, for the next one to name.
            lock.set_len(0).map_err(io_err)?;
            lock.rewind().map_err(io_err)?;
            write!(lock, "{}", std::process::id()).map_err(io_err)?;
            Ok(StateDirLock { _lock: lock })
        }
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            Err(LockError::InUse { dir: dir.to_owned(), pid: text.trim().parse().ok() })
        }
        Err((_, errno)) => Err(io_err(errno.into())),
    }
}

/// Hands memory that the allocator holds but does not use back to the OS.
/// glibc keeps freed memory in its arenas; after a burst (thousands of
/// connections gone, a 16 MB job's buffers freed) RSS stays at the peak
/// unless asked. A no-op on other C libraries.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only walks the allocator's
    // own free lists, under the allocator's locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How often [`release_when_shrinking`] looks at the load.
const RELEASE_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// Calls [`release_free_memory`] (on a blocking thread) whenever `load`
/// (connections plus active runs, say) has fallen well below its recent
/// high: by half, and by at least `min_drop`. Cheap while nothing changes.
pub async fn release_when_shrinking(
    load: impl Fn() -> usize + Send + 'static,
    min_drop: usize,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(RELEASE_CHECK);
    let mut high = load();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = load();
        if now > high {
            high = now;
        } else if high - now >= min_drop && now <= high / 2 {
            tracing::debug!(high, now, "load fell: returning free memory to the OS");
            let _ = tokio::task::spawn_blocking(release_free_memory).await;
            high = now;
        }
    }
}

nix::ioctl_read_bad!(fionread, libc::FIONREAD, libc::c_int);

/// Bytes written to a pipe and not yet read (either end of it will do).
pub fn pipe_unread(pipe: &impl std::os::fd::AsRawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one `c_int` through the valid, exclusive
    // pointer; on a descriptor that is not a pipe it fails, nothing more.
    unsafe { fionread(pipe.as_raw_fd(), &mut n) }?;
    Ok(usize::try_from(n).unwrap_or(0))
}
