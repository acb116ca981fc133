//! Issue 18, the network half: regression tests for the defects an
//! adversarial probe found in what clients can send (unauthenticated
//! memory, fds, log forging, secrets in logs, `since` at the top) and the
//! protocol points it left open. Every test is named `issue18_<item>_<what>`;
//! docs/bad-input.md maps each kind of bad input to the test covering it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use runtap::protocol::unix::{LaunchRequest, Request, Response};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------
// 1. Unauthenticated memory exhaustion with unfinished fragmented messages.

const FRAG_CONNS: usize = 500;
const FRAG_BYTES: usize = 250_000;
const FRAG_CHUNK: usize = 16_000;

/// One client-to-server frame (masked, as RFC 6455 requires).
fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&MASK);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    f
}

/// A raw WebSocket upgrade (no token), up to the end of the 101 response.
async fn raw_upgrade(addr: &str, path: &str) -> TcpStream {
    let mut s = tokio::time::timeout(WAIT, TcpStream::connect(addr)).await.unwrap().unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    tokio::time::timeout(WAIT, async {
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut byte).await.unwrap(), 1, "EOF in the upgrade response");
            head.push(byte[0]);
        }
    })
    .await
    .expect("upgrade response in time");
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    s
}

/// The code of the first close frame among server frames in `buf`.
fn close_code(buf: &[u8]) -> Option<u16> {
    let mut i = 0;
    while i + 2 <= buf.len() {
        let opcode = buf[i] & 0x0f;
        let (len, head) = match buf[i + 1] & 0x7f {
            126 if i + 4 <= buf.len() => (u16::from_be_bytes([buf[i + 2], buf[i + 3]]) as usize, 4),
            127 if i + 10 <= buf.len() => (u64::from_be_bytes(buf[i + 2..i + 10].try_into().unwrap()) as usize, 10),
            n @ 0..=125 => (n as usize, 2),
            _ => return None,
        };
        let body = buf.get(i + head..i + head + len)?;
        if opcode == 8 && body.len() >= 2 {
            return Some(u16::from_be_bytes([body[0], body[1]]));
        }
        i += head + len;
    }
    None
}

/// Upgrades without a token and sends `FRAG_BYTES` of one text message in
/// fragments, never the final one. Stops early if the server hangs up.
async fn unfinished_message(addr: String) -> TcpStream {
    let mut s = raw_upgrade(&addr, "/ws").await;
    let chunk = vec![b'a'; FRAG_CHUNK];
    let mut sent = 0;
    while sent < FRAG_BYTES {
        let n = FRAG_CHUNK.min(FRAG_BYTES - sent);
        let opcode = if sent == 0 { 1 } else { 0 };
        if s.write_all(&client_frame(opcode, false, &chunk[..n])).await.is_err() {
            break; // the server closed it: what a fixed daemon does
        }
        sent += n;
    }
    s
}

