//! Test harness: the real `runtap` binary on temp paths, real clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use runtap::client::{Client, Line};
use runtap::event::{Event, RunStatus};
use runtap::protocol::unix::{Request, Response};

/// Upper bound for any single wait in tests.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_runtap")
}

/// What the daemon and gateway harnesses share: a `runtap` process on a
/// temp state dir, with its config file and its log.
pub struct Instance {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub extra_config: String,
    /// `daemon` or `gateway`: the subcommand, the log's name, the ready line.
    kind: &'static str,
}

impl Instance {
    fn new(kind: &'static str, config: &str) -> Instance {
        Instance { dir: tempfile::tempdir().unwrap(), child: None, extra_config: config.to_owned(), kind }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.kind))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The viewer token it generated (or was configured with).
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.state_dir().join("token")).unwrap().trim().to_owned()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// (Re)starts the process on the same state dir, with `args` after the
    /// harness's own; waits until it is ready and returns its ready line.
    fn launch(&mut self, args: impl FnOnce(&mut Command)) -> String {
        std::fs::write(self.config_path(), &self.extra_config).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).unwrap();
        let marker = format!("runtap {} ready", self.kind);
        let ready_before = self.log().matches(&marker).count();
        let mut cmd = Command::new(bin());
        cmd.args([self.kind, "--config"]).arg(self.config_path()).arg("--state-dir").arg(self.state_dir());
        args(&mut cmd);
        cmd.env("RUST_LOG", "runtap=debug").stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        self.child = Some(cmd.spawn().unwrap());
        let log_path = self.log_path();
        wait_ready(self.child.as_mut().unwrap(), &log_path, &marker, ready_before)
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        signal(child.id() as i32, nix::sys::signal::Signal::SIGTERM);
        wait_child(&mut child, WAIT).unwrap_or_else(|| panic!("{} did not stop:\n{}", self.kind, self.log()))
    }

    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Instance {
    /// SIGTERM first, so a daemon cancels its runs and no job outlives the
    /// test; SIGKILL if it does not stop in time.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id() as i32, nix::sys::signal::Signal::SIGTERM);
            if wait_child(&mut child, Duration::from_secs(15)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

pub struct Daemon {
    process: Instance,
    /// The HTTP/WebSocket address, read from the daemon's ready line.
    pub addr: String,
    /// Extra environment for the daemon process.
    pub env: Vec<(String, String)>,
    /// Extra command-line arguments, appended after the harness's own.
    pub extra_args: Vec<String>,
}

impl std::ops::Deref for Daemon {
    type Target = Instance;
    fn deref(&self) -> &Instance {
        &self.process
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut Instance {
        &mut self.process
    }
}

impl Daemon {
    /// Starts a daemon with `config` (TOML) merged into a temp config file.
    pub fn start_with(config: &str) -> Daemon {
        let mut d = Daemon::prepare(config);
        d.spawn();
        d
    }

    /// A daemon not started yet (to set `env` first).
    pub fn prepare(config: &str) -> Daemon {
        Daemon {
            process: Instance::new("daemon", config),
            addr: String::new(),
            env: Vec::new(),
            extra_args: Vec::new(),
        }
    }

    pub fn start() -> Daemon {
        Daemon::start_with("")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("runtap.sock")
    }

    /// (Re)starts the daemon process on the same state dir and waits until it accepts.
    pub fn spawn(&mut self) {
        let (socket, extra_args, env) = (self.socket(), self.extra_args.clone(), self.env.clone());
        let line = self.process.launch(|cmd| {
            cmd.arg("--socket").arg(socket).args(["--listen", "127.0.0.1:0"]).args(extra_args);
            cmd.env_remove("RUNTAP_SOCKET").envs(env);
        });
        self.addr = line.split_whitespace().find_map(|w| w.strip_prefix("listen=")).unwrap().to_owned();
    }

    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{}", self.addr, path_and_query)
    }

    pub fn http_url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    /// A `runtap` CLI command pointed at this daemon.
    pub fn cli(&self) -> Command {
        let mut c = Command::new(bin());
        c.env("RUNTAP_SOCKET", self.socket());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let mut c = self.cli();
        c.args(args).stdin(Stdio::null());
        output_with_timeout(c, WAIT)
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.socket()).await.unwrap()
    }

    /// Waits (through the daemon's own stream) for a run's final status event.
    pub async fn wait_final(&self, id: &str) -> Event {
        tokio::time::timeout(WAIT, async {
            let mut c = self.client().await;
            c.send(&Request::Subscribe { run_id: id.into(), since: 0, follow: true }).await.unwrap();
            loop {
                match c.next().await.unwrap() {
                    Line::Event(ev) if ev.status().is_some_and(RunStatus::is_final) => return *ev,
                    _ => {}
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("run {id} did not finish in time:\n{}", self.log()))
    }

    /// Waits for a run's `running` event and returns its pid.
    pub async fn wait_running(&self, id: &str) -> u32 {
        tokio::time::timeout(WAIT, async {
            let mut c = self.client().await;
            c.send(&Request::Subscribe { run_id: id.into(), since: 0, follow: true }).await.unwrap();
            loop {
                if let Line::Event(ev) = c.next().await.unwrap()
                    && ev.status() == Some(RunStatus::Running)
                {
                    return ev.pid.unwrap();
                }
            }
        })
        .await
        .expect("run did not start in time")
    }

    /// All events of a run (it must be finished).
    pub async fn events(&self, id: &str) -> Vec<Event> {
        let mut c = self.client().await;
        c.send(&Request::Subscribe { run_id: id.into(), since: 0, follow: false }).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(WAIT, async {
            loop {
                match c.next().await.unwrap() {
                    Line::Event(ev) => out.push(*ev),
                    Line::Control(Response::End { .. }) => break,
                    Line::Control(_) => {}
                }
            }
        })
        .await
        .expect("history in time");
        out
    }

    pub async fn request(&self, req: Request) -> Response {
        let mut c = self.client().await;
        c.send(&req).await.unwrap();
        match tokio::time::timeout(WAIT, c.next()).await.unwrap().unwrap() {
            Line::Control(r) => r,
            Line::Event(e) => panic!("unexpected event {e:?}"),
        }
    }
}

/// Waits (bounded) until `log` holds more than `before` lines with `marker`,
/// the process's own readiness line, and returns the newest one.
pub fn wait_ready(child: &mut Child, log: &Path, marker: &str, before: usize) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.matches(marker).count() > before {
            return text.lines().rfind(|l| l.contains(marker)).unwrap().to_owned();
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{marker:?} never came: exited with {status}:\n{text}");
        }
        assert!(Instant::now() < deadline, "{marker:?} not in time:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

/// True while a live (not zombie) process is in the group. Zombies are
/// ignored: orphans are reparented to PID 1, which may not reap them here.
pub fn group_alive(pgid: u32) -> bool {
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        // state ppid pgrp ...
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string() {
            return true;
        }
    }
    false
}

pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs a command, collecting output, killing it if it exceeds `timeout`.
pub fn output_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        stdout.read_to_end(&mut v).unwrap();
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        stderr.read_to_end(&mut v).unwrap();
        v
    });
    let status = match wait_child(&mut child, timeout) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            panic!("command timed out: {cmd:?}");
        }
    };
    Output { status, stdout: out_t.join().unwrap(), stderr: err_t.join().unwrap() }
}

