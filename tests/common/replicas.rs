//! Gateway replicas on the NATS engine (`[gateway] engine = "nats"`), and
//! the NATS engine's version of the gateway tests' central check.
//!
//! [`Replicas`] is N `runtap gateway` processes sharing one NATS
//! deployment (tests/common/nats.rs), each with its own state dir and port,
//! all with the same agent and viewer tokens: they are interchangeable. A
//! replica keeps no journal files of its own, so [`Replicas::assert_same_copy`]
//! reads what a replica serves (`GET /runs/ID?host=`, a WebSocket
//! subscriber) and compares it with the host's journal event by event.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use runtap::event::RunStatus;
use serde_json::{Value, json};

use super::{
    Daemon, Gateway, Received, WAIT, freeze, host_journal_path, http_json, journal, seqs, signal, upstreams_args,
    wait_until, with_host, ws_connect, ws_read,
};

/// The viewer token every replica accepts (`[stream] tokens`).
pub const NATS_VIEWER_TOKEN: &str = "nats-viewer-token-0123456789abcdef";
/// The agent token every replica accepts (`[gateway] agent_tokens`).
pub const NATS_AGENT_TOKEN: &str = "nats-agent-token-0123456789abcdef";
/// Lines of a replica's log put in a failure message.
const LOG_TAIL: usize = 80;

/// A replica's config: the engine, its NATS URLs (a list when several),
/// copies per stream, the shared tokens, then `extra_gateway` (more
/// `[gateway]` keys, e.g. `cancel_timeout`).
pub fn nats_gateway_config(nats_urls: &[String], nats_replicas: u32, extra_gateway: &str) -> String {
    let url = match nats_urls {
        [one] => json!(one),
        many => json!(many),
    };
    format!(
        "[gateway]\nengine = \"nats\"\nnats_url = {url}\nnats_replicas = {nats_replicas}\n\
         agent_tokens = [\"{NATS_AGENT_TOKEN}\"]\n{extra_gateway}\n\
         [stream]\ntokens = [\"{NATS_VIEWER_TOKEN}\"]\n"
    )
}

