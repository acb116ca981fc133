//! The soak's unfriendly clients: subscribers that stall or read slowly,
//! and malicious ones (garbage, floods, oversized frames, half-open
//! connections). None of them panics on what the server does (the server
//! may be killed under them); each returns an outcome label to count.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::{Message, WsClient};

/// How long a malicious client waits for the server to close on it. The
/// longest server bound involved is `handshake_timeout` (10 s) for a
/// half-open request head.
pub const HOSTILE_BOUND: Duration = Duration::from_secs(20);

/// The malicious kinds, against a daemon or the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Malice {
    /// Text frames that are not JSON, after authenticating.
    GarbageText,
    /// A binary frame of random bytes.
    BinaryFrame,
    /// 2000 valid messages as fast as possible (rate limit: 50/s, burst 100).
    Flood,
    /// One 1 MiB text frame before authenticating (limit 64 KiB).
    Oversized,
    /// Half a request head, then silence.
    HalfOpen,
    /// Random bytes instead of HTTP.
    RawGarbage,
    /// Random bytes as a line on the Unix socket (daemons only).
    UnixGarbage,
}

impl Malice {
    pub const NET: [Malice; 6] = [
        Malice::GarbageText,
        Malice::BinaryFrame,
        Malice::Flood,
        Malice::Oversized,
        Malice::HalfOpen,
        Malice::RawGarbage,
    ];
}

/// A WebSocket connect that reports failure instead of panicking.
pub async fn try_ws(url: &str) -> Option<WsClient> {
    match tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(url)).await {
        Ok(Ok((ws, _))) => Some(ws),
        _ => None,
    }
}

/// Reads until the server closes; the outcome label.
async fn until_closed(ws: &mut WsClient, bound: Duration) -> String {
    let read = tokio::time::timeout(bound, async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Close(f)) => return format!("close {}", f.map_or(0, |f| u16::from(f.code))),
                Ok(_) => {}
                Err(_) => return "reset".to_owned(),
            }
        }
        "eof".to_owned()
    })
    .await;
    read.unwrap_or_else(|_| "NOT CLOSED".to_owned())
}