fn kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix(key)?.trim().strip_suffix("kB")?.trim().parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue18_1_unauthenticated_fragments_do_not_exhaust_memory() {
    let _ = runtap::sys::raise_fd_limit();
    // A long auth deadline (operators may set one) so that every connection
    // is buffering at once however slow this machine is: it makes the test
    // stricter, not looser: a 250 KB message is over the 64 KiB frame limit
    // (left at its default) and must be refused as such, not timed out.
    let d = Daemon::start_with("[stream]\nauth_timeout = \"120s\"\n");
    let pid = d.pid();
    healthz(&d).await;
    let before = kib(pid, "VmRSS:");

    // Sample RSS while the connections send (nothing to await for memory).
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let on = sampling.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            while on.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(kib(pid, "VmRSS:"));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        })
    };
    let mut conns = Vec::with_capacity(FRAG_CONNS);
    for _ in 0..FRAG_CONNS / 50 {
        let batch: Vec<_> = (0..50).map(|_| tokio::spawn(unfinished_message(d.addr.clone()))).collect();
        for h in batch {
            // 125 MB through a debug build on a shared 2-core machine.
            conns.push(tokio::time::timeout(3 * WAIT, h).await.expect("fragments sent in time").unwrap());
        }
    }
    // The last bytes may still sit in socket buffers: let the daemon read
    // until its RSS stops growing (bounded).
    let deadline = Instant::now() + WAIT;
    let mut last = kib(pid, "VmRSS:");
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = kib(pid, "VmRSS:");
        if now <= last || Instant::now() > deadline {
            break;
        }
        last = now;
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let during = sampler.await.unwrap().max(kib(pid, "VmRSS:"));
    let peak = kib(pid, "VmHWM:");

    // Each connection must have been closed, not left buffering.
    let readers: Vec<_> = conns
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let read = tokio::time::timeout(WAIT, async {
                    let mut chunk = [0u8; 4096];
                    while let Ok(n @ 1..) = s.read(&mut chunk).await {
                        buf.extend_from_slice(&chunk[..n]);
                    }
                })
                .await;
                read.ok().map(|()| close_code(&buf))
            })
        })
        .collect();
    let mut still_open = 0;
    let mut codes = std::collections::BTreeMap::<Option<u16>, usize>::new();
    for r in readers {
        match r.await.unwrap() {
            None => still_open += 1,
            Some(code) => *codes.entry(code).or_default() += 1,
        }
    }
    wait_until(|| "sessions to end".into(), || async { healthz(&d).await["websockets"] == 0 }).await;
    // Freed memory must go back to the OS (the daemon trims its heap when
    // its load falls); nothing announces it, so poll, bounded.
    let deadline = Instant::now() + WAIT;
    let mut after = kib(pid, "VmRSS:");
    while after > before + 8 * 1024 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = kib(pid, "VmRSS:");
    }
    let note = format!(
        "{FRAG_CONNS} unauthenticated connections x {FRAG_BYTES} bytes of an unfinished message: \
         daemon VmRSS before {before} KiB, during {during} KiB (VmHWM {peak} KiB), after {after} KiB; \
         still open after {WAIT:?}: {still_open}; close codes: {codes:?}"
    );
    println!("{note}");
    let growth_mib = during.saturating_sub(before) / 1024;
    assert!(
        growth_mib < 64,
        "unauthenticated peers made the daemon buffer their unfinished messages: +{growth_mib} MiB ({note})"
    );
    assert_eq!(still_open, 0, "connections were left open, buffering, instead of being closed ({note})");
    assert!(
        after <= before + 8 * 1024,
        "the memory those connections held did not go back to the OS: +{} MiB after they closed ({note})",
        after.saturating_sub(before) / 1024
    );
    for code in codes.keys().flatten() {
        assert!(matches!(code, 1009 | 4401), "unexpected close code {code} ({note})");
    }
}

// ---------------------------------------------------------------------------
// 2. Running out of file descriptors must not break a journal for good.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue18_2_fd_exhaustion_does_not_degrade_the_journal() {
    let d = daemon_with_1024_fds();
    let f = fd_flood(&d, "fd").await;
    assert!(f.list_answered, "the Unix socket's `list` did not answer while TCP connections held the fds");
    let last = *f.live.seqs.last().unwrap();
    let h = &f.history;
    assert!(
        h.gaps.is_empty() && h.errors.is_empty(),
        "running out of fds left the journal degraded for good: history reports {:?} {:?}",
        h.gaps,
        h.errors
    );
    assert_eq!(h.seqs, (1..=last).collect::<Vec<_>>(), "history must hold every event the live subscriber saw");
    assert_eq!(h.last_status(), Some("succeeded"), "history must end with the final status");
    let (_, run) = http_run(&d, "fd").await;
    assert_eq!(run["journal"], "ok", "the run's journal must not be reported degraded: {run}");
}

// ---------------------------------------------------------------------------
// 7. Client text must not forge log lines.

