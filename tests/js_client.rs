//! Runs tests/js (the npm `socket.io-client` against the real daemon, with
//! `node --test`) so that `cargo test` covers the Socket.IO endpoints with
//! the client dashboards use. Needs `npm ci --prefix tests/js`
//! (`tests/setup.sh` and `.ci/run` do it); skipped, saying so, only where
//! `node` itself is missing.
//!
//! The suite is bounded twice: node ends any one test after `TEST_TIMEOUT`
//! and reports it by name, and this harness kills node's whole process
//! group after `SUITE_DEADLINE` (a wedged file process, a browser that
//! will not close) and fails with what node had printed by then. A hung
//! suite must be a red test with a report, never a CI run that never ends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// About seven times the suite's usual 40 s on this 2-core machine.
const SUITE_DEADLINE: Duration = Duration::from_secs(300);
/// Any one test; the longest takes a few seconds.
const TEST_TIMEOUT_MS: u64 = 90_000;

#[test]
fn socket_io_client_suite() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    let help = match Command::new("node").arg("--help").output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        _ => {
            eprintln!("SKIPPED socket_io_client_suite: `node` is not installed (apt-get install nodejs npm)");
            return;
        }
    };
    assert!(
        dir.join("node_modules/socket.io-client/package.json").exists(),
        "the Socket.IO client suite needs: npm ci --prefix tests/js"
    );
    let mut args = vec!["--test".to_string(), "--test-reporter=spec".to_string()];
    // Both arrived in node 20.x; older nodes run without them, bounded by
    // the deadline alone.
    if help.contains("--test-timeout") {
        args.push(format!("--test-timeout={TEST_TIMEOUT_MS}"));
    }
    if help.contains("--test-force-exit") {
        args.push("--test-force-exit".into());
    }
    let mut child = Command::new("node")
        .args(&args)
        .env("RUNTAP_BIN", env!("CARGO_BIN_EXE_runtap"))
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let report = Arc::new(Mutex::new(Vec::new()));
    let (done, pipes_closed) = std::sync::mpsc::channel();
    let pipes =
        [Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>, Box::new(child.stderr.take().unwrap())]
            .into_iter()
            .map(|mut pipe| {
                let (report, done) = (report.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 8192];
                    while let Ok(n @ 1..) = pipe.read(&mut buf) {
                        report.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    let _ = done.send(());
                });
            })
            .count();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > SUITE_DEADLINE {
            break None;
        }
        // Nothing to await on a child's exit next to a deadline in std.
        std::thread::sleep(Duration::from_millis(100));
    };
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    // Daemons, browsers and jobs the suite left behind go with it.
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
    // A process outside the group could still hold a pipe open: the
    // report is what arrived, not a wait on it.
    for _ in 0..pipes {
        let _ = pipes_closed.recv_timeout(Duration::from_secs(5));
    }
    let report = String::from_utf8_lossy(&report.lock().unwrap()).into_owned();
    match status {
        None => panic!("node --test did not finish within {SUITE_DEADLINE:?}; killed. What it printed:\n{report}"),
        Some(s) => assert!(s.success(), "node --test failed ({s}):\n{report}"),
    }
    println!("{report}");
}
