//! What a subscriber saw, whatever the surface, without trusting any of
//! it: the probe tests' client side (WebSocket, Unix socket, HTTP).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};

use super::{Daemon, Message, WAIT, http, ws_connect};

// What a subscriber saw, whatever the surface.

/// Everything one subscription delivered, without trusting any of it.
#[derive(Debug, Default)]
pub struct Seen {
    /// Frames (or socket lines) that are not a JSON object: each one is a defect.
    pub invalid: Vec<String>,
    /// `seq` of every event, in the order received.
    pub seqs: Vec<u64>,
    pub events: Vec<Value>,
    /// `journal-gap` errors, as the seq ranges they report.
    pub gaps: Vec<(u64, u64)>,
    /// Other errors: (code, message).
    pub errors: Vec<(String, String)>,
    /// The surface's normal end: close 1000 on `/runs?runId=`, `end` elsewhere.
    pub ended: bool,
    pub end_last_seq: Option<u64>,
    pub close: Option<u16>,
    pub authenticated: bool,
    pub timed_out: bool,
}

impl Seen {
    pub fn take(&mut self, text: &str) {
        let v: Value = match serde_json::from_str(text) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                self.invalid.push(text.chars().take(300).collect());
                return;
            }
        };
        match v["type"].as_str() {
            Some("stdout" | "stderr" | "status") => {
                self.seqs.push(v["seq"].as_u64().unwrap_or(0));
                self.events.push(v);
            }
            Some("error") if v["code"] == "journal-gap" => self.gaps.push(gap_range(&v)),
            Some("error") => self.errors.push((
                v["code"].as_str().unwrap_or_default().to_owned(),
                v["message"].as_str().unwrap_or_default().to_owned(),
            )),
            Some("end") => {
                self.ended = true;
                self.end_last_seq = v["lastSeq"].as_u64();
            }
            Some("authenticated") => self.authenticated = true,
            _ => {}
        }
    }

    /// Every seq a `journal-gap` reported, once per report.
    pub fn gap_seqs(&self) -> Vec<u64> {
        let mut all: Vec<u64> = self.gaps.iter().flat_map(|&(a, b)| a..=b).collect();
        all.sort_unstable();
        all
    }

    pub fn last_status(&self) -> Option<&str> {
        self.events.iter().rev().find(|e| e["type"] == "status").and_then(|e| e["data"].as_str())
    }
}

/// The seqs a `journal-gap` error reports: `from`/`to` fields if it has
/// them, else the `A..=B` in its message (what the daemon writes today).
pub fn gap_range(v: &Value) -> (u64, u64) {
    if let (Some(a), Some(b)) = (v["from"].as_u64(), v["to"].as_u64()) {
        return (a, b);
    }
    let msg = v["message"].as_str().unwrap_or_default();
    if let Some((l, r)) = msg.split_once("..=") {
        let a = l.rsplit(|c: char| !c.is_ascii_digit()).next().and_then(|s| s.parse().ok());
        let b = r.split(|c: char| !c.is_ascii_digit()).next().and_then(|s| s.parse().ok());
        if let (Some(a), Some(b)) = (a, b) {
            return (a, b);
        }
    }
    (0, 0)
}

/// Opens a WebSocket, sends `send`, and reads (for at most `bound`) until
/// it closes or `stop` holds. Never panics on what the server sends.
pub async fn ws_seen(url: &str, send: &[Value], stop: impl Fn(&Seen) -> bool, bound: Duration) -> Seen {
    use futures_util::{SinkExt, StreamExt};
    let mut seen = Seen::default();
    let mut ws = ws_connect(url, &[]).await;
    for m in send {
        ws.send(Message::Text(m.to_string().into())).await.unwrap();
    }
    let read = tokio::time::timeout(bound, async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Text(t)) => seen.take(&t),
                Ok(Message::Binary(b)) => seen.invalid.push(format!("a binary frame of {} bytes", b.len())),
                Ok(Message::Close(f)) => {
                    seen.close = f.map(|f| u16::from(f.code));
                    seen.ended |= seen.close == Some(1000);
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    seen.errors.push(("websocket".into(), e.to_string()));
                    break;
                }
            }
            if stop(&seen) {
                break;
            }
        }
    })
    .await;
    seen.timed_out = read.is_err();
    seen
}

/// A raw Unix-socket connection: request lines out, raw lines in.
pub struct UnixConn {
    io: BufReader<UnixStream>,
}

impl UnixConn {
    pub async fn open(socket: &Path) -> UnixConn {
        let s = tokio::time::timeout(WAIT, UnixStream::connect(socket)).await.unwrap().unwrap();
        UnixConn { io: BufReader::new(s) }
    }

    pub async fn send(&mut self, v: &Value) {
        self.io.get_mut().write_all(format!("{v}\n").as_bytes()).await.unwrap();
    }

    /// The next line, `Err` with its bytes if it is not UTF-8, None at EOF.
    pub async fn line(&mut self) -> Option<Result<String, Vec<u8>>> {
        let mut buf = Vec::new();
        match self.io.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => None,
            Ok(_) => {
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                }
                Some(String::from_utf8(buf).map_err(|e| e.into_bytes()))
            }
        }
    }

    /// One request, its first answer line as JSON.
    pub async fn call(&mut self, v: &Value) -> Value {
        self.send(v).await;
        let line = tokio::time::timeout(WAIT, self.line()).await.expect("socket answer in time");
        serde_json::from_str(&line.expect("an answer").expect("UTF-8")).expect("JSON")
    }

    /// Reads a subscription until `end`, an error that ends it, EOF or `bound`.
    pub async fn collect(&mut self, seen: &mut Seen, bound: Duration) {
        let read = tokio::time::timeout(bound, async {
            while let Some(line) = self.line().await {
                match line {
                    Ok(text) => seen.take(&text),
                    Err(bytes) => seen.invalid.push(String::from_utf8_lossy(&bytes).chars().take(300).collect()),
                }
                if seen.ended || !seen.errors.is_empty() {
                    break;
                }
            }
        })
        .await;
        seen.timed_out = read.is_err();
    }
}