/// Open fds of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Zombie children of `pid`.
pub fn zombies_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        // pid (comm) state ppid ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r.trim().to_owned()) else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 1 && fields[0] == "Z" && fields[1] == pid.to_string() {
            out.push(p);
        }
    }
    out
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}

pub type WsClient = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
pub use tokio_tungstenite::tungstenite::Message;

/// Opens a WebSocket with extra request headers.
pub async fn ws_connect(url: &str, headers: &[(&str, &str)]) -> WsClient {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut()
            .insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), http::HeaderValue::from_str(v).unwrap());
    }
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req)).await.unwrap().unwrap();
    ws
}

/// Everything a WebSocket receives until it closes: events, other JSON
/// messages, and the close code.
#[derive(Debug, Default)]
pub struct Received {
    pub events: Vec<Event>,
    pub controls: Vec<serde_json::Value>,
    pub close: Option<u16>,
}

impl Received {
    pub fn seqs(&self) -> Vec<u64> {
        self.events.iter().map(|e| e.seq).collect()
    }
    pub fn error_code(&self) -> Option<String> {
        self.controls.iter().find(|c| c["type"] == "error").map(|c| c["code"].as_str().unwrap_or("").to_owned())
    }
}

/// Reads until close (or `stop_when` says so), bounded by WAIT.
pub async fn ws_read(ws: &mut WsClient, mut stop_when: impl FnMut(&Received) -> bool) -> Received {
    use futures_util::StreamExt;
    let mut got = Received::default();
    let r = tokio::time::timeout(WAIT, async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Text(t)) => {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                    if matches!(v["type"].as_str(), Some("stdout" | "stderr" | "status")) {
                        got.events.push(serde_json::from_value(v).unwrap());
                    } else {
                        got.controls.push(v);
                    }
                }
                Ok(Message::Close(frame)) => {
                    got.close = frame.map(|f| u16::from(f.code));
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
            if stop_when(&got) {
                break;
            }
        }
    })
    .await;
    assert!(r.is_ok(), "websocket read timed out; got so far: {got:?}");
    got
}

