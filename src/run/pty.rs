//! Pseudo-terminals for jobs that want one.
//!
//! The child becomes a session leader (`setsid`) with the slave as its
//! controlling terminal, so `isatty()` is true and job control, colours and
//! progress bars behave as in a terminal. Its session ID is its PID, which
//! makes it the leader of its own process group, as every run must be.
//!
//! Both ends are opened close-on-exec so that no other job spawned at the
//! same moment can inherit them (an inherited slave would keep this run's
//! terminal open and its output stream from ever ending).

#![allow(unsafe_code)]

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::pty::{PtyMaster, grantpt, posix_openpt, ptsname_r, unlockpt};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, ReadBuf};

/// The parent's end of a terminal, readable as a stream. EIO (all slave
/// ends closed: the job and everything it started are gone) reads as EOF.
pub(crate) struct PtyReader {
    fd: AsyncFd<PtyMaster>,
}

/// Opens a terminal of `cols` × `rows`; returns the master reader and the slave.
pub(crate) fn open(cols: u16, rows: u16) -> io::Result<(PtyReader, OwnedFd)> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let slave_path = ptsname_r(&master)?;
    let winsize = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one `winsize` through the pointer, which is
    // valid for the duration of the call; the fd is an open pty master.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &winsize) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // std opens with O_CLOEXEC; O_NOCTTY keeps the daemon from acquiring it.
    let slave = OpenOptions::new().read(true).write(true).custom_flags(libc::O_NOCTTY).open(&slave_path)?;
    let flags = OFlag::from_bits_truncate(fcntl(&master, FcntlArg::F_GETFL)?);
    fcntl(&master, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    // SAFETY: `PtyMaster` owns its fd, keeps it open until dropped, and
    // always returns the same one from `as_raw_fd`.
    let fd = unsafe { AsyncFd::register_with_interest(master, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    Ok((PtyReader { fd }, OwnedFd::from(slave)))
}

/// Makes the child a session leader with `slave` (its stdin) as controlling tty.
pub(crate) fn set_controlling_terminal(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (setsid, ioctl); it allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // stdin is the slave by the time pre_exec closures run.
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

impl AsyncRead for PtyReader {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|inner| nix::unistd::read(inner.get_ref(), unfilled).map_err(io::Error::from)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}
