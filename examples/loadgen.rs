//! Load generator for the benchmarks (see `BENCHMARKS.md` and `bench/run.sh`).
//!
//! It speaks to three servers with one client, so the client's cost is the
//! same for each: runtap (`/runs?runId=` WebSocket, launches over the Unix
//! socket), the `ws` baseline (same envelope, launches by `POST /launch`) and
//! the socket.io baseline (Engine.IO v4 / Socket.IO v5 over a bare WebSocket:
//! `40{auth}`, `42["subscribe",ID]`, `42["run-event",{..}]`, pings `2` → `3`).
//!
//! Latency comes from the job's own output: `bench/jobs/lines.py` writes
//! lines `t=<unix ns> i=<index> xxx…`; on each frame the receive time minus
//! `t` is one sample. The frame text is scanned for those fixed-width fields
//! rather than JSON-decoded, so the client stays cheap on a shared box.
//!
//! Modes, each printing one JSON object on stdout:
//! - `stream`: N subscribers (+ K stalled ones that never read) wait for a
//!   run, which is then launched; reports time to the last final event,
//!   events, bytes, lines, latency p50/p99/max, server RSS and CPU.
//! - `idle`: N subscribers to an idle run; server RSS per subscriber and CPU.
//! - `launches`: short runs (`true`) over runtap's Unix socket, per second.
//!
//! Every wait is bounded (`--timeout`, connect and settle limits).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long all subscribers together may take to connect and subscribe.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(90);
/// Resubscriptions allowed per subscriber after a `lagged` close (runtap).
const MAX_RESUBSCRIBES: u32 = 1000;
/// How often the server's RSS is sampled during a `stream` run.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// /proc reports CPU times in USER_HZ, which is 100 on Linux/x86-64.
const USER_HZ: f64 = 100.0;

#[derive(Parser)]
#[command(about = "runtap benchmark load generator")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// N subscribers to one run that is launched once all are ready.
    Stream(StreamArgs),
    /// N idle subscribers to an idle run: RSS per subscriber, idle CPU.
    Idle(IdleArgs),
    /// Short runs launched over runtap's Unix socket, per second.
    Launches(LaunchArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Proto {
    Runtap,
    Ws,
    Socketio,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Scan {
    /// Every line of every frame is a latency sample.
    All,
    /// Only the first (oldest) line of each frame; lines are counted by index.
    Ends,
}

#[derive(Args, Clone, Debug)]
struct Target {
    #[arg(long, value_enum)]
    proto: Proto,
    /// HOST:PORT of the server's HTTP/WebSocket listener.
    #[arg(long)]
    addr: String,
    #[arg(long, default_value = "")]
    token: String,
    /// runtap's Unix socket (launch and cancel for `--proto runtap`).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Server process to sample for RSS and CPU.
    #[arg(long)]
    server_pid: Option<u32>,
    #[arg(long)]
    run_id: String,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
}

#[derive(Args, Debug)]
struct StreamArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long)]
    subs: usize,
    /// Extra subscribers that connect and subscribe, then never read.
    #[arg(long, default_value_t = 0)]
    stalled: usize,
    /// Lines the job writes (to check every subscriber got all of them).
    #[arg(long)]
    expect_lines: u64,
    #[arg(long, value_enum, default_value = "ends")]
    scan: Scan,
    #[arg(long, default_value_t = 150.0)]
    timeout: f64,
    /// The job.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Args, Debug)]
struct IdleArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long)]
    subs: usize,
    /// Pause after the last subscriber is ready before measuring RSS.
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// Window over which the server's CPU use is measured.
    #[arg(long, default_value_t = 10.0)]
    cpu_window: f64,
    /// The idle job (e.g. `sleep 600`).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Args, Debug)]
struct LaunchArgs {
    #[arg(long)]
    socket: PathBuf,
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Runs in flight at once (runtap's default `runs.max_concurrent` is 64).
    #[arg(long, default_value_t = 32)]
    window: usize,
    #[arg(long, default_value = "launch")]
    prefix: String,
    /// Also measure spawning `true` directly from this process, as a ceiling.
    #[arg(long)]
    reference: bool,
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            println!("{}", json!({ "error": format!("start tokio: {e}") }));
            std::process::exit(1);
        }
    };
    let result = rt.block_on(async {
        match cli.mode {
            Mode::Stream(a) => stream(a).await,
            Mode::Idle(a) => idle(a).await,
            Mode::Launches(a) => launches(a).await,
        }
    });
    match result {
        Ok(v) => println!("{v}"),
        Err(e) => {
            println!("{}", json!({ "error": e }));
            std::process::exit(1);
        }
    }
    rt.shutdown_timeout(Duration::from_secs(2));
}

