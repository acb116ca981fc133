//! A gateway's open files do not grow with the runs it stores. Found by
//! the soak (issue 17.4): a host's link session kept every run's journal
//! open for as long as the link lived, so the gateway held one more fd per
//! run forwarded (78 more after 88 runs in 15 s) until it ran out.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

const RUNS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_closes_a_runs_journal_once_it_is_over() {
    let gw = Gateway::start();
    let d = gw.start_host("h1");
    let out = d.run(&["run", "--id", "warm-up", "--", "sh", "-c", "echo warm"]);
    assert!(out.status.success(), "{out:?}");
    assert_same_copy(&gw, "h1", &d, "warm-up").await;
    let before = fd_count(gw.pid());

    for i in 0..RUNS {
        let out = d.run(&["run", "--id", &format!("run-{i}"), "--", "sh", "-c", "seq 1 20"]);
        assert!(out.status.success(), "{out:?}");
    }
    for i in 0..RUNS {
        assert_same_copy(&gw, "h1", &d, &format!("run-{i}")).await;
    }
    // Closed once the final event is acknowledged (the next ack tick).
    wait_until(
        || format!("gateway fds back near {before}: {} after {RUNS} runs over one link", fd_count(gw.pid())),
        || async { fd_count(gw.pid()) <= before + 4 },
    )
    .await;
    assert!(host_connected(&gw, "h1").await, "one link session throughout");

    // And a finished run's copy still serves, and a later run still flows.
    assert_same_copy(&gw, "h1", &d, "run-0").await;
    let out = d.run(&["run", "--id", "after", "--", "sh", "-c", "echo after"]);
    assert!(out.status.success(), "{out:?}");
    assert_same_copy(&gw, "h1", &d, "after").await;
}