/// `subscribe` on a fresh socket connection, read for at most `bound`.
pub async fn unix_seen(socket: &Path, id: &str, since: u64, follow: bool, bound: Duration) -> Seen {
    let mut c = UnixConn::open(socket).await;
    c.send(&json!({"type": "subscribe", "runId": id, "since": since, "follow": follow})).await;
    let mut seen = Seen::default();
    c.collect(&mut seen, bound).await;
    seen
}

pub async fn unix_call(socket: &Path, v: Value) -> Value {
    UnixConn::open(socket).await.call(&v).await
}

/// Run IDs the socket's `list` and `GET /runs` show.
pub async fn listed(d: &Daemon) -> (Vec<String>, Vec<String>) {
    let ids = |runs: &Value| -> Vec<String> {
        runs.as_array()
            .map(|a| a.iter().filter_map(|r| r["runId"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let socket = unix_call(&d.socket(), json!({"type": "list"})).await;
    let (_, body) = http(d, "GET", "/runs", Some(&d.token())).await;
    (ids(&socket["runs"]), ids(&serde_json::from_str(&body).unwrap_or(Value::Null)))
}

/// `GET /runs/ID` as JSON (Null if it is not JSON).
pub async fn http_run(d: &Daemon, id: &str) -> (u16, Value) {
    let (status, body) = http(d, "GET", &format!("/runs/{id}"), Some(&d.token())).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

pub async fn healthz(d: &Daemon) -> Value {
    let (_, body) = http(d, "GET", "/healthz", None).await;
    serde_json::from_str(&body).unwrap()
}

/// A run of `lines` echoes, 20 ms apart (so each is its own event); returns its last seq.
pub async fn finished_run(d: &Daemon, id: &str, lines: usize) -> u64 {
    let script = format!("for i in $(seq 1 {lines}); do echo line $i; sleep 0.02; done");
    let out = d.run(&["run", "--id", id, "--", "sh", "-c", &script]);
    assert!(out.status.success(), "{out:?}");
    let events = d.events(id).await;
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "a healthy run's history");
    seqs.len() as u64
}

/// A daemon whose fd limit is 1024 (hard and soft), as under a default
/// systemd unit or shell. (It raised its soft limit to its hard one at
/// start; prlimit lowers both on the running process.)
pub fn daemon_with_1024_fds() -> Daemon {
    let _ = runtap::sys::raise_fd_limit();
    let d = Daemon::start();
    let out = Command::new("prlimit").arg(format!("--pid={}", d.pid())).arg("--nofile=1024:1024").output().unwrap();
    assert!(out.status.success(), "prlimit: {out:?}");
    d
}

/// What happened to a run that was journaling while 1100 idle TCP
/// connections held every fd the daemon had.
pub struct FdFlood {
    /// Whether the socket's `list` answered, within WAIT, during the flood.
    pub list_answered: bool,
    /// The run as a subscriber connected before the flood saw it, live.
    pub live: Seen,
    /// Its history, read once the flood is gone.
    pub history: Seen,
}

pub async fn fd_flood(d: &Daemon, id: &str) -> FdFlood {
    let mut live = UnixConn::open(&d.socket()).await;
    let hello = live.call(&json!({"type": "subscribe", "runId": id, "since": 0, "follow": true})).await;
    assert_eq!(hello["type"], "subscribed", "{hello}");
    // ~5 s of output, a line every 100 ms: several 1 s fsync ticks.
    let script = "for i in $(seq 1 50); do echo tick $i; sleep 0.1; done";
    let out = d.run(&["run", "--detach", "--id", id, "--", "sh", "-c", script]);
    assert!(out.status.success(), "{out:?}");
    d.wait_running(id).await;
    // Some connects may fail once the daemon's backlog is full: fine.
    let mut flood = Vec::new();
    for _ in 0..11 {
        let batch: Vec<_> = (0..100)
            .map(|_| {
                let addr = d.addr.clone();
                tokio::spawn(
                    async move { tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await },
                )
            })
            .collect();
        for h in batch {
            if let Ok(Ok(s)) = h.await.unwrap() {
                flood.push(s);
            }
        }
    }
    let asked = Instant::now();
    let list = tokio::time::timeout(WAIT, unix_call(&d.socket(), json!({"type": "list"}))).await;
    println!(
        "{} idle TCP connections open; `list` answered: {} after {:?}",
        flood.len(),
        list.is_ok(),
        asked.elapsed()
    );
    let list_answered = list.as_ref().is_ok_and(|v| v["type"] == "runs");
    let mut live_seen = Seen::default();
    live.collect(&mut live_seen, WAIT).await;
    drop(flood);
    assert!(live_seen.ended, "the live subscriber never got the end of the run: {live_seen:?}");
    let history = unix_seen(&d.socket(), id, 0, false, WAIT).await;
    println!("history after the flood: gaps {:?}, errors {:?}", history.gaps, history.errors);
    FdFlood { list_answered, live: live_seen, history }
}
