//! A hand-made host (agent) speaking the link protocol, for the cases a
//! real daemon cannot produce on demand.

use std::collections::HashMap;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};

use super::{Gateway, Message, WAIT, WsClient, ws_connect};

pub async fn agent_connect(gw: &Gateway, token: &str) -> WsClient {
    ws_connect(&gw.ws_url("/agent"), &[("authorization", &format!("Bearer {token}"))]).await
}

pub async fn agent_send(ws: &mut WsClient, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// Next text message from the gateway, as JSON (None once closed).
pub async fn agent_next(ws: &mut WsClient) -> Option<Value> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("gateway said nothing in time") {
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

/// Sends `hello` and returns the `welcome`'s acked map.
pub async fn agent_hello(ws: &mut WsClient, host: &str, epoch: &str, runs: &[(&str, u64)]) -> HashMap<String, u64> {
    let runs: Vec<Value> = runs.iter().map(|(r, s)| json!({"runId": r, "lastSeq": s})).collect();
    agent_send(ws, json!({"type": "hello", "host": host, "epoch": epoch, "runs": runs})).await;
    let welcome = agent_next(ws).await.expect("welcome");
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    serde_json::from_value(welcome["acked"].clone()).unwrap()
}

pub async fn agent_run(ws: &mut WsClient, run: &str) {
    let meta =
        json!({"runId": run, "command": ["fake"], "cwd": "/", "pty": false, "createdAt": "2026-01-01T00:00:00Z"});
    agent_send(ws, json!({"type": "run", "runId": run, "meta": meta})).await;
}

pub fn fake_event(run: &str, seq: u64) -> Value {
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

pub fn fake_final(run: &str, seq: u64) -> Value {
    json!({"runId": run, "seq": seq, "type": "status", "data": "succeeded", "exitCode": 0, "timestamp": "2026-01-01T00:00:04Z"})
}

/// Reads until an `ack` covers `seq` of `run`.
pub async fn agent_wait_ack(ws: &mut WsClient, run: &str, seq: u64) {
    loop {
        let msg = agent_next(ws).await.unwrap_or_else(|| panic!("closed before ack of {run}@{seq}"));
        if msg["type"] == "ack" && msg["acked"][run].as_u64().is_some_and(|s| s >= seq) {
            return;
        }
    }
}
