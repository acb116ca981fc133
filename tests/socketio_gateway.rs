//! Socket.IO at a gateway: `/runs/` with `host=` streams that host's copy of
//! a run, and a run ID on two hosts without `host=` is refused with
//! `ambiguous-run-id`, over a hand-spoken Engine.IO WebSocket (the npm
//! client suite, tests/js, covers a daemon).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use runtap::event::Event;
use serde_json::{Value, json};

/// Connects to `/runs/` over Engine.IO's WebSocket transport, sends the
/// CONNECT with the token, and reads until the server disconnects: the
/// `run-event` arguments and every other event.
async fn socketio_run(url: &str, token: &str) -> (Vec<Event>, Vec<Value>) {
    let mut ws = ws_connect(url, &[]).await;
    let (mut events, mut others) = (Vec::new(), Vec::new());
    let read = tokio::time::timeout(WAIT, async {
        while let Some(Ok(msg)) = ws.next().await {
            let Message::Text(text) = msg else { continue };
            let text = text.as_str();
            if text.starts_with("0{") {
                let connect = format!("40{}", json!({"token": token}));
                ws.send(Message::Text(connect.into())).await.unwrap();
            } else if text == "2" {
                ws.send(Message::Text("3".into())).await.unwrap();
            } else if text.starts_with("41") {
                return;
            } else if let Some(array) = text.strip_prefix("42") {
                let mut args: Vec<Value> = serde_json::from_str(array).unwrap();
                match args[0].as_str() {
                    Some("run-event") => events.push(serde_json::from_value(args.swap_remove(1)).unwrap()),
                    _ => others.push(Value::Array(args)),
                }
            }
        }
    })
    .await;
    assert!(read.is_ok(), "socket.io read timed out; got {events:?} {others:?}");
    (events, others)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_picks_the_copy_and_an_ambiguous_run_id_is_refused() {
    let gw = Gateway::start();
    let h1 = gw.start_host("h1");
    let h2 = gw.start_host("h2");
    wait_connected(&gw, "h1", true).await;
    wait_connected(&gw, "h2", true).await;
    launch(&h1, "twice", "echo from h1");
    launch(&h2, "twice", "echo from h2");
    h1.wait_final("twice").await;
    h2.wait_final("twice").await;
    let theirs = assert_same_copy(&gw, "h1", &h1, "twice").await;
    assert_same_copy(&gw, "h2", &h2, "twice").await;
    let t = gw.token();

    let url = gw.ws_url("/runs/?EIO=4&transport=websocket&runId=twice&host=h1");
    let (events, others) = socketio_run(&url, &t).await;
    assert_eq!(events, with_host(&theirs, "h1"));
    assert_eq!(others, vec![json!(["run-end", {"lastSeq": theirs.len()}])]);

    let url = gw.ws_url("/runs/?EIO=4&transport=websocket&runId=twice");
    let (events, others) = socketio_run(&url, &t).await;
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(others[0][0], "error");
    assert_eq!(others[0][1], "ambiguous-run-id", "{others:?}");
}
