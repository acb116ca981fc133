//! The two figures issue 5 asks for, measured on loopback with the release
//! binary (build it first: `cargo build --release`):
//!
//! ```text
//! cargo build --release && cargo run --release --example gateway_figures
//! ```
//!
//! (a) Catch-up after a 30 s gateway outage. A gateway starts, a daemon
//!     connects to it, the gateway is killed (-9), a job writes lines
//!     steadily for 30 s (each line its own write), then the gateway starts
//!     again on the same port. Reported: the host's reconnect delay (its
//!     backoff), and the catch-up rate in events/s from the first event the
//!     gateway receives until its copy is complete (`GET /runs/ID?host=`
//!     `lastSeq` polled every 5 ms), plus the same from gateway start.
//! (b) The added latency of a gateway hop. A job writes `t=<unix ns>` lines
//!     at a steady rate; one WebSocket subscriber on the daemon and one on
//!     the gateway (same process) timestamp each line on receipt. Reported:
//!     p50/p99 of gateway − daemon receive time, and of write → receive at
//!     each.
//!
//! The job is this program itself (`gateway_figures writer RATE SECS`).
//! Every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const OUTAGE: Duration = Duration::from_secs(30);
const OUTAGE_RATE: u64 = 8000;
const LATENCY_RATE: u64 = 500;
const LATENCY_SECS: u64 = 10;
const BOUND: Duration = Duration::from_secs(180);

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("writer") {
        let rate: u64 = args[2].parse()?;
        let secs: u64 = args[3].parse()?;
        writer(rate, secs);
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(figures())
}

/// Writes `t=<unix ns> i=<n>` lines, `rate` a second for `secs`, one write each.
fn writer(rate: u64, secs: u64) {
    use std::io::Write;
    let start = Instant::now();
    let total = rate * secs;
    let mut out = std::io::stdout().lock();
    for i in 0..total {
        let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let line = format!("t={} i={i}\n", unix_nanos());
        if out.write_all(line.as_bytes()).and_then(|()| out.flush()).is_err() {
            return;
        }
    }
}

fn unix_nanos() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// The release `runtap` next to this example (TARGET/release/examples/..),
/// else under `CARGO_TARGET_DIR` or `target/`.
fn runtap_bin() -> anyhow::Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent().and_then(Path::parent)
    {
        candidates.push(dir.join("runtap"));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    candidates.push(target.join("release").join("runtap"));
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .context("no release runtap binary found: run `cargo build --release` first")
}

struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn(cmd: &mut Command, log: &Path, ready: &str) -> anyhow::Result<(Proc, String)> {
        let before = std::fs::read_to_string(log).unwrap_or_default().matches(ready).count();
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let child =
            cmd.env("RUST_LOG", "runtap=info").stdin(Stdio::null()).stdout(Stdio::null()).stderr(file).spawn()?;
        let mut p = Proc { child: Some(child), log: log.to_owned() };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.matches(ready).count() > before {
                let line = text.lines().rfind(|l| l.contains(ready)).unwrap_or_default();
                let addr = line.split_whitespace().find_map(|w| w.strip_prefix("listen=")).unwrap_or_default();
                return Ok((p, addr.to_owned()));
            }
            if let Some(status) = p.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("{ready}: exited with {status}:\n{text}");
            }
            if Instant::now() > deadline {
                bail!("{ready}: not ready in time:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
            eprintln!("killed a process that did not stop; log {}", self.log.display());
        }
    }
}

struct Setup {
    bin: PathBuf,
    dir: tempfile::TempDir,
    gw_addr: String,
}