/// An HTTP/1.1 request with a body over a fresh connection; (status, body).
async fn http_with_body(d: &Daemon, method: &str, path: &str, token: &str, body: &str) -> (u16, String) {
    let mut s = tokio::time::timeout(WAIT, TcpStream::connect(&d.addr)).await.unwrap().unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue18_7_newlines_from_clients_do_not_forge_log_lines() {
    const FORGED: &str = "2026-01-01T00:00:00Z  INFO runtap: FORGED";
    let d = Daemon::start();
    let t = d.token();
    let out = d.run(&["run", "--detach", "--id", "forge", "--", "sleep", "1000"]);
    assert!(out.status.success(), "{out:?}");
    d.wait_running("forge").await;
    // A viewer token's cancel reason, in the body and in the query.
    let body = json!({"reason": format!("x\n{FORGED}")}).to_string();
    let (status, answer) = http_with_body(&d, "POST", "/runs/forge/cancel", &t, &body).await;
    assert_eq!(status, 200, "{answer}");
    let query: String = form_urlencoded::byte_serialize(format!("y\n{FORGED}-QUERY").as_bytes()).collect();
    let (status, answer) = http(&d, "POST", &format!("/runs/forge/cancel?reason={query}"), Some(&t)).await;
    assert!(status == 200 || status == 409, "{status} {answer}");
    d.wait_final("forge").await;
    // A program name with a newline, that does not exist.
    let launch = LaunchRequest {
        run_id: Some("forge2".into()),
        command: vec!["nope\nFORGED2".into()],
        ..LaunchRequest::default()
    };
    let answer = d.request(Request::Launch(launch)).await;
    assert!(matches!(answer, Response::Launched { .. }), "{answer:?}");
    d.wait_final("forge2").await;
    let log = d.log();
    let forged: Vec<&str> = log.lines().filter(|l| l.starts_with(FORGED) || l.starts_with("FORGED2")).collect();
    assert!(forged.is_empty(), "client-supplied text wrote lines of its own into the daemon's log: {forged:#?}");
}

// ---------------------------------------------------------------------------
// 8. The token must not reach the log, even at trace level.

/// A daemon started by hand (the harness sets RUST_LOG itself, after any
/// `env` of ours): same layout and ready line as the harness.
struct HandStarted {
    dir: tempfile::TempDir,
    child: Option<Child>,
    addr: String,
}

impl HandStarted {
    fn start(env: &[(&str, &str)]) -> HandStarted {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(&config, "").unwrap();
        let log = dir.path().join("daemon.log");
        let mut child = Command::new(bin())
            .args(["daemon", "--config"])
            .arg(&config)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--socket")
            .arg(dir.path().join("runtap.sock"))
            .args(["--listen", "127.0.0.1:0"])
            .env_remove("RUNTAP_SOCKET")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let line = wait_ready(&mut child, &log, "runtap daemon ready", 0);
        let addr = line.split_whitespace().find_map(|w| w.strip_prefix("listen=")).unwrap().to_owned();
        HandStarted { dir, child: Some(child), addr }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("runtap.sock")
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("state/token")).unwrap().trim().to_owned()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id() as i32, nix::sys::signal::Signal::SIGTERM);
            if wait_child(&mut child, WAIT).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for HandStarted {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue18_8_token_is_not_logged_at_trace_level() {
    let mut d = HandStarted::start(&[("RUST_LOG", "trace")]);
    let t = d.token();
    let mut cmd = Command::new(bin());
    cmd.env("RUNTAP_SOCKET", d.socket()).args(["run", "--id", "tr", "--", "echo", "hi"]).stdin(Stdio::null());
    assert!(output_with_timeout(cmd, WAIT).status.success());
    let url = format!("ws://{}/ws", d.addr);
    let send = [json!({"type": "auth", "token": t}), json!({"type": "subscribe", "runId": "tr", "since": 0})];
    let seen = ws_seen(&url, &send, |s| s.ended, WAIT).await;
    assert!(seen.authenticated && seen.ended, "{seen:?}");
    d.stop();
    let log = d.log();
    assert!(log.contains("TRACE"), "the daemon was meant to log at trace level");
    let leaks: Vec<String> = log.lines().filter(|l| l.contains(&t)).map(|l| l.replace(&t, "<TOKEN>")).collect();
    assert!(leaks.is_empty(), "the viewer token reached the log {} times, e.g.: {:?}", leaks.len(), leaks.first());
}

// ---------------------------------------------------------------------------
// 9. `since` at the top of the range.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue18_9_since_u64_max_ends_with_last_seq_since() {
    let d = Daemon::start();
    let t = d.token();
    finished_run(&d, "top", 1).await;
    let since = u64::MAX;
    let send = [json!({"type": "subscribe", "runId": "top", "since": since})];
    let ws = ws_seen(&d.ws_url(&format!("/ws?token={t}")), &send, |s| s.ended, WAIT).await;
    assert!(ws.ended && ws.seqs.is_empty(), "{ws:?}");
    assert_eq!(ws.end_last_seq, Some(since), "websocket: nothing came after since, so `end` must say lastSeq = since");
    let sock = unix_seen(&d.socket(), "top", since, false, WAIT).await;
    assert!(sock.ended && sock.seqs.is_empty(), "{sock:?}");
    assert_eq!(
        sock.end_last_seq,
        Some(since),
        "unix socket: nothing came after since, so `end` must say lastSeq = since"
    );
}

// ---------------------------------------------------------------------------
// The probe's open points, answered (docs/bad-input.md).

/// Reads server frames until a close frame arrives (or EOF / the bound).
async fn read_close(s: &mut TcpStream) -> Option<u16> {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, async {
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = s.read(&mut chunk).await {
            buf.extend_from_slice(&chunk[..n]);
            if close_code(&buf).is_some() {
                return;
            }
        }
    })
    .await;
    close_code(&buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue18_open_points_websocket_key_must_be_16_bytes() {
    let d = Daemon::start();
    for key in ["c2hvcnQ=", "not base64 at all!", "dGhpcyBrZXkgaXMgdHdlbnR5IGJ5dGVz"] {
        let mut s = TcpStream::connect(&d.addr).await.unwrap();
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&buf);
        assert!(text.starts_with("HTTP/1.1 400"), "key {key:?} (RFC 6455: 16 bytes, base64) was accepted: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue18_open_points_protocol_errors_close_with_1007_and_1002() {
    let d = Daemon::start();
    let path = format!("/ws?token={}", d.token());
    // A text message that is not UTF-8: 1007.
    let mut s = raw_upgrade(&d.addr, &path).await;
    s.write_all(&client_frame(1, true, b"\xff\xfe{}")).await.unwrap();
    assert_eq!(read_close(&mut s).await, Some(1007), "invalid UTF-8 must close with 1007");
    // A frame with a reserved bit set (no extension negotiated): 1002.
    let mut s = raw_upgrade(&d.addr, &path).await;
    let mut frame = client_frame(1, true, b"{}");
    frame[0] |= 0x40;
    s.write_all(&frame).await.unwrap();
    assert_eq!(read_close(&mut s).await, Some(1002), "a protocol error must close with 1002");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue18_open_points_a_large_jwt_fits_in_the_authorization_header() {
    let d = Daemon::start();
    // A 12 KB bearer token (a JWT with many caps): read and judged, not cut off.
    let big = "x".repeat(12 * 1024);
    let (status, body) = http(&d, "GET", "/runs", Some(&big)).await;
    assert_eq!(status, 401, "a 12 KB Authorization header must be read and answered: {status} {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue18_open_points_bad_environment_names_are_refused() {
    let d = Daemon::start();
    for (key, value) in [("A=B", "x"), ("", "x"), ("OK", "nul\0byte")] {
        let launch = LaunchRequest {
            command: vec!["true".into()],
            env: [(key.to_owned(), value.to_owned())].into(),
            ..LaunchRequest::default()
        };
        match d.request(Request::Launch(launch)).await {
            Response::Error { code, .. } => assert_eq!(code, "bad-request", "env {key:?}={value:?}"),
            other => panic!("env {key:?}={value:?} was accepted: {other:?}"),
        }
    }
}
