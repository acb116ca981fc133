//! A real `nats-server` with JetStream for the NATS engine's tests
//! (`[gateway] engine = "nats"`): [`Nats`] is one server, [`NatsCluster`]
//! three with routes on loopback. Each server has fixed ports chosen up
//! front and its own temp store, so it can be killed, frozen and restarted
//! where the gateway replicas expect it.
//!
//! `tests/setup.sh` installs the Debian package (2.9.10 on bookworm). Where
//! there is no `nats-server`, `start` prints [`SKIP`] loudly and returns
//! `None`, and the test returns; with `RUNTAP_REQUIRE_NATS=1` (set by
//! `.ci/run`) it panics instead, so CI never passes by skipping.
//! `RUNTAP_NATS_SERVER=/path/to/nats-server` tries another build (a newer
//! server) without touching PATH.
//!
//! [`NatsConn`] is a minimal client of the NATS text protocol (request and
//! reply, JetStream's API over it), enough for the harness's own tests to
//! check the servers hold what they should; the gateway brings its own.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use super::{WAIT, freeze, signal};

/// What a test prints when it cannot run for want of the server.
pub const SKIP: &str = "SKIP: nats-server is not installed (tests/setup.sh installs it)";
/// Set (to anything but `0`) where a missing server must fail the test.
pub const REQUIRE_ENV: &str = "RUNTAP_REQUIRE_NATS";
/// The `nats-server` binary to use instead of the one on PATH.
pub const BINARY_ENV: &str = "RUNTAP_NATS_SERVER";
/// One probe of the monitoring port: a frozen server must not hold a wait
/// longer than this.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How often readiness is probed while waiting for it.
const PROBE_EVERY: Duration = Duration::from_millis(25);
/// Name of the three-node cluster.
pub const CLUSTER_NAME: &str = "runtap-test";

/// The `nats-server` to start: `$RUNTAP_NATS_SERVER`, else the first on
/// PATH, else Debian's `/usr/sbin` (not on a non-root PATH).
pub fn nats_server_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(BINARY_ENV) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{BINARY_ENV}={} is not a file", p.display());
        return Some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

/// The binary, or the loud skip (a panic when the server is required).
fn binary_or_skip() -> Option<PathBuf> {
    let found = nats_server_binary();
    if found.is_none() {
        if std::env::var(REQUIRE_ENV).is_ok_and(|v| !v.is_empty() && v != "0") {
            panic!("{SKIP}, and {REQUIRE_ENV} is set: this run must not skip the NATS tests");
        }
        eprintln!("\n{}\n{SKIP}\n{}\n", "*".repeat(72), "*".repeat(72));
    }
    found
}

/// `n` distinct free loopback ports (all held until all are chosen).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<_> = (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    held.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// `GET path` on a monitoring port: (status, body), or None when it does
/// not answer within [`PROBE_TIMEOUT`] (down, starting, or frozen).
fn monitor_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).ok()?;
    s.set_read_timeout(Some(PROBE_TIMEOUT)).ok()?;
    s.set_write_timeout(Some(PROBE_TIMEOUT)).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((status, body))
}

/// Polls `cond` until it holds; panics with `what()` after [`WAIT`].
fn wait_for(what: impl Fn() -> String, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting: {}", what());
        std::thread::sleep(PROBE_EVERY);
    }
}

/// One `nats-server -js` process: its ports, store and log outlive it.
struct Node {
    binary: PathBuf,
    dir: tempfile::TempDir,
    name: String,
    client_port: u16,
    monitor_port: u16,
    /// `(its own route port, every node's route URL)` in a cluster.
    cluster: Option<(u16, Vec<String>)>,
    child: Option<Child>,
}

impl Node {
    fn new(
        binary: PathBuf,
        name: &str,
        client_port: u16,
        monitor_port: u16,
        cluster: Option<(u16, Vec<String>)>,
    ) -> Node {
        Node {
            binary,
            dir: tempfile::tempdir().unwrap(),
            name: name.to_owned(),
            client_port,
            monitor_port,
            cluster,
            child: None,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts it on its ports and store (again); does not wait.
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).unwrap();
        let mut cmd = Command::new(&self.binary);
        cmd.args(["-js", "-a", "127.0.0.1", "--server_name", &self.name])
            .args(["-p", &self.client_port.to_string(), "-m", &self.monitor_port.to_string()])
            .arg("-sd")
            .arg(self.store());
        if let Some((port, routes)) = &self.cluster {
            cmd.args(["--cluster_name", CLUSTER_NAME, "--cluster", &format!("nats://127.0.0.1:{port}")])
                .args(["--routes", &routes.join(",")]);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        self.child = Some(cmd.spawn().unwrap_or_else(|e| panic!("start {}: {e}", self.binary.display())));
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap_or_else(|| panic!("{} is not running", self.name)).id() as i32
    }

    /// Panics (with its log) if the process has exited.
    fn assert_alive(&mut self) {
        if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
            panic!("nats-server {} exited with {status}:\n{}", self.name, self.log());
        }
    }

