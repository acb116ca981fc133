//! Issue 16 acceptance: the gateway on NATS JetStream (`[gateway] engine =
//! "nats"`). Several replicas share one NATS deployment and are
//! interchangeable: a host forwards to any of them, a viewer reads any run
//! from any of them, a cancel sent to any of them reaches the host, and
//! forwarding stays exactly-once and gap-free across replica crashes,
//! freezes and NATS restarts. Every check ends in
//! `Replicas::assert_same_copy` (tests/common/replicas.rs): what a replica
//! serves is exactly the host's journal, each event once, in order.
//!
//! A daemon here reaches "the replica holding it" through a `Proxy` that
//! the test points at another replica when it kills or freezes the holder
//! (one `--upstream` URL is enough for that); others give the daemon every
//! replica's URL and let it fail over by itself.
//!
//! Each test starts its own `nats-server` (tests/common/nats.rs); without
//! one installed they print a loud SKIP and pass, unless
//! `RUNTAP_REQUIRE_NATS` is set (as in .ci/run).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use runtap::event::RunStatus;

/// A cancel a host does not answer gets 504 after this (`[gateway] cancel_timeout`).
const CANCEL_TIMEOUT: &str = "cancel_timeout = \"1s\"";

/// One `nats-server` and three replicas on it; None (skipped) without NATS.
/// Bind it as `let Some((nats, r)) = ...`: the replicas are dropped first.
fn three_replicas() -> Option<(Nats, Replicas)> {
    let nats = Nats::start()?;
    let r = Replicas::start(3, &[nats.url()], 1, CANCEL_TIMEOUT);
    Some((nats, r))
}

