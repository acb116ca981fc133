//! Issue 3 acceptance: the HTTP/WebSocket listener, with a real client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use runtap::event::RunStatus;
use serde_json::json;

async fn finished_run(d: &Daemon, id: &str, script: &str) -> Vec<u64> {
    let out = d.run(&["run", "--id", id, "--", "sh", "-c", script]);
    assert!(out.status.code().is_some(), "{out:?}");
    d.events(id).await.iter().map(|e| e.seq).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_three_endpoints_and_all_three_token_carriers() {
    let d = Daemon::start();
    let t = d.token();
    let all = finished_run(&d, "e1", "echo one; echo two >&2; echo three").await;

    // 1. /runs?runId= with the token in the query.
    let mut ws = ws_connect(&d.ws_url(&format!("/runs?runId=e1&token={t}")), &[]).await;
    let got = ws_read(&mut ws, |_| false).await;
    assert_eq!(got.seqs(), all);
    assert_eq!(got.close, Some(1000), "single-run endpoints close normally after the final status");
    assert_eq!(got.events.last().unwrap().status(), Some(RunStatus::Succeeded));

    // 2. /api/v2/workflows/runs/ID/stream with a Bearer header, and since.
    let bearer = format!("Bearer {t}");
    let mut ws = ws_connect(&d.ws_url("/api/v2/workflows/runs/e1/stream?since=2"), &[("authorization", &bearer)]).await;
    let got = ws_read(&mut ws, |_| false).await;
    assert_eq!(got.seqs(), all[2..].to_vec());

    // 3. /ws with a first auth message, then subscribe (confirmed) and end.
    let mut ws = ws_connect(&d.ws_url("/ws"), &[]).await;
    ws_send_json(&mut ws, json!({"type": "auth", "token": t})).await;
    ws_send_json(&mut ws, json!({"type": "subscribe", "runId": "e1", "since": 0})).await;
    let got = ws_read(&mut ws, |r| r.controls.iter().any(|c| c["type"] == "end")).await;
    assert_eq!(got.controls[0]["type"], "authenticated");
    assert_eq!(got.controls[1], json!({"type": "subscribed", "runId": "e1", "since": 0}));
    assert_eq!(got.seqs(), all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_multiplexes_several_runs_and_unsubscribes() {
    let d = Daemon::start();
    let t = d.token();
    let a = finished_run(&d, "m-a", "echo a").await;
    let b = finished_run(&d, "m-b", "echo b; echo bb").await;
    let mut ws = ws_connect(&d.ws_url(&format!("/ws?token={t}")), &[]).await;
    ws_send_json(&mut ws, json!({"type": "subscribe", "runId": "m-a"})).await;
    ws_send_json(&mut ws, json!({"type": "subscribe", "runId": "m-b"})).await;
    let got = ws_read(&mut ws, |r| r.controls.iter().filter(|c| c["type"] == "end").count() == 2).await;
    let of = |id: &str| got.events.iter().filter(|e| e.run_id == id).map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(of("m-a"), a);
    assert_eq!(of("m-b"), b);
    ws_send_json(&mut ws, json!({"type": "unsubscribe", "runId": "m-a"})).await;
    let got = ws_read(&mut ws, |r| !r.controls.is_empty()).await;
    assert_eq!(got.controls[0], json!({"type": "unsubscribed", "runId": "m-a"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_row_of_the_spec() {
    let d = Daemon::start_with(
        r#"
[stream]
auth_timeout = "300ms"
max_frame_bytes = 1024
max_messages_per_second = 5
rate_burst = 5
[[stream.restricted_tokens]]
token = "team-a-token-0123456789"
run_prefix = "team-a-"
"#,
    );
    let t = d.token();
    finished_run(&d, "team-b-run", "echo secret").await;
    let dref = &d;
    let case = |path: String| async move {
        let mut ws = ws_connect(&dref.ws_url(&path), &[]).await;
        let got = ws_read(&mut ws, |_| false).await;
        (got.error_code(), got.close, got.events.len())
    };
    // unauthorized: wrong token in query; wrong token by message; no token at all.
    assert_eq!(case("/runs?runId=team-b-run&token=wrong".into()).await, (Some("unauthorized".into()), Some(4401), 0));
    let mut ws = ws_connect(&d.ws_url("/ws"), &[]).await;
    ws_send_json(&mut ws, json!({"type": "auth", "token": "wrong-token"})).await;
    let got = ws_read(&mut ws, |_| false).await;
    assert_eq!((got.error_code().as_deref(), got.close), (Some("unauthorized"), Some(4401)));
    let mut ws = ws_connect(&d.ws_url("/ws"), &[]).await;
    let got = ws_read(&mut ws, |_| false).await; // says nothing: auth deadline
    assert_eq!((got.error_code().as_deref(), got.close), (Some("unauthorized"), Some(4401)));
    // forbidden: a team-a token asking for a team-b run.
    let r = case("/runs?runId=team-b-run&token=team-a-token-0123456789".into()).await;
    assert_eq!(r, (Some("forbidden".into()), Some(4403), 0));
    // missing-run-id and bad-request.
    assert_eq!(case(format!("/runs?token={t}")).await, (Some("missing-run-id".into()), Some(4400), 0));
    assert_eq!(case(format!("/runs?runId=..%2Fx&token={t}")).await, (Some("bad-request".into()), Some(4400), 0));
    assert_eq!(case(format!("/runs?runId=x&since=-1&token={t}")).await, (Some("bad-request".into()), Some(4400), 0));
    for bad in ["not json", r#"{"type":"subscribe"}"#, r#"{"type":"launch","command":["rm"]}"#, &"[".repeat(40)] {
        let mut ws = ws_connect(&d.ws_url(&format!("/ws?token={t}")), &[]).await;
        ws_send_json(&mut ws, serde_json::Value::String(String::new())).await; // "" is not a message either
        let got = ws_read(&mut ws, |_| false).await;
        assert_eq!(got.close, Some(4400), "{bad}");
        let mut ws = ws_connect(&d.ws_url(&format!("/ws?token={t}")), &[]).await;
        {
            use futures_util::SinkExt;
            ws.send(Message::Text(bad.to_owned().into())).await.unwrap();
        }
        let got = ws_read(&mut ws, |_| false).await;
        let expected = if bad == r#"{"type":"subscribe"}"# { "missing-run-id" } else { "bad-request" };
        assert_eq!((got.error_code().as_deref(), got.close), (Some(expected), Some(4400)), "{bad}");
    }
    // message-too-large: one frame over 1024 bytes.
    let mut ws = ws_connect(&d.ws_url(&format!("/ws?token={t}")), &[]).await;
    ws_send_json(&mut ws, json!({"type": "subscribe", "runId": "x".repeat(2000)})).await;
    let got = ws_read(&mut ws, |_| false).await;
    assert_eq!((got.error_code().as_deref(), got.close), (Some("message-too-large"), Some(1009)));
    // rate-limited: a burst of 20 messages against 5/s, burst 5.
    let mut ws = ws_connect(&d.ws_url(&format!("/ws?token={t}")), &[]).await;
    for _ in 0..20 {
        ws_send_json(&mut ws, json!({"type": "auth", "token": t})).await;
    }
    let got = ws_read(&mut ws, |_| false).await;
    assert_eq!((got.error_code().as_deref(), got.close), (Some("rate-limited"), Some(4429)));
    // The daemon is fine afterwards.
    let (status, body) = http(&d, "GET", "/healthz", None).await;
    assert_eq!(status, 200, "{body}");
    let (_, metrics) = http(&d, "GET", "/metrics", None).await;
    for m in ["runtap_auth_failures_total 3", "runtap_rate_limited_total 1", "runtap_oversized_messages_total 1"] {
        assert!(metrics.contains(m), "{m} missing from:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_subscriber_sees_exactly_what_early_one_saw_and_subscribe_before_start_waits() {
    let d = Daemon::start();
    let t = d.token();
    // Subscribed before the run exists.
    let mut early = ws_connect(&d.ws_url(&format!("/runs?runId=lt&token={t}")), &[]).await;
    let early_task = tokio::spawn(async move { ws_read(&mut early, |_| false).await });
    d.run(&["run", "--id", "lt", "--", "sh", "-c", "for i in $(seq 1 500); do echo line $i; done"]);
    let early = early_task.await.unwrap();
    let mut late = ws_connect(&d.ws_url(&format!("/runs?runId=lt&token={t}")), &[]).await;
    let late = ws_read(&mut late, |_| false).await;
    assert_eq!(early.events, late.events);
    let n = early.events.len() as u64;
    assert_eq!(early.seqs(), (1..=n).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_lines_without_a_gap() {
    let d = Daemon::start();
    let t = d.token();
    let mut ws = ws_connect(&d.ws_url(&format!("/runs?runId=big&token={t}")), &[]).await;
    let reader = tokio::spawn(async move { ws_read(&mut ws, |_| false).await });
    let out = d.run(&["run", "--id", "big", "--", "seq", "1", "20000"]);
    assert!(out.status.success());
    let got = reader.await.unwrap();
    let n = got.events.len() as u64;
    assert_eq!(got.seqs(), (1..=n).collect::<Vec<_>>());
    let text: String =
        got.events.iter().filter(|e| e.kind == runtap::event::EventType::Stdout).map(|e| e.data.clone()).collect();
    let expected: String = (1..=20000).map(|i| format!("{i}\n")).collect();
    assert_eq!(text, expected);
}

/// Reads a whole stream cheaply (seq from the line prefix, no full parse),
/// as a dashboard that keeps up would; returns (seqs, last frame).
async fn fast_read(mut ws: WsClient) -> (Vec<u64>, String, Option<u16>) {
    use futures_util::StreamExt;
    let (mut seqs, mut last, mut close) = (Vec::new(), String::new(), None);
    tokio::time::timeout(Duration::from_secs(240), async {
        while let Some(Ok(msg)) = ws.next().await {
            match msg {
                Message::Text(t) => {
                    seqs.push(runtap::journal::line_seq(t.as_bytes()).unwrap_or_else(|| panic!("not an event: {t}")));
                    last = t.to_string();
                }
                Message::Close(f) => {
                    close = f.map(|f| u16::from(f.code));
                    break;
                }
                _ => {}
            }
        }
    })
    .await
    .expect("fast reader in time");
    (seqs, last, close)
}

/// A counter from `/metrics`.
async fn metric(d: &Daemon, name: &str) -> u64 {
    let (_, text) = http(d, "GET", "/metrics", None).await;
    text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0)
}

/// Issue 11: slow is not stalled. With the default queue bounds, a fast
/// subscriber beside a stalled one gets all 100 MB (falling behind is
/// caught up from the journal), and the stalled one, which takes nothing
/// for `write_stall_timeout`, is told `lagged` with where it stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_subscriber_gets_lagged_while_fast_one_and_job_finish() {
    let d = Daemon::start_with("[stream]\nwrite_stall_timeout = \"5s\"\n");
    let t = d.token();
    // Stalled: completes the handshake, then reads nothing until told.
    let mut stalled = ws_connect(&d.ws_url(&format!("/runs?runId=flood&token={t}")), &[]).await;
    let fast = ws_connect(&d.ws_url(&format!("/runs?runId=flood&token={t}")), &[]).await;
    let fast_task = tokio::spawn(fast_read(fast));
    // ~100 MB of 100-byte lines.
    let job = "yes 'the quick brown fox jumps over the lazy dog, again and again, for a hundred bytes or so....' | head -c 100000000";
    let mut cmd = d.cli();
    cmd.args(["run", "--id", "flood", "--", "sh", "-c", job]).stdin(std::process::Stdio::null());
    // 100 MB through a debug build on a loaded 2-core machine: allow minutes.
    let job = tokio::task::spawn_blocking(move || output_with_timeout(cmd, Duration::from_secs(240)));
    // Once it has taken nothing for write_stall_timeout, it is told so,
    // and has that long again to read what it was sent.
    wait_until(
        || format!("a write stall to be detected:\n{}", d.log()),
        || async { metric(&d, "runtap_write_stalls_total").await >= 1 },
    )
    .await;
    let got = ws_read(&mut stalled, |_| false).await;
    assert_eq!(got.close, Some(1013));
    let err = got.controls.iter().find(|c| c["code"] == "lagged").expect("lagged error event");
    assert_eq!(err["runId"], "flood");
    let lagged_at = err["lastSeq"].as_u64().unwrap();
    assert_eq!(got.seqs(), (1..=lagged_at).collect::<Vec<_>>(), "no gap before the lag, and nothing after it");
    let out = job.await.unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), 100_000_000, "the job's own output through `runtap run` is complete");
    let (seqs, last, close) = fast_task.await.unwrap();
    let n = seqs.len() as u64;
    assert_eq!(close, Some(1000));
    assert!(seqs.iter().copied().eq(1..=n), "fast subscriber has everything, in order");
    assert!(last.contains(r#""type":"status","data":"succeeded""#), "{last}");
    assert!(lagged_at < n);
    assert_eq!(metric(&d, "runtap_lagged_disconnects_total").await, 1, "only the stalled one was cut off");
    // It can resume from lastSeq and get the rest exactly.
    let again = ws_connect(&d.ws_url(&format!("/runs?runId=flood&since={lagged_at}&token={t}")), &[]).await;
    let (rest, _, _) = fast_read(again).await;
    assert!(rest.iter().copied().eq(lagged_at + 1..=n));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peer_is_closed_by_heartbeat_but_live_one_is_kept() {
    let d = Daemon::start_with("[stream]\nping_interval = \"100ms\"\nping_timeout = \"400ms\"\n");
    let t = d.token();
    d.run(&["run", "--detach", "--id", "hb", "--", "sleep", "1000"]);
    let mut live = ws_connect(&d.ws_url(&format!("/runs?runId=hb&token={t}")), &[]).await;
    let silent = ws_connect(&d.ws_url(&format!("/runs?runId=hb&token={t}")), &[]).await;
    // The live client reads (and so answers pings) for a while: still open.
    let started = std::time::Instant::now();
    let mut pings_seen = 0;
    {
        use futures_util::StreamExt;
        while started.elapsed() < Duration::from_millis(1200) {
            match tokio::time::timeout(Duration::from_millis(1300), live.next()).await {
                Ok(Some(Ok(Message::Ping(_)))) => pings_seen += 1,
                Ok(Some(Ok(Message::Close(c)))) => panic!("live client closed: {c:?}"),
                Ok(Some(Ok(_))) => {}
                other => panic!("live client: {other:?}"),
            }
        }
    }
    assert!(pings_seen >= 5, "server pings every 100ms; saw {pings_seen}");
    // The silent one never answered: the server gave up on it.
    drop(silent);
    let (_, metrics) = http(&d, "GET", "/metrics", None).await;
    let line = metrics.lines().find(|l| l.starts_with("runtap_heartbeat_timeouts_total")).unwrap();
    assert_ne!(line, "runtap_heartbeat_timeouts_total 0", "{metrics}");
    d.run(&["cancel", "hb"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoints() {
    let d = Daemon::start();
    let t = d.token();
    let (s, body) = http(&d, "GET", "/healthz", None).await;
    assert_eq!(s, 200);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok");
    assert!(health["runs"].is_number() && health["connections"].is_number(), "{health}");
    let (s, body) = http(&d, "GET", "/metrics", None).await;
    assert_eq!(s, 200);
    assert!(body.contains("# TYPE runtap_connections gauge") && body.contains("runtap_runs{status=\"running\"}"));

    finished_run(&d, "h1", "exit 2").await;
    d.run(&["run", "--detach", "--id", "h2", "--", "sleep", "1000"]);
    d.wait_running("h2").await;
    assert_eq!(http(&d, "GET", "/runs", None).await.0, 401);
    assert_eq!(http(&d, "GET", "/runs", Some("wrong")).await.0, 401);
    let (s, body) = http(&d, "GET", "/runs", Some(&t)).await;
    assert_eq!(s, 200);
    let runs: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(runs.len(), 2);
    let (s, body) = http(&d, "GET", "/runs/h1", Some(&t)).await;
    assert_eq!(s, 200);
    let run: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((run["status"].as_str(), run["exitCode"].as_i64()), (Some("failed"), Some(2)));
    assert_eq!(http(&d, "GET", "/runs/nope", Some(&t)).await.0, 404);
    assert_eq!(http(&d, "GET", "/runs/..%2Fetc", Some(&t)).await.0, 400);
    // Cancel: 200 for active, 404 for unknown, 409 with the final status for finished.
    let (s, body) = http(&d, "POST", "/runs/h2/cancel?reason=http-test", Some(&t)).await;
    assert_eq!(s, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["runId"], "h2");
    let ev = d.wait_final("h2").await;
    assert_eq!((ev.status(), ev.reason.as_deref()), (Some(RunStatus::Cancelled), Some("http-test")));
    assert_eq!(http(&d, "POST", "/runs/nope/cancel", Some(&t)).await.0, 404);
    let (s, body) = http(&d, "POST", "/runs/h1/cancel", Some(&t)).await;
    assert_eq!(s, 409);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((v["status"].as_str(), v["code"].as_str()), (Some("failed"), Some("finished")));
    assert_eq!(http(&d, "POST", "/runs/h1/cancel", None).await.0, 401);
    // No launching over HTTP; unknown paths are JSON 404s.
    assert_eq!(http(&d, "POST", "/runs", Some(&t)).await.0, 405);
    let (s, body) = http(&d, "GET", "/nope", None).await;
    assert_eq!(s, 404);
    assert!(body.contains("\"code\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_and_origin_allow_list() {
    let d = Daemon::start_with("[stream]\nmax_connections = 2\nallowed_origins = [\"https://good.example\"]\n");
    let t = d.token();
    let url = d.ws_url(&format!("/runs?runId=pending&token={t}"));
    let a = ws_connect(&url, &[("origin", "https://good.example")]).await;
    let b = ws_connect(&url, &[]).await;
    // Third: refused before any upgrade.
    let (s, body) = http(&d, "GET", "/healthz", None).await;
    assert_eq!(s, 503, "{body}");
    assert!(body.contains("too-many-connections"));
    drop((a, b));
    // Slots free up once the server notices the closes.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if http(&d, "GET", "/healthz", None).await.0 == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slots never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.clone().into_client_request().unwrap();
    req.headers_mut().insert("origin", http::HeaderValue::from_static("https://evil.example"));
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected a 403, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_are_held() {
    const N: usize = 10_000;
    let _ = runtap::sys::raise_fd_limit();
    let d = Daemon::start();
    let t = d.token();
    let url = d.ws_url(&format!("/runs?runId=idle-target&token={t}"));
    // Open them 200 at a time; each waits for a run that does not exist yet.
    let mut conns = Vec::with_capacity(N);
    for _ in 0..N / 200 {
        let batch = (0..200).map(|_| tokio::spawn(tokio_tungstenite::connect_async(url.clone())));
        for h in batch.collect::<Vec<_>>() {
            let (ws, _) = tokio::time::timeout(WAIT, h).await.unwrap().unwrap().unwrap();
            conns.push(ws);
        }
    }
    // The client sees its 101 a moment before the server's session starts.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (s, body) = http(&d, "GET", "/healthz", None).await;
        assert_eq!(s, 200);
        let health: serde_json::Value = serde_json::from_str(&body).unwrap();
        if health["websockets"].as_u64() == Some(N as u64) && health["subscriptions"].as_u64() == Some(N as u64) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not all sessions registered: {health}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // All of them are live: a run starts and every one receives it.
    d.run(&["run", "--id", "idle-target", "--", "echo", "hi"]);
    let handles: Vec<_> = conns.into_iter().map(|ws| tokio::spawn(fast_read(ws))).collect();
    for h in handles {
        let (seqs, last, close) = h.await.unwrap();
        assert_eq!(close, Some(1000));
        assert_eq!(seqs, vec![1, 2, 3, 4]);
        assert!(last.contains("succeeded"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_per_websocket_are_capped() {
    let d = Daemon::start_with("[stream]\nrate_burst = 200\n");
    let t = d.token();
    let mut ws = ws_connect(&d.ws_url(&format!("/ws?token={t}")), &[]).await;
    for i in 0..65 {
        ws_send_json(&mut ws, json!({"type": "subscribe", "runId": format!("pending-{i}")})).await;
    }
    let got = ws_read(&mut ws, |_| false).await;
    assert_eq!(got.controls.iter().filter(|c| c["type"] == "subscribed").count(), 64);
    assert_eq!((got.error_code().as_deref(), got.close), (Some("bad-request"), Some(4400)));
}