    /// `/healthz` answers ok: JetStream is up and, in a cluster, in contact
    /// with a meta leader, its streams current.
    fn healthy(&self) -> bool {
        monitor_get(self.monitor_port, "/healthz").is_some_and(|(s, b)| s == 200 && b.contains("\"ok\""))
    }

    /// `/jsz`, parsed.
    fn jsz(&self) -> Option<Value> {
        let (status, body) = monitor_get(self.monitor_port, "/jsz")?;
        (status == 200).then(|| serde_json::from_str(&body).ok()).flatten()
    }

    /// The JetStream meta leader this node knows of, if any.
    fn meta_leader(&self) -> Option<String> {
        let leader = self.jsz()?["meta_cluster"]["leader"].as_str()?.to_owned();
        (!leader.is_empty()).then_some(leader)
    }

    fn kill9(&mut self) {
        let mut child = self.child.take().unwrap_or_else(|| panic!("{} is not running", self.name));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL works on a stopped process too.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One `nats-server -js` on loopback.
pub struct Nats {
    node: Node,
}

impl Nats {
    /// Starts it and waits until JetStream is ready; None (after the loud
    /// [`SKIP`]) when there is no `nats-server`.
    pub fn start() -> Option<Nats> {
        let binary = binary_or_skip()?;
        let ports = free_ports(2);
        let mut nats = Nats { node: Node::new(binary, "n1", ports[0], ports[1], None) };
        nats.node.spawn();
        nats.wait_ready();
        Some(nats)
    }

    /// `nats://127.0.0.1:PORT`, the same across restarts.
    pub fn url(&self) -> String {
        self.node.url()
    }

    pub fn monitor_port(&self) -> u16 {
        self.node.monitor_port
    }

    pub fn store(&self) -> PathBuf {
        self.node.store()
    }

    pub fn log(&self) -> String {
        self.node.log()
    }

    pub fn pid(&self) -> u32 {
        self.node.pid() as u32
    }

    /// Waits (bounded) until `/healthz` says ok.
    pub fn wait_ready(&mut self) {
        let port = self.node.monitor_port;
        let node = &mut self.node;
        wait_for(
            || format!("nats-server on {port} to be ready"),
            || {
                node.assert_alive();
                node.healthy()
            },
        );
    }

    /// Whether it answers its monitoring port now (false while frozen).
    pub fn is_ready(&self) -> bool {
        self.node.healthy()
    }

    /// SIGKILL; nothing is flushed.
    pub fn kill9(&mut self) {
        self.node.kill9();
    }

    /// Starts it again on the same port and store; waits until ready.
    pub fn restart(&mut self) {
        self.node.spawn();
        self.wait_ready();
    }

    /// SIGSTOP: connections stay open, nothing answers.
    pub fn freeze(&self) {
        freeze(self.node.pid());
    }

    /// SIGCONT.
    pub fn thaw(&self) {
        signal(self.node.pid(), Signal::SIGCONT);
    }

    /// A plain-protocol client connection (the harness's own checks).
    pub fn conn(&self) -> NatsConn {
        NatsConn::connect(&self.url())
    }
}

/// Three `nats-server -js` nodes, `n1`..`n3`, routed to each other on
/// loopback as cluster [`CLUSTER_NAME`], each with its own store.
pub struct NatsCluster {
    nodes: Vec<Node>,
}

impl NatsCluster {
    /// Starts `n` nodes and waits until every one is healthy and they
    /// agree on a JetStream meta leader; None (after the loud [`SKIP`])
    /// when there is no `nats-server`.
    pub fn start(n: usize) -> Option<NatsCluster> {
        assert!(n >= 1, "a cluster of {n}");
        let binary = binary_or_skip()?;
        let ports = free_ports(3 * n);
        let routes: Vec<String> = (0..n).map(|i| format!("nats://127.0.0.1:{}", ports[3 * i + 2])).collect();
        let nodes = (0..n)
            .map(|i| {
                let cluster = Some((ports[3 * i + 2], routes.clone()));
                Node::new(binary.clone(), &format!("n{}", i + 1), ports[3 * i], ports[3 * i + 1], cluster)
            })
            .collect();
        let mut cluster = NatsCluster { nodes };
        for node in &mut cluster.nodes {
            node.spawn();
        }
        cluster.wait_ready();
        Some(cluster)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Every node's client URL, `n1` first.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    pub fn url(&self, i: usize) -> String {
        self.nodes[i].url()
    }

    /// `n1`..: the server name of node `i`.
    pub fn name(&self, i: usize) -> String {
        self.nodes[i].name.clone()
    }

    pub fn log(&self, i: usize) -> String {
        self.nodes[i].log()
    }

    /// Every node's log, each under its name: for failure messages.
    pub fn logs(&self) -> String {
        self.nodes.iter().map(|n| format!("---- {}:\n{}", n.name, n.log())).collect()
    }

    /// The meta leader as node `i` sees it.
    pub fn meta_leader(&self, i: usize) -> Option<String> {
        self.nodes[i].meta_leader()
    }

    /// Which node each JetStream stream's leader is, `(stream, index)`, as
    /// the first running node that answers reports them (`/jsz?streams=true`).
    pub fn stream_leaders(&self) -> Vec<(String, usize)> {
        let jsz = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .find_map(|n| monitor_get(n.monitor_port, "/jsz?streams=true"))
            .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
            .unwrap_or(Value::Null);
        let mut out = Vec::new();
        for account in jsz["account_details"].as_array().into_iter().flatten() {
            for stream in account["stream_detail"].as_array().into_iter().flatten() {
                let (Some(name), Some(leader)) = (stream["name"].as_str(), stream["cluster"]["leader"].as_str()) else {
                    continue;
                };
                if let Some(i) = self.nodes.iter().position(|n| n.name == leader) {
                    out.push((name.to_owned(), i));
                }
            }
        }
        out
    }

    /// Waits (bounded) until every running node is healthy and all of them
    /// name the same meta leader, itself a running node.
    pub fn wait_ready(&mut self) {
        let names: Vec<String> = self.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.name.clone()).collect();
        let nodes = &mut self.nodes;
        wait_for(
            || format!("nats cluster {names:?} to be healthy with one meta leader"),
            || {
                let mut leaders = Vec::new();
                for node in nodes.iter_mut().filter(|n| n.child.is_some()) {
                    node.assert_alive();
                    if !node.healthy() {
                        return false;
                    }
                    leaders.push(node.meta_leader());
                }
                leaders.windows(2).all(|w| w[0] == w[1])
                    && leaders.first().and_then(Option::as_ref).is_some_and(|l| names.contains(l))
            },
        );
    }

    /// SIGKILL node `i`; the others are left to elect (see `wait_ready`).
    pub fn kill9(&mut self, i: usize) {
        self.nodes[i].kill9();
    }

    /// Starts node `i` again on its ports and store; waits until the
    /// cluster is ready with it.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].spawn();
        self.wait_ready();
    }