// ---------------------------------------------------------------- control

/// Launches the job: runtap over its Unix socket, the baselines by HTTP.
async fn launch(t: &Target, command: &[String]) -> Result<(), String> {
    match t.proto {
        Proto::Runtap => {
            let req = json!({"type": "launch", "runId": t.run_id, "command": command});
            let answer = unix_request(socket_of(t)?, &req).await?;
            match answer["type"].as_str() {
                Some("launched") => Ok(()),
                _ => Err(format!("launch refused: {answer}")),
            }
        }
        Proto::Ws | Proto::Socketio => {
            let body = json!({"runId": t.run_id, "command": command}).to_string();
            http_post(&t.addr, "/launch", &body).await
        }
    }
}

async fn cancel(t: &Target) -> Result<(), String> {
    match t.proto {
        Proto::Runtap => unix_request(socket_of(t)?, &json!({"type": "cancel", "runId": t.run_id})).await.map(|_| ()),
        Proto::Ws | Proto::Socketio => http_post(&t.addr, &format!("/cancel?runId={}", t.run_id), "").await,
    }
}

fn socket_of(t: &Target) -> Result<&PathBuf, String> {
    t.socket.as_ref().ok_or_else(|| "--socket is required with --proto runtap".to_string())
}

/// One request, one answer line, on a fresh Unix socket connection.
async fn unix_request(path: &PathBuf, req: &Value) -> Result<Value, String> {
    let io = async {
        let mut s = UnixStream::connect(path).await.map_err(|e| format!("connect {}: {e}", path.display()))?;
        s.write_all(format!("{req}\n").as_bytes()).await.map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).await.map_err(|e| e.to_string())?;
        serde_json::from_str(&line).map_err(|e| format!("bad answer {line:?}: {e}"))
    };
    tokio::time::timeout(Duration::from_secs(10), io).await.map_err(|_| "unix request timed out".to_string())?
}

async fn http_post(addr: &str, path: &str, body: &str) -> Result<(), String> {
    let io = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        let req = format!(
            "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.map_err(|e| e.to_string())?;
        let resp = String::from_utf8_lossy(&resp);
        if resp.starts_with("HTTP/1.1 200") { Ok(()) } else { Err(format!("POST {path}: {resp}")) }
    };
    tokio::time::timeout(Duration::from_secs(10), io).await.map_err(|_| "http request timed out".to_string())?
}

// ---------------------------------------------------------------- /proc

/// Resident set size of `pid` in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    proc_status_field(pid, "VmRSS:")
}

fn proc_status_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime of a process, in seconds. `pid` None = this process.
fn cpu_secs(pid: Option<u32>) -> Option<f64> {
    let path = pid.map_or_else(|| "/proc/self/stat".to_string(), |p| format!("/proc/{p}/stat"));
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the `(comm)`, which may itself contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / USER_HZ)
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

// ---------------------------------------------------------------- histogram

/// Log-linear histogram of microseconds: exact below 64, then 32 buckets per
/// power of two (about 3 % wide).
#[derive(Clone)]
struct Hist {
    counts: Vec<u64>,
    n: u64,
    max: u64,
}

const HIST_SUB: u64 = 32;
const HIST_LINEAR: u64 = 64;

impl Hist {
    fn new() -> Self {
        Hist { counts: vec![0; (HIST_LINEAR + 40 * HIST_SUB) as usize], n: 0, max: 0 }
    }
    fn index(v: u64) -> usize {
        if v < HIST_LINEAR {
            return v as usize;
        }
        let e = 63 - u64::from(v.leading_zeros()); // >= 6
        let sub = (v >> (e - 5)) & (HIST_SUB - 1);
        (HIST_LINEAR + (e - 6) * HIST_SUB + sub).min(HIST_LINEAR + 40 * HIST_SUB - 1) as usize
    }
    /// Lower bound of a bucket's values.
    fn value(i: usize) -> u64 {
        let i = i as u64;
        if i < HIST_LINEAR {
            return i;
        }
        let e = (i - HIST_LINEAR) / HIST_SUB + 6;
        let sub = (i - HIST_LINEAR) % HIST_SUB;
        (1 << e) + (sub << (e - 5))
    }
    fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.n += 1;
        self.max = self.max.max(v);
    }
    fn merge(&mut self, o: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.n += o.n;
        self.max = self.max.max(o.max);
    }
    /// The value at quantile `q`, in milliseconds.
    fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.n == 0 {
            return None;
        }
        let rank = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                // Middle of the bucket, never above the true maximum.
                let lo = Self::value(i);
                let hi = if i + 1 < self.counts.len() { Self::value(i + 1) } else { lo };
                return Some(((lo + hi) / 2).min(self.max) as f64 / 1000.0);
            }
        }
        Some(self.max as f64 / 1000.0)
    }
}

