//! Issue 5 acceptance, part 1: forwarding survives crashes, restarts and
//! cut links, with a real gateway and real daemons on loopback. Every
//! check ends in `assert_same_copy` (tests/common/copies.rs): the gateway
//! holds exactly the host's events, each once, in order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::soak_check::journal_lines_lenient;
use common::*;
use runtap::event::RunStatus;
// ---------------------------------------------------------------------------
// 2. kill -9 the gateway mid-run, restart it on the same port.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_kill9_mid_run_then_restart_ends_with_equal_copies() {
    let mut gw = Gateway::start();
    let h1 = gw.start_host("h1");
    let h2 = gw.start_host("h2");
    let tmp = tempfile::tempdir().unwrap();
    let stop = tmp.path().join("stop");

    let out = h1.run(&["run", "--id", "before", "--", "sh", "-c", "seq 1 200; echo err >&2"]);
    assert!(out.status.success(), "{out:?}");
    launch(&h1, "long", &producer(&stop));
    launch(&h2, "long", &producer(&stop));
    wait_gateway_seq(&gw, "h1", "long", 20).await;
    wait_gateway_seq(&gw, "h2", "long", 20).await;

    gw.kill9();
    // The runs carry on while the gateway is gone, and one starts and ends.
    let h1_at_kill = host_last_seq(&h1, "long").await;
    let h2_at_kill = host_last_seq(&h2, "long").await;
    wait_host_seq(&h1, "long", h1_at_kill + 50).await;
    wait_host_seq(&h2, "long", h2_at_kill + 50).await;
    let out = h2.run(&["run", "--id", "during", "--", "sh", "-c", "seq 1 500; echo bye >&2"]);
    assert!(out.status.success(), "{out:?}");

    gw.spawn();
    // A viewer subscribing now, before the hosts are back, still gets all of it.
    let t = gw.token();
    let mut early_viewer = ws_connect(&gw.ws_url(&format!("/runs?runId=long&host=h1&token={t}")), &[]).await;
    // The gateway catches up past the outage while the runs still write.
    wait_gateway_seq(&gw, "h1", "long", h1_at_kill + 50).await;
    wait_gateway_seq(&gw, "h2", "long", h2_at_kill + 50).await;
    touch(&stop);
    assert_eq!(h1.wait_final("long").await.status(), Some(RunStatus::Succeeded));
    assert_eq!(h2.wait_final("long").await.status(), Some(RunStatus::Succeeded));

    for (host, d, run) in [("h1", &h1, "before"), ("h1", &h1, "long"), ("h2", &h2, "long"), ("h2", &h2, "during")] {
        assert_same_copy(&gw, host, d, run).await;
    }
    let got = ws_read(&mut early_viewer, |_| false).await;
    assert_eq!(got.events, with_host(&journal(&host_journal_path(&h1, "long")), "h1"));
    assert!(host_connected(&gw, "h1").await && host_connected(&gw, "h2").await, "{:?}", hosts(&gw).await);
}

