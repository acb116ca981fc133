//! Issue 2 acceptance: supervised runs, the journal, the socket and the CLI,
//! all through the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use runtap::event::{EventType, RunStatus};
use runtap::protocol::unix::{LaunchRequest, Request, Response};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn stdout_and_stderr_are_kept_apart() {
    let d = Daemon::start();
    let out = d.run(&["run", "--", "sh", "-c", "echo out; echo err >&2; echo out2"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "out\nout2\n");
    assert_eq!(text(&out.stderr), "err\n");
}

/// Launches `true` in `cwd` over the socket and returns the final status reason.
fn tokio_free_launch_in(d: &Daemon, cwd: &std::path::Path) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let req = serde_json::json!({"type": "launch", "runId": "no-cwd", "command": ["true"], "cwd": cwd});
    writeln!(s, "{req}").unwrap();
    writeln!(s, r#"{{"type":"subscribe","runId":"no-cwd"}}"#).unwrap();
    for line in BufReader::new(s).lines() {
        let line = line.unwrap();
        if line.contains(r#""data":"failed""#) {
            return line;
        }
    }
    panic!("no final status");
}

#[test]
fn exit_codes_pass_through_including_signals() {
    let d = Daemon::start();
    assert_eq!(d.run(&["run", "--", "sh", "-c", "exit 3"]).status.code(), Some(3));
    assert_eq!(d.run(&["run", "--", "true"]).status.code(), Some(0));
    assert_eq!(d.run(&["run", "--", "sh", "-c", "kill -9 $$"]).status.code(), Some(128 + 9));
    assert_eq!(d.run(&["run", "--", "sh", "-c", "kill -TERM $$"]).status.code(), Some(128 + 15));
    let missing = d.run(&["run", "--", "/nonexistent/program"]);
    assert_eq!(missing.status.code(), Some(127), "{missing:?}");
    assert!(text(&missing.stderr).contains("cannot start"), "says why: {missing:?}");
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().to_owned();
    drop(dir);
    // A launch whose working directory vanished says so (over the socket).
    let resp = tokio_free_launch_in(&d, &gone);
    assert!(resp.contains("working directory"), "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_sees_run_id_cwd_and_env() {
    let d = Daemon::start();
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = d.cli();
    cmd.current_dir(cwd.path()).env("RUNTAP_TEST_VAR", "hello").args([
        "run",
        "--id",
        "env-check",
        "--",
        "sh",
        "-c",
        "echo $RUNTAP_RUN_ID; pwd; echo $RUNTAP_TEST_VAR",
    ]);
    let out = output_with_timeout(cmd, WAIT);
    let canon = cwd.path().canonicalize().unwrap();
    assert_eq!(text(&out.stdout), format!("env-check\n{}\nhello\n", canon.display()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pty_child_sees_a_terminal_of_the_default_size() {
    let d = Daemon::start();
    let out = d.run(&[
        "run",
        "--pty",
        "--id",
        "pty1",
        "--",
        "sh",
        "-c",
        "test -t 0 && test -t 1 && test -t 2 && echo is-a-tty; stty size; echo to-stderr >&2",
    ]);
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout).replace("\r\n", "\n");
    assert_eq!(stdout, "is-a-tty\n100 160\nto-stderr\n", "PTY output is merged into stdout");
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    let events = d.events("pty1").await;
    assert!(events.iter().all(|e| e.kind != EventType::Stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_round_trip_exactly_through_run_and_logs() {
    let d = Daemon::start();
    let file = d.dir.path().join("random.bin");
    let mut bytes = vec![0u8; 3 * 1024 * 1024];
    getrandom::fill(&mut bytes).unwrap();
    std::fs::write(&file, &bytes).unwrap();
    let out = d.run(&["run", "--id", "rnd", "--", "cat", file.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(out.stdout == bytes, "run output differs ({} vs {} bytes)", out.stdout.len(), bytes.len());
    let logs = d.run(&["logs", "rnd"]);
    assert!(logs.status.success());
    assert!(logs.stdout == bytes, "logs output differs ({} vs {} bytes)", logs.stdout.len(), bytes.len());
    // The events themselves are sequential and base64 only where needed.
    let events = d.events("rnd").await;
    assert!(events.iter().enumerate().all(|(i, e)| e.seq == i as u64 + 1));
    assert!(events.iter().any(|e| e.encoding.is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multibyte_text_stays_text() {
    let d = Daemon::start();
    // 100 000 'é' without a newline: forced cuts must fall between characters.
    let out = d.run(&[
        "run",
        "--id",
        "utf8",
        "--",
        "sh",
        "-c",
        "i=0; while [ $i -lt 5 ]; do printf 'ééééééééééééééééééééé%.0s' $(seq 1 1000); i=$((i+1)); done",
    ]);
    assert!(out.status.success());
    let events = d.events("utf8").await;
    let stdout: Vec<_> = events.iter().filter(|e| e.kind == EventType::Stdout).collect();
    assert!(stdout.iter().all(|e| e.encoding.is_none()), "valid UTF-8 must never need base64");
    let joined: String = stdout.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(joined, "é".repeat(21 * 1000 * 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_the_whole_group_promptly() {
    let d = Daemon::start();
    let out = d.run(&["run", "--detach", "--id", "grp", "--", "sh", "-c", "sleep 1000 & sleep 1000"]);
    assert_eq!(text(&out.stdout).trim(), "grp");
    let pgid = d.wait_running("grp").await;
    assert!(group_alive(pgid));
    let started = Instant::now();
    let out = d.run(&["cancel", "grp", "--reason", "test says stop"]);
    assert!(out.status.success(), "{out:?}");
    let ev = d.wait_final("grp").await;
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_eq!(ev.status(), Some(RunStatus::Cancelled));
    assert_eq!(ev.reason.as_deref(), Some("test says stop"));
    assert!(!group_alive(pgid), "processes of the run's group survived cancel");
    // Twice is harmless.
    assert!(d.run(&["cancel", "grp"]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn term_ignoring_job_is_killed_after_grace() {
    let d = Daemon::start_with("[runs]\ngrace_period = \"300ms\"\n");
    d.run(&["run", "--detach", "--id", "stubborn", "--", "sh", "-c", "trap '' TERM; sleep 1000"]);
    let pgid = d.wait_running("stubborn").await;
    let started = Instant::now();
    d.run(&["cancel", "stubborn"]);
    let ev = d.wait_final("stubborn").await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "killed before the grace period: {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(ev.status(), Some(RunStatus::Cancelled));
    assert_eq!(ev.signal, Some(9));
    assert!(ev.reason.as_deref().unwrap_or_default().contains("SIGKILL"), "{:?}", ev.reason);
    assert!(!group_alive(pgid));
}

#[test]
fn background_child_holding_the_pipe_does_not_hang_completion() {
    let d = Daemon::start_with("[runs]\ndrain_timeout = \"300ms\"\n");
    let started = Instant::now();
    let out = d.run(&["run", "--", "sh", "-c", "sleep 30 & echo done"]);
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "done\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_survives_a_restart() {
    let mut d = Daemon::start();
    let out = d.run(&["run", "--id", "keep", "--", "sh", "-c", "echo one; echo two >&2; exit 4"]);
    assert_eq!(out.status.code(), Some(4));
    let before = d.events("keep").await;
    assert!(d.stop().success());
    assert!(!d.socket().exists(), "socket file removed at shutdown");
    d.spawn();
    let after = d.events("keep").await;
    assert_eq!(before, after);
    let logs = d.run(&["logs", "keep"]);
    assert_eq!(text(&logs.stdout), "one\n");
    assert_eq!(text(&logs.stderr), "two\n");
    let one = after.iter().find(|e| e.kind == EventType::Stdout).unwrap().seq;
    let since = d.run(&["logs", "--since", &one.to_string(), "keep"]);
    assert_eq!(text(&since.stdout), "", "--since excludes the given seq");
    let since = d.run(&["logs", "--since", &(one - 1).to_string(), "keep"]);
    assert_eq!(text(&since.stdout), "one\n");
    let ps = d.run(&["ps", "--json"]);
    let runs: serde_json::Value = serde_json::from_slice(&ps.stdout).unwrap();
    assert_eq!(runs[0]["runId"], "keep");
    assert_eq!(runs[0]["status"], "failed");
    assert_eq!(runs[0]["exitCode"], 4);
}

/// A run outlives a kill -9 of its daemon (tests/outlive.rs); it is lost
/// when its supervisor dies too, as in a host crash: the restarted daemon
/// closes it `lost`, its history whole, and ends the job it left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_is_lost_when_daemon_and_shim_are_killed_mid_run() {
    let mut d = Daemon::start();
    d.run(&["run", "--detach", "--id", "doomed", "--", "sh", "-c", "echo started; sleep 1000"]);
    let pgid = d.wait_running("doomed").await;
    let shim = shim_pid(&d, "doomed");
    d.kill9();
    signal(shim as i32, nix::sys::signal::Signal::SIGKILL);
    wait_dead(shim, "the killed shim");
    d.spawn();
    let ev = d.wait_final("doomed").await;
    assert_eq!(ev.status(), Some(RunStatus::Lost));
    let events = d.events("doomed").await;
    assert_eq!(events.last().map(|e| e.seq), Some(events.len() as u64));
    assert!(events.iter().any(|e| e.data == "started\n"), "{events:?}");
    let ps = d.run(&["ps"]);
    assert!(text(&ps.stdout).contains("lost"), "{}", text(&ps.stdout));
    wait_for(|| format!("the lost run's group {pgid} to be ended: {:?}", group_members(pgid)), || !group_alive(pgid));
}

#[test]
fn invalid_and_path_like_run_ids_are_refused() {
    let d = Daemon::start();
    for bad in ["../escape", "a/b", ".hidden", "-dash", "sp ace", &"x".repeat(129)] {
        let out = d.run(&["run", &format!("--id={bad}"), "--", "true"]);
        assert_eq!(out.status.code(), Some(125), "{bad}: {out:?}");
        assert!(text(&out.stderr).contains("invalid run ID"), "{bad}: {}", text(&out.stderr));
    }
    assert!(!d.dir.path().join("escape").exists());
    assert!(!d.state_dir().join("escape").exists());
    let entries: Vec<_> = std::fs::read_dir(d.state_dir().join("runs")).unwrap().collect();
    assert!(entries.is_empty(), "no journal made for refused IDs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_active_id_is_refused() {
    let d = Daemon::start();
    d.run(&["run", "--detach", "--id", "dup", "--", "sleep", "1000"]);
    d.wait_running("dup").await;
    let out = d.run(&["run", "--id", "dup", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("already active"), "{}", text(&out.stderr));
    d.run(&["cancel", "dup"]);
    d.wait_final("dup").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_cap_refuses_with_a_clear_error() {
    let d = Daemon::start_with("[runs]\nmax_concurrent = 1\n");
    d.run(&["run", "--detach", "--id", "first", "--", "sleep", "1000"]);
    let out = d.run(&["run", "--id", "second", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("too many active runs"), "{}", text(&out.stderr));
    d.run(&["cancel", "first"]);
    d.wait_final("first").await;
    assert!(d.run(&["run", "--id", "third", "--", "true"]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_socket_requests_get_errors_and_hurt_nobody() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let d = Daemon::start();
    // A run in progress on another connection must not notice.
    d.run(&[
        "run",
        "--detach",
        "--id",
        "bystander",
        "--",
        "sh",
        "-c",
        "for i in 1 2 3 4 5; do echo $i; sleep 0.1; done",
    ]);
    let mut s = tokio::net::UnixStream::connect(d.socket()).await.unwrap();
    let (r, mut w) = s.split();
    let mut lines = BufReader::new(r).lines();
    for (bad, code) in [
        ("not json", "bad-request"),
        ("{\"type\":\"launch\"}", "bad-request"),
        ("{\"type\":\"explode\"}", "bad-request"),
        ("[1,2,3]", "bad-request"),
        ("{\"type\":\"subscribe\",\"runId\":\"../x\"}", "bad-request"),
        ("{\"type\":\"status\",\"runId\":\"\"}", "missing-run-id"),
        ("{\"type\":\"status\",\"runId\":\"nope\"}", "not-found"),
        ("{\"type\":\"cancel\",\"runId\":\"nope\"}", "not-found"),
        ("{\"type\":\"launch\",\"command\":[]}", "bad-request"),
    ] {
        w.write_all(format!("{bad}\n").as_bytes()).await.unwrap();
        let line = tokio::time::timeout(WAIT, lines.next_line()).await.unwrap().unwrap().unwrap();
        let resp: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(resp["type"], "error", "{bad} -> {line}");
        assert_eq!(resp["code"], code, "{bad} -> {line}");
    }
    // Invalid UTF-8 and an oversized line.
    w.write_all(b"\xff\xfe\n").await.unwrap();
    let line = tokio::time::timeout(WAIT, lines.next_line()).await.unwrap().unwrap().unwrap();
    assert!(line.contains("bad-request"), "{line}");
    let mut s2 = tokio::net::UnixStream::connect(d.socket()).await.unwrap();
    let huge = vec![b'x'; 2 * 1024 * 1024];
    let _ = s2.write_all(&huge).await;
    let mut buf = String::new();
    let _ = tokio::time::timeout(WAIT, BufReader::new(&mut s2).read_line(&mut buf)).await.unwrap();
    assert!(buf.contains("message-too-large"), "{buf}");
    // The daemon still serves, and the bystander finished intact.
    let ev = d.wait_final("bystander").await;
    assert_eq!(ev.status(), Some(RunStatus::Succeeded));
    let out = d.run(&["logs", "bystander"]);
    assert_eq!(text(&out.stdout), "1\n2\n3\n4\n5\n");
    let resp = d.request(Request::List).await;
    assert!(matches!(resp, Response::Runs { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_run_cancel_and_launch_over_socket() {
    let d = Daemon::start();
    let resp = d
        .request(Request::Launch(LaunchRequest {
            run_id: Some("sock1".into()),
            command: vec!["sh".into(), "-c".into(), "echo via-socket".into()],
            ..Default::default()
        }))
        .await;
    assert_eq!(resp, Response::Launched { run_id: "sock1".into() });
    let ev = d.wait_final("sock1").await;
    assert_eq!(ev.status(), Some(RunStatus::Succeeded));
    assert_eq!(ev.exit_code, Some(0));
    // Seen ended by a subscriber, so ended in `status`, its final event counted.
    let Response::Run { run } = d.request(Request::Status { run_id: "sock1".into() }).await else { panic!() };
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(run.last_seq, ev.seq);
    let resp = d.request(Request::Cancel { run_id: "sock1".into(), reason: None }).await;
    assert!(matches!(resp, Response::Error { ref code, .. } if code == "finished"), "{resp:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_before_the_run_exists_waits_for_it() {
    let d = Daemon::start();
    let waiter = {
        let mut c = d.client().await;
        c.send(&Request::Subscribe { run_id: "later".into(), since: 0, follow: true }).await.unwrap();
        tokio::spawn(async move {
            let mut seqs = Vec::new();
            loop {
                match c.next().await.unwrap() {
                    runtap::client::Line::Event(ev) => seqs.push(ev.seq),
                    runtap::client::Line::Control(Response::End { .. }) => return seqs,
                    _ => {}
                }
            }
        })
    };
    d.run(&["run", "--id", "later", "--", "sh", "-c", "echo a; echo b"]);
    let seqs = tokio::time::timeout(WAIT, waiter).await.unwrap().unwrap();
    let n = d.events("later").await.len() as u64;
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
}

#[test]
fn five_hundred_short_runs_leave_no_zombie_and_no_fd() {
    let d = Daemon::start();
    // Warm up lazily-opened fds (runtime threads, signal pipes).
    for _ in 0..5 {
        assert!(d.run(&["run", "--", "true"]).status.success());
    }
    let fds_before = fd_count(d.pid());
    for i in 0..500 {
        let out = d.run(&["run", "--", "true"]);
        assert!(out.status.success(), "run {i}: {out:?}");
    }
    assert!(zombies_of(d.pid()).is_empty(), "zombies: {:?}", zombies_of(d.pid()));
    // The last client's connection may still be closing on the daemon side.
    let deadline = Instant::now() + Duration::from_secs(5);
    while fd_count(d.pid()) > fds_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let fds_after = fd_count(d.pid());
    assert!(fds_after <= fds_before, "fds grew from {fds_before} to {fds_after}");
}

#[test]
fn no_daemon_fd_leaks_into_children() {
    let d = Daemon::start();
    // A PTY run in parallel must not leak its master into a pipe run.
    let script = r#"ls /proc/self/fd | grep -vx -e 0 -e 1 -e 2 -e "$RUNTAP_EVENTS_FD" | wc -l"#;
    let out = d.run(&["run", "--", "sh", "-c", script]);
    // Besides stdin, stdout, stderr and the job's events channel: only the
    // fd `ls` opens for the directory.
    let n: usize = text(&out.stdout).trim().parse().unwrap();
    assert!(n <= 1, "child saw {n} fds beyond its own");
}

#[test]
fn bad_config_names_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[runs]\ngrace_period = \"soon\"\n").unwrap();
    let mut c = std::process::Command::new(bin());
    c.args(["daemon", "--config"]).arg(&cfg).arg("--state-dir").arg(dir.path().join("s"));
    let out = output_with_timeout(c, WAIT);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("grace_period"), "{err}");
    assert!(!dir.path().join("s").exists(), "nothing started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_after_the_job_exited_keeps_its_outcome_and_ends_leftovers() {
    let d = Daemon::start_with("[runs]\ndrain_timeout = \"20s\"\n");
    d.run(&["run", "--detach", "--id", "done-ish", "--", "sh", "-c", "sleep 30 & echo done"]);
    let pid = d.wait_running("done-ish").await;
    // The shell exits at once; its background sleep keeps stdout open.
    let deadline = Instant::now() + WAIT;
    while nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok() {
        assert!(Instant::now() < deadline, "job did not exit");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    d.run(&["cancel", "done-ish"]);
    let ev = d.wait_final("done-ish").await;
    assert!(started.elapsed() < Duration::from_secs(10), "the drain was not cut short");
    assert_eq!((ev.status(), ev.exit_code), (Some(RunStatus::Succeeded), Some(0)));
    assert!(!group_alive(pid), "leftover processes were not ended");
}

#[test]
fn state_dir_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let d = Daemon::start();
    let mode = std::fs::metadata(d.state_dir()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o750);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_per_socket_connection_are_capped() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let d = Daemon::start();
    let mut s = tokio::net::UnixStream::connect(d.socket()).await.unwrap();
    let (r, mut w) = s.split();
    let mut lines = BufReader::new(r).lines();
    for i in 0..65 {
        w.write_all(format!("{{\"type\":\"subscribe\",\"runId\":\"pending-{i}\"}}\n").as_bytes()).await.unwrap();
    }
    // The refusal comes from the connection, the confirmations from each
    // subscription's task: they may arrive in any order.
    let (mut subscribed, mut refused) = (0, 0);
    while subscribed + refused < 65 {
        let line = tokio::time::timeout(WAIT, lines.next_line()).await.unwrap().unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        match v["type"].as_str() {
            Some("subscribed") => subscribed += 1,
            Some("error") => {
                assert_eq!(v["code"], "too-many-subscriptions", "{line}");
                refused += 1;
            }
            _ => panic!("unexpected {line}"),
        }
    }
    assert_eq!((subscribed, refused), (64, 1));
}

/// A run is over when its job has exited and its output has ended, not at
/// the next timer tick: with the fsync interval at 30 s, twenty quick runs
/// take a fraction of a second. (A select branch that stopped on the
/// readers' end once left runs waiting for another branch to fire: about
/// 200 ms each here, and up to the fsync interval.)
#[test]
fn a_run_ends_with_its_job_not_on_a_timer_tick() {
    let d = Daemon::start_with("[journal]\nfsync_interval = \"30s\"\n");
    let started = Instant::now();
    for _ in 0..10 {
        assert!(d.run(&["run", "--", "true"]).status.success());
        assert!(d.run(&["run", "--", "sh", "-c", "echo out; echo err >&2"]).status.success());
    }
    assert!(started.elapsed() < Duration::from_secs(3), "20 runs took {:?}", started.elapsed());
}