// ---------------------------------------------------------------- frames

/// What a text frame is, from a cheap look at its head (never the payload).
#[derive(Debug, PartialEq)]
enum Kind {
    Output,
    Status {
        last: bool,
        running: bool,
    },
    Lagged {
        last_seq: Option<u64>,
    },
    OtherError(String),
    /// socket.io: `subscribed` acknowledgement.
    Subscribed,
    /// Engine.IO ping (`2`).
    Ping,
    Other,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The string value after `key` (e.g. `"type":"`) in `s`.
fn str_after<'a>(s: &'a str, key: &str) -> Option<&'a str> {
    let start = find(s.as_bytes(), key.as_bytes())? + key.len();
    let len = s[start..].find('"')?;
    Some(&s[start..start + len])
}

fn num_after(s: &str, key: &str) -> Option<u64> {
    let start = find(s.as_bytes(), key.as_bytes())? + key.len();
    let digits: &str = &s[start..];
    let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// Classifies an event object. `type` precedes `data` in all three servers'
/// encodings, so the first `"type":"` is the real one.
fn classify_event(s: &str) -> Kind {
    match str_after(s, "\"type\":\"") {
        Some("stdout" | "stderr") => Kind::Output,
        Some("status") => {
            let data = str_after(s, "\"data\":\"").unwrap_or("");
            Kind::Status { last: !matches!(data, "queued" | "running"), running: data == "running" }
        }
        Some("error") => match str_after(s, "\"code\":\"") {
            Some("lagged") => Kind::Lagged { last_seq: num_after(s, "\"lastSeq\":") },
            _ => Kind::OtherError(s.chars().take(300).collect()),
        },
        _ => Kind::Other,
    }
}

fn classify(proto: Proto, s: &str) -> Kind {
    match proto {
        Proto::Runtap | Proto::Ws => classify_event(s),
        Proto::Socketio => {
            if let Some(rest) = s.strip_prefix("42[\"run-event\",") {
                classify_event(rest)
            } else if s.starts_with("42[\"subscribed\"") {
                Kind::Subscribed
            } else if s == "2" {
                Kind::Ping
            } else if s.starts_with("44") || s.starts_with('1') {
                Kind::OtherError(s.chars().take(300).collect())
            } else {
                Kind::Other
            }
        }
    }
}

/// Length of a line's fixed head: `t=` 19 digits ` i=` 8 digits ` `.
const LINE_HEAD: usize = 33;

/// Parses a line head at `p`: (write time in ns, line index).
fn line_at(b: &[u8], p: usize) -> Option<(u64, u64)> {
    let h = b.get(p..p + LINE_HEAD)?;
    if &h[..2] != b"t=" || &h[21..24] != b" i=" || h[32] != b' ' {
        return None;
    }
    let num = |d: &[u8]| d.iter().try_fold(0u64, |acc, &c| c.is_ascii_digit().then(|| acc * 10 + u64::from(c - b'0')));
    Some((num(&h[2..21])?, num(&h[24..32])?))
}

/// Finds line heads in a frame: all of them, or the first and the last.
fn scan_lines(b: &[u8], scan: Scan, mut each: impl FnMut(u64, u64, bool)) {
    let mut first = true;
    let mut p = 0;
    let mut last_found = None;
    while p + LINE_HEAD <= b.len() {
        if b[p] == b't'
            && b[p + 1] == b'='
            && let Some((t, i)) = line_at(b, p)
        {
            if first || scan == Scan::All {
                each(t, i, true);
                first = false;
                if scan == Scan::Ends {
                    last_found = Some(i);
                    break;
                }
            }
            p += LINE_HEAD;
            continue;
        }
        p += 1;
    }
    if scan == Scan::Ends && last_found.is_some() {
        // The last complete head, searching back from the end.
        let mut q = b.len().saturating_sub(LINE_HEAD);
        while q > p {
            if b[q] == b't'
                && b[q + 1] == b'='
                && let Some((t, i)) = line_at(b, q)
            {
                each(t, i, false);
                return;
            }
            q -= 1;
        }
    }
}

// ---------------------------------------------------------------- subscriber

#[derive(Default)]
struct SubStats {
    events: u64,
    bytes: u64,
    lines: u64,
    /// Highest line index seen (-1: none).
    max_idx: i64,
    gaps: u64,
    dups: u64,
    hist: Option<Hist>,
    first_at: Option<Instant>,
    done_at: Option<Instant>,
    resubscribes: u32,
    error: Option<String>,
}

impl SubStats {
    fn new() -> Self {
        SubStats { max_idx: -1, ..Default::default() }
    }

    fn on_output(&mut self, text: &str, scan: Scan) {
        let now = now_ns();
        self.events += 1;
        let b = text.as_bytes();
        let hist = self.hist.get_or_insert_with(Hist::new);
        let (mut lo, mut hi) = (None, None);
        scan_lines(b, scan, |t, i, sample| {
            if sample {
                hist.record(now.saturating_sub(t) / 1000);
            }
            lo = Some(lo.map_or(i, |l: u64| l.min(i)));
            hi = Some(hi.map_or(i, |h: u64| h.max(i)));
        });
        if let (Some(lo), Some(hi)) = (lo, hi) {
            let (lo, hi) = (lo as i64, hi as i64);
            // A line cut between two chunks (the Node servers cut anywhere)
            // may be unreadable in both: allow one skipped index.
            if lo > self.max_idx + 2 {
                self.gaps += 1;
            }
            if lo <= self.max_idx {
                self.dups += 1;
            }
            if hi > self.max_idx {
                self.lines += (hi - self.max_idx) as u64;
                self.max_idx = hi;
            }
        }
    }
}

fn ws_config() -> WebSocketConfig {
    // Small buffers: 10 000 of these share the box with the server.
    WebSocketConfig::default().read_buffer_size(16 * 1024).write_buffer_size(0)
}

/// Receive buffer of a stalled subscriber's socket, so the kernel soaks up
/// little and the server's own bounds are what a stall runs into.
const STALLED_RCVBUF: u32 = 4 * 1024;

/// Connects and subscribes; for socket.io, up to the `subscribed` ack.
async fn connect(t: &Target, since: u64) -> Result<Ws, String> {
    connect_with(t, since, None).await
}

async fn connect_with(t: &Target, since: u64, rcvbuf: Option<u32>) -> Result<Ws, String> {
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let url = match t.proto {
        Proto::Runtap | Proto::Ws => {
            format!("ws://{}/runs?runId={}&token={}&since={since}", t.addr, enc(&t.run_id), enc(&t.token))
        }
        Proto::Socketio => format!("ws://{}/socket.io/?EIO=4&transport=websocket", t.addr),
    };
    let req = url.into_client_request().map_err(|e| e.to_string())?;
    let addr: std::net::SocketAddr = t.addr.parse().map_err(|e| format!("--addr {}: {e}", t.addr))?;
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }
        .map_err(|e| e.to_string())?;
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size).map_err(|e| e.to_string())?;
    }
    let tcp = socket.connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(req, MaybeTlsStream::Plain(tcp), Some(ws_config()))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    if t.proto == Proto::Socketio {
        socketio_subscribe(&mut ws, t).await?;
    }
    Ok(ws)
}