/// (host, runId, status, lastSeq) of each run in a `GET /runs` answer.
fn summary(runs: &[serde_json::Value]) -> Vec<(String, String, String, u64)> {
    runs.iter()
        .map(|r| {
            (
                r["host"].as_str().unwrap_or("").to_owned(),
                r["runId"].as_str().unwrap().to_owned(),
                r["status"].as_str().unwrap().to_owned(),
                r["lastSeq"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The host's run goes on by `more` events, and replica `i` serves all of
/// them: forwarding works again (through whichever replica holds the host).
async fn flowing(r: &Replicas, i: usize, d: &Daemon, host: &str, run: &str, more: u64) {
    let n = host_last_seq(d, run).await;
    wait_host_seq(d, run, n + more).await;
    r.wait_seq(i, host, run, n + more).await;
}

// ---------------------------------------------------------------------------
// 1. Three replicas, one daemon: what A takes, B and C serve.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_on_replica_b_gets_once_and_in_order_what_replica_a_took() {
    let Some((_nats, r)) = three_replicas() else { return };
    let d = r.start_host("h1", &[r.url(0)]);
    let tmp = tempfile::tempdir().unwrap();
    let stop = tmp.path().join("stop");

    // On B before the run exists (the subscription waits for it), on C mid-run.
    let mut early_b = r.subscribe(1, "h1", "p", 0).await;
    launch(&d, "p", &producer(&stop));
    r.wait_seq(1, "h1", "p", 20).await;
    let mut mid_c = r.subscribe(2, "h1", "p", 0).await;
    let out = d.run(&["run", "--id", "quick", "--", "sh", "-c", "seq 1 200; echo err >&2"]);
    assert!(out.status.success(), "{out:?}");
    flowing(&r, 2, &d, "h1", "p", 20).await;
    touch(&stop);
    assert_eq!(d.wait_final("p").await.status(), Some(RunStatus::Succeeded));

    let theirs = journal(&host_journal_path(&d, "p"));
    for (what, ws) in [("B, from before the run", &mut early_b), ("C, from mid-run", &mut mid_c)] {
        let got = ws_read(ws, |_| false).await;
        assert_same_events(&got, &theirs, "h1", &format!("subscriber on {what}"));
        assert_eq!(got.close, Some(1000), "subscriber on {what}: {:?}", got.controls);
    }
    for run in ["p", "quick"] {
        r.assert_same_copy_everywhere("h1", &d, run).await;
    }
    let runs = r.assert_runs_converge().await;
    let want = vec![
        ("h1".to_owned(), "p".to_owned(), "succeeded".to_owned(), theirs.len() as u64),
        (
            "h1".to_owned(),
            "quick".to_owned(),
            "succeeded".to_owned(),
            journal(&host_journal_path(&d, "quick")).len() as u64,
        ),
    ];
    assert_eq!(summary(&runs), want);
    r.wait_connected("h1", true).await;
}

// ---------------------------------------------------------------------------
// 2. kill -9 of the replica holding the host, mid-run, twice.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_holding_replica_mid_run_moves_the_host_without_loss_or_duplicate() {
    let Some((_nats, mut r)) = three_replicas() else { return };
    let proxy = Proxy::start(r.addr(0).to_owned()).await;
    let d = r.start_host("h1", &[proxy.url()]);
    let tmp = tempfile::tempdir().unwrap();
    let stop = tmp.path().join("stop");
    launch(&d, "p", &producer(&stop));
    // C watches all along; A, then B, hold the host and die.
    let mut viewer = r.subscribe(2, "h1", "p", 0).await;
    r.wait_seq(2, "h1", "p", 20).await;

    r.kill9(0);
    proxy.retarget(r.addr(1));
    // A whole run starts and ends while the host moves.
    let out = d.run(&["run", "--id", "during", "--", "sh", "-c", "seq 1 300; echo bye >&2"]);
    assert!(out.status.success(), "{out:?}");
    flowing(&r, 2, &d, "h1", "p", 50).await;
    r.restart(0);

    r.kill9(1);
    proxy.retarget(r.addr(0));
    flowing(&r, 2, &d, "h1", "p", 50).await;
    r.restart(1);
    touch(&stop);
    assert_eq!(d.wait_final("p").await.status(), Some(RunStatus::Succeeded));

    let got = ws_read(&mut viewer, |_| false).await;
    assert_same_events(&got, &journal(&host_journal_path(&d, "p")), "h1", "viewer on C across two kills");
    for run in ["p", "during"] {
        r.assert_same_copy_everywhere("h1", &d, run).await;
    }
    r.assert_runs_converge().await;
    r.wait_connected("h1", true).await;
    assert!(proxy.accepted() >= 3, "the host reconnected after each kill: {} connections", proxy.accepted());
}

/// The same with the daemon given every replica's URL: it fails over itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_given_every_replica_fails_over_by_itself_when_its_replica_is_killed() {
    let Some((_nats, mut r)) = three_replicas() else { return };
    // The URLs are tried in turn: replica 0 first.
    let d = r.start_host("h1", &r.urls());
    let tmp = tempfile::tempdir().unwrap();
    let stop = tmp.path().join("stop");
    launch(&d, "p", &producer(&stop));
    let mut viewer = r.subscribe(2, "h1", "p", 0).await;
    r.wait_seq(2, "h1", "p", 20).await;

    let killed = Instant::now();
    r.kill9(0);
    flowing(&r, 2, &d, "h1", "p", 20).await;
    eprintln!("forwarding again {:?} after the kill", killed.elapsed());
    let out = d.run(&["run", "--id", "after", "--", "sh", "-c", "seq 1 300"]);
    assert!(out.status.success(), "{out:?}");
    r.restart(0);
    flowing(&r, 0, &d, "h1", "p", 20).await;
    touch(&stop);
    d.wait_final("p").await;

    let got = ws_read(&mut viewer, |_| false).await;
    assert_same_events(&got, &journal(&host_journal_path(&d, "p")), "h1", "viewer on C");
    for run in ["p", "after"] {
        r.assert_same_copy_everywhere("h1", &d, run).await;
    }
    r.assert_runs_converge().await;
    r.wait_connected("h1", true).await;
}

// ---------------------------------------------------------------------------
// 3. SIGSTOP the holding replica until the host moves, then SIGCONT it:
// what it still had to append is fenced.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_holder_is_fenced_when_it_thaws_after_the_host_moved() {
    let Some((_nats, mut r)) = three_replicas() else { return };
    let proxy = Proxy::start(r.addr(0).to_owned()).await;
    let d = r.start_host("h1", &[proxy.url()]);
    let tmp = tempfile::tempdir().unwrap();
    let stop = tmp.path().join("stop");
    launch(&d, "p", &producer(&stop));
    let mut viewer = r.subscribe(2, "h1", "p", 0).await;
    r.wait_seq(2, "h1", "p", 20).await;

    // A stops while the host keeps sending to it: those events wait,
    // unread, in A's socket.
    r.freeze(0);
    let n = host_last_seq(&d, "p").await;
    wait_host_seq(&d, "p", n + 30).await;
    // The host notices (here: the link is cut; a real daemon times it out)
    // and its next connection reaches B, which takes the host from A.
    proxy.retarget(r.addr(1));
    proxy.cut();
    flowing(&r, 2, &d, "h1", "p", 30).await;
    flowing(&r, 1, &d, "h1", "p", 30).await;

    // A wakes with stale events to append and a link that is gone.
    r.thaw(0);
    let at_b = r.last_seq(1, "h1", "p").await;
    r.wait_seq(0, "h1", "p", at_b).await;
    flowing(&r, 0, &d, "h1", "p", 30).await;
    // The host is still connected everywhere, and A routes a cancel to B.
    r.wait_connected("h1", true).await;
    launch(&d, "victim", "echo started; sleep 30");
    r.wait_seq(0, "h1", "victim", 3).await;
    let (status, body) = http_json(r.addr(0), "POST", "/runs/victim/cancel?host=h1", Some(r.token())).await;
    assert_eq!(status, 200, "cancel through the thawed replica: {body}{}", r.logs());
    assert_eq!(d.wait_final("victim").await.status(), Some(RunStatus::Cancelled));

    touch(&stop);
    d.wait_final("p").await;
    let got = ws_read(&mut viewer, |_| false).await;
    assert_same_events(&got, &journal(&host_journal_path(&d, "p")), "h1", "viewer on C across the freeze");
    for run in ["p", "victim"] {
        r.assert_same_copy_everywhere("h1", &d, run).await;
    }
    r.assert_runs_converge().await;
    // The case did happen: A tried to append what it held and was fenced
    // (its log line, gateway/nats/link.rs).
    let a_log = r.gws[0].log();
    assert!(a_log.contains("another replica holds this host now"), "A was never fenced:{}", r.logs());
}

/// The same with the daemon's own link timeout (15 s of silence,
/// protocol::link): it gives up on the frozen replica and moves on to the
/// next URL, with no proxy cut to help it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_moves_off_a_frozen_replica_by_its_link_timeout_and_the_thaw_is_fenced() {
    let Some((_nats, mut r)) = three_replicas() else { return };
    let d = r.start_host("h1", &r.urls());
    let tmp = tempfile::tempdir().unwrap();
    let stop = tmp.path().join("stop");
    launch(&d, "p", &producer(&stop));
    let mut viewer = r.subscribe(2, "h1", "p", 0).await;
    r.wait_seq(2, "h1", "p", 20).await;

    r.freeze(0);
    // Bounded by the link timeout, a reconnect and the rest of the wait.
    let deadline = Instant::now() + Duration::from_secs(45);
    let n = host_last_seq(&d, "p").await;
    while r.last_seq(2, "h1", "p").await < n + 30 {
        assert!(Instant::now() < deadline, "the host never moved off the frozen replica:{}", r.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    r.thaw(0);
    flowing(&r, 0, &d, "h1", "p", 30).await;
    touch(&stop);
    d.wait_final("p").await;

    let got = ws_read(&mut viewer, |_| false).await;
    assert_same_events(&got, &journal(&host_journal_path(&d, "p")), "h1", "viewer on C across the freeze");
    r.assert_same_copy_everywhere("h1", &d, "p").await;
    r.wait_connected("h1", true).await;
}

// ---------------------------------------------------------------------------
// 4. kill -9 and restart of nats-server mid-run.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_kill9_and_restart_mid_run_loses_nothing_and_duplicates_nothing() {
    let Some((mut nats, r)) = three_replicas() else { return };
    let d = r.start_host("h1", &[r.url(0)]);
    let tmp = tempfile::tempdir().unwrap();
    let stop = tmp.path().join("stop");
    launch(&d, "p", &producer(&stop));
    let mut viewer = r.subscribe(1, "h1", "p", 0).await;
    r.wait_seq(1, "h1", "p", 20).await;

    nats.kill9();
    // The run goes on without NATS, and a whole run starts and ends.
    let n = host_last_seq(&d, "p").await;
    wait_host_seq(&d, "p", n + 50).await;
    let out = d.run(&["run", "--id", "during", "--", "sh", "-c", "seq 1 300; echo bye >&2"]);
    assert!(out.status.success(), "{out:?}");

    let back = Instant::now();
    nats.restart();
    let n = host_last_seq(&d, "p").await;
    for i in 0..3 {
        r.wait_seq(i, "h1", "p", n).await;
    }
    eprintln!("every replica caught up {:?} after nats-server came back", back.elapsed());
    touch(&stop);
    d.wait_final("p").await;

    let got = ws_read(&mut viewer, |_| false).await;
    assert_same_events(&got, &journal(&host_journal_path(&d, "p")), "h1", "viewer on B across the NATS restart");
    for run in ["p", "during"] {
        r.assert_same_copy_everywhere("h1", &d, run).await;
    }
    r.assert_runs_converge().await;
    r.wait_connected("h1", true).await;
}

// ---------------------------------------------------------------------------
// 5. Cancels: through any replica; host offline; holder frozen.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_to_each_replica_reaches_the_host() {
    let Some((_nats, r)) = three_replicas() else { return };
    let d = r.start_host("h1", &[r.url(0)]);
    for i in 0..3 {
        launch(&d, &format!("v{i}"), "echo started; sleep 30");
    }
    for i in 0..3 {
        r.wait_seq(i, "h1", &format!("v{i}"), 3).await;
    }
    for i in 0..3 {
        let path = format!("/runs/v{i}/cancel?host=h1&reason=via-replica-{i}");
        let (status, body) = http_json(r.addr(i), "POST", &path, Some(r.token())).await;
        assert_eq!(status, 200, "cancel through replica {i}: {body}{}", r.logs());
        assert_eq!(body["runId"], format!("v{i}"), "{body}");
        let fin = d.wait_final(&format!("v{i}")).await;
        assert_eq!(fin.status(), Some(RunStatus::Cancelled), "{fin:?}");
        assert_eq!(fin.reason.as_deref(), Some(format!("via-replica-{i}").as_str()), "{fin:?}");
    }
    for i in 0..3 {
        let events = r.assert_same_copy_everywhere("h1", &d, &format!("v{i}")).await;
        assert_eq!(events.last().unwrap()["data"], "cancelled");
        // Finished: 409 with the final status at every replica; unknown: 404.
        let (status, body) =
            http_json(r.addr((i + 1) % 3), "POST", &format!("/runs/v{i}/cancel?host=h1"), Some(r.token())).await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["status"], "cancelled", "{body}");
        let (status, body) = http_json(r.addr(i), "POST", "/runs/nope/cancel?host=h1", Some(r.token())).await;
        assert_eq!(status, 404, "{body}");
        let (status, body) = http_json(r.addr(i), "POST", "/runs/v0/cancel?host=nohost", Some(r.token())).await;
        assert_eq!(status, 404, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_for_an_offline_host_is_503_at_every_replica() {
    let Some((_nats, mut r)) = three_replicas() else { return };
    // h1 stops cleanly; its run goes on under its shim, unreachable.
    let mut h1 = r.start_host("h1", &[r.url(0)]);
    launch(&h1, "v", "echo started; sleep 30");
    r.wait_seq(2, "h1", "v", 3).await;
    h1.stop();
    r.wait_connected("h1", false).await;
    for i in 0..3 {
        let (status, body) = http_json(r.addr(i), "POST", "/runs/v/cancel?host=h1", Some(r.token())).await;
        assert_eq!(status, 503, "replica {i}: {body}{}", r.logs());
        assert_eq!(body["code"], "host-offline", "replica {i}: {body}");
    }

    // h2's replica dies and it finds no other: offline too, at once (503,
    // not a 504 after waiting for a dead replica to answer).
    let proxy = Proxy::start(r.addr(0).to_owned()).await;
    let h2 = r.start_host("h2", &[proxy.url()]);
    launch(&h2, "w", "echo started; sleep 30");
    r.wait_seq(1, "h2", "w", 3).await;
    proxy.refuse(true);
    r.kill9(0);
    r.wait_connected("h2", false).await;
    for i in 1..3 {
        let started = Instant::now();
        let (status, body) = http_json(r.addr(i), "POST", "/runs/w/cancel?host=h2", Some(r.token())).await;
        assert_eq!(status, 503, "replica {i}: {body}{}", r.logs());
        assert_eq!(body["code"], "host-offline", "replica {i}: {body}");
        assert!(started.elapsed() < Duration::from_millis(900), "503 after {:?}", started.elapsed());
    }
    proxy.refuse(false);
    proxy.retarget(r.addr(1));
    r.wait_connected("h2", true).await;
    let (status, body) = http_json(r.addr(2), "POST", "/runs/w/cancel?host=h2", Some(r.token())).await;
    assert_eq!(status, 200, "once back: {body}{}", r.logs());
    assert_eq!(h2.wait_final("w").await.status(), Some(RunStatus::Cancelled));
    r.assert_same_copy_everywhere("h2", &h2, "w").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_while_the_holding_replica_is_frozen_is_504_after_cancel_timeout() {
    let Some((_nats, mut r)) = three_replicas() else { return };
    let d = r.start_host("h1", &[r.url(0)]);
    launch(&d, "v", "echo started; sleep 30");
    r.wait_seq(1, "h1", "v", 3).await;
    r.wait_connected("h1", true).await;

    r.freeze(0);
    for i in 1..3 {
        let started = Instant::now();
        let (status, body) = http_json(r.addr(i), "POST", "/runs/v/cancel?host=h1", Some(r.token())).await;
        assert_eq!(status, 504, "replica {i}: {body}{}", r.logs());
        assert_eq!(body["code"], "host-timeout", "replica {i}: {body}");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "504 after {took:?}");
    }
    r.thaw(0);
    // Thawed, it may still pass the timed-out cancels on; either way one
    // more ends the run, and nothing is lost.
    let (status, body) = http_json(r.addr(1), "POST", "/runs/v/cancel?host=h1", Some(r.token())).await;
    assert!(status == 200 || (status == 409 && body["status"] == "cancelled"), "{status} {body}{}", r.logs());
    assert_eq!(d.wait_final("v").await.status(), Some(RunStatus::Cancelled));
    r.assert_same_copy_everywhere("h1", &d, "v").await;
}

// ---------------------------------------------------------------------------
// 6. A subscriber joining mid-run with since=N.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_joining_mid_run_with_since_gets_the_rest_once() {
    let Some((_nats, r)) = three_replicas() else { return };
    let d = r.start_host("h1", &[r.url(0)]);
    let tmp = tempfile::tempdir().unwrap();
    let stop = tmp.path().join("stop");
    launch(&d, "p", &producer(&stop));
    r.wait_seq(1, "h1", "p", 40).await;

    // Inside the history on B and on A; at the live edge on C.
    let since_live = r.last_seq(2, "h1", "p").await;
    let mut subs = Vec::new();
    for (i, since) in [(1, 25), (0, 25), (2, since_live)] {
        subs.push((i, since, r.subscribe(i, "h1", "p", since).await));
    }
    flowing(&r, 1, &d, "h1", "p", 20).await;
    touch(&stop);
    d.wait_final("p").await;

    let theirs = journal(&host_journal_path(&d, "p"));
    for (i, since, mut ws) in subs {
        let got = ws_read(&mut ws, |_| false).await;
        assert_same_events(&got, &theirs[since as usize..], "h1", &format!("replica {i} since={since}"));
        assert_eq!(got.close, Some(1000), "replica {i}: {:?}", got.controls);
    }
    // Since the last seq of a finished run: nothing, then the close.
    let n = theirs.len() as u64;
    let got = r.read_run(1, "h1", "p", n).await;
    assert!(got.events.is_empty(), "{:?}", got.seqs());
    assert_eq!(got.close, Some(1000));
}

// ---------------------------------------------------------------------------
// 7. 50 runs across 3 hosts through replica kills.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_runs_across_three_hosts_through_replica_kills() {
    let Some((_nats, mut r)) = three_replicas() else { return };
    let names = ["a", "b", "c"];
    // Host k starts on replica k.
    let mut proxies = Vec::new();
    for k in 0..3 {
        proxies.push(Proxy::start(r.addr(k).to_owned()).await);
    }
    let daemons: Vec<Daemon> = (0..3).map(|k| r.start_host(names[k], &[proxies[k].url()])).collect();
    let script = "for i in $(seq 1 40); do echo out $i; echo err $i >&2; sleep 0.05; done; echo end";
    let mut launches = Vec::new();
    for i in 0..50 {
        let mut c = daemons[i % 3].cli();
        c.args(["run", "--detach", "--id", &format!("job-{i:02}"), "--", "sh", "-c", script]);
        c.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
        launches.push(c.spawn().unwrap());
    }
    for (i, mut c) in launches.into_iter().enumerate() {
        let status = wait_child(&mut c, WAIT).unwrap();
        assert!(status.success(), "launch job-{i:02}: {status}");
    }
    r.wait_seq(2, "a", "job-00", 5).await;

    // Replica 0 dies: host a moves to replica 1.
    r.kill9(0);
    proxies[0].retarget(r.addr(1));
    let n = host_last_seq(&daemons[0], "job-48").await;
    r.wait_seq(2, "a", "job-48", n).await;
    r.restart(0);
    // Replica 1 dies, holding a and b: both move to replica 0.
    r.kill9(1);
    proxies[0].retarget(r.addr(0));
    proxies[1].retarget(r.addr(0));
    let n = host_last_seq(&daemons[1], "job-49").await;
    r.wait_seq(2, "b", "job-49", n).await;
    r.restart(1);

    for i in 0..50 {
        let fin = daemons[i % 3].wait_final(&format!("job-{i:02}")).await;
        assert_eq!(fin.status(), Some(RunStatus::Succeeded), "{fin:?}");
    }
    // Replica 2 never died; the others came back.
    for i in 0..50 {
        r.assert_same_copy(2, names[i % 3], &daemons[i % 3], &format!("job-{i:02}")).await;
    }
    for i in [0, 49, 25] {
        r.assert_same_copy_everywhere(names[i % 3], &daemons[i % 3], &format!("job-{i:02}")).await;
    }
    let runs = r.assert_runs_converge().await;
    let mut want: Vec<(String, String, String, u64)> = (0..50)
        .map(|i| {
            let run = format!("job-{i:02}");
            let n = journal(&host_journal_path(&daemons[i % 3], &run)).len() as u64;
            (names[i % 3].to_owned(), run, "succeeded".to_owned(), n)
        })
        .collect();
    want.sort();
    assert_eq!(summary(&runs), want);
    for host in names {
        r.wait_connected(host, true).await;
    }
}

