//! Issue 5 acceptance, part 2: what the gateway serves — routed cancels,
//! tokens, subscriptions that wait for a run or a host, epochs and reused
//! run IDs — with a real gateway, real daemons and a hand-made agent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use runtap::event::RunStatus;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_through_the_gateway() {
    let gw = Gateway::start();
    let mut h1 = gw.start_host("h1");
    let t = gw.token();
    launch(&h1, "victim", "echo started; sleep 30");
    wait_gateway_seq(&gw, "h1", "victim", 3).await;

    // No token, or a host token: refused before anything reaches the host.
    let (status, _) = http_to(&gw.addr, "POST", "/runs/victim/cancel?host=h1", None).await;
    assert_eq!(status, 401);
    let (status, _) = http_to(&gw.addr, "POST", "/runs/victim/cancel?host=h1", Some(&gw.agent_token())).await;
    assert_eq!(status, 403);

    let (status, body) = http_json(&gw.addr, "POST", "/runs/victim/cancel?host=h1&reason=from-gw", Some(&t)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["runId"], "victim", "{body}");
    let fin = h1.wait_final("victim").await;
    assert_eq!(fin.status(), Some(RunStatus::Cancelled), "{fin:?}");
    let events = assert_same_copy(&gw, "h1", &h1, "victim").await;
    assert_eq!(events.last().unwrap()["data"], "cancelled");

    // A finished run: 409 with its final status; twice is harmless.
    let (status, body) = http_json(&gw.addr, "POST", "/runs/victim/cancel?host=h1", Some(&t)).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["status"], "cancelled", "{body}");
    // Without host=, the ID is unique, so it is found too.
    let (status, body) = http_json(&gw.addr, "POST", "/runs/victim/cancel", Some(&t)).await;
    assert_eq!(status, 409, "{body}");

    // Unknown run, unknown host: 404.
    let (status, body) = http_json(&gw.addr, "POST", "/runs/nope/cancel?host=h1", Some(&t)).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = http_json(&gw.addr, "POST", "/runs/victim/cancel?host=nohost", Some(&t)).await;
    assert_eq!(status, 404, "{body}");

    // The host is down: 503.
    h1.stop();
    wait_connected(&gw, "h1", false).await;
    let (status, body) = http_json(&gw.addr, "POST", "/runs/victim/cancel?host=h1", Some(&t)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "host-offline", "{body}");
}

/// A host that never answers a routed cancel: 504 after `cancel_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_to_a_silent_host_times_out_with_504() {
    let gw = Gateway::start_with("[gateway]\ncancel_timeout = \"1s\"\n");
    let mut ws = agent_connect(&gw, &gw.agent_token()).await;
    agent_hello(&mut ws, "silent", "e1", &[("r", 2)]).await;
    agent_run(&mut ws, "r").await;
    agent_send(&mut ws, fake_event("r", 1)).await;
    agent_send(&mut ws, fake_event("r", 2)).await;
    agent_wait_ack(&mut ws, "r", 2).await;
    let started = std::time::Instant::now();
    let (status, body) = http_json(&gw.addr, "POST", "/runs/r/cancel?host=silent", Some(&gw.token())).await;
    assert_eq!(status, 504, "{body}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(900), "{:?}", started.elapsed());
    // The request did reach the host.
    let msg = agent_next(&mut ws).await.unwrap();
    assert_eq!(msg["type"], "cancel", "{msg}");
    assert_eq!(msg["runId"], "r", "{msg}");
}

// ---------------------------------------------------------------------------
// Exactly-once at the protocol level: resends are dropped, gaps refused.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resent_events_are_dropped_and_a_gap_is_refused() {
    let gw = Gateway::start();
    let token = gw.agent_token();

    let mut ws = agent_connect(&gw, &token).await;
    let acked = agent_hello(&mut ws, "fake", "e1", &[("r", 3)]).await;
    assert!(acked.is_empty(), "{acked:?}");
    agent_run(&mut ws, "r").await;
    for seq in 1..=3 {
        agent_send(&mut ws, fake_event("r", seq)).await;
    }
    agent_wait_ack(&mut ws, "r", 3).await;
    drop(ws);

    // Reconnect; the host resends everything (at-least-once on the wire).
    let mut ws = agent_connect(&gw, &token).await;
    let acked = agent_hello(&mut ws, "fake", "e1", &[("r", 6)]).await;
    assert_eq!(acked.get("r"), Some(&3));
    agent_run(&mut ws, "r").await;
    for seq in 1..=5 {
        agent_send(&mut ws, fake_event("r", seq)).await;
    }
    agent_send(&mut ws, fake_final("r", 6)).await;
    agent_wait_ack(&mut ws, "r", 6).await;
    let ours = journal(&gw.events_path("fake", "r"));
    assert_eq!(seqs(&ours), (1..=6).collect::<Vec<_>>());
    for (i, e) in ours.iter().enumerate() {
        let mut want = if i == 5 { fake_final("r", 6) } else { fake_event("r", i as u64 + 1) };
        want["host"] = json!("fake");
        assert_eq!(e, &want);
    }

    // A gap (seq 3 after 1) is a protocol error: nothing more is appended.
    agent_run(&mut ws, "g").await;
    agent_send(&mut ws, fake_event("g", 1)).await;
    agent_send(&mut ws, fake_event("g", 3)).await;
    let mut closed = false;
    for _ in 0..10 {
        if agent_next(&mut ws).await.is_none() {
            closed = true;
            break;
        }
    }
    assert!(closed, "the gateway kept a session that skipped a seq");
    assert_eq!(gw_last_seq(&gw, "fake", "g").await, 1);
    assert_eq!(seqs(&journal(&gw.events_path("fake", "g"))), vec![1]);
}

