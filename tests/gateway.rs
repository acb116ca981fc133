//! Issue 5 acceptance: upstream forwarding and the central gateway, with a
//! real gateway and real daemons on loopback.
//!
//! The central check is [`assert_same_copy`]: the gateway's copy of a host's
//! run holds exactly the host's events (seqs 1..=N, each once, identical
//! except for the added `"host"`), both in its journal file and as served to
//! a subscriber.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use futures_util::{SinkExt, StreamExt};
use runtap::event::{Event, RunStatus};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------
// Helpers

/// A job that writes a numbered line every ~10 ms until `stop` exists.
fn producer(stop: &Path) -> String {
    format!(
        "i=0; while [ ! -e {} ]; do i=$((i+1)); echo line $i; sleep 0.01; done; echo stopped after $i",
        stop.display()
    )
}

fn touch(p: &Path) {
    std::fs::write(p, b"").unwrap();
}

/// `runtap run --detach --id ID -- sh -c SCRIPT` against `d`.
fn launch(d: &Daemon, id: &str, script: &str) {
    let out = d.run(&["run", "--detach", "--id", id, "--", "sh", "-c", script]);
    assert!(out.status.success(), "launch {id}: {out:?}\n{}", d.log());
}

/// One journal file, parsed line by line.
fn journal(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: bad line {l:?}: {e}", path.display())))
        .collect()
}