async fn socketio_subscribe(ws: &mut Ws, t: &Target) -> Result<(), String> {
    let mut sent_subscribe = false;
    while let Some(msg) = ws.next().await {
        let Message::Text(text) = msg.map_err(|e| e.to_string())? else { continue };
        let s = text.as_str();
        let reply = if s.starts_with('0') {
            format!("40{}", json!({"token": t.token}))
        } else if s.starts_with("40") && !sent_subscribe {
            sent_subscribe = true;
            format!("42{}", json!(["subscribe", t.run_id]))
        } else if s == "2" {
            "3".to_string()
        } else if s.starts_with("42[\"subscribed\"") {
            return Ok(());
        } else if s.starts_with("44") {
            return Err(format!("socket.io connect refused: {s}"));
        } else {
            continue;
        };
        ws.send(Message::text(reply)).await.map_err(|e| e.to_string())?;
    }
    Err("closed during socket.io handshake".into())
}

/// Reads one run to its final event, resubscribing after `lagged` (runtap).
async fn subscriber(
    t: Arc<Target>,
    scan: Scan,
    gate: Arc<Semaphore>,
    ready: mpsc::Sender<Result<(), String>>,
    stop: CancellationToken,
) -> SubStats {
    let mut st = SubStats::new();
    let mut ws = {
        let _permit = gate.acquire().await;
        match connect(&t, 0).await {
            Ok(ws) => ws,
            Err(e) => {
                let _ = ready.send(Err(e.clone())).await;
                st.error = Some(e);
                return st;
            }
        }
    };
    let _ = ready.send(Ok(())).await;
    let mut last_seq = 0u64;
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => { st.error = Some("stopped before the final event".into()); return st; }
            m = ws.next() => m,
        };
        let text = match msg {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map(|f| u16::from(f.code));
                if code == Some(1013) && t.proto == Proto::Runtap && st.resubscribes < MAX_RESUBSCRIBES {
                    match reconnect(&t, last_seq, &mut st).await {
                        Some(w) => {
                            ws = w;
                            continue;
                        }
                        None => return st,
                    }
                }
                st.error = Some(format!("closed ({code:?}) before the final event"));
                return st;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                st.error = Some(e.to_string());
                return st;
            }
            None => {
                st.error = Some("connection ended before the final event".into());
                return st;
            }
        };
        let s = text.as_str();
        st.bytes += s.len() as u64;
        let kind = classify(t.proto, s);
        if t.proto == Proto::Runtap && matches!(kind, Kind::Output | Kind::Status { .. }) {
            last_seq = num_after(s, "\"seq\":").unwrap_or(last_seq);
        }
        match kind {
            Kind::Output => {
                st.first_at.get_or_insert_with(Instant::now);
                st.on_output(s, scan);
            }
            Kind::Status { last: true, .. } => {
                st.done_at = Some(Instant::now());
                return st;
            }
            Kind::Ping => {
                if let Err(e) = ws.send(Message::text("3")).await {
                    st.error = Some(e.to_string());
                    return st;
                }
            }
            Kind::Lagged { last_seq: Some(seq) } => last_seq = seq,
            Kind::OtherError(e) => {
                st.error = Some(e);
                return st;
            }
            _ => {}
        }
    }
}

