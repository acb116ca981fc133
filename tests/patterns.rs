//! Issue 12, part 4: pattern subscriptions on `/ws` (`runId` ending in `*`),
//! at a daemon and at a gateway, with a real client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use runtap::event::{EventType, RunStatus};
use serde_json::{Value, json};

fn ends(got: &Received) -> Vec<&str> {
    got.controls.iter().filter(|c| c["type"] == "end").filter_map(|c| c["runId"].as_str()).collect()
}

fn seqs_of(got: &Received, run: &str) -> Vec<u64> {
    got.events.iter().filter(|e| e.run_id == run).map(|e| e.seq).collect()
}

async fn journal_seqs(d: &Daemon, id: &str) -> Vec<u64> {
    d.events(id).await.iter().map(|e| e.seq).collect()
}

async fn pattern_ws(url: &str, sub: Value) -> WsClient {
    let mut ws = ws_connect(url, &[]).await;
    ws_send_json(&mut ws, sub).await;
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_follows_active_and_later_runs_and_nothing_else() {
    let d = Daemon::start();
    let t = d.token();
    let stop = d.state_dir().join("stop-build-1");
    launch(&d, "build-1", &producer(&stop));
    launch(&d, "test-1", "echo not mine; sleep 30");
    d.wait_running("build-1").await;
    d.wait_running("test-1").await;

    let mut ws =
        pattern_ws(&d.ws_url(&format!("/ws?token={t}")), json!({"type": "subscribe", "runId": "build-*"})).await;
    let got = ws_read(&mut ws, |r| r.controls.iter().any(|c| c["type"] == "run")).await;
    assert_eq!(got.controls[0], json!({"type": "subscribed", "runId": "build-*"}));
    let run = &got.controls[1];
    assert_eq!((run["runId"].as_str(), run["status"].as_str()), (Some("build-1"), Some("running")), "{run}");
    let from = run["lastSeq"].as_u64().unwrap();
    assert!(from >= 2, "queued and running are before the subscription: {run}");

    // A run that starts later is followed from its first event.
    launch(&d, "build-2", "echo two; echo 2 >&2");
    touch(&stop);
    let more = ws_read(&mut ws, |r| ends(r).len() == 2).await;
    let mut all = got;
    all.events.extend(more.events);
    all.controls.extend(more.controls);
    assert_eq!(
        seqs_of(&all, "build-2"),
        journal_seqs(&d, "build-2").await,
        "every event of the later run, once, in order"
    );
    let build1 = journal_seqs(&d, "build-1").await;
    assert_eq!(seqs_of(&all, "build-1"), build1[from as usize..].to_vec(), "build-1 from where it was");
    assert!(all.events.iter().all(|e| e.run_id.starts_with("build-")), "only matching runs");
    assert!(all.controls.iter().all(|c| c["runId"] != "test-1"), "{:?}", all.controls);
    let end2 = all.controls.iter().find(|c| c["type"] == "end" && c["runId"] == "build-2").unwrap();
    assert_eq!(end2["lastSeq"].as_u64(), journal_seqs(&d, "build-2").await.last().copied());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_scoped_to_a_prefix_never_sees_other_runs_through_a_pattern() {
    let d = Daemon::start_with(
        r#"
[[stream.restricted_tokens]]
token = "team-a-token-0123456789"
run_prefix = "team-a-"
"#,
    );
    launch(&d, "team-b-active", "echo secret; sleep 30");
    d.wait_running("team-b-active").await;
    let mut ws =
        pattern_ws(&d.ws_url("/ws?token=team-a-token-0123456789"), json!({"type": "subscribe", "runId": "*"})).await;
    let ack = ws_read(&mut ws, |r| !r.controls.is_empty()).await;
    assert_eq!(ack.controls[0], json!({"type": "subscribed", "runId": "*"}));
    // Started in this order, so a run the scope let through would be
    // followed before team-a-1 ends.
    launch(&d, "team-b-later", "echo secret");
    launch(&d, "team-a-1", "echo mine");
    let got = ws_read(&mut ws, |r| ends(r).contains(&"team-a-1")).await;
    assert!(got.events.iter().all(|e| e.run_id == "team-a-1"), "{:?}", got.events);
    assert!(got.controls.iter().all(|c| c["runId"] == "team-a-1"), "{:?}", got.controls);
    assert_eq!(seqs_of(&got, "team-a-1"), journal_seqs(&d, "team-a-1").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn types_filter_what_a_subscription_gets() {
    let d = Daemon::start();
    let t = d.token();
    let url = d.ws_url(&format!("/ws?token={t}"));
    let mut statuses = pattern_ws(&url, json!({"type": "subscribe", "runId": "f-*", "types": ["status"]})).await;
    ws_read(&mut statuses, |r| !r.controls.is_empty()).await;
    let rt = bin();
    launch(&d, "f-1", &format!("echo out; echo err >&2; {rt} step start s1 && echo in-step && {rt} step end s1"));
    let got = ws_read(&mut statuses, |r| ends(r).contains(&"f-1")).await;
    let journal = d.events("f-1").await;
    let want: Vec<u64> = journal.iter().filter(|e| e.status().is_some()).map(|e| e.seq).collect();
    assert_eq!(got.seqs(), want, "status events only");
    assert_eq!(got.events.last().unwrap().status(), Some(RunStatus::Succeeded));
    assert!(got.controls.iter().all(|c| c["type"] == "end"), "{:?}", got.controls);

    // On one named run, after it ended: stdout and step events only.
    let mut named = pattern_ws(
        &url,
        json!({"type": "subscribe", "runId": "f-1", "types": ["stdout", "step_start", "step_complete"]}),
    )
    .await;
    let got = ws_read(&mut named, |r| ends(r).contains(&"f-1")).await;
    let want: Vec<u64> = journal
        .iter()
        .filter(|e| matches!(e.kind, EventType::Stdout | EventType::StepStart | EventType::StepComplete))
        .map(|e| e.seq)
        .collect();
    assert_eq!(got.seqs(), want, "exactly the events of those types, in order");
    let kinds: Vec<EventType> = got.events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventType::Stdout, EventType::StepStart, EventType::Stdout, EventType::StepComplete]);
    let data: Vec<&str> = got.events.iter().filter(|e| e.kind == EventType::Stdout).map(|e| e.data.as_str()).collect();
    assert_eq!(data, ["out\n", "in-step\n"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_patterns_and_filters_are_refused_clearly() {
    let d = Daemon::start();
    let t = d.token();
    let url = d.ws_url(&format!("/ws?token={t}"));
    for (msg, code) in [
        (json!({"type": "subscribe", "runId": "a*b*"}), "missing-run-id"),
        (json!({"type": "subscribe", "runId": "../*"}), "missing-run-id"),
        (json!({"type": "subscribe", "runId": "a-*", "since": 3}), "bad-request"),
        (json!({"type": "subscribe", "runId": "a-*", "types": ["nope"]}), "bad-request"),
        (json!({"type": "subscribe", "runId": "a-*", "types": []}), "bad-request"),
    ] {
        let mut ws = pattern_ws(&url, msg.clone()).await;
        let got = ws_read(&mut ws, |_| false).await;
        assert_eq!((got.error_code().as_deref(), got.close), (Some(code), Some(4400)), "{msg}");
    }
    // At most 16 patterns on one connection; the 17th is refused.
    let mut ws = ws_connect(&url, &[]).await;
    for i in 0..17 {
        ws_send_json(&mut ws, json!({"type": "subscribe", "runId": format!("p{i}-*")})).await;
    }
    let got = ws_read(&mut ws, |_| false).await;
    assert_eq!(got.controls.iter().filter(|c| c["type"] == "subscribed").count(), 16);
    assert_eq!((got.error_code().as_deref(), got.close), (Some("bad-request"), Some(4400)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribing_a_pattern_stops_following_its_runs() {
    let d = Daemon::start();
    let t = d.token();
    let mut ws = pattern_ws(&d.ws_url(&format!("/ws?token={t}")), json!({"type": "subscribe", "runId": "u-*"})).await;
    let stop = d.state_dir().join("stop-u-1");
    launch(&d, "u-1", &producer(&stop));
    ws_read(&mut ws, |r| seqs_of(r, "u-1").len() >= 3).await;
    ws_send_json(&mut ws, json!({"type": "unsubscribe", "runId": "u-*"})).await;
    ws_send_json(&mut ws, json!({"type": "subscribe", "runId": "v-*"})).await;
    let got = ws_read(&mut ws, |r| r.controls.iter().any(|c| c["type"] == "subscribed" && c["runId"] == "v-*")).await;
    assert!(got.controls.contains(&json!({"type": "unsubscribed", "runId": "u-*"})), "{:?}", got.controls);
    // u-2 starts before v-1: were u-* still followed, u-2 would come first.
    launch(&d, "u-2", "echo late");
    launch(&d, "v-1", "echo v");
    touch(&stop);
    let got = ws_read(&mut ws, |r| ends(r).contains(&"v-1")).await;
    assert!(
        got.events.iter().all(|e| e.run_id == "v-1"),
        "{:?}",
        got.events.iter().map(|e| &e.run_id).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_gateway_a_pattern_spans_hosts_or_keeps_to_one() {
    let gw = Gateway::start();
    let h1 = gw.start_host("h1");
    let h2 = gw.start_host("h2");
    let t = gw.token();
    let stop = h1.state_dir().join("stop");
    launch(&h1, "ci-1", &producer(&stop));
    wait_gateway_seq(&gw, "h1", "ci-1", 3).await;

    let url = gw.ws_url(&format!("/ws?token={t}"));
    let mut every = pattern_ws(&url, json!({"type": "subscribe", "runId": "ci-*"})).await;
    let mut only_h2 = pattern_ws(&url, json!({"type": "subscribe", "runId": "ci-*", "host": "h2"})).await;
    let got = ws_read(&mut every, |r| r.controls.iter().any(|c| c["type"] == "run")).await;
    let run = got.controls.iter().find(|c| c["type"] == "run").unwrap();
    assert_eq!((run["runId"].as_str(), run["host"].as_str()), (Some("ci-1"), Some("h1")), "{run}");
    let ack = ws_read(&mut only_h2, |r| !r.controls.is_empty()).await;
    assert_eq!(ack.controls[0], json!({"type": "subscribed", "runId": "ci-*", "host": "h2"}));

    launch(&h2, "ci-2", "echo on h2");
    touch(&stop);
    let got = ws_read(&mut only_h2, |r| ends(r).contains(&"ci-2")).await;
    assert!(got.events.iter().all(|e| e.run_id == "ci-2" && e.host.as_deref() == Some("h2")), "{:?}", got.events);
    assert_eq!(seqs_of(&got, "ci-2"), journal_seqs(&h2, "ci-2").await);
    let end = got.controls.iter().find(|c| c["type"] == "end").unwrap();
    assert_eq!(end["host"], "h2", "{end}");
    let got = ws_read(&mut every, |r| ends(r).len() == 2).await;
    assert_eq!(seqs_of(&got, "ci-2"), journal_seqs(&h2, "ci-2").await);
    assert!(!seqs_of(&got, "ci-1").is_empty());
}