fn host_journal_path(d: &Daemon, run: &str) -> PathBuf {
    d.state_dir().join("runs").join(run).join("events.jsonl")
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

/// The gateway's status of a run (GET /runs/ID?host=H), if it has it.
async fn gw_run(gw: &Gateway, host: &str, run: &str) -> Option<Value> {
    let (status, body) = http_json(&gw.addr, "GET", &format!("/runs/{run}?host={host}"), Some(&gw.token())).await;
    (status == 200).then_some(body)
}

async fn gw_last_seq(gw: &Gateway, host: &str, run: &str) -> u64 {
    gw_run(gw, host, run).await.and_then(|v| v["lastSeq"].as_u64()).unwrap_or(0)
}

/// The host daemon's last seq of a run, from its own HTTP API.
async fn host_last_seq(d: &Daemon, run: &str) -> u64 {
    let (status, body) = http(d, "GET", &format!("/runs/{run}"), Some(&d.token())).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["lastSeq"].as_u64().unwrap()
}

/// Waits until the gateway holds at least `n` events of the run.
async fn wait_gateway_seq(gw: &Gateway, host: &str, run: &str, n: u64) {
    wait_until(
        || format!("gateway to hold {n} events of {host}/{run}:\n{}", gw.log()),
        || async { gw_last_seq(gw, host, run).await >= n },
    )
    .await;
}

/// Waits until the host itself has journaled at least `n` events of the run.
async fn wait_host_seq(d: &Daemon, run: &str, n: u64) {
    wait_until(|| format!("host to journal {n} events of {run}"), || async { host_last_seq(d, run).await >= n }).await;
}

async fn hosts(gw: &Gateway) -> Vec<Value> {
    let (status, body) = http_json(&gw.addr, "GET", "/hosts", Some(&gw.token())).await;
    assert_eq!(status, 200, "{body}");
    body.as_array().unwrap().clone()
}

async fn host_connected(gw: &Gateway, host: &str) -> bool {
    hosts(gw).await.iter().any(|h| h["host"] == host && h["connected"] == true)
}

async fn wait_connected(gw: &Gateway, host: &str, want: bool) {
    wait_until(
        || format!("host {host} connected={want}: {}", gw.log()),
        || async { host_connected(gw, host).await == want },
    )
    .await;
}

/// A host's journal as the gateway serves it: the same events plus `host`.
fn with_host(theirs: &[Value], host: &str) -> Vec<Event> {
    theirs
        .iter()
        .map(|v| {
            let mut e: Event = serde_json::from_value(v.clone()).unwrap();
            e.host = Some(host.to_owned());
            e
        })
        .collect()
}

/// The equality check. The host's run must be finished. Waits (bounded) for
/// the gateway to catch up, then checks its journal file and what it serves
/// to a subscriber against the host's journal. Returns the host's events.
async fn assert_same_copy(gw: &Gateway, host: &str, d: &Daemon, run: &str) -> Vec<Value> {
    let theirs = journal(&host_journal_path(d, run));
    let n = theirs.len() as u64;
    assert_eq!(seqs(&theirs), (1..=n).collect::<Vec<_>>(), "host {host} run {run}: host's own seqs");
    let last_status = theirs.last().unwrap()["data"].as_str().unwrap().to_owned();
    assert!(
        theirs.last().unwrap()["type"] == "status"
            && serde_json::from_value::<RunStatus>(json!(last_status)).unwrap().is_final(),
        "host {host} run {run} is not finished: {:?}",
        theirs.last()
    );
    wait_until(
        || format!("gateway copy of {host}/{run} to reach seq {n}:\n{}", gw.log()),
        || async { gw_last_seq(gw, host, run).await >= n },
    )
    .await;

    // The gateway's status of the run.
    let info = gw_run(gw, host, run).await.unwrap();
    assert_eq!(info["lastSeq"], n, "{host}/{run}: {info}");
    assert_eq!(info["host"], host, "{info}");
    assert_eq!(info["status"], last_status.as_str(), "{host}/{run}: {info}");

    // Its journal: the same events, each once, in order, plus "host".
    let ours = journal(&gw.events_path(host, run));
    assert_eq!(seqs(&ours), (1..=n).collect::<Vec<_>>(), "{host}/{run}: gateway seqs (duplicates or gaps)");
    for (mine, their) in ours.iter().zip(&theirs) {
        let mut mine = mine.clone();
        assert_eq!(mine["host"], host, "{host}/{run}: event without its host: {mine}");
        mine.as_object_mut().unwrap().remove("host");
        assert_eq!(&mine, their, "{host}/{run}: gateway event differs from the host's");
    }

    // What it serves: a subscriber at the gateway gets exactly those.
    let want = with_host(&theirs, host);
    let mut ws = ws_connect(&gw.ws_url(&format!("/runs?runId={run}&host={host}&token={}", gw.token())), &[]).await;
    let got = ws_read(&mut ws, |_| false).await;
    assert_eq!(got.error_code(), None, "{host}/{run}: {:?}", got.controls);
    assert_eq!(got.events, want, "{host}/{run}: events served by the gateway");
    assert_eq!(got.close, Some(1000));
    theirs
}

// ---------------------------------------------------------------------------
// A TCP proxy in front of the gateway that can cut every connection.

#[derive(Default)]
struct ProxyState {
    refusing: AtomicBool,
    accepted: AtomicU64,
    conns: Mutex<Vec<tokio::task::AbortHandle>>,
}

struct Proxy {
    addr: String,
    state: Arc<ProxyState>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(ProxyState::default());
        let st = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { continue };
                if st.refusing.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                st.accepted.fetch_add(1, Ordering::SeqCst);
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                let mut conns = st.conns.lock().unwrap();
                conns.retain(|c| !c.is_finished());
                conns.push(task.abort_handle());
            }
        });
        Proxy { addr, state, accept }
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Drops every connection through the proxy, both ends.
    fn cut(&self) {
        for c in self.state.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// While on, new connections are accepted and closed at once.
    fn refuse(&self, on: bool) {
        self.state.refusing.store(on, Ordering::SeqCst);
    }

    fn accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

// ---------------------------------------------------------------------------
// A hand-made host (agent) speaking the link protocol, for the cases a real
// daemon cannot produce on demand.

async fn agent_connect(gw: &Gateway, token: &str) -> WsClient {
    ws_connect(&gw.ws_url("/agent"), &[("authorization", &format!("Bearer {token}"))]).await
}

async fn agent_send(ws: &mut WsClient, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// Next text message from the gateway, as JSON (None once closed).
async fn agent_next(ws: &mut WsClient) -> Option<Value> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("gateway said nothing in time") {
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

/// Sends `hello` and returns the `welcome`'s acked map.
async fn agent_hello(ws: &mut WsClient, host: &str, epoch: &str, runs: &[(&str, u64)]) -> HashMap<String, u64> {
    let runs: Vec<Value> = runs.iter().map(|(r, s)| json!({"runId": r, "lastSeq": s})).collect();
    agent_send(ws, json!({"type": "hello", "host": host, "epoch": epoch, "runs": runs})).await;
    let welcome = agent_next(ws).await.expect("welcome");
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    serde_json::from_value(welcome["acked"].clone()).unwrap()
}

async fn agent_run(ws: &mut WsClient, run: &str) {
    let meta =
        json!({"runId": run, "command": ["fake"], "cwd": "/", "pty": false, "createdAt": "2026-01-01T00:00:00Z"});
    agent_send(ws, json!({"type": "run", "runId": run, "meta": meta})).await;
}

fn fake_event(run: &str, seq: u64) -> Value {
    match seq {
        1 => json!({"runId": run, "seq": 1, "type": "status", "data": "queued", "timestamp": "2026-01-01T00:00:01Z"}),
        2 => {
            json!({"runId": run, "seq": 2, "type": "status", "data": "running", "pid": 42, "timestamp": "2026-01-01T00:00:02Z"})
        }
        s => {
            json!({"runId": run, "seq": s, "type": "stdout", "data": format!("out {s}\n"), "timestamp": "2026-01-01T00:00:03Z"})
        }
    }
}

fn fake_final(run: &str, seq: u64) -> Value {
    json!({"runId": run, "seq": seq, "type": "status", "data": "succeeded", "exitCode": 0, "timestamp": "2026-01-01T00:00:04Z"})
}

/// Reads until an `ack` covers `seq` of `run`.
async fn agent_wait_ack(ws: &mut WsClient, run: &str, seq: u64) {
    loop {
        let msg = agent_next(ws).await.unwrap_or_else(|| panic!("closed before ack of {run}@{seq}"));
        if msg["type"] == "ack" && msg["acked"][run].as_u64().is_some_and(|s| s >= seq) {
            return;
        }
    }
}

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
// 3. kill -9 a daemon mid-run, restart it on the same state dir.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_kill9_mid_run_gateway_gets_the_lost_run_and_later_runs() {
    let gw = Gateway::start();
    let mut h1 = gw.start_host("h1");
    let h2 = gw.start_host("h2");
    let tmp = tempfile::tempdir().unwrap();
    let stop = tmp.path().join("stop");

    launch(&h1, "doomed", &producer(&stop));
    launch(&h2, "bystander", &producer(&stop));
    wait_gateway_seq(&gw, "h1", "doomed", 20).await;

    h1.kill9();
    wait_connected(&gw, "h1", false).await;
    let held = gw_run(&gw, "h1", "doomed").await.unwrap();
    assert_eq!(held["status"], "running", "the gateway cannot know yet: {held}");

    h1.spawn();
    let lost = h1.wait_final("doomed").await;
    assert_eq!(lost.status(), Some(RunStatus::Lost), "{lost:?}");
    let out = h1.run(&["run", "--id", "after", "--", "sh", "-c", "echo after the restart"]);
    assert!(out.status.success(), "{out:?}");
    touch(&stop);
    h2.wait_final("bystander").await;

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