// ---------------------------------------------------------------------------
// 3. kill -9 a daemon mid-run, restart it on the same state dir. Its runs
// go on meanwhile (issue 15: each has its own supervisor, which journals
// while no daemon runs); one whose supervisor is killed too, as in a host
// crash, is closed `lost` by the restarted daemon. The gateway gets all of
// both, and the runs after.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_kill9_mid_run_gateway_gets_the_runs_across_it_and_later_runs() {
    let gw = Gateway::start();
    let mut h1 = gw.start_host("h1");
    let h2 = gw.start_host("h2");
    let tmp = tempfile::tempdir().unwrap();
    let stop = tmp.path().join("stop");

    launch(&h1, "survivor", &producer(&stop));
    launch(&h1, "doomed", &producer(&stop));
    launch(&h2, "bystander", &producer(&stop));
    wait_gateway_seq(&gw, "h1", "survivor", 20).await;
    wait_gateway_seq(&gw, "h1", "doomed", 20).await;
    let doomed_shim = shim_pid(&h1, "doomed");

    h1.kill9();
    signal(doomed_shim as i32, nix::sys::signal::Signal::SIGKILL);
    wait_connected(&gw, "h1", false).await;
    let held = gw_run(&gw, "h1", "survivor").await.unwrap();
    assert_eq!(held["status"], "running", "the gateway cannot know yet: {held}");
    // The survivor writes on, journaled with no daemon running.
    let survivor_path = host_journal_path(&h1, "survivor");
    let at_kill = journal_lines_lenient(&survivor_path).len();
    wait_for(
        || format!("the survivor's journal to grow past {at_kill} + 50 lines while h1 is down"),
        || journal_lines_lenient(&survivor_path).len() >= at_kill + 50,
    );

    h1.spawn();
    let lost = h1.wait_final("doomed").await;
    assert_eq!(lost.status(), Some(RunStatus::Lost), "{lost:?}");
    let out = h1.run(&["run", "--id", "after", "--", "sh", "-c", "echo after the restart"]);
    assert!(out.status.success(), "{out:?}");
    touch(&stop);
    assert_eq!(h1.wait_final("survivor").await.status(), Some(RunStatus::Succeeded));
    h2.wait_final("bystander").await;

    let survivor = assert_same_copy(&gw, "h1", &h1, "survivor").await;
    assert!(survivor.len() > at_kill + 50, "the events journaled while h1 was down: {} events", survivor.len());
    let doomed = assert_same_copy(&gw, "h1", &h1, "doomed").await;
    assert_eq!(doomed.last().unwrap()["data"], "lost");
    assert_same_copy(&gw, "h1", &h1, "after").await;
    assert_same_copy(&gw, "h2", &h2, "bystander").await;
    let info = gw_run(&gw, "h1", "doomed").await.unwrap();
    assert_eq!(info["status"], "lost", "{info}");
}