// ---------------------------------------------------------------------------
// 6. Tokens and roles.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_and_viewer_tokens_are_distinct() {
    let gw = Gateway::start();
    let tmp = tempfile::tempdir().unwrap();
    let wrong = tmp.path().join("wrong-token");
    std::fs::write(&wrong, "0123456789abcdef0123456789abcdef\n").unwrap();
    let viewer_file = gw.state_dir().join("token");

    let mut bad = Daemon::prepare("");
    bad.extra_args = upstream_args(&gw.url(), "intruder", &wrong);
    bad.spawn();
    let mut viewer = Daemon::prepare("");
    viewer.extra_args = upstream_args(&gw.url(), "peeker", &viewer_file);
    viewer.spawn();
    let good = gw.start_host("good");

    // Both are refused, repeatedly (they retry), and say why.
    wait_until(
        || format!("refusals in the logs:\n--- intruder\n{}\n--- peeker\n{}", bad.log(), viewer.log()),
        || async { bad.log().matches("unauthorized").count() >= 2 && viewer.log().matches("forbidden").count() >= 2 },
    )
    .await;
    wait_connected(&gw, "good", true).await;
    let listed: Vec<String> = hosts(&gw).await.iter().map(|h| h["host"].as_str().unwrap().to_owned()).collect();
    assert_eq!(listed, vec!["good".to_owned()]);

    // The same by hand: error event, then close 4401 / 4403.
    let mut ws = agent_connect(&gw, "0123456789abcdef0123456789abcdef").await;
    let got = ws_read(&mut ws, |_| false).await;
    assert_eq!(got.error_code().as_deref(), Some("unauthorized"), "{got:?}");
    assert_eq!(got.close, Some(4401));
    let mut ws = agent_connect(&gw, &gw.token()).await;
    let got = ws_read(&mut ws, |_| false).await;
    assert_eq!(got.error_code().as_deref(), Some("forbidden"), "{got:?}");
    assert_eq!(got.close, Some(4403));
    let mut ws = ws_connect(&gw.ws_url("/agent"), &[]).await;
    let got = ws_read(&mut ws, |_| false).await;
    assert_eq!(got.close, Some(4401), "{got:?}");

    // A host token reads nothing.
    let out = good.run(&["run", "--id", "secret", "--", "echo", "hi"]);
    assert!(out.status.success());
    assert_same_copy(&gw, "good", &good, "secret").await;
    let agent = gw.agent_token();
    for path in ["/runs", "/runs/secret", "/runs/secret?host=good", "/hosts"] {
        let (status, body) = http_to(&gw.addr, "GET", path, Some(&agent)).await;
        assert_eq!(status, 403, "{path}: {body}");
    }
    let mut ws = ws_connect(&gw.ws_url(&format!("/runs?runId=secret&host=good&token={agent}")), &[]).await;
    let got = ws_read(&mut ws, |_| false).await;
    assert!(got.events.is_empty(), "{got:?}");
    assert_eq!(got.error_code().as_deref(), Some("forbidden"), "{got:?}");
    assert_eq!(got.close, Some(4403));
    let mut ws = ws_connect(&gw.ws_url(&format!("/ws?token={agent}")), &[]).await;
    ws_send_json(&mut ws, json!({"type": "subscribe", "runId": "secret", "host": "good"})).await;
    let got = ws_read(&mut ws, |_| false).await;
    assert!(got.events.is_empty(), "{got:?}");
    assert_eq!(got.close, Some(4403), "{got:?}");
    // And the viewer token still works.
    let (status, _) = http_to(&gw.addr, "GET", "/runs", Some(&gw.token())).await;
    assert_eq!(status, 200);
}