pub async fn ws_send_json(ws: &mut WsClient, v: serde_json::Value) {
    use futures_util::SinkExt;
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// A plain HTTP/1.1 request over a fresh connection; returns (status, body).
pub async fn http(d: &Daemon, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(&d.addr).await.unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// A `runtap gateway` on a fixed loopback port (chosen up front), so it can
/// be killed and restarted at the same address the daemons forward to.
pub struct Gateway {
    process: Instance,
    /// `127.0.0.1:PORT`, the same across restarts.
    pub addr: String,
}

impl std::ops::Deref for Gateway {
    type Target = Instance;
    fn deref(&self) -> &Instance {
        &self.process
    }
}

impl std::ops::DerefMut for Gateway {
    fn deref_mut(&mut self) -> &mut Instance {
        &mut self.process
    }
}

impl Gateway {
    pub fn start() -> Gateway {
        Gateway::start_with("")
    }

    pub fn start_with(config: &str) -> Gateway {
        let mut g = Gateway::prepare(config);
        g.spawn();
        g
    }

    /// A gateway not started yet; its port is picked now.
    pub fn prepare(config: &str) -> Gateway {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Gateway { process: Instance::new("gateway", config), addr: format!("127.0.0.1:{port}") }
    }

    /// (Re)starts the gateway on the same state dir and port; waits until it accepts.
    pub fn spawn(&mut self) {
        let addr = self.addr.clone();
        self.process.launch(|cmd| {
            cmd.arg("--listen").arg(addr);
        });
    }

    /// The file holding the host (agent) token.
    pub fn agent_token_path(&self) -> PathBuf {
        self.state_dir().join("agent-token")
    }

    pub fn agent_token(&self) -> String {
        std::fs::read_to_string(self.agent_token_path()).unwrap().trim().to_owned()
    }

    /// The `--upstream` URL for daemons.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{}", self.addr, path_and_query)
    }

    /// The gateway's journal of one host's run.
    pub fn events_path(&self, host: &str, run: &str) -> PathBuf {
        self.state_dir().join("hosts").join(host).join("runs").join(run).join("events.jsonl")
    }

    /// A daemon (not started) that forwards to this gateway as `host`.
    pub fn prepare_host(&self, host: &str) -> Daemon {
        let mut d = Daemon::prepare("");
        d.extra_args = upstream_args(&self.url(), host, &self.agent_token_path());
        d
    }

    /// A started daemon forwarding to this gateway as `host`.
    pub fn start_host(&self, host: &str) -> Daemon {
        let mut d = self.prepare_host(host);
        d.spawn();
        d
    }
}

/// `--upstream URL --host-id HOST --upstream-token-file FILE`.
pub fn upstream_args(url: &str, host: &str, token_file: &Path) -> Vec<String> {
    vec![
        "--upstream".into(),
        url.into(),
        "--host-id".into(),
        host.into(),
        "--upstream-token-file".into(),
        token_file.display().to_string(),
    ]
}

/// `http`, to any address.
pub async fn http_to(addr: &str, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr)).await.unwrap().unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// `http_to` returning the body as JSON.
pub async fn http_json(addr: &str, method: &str, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let (status, body) = http_to(addr, method, path, token).await;
    (status, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null))
}

/// Polls `cond` every 20 ms until it holds; panics with `what()` after WAIT.
pub async fn wait_until<F, Fut>(what: impl Fn() -> String, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting: {}", what());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