// ---------------------------------------------------------------------------
// 4. Cut the link repeatedly with a TCP proxy.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_links_through_a_proxy_then_equal_copies() {
    let gw = Gateway::start();
    let proxy = Proxy::start(gw.addr.clone()).await;
    let mut daemons = Vec::new();
    for host in ["h1", "h2"] {
        let mut d = gw.prepare_host(host);
        d.extra_args = upstream_args(&proxy.url(), host, &gw.agent_token_path());
        d.spawn();
        daemons.push(d);
    }
    let (h1, h2) = (&daemons[0], &daemons[1]);
    let tmp = tempfile::tempdir().unwrap();
    let stop = tmp.path().join("stop");
    launch(h1, "p", &producer(&stop));
    launch(h2, "p", &producer(&stop));
    // A viewer on the gateway all along, across the cuts.
    let mut viewer = ws_connect(&gw.ws_url(&format!("/runs?runId=p&host=h1&token={}", gw.token())), &[]).await;

    for cut in 0..3 {
        // The link is up and carrying events again...
        for (host, d) in [("h1", h1), ("h2", h2)] {
            let n = host_last_seq(d, "p").await;
            wait_gateway_seq(&gw, host, "p", n + 5).await;
        }
        // ...then everything through the proxy is dropped.
        proxy.cut();
        if cut == 2 {
            // And new connections are refused while the hosts keep writing,
            // one of them a whole run.
            proxy.refuse(true);
            let n = host_last_seq(h1, "p").await;
            let out = h2.run(&["run", "--id", "while-cut", "--", "sh", "-c", "seq 1 300"]);
            assert!(out.status.success(), "{out:?}");
            wait_host_seq(h1, "p", n + 30).await;
            proxy.refuse(false);
        }
    }
    for (host, d) in [("h1", h1), ("h2", h2)] {
        let n = host_last_seq(d, "p").await;
        wait_gateway_seq(&gw, host, "p", n + 5).await;
    }
    touch(&stop);
    h1.wait_final("p").await;
    h2.wait_final("p").await;
    assert_same_copy(&gw, "h1", h1, "p").await;
    assert_same_copy(&gw, "h2", h2, "p").await;
    assert_same_copy(&gw, "h2", h2, "while-cut").await;
    assert!(proxy.accepted() >= 8, "each host reconnected after each cut: {} connections", proxy.accepted());
    let got = ws_read(&mut viewer, |_| false).await;
    assert_eq!(got.events, with_host(&journal(&host_journal_path(h1, "p")), "h1"), "the live viewer across cuts");
    let (_, metrics) = http(h1, "GET", "/metrics", None).await;
    let reconnects: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("runtap_upstream_reconnects_total "))
        .unwrap_or_else(|| panic!("no reconnect metric:\n{metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert!(reconnects >= 3, "{reconnects} reconnects");
}

// ---------------------------------------------------------------------------
// 5. Cancel through the gateway.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_runs_across_three_hosts() {
    let gw = Gateway::start();
    let names = ["a", "b", "c"];
    let daemons: Vec<Daemon> = names.iter().map(|h| gw.start_host(h)).collect();
    let script = "for i in $(seq 1 30); do echo out $i; echo err $i >&2; done; sleep 0.5; echo end";

    // Launch all at once.
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
    launch(&daemons[0], "dup", "echo on a");
    launch(&daemons[1], "dup", "echo on b");

    for i in 0..50 {
        let fin = daemons[i % 3].wait_final(&format!("job-{i:02}")).await;
        assert_eq!(fin.status(), Some(RunStatus::Succeeded), "{fin:?}");
    }
    for i in 0..50 {
        assert_same_copy(&gw, names[i % 3], &daemons[i % 3], &format!("job-{i:02}")).await;
    }
    daemons[0].wait_final("dup").await;
    daemons[1].wait_final("dup").await;
    assert_same_copy(&gw, "a", &daemons[0], "dup").await;
    assert_same_copy(&gw, "b", &daemons[1], "dup").await;

    let t = gw.token();
    let (status, list) = http_json(&gw.addr, "GET", "/runs", Some(&t)).await;
    assert_eq!(status, 200);
    let list = list.as_array().unwrap();
    let mut jobs: Vec<(String, String, String)> = list
        .iter()
        .filter(|r| r["runId"].as_str().unwrap().starts_with("job-"))
        .map(|r| {
            (
                r["runId"].as_str().unwrap().into(),
                r["host"].as_str().unwrap().into(),
                r["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    jobs.sort();
    let want: Vec<(String, String, String)> =
        (0..50).map(|i| (format!("job-{i:02}"), names[i % 3].to_owned(), "succeeded".to_owned())).collect();
    assert_eq!(jobs, want);
    let mut dup_hosts: Vec<&str> =
        list.iter().filter(|r| r["runId"] == "dup").map(|r| r["host"].as_str().unwrap()).collect();
    dup_hosts.sort();
    assert_eq!(dup_hosts, ["a", "b"]);
    assert_eq!(list.len(), 52);

    // A run ID on two hosts needs host=.
    let (status, body) = http_json(&gw.addr, "GET", "/runs/dup", Some(&t)).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "ambiguous-run-id", "{body}");
    let (status, body) = http_json(&gw.addr, "GET", "/runs/dup?host=b", Some(&t)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["host"], "b");
    let (status, body) = http_json(&gw.addr, "GET", "/runs/job-07", Some(&t)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["host"], "b");
    let mut ws = ws_connect(&gw.ws_url(&format!("/runs?runId=dup&token={t}")), &[]).await;
    let got = ws_read(&mut ws, |_| false).await;
    assert!(got.events.is_empty(), "{got:?}");
    assert!(got.error_code().is_some(), "an ambiguous subscription must be refused: {got:?}");

    let hs = hosts(&gw).await;
    assert_eq!(hs.len(), 3, "{hs:?}");
    for (i, h) in hs.iter().enumerate() {
        assert_eq!(h["host"], names[i]);
        assert_eq!(h["connected"], true);
        let want = (0..50).filter(|j| j % 3 == i).count() + usize::from(i < 2);
        assert_eq!(h["runs"], want, "{h}");
        assert_eq!(h["activeRuns"], 0, "{h}");
    }
}

// ---------------------------------------------------------------------------
// 8. Subscribing at the gateway before the run exists.
