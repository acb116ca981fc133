//! Issue 16, the daemon's side: `--upstream` given several times. The link
//! tries the URLs in turn, fails over when its gateway goes away, and comes
//! back quickly to a gateway that returns. Real gateways and a real daemon
//! on loopback; every check ends in `assert_same_copy`
//! (tests/common/copies.rs): the gateway holds exactly the host's events.
//!
//! The gateways here are local ones (each its own journals), sharing one
//! agent token through `[gateway] agent_tokens`: a gateway the host fails
//! over to has none of its runs, so it gets each one whole from the host's
//! journal.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::*;
use runtap::event::RunStatus;

/// The agent token every gateway of a test accepts.
const AGENT_TOKEN: &str = "failover-agent-token-0123456789";

fn gateway_config() -> String {
    format!("[gateway]\nagent_tokens = [\"{AGENT_TOKEN}\"]\n")
}

/// The token file the daemon reads, in `dir`.
fn token_file(dir: &Path) -> PathBuf {
    let path = dir.join("agent-token");
    std::fs::write(&path, AGENT_TOKEN).unwrap();
    path
}

/// A started daemon forwarding as `host` to `urls`, in that order.
fn start_host(host: &str, urls: &[String], token_file: &Path) -> Daemon {
    let mut d = Daemon::prepare("");
    for url in urls {
        d.extra_args.extend(["--upstream".to_owned(), url.clone()]);
    }
    d.extra_args.extend(["--host-id".to_owned(), host.to_owned()]);
    d.extra_args.extend(["--upstream-token-file".to_owned(), token_file.display().to_string()]);
    d.spawn();
    d
}

/// One line of the daemon's `/metrics`, by its exact name and labels.
async fn metric(d: &Daemon, line_start: &str) -> Option<String> {
    let (_, metrics) = http(d, "GET", "/metrics", None).await;
    metrics.lines().find_map(|l| l.strip_prefix(line_start).map(|v| v.trim().to_owned()))
}

/// Waits until the daemon reports being connected to `url`.
async fn wait_connected_to(d: &Daemon, url: &str) {
    let line = format!("runtap_upstream_url_connected{{url=\"{url}\"}} ");
    wait_until(
        || format!("the daemon to report its link connected to {url}:\n{}", d.log()),
        || async { metric(d, &line).await.as_deref() == Some("1") },
    )
    .await;
}

async fn reconnects(d: &Daemon) -> u64 {
    metric(d, "runtap_upstream_reconnects_total ").await.and_then(|v| v.parse().ok()).unwrap_or(0)
}

// ---------------------------------------------------------------------------
// (a) The first URL has nothing listening: the daemon goes on to the second.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_first_url_is_skipped_and_the_second_gets_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    // Prepared, never started: its port was free when picked and nothing listens on it.
    let dead = Gateway::prepare(&gateway_config());
    let live = Gateway::start_with(&gateway_config());
    let d = start_host("h1", &[dead.url(), live.url()], &token_file(tmp.path()));

    let out = d.run(&["run", "--id", "r1", "--", "sh", "-c", "seq 1 300; echo err >&2"]);
    assert!(out.status.success(), "{out:?}");
    assert_same_copy(&live, "h1", &d, "r1").await;
    wait_connected_to(&d, &live.url()).await;
    let dead_line = format!("runtap_upstream_url_connected{{url=\"{}\"}} ", dead.url());
    assert_eq!(metric(&d, &dead_line).await.as_deref(), Some("0"), "every configured URL is listed");
}

// ---------------------------------------------------------------------------
// (b) kill -9 of the gateway the daemon forwards to, mid-run: it fails over
// to the next URL, which gets every event of every run from the journal.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_gateway_mid_run_fails_over_to_the_next_url() {
    let tmp = tempfile::tempdir().unwrap();
    let stop = tmp.path().join("stop");
    let mut a = Gateway::start_with(&gateway_config());
    let b = Gateway::start_with(&gateway_config());
    let d = start_host("h1", &[a.url(), b.url()], &token_file(tmp.path()));

    let out = d.run(&["run", "--id", "before", "--", "sh", "-c", "seq 1 200"]);
    assert!(out.status.success(), "{out:?}");
    launch(&d, "long", &producer(&stop));
    wait_gateway_seq(&a, "h1", "long", 20).await;
    wait_connected_to(&d, &a.url()).await;
    assert!(gw_run(&b, "h1", "long").await.is_none(), "B is second: it has nothing yet");

    a.kill9();
    wait_connected_to(&d, &b.url()).await;
    // The run carries on, forwarded to B now.
    let at_kill = host_last_seq(&d, "long").await;
    wait_gateway_seq(&b, "h1", "long", at_kill + 20).await;
    touch(&stop);
    assert_eq!(d.wait_final("long").await.status(), Some(RunStatus::Succeeded));

    let long = assert_same_copy(&b, "h1", &d, "long").await;
    assert!(long.len() as u64 > at_kill + 20, "{} events", long.len());
    assert_same_copy(&b, "h1", &d, "before").await;
    assert!(host_connected(&b, "h1").await, "{:?}", hosts(&b).await);
}

// ---------------------------------------------------------------------------
// (c) The only gateway is down for a while (long enough for the backoff to
// reach its cap), then comes back on the same port: the daemon reconnects
// and catches up.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_back_after_an_outage_gets_the_host_back() {
    let tmp = tempfile::tempdir().unwrap();
    let stop = tmp.path().join("stop");
    let mut gw = Gateway::start_with(&gateway_config());
    let d = start_host("h1", &[gw.url()], &token_file(tmp.path()));
    launch(&d, "long", &producer(&stop));
    wait_gateway_seq(&gw, "h1", "long", 20).await;
    wait_connected_to(&d, &gw.url()).await;

    gw.kill9();
    // The outage: the daemon retries (its own counter says how often) and
    // the run writes on meanwhile.
    let before = reconnects(&d).await;
    wait_until(
        || format!("the daemon to retry the gateway 5 times:\n{}", d.log()),
        || async { reconnects(&d).await >= before + 5 },
    )
    .await;
    let at_restart = host_last_seq(&d, "long").await;

    gw.spawn();
    wait_connected_to(&d, &gw.url()).await;
    wait_gateway_seq(&gw, "h1", "long", at_restart).await;
    touch(&stop);
    assert_eq!(d.wait_final("long").await.status(), Some(RunStatus::Succeeded));
    assert_same_copy(&gw, "h1", &d, "long").await;
}