/// Reads raw bytes until EOF; the outcome label with how long it took.
async fn raw_until_eof(s: &mut TcpStream, bound: Duration) -> String {
    let started = Instant::now();
    let mut got = Vec::new();
    let read = tokio::time::timeout(bound, async {
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = s.read(&mut chunk).await {
            got.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    if read.is_err() {
        return "NOT CLOSED".to_owned();
    }
    let status = String::from_utf8_lossy(&got).split_whitespace().nth(1).unwrap_or("eof").to_owned();
    // 10 s is `handshake_timeout`; sooner, the server answered or was killed.
    let after = if started.elapsed() < Duration::from_secs(9) { "before 9 s" } else { "after 9-20 s" };
    format!("{status} {after}")
}

/// One malicious client against `addr` (HTTP) or `socket` (Unix); its outcome.
pub async fn malicious(kind: Malice, addr: &str, socket: Option<&std::path::Path>, token: &str, seed: u64) -> String {
    // Random bytes from the seed (one LCG step per byte).
    let noise: Vec<u8> = (0..4096u64)
        .scan(seed, |x, _| {
            *x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            Some((*x >> 33) as u8)
        })
        .collect();
    let authed = format!("ws://{addr}/ws?token={token}");
    match kind {
        Malice::GarbageText | Malice::BinaryFrame | Malice::Flood | Malice::Oversized => {
            let url = if kind == Malice::Oversized { format!("ws://{addr}/ws") } else { authed };
            let Some(mut ws) = try_ws(&url).await else { return "unreachable".to_owned() };
            let msgs: Vec<Message> = match kind {
                Malice::GarbageText => vec![Message::Text(String::from_utf8_lossy(&noise[..200]).into_owned().into())],
                Malice::BinaryFrame => vec![Message::Binary(noise.clone().into())],
                Malice::Flood => {
                    let m = json!({"type": "unsubscribe", "runId": "nothing-here"}).to_string();
                    (0..2000).map(|_| Message::Text(m.clone().into())).collect()
                }
                _ => vec![Message::Text("x".repeat(1 << 20).into())],
            };
            for m in msgs {
                if ws.feed(m).await.is_err() {
                    break;
                }
            }
            let _ = ws.flush().await;
            until_closed(&mut ws, HOSTILE_BOUND).await
        }
        Malice::HalfOpen | Malice::RawGarbage => {
            let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await else {
                return "unreachable".to_owned();
            };
            let bytes: &[u8] = if kind == Malice::HalfOpen { b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgr" } else { &noise };
            let _ = s.write_all(bytes).await;
            raw_until_eof(&mut s, HOSTILE_BOUND).await
        }
        Malice::UnixGarbage => {
            let Some(socket) = socket else { return "no socket".to_owned() };
            let Ok(mut s) = UnixStream::connect(socket).await else { return "unreachable".to_owned() };
            let mut line = noise[..300].to_vec();
            line.push(b'\n');
            let _ = s.write_all(&line).await;
            let mut answer = Vec::new();
            let read = tokio::time::timeout(HOSTILE_BOUND, async {
                let mut b = [0u8; 1];
                while let Ok(1) = s.read(&mut b).await {
                    if b[0] == b'\n' {
                        break;
                    }
                    answer.push(b[0]);
                }
            })
            .await;
            if read.is_err() {
                return "NOT ANSWERED".to_owned();
            }
            let v: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
            format!("{} {}", v["type"].as_str().unwrap_or("eof"), v["code"].as_str().unwrap_or(""))
        }
    }
}

/// A `/ws` subscriber to every run (`*`) that never reads, for `hold`.
pub async fn stalled(addr: &str, token: &str, hold: Duration) -> String {
    let Some(mut ws) = try_ws(&format!("ws://{addr}/ws?token={token}")).await else {
        return "unreachable".to_owned();
    };
    if ws.send(Message::Text(json!({"type": "subscribe", "runId": "*"}).to_string().into())).await.is_err() {
        return "refused".to_owned();
    }
    tokio::time::sleep(hold).await;
    "held".to_owned()
}

/// What a slow reader saw: events read and every ordering violation.
#[derive(Debug, Default)]
pub struct SlowRead {
    pub events: u64,
    pub runs: usize,
    /// "host/run: seq A after B" for each event not the next of its run.
    pub violations: Vec<String>,
    pub gaps_reported: u64,
}

/// A `/ws` subscriber to every run (`*`) that sleeps `pause` after each
/// frame, for `span`. Checks that each run's events come one seq after
/// another, from 1 or from the `lastSeq` its `run` announcement gave.
pub async fn slow_reader(addr: &str, token: &str, pause: Duration, span: Duration) -> SlowRead {
    let mut out = SlowRead::default();
    let Some(mut ws) = try_ws(&format!("ws://{addr}/ws?token={token}")).await else { return out };
    if ws.send(Message::Text(json!({"type": "subscribe", "runId": "*"}).to_string().into())).await.is_err() {
        return out;
    }
    let mut last: HashMap<String, u64> = HashMap::new();
    let _ = tokio::time::timeout(span, async {
        while let Some(Ok(msg)) = ws.next().await {
            let Message::Text(t) = msg else { continue };
            let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
            let key = format!("{}/{}", v["host"].as_str().unwrap_or("-"), v["runId"].as_str().unwrap_or("?"));
            match (v["type"].as_str(), v["seq"].as_u64()) {
                (_, Some(seq)) => {
                    out.events += 1;
                    let prev = last.insert(key.clone(), seq).unwrap_or(0);
                    if seq != prev + 1 {
                        out.violations.push(format!("{key}: seq {seq} after {prev}"));
                    }
                }
                (Some("run"), None) => {
                    last.insert(key, v["lastSeq"].as_u64().unwrap_or(0));
                }
                (Some("error"), None) if v["code"] == "journal-gap" => out.gaps_reported += 1,
                _ => {}
            }
            tokio::time::sleep(pause).await;
        }
    })
    .await;
    out.runs = last.len();
    out
}