// ---------------------------------------------------------------------------
// 7. 50 concurrent runs across 3 hosts; a run ID on two hosts.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_at_the_gateway_before_the_run_exists() {
    let gw = Gateway::start();
    let h1 = gw.start_host("h1");
    let _h2 = gw.start_host("h2");
    wait_connected(&gw, "h1", true).await;
    let t = gw.token();

    let mut by_host = ws_connect(&gw.ws_url(&format!("/runs?runId=early&host=h1&token={t}")), &[]).await;
    let mut without_host = ws_connect(&gw.ws_url(&format!("/runs?runId=early&token={t}")), &[]).await;
    let mut multi = ws_connect(&gw.ws_url(&format!("/ws?token={t}")), &[]).await;
    ws_send_json(&mut multi, json!({"type": "subscribe", "runId": "early"})).await;
    let ack = ws_read(&mut multi, |r| !r.controls.is_empty()).await;
    assert_eq!(ack.controls[0]["type"], "subscribed", "{ack:?}");

    launch(&h1, "early", "echo one; sleep 0.3; echo two >&2; sleep 0.3; echo three");
    h1.wait_final("early").await;
    let theirs = assert_same_copy(&gw, "h1", &h1, "early").await;
    let want = with_host(&theirs, "h1");
    for (name, ws) in [("host=h1", &mut by_host), ("no host", &mut without_host)] {
        let got = ws_read(ws, |_| false).await;
        assert_eq!(got.events, want, "{name}: {got:?}");
        assert_eq!(got.close, Some(1000), "{name}");
    }
    let got = ws_read(&mut multi, |r| r.controls.iter().any(|c| c["type"] == "end")).await;
    assert_eq!(got.events, want);
}

/// A viewer may subscribe to a host that has not connected yet (a dashboard
/// started before the build hosts): the spec says subscribing to a run that
/// does not exist yet waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_with_host_waits_for_a_host_not_seen_yet() {
    let gw = Gateway::start();
    let t = gw.token();
    let mut ws = ws_connect(&gw.ws_url(&format!("/runs?runId=first&host=late&token={t}")), &[]).await;
    let late = gw.start_host("late");
    wait_connected(&gw, "late", true).await;
    let out = late.run(&["run", "--id", "first", "--", "sh", "-c", "echo hello"]);
    assert!(out.status.success());
    let theirs = assert_same_copy(&gw, "late", &late, "first").await;
    let got = ws_read(&mut ws, |_| false).await;
    assert_eq!(got.error_code(), None, "{got:?}");
    assert_eq!(got.events.len(), theirs.len(), "{got:?}");
}

// ---------------------------------------------------------------------------
// A host whose state dir is wiped starts a new epoch: its run IDs and seqs
// start over, and the gateway must not dedupe them against the old ones.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_host_starts_a_new_epoch_at_the_gateway() {
    let gw = Gateway::start();
    let mut h1 = gw.start_host("h1");
    let out = h1.run(&["run", "--id", "r", "--", "sh", "-c", "seq 1 50"]);
    assert!(out.status.success());
    assert_same_copy(&gw, "h1", &h1, "r").await;
    let old_epoch = hosts(&gw).await[0]["epoch"].clone();

    h1.stop();
    std::fs::remove_dir_all(h1.state_dir()).unwrap();
    h1.spawn();
    // The same run ID again, shorter: seqs 1..=N anew.
    let out = h1.run(&["run", "--id", "r", "--", "sh", "-c", "echo reborn"]);
    assert!(out.status.success());
    let theirs = assert_same_copy(&gw, "h1", &h1, "r").await;
    assert_eq!(theirs[2]["data"], "reborn\n");
    let hs = hosts(&gw).await;
    assert_eq!(hs.len(), 1, "{hs:?}");
    assert_ne!(hs[0]["epoch"], old_epoch, "{hs:?}");
    assert_eq!(hs[0]["runs"], 1, "the old epoch's runs are archived, not listed: {hs:?}");
}

/// A host reuses a run ID after its retention deleted the old run: the
/// gateway must not resume the new run at the old run's seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_id_reused_after_host_retention_is_a_new_run_at_the_gateway() {
    let gw = Gateway::start();
    let mut h1 = gw.prepare_host("h1");
    h1.extra_config = "[journal]\nretention_max_age = \"1s\"\nretention_check_interval = \"200ms\"\n".into();
    h1.spawn();
    let out = h1.run(&["run", "--id", "nightly", "--", "sh", "-c", "seq 1 50"]);
    assert!(out.status.success());
    assert_same_copy(&gw, "h1", &h1, "nightly").await;
    // Wait for the host's retention to delete it.
    let path = host_journal_path(&h1, "nightly");
    wait_until(
        || "host retention to delete the run".to_string(),
        || {
            let gone = !path.exists();
            async move { gone }
        },
    )
    .await;
    let out = h1.run(&["run", "--id", "nightly", "--", "sh", "-c", "echo second"]);
    assert!(out.status.success());
    let theirs = assert_same_copy(&gw, "h1", &h1, "nightly").await;
    assert!(theirs.iter().any(|e| e["data"] == "second\n"), "{theirs:?}");
}