async fn reconnect(t: &Target, since: u64, st: &mut SubStats) -> Option<Ws> {
    st.resubscribes += 1;
    match connect(t, since).await {
        Ok(w) => Some(w),
        Err(e) => {
            st.error = Some(format!("resubscribe: {e}"));
            None
        }
    }
}

/// Connects and subscribes, then holds the connection without reading.
async fn stalled(
    t: Arc<Target>,
    gate: Arc<Semaphore>,
    ready: mpsc::Sender<Result<(), String>>,
    stop: CancellationToken,
) {
    let ws = {
        let _permit = gate.acquire().await;
        connect_with(&t, 0, Some(STALLED_RCVBUF)).await
    };
    let _ = ready.send(ws.as_ref().map(|_| ()).map_err(|e| e.clone())).await;
    stop.cancelled().await;
    drop(ws);
}

/// Waits for `n` ready signals; the first error or the timeout ends it.
async fn all_ready(rx: &mut mpsc::Receiver<Result<(), String>>, n: usize) -> Result<(), String> {
    let wait = async {
        for _ in 0..n {
            match rx.recv().await {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(format!("subscriber failed to connect: {e}")),
                None => return Err("subscribers gone".into()),
            }
        }
        Ok(())
    };
    tokio::time::timeout(CONNECT_TIMEOUT, wait).await.map_err(|_| "subscribers did not connect in time".to_string())?
}

/// Samples the server's RSS until stopped; returns the peak in KiB.
fn spawn_rss_sampler(pid: Option<u32>, stop: CancellationToken) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let Some(pid) = pid else { return 0 };
        let mut peak = 0;
        loop {
            peak = peak.max(rss_kib(pid).unwrap_or(0));
            tokio::select! {
                _ = stop.cancelled() => return peak,
                _ = tokio::time::sleep(SAMPLE_EVERY) => {}
            }
        }
    })
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