/// A gateway on the local engine with the same tokens as the replicas.
pub fn local_gateway_config(extra_gateway: &str) -> String {
    format!(
        "[gateway]\nagent_tokens = [\"{NATS_AGENT_TOKEN}\"]\n{extra_gateway}\n[stream]\ntokens = [\"{NATS_VIEWER_TOKEN}\"]\n"
    )
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// N gateway replicas on one NATS deployment.
pub struct Replicas {
    pub gws: Vec<Gateway>,
    /// Which replicas are SIGSTOPped (thawed before they are dropped: a
    /// stopped process cannot take the harness's SIGTERM).
    frozen: Vec<bool>,
    /// Holds the agent token file the daemons are given.
    dir: tempfile::TempDir,
}

impl Replicas {
    /// Starts `n` replicas on `nats_urls`; each is ready when this returns.
    pub fn start(n: usize, nats_urls: &[String], nats_replicas: u32, extra_gateway: &str) -> Replicas {
        Replicas::start_with_config(n, &nats_gateway_config(nats_urls, nats_replicas, extra_gateway))
    }

    /// Starts `n` gateways on `config` (with the shared tokens): one
    /// gateway on the local engine ([`local_gateway_config`]) checks these
    /// tools themselves.
    pub fn start_with_config(n: usize, config: &str) -> Replicas {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("agent-token"), format!("{NATS_AGENT_TOKEN}\n")).unwrap();
        let mut r = Replicas { gws: Vec::new(), frozen: vec![false; n], dir };
        for _ in 0..n {
            let mut gw = Gateway::prepare(config);
            gw.spawn();
            r.gws.push(gw);
        }
        r
    }

    pub fn token(&self) -> &'static str {
        NATS_VIEWER_TOKEN
    }

    /// The file daemons read the agent token from.
    pub fn agent_token_path(&self) -> PathBuf {
        self.dir.path().join("agent-token")
    }

    /// `127.0.0.1:PORT` of replica `i`, the same across restarts.
    pub fn addr(&self, i: usize) -> &str {
        &self.gws[i].addr
    }

    /// The `--upstream` URL of replica `i`.
    pub fn url(&self, i: usize) -> String {
        self.gws[i].url()
    }

    /// Every replica's `--upstream` URL, replica 0 first.
    pub fn urls(&self) -> Vec<String> {
        (0..self.gws.len()).map(|i| self.url(i)).collect()
    }

    pub fn ws_url(&self, i: usize, path_and_query: &str) -> String {
        self.gws[i].ws_url(path_and_query)
    }

    /// A daemon (not started) forwarding as `host` to `upstreams`, tried in turn.
    pub fn prepare_host(&self, host: &str, upstreams: &[String]) -> Daemon {
        let mut d = Daemon::prepare("");
        d.extra_args = upstreams_args(upstreams, host, &self.agent_token_path());
        d
    }

    pub fn start_host(&self, host: &str, upstreams: &[String]) -> Daemon {
        let mut d = self.prepare_host(host, upstreams);
        d.spawn();
        d
    }

    pub fn kill9(&mut self, i: usize) {
        self.frozen[i] = false;
        self.gws[i].kill9();
    }

    /// Starts replica `i` again on its state dir and port; waits until ready.
    pub fn restart(&mut self, i: usize) {
        self.gws[i].spawn();
    }

    pub fn freeze(&mut self, i: usize) {
        freeze(self.gws[i].pid() as i32);
        self.frozen[i] = true;
    }

    pub fn thaw(&mut self, i: usize) {
        signal(self.gws[i].pid() as i32, Signal::SIGCONT);
        self.frozen[i] = false;
    }

    fn running(&self, i: usize) -> bool {
        self.gws[i].child.is_some()
    }

    /// Every replica's log tail, each under its index: for failure messages.
    pub fn logs(&self) -> String {
        (0..self.gws.len()).map(|i| format!("\n---- replica {i} ({}):\n{}", self.addr(i), self.log(i))).collect()
    }

    /// Replica `i`'s log tail, without its DEBUG lines (one per request).
    pub fn log(&self, i: usize) -> String {
        let log = self.gws[i].log();
        tail(&log.lines().filter(|l| !l.contains(" DEBUG ")).collect::<Vec<_>>().join("\n"), LOG_TAIL)
    }

    // -----------------------------------------------------------------------
    // What a replica serves.

    /// `GET /runs/ID?host=H` at replica `i`, if it has the run.
    pub async fn run_info(&self, i: usize, host: &str, run: &str) -> Option<Value> {
        let path = format!("/runs/{run}?host={host}");
        let (status, body) = http_json(self.addr(i), "GET", &path, Some(self.token())).await;
        (status == 200).then_some(body)
    }

    pub async fn last_seq(&self, i: usize, host: &str, run: &str) -> u64 {
        self.run_info(i, host, run).await.and_then(|v| v["lastSeq"].as_u64()).unwrap_or(0)
    }

    /// Waits until replica `i` serves at least `n` events of the run.
    /// On a timeout, says what every replica has of the run, and what
    /// replica `i` serves a subscriber.
    pub async fn wait_seq(&self, i: usize, host: &str, run: &str, n: u64) {
        let deadline = Instant::now() + WAIT;
        while self.last_seq(i, host, run).await < n {
            if Instant::now() > deadline {
                let mut views = String::new();
                for k in (0..self.gws.len()).filter(|&k| self.running(k) && !self.frozen[k]) {
                    let info = self.run_info(k, host, run).await;
                    views.push_str(&format!("\n  replica {k}: GET /runs/{run}: {info:?}"));
                }
                let seqs = self.seqs_served_within(i, host, run, Duration::from_secs(3)).await;
                panic!(
                    "timed out waiting: replica {i} to serve {n} events of {host}/{run}:{views}\n  \
                     a subscriber at replica {i} got, in 3 s, seqs {:?}..{:?} ({} events){}",
                    seqs.first(),
                    seqs.last(),
                    seqs.len(),
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The seqs a new subscriber at replica `i` gets within `within`.
    async fn seqs_served_within(&self, i: usize, host: &str, run: &str, within: Duration) -> Vec<u64> {
        use futures_util::StreamExt;
        let mut ws = self.subscribe(i, host, run, 0).await;
        let mut seqs = Vec::new();
        let _ = tokio::time::timeout(within, async {
            while let Some(Ok(msg)) = ws.next().await {
                let Ok(text) = msg.to_text() else { continue };
                if let Some(seq) = serde_json::from_str::<Value>(text).ok().and_then(|v| v["seq"].as_u64()) {
                    seqs.push(seq);
                }
            }
        })
        .await;
        seqs
    }

    /// `GET /runs` at replica `i`, sorted by (host, runId).
    pub async fn runs(&self, i: usize) -> Vec<Value> {
        let (status, body) = http_json(self.addr(i), "GET", "/runs", Some(self.token())).await;
        assert_eq!(status, 200, "GET /runs at replica {i}: {body}");
        let mut runs = body.as_array().unwrap().clone();
        runs.sort_by_key(|r| (r["host"].as_str().unwrap_or("").to_owned(), r["runId"].as_str().unwrap().to_owned()));
        runs
    }

    /// `GET /hosts` at replica `i`.
    pub async fn hosts(&self, i: usize) -> Vec<Value> {
        let (status, body) = http_json(self.addr(i), "GET", "/hosts", Some(self.token())).await;
        assert_eq!(status, 200, "GET /hosts at replica {i}: {body}");
        body.as_array().unwrap().clone()
    }

    pub async fn host_connected(&self, i: usize, host: &str) -> bool {
        self.hosts(i).await.iter().any(|h| h["host"] == host && h["connected"] == true)
    }

    /// Waits until every running replica says `host` is connected (`want`).
    pub async fn wait_connected(&self, host: &str, want: bool) {
        for i in (0..self.gws.len()).filter(|&i| self.running(i) && !self.frozen[i]) {
            wait_until(
                || format!("replica {i} to show host {host} connected={want}:{}", self.logs()),
                || async { self.host_connected(i, host).await == want },
            )
            .await;
        }
    }

    /// A WebSocket subscriber to a run at replica `i`, from `since`.
    pub async fn subscribe(&self, i: usize, host: &str, run: &str, since: u64) -> super::WsClient {
        let t = self.token();
        ws_connect(&self.ws_url(i, &format!("/runs?runId={run}&host={host}&since={since}&token={t}")), &[]).await
    }

    /// Everything a subscriber from `since` gets of a finished run at replica `i`.
    pub async fn read_run(&self, i: usize, host: &str, run: &str, since: u64) -> Received {
        let mut ws = self.subscribe(i, host, run, since).await;
        ws_read(&mut ws, |_| false).await
    }

    /// Waits until `GET /runs` is the same at every running replica, and
    /// returns it.
    pub async fn assert_runs_converge(&self) -> Vec<Value> {
        let live: Vec<usize> = (0..self.gws.len()).filter(|&i| self.running(i) && !self.frozen[i]).collect();
        let deadline = Instant::now() + WAIT;
        loop {
            let mut lists = Vec::new();
            for &i in &live {
                lists.push(self.runs(i).await);
            }
            if lists.windows(2).all(|w| w[0] == w[1]) {
                return lists.swap_remove(0);
            }
            if Instant::now() > deadline {
                let shown: Vec<String> =
                    live.iter().zip(&lists).map(|(i, l)| format!("replica {i}: {}", Value::from(l.clone()))).collect();
                panic!("GET /runs differs between replicas:\n{}", shown.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The NATS engine's `assert_same_copy`: the host's run must be finished.
    /// Waits (bounded) for replica `i` to serve all of it, then checks its
    /// status and what a subscriber there gets against the host's journal:
    /// seqs 1..=N each once, in order, each event identical but for `host`.
    /// Returns the host's events.
    pub async fn assert_same_copy(&self, i: usize, host: &str, d: &Daemon, run: &str) -> Vec<Value> {
        let theirs = journal(&host_journal_path(d, run));
        let n = theirs.len() as u64;
        assert_eq!(seqs(&theirs), (1..=n).collect::<Vec<_>>(), "host {host} run {run}: host's own seqs");
        let last = theirs.last().unwrap();
        let last_status = last["data"].as_str().unwrap().to_owned();
        assert!(
            last["type"] == "status" && serde_json::from_value::<RunStatus>(json!(last_status)).unwrap().is_final(),
            "host {host} run {run} is not finished: {last}"
        );
        self.wait_seq(i, host, run, n).await;

        let info = self.run_info(i, host, run).await.unwrap();
        assert_eq!(info["lastSeq"], n, "replica {i}: {host}/{run}: {info}{}", self.logs());
        assert_eq!(info["host"], host, "replica {i}: {info}");
        assert_eq!(info["status"], last_status.as_str(), "replica {i}: {host}/{run}: {info}");

        let got = self.read_run(i, host, run, 0).await;
        assert_eq!(got.error_code(), None, "replica {i}: {host}/{run}: {:?}", got.controls);
        assert_same_events(&got, &theirs, host, &format!("replica {i}: {host}/{run}"));
        assert_eq!(got.close, Some(1000), "replica {i}: {host}/{run}");
        theirs
    }

    /// [`Replicas::assert_same_copy`] at every running replica.
    pub async fn assert_same_copy_everywhere(&self, host: &str, d: &Daemon, run: &str) -> Vec<Value> {
        let mut theirs = Vec::new();
        for i in (0..self.gws.len()).filter(|&i| self.running(i) && !self.frozen[i]) {
            theirs = self.assert_same_copy(i, host, d, run).await;
        }
        theirs
    }
}

/// `got` holds exactly `theirs` (a host's journal lines) plus `host`, in
/// order; on a mismatch, says where the first duplicate, gap or difference is.
pub fn assert_same_events(got: &Received, theirs: &[Value], host: &str, what: &str) {
    let want = with_host(theirs, host);
    if got.events == want {
        return;
    }
    let got_seqs = got.seqs();
    let dup = got_seqs.windows(2).find(|w| w[1] <= w[0]);
    let gap = got_seqs.windows(2).find(|w| w[1] > w[0] + 1);
    let first_diff = got.events.iter().zip(&want).position(|(a, b)| a != b);
    panic!(
        "{what}: served events differ from the host's journal: {} served, {} journaled (close {:?}, {:?}); \
         first seq served {:?}, last {:?}; first out-of-order/duplicate pair {dup:?}; first gap {gap:?}; \
         first differing index {first_diff:?}{}",
        got.events.len(),
        want.len(),
        got.close,
        got.controls,
        got_seqs.first(),
        got_seqs.last(),
        first_diff.map(|k| format!(":\n  served  {:?}\n  journal {:?}", got.events[k], want[k])).unwrap_or_default()
    );
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for i in 0..self.gws.len() {
            if self.frozen[i] {
                self.thaw(i);
            }
        }
    }
}
