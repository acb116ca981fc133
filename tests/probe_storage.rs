//! Issue 18, the storage half: a degraded journal reported truthfully,
//! one daemon per state dir, a missing meta.json, and damage inside a
//! journal served by one rule. Every test is named `issue18_<item>_<what>`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};

use common::*;
use serde_json::json;

// ---------------------------------------------------------------------------
// 3. A degraded journal is reported truthfully, after the run and restarts.

/// A tmpfs mounted on a directory, lazily unmounted when dropped.
async fn assert_reported_degraded(d: &Daemon, id: &str, when: &str) {
    let status = unix_call(&d.socket(), json!({"type": "status", "runId": id})).await;
    assert_eq!(
        status["run"]["journal"], "degraded",
        "{when}: the socket's status calls a degraded journal healthy: {status}"
    );
    let (_, run) = http_run(d, id).await;
    assert_eq!(run["journal"], "degraded", "{when}: GET /runs/{id} calls a degraded journal healthy: {run}");
    let health = healthz(d).await;
    assert!(health["degradedRuns"].as_u64() >= Some(1), "{when}: /healthz counts no degraded run: {health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue18_3_degraded_journal_is_reported_after_the_run_and_after_restart() {
    if !is_root() {
        println!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let mut d = Daemon::prepare("");
    let disk = Tmpfs::mount(&d.state_dir(), "2m");
    d.spawn();
    let mut live = UnixConn::open(&d.socket()).await;
    live.call(&json!({"type": "subscribe", "runId": "full", "since": 0, "follow": true})).await;
    // 4 MB of output into a 2 MB state dir.
    let out = d.run(&["run", "--detach", "--id", "full", "--", "sh", "-c", "head -c 4000000 /dev/zero | tr '\\0' x"]);
    assert!(out.status.success(), "{out:?}");
    let mut seen = Seen::default();
    live.collect(&mut seen, WAIT).await;
    assert!(seen.ended, "the run did not end: {seen:?}");
    let history = unix_seen(&d.socket(), "full", 0, false, WAIT).await;
    assert!(!history.gaps.is_empty(), "the disk was meant to fill up; history: {:?}", history.gaps);
    println!("history after the disk filled: gaps {:?}", history.gaps);
    assert_reported_degraded(&d, "full", "after the run ended").await;
    disk.resize("64m");
    d.stop();
    d.spawn();
    assert_reported_degraded(&d, "full", "after a restart").await;
    d.stop();
    d.spawn();
    assert_reported_degraded(&d, "full", "after a second restart").await;
    assert_no_seq_reused(&d, "full", &seen).await;
    d.stop();
}

/// After a restart, the run must not reuse seqs live subscribers already saw.
async fn assert_no_seq_reused(d: &Daemon, id: &str, live: &Seen) {
    let live_last = live.seqs.last().copied().unwrap_or(0);
    let (_, run) = http_run(d, id).await;
    assert!(
        run["lastSeq"].as_u64() >= Some(live_last),
        "after a restart run {id} has lastSeq {} (status {}), below the {live_last} live subscribers saw: its seqs get reused",
        run["lastSeq"],
        run["status"]
    );
}

/// The same rule when the journal degrades because an fsync could not get
/// a file descriptor: if history reports a gap, status and /healthz say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue18_3_fd_degraded_journal_is_reported_after_the_run_and_after_restart() {
    let mut d = daemon_with_1024_fds();
    let f = fd_flood(&d, "fd3").await;
    if f.history.gaps.is_empty() && f.history.errors.is_empty() {
        println!("the journal did not degrade (issue18_2 holds): nothing to report");
        return;
    }
    assert_reported_degraded(&d, "fd3", "after the run ended (history reports a gap)").await;
    d.stop();
    d.spawn();
    assert_reported_degraded(&d, "fd3", "after a restart").await;
    assert_no_seq_reused(&d, "fd3", &f.live).await;
}

// ---------------------------------------------------------------------------
// 4. Two daemons must not share a state dir.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue18_4_second_daemon_on_the_same_state_dir_refuses_to_start() {
    let d = Daemon::start();
    let out = d.run(&["run", "--detach", "--id", "shared", "--", "sleep", "1000"]);
    assert!(out.status.success(), "{out:?}");
    d.wait_running("shared").await;
    let b_log = d.dir.path().join("second.log");
    let mut b = Command::new(bin())
        .args(["daemon", "--config"])
        .arg(d.config_path())
        .arg("--state-dir")
        .arg(d.state_dir())
        .arg("--socket")
        .arg(d.dir.path().join("second.sock"))
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "runtap=debug")
        .env_remove("RUNTAP_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&b_log).unwrap())
        .spawn()
        .unwrap();
    let exited = wait_child(&mut b, WAIT);
    if exited.is_none() {
        signal(b.id() as i32, nix::sys::signal::Signal::SIGTERM);
        if wait_child(&mut b, WAIT).is_none() {
            let _ = b.kill();
            let _ = b.wait();
        }
    }
    let b_text = std::fs::read_to_string(&b_log).unwrap_or_default();
    let journal = std::fs::read_to_string(events_path(&d, "shared")).unwrap();
    let status = unix_call(&d.socket(), json!({"type": "status", "runId": "shared"})).await;
    let _ = d.run(&["cancel", "shared"]);

    let exited =
        exited.unwrap_or_else(|| panic!("a second daemon ran on a state dir in use by pid {}:\n{b_text}", d.pid()));
    assert!(!exited.success(), "the second daemon must fail: {exited}\n{b_text}");
    assert!(b_text.contains(&d.pid().to_string()), "its error must name the other daemon's pid {}:\n{b_text}", d.pid());
    let state = d.state_dir().display().to_string();
    assert!(
        b_text.contains(&state) || b_text.contains("lock"),
        "its error must name the state dir or its lock:\n{b_text}"
    );
    assert!(!journal.contains(r#""data":"lost""#), "the second daemon closed the first one's live run:\n{journal}");
    assert_eq!(status["run"]["status"], "running", "the first daemon's run must still be running: {status}");
}

// ---------------------------------------------------------------------------
// 5. A missing meta.json must not delete a finished run's journal.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue18_5_missing_meta_keeps_the_finished_journal() {
    let mut d = Daemon::start();
    let last = finished_run(&d, "nometa", 4).await;
    d.stop();
    std::fs::remove_file(run_dir(&d, "nometa").join("meta.json")).unwrap();
    let log_before = d.log().len();
    d.spawn();
    assert!(
        events_path(&d, "nometa").exists(),
        "the daemon deleted a finished run's journal because meta.json was missing"
    );
    let (socket_ids, http_ids) = listed(&d).await;
    assert!(socket_ids.iter().any(|r| r == "nometa"), "the run vanished from the socket's list: {socket_ids:?}");
    assert!(http_ids.iter().any(|r| r == "nometa"), "the run vanished from GET /runs: {http_ids:?}");
    let history = unix_seen(&d.socket(), "nometa", 0, false, WAIT).await;
    assert_eq!(history.seqs, (1..=last).collect::<Vec<_>>(), "its history must still be served: {history:?}");
    assert_eq!(history.last_status(), Some("succeeded"), "with its final status");
    let log = d.log()[log_before..].to_owned();
    assert!(
        log.lines().any(|l| l.contains("nometa") && (l.contains("WARN") || l.contains("ERROR"))),
        "the daemon said nothing about the run's missing meta.json:\n{log}"
    );
}

// ---------------------------------------------------------------------------
// 6. Damage inside a journal: one rule (serve the intact events, report each
// damaged range once as journal-gap, mark the run degraded, keep it visible).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue18_6a_torn_line_in_the_middle_is_a_gap_not_a_frame() {
    let (d, bad_last, good_last, damaged) = with_middle_line_damaged(|lines, i| {
        lines[i] = tear(&lines[i]);
    })
    .await;
    assert_damage_handled(&d, bad_last, good_last, &[damaged]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue18_6b_deleted_line_is_reported_as_a_gap() {
    let (d, bad_last, good_last, damaged) = with_middle_line_damaged(|lines, i| {
        lines.remove(i);
    })
    .await;
    assert_damage_handled(&d, bad_last, good_last, &[damaged]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue18_6c_non_json_line_does_not_hide_the_intact_events() {
    let (d, bad_last, good_last, damaged) = with_middle_line_damaged(|lines, i| {
        lines[i] = b"this line is not JSON".to_vec();
    })
    .await;
    assert_damage_handled(&d, bad_last, good_last, &[damaged]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue18_6c_non_utf8_line_does_not_hide_the_intact_events() {
    let (d, bad_last, good_last, damaged) = with_middle_line_damaged(|lines, i| {
        let seq = seq_of(&lines[i]);
        let mut line = format!(r#"{{"runId":"bad","seq":{seq},"type":"stdout","data":""#).into_bytes();
        line.extend_from_slice(b"\xff\xfe\xfd");
        line.extend_from_slice(br#"","timestamp":"2026-01-01T00:00:00Z"}"#);
        lines[i] = line;
    })
    .await;
    assert_damage_handled(&d, bad_last, good_last, &[damaged]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue18_6d_bad_last_line_keeps_the_run_visible() {
    let (d, bad_last, good_last) = with_damaged_run(|dir| {
        let path = dir.join("events.jsonl");
        let mut lines = read_lines(&path);
        let last = lines.len() - 1;
        lines[last] = tear(&lines[last]);
        write_lines(&path, &lines);
    })
    .await;
    assert_run_degraded(&d, "bad").await;
    // Its final status is the damaged line; what the daemon closes it with
    // after that (a new seq) is its own business: only 1..=last is checked.
    assert_damage_handled(&d, bad_last, good_last, &[bad_last]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue18_6d_bad_meta_keeps_the_run_visible() {
    let (d, bad_last, good_last) =
        with_damaged_run(|dir| std::fs::write(dir.join("meta.json"), "{not json").unwrap()).await;
    assert_run_degraded(&d, "bad").await;
    assert_damage_handled(&d, bad_last, good_last, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue18_6d_missing_events_file_keeps_the_run_visible() {
    let (d, _, good_last) = with_damaged_run(|dir| std::fs::remove_file(dir.join("events.jsonl")).unwrap()).await;
    assert_run_degraded(&d, "bad").await;
    let t = d.token();
    let ws = ws_seen(&d.ws_url(&format!("/runs?runId=bad&token={t}")), &[], |_| false, WAIT).await;
    let sock = unix_seen(&d.socket(), "bad", 0, true, WAIT).await;
    for (surface, s) in [("websocket", &ws), ("unix socket", &sock)] {
        assert!(!s.timed_out, "{surface}: a subscribe to a run whose events file is gone waits forever: {s:?}");
        assert!(
            s.invalid.is_empty() && s.seqs.is_empty(),
            "{surface}: sent events of a run with no events file: {s:?}"
        );
        assert!(!s.gaps.is_empty(), "{surface}: the lost events were not reported as a journal-gap: {s:?}");
        assert!(s.ended, "{surface}: the stream did not end normally: {s:?}");
    }
    let good = ws_seen(&d.ws_url(&format!("/runs?runId=good&token={t}")), &[], |_| false, WAIT).await;
    assert_served("websocket, untouched run", &good, good_last, &[]);
}