    pub fn freeze(&self, i: usize) {
        freeze(self.nodes[i].pid());
    }

    pub fn thaw(&self, i: usize) {
        signal(self.nodes[i].pid(), Signal::SIGCONT);
    }

    /// A plain-protocol client connection to node `i`.
    pub fn conn(&self, i: usize) -> NatsConn {
        NatsConn::connect(&self.nodes[i].url())
    }
}

/// A minimal NATS client (text protocol, no headers): request and reply,
/// and JetStream's JSON API on top. Blocking, one request at a time.
pub struct NatsConn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    next_inbox: u64,
}

impl NatsConn {
    /// Connects to `nats://HOST:PORT` and completes the handshake.
    pub fn connect(url: &str) -> NatsConn {
        let addr = url.strip_prefix("nats://").unwrap_or(url);
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {url}: {e}"));
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut c = NatsConn { reader: BufReader::new(stream.try_clone().unwrap()), writer: stream, next_inbox: 0 };
        let info = c.line().unwrap_or_else(|| panic!("no INFO from {url}"));
        assert!(info.starts_with("INFO "), "{url}: {info}");
        c.send(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"name\":\"runtap-test\"}\r\nPING\r\n");
        loop {
            match c.line().unwrap_or_else(|| panic!("{url} closed during the handshake")).as_str() {
                "PONG" => break c,
                "PING" => c.send(b"PONG\r\n"),
                other => assert!(!other.starts_with("-ERR"), "{url}: {other}"),
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// The next protocol line without its CRLF; None once closed or timed out.
    fn line(&mut self) -> Option<String> {
        let mut l = String::new();
        match self.reader.read_line(&mut l) {
            Ok(n) if n > 0 => Some(l.trim_end_matches(['\r', '\n']).to_owned()),
            _ => None,
        }
    }

    /// Publishes `payload` on `subject` and waits up to `timeout` for one
    /// reply; None if none came (no responder, or an election under way).
    pub fn request(&mut self, subject: &str, payload: &[u8], timeout: Duration) -> Option<Vec<u8>> {
        self.next_inbox += 1;
        let (sid, inbox) = (self.next_inbox, format!("_INBOX.runtap-test.{}", self.next_inbox));
        let head = format!("SUB {inbox} {sid}\r\nUNSUB {sid} 1\r\nPUB {subject} {inbox} {}\r\n", payload.len());
        self.send(head.as_bytes());
        self.send(payload);
        self.send(b"\r\n");
        self.reader.get_ref().set_read_timeout(Some(timeout)).unwrap();
        let reply = loop {
            let Some(line) = self.line() else { break None };
            if line == "PING" {
                self.send(b"PONG\r\n");
                continue;
            }
            assert!(!line.starts_with("-ERR"), "{subject}: {line}");
            // MSG <subject> <sid> [reply-to] <#bytes>
            let Some(rest) = line.strip_prefix("MSG ") else { continue };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let len: usize = fields.last().unwrap().parse().unwrap();
            let mut body = vec![0; len + 2];
            self.reader.read_exact(&mut body).unwrap();
            body.truncate(len);
            if fields[1] == sid.to_string() {
                break Some(body);
            }
        };
        if reply.is_none() {
            // Nothing may arrive for it later and be taken for another reply.
            self.send(format!("UNSUB {sid}\r\n").as_bytes());
        }
        reply
    }

    /// A JetStream API call (`$JS.API.<api>`), retried while JetStream is
    /// unavailable or does not answer (leader elections), bounded by WAIT.
    pub fn js(&mut self, api: &str, body: &Value) -> Value {
        let subject = format!("$JS.API.{api}");
        let deadline = Instant::now() + WAIT;
        loop {
            let reply = self.request(&subject, body.to_string().as_bytes(), Duration::from_secs(2));
            let answer = reply.map(|r| serde_json::from_slice::<Value>(&r).unwrap());
            // 503: "JetStream system temporarily unavailable" during elections.
            let retry = answer.as_ref().is_none_or(|a| a["error"]["code"] == 503);
            if !retry || Instant::now() > deadline {
                return answer.unwrap_or_else(|| panic!("{subject}: no answer in time"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Creates a file-backed stream over `subjects` with `replicas` copies.
    pub fn create_stream(&mut self, name: &str, subjects: &[&str], replicas: u32) -> Value {
        let config = json!({"name": name, "subjects": subjects, "storage": "file", "num_replicas": replicas});
        let answer = self.js(&format!("STREAM.CREATE.{name}"), &config);
        assert!(answer.get("error").is_none(), "create stream {name}: {answer}");
        answer
    }

    /// `STREAM.INFO`: its config, state (`messages`, `last_seq`) and cluster.
    pub fn stream_info(&mut self, name: &str) -> Value {
        self.js(&format!("STREAM.INFO.{name}"), &json!({}))
    }

    /// Publishes one message into a stream and returns its PubAck's `seq`,
    /// retrying (bounded) while no stream leader answers.
    pub fn js_publish(&mut self, subject: &str, payload: &[u8]) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(reply) = self.request(subject, payload, Duration::from_secs(2)) {
                let ack: Value = serde_json::from_slice(&reply).unwrap();
                if ack["error"]["code"] != 503 {
                    return ack["seq"].as_u64().unwrap_or_else(|| panic!("publish on {subject}: {ack}"));
                }
            }
            assert!(Instant::now() < deadline, "publish on {subject}: no PubAck in time");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Whether `path` holds a JetStream store (the server wrote there).
pub fn has_jetstream_store(path: &Path) -> bool {
    path.join("jetstream").is_dir()
}
