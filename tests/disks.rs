//! Issue 17, items 2 and 3: full disks and unreadable run directories, at
//! the daemon and at the gateway. A full disk is a small tmpfs (root only:
//! skipped with a message otherwise, CI runs as root).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

/// Makes a run's events file unreadable as a file: a directory in its place.
fn break_run_dir(dir: &Path) {
    let events = dir.join("events.jsonl");
    std::fs::remove_file(&events).unwrap();
    std::fs::create_dir(&events).unwrap();
}

fn quarantined(root: &Path, id: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(root.join("quarantine")) else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&format!("{id}.")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_run_dir_is_quarantined_and_the_other_runs_are_served() {
    let (d, _, good_last) = with_damaged_run(break_run_dir).await;
    assert_eq!(quarantined(&d.state_dir(), "bad").len(), 1, "moved aside, not deleted:\n{}", d.log());
    assert!(d.log().contains("moved it to quarantine"), "{}", d.log());
    let (ids, _) = listed(&d).await;
    assert!(ids.contains(&"good".to_owned()) && !ids.contains(&"bad".to_owned()), "{ids:?}");
    let good = unix_seen(&d.socket(), "good", 0, false, WAIT).await;
    assert_eq!(good.seqs, (1..=good_last).collect::<Vec<_>>());
    let health = healthz(&d).await;
    assert_eq!(health["quarantinedRuns"], 1, "{health}");
    // The ID is free again.
    let out = d.run(&["run", "--id", "bad", "--", "echo", "again"]);
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_run_dir_at_the_gateway_does_not_hold_up_the_hosts_link() {
    let mut g = Gateway::start();
    let h = g.start_host("h1");
    let out = h.run(&["run", "--id", "first", "--", "sh", "-c", "seq 1 50"]);
    assert!(out.status.success(), "{out:?}");
    let last = host_last_seq(&h, "first").await;
    wait_gateway_seq(&g, "h1", "first", last).await;
    g.stop();
    break_run_dir(g.events_path("h1", "first").parent().unwrap());
    g.spawn();

    // The broken copy is moved aside; the host sends the run again, whole,
    // and a new run flows beside it.
    let out = h.run(&["run", "--id", "second", "--", "echo", "hello"]);
    assert!(out.status.success(), "{out:?}");
    let second = host_last_seq(&h, "second").await;
    wait_gateway_seq(&g, "h1", "second", second).await;
    wait_gateway_seq(&g, "h1", "first", last).await;
    let copy = journal(&g.events_path("h1", "first"));
    let local = journal(&host_journal_path(&h, "first"));
    assert_eq!(seqs(&copy), seqs(&local), "the host resent the run from its start");
    let hosts_dir = g.state_dir().join("hosts").join("h1");
    assert_eq!(quarantined(&hosts_dir, "first").len(), 1, "{}", g.log());
    assert!(!g.log().contains("host session failed"), "the link never failed:\n{}", g.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_journal_that_filled_up_reaches_the_gateway_with_a_gap_and_its_end() {
    if !is_root() {
        println!("skipped: mounting a small tmpfs needs root");
        return;
    }
    // Started once for its agent token, then down while the host works:
    // the host's link will replay from the journal, through the hole.
    let mut g = Gateway::start();
    g.stop();
    let mut h = g.prepare_host("full-host");
    let disk = Tmpfs::mount(&h.state_dir(), "2m");
    h.spawn();
    let out = h.run(&["run", "--id", "big", "--", "sh", "-c", "head -c 4000000 /dev/zero | tr '\\0' x; echo done"]);
    assert!(out.status.success(), "the job is never blocked by the disk: {out:?}");
    let history = unix_seen(&h.socket(), "big", 0, false, WAIT).await;
    assert!(!history.gaps.is_empty(), "the disk was meant to fill up: {history:?}");
    disk.resize("64m");
    let after = h.run(&["run", "--id", "after", "--", "echo", "fine"]);
    assert!(after.status.success(), "{after:?}");

    g.spawn();
    let big_last = host_last_seq(&h, "big").await;
    wait_gateway_seq(&g, "full-host", "big", big_last).await;
    let after_last = host_last_seq(&h, "after").await;
    wait_gateway_seq(&g, "full-host", "after", after_last).await;
    let run = gw_run(&g, "full-host", "big").await.unwrap();
    assert_eq!((&run["status"], &run["journal"]), (&Value::from("succeeded"), &Value::from("degraded")), "{run}");
    // A subscriber at the gateway gets what there is, the hole as a journal-gap, then the end.
    let seen =
        ws_seen(&g.ws_url(&format!("/runs?runId=big&host=full-host&token={}", g.token())), &[], |s| s.ended, WAIT)
            .await;
    assert!(!seen.gaps.is_empty(), "the gap is reported at the gateway: {seen:?}");
    assert_eq!(seen.seqs.last().copied(), Some(big_last), "the final status arrives: {:?}", seen.seqs);
    assert!(!g.log().contains("host session failed"), "no failing link loop:\n{}", g.log());
    assert!(g.log().contains("recorded as a gap"), "{}", g.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_gateway_acknowledges_only_what_it_stored_and_catches_up_when_space_returns() {
    if !is_root() {
        println!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let mut g = Gateway::prepare("");
    let disk = Tmpfs::mount(&g.state_dir(), "2m");
    g.spawn();
    let h = g.start_host("h1");
    let out = h.run(&["run", "--id", "big", "--", "sh", "-c", "head -c 4000000 /dev/zero | tr '\\0' x; echo done"]);
    assert!(out.status.success(), "the host's job is never blocked by the gateway's disk: {out:?}");
    wait_until(
        || format!("the gateway to refuse what it cannot store:\n{}", g.log()),
        || {
            let log = g.log();
            async move { log.contains("gateway storage failing") }
        },
    )
    .await;
    let stored = journal_lines_or_empty(&g.events_path("h1", "big"));
    let acked = host_acked(&h).await;
    assert!(acked <= stored, "the host was told {acked} are stored, but the gateway's file holds {stored}");

    disk.resize("64m");
    let last = host_last_seq(&h, "big").await;
    wait_gateway_seq(&g, "h1", "big", last).await;
    wait_until(
        || "the gateway's file to hold the whole run".to_owned(),
        || {
            let path = g.events_path("h1", "big");
            async move { journal_lines_or_empty(&path) >= last }
        },
    )
    .await;
    let copy = journal(&g.events_path("h1", "big"));
    let local = journal(&host_journal_path(&h, "big"));
    assert_eq!(seqs(&copy), seqs(&local), "every event, once, in order");
}

/// Intact lines in a journal file (0 if there is none).
fn journal_lines_or_empty(path: &Path) -> u64 {
    std::fs::read(path).map_or(0, |b| b.split(|&c| c == b'\n').filter(|l| l.ends_with(b"}")).count() as u64)
}

/// What the host's link says the gateway acknowledged (all runs: the test has one).
async fn host_acked(h: &Daemon) -> u64 {
    let (_, metrics) = http_to(&h.addr, "GET", "/metrics", None).await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("runtap_upstream_events_acknowledged_total ").and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_disk_holds_up_only_the_runs_that_write() {
    // Every journal write takes 5 s: a disk that stalls. More runs write at
    // once than the daemon has async workers (as many as cores).
    let mut d = Daemon::prepare("");
    d.env.push(("RUNTAP_FAULT_JOURNAL_WRITE_DELAY_MS".into(), "5000".into()));
    d.spawn();
    let writers = std::thread::available_parallelism().map_or(2, |n| n.get()) + 2;
    for i in 0..writers {
        launch(&d, &format!("w{i}"), "while :; do echo x; sleep 0.01; done");
    }
    wait_until(
        || format!("{writers} writes under way:\n{}", d.log()),
        || {
            let n = d.log().matches("journal write delayed").count();
            async move { n >= writers }
        },
    )
    .await;
    // While every run's write is stuck, the listener and the socket answer.
    let started = std::time::Instant::now();
    let (status, _) =
        tokio::time::timeout(std::time::Duration::from_secs(2), http_json(&d.addr, "GET", "/healthz", None))
            .await
            .expect("/healthz must answer while the disk stalls");
    assert_eq!(status, 200);
    let list = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        unix_call(&d.socket(), serde_json::json!({"type": "list"})),
    )
    .await
    .expect("the Unix socket must answer while the disk stalls");
    assert!(list.to_string().contains("w0"), "{list}");
    println!("answered in {:?} while {writers} writes stalled", started.elapsed());
    for i in 0..writers {
        let _ = d.run(&["cancel", &format!("w{i}")]);
    }
}
