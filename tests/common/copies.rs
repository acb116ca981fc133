//! The gateway tests' central check, [`assert_same_copy`]: the gateway's
//! copy of a host's run holds exactly the host's events (seqs 1..=N, each
//! once, identical except for the added `"host"`), both in its journal file
//! and as served to a subscriber. And the small helpers around it.

use std::path::{Path, PathBuf};

use runtap::event::{Event, RunStatus};
use serde_json::{Value, json};

use super::{Daemon, Gateway, http, http_json, wait_until, ws_connect, ws_read};

/// A job that writes a numbered line every ~10 ms until `stop` exists.
pub fn producer(stop: &Path) -> String {
    format!(
        "i=0; while [ ! -e {} ]; do i=$((i+1)); echo line $i; sleep 0.01; done; echo stopped after $i",
        stop.display()
    )
}

pub fn touch(p: &Path) {
    std::fs::write(p, b"").unwrap();
}

/// `runtap run --detach --id ID -- sh -c SCRIPT` against `d`.
pub fn launch(d: &Daemon, id: &str, script: &str) {
    let out = d.run(&["run", "--detach", "--id", id, "--", "sh", "-c", script]);
    assert!(out.status.success(), "launch {id}: {out:?}\n{}", d.log());
}

/// One journal file, parsed line by line.
pub fn journal(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: bad line {l:?}: {e}", path.display())))
        .collect()
}

pub fn host_journal_path(d: &Daemon, run: &str) -> PathBuf {
    d.state_dir().join("runs").join(run).join("events.jsonl")
}

pub fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

/// The gateway's status of a run (GET /runs/ID?host=H), if it has it.
pub async fn gw_run(gw: &Gateway, host: &str, run: &str) -> Option<Value> {
    let (status, body) = http_json(&gw.addr, "GET", &format!("/runs/{run}?host={host}"), Some(&gw.token())).await;
    (status == 200).then_some(body)
}

pub async fn gw_last_seq(gw: &Gateway, host: &str, run: &str) -> u64 {
    gw_run(gw, host, run).await.and_then(|v| v["lastSeq"].as_u64()).unwrap_or(0)
}

/// The host daemon's last seq of a run, from its own HTTP API.
pub async fn host_last_seq(d: &Daemon, run: &str) -> u64 {
    let (status, body) = http(d, "GET", &format!("/runs/{run}"), Some(&d.token())).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["lastSeq"].as_u64().unwrap()
}

/// Waits until the gateway holds at least `n` events of the run.
pub async fn wait_gateway_seq(gw: &Gateway, host: &str, run: &str, n: u64) {
    wait_until(
        || format!("gateway to hold {n} events of {host}/{run}:\n{}", gw.log()),
        || async { gw_last_seq(gw, host, run).await >= n },
    )
    .await;
}

/// Waits until the host itself has journaled at least `n` events of the run.
pub async fn wait_host_seq(d: &Daemon, run: &str, n: u64) {
    wait_until(|| format!("host to journal {n} events of {run}"), || async { host_last_seq(d, run).await >= n }).await;
}

pub async fn hosts(gw: &Gateway) -> Vec<Value> {
    let (status, body) = http_json(&gw.addr, "GET", "/hosts", Some(&gw.token())).await;
    assert_eq!(status, 200, "{body}");
    body.as_array().unwrap().clone()
}

pub async fn host_connected(gw: &Gateway, host: &str) -> bool {
    hosts(gw).await.iter().any(|h| h["host"] == host && h["connected"] == true)
}

pub async fn wait_connected(gw: &Gateway, host: &str, want: bool) {
    wait_until(
        || format!("host {host} connected={want}: {}", gw.log()),
        || async { host_connected(gw, host).await == want },
    )
    .await;
}

/// A host's journal as the gateway serves it: the same events plus `host`.
pub fn with_host(theirs: &[Value], host: &str) -> Vec<Event> {
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
pub async fn assert_same_copy(gw: &Gateway, host: &str, d: &Daemon, run: &str) -> Vec<Value> {
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
