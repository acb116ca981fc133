//! Test harness: the real `runtap` binary on temp paths, real clients.
//!
//! - this file: one `runtap` process (`Instance`) and its readiness line.
//! - `daemon`, `gateway`: the two programs; `process`: child processes and waits.
//! - `ws`, `requests`: real clients; `tls`: certificates made here, TLS clients. `copies`, `agent`, `proxy`: the gateway tests' tools.
//! - `nats`, `replicas`: a real `nats-server` (one, or a three-node cluster) and gateway replicas on it, for the NATS engine's tests.
//! - `observe`, `damage`: the probe tests' clients and damaged journals (and a small tmpfs).
//! - `faulty_link`, `hostile`, `soak_check`: the soak's proxy, bad clients and invariant checker.
//! - `shims`: each run's `runtap shim` (runs outlive the daemon), and the cleanup of what a test leaves running.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)]
// The harness is a private module of each test crate; `pub` is how its users see it.
#![allow(unreachable_pub)]

pub mod agent;
pub mod copies;
pub mod daemon;
pub mod damage;
pub mod faulty_link;
pub mod gateway;
pub mod hostile;
pub mod nats;
pub mod observe;
pub mod process;
pub mod proxy;
pub mod replicas;
pub mod requests;
pub mod shims;
pub mod soak_check;
pub mod tls;
pub mod ws;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// Each test crate uses some of these; the rest would warn there.
#[allow(unused_imports)]
pub use agent::*;
#[allow(unused_imports)]
pub use copies::*;
#[allow(unused_imports)]
pub use daemon::*;
#[allow(unused_imports)]
pub use damage::*;
#[allow(unused_imports)]
pub use gateway::*;
#[allow(unused_imports)]
pub use nats::*;
#[allow(unused_imports)]
pub use observe::*;
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use proxy::*;
#[allow(unused_imports)]
pub use replicas::*;
#[allow(unused_imports)]
pub use requests::*;
#[allow(unused_imports)]
pub use shims::*;
#[allow(unused_imports)]
pub use tls::*;
#[allow(unused_imports)]
pub use ws::*;

/// Upper bound for any single wait in tests.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_runtap")
}

/// What the daemon and gateway harnesses share: a `runtap` process on a
/// temp state dir, with its config file and its log.
pub struct Instance {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub extra_config: String,
    /// The program to start instead of the `runtap` cargo built (another
    /// build of it: the upgrade case); `None` is [`bin()`].
    pub binary: Option<PathBuf>,
    /// `daemon` or `gateway`: the subcommand, the log's name, the ready line.
    kind: &'static str,
    /// When it was created, in clock ticks since boot: a process started
    /// before that is none of its own (pids are reused).
    created: u64,
}

impl Instance {
    fn new(kind: &'static str, config: &str) -> Instance {
        Instance {
            dir: tempfile::tempdir().unwrap(),
            child: None,
            extra_config: config.to_owned(),
            binary: None,
            kind,
            created: shims::ticks_since_boot(),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.kind))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The viewer token it generated (or was configured with).
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.state_dir().join("token")).unwrap().trim().to_owned()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// (Re)starts the process on the same state dir, with `args` after the
    /// harness's own; waits until it is ready and returns its ready line.
    fn launch(&mut self, args: impl FnOnce(&mut Command)) -> String {
        std::fs::write(self.config_path(), &self.extra_config).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).unwrap();
        let marker = format!("runtap {} ready", self.kind);
        let ready_before = self.log().matches(&marker).count();
        let mut cmd = Command::new(self.binary.as_deref().unwrap_or_else(|| Path::new(bin())));
        cmd.args([self.kind, "--config"]).arg(self.config_path()).arg("--state-dir").arg(self.state_dir());
        args(&mut cmd);
        // The marker the shims and jobs inherit, so that cleanup finds them.
        cmd.env(shims::INSTANCE_ENV, self.dir.path());
        cmd.env("RUST_LOG", "runtap=debug").stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        self.child = Some(cmd.spawn().unwrap());
        let log_path = self.log_path();
        wait_ready(self.child.as_mut().unwrap(), &log_path, &marker, ready_before)
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        signal(child.id() as i32, nix::sys::signal::Signal::SIGTERM);
        wait_child(&mut child, WAIT).unwrap_or_else(|| panic!("{} did not stop:\n{}", self.kind, self.log()))
    }

    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Instance {
    /// SIGTERM first, for a clean stop; SIGKILL if it does not stop in
    /// time. A daemon's runs outlive it (`runs.on_shutdown = "detach"`, and
    /// always after a kill -9), so then its shims and their jobs are ended
    /// too ([`shims::end_leftovers`]): no test leaves processes behind.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id() as i32, nix::sys::signal::Signal::SIGTERM);
            if wait_child(&mut child, Duration::from_secs(15)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        shims::end_leftovers(&self.state_dir(), self.dir.path(), self.created);
    }
}

/// Waits (bounded) until `log` holds more than `before` lines with `marker`,
/// the process's own readiness line, and returns the newest one.
pub fn wait_ready(child: &mut Child, log: &Path, marker: &str, before: usize) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.matches(marker).count() > before {
            return text.lines().rfind(|l| l.contains(marker)).unwrap().to_owned();
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{marker:?} never came: exited with {status}:\n{text}");
        }
        assert!(Instant::now() < deadline, "{marker:?} not in time:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
