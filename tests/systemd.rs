//! Issue 4 acceptance: systemd notify protocol, signals, reload, shutdown;
//! and the unit's side of issue 15 (runs outlive the daemon).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use runtap::event::RunStatus;

/// A NOTIFY_SOCKET the test reads, as systemd would.
struct Notify {
    sock: UnixDatagram,
}

impl Notify {
    fn bind(d: &mut Daemon) -> Notify {
        let path = d.dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        d.env.push(("NOTIFY_SOCKET".into(), path.to_string_lossy().into_owned()));
        Notify { sock }
    }

    /// Next datagram, within `timeout`.
    fn recv(&self, timeout: Duration) -> Option<String> {
        self.sock.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 4096];
        let n = self.sock.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Reads until a datagram contains `needle`; returns it and what came before.
    fn until(&self, needle: &str) -> (String, Vec<String>) {
        let deadline = Instant::now() + WAIT;
        let mut before = Vec::new();
        while Instant::now() < deadline {
            if let Some(msg) = self.recv(Duration::from_millis(500)) {
                if msg.lines().any(|l| l == needle) {
                    return (msg, before);
                }
                before.push(msg);
            }
        }
        panic!("no {needle} from the daemon; got {before:?}");
    }
}

#[test]
fn notify_ready_watchdog_reload_stopping() {
    let mut d = Daemon::prepare("");
    let n = Notify::bind(&mut d);
    d.env.push(("WATCHDOG_USEC".into(), "400000".into()));
    d.spawn();
    let (ready, _) = n.until("READY=1");
    assert!(ready.contains("STATUS="), "{ready}");
    // Watchdog: pets arrive every ~200 ms (half of 400 ms), never later than the timeout.
    let mut last = Instant::now();
    let mut pets = 0;
    let window = Instant::now();
    while window.elapsed() < Duration::from_millis(1500) {
        if let Some(msg) = n.recv(Duration::from_millis(1000))
            && msg.lines().any(|l| l == "WATCHDOG=1")
        {
            assert!(last.elapsed() < Duration::from_millis(400), "pet came after the watchdog timeout");
            last = Instant::now();
            pets += 1;
        }
    }
    assert!((4..=12).contains(&pets), "{pets} pets in 1.5 s at a 200 ms cadence");
    // SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1.
    signal(d.pid() as i32, Signal::SIGHUP);
    let (reloading, _) = n.until("RELOADING=1");
    assert!(reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")), "{reloading}");
    n.until("READY=1");
    // SIGTERM: STOPPING=1 and a clean exit.
    signal(d.pid() as i32, Signal::SIGTERM);
    n.until("STOPPING=1");
    let mut child = d.child.take().unwrap();
    assert!(wait_child(&mut child, WAIT).unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_active_runs_and_closes_websockets_with_1001() {
    // The `cancel` policy (the default, `detach`, is tests/outlive.rs's).
    let mut d = Daemon::start_with("[runs]\ngrace_period = \"2s\"\non_shutdown = \"cancel\"\n");
    let t = d.token();
    d.run(&["run", "--detach", "--id", "victim", "--", "sh", "-c", "echo working; sleep 1000"]);
    let pgid = d.wait_running("victim").await;
    let mut ws = ws_connect(&d.ws_url(&format!("/runs?runId=not-yet&token={t}")), &[]).await;
    let reader = tokio::spawn(async move { ws_read(&mut ws, |_| false).await });
    let status = d.stop();
    assert!(status.success(), "exit status {status}");
    assert!(!d.socket().exists(), "socket file removed");
    assert_eq!(reader.await.unwrap().close, Some(1001));
    assert!(!group_alive(pgid));
    // The journal is complete: the final status is there after a restart.
    d.spawn();
    let events = d.events("victim").await;
    let last = events.last().unwrap();
    assert_eq!((last.status(), last.reason.as_deref()), (Some(RunStatus::Cancelled), Some("daemon shutdown")));
    assert!(events.iter().any(|e| e.data == "working\n"));
    assert!(events.iter().enumerate().all(|(i, e)| e.seq == i as u64 + 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_wait_policy_lets_runs_finish_then_bounds_the_wait() {
    // `shutdown_policy`, the key's name before `on_shutdown`, is still read.
    let mut d = Daemon::start_with("[runs]\nshutdown_policy = \"wait\"\nshutdown_wait = \"3s\"\n");
    d.run(&["run", "--detach", "--id", "quick", "--", "sh", "-c", "sleep 0.5; echo finished"]);
    d.run(&["run", "--detach", "--id", "slow", "--", "sleep", "1000"]);
    d.wait_running("quick").await;
    d.wait_running("slow").await;
    let started = Instant::now();
    assert!(d.stop().success());
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(3), "did not wait: {took:?}");
    d.spawn();
    let quick = d.events("quick").await;
    assert_eq!(quick.last().unwrap().status(), Some(RunStatus::Succeeded));
    let slow = d.events("slow").await;
    let last = slow.last().unwrap();
    assert_eq!((last.status(), last.reason.as_deref()), (Some(RunStatus::Cancelled), Some("daemon shutdown")));
}

fn token_config(token: &str) -> String {
    format!("[stream]\ntokens = [\"{token}\"]\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_tokens_without_dropping_a_live_subscriber_and_refuses_a_broken_config() {
    let old = "old-token-aaaaaaaaaaaa";
    let new = "new-token-bbbbbbbbbbbb";
    let d = Daemon::start_with(&token_config(old));
    // A live subscriber on a run that keeps producing until told to stop.
    let flag = d.dir.path().join("stop-flag");
    let script =
        format!("i=0; while [ ! -e {} ]; do i=$((i+1)); echo tick $i; sleep 0.05; done; echo bye", flag.display());
    d.run(&["run", "--detach", "--id", "ticker", "--", "sh", "-c", &script]);
    let mut ws = ws_connect(&d.ws_url(&format!("/runs?runId=ticker&token={old}")), &[]).await;
    let first = ws_read(&mut ws, |r| r.events.len() >= 3).await;
    assert_eq!(first.close, None);

    std::fs::write(d.config_path(), token_config(new)).unwrap();
    signal(d.pid() as i32, Signal::SIGHUP);
    let deadline = Instant::now() + WAIT;
    while http(&d, "GET", "/runs", Some(new)).await.0 != 200 {
        assert!(Instant::now() < deadline, "new token never accepted:\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(http(&d, "GET", "/runs", Some(old)).await.0, 401, "old token no longer accepted");

    // A broken config is refused and the new token stays in force.
    std::fs::write(d.config_path(), "[stream]\ntokens = \"not a list\"\n").unwrap();
    signal(d.pid() as i32, Signal::SIGHUP);
    let deadline = Instant::now() + WAIT;
    while !d.log().contains("reload refused") {
        assert!(Instant::now() < deadline, "no refusal logged:\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(http(&d, "GET", "/runs", Some(new)).await.0, 200);

    // The subscriber connected with the old token saw everything, to the end.
    std::fs::write(&flag, "").unwrap();
    let rest = ws_read(&mut ws, |_| false).await;
    assert_eq!(rest.close, Some(1000));
    let mut seqs = first.seqs();
    seqs.extend(rest.seqs());
    let n = seqs.len() as u64;
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
    assert_eq!(rest.events.last().unwrap().status(), Some(RunStatus::Succeeded));
}

/// The directive `key` of systemd/runtap.service (the last one, as systemd reads it).
fn unit_directive(unit: &str, key: &str) -> Option<String> {
    let prefix = format!("{key}=");
    unit.lines().rev().find_map(|l| l.strip_prefix(&prefix)).map(str::to_owned)
}

#[test]
fn the_unit_lets_runs_outlive_the_daemon() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("systemd/runtap.service")).unwrap();
    let get = |key: &str| unit_directive(&unit, key);
    // A stop, a crash or the watchdog signals the daemon alone: the shims and their jobs stay.
    assert_eq!(get("KillMode").as_deref(), Some("process"));
    // The shims' sockets live in /run/runtap/shims: systemd must not delete them at a stop.
    assert_eq!(get("RuntimeDirectory").as_deref(), Some("runtap"));
    assert_eq!(get("RuntimeDirectoryPreserve").as_deref(), Some("yes"));
    // It would remove the IPC objects of jobs that run on across a restart.
    assert_ne!(get("RemoveIPC").as_deref(), Some("yes"));
    for key in ["KillMode", "RuntimeDirectoryPreserve", "RemoveIPC"] {
        assert_eq!(unit.lines().filter(|l| l.starts_with(&format!("{key}="))).count(), 1, "one {key}=");
    }
    // With on_shutdown = "cancel", the daemon on the packaged config needs grace period
    // + drain timeout + 5 s to record every run cancelled before systemd SIGKILLs it.
    let config = runtap::config::Config::from_toml_str(include_str!("../packaging/config.toml"), None).unwrap();
    let timeout = get("TimeoutStopSec").unwrap();
    let timeout = Duration::from_secs(timeout.strip_suffix('s').unwrap().parse().unwrap());
    let needed = config.runs.grace_period + config.runs.drain_timeout + Duration::from_secs(5);
    assert!(timeout > needed, "TimeoutStopSec={timeout:?} does not cover the cancel bound {needed:?}");
}