async fn stream(a: StreamArgs) -> Result<Value, String> {
    let t = Arc::new(a.target.clone());
    let gate = Arc::new(Semaphore::new(t.connect_concurrency.max(1)));
    let stop = CancellationToken::new();
    let stop_stalled = CancellationToken::new();
    let (ready_tx, mut ready_rx) = mpsc::channel(1024);
    let connect_start = Instant::now();
    let mut subs = Vec::with_capacity(a.subs);
    for _ in 0..a.subs {
        subs.push(tokio::spawn(subscriber(t.clone(), a.scan, gate.clone(), ready_tx.clone(), stop.clone())));
    }
    let mut stalls = Vec::new();
    for _ in 0..a.stalled {
        stalls.push(tokio::spawn(stalled(t.clone(), gate.clone(), ready_tx.clone(), stop_stalled.clone())));
    }
    drop(ready_tx);
    all_ready(&mut ready_rx, a.subs + a.stalled).await?;
    let connect_s = connect_start.elapsed().as_secs_f64();

    let rss_before = t.server_pid.and_then(rss_kib).unwrap_or(0);
    let sampler_stop = CancellationToken::new();
    let sampler = spawn_rss_sampler(t.server_pid, sampler_stop.clone());
    let (server_cpu0, self_cpu0) = (t.server_pid.and_then(|p| cpu_secs(Some(p))), cpu_secs(None));
    let t0 = Instant::now();
    launch(&t, &a.command).await?;

    let mut stats = Vec::with_capacity(subs.len());
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(a.timeout);
    let mut timed_out = false;
    for mut h in subs {
        if !timed_out {
            match tokio::time::timeout_at(deadline, &mut h).await {
                Ok(r) => {
                    stats.push(r.map_err(|e| e.to_string())?);
                    continue;
                }
                Err(_) => {
                    timed_out = true;
                    stop.cancel();
                }
            }
        }
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(5), h).await {
            stats.push(s);
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let (server_cpu1, self_cpu1) = (t.server_pid.and_then(|p| cpu_secs(Some(p))), cpu_secs(None));
    sampler_stop.cancel();
    let rss_peak = sampler.await.unwrap_or(0).max(rss_before);
    let rss_after = t.server_pid.and_then(rss_kib).unwrap_or(0);
    stop_stalled.cancel();
    for h in stalls {
        let _ = tokio::time::timeout(Duration::from_secs(2), h).await;
    }
    if timed_out {
        let _ = cancel(&t).await;
    }

    let mut hist = Hist::new();
    let (mut events, mut bytes, mut lines, mut gaps, mut dups, mut resubs) = (0, 0, 0, 0, 0, 0);
    let (mut complete, mut errors) = (0, Vec::new());
    let mut last_done: Option<Instant> = None;
    let mut first_event: Option<Instant> = None;
    for s in &stats {
        events += s.events;
        bytes += s.bytes;
        lines += s.lines;
        gaps += s.gaps;
        dups += s.dups;
        resubs += u64::from(s.resubscribes);
        if let Some(h) = &s.hist {
            hist.merge(h);
        }
        if s.done_at.is_some() && s.max_idx + 1 == a.expect_lines as i64 && s.gaps == 0 {
            complete += 1;
        }
        if let Some(e) = &s.error
            && errors.len() < 5
        {
            errors.push(e.clone());
        }
        last_done = last_done.max(s.done_at);
        first_event = match (first_event, s.first_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    let since_t0 = |i: Option<Instant>| i.map(|i| round(i.duration_since(t0).as_secs_f64(), 3));
    let cpu = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| round(b - a, 2));
    Ok(json!({
        "mode": "stream",
        "proto": format!("{:?}", t.proto).to_lowercase(),
        "subs": a.subs,
        "stalled": a.stalled,
        "expect_lines": a.expect_lines,
        "connect_s": round(connect_s, 3),
        "time_s": since_t0(last_done),
        "first_event_s": since_t0(first_event),
        "wall_s": round(wall, 3),
        "timed_out": timed_out,
        "complete_subs": complete,
        "events": events,
        "bytes": bytes,
        "lines": lines,
        "gaps": gaps,
        "dups": dups,
        "resubscribes": resubs,
        "samples": hist.n,
        "p50_ms": hist.quantile_ms(0.50),
        "p90_ms": hist.quantile_ms(0.90),
        "p99_ms": hist.quantile_ms(0.99),
        "p999_ms": hist.quantile_ms(0.999),
        "max_ms": (hist.n > 0).then(|| hist.max as f64 / 1000.0),
        "server_rss_before_kib": rss_before,
        "server_rss_peak_kib": rss_peak,
        "server_rss_after_kib": rss_after,
        "server_cpu_s": cpu(server_cpu0, server_cpu1),
        "loadgen_cpu_s": cpu(self_cpu0, self_cpu1),
        "errors": errors,
    }))
}

// ---------------------------------------------------------------- idle

/// An idle subscriber: ready once subscribed (runtap: once its history
/// reaches `running`), then reads (answering pings) until stopped.
async fn idle_subscriber(
    t: Arc<Target>,
    gate: Arc<Semaphore>,
    ready: mpsc::Sender<Result<(), String>>,
    stop: CancellationToken,
) {
    let ws = {
        let _permit = gate.acquire().await;
        connect(&t, 0).await
    };
    let mut ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            let _ = ready.send(Err(e)).await;
            return;
        }
    };
    let mut announced = t.proto != Proto::Runtap;
    if announced {
        let _ = ready.send(Ok(())).await;
    }
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return,
            m = ws.next() => m,
        };
        let msg = match msg {
            Some(Ok(Message::Close(frame))) if !announced => {
                let _ = ready.send(Err(format!("closed before subscribed: {frame:?}"))).await;
                return;
            }
            Some(Ok(msg)) => msg,
            other => {
                if !announced {
                    let _ = ready.send(Err(format!("closed before subscribed: {other:?}"))).await;
                }
                return;
            }
        };
        let Message::Text(text) = msg else { continue };
        match classify(t.proto, text.as_str()) {
            Kind::Status { running: true, .. } if !announced => {
                announced = true;
                let _ = ready.send(Ok(())).await;
            }
            Kind::Ping => {
                let _ = ws.send(Message::text("3")).await;
            }
            _ => {}
        }
    }
}