// ---------------------------------------------------------------------------
// 8. A three-node NATS cluster, streams with three copies, one node killed.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_r3_cluster_loses_nothing_when_the_stream_leader_node_is_killed_mid_run() {
    let Some(mut cluster) = NatsCluster::start(3) else { return };
    let r = Replicas::start(3, &cluster.urls(), 3, CANCEL_TIMEOUT);
    let d = r.start_host("h1", &[r.url(0)]);
    let tmp = tempfile::tempdir().unwrap();
    let stop = tmp.path().join("stop");
    launch(&d, "p", &producer(&stop));
    let mut viewer = r.subscribe(1, "h1", "p", 0).await;
    r.wait_seq(1, "h1", "p", 20).await;

    // The node leading the events stream (not a KV bucket's), else n1.
    let leaders = cluster.stream_leaders();
    let victim = leaders.iter().find(|(s, _)| !s.starts_with("KV_")).map_or(0, |(_, i)| *i);
    eprintln!("streams and their leaders: {leaders:?}; killing n{}", victim + 1);
    cluster.kill9(victim);
    cluster.wait_ready();
    for i in 0..3 {
        flowing(&r, i, &d, "h1", "p", 30).await;
    }
    // The host index works without the node: a cancel through replica 2.
    launch(&d, "victim", "echo started; sleep 30");
    r.wait_seq(2, "h1", "victim", 3).await;
    let (status, body) = http_json(r.addr(2), "POST", "/runs/victim/cancel?host=h1", Some(r.token())).await;
    assert_eq!(status, 200, "{body}{}", r.logs());
    assert_eq!(d.wait_final("victim").await.status(), Some(RunStatus::Cancelled));

    cluster.restart(victim);
    flowing(&r, 1, &d, "h1", "p", 30).await;
    touch(&stop);
    d.wait_final("p").await;

    let got = ws_read(&mut viewer, |_| false).await;
    assert_same_events(&got, &journal(&host_journal_path(&d, "p")), "h1", "viewer on B across the node's death");
    for run in ["p", "victim"] {
        r.assert_same_copy_everywhere("h1", &d, run).await;
    }
    r.assert_runs_converge().await;
}
