//! `runtap shim`: one small supervisor process per run, so that a run
//! outlives the daemon that started it (restart, crash, upgrade).
//!
//! The daemon re-executes its own binary as the shim and hands it the
//! launch order on stdin (`start.rs`). The shim detaches (its own session,
//! inherited fds closed), becomes a child subreaper, takes the run's
//! journal as its only writer (`journal::lock`), listens on the run's
//! socket, says `ready` on stdout, and runs the job under the same
//! [`Supervisor`] the daemon used to run in-process: it owns the pipes or
//! the terminal, reaps, cancels, assigns every `seq`, and writes the final
//! status with the exit code. It exits after the final fsync. A daemon
//! attaches over the socket (`link.rs`; the daemon's side is
//! `run::attach`) and reads new events from the journal file.
//!
//! - `wire`: the messages, versioned.
//! - `record`: `supervisor.json`, the run's record of its shim.
//! - `link`: the shim's side of the socket.
//! - `start`: the daemon's side of starting one.

pub(crate) mod link;
pub(crate) mod record;
pub(crate) mod start;
pub(crate) mod wire;

use std::io::{self, Read as _, Write as _};
use std::os::fd::RawFd;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

use super::child::Spec;
use super::output::Pacing;
use super::reaper::Reaper;
use super::supervisor::{Channels, Control, Supervisor, Timing};
use crate::journal::Journal;
use crate::run_id::RunId;
use link::{Attached, Identity, Link};
use record::Record;
use wire::Launch;

/// Largest launch order read from stdin (argv and environment).
const MAX_LAUNCH: u64 = 16 * 1024 * 1024;
/// How long an exiting shim waits for the attached daemon to be told.
const TELL_DONE: Duration = Duration::from_secs(2);

/// The shim process's `main`. Errors go to stderr (the daemon's log) and
/// exit code 2; the daemon, which waits for `ready`, reports them too.
pub(crate) fn main() -> ExitCode {
    close_inherited_fds();
    let mut text = Vec::new();
    if let Err(error) = io::stdin().lock().take(MAX_LAUNCH).read_to_end(&mut text) {
        eprintln!("runtap shim: reading the launch order: {error}");
        return ExitCode::from(2);
    }
    let launch: Launch = match serde_json::from_slice(&text) {
        Ok(l) => l,
        Err(error) => {
            eprintln!("runtap shim: bad launch order: {error}");
            return ExitCode::from(2);
        }
    };
    let _log = crate::logging::init(&launch.log_level);
    // Off the daemon's session and process group: a terminal's hangup or
    // a signal to the daemon's group does not reach the run. Fails only
    // if already a group leader, which the daemon never makes us.
    if let Err(error) = nix::unistd::setsid() {
        tracing::warn!(run_id = %launch.run_id, %error, "setsid failed");
    }
    // Executed as /proc/self/exe, the process would be named "exe" in
    // `ps -C`, `top` and `pgrep`; its argv already says `runtap shim`.
    let _ = nix::sys::prctl::set_name(c"runtap-shim");
    // What the job leaves behind is reparented to us and reaped here, not
    // left to whatever is pid 1 (or to the daemon, long gone).
    if let Err(error) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(run_id = %launch.run_id, %error, "cannot become a child subreaper");
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    let code = match runtime.map_err(|e| e.to_string()).and_then(|rt| rt.block_on(shim(launch))) {
        Ok(()) => 0,
        Err(error) => {
            tracing::error!(%error, "runtap shim failed");
            2
        }
    };
    ExitCode::from(code)
}

async fn shim(launch: Launch) -> Result<(), String> {
    let run_id = RunId::parse(&launch.run_id).map_err(|e| e.to_string())?;
    let journal = Journal::open(&launch.state_dir).map_err(|e| e.to_string())?;
    let writer = journal.open_sole_writer(&run_id, 0).map_err(|e| e.to_string())?;
    let listener = bind(&launch.socket).map_err(|e| format!("bind {}: {e}", launch.socket.display()))?;
    let me = Identity { run_id: launch.run_id.clone(), pid: std::process::id() };
    let record =
        Record { version: wire::VERSION, pid: me.pid, boot_id: record::boot_id(), socket: launch.socket.clone() };
    record.write(&journal.run_dir(&run_id)).map_err(|e| format!("write supervisor.json: {e}"))?;
    let reaper = Reaper::new().map_err(|e| format!("SIGCHLD: {e}"))?;
    let attached = Arc::new(watch::Sender::new(Attached::default()));
    let (link, marks, delivered, unwritten) = Link::new();
    let (control_tx, control) = mpsc::unbounded_channel();
    let serve = link::serve(listener, me, marks, control_tx.clone(), delivered, attached.clone(), unwritten);
    let serving = tokio::spawn(serve);
    let signals = tokio::spawn(forward_signals(control_tx));
    say_ready().map_err(|e| format!("tell the daemon: {e}"))?;

    let timing = Timing {
        grace_period: Duration::from_millis(launch.grace_ms),
        drain_timeout: Duration::from_millis(launch.drain_ms),
        pacing: Pacing {
            line_hold: Duration::from_millis(launch.line_hold_ms),
            coalesce: Duration::from_millis(launch.coalesce_ms),
        },
        fsync_interval: Duration::from_millis(launch.fsync_ms),
    };
    let spec =
        Spec { argv: launch.argv, env: launch.env, clear_env: launch.clear_env, cwd: launch.cwd, pty: launch.pty };
    let channels = Channels { writer, sink: link, reaper, control };
    Supervisor::new(run_id, spec, channels, timing).run().await;

    let mut told = attached.subscribe();
    let _ = tokio::time::timeout(TELL_DONE, told.wait_for(Attached::settled)).await;
    serving.abort();
    signals.abort();
    let _ = std::fs::remove_file(&launch.socket);
    Ok(())
}

/// SIGTERM is a cancel (what `systemctl kill --kill-whom=all` or a package
/// removal sends); SIGHUP and SIGINT are ignored: the shim has no terminal,
/// and a run is not ended by accident.
async fn forward_signals(control: mpsc::UnboundedSender<Control>) {
    let (Ok(mut term), Ok(mut hup), Ok(mut int)) =
        (signal(SignalKind::terminate()), signal(SignalKind::hangup()), signal(SignalKind::interrupt()))
    else {
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => {
                let _ = control.send(Control::Cancel { reason: "supervisor stopped by SIGTERM".into() });
            }
            _ = hup.recv() => {}
            _ = int.recv() => {}
        }
    }
}

/// The run's socket, reachable by our user only: the directory is 0700
/// and the socket 0600 (never abstract: those have no permissions).
fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// One line on stdout, then stdout and stdin point at /dev/null: the
/// daemon's pipes must not keep it (or us) waiting.
fn say_ready() -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(b"ready\n")?;
    out.flush()?;
    drop(out);
    let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null")?;
    nix::unistd::dup2_stdin(&null)?;
    nix::unistd::dup2_stdout(&null)?;
    Ok(())
}

/// Closes every fd above stderr that the shim did not open: the daemon
/// starts it with close-on-exec fds only, but whatever started the daemon
/// may have leaked some (systemd's listen fds, a test harness's pipes),
/// and the job would inherit them and keep them open.
#[allow(unsafe_code)]
fn close_inherited_fds() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return };
    let fds: Vec<RawFd> =
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).filter(|&fd: &RawFd| fd > 2).collect();
    for fd in fds {
        // SAFETY: nothing in this process owns these fds: no file, socket
        // or runtime is open yet (the directory's own fd is closed by now,
        // and closing it again fails with EBADF, which is harmless).
        unsafe { libc::close(fd) };
    }
}