impl Setup {
    fn new() -> anyhow::Result<Setup> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("empty.toml"), "")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        Ok(Setup { bin: runtap_bin()?, dir, gw_addr: format!("127.0.0.1:{port}") })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn gateway(&self) -> anyhow::Result<Proc> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("gateway").arg("--config").arg(self.path("empty.toml"));
        cmd.arg("--state-dir").arg(self.path("gw")).args(["--listen", &self.gw_addr]);
        Ok(Proc::spawn(&mut cmd, &self.path("gateway.log"), "runtap gateway ready")?.0)
    }

    /// A daemon forwarding as host `h1`; returns it and its listen address.
    fn daemon(&self) -> anyhow::Result<(Proc, String)> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("daemon").arg("--config").arg(self.path("empty.toml"));
        cmd.arg("--state-dir").arg(self.path("d")).arg("--socket").arg(self.path("d.sock"));
        cmd.args(["--listen", "127.0.0.1:0", "--upstream", &format!("ws://{}", self.gw_addr), "--host-id", "h1"]);
        cmd.arg("--upstream-token-file").arg(self.path("gw/agent-token"));
        cmd.env_remove("RUNTAP_SOCKET");
        Proc::spawn(&mut cmd, &self.path("daemon.log"), "runtap daemon ready")
    }

    fn token(&self, which: &str) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(self.path(which))?.trim().to_owned())
    }

    /// Launches `this-exe writer RATE SECS` as run `id`, detached.
    fn launch(&self, id: &str, rate: u64, secs: u64) -> anyhow::Result<()> {
        let me = std::env::current_exe()?;
        let out = Command::new(&self.bin)
            .env("RUNTAP_SOCKET", self.path("d.sock"))
            .args(["run", "--detach", "--id", id, "--"])
            .arg(me)
            .args(["writer", &rate.to_string(), &secs.to_string()])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!("launch {id}: {out:?}");
        }
        Ok(())
    }
}

async fn http_get(addr: &str, path: &str, token: &str) -> anyhow::Result<(u16, Value)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf);
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

async fn run_info(addr: &str, path: &str, token: &str) -> Option<Value> {
    match http_get(addr, path, token).await {
        Ok((200, v)) => Some(v),
        _ => None,
    }
}