async fn idle(a: IdleArgs) -> Result<Value, String> {
    let t = Arc::new(a.target.clone());
    let pid = t.server_pid.ok_or("--server-pid is required for idle")?;
    launch(&t, &a.command).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = rss_kib(pid).ok_or("server process gone")?;

    let gate = Arc::new(Semaphore::new(t.connect_concurrency.max(1)));
    let stop = CancellationToken::new();
    let (ready_tx, mut ready_rx) = mpsc::channel(1024);
    let connect_start = Instant::now();
    let mut subs = Vec::with_capacity(a.subs);
    for _ in 0..a.subs {
        subs.push(tokio::spawn(idle_subscriber(t.clone(), gate.clone(), ready_tx.clone(), stop.clone())));
    }
    drop(ready_tx);
    let ready = all_ready(&mut ready_rx, a.subs).await;
    let connect_s = connect_start.elapsed().as_secs_f64();
    let result = async {
        ready?;
        tokio::time::sleep(Duration::from_secs_f64(a.settle)).await;
        let rss1 = rss_kib(pid).ok_or("server process gone")?;
        let cpu0 = cpu_secs(Some(pid)).ok_or("server process gone")?;
        let w0 = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(a.cpu_window)).await;
        let cpu1 = cpu_secs(Some(pid)).ok_or("server process gone")?;
        let window = w0.elapsed().as_secs_f64();
        let rss2 = rss_kib(pid).unwrap_or(0);
        Ok::<Value, String>(json!({
            "mode": "idle",
            "proto": format!("{:?}", t.proto).to_lowercase(),
            "subs": a.subs,
            "connect_s": round(connect_s, 3),
            "server_rss_before_kib": rss0,
            "server_rss_subscribed_kib": rss1,
            "server_rss_end_kib": rss2,
            "bytes_per_sub": round((rss1.saturating_sub(rss0) * 1024) as f64 / a.subs.max(1) as f64, 0),
            "cpu_window_s": round(window, 2),
            "server_cpu_pct": round((cpu1 - cpu0) / window * 100.0, 2),
        }))
    }
    .await;
    stop.cancel();
    for h in subs {
        let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
    }
    let _ = cancel(&t).await;
    result
}

// ---------------------------------------------------------------- launches

