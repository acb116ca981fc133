//! The few direct OS calls that have no safe wrapper in nix or std, and
//! small OS helpers the daemon and the gateway share. `unsafe` is denied
//! crate-wide and allowed only here and in `run::pty`.

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
