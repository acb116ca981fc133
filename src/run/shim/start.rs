//! The daemon's side of starting a run's shim: re-execute our own binary,
//! hand it the launch order, wait for `ready`.

use std::io;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};

use super::wire::Launch;

/// How long a shim has to take the journal and bind its socket.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// What systemd tells its main process, which a shim must not inherit:
/// the notify socket is the daemon's alone (`NotifyAccess=main`), and the
/// listen fds and watchdog are not the shim's.
const SYSTEMD_VARS: &[&str] =
    &["NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// Starts a shim and waits until it is ready for a daemon to attach. The
/// returned child is the shim (reap it); its pid is the record's.
pub(crate) async fn start(launch: &Launch) -> io::Result<Child> {
    // `/proc/self/exe`, not the path we were started from: after a package
    // upgrade replaced that file, the daemon still starts shims of its own
    // build, which speak its protocol.
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0("runtap").args(["shim", "--run-id", &launch.run_id]);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(false);
    for var in SYSTEMD_VARS {
        cmd.env_remove(var);
    }
    let mut child = cmd.spawn()?;
    let ready = async {
        let mut stdin = child.stdin.take().ok_or_else(|| io::Error::other("shim stdin missing"))?;
        stdin.write_all(&serde_json::to_vec(launch).map_err(io::Error::other)?).await?;
        drop(stdin);
        let stdout = child.stdout.take().ok_or_else(|| io::Error::other("shim stdout missing"))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).await?;
        match line.trim_end() {
            "ready" => Ok(()),
            _ => Err(io::Error::other("the shim exited before it was ready (its error is in the log)")),
        }
    };
    match tokio::time::timeout(READY_TIMEOUT, ready).await {
        Ok(Ok(())) => Ok(child),
        Ok(Err(error)) => {
            let _ = child.kill().await;
            Err(error)
        }
        Err(_) => {
            let _ = child.kill().await;
            Err(io::Error::new(io::ErrorKind::TimedOut, format!("the shim was not ready within {READY_TIMEOUT:?}")))
        }
    }
}