async fn launches(a: LaunchArgs) -> Result<Value, String> {
    let s = UnixStream::connect(&a.socket).await.map_err(|e| format!("connect {}: {e}", a.socket.display()))?;
    let (r, mut w) = s.into_split();
    let mut lines = BufReader::new(r).lines();
    let duration = Duration::from_secs_f64(a.duration);
    let start = Instant::now();
    let hard_stop = start + duration + Duration::from_secs(15);
    let (mut next_id, mut in_flight, mut launched, mut completed, mut refused) = (0u64, 0usize, 0u64, 0u64, 0u64);
    let mut last_done = start;
    let mut refusals = Vec::new();
    let launch_req =
        |n: u64| format!("{}\n", json!({"type": "launch", "runId": format!("{}-{n}", a.prefix), "command": ["true"]}));
    loop {
        // Keep the window full while the measurement lasts.
        let mut out = String::new();
        while in_flight < a.window && start.elapsed() < duration {
            out.push_str(&launch_req(next_id));
            next_id += 1;
            in_flight += 1;
        }
        if !out.is_empty() {
            w.write_all(out.as_bytes()).await.map_err(|e| e.to_string())?;
        }
        if in_flight == 0 || Instant::now() > hard_stop {
            break;
        }
        let line = match tokio::time::timeout_at(hard_stop.into(), lines.next_line()).await {
            Ok(Ok(Some(l))) => l,
            Ok(Ok(None)) => return Err("daemon closed the socket".into()),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => break,
        };
        if line.starts_with("{\"runId\"") {
            continue; // an event of a run we follow
        }
        let v: Value = serde_json::from_str(&line).map_err(|e| format!("bad line {line:?}: {e}"))?;
        match v["type"].as_str() {
            Some("launched") => {
                launched += 1;
                let id = v["runId"].as_str().unwrap_or_default();
                let sub = format!("{}\n", json!({"type": "subscribe", "runId": id}));
                w.write_all(sub.as_bytes()).await.map_err(|e| e.to_string())?;
            }
            Some("end") => {
                completed += 1;
                in_flight -= 1;
                last_done = Instant::now();
            }
            Some("error") => {
                refused += 1;
                in_flight -= 1;
                if refusals.len() < 3 {
                    refusals.push(line.clone());
                }
            }
            _ => {}
        }
    }
    let elapsed = last_done.duration_since(start).as_secs_f64().max(1e-9);
    let mut out = json!({
        "mode": "launches",
        "window": a.window,
        "launched": launched,
        "completed": completed,
        "refused": refused,
        "refusals": refusals,
        "elapsed_s": round(elapsed, 3),
        "runs_per_s": round(completed as f64 / elapsed, 1),
    });
    if a.reference {
        out["direct_spawns_per_s"] =
            json!(round(direct_spawns(duration.min(Duration::from_secs(3)), a.window).await, 1));
    }
    Ok(out)
}

/// `true` spawned and reaped straight from this process, `window` at a time.
async fn direct_spawns(duration: Duration, window: usize) -> f64 {
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let mut done = 0u64;
    loop {
        while set.len() < window && start.elapsed() < duration {
            set.spawn(async { tokio::process::Command::new("true").status().await.is_ok() });
        }
        match set.join_next().await {
            Some(Ok(true)) => done += 1,
            Some(_) => {}
            None => break,
        }
    }
    done as f64 / start.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_heads_are_found_in_escaped_frames() {
        let line = |i: u64| format!("t={:019} i={i:08} {}\\n", 1_700_000_000_000_000_000u64 + i, "x".repeat(67));
        let frame = format!(
            "{{\"runId\":\"r\",\"seq\":3,\"type\":\"stdout\",\"data\":\"{}{}{}\",\"timestamp\":\"2026-01-01T00:00:00Z\"}}",
            line(5),
            line(6),
            line(7)
        );
        let mut all = Vec::new();
        scan_lines(frame.as_bytes(), Scan::All, |_, i, s| all.push((i, s)));
        assert_eq!(all, vec![(5, true), (6, true), (7, true)]);
        let mut ends = Vec::new();
        scan_lines(frame.as_bytes(), Scan::Ends, |_, i, s| ends.push((i, s)));
        assert_eq!(ends, vec![(5, true), (7, false)]);
        assert_eq!(classify(Proto::Runtap, &frame), Kind::Output);
        assert_eq!(num_after(&frame, "\"seq\":"), Some(3));
    }

    #[test]
    fn histogram_quantiles() {
        let mut h = Hist::new();
        for v in 1..=10_000 {
            h.record(v);
        }
        let p50 = h.quantile_ms(0.5).unwrap_or(0.0);
        assert!((4.8..5.2).contains(&p50), "{p50}");
        assert_eq!(h.quantile_ms(1.0), Some(10.0));
    }

    #[test]
    fn socketio_frames() {
        assert_eq!(classify(Proto::Socketio, "2"), Kind::Ping);
        assert_eq!(
            classify(Proto::Socketio, r#"42["run-event",{"type":"status","data":"succeeded","exitCode":0}]"#),
            Kind::Status { last: true, running: false }
        );
        assert_eq!(classify(Proto::Socketio, r#"42["subscribed","r"]"#), Kind::Subscribed);
    }
}