async fn wait_for<F, Fut>(what: &str, mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + BOUND;
    while !cond().await {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

async fn figures() -> anyhow::Result<()> {
    let (a_rows, b_rows) = (catch_up().await?, latency().await?);
    println!();
    println!("{:<58} {:>14}", "(a) catch-up after a 30 s gateway outage", "");
    for (k, v) in a_rows {
        println!("  {k:<56} {v:>14}");
    }
    println!("{:<58} {:>7} {:>7}", "(b) gateway hop latency (ms)", "p50", "p99");
    for (k, p50, p99) in b_rows {
        println!("  {k:<56} {p50:>7.2} {p99:>7.2}");
    }
    Ok(())
}

async fn catch_up() -> anyhow::Result<Vec<(String, String)>> {
    let s = Setup::new()?;
    let mut gw = s.gateway()?;
    let (_d, d_addr) = s.daemon()?;
    let (gw_token, d_token) = (s.token("gw/token")?, s.token("d/token")?);
    let hosts_connected = |want: bool| {
        let (addr, t) = (s.gw_addr.clone(), gw_token.clone());
        async move {
            match http_get(&addr, "/hosts", &t).await {
                Ok((200, v)) => v.as_array().is_some_and(|a| a.iter().any(|h| h["connected"] == want)),
                _ => false,
            }
        }
    };
    wait_for("host connected", || hosts_connected(true)).await?;
    gw.kill9();
    eprintln!("(a) gateway down; job writing {OUTAGE_RATE} lines/s for {} s", OUTAGE.as_secs());
    let outage_start = Instant::now();
    s.launch("outage", OUTAGE_RATE, OUTAGE.as_secs())?;
    let host_path = "/runs/outage".to_owned();
    // The job ends on its own after 30 s; wait for its final status.
    wait_for("outage run to finish", || async {
        run_info(&d_addr, &host_path, &d_token).await.is_some_and(|v| v["status"] == "succeeded")
    })
    .await?;
    let host = run_info(&d_addr, &host_path, &d_token).await.context("host run")?;
    let total = host["lastSeq"].as_u64().context("lastSeq")?;
    let down_for = outage_start.elapsed();

    let started = Instant::now();
    let _gw = s.gateway()?;
    let gw_ready = started.elapsed();
    let gw_path = "/runs/outage?host=h1".to_owned();
    let mut first: Option<(Instant, u64)> = None;
    let deadline = Instant::now() + BOUND;
    loop {
        let seq = run_info(&s.gw_addr, &gw_path, &gw_token).await.and_then(|v| v["lastSeq"].as_u64()).unwrap_or(0);
        if seq > 0 && first.is_none() {
            first = Some((Instant::now(), seq));
        }
        if seq >= total {
            break;
        }
        if Instant::now() > deadline {
            bail!("gateway copy incomplete: {seq}/{total}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let done = Instant::now();
    let (first_at, first_seq) = first.context("no first event")?;
    let transfer = done - first_at;
    let rate = (total - first_seq) as f64 / transfer.as_secs_f64().max(1e-6);
    let overall = total as f64 / (done - started).as_secs_f64();
    Ok(vec![
        ("outage (gateway down, s)".into(), format!("{:.1}", down_for.as_secs_f64())),
        ("events written by the host during it".into(), total.to_string()),
        ("gateway start -> ready (s)".into(), format!("{:.2}", gw_ready.as_secs_f64())),
        (
            "gateway start -> first event received (reconnect backoff, s)".into(),
            format!("{:.2}", (first_at - started).as_secs_f64()),
        ),
        ("first event -> copy complete (s)".into(), format!("{:.2}", transfer.as_secs_f64())),
        ("catch-up rate once connected (events/s)".into(), format!("{rate:.0}")),
        ("catch-up rate from gateway start, incl. backoff (events/s)".into(), format!("{overall:.0}")),
    ])
}

/// One subscriber's receive time (unix ns) of every `t=` line, by line index.
async fn subscribe(url: String) -> anyhow::Result<HashMap<u64, (u128, u128)>> {
    let (mut ws, _) = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(url)).await??;
    let mut got = HashMap::new();
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(_) => break,
            Err(_) => bail!("subscriber timed out"),
        };
        let now = unix_nanos();
        let Message::Text(t) = msg else {
            if matches!(msg, Message::Close(_)) {
                break;
            }
            continue;
        };
        let v: Value = serde_json::from_str(&t)?;
        if v["type"] == "error" {
            bail!("subscriber got {v}");
        }
        if v["type"] != "stdout" {
            continue;
        }
        for line in v["data"].as_str().unwrap_or("").lines() {
            let mut it = line.split_whitespace();
            let (Some(t), Some(i)) = (it.next(), it.next()) else { continue };
            let (Some(t), Some(i)) = (t.strip_prefix("t="), i.strip_prefix("i=")) else { continue };
            got.insert(i.parse()?, (t.parse()?, now));
        }
    }
    Ok(got)
}

fn percentiles(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    (at(0.50), at(0.99))
}

async fn latency() -> anyhow::Result<Vec<(String, f64, f64)>> {
    let s = Setup::new()?;
    let _gw = s.gateway()?;
    let (_d, d_addr) = s.daemon()?;
    let (gw_token, d_token) = (s.token("gw/token")?, s.token("d/token")?);
    wait_for("host connected", || {
        let (addr, t) = (s.gw_addr.clone(), gw_token.clone());
        async move {
            matches!(http_get(&addr, "/hosts", &t).await, Ok((200, v)) if v.as_array().is_some_and(|a| !a.is_empty() && a[0]["connected"] == true))
        }
    })
    .await?;
    eprintln!("(b) job writing {LATENCY_RATE} lines/s for {LATENCY_SECS} s, one subscriber on each side");
    let on_daemon = tokio::spawn(subscribe(format!("ws://{d_addr}/runs?runId=lat&token={d_token}")));
    let on_gateway = tokio::spawn(subscribe(format!("ws://{}/runs?runId=lat&host=h1&token={gw_token}", s.gw_addr)));
    // Both subscriptions wait for the run: launch once both servers count them.
    for addr in [d_addr.clone(), s.gw_addr.clone()] {
        wait_for("subscription registered", || {
            let addr = addr.clone();
            async move {
                matches!(http_get(&addr, "/healthz", "").await, Ok((200, v)) if v["subscriptions"].as_u64() >= Some(1))
            }
        })
        .await?;
    }
    s.launch("lat", LATENCY_RATE, LATENCY_SECS)?;
    let d = on_daemon.await??;
    let g = on_gateway.await??;
    let expected = (LATENCY_RATE * LATENCY_SECS) as usize;
    if d.len() != expected || g.len() != expected {
        bail!("lines received: daemon {} gateway {} of {expected}", d.len(), g.len());
    }
    let ms = |ns: i128| ns as f64 / 1e6;
    let mut hop = Vec::new();
    let mut to_daemon = Vec::new();
    let mut to_gateway = Vec::new();
    for (i, (t, rd)) in &d {
        let (_, rg) = g[i];
        hop.push(ms(rg as i128 - *rd as i128));
        to_daemon.push(ms(*rd as i128 - *t as i128));
        to_gateway.push(ms(rg as i128 - *t as i128));
    }
    let row = |name: &str, v: Vec<f64>| {
        let (p50, p99) = percentiles(v);
        (name.to_owned(), p50, p99)
    };
    Ok(vec![
        row(&format!("added by the gateway hop (gw − daemon recv), n={expected}"), hop),
        row("write -> daemon subscriber", to_daemon),
        row("write -> gateway subscriber", to_gateway),
    ])
}
