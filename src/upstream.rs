//! Forwarding this host's events to a gateway (see `link` for the protocol).
//!
//! The link is a state machine, `Disconnected { backoff } → Connecting →
//! Connected`, reconnecting with jittered exponential backoff (0.5 s up to
//! 30 s). Each run is forwarded by a `Feed` that reads the journal from the
//! gateway's acknowledged seq with the replay lag policy: a slow or absent
//! gateway only makes the feed fall back to the journal; it never holds up
//! a run. After any outage the gateway's `welcome` says where to resume.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

use crate::event::Utf8Bytes;
use crate::feed::{Feed, FeedItem, LagPolicy};
use crate::link::{AgentMsg, GatewayMsg, MAX_LINK_MESSAGE, RunCursor};
use crate::run::{CancelError, RunTable};
use crate::run_id::RunId;

const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A connection that lasted this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for the gateway's `welcome`.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames queued for the socket. Small: behind it, feeds replay from the journal.
const SEND_QUEUE: usize = 256;
/// A send that makes no progress for this long ends the connection.
const SEND_STALL: Duration = Duration::from_secs(30);
/// Name of the file holding this state dir's epoch.
const EPOCH_FILE: &str = "epoch";

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("read token file {0}: {1}")]
    Token(String, std::io::Error),
    #[error("epoch file: {0}")]
    Epoch(std::io::Error),
    #[error("connect: {0}")]
    Connect(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("connection closed")]
    Closed,
}

/// What the link needs to know, from `[upstream]`.
#[derive(Clone)]
pub struct LinkConfig {
    /// Base URL; `/agent` is appended.
    pub url: String,
    pub host_id: String,
    pub token: crate::server::auth::Token,
    pub epoch: String,
}

impl LinkConfig {
    pub fn load(cfg: &crate::config::UpstreamConfig, state_dir: &Path) -> Result<Option<Self>, UpstreamError> {
        let Some(url) = cfg.url.clone() else {
            return Ok(None);
        };
        let token = match &cfg.token_file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| UpstreamError::Token(path.display().to_string(), e))?
                .trim()
                .to_owned(),
            None => String::new(),
        };
        let host_id = cfg.host_id.clone().unwrap_or_else(|| {
            nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".into())
        });
        Ok(Some(LinkConfig { url, host_id, token: crate::server::auth::Token::new(token), epoch: epoch(state_dir)? }))
    }
}

/// The state dir's epoch: made once, so a wiped state dir gets a new one.
pub fn epoch(state_dir: &Path) -> Result<String, UpstreamError> {
    let path = state_dir.join(EPOCH_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        _ => {
            let e = RunId::generate().to_string();
            std::fs::write(&path, &e).map_err(UpstreamError::Epoch)?;
            Ok(e)
        }
    }
}

/// Link state and counters, for `/metrics` and retention.
#[derive(Default)]
pub struct UpstreamStatus {
    /// 0 disconnected, 1 connecting, 2 connected.
    pub state: AtomicI64,
    pub forwarded: AtomicU64,
    pub acknowledged: AtomicU64,
    pub reconnects: AtomicU64,
    /// Events deleted by retention before the gateway had them.
    pub lost_to_retention: AtomicU64,
    /// Per run: the last seq the gateway acknowledged.
    acked: Mutex<HashMap<RunId, u64>>,
    /// When the oldest unacknowledged event was sent (for the lag in seconds).
    unacked_since: Mutex<Option<Instant>>,
}

impl UpstreamStatus {
    pub fn acked(&self, run: &RunId) -> Option<u64> {
        self.acked.lock().unwrap_or_else(|p| p.into_inner()).get(run).copied()
    }

    pub fn lag_seconds(&self) -> f64 {
        self.unacked_since.lock().unwrap_or_else(|p| p.into_inner()).map_or(0.0, |t| t.elapsed().as_secs_f64())
    }

    /// Events this host has that the gateway has not acknowledged.
    pub fn pending(&self, table: &RunTable) -> u64 {
        let seqs = table.hub().last_seqs();
        let acked = self.acked.lock().unwrap_or_else(|p| p.into_inner());
        seqs.iter().map(|(run, seq)| seq.saturating_sub(acked.get(run).copied().unwrap_or(0))).sum()
    }

    /// Called by retention before deleting a run: loud if the gateway lacks some of it.
    pub fn note_deleted(&self, run: &RunId, last_seq: u64) {
        let acked = self.acked(run).unwrap_or(0);
        if acked < last_seq {
            let lost = last_seq - acked;
            self.lost_to_retention.fetch_add(lost, Ordering::Relaxed);
            tracing::error!(run_id = %run, acked, last_seq, lost,
                "retention deleted events the gateway never received; they are lost upstream");
        }
    }

    pub fn render(&self, table: &RunTable) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let mut m = |name: &str, kind: &str, help: &str, v: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        m(
            "runtap_upstream_state",
            "gauge",
            "0 disconnected, 1 connecting, 2 connected.",
            self.state.load(Ordering::Relaxed).to_string(),
        );
        m(
            "runtap_upstream_events_forwarded_total",
            "counter",
            "Events sent to the gateway.",
            self.forwarded.load(Ordering::Relaxed).to_string(),
        );
        m(
            "runtap_upstream_events_acknowledged_total",
            "counter",
            "Events the gateway acknowledged.",
            self.acknowledged.load(Ordering::Relaxed).to_string(),
        );
        m(
            "runtap_upstream_events_pending",
            "gauge",
            "Events not yet acknowledged by the gateway.",
            self.pending(table).to_string(),
        );
        m(
            "runtap_upstream_lag_seconds",
            "gauge",
            "Age of the oldest unacknowledged event.",
            format!("{:.3}", self.lag_seconds()),
        );
        m(
            "runtap_upstream_reconnects_total",
            "counter",
            "Connections to the gateway started after the first.",
            self.reconnects.load(Ordering::Relaxed).to_string(),
        );
        m(
            "runtap_upstream_lost_events_total",
            "counter",
            "Events retention deleted before the gateway had them.",
            self.lost_to_retention.load(Ordering::Relaxed).to_string(),
        );
        out
    }
}

/// The link's state, as an explicit machine.
enum Link {
    Disconnected { backoff: Duration },
    Connecting { backoff: Duration },
    Connected { ws: Box<Ws>, backoff: Duration },
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Keeps the link to the gateway up until `stop`.
pub async fn run(cfg: LinkConfig, table: RunTable, status: Arc<UpstreamStatus>, stop: CancellationToken) {
    let mut link = Link::Connecting { backoff: BACKOFF_MIN };
    let mut first = true;
    loop {
        link = match link {
            Link::Disconnected { backoff } => {
                status.state.store(0, Ordering::Relaxed);
                let wait = jitter(backoff);
                tracing::info!(retry_in = ?wait, "gateway link down");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                Link::Connecting { backoff: (backoff * 2).min(BACKOFF_MAX) }
            }
            Link::Connecting { backoff } => {
                status.state.store(1, Ordering::Relaxed);
                if !first {
                    status.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                first = false;
                match tokio::select! {
                    _ = stop.cancelled() => return,
                    r = connect(&cfg) => r,
                } {
                    Ok(ws) => Link::Connected { ws: Box::new(ws), backoff },
                    Err(error) => {
                        tracing::warn!(url = %cfg.url, %error, "cannot reach the gateway");
                        Link::Disconnected { backoff }
                    }
                }
            }
            Link::Connected { ws, backoff } => {
                status.state.store(2, Ordering::Relaxed);
                let since = Instant::now();
                let result = Session::new(&cfg, &table, &status).run(*ws, &stop).await;
                *status.unacked_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
                if stop.is_cancelled() {
                    return;
                }
                if let Err(error) = result {
                    tracing::warn!(%error, "gateway link ended");
                }
                let backoff = if since.elapsed() > STABLE_AFTER { BACKOFF_MIN } else { backoff };
                Link::Disconnected { backoff }
            }
        };
    }
}

/// Between half and all of `d`: spreads reconnects of many hosts.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let r = if getrandom::fill(&mut b).is_ok() { u16::from_le_bytes(b) } else { u16::MAX / 2 };
    d / 2 + d.mul_f64(f64::from(r) / f64::from(u16::MAX) / 2.0)
}

/// Makes `ring` the process's TLS crypto provider (for `wss://`). Safe to call twice.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

async fn connect(cfg: &LinkConfig) -> Result<Ws, UpstreamError> {
    install_tls_provider();
    let url = format!("{}/agent", cfg.url.trim_end_matches('/'));
    let mut req = url.into_client_request().map_err(|e| UpstreamError::Connect(e.to_string()))?;
    let bearer = format!("Bearer {}", cfg.token.expose());
    let value = http::HeaderValue::from_str(&bearer).map_err(|e| UpstreamError::Connect(e.to_string()))?;
    req.headers_mut().insert(http::header::AUTHORIZATION, value);
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_LINK_MESSAGE))
        .max_frame_size(Some(MAX_LINK_MESSAGE));
    let connecting = tokio_tungstenite::connect_async_with_config(req, Some(config), true);
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(UpstreamError::Connect(e.to_string())),
        Err(_) => Err(UpstreamError::Connect("timed out".into())),
    }
}

/// What forwarders hand to the socket writer.
enum Out {
    Text(Utf8Bytes),
    Ping,
}

impl Out {
    fn message(self) -> Message {
        match self {
            Out::Text(t) => Message::Text(t),
            Out::Ping => Message::Ping(Default::default()),
        }
    }
}

struct Session<'a> {
    cfg: &'a LinkConfig,
    table: &'a RunTable,
    status: &'a Arc<UpstreamStatus>,
    /// Runs being forwarded, so a launch or rescan starts each only once.
    forwarding: HashMap<RunId, tokio::task::AbortHandle>,
    tasks: JoinSet<RunId>,
}

impl<'a> Session<'a> {
    fn new(cfg: &'a LinkConfig, table: &'a RunTable, status: &'a Arc<UpstreamStatus>) -> Self {
        Session { cfg, table, status, forwarding: HashMap::new(), tasks: JoinSet::new() }
    }

    async fn run(mut self, ws: Ws, stop: &CancellationToken) -> Result<(), UpstreamError> {
        let (mut sink, mut stream) = ws.split();
        // Listen for launches before listing runs, so none falls in between.
        let mut launches = self.table.subscribe_launches();
        let runs: Vec<RunCursor> = self
            .table
            .list()
            .iter()
            .map(|r| RunCursor {
                run_id: r.run_id.to_string(),
                last_seq: r.last_seq,
                created_at: Some(r.created_at.clone()),
            })
            .collect();
        let hello = AgentMsg::Hello { host: self.cfg.host_id.clone(), epoch: self.cfg.epoch.clone(), runs };
        send(&mut sink, &hello).await?;
        let acked = match tokio::time::timeout(WELCOME_TIMEOUT, stream.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => match serde_json::from_str::<GatewayMsg>(&t) {
                Ok(GatewayMsg::Welcome { acked }) => acked,
                _ => return Err(UpstreamError::Protocol(format!("expected welcome, got {t}"))),
            },
            _ => return Err(UpstreamError::Protocol("no welcome from the gateway".into())),
        };
        {
            let mut map = self.status.acked.lock().unwrap_or_else(|p| p.into_inner());
            map.clear();
            for (run, seq) in &acked {
                if let Ok(id) = RunId::parse(run) {
                    map.insert(id, *seq);
                }
            }
        }
        tracing::info!(host = %self.cfg.host_id, gateway_runs = acked.len(), "gateway link up");
        let (tx, mut rx) = mpsc::channel::<Out>(SEND_QUEUE);
        let writer = tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                for out in batch {
                    if !matches!(tokio::time::timeout(SEND_STALL, sink.feed(out.message())).await, Ok(Ok(()))) {
                        return;
                    }
                }
                if !matches!(tokio::time::timeout(SEND_STALL, sink.flush()).await, Ok(Ok(()))) {
                    return;
                }
            }
        });
        self.rescan(&tx);
        let mut ping = tokio::time::interval(crate::link::LINK_PING);
        let mut heard = Instant::now();
        let result = loop {
            let silent_until = tokio::time::Instant::from_std(heard + crate::link::LINK_TIMEOUT);
            tokio::select! {
                _ = stop.cancelled() => break Ok(()),
                _ = ping.tick() => {
                    let _ = tx.try_send(Out::Ping);
                }
                _ = tokio::time::sleep_until(silent_until) => {
                    break Err(UpstreamError::Protocol("the gateway went silent (no pong)".into()));
                }
                launch = launches.recv() => match launch {
                    Ok(run) => {
                        // A new run, even if an old one had this ID: start at 0.
                        self.status.acked.lock().unwrap_or_else(|p| p.into_inner()).remove(&run);
                        self.forward(run, &tx)
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => self.rescan(&tx),
                    Err(broadcast::error::RecvError::Closed) => break Ok(()),
                },
                msg = stream.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        heard = Instant::now();
                        self.on_message(&t, &tx).await?
                    }
                    Some(Ok(Message::Pong(_) | Message::Ping(_))) => heard = Instant::now(),
                    Some(Ok(Message::Close(_))) | None => break Err(UpstreamError::Closed),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break Err(UpstreamError::Connect(e.to_string())),
                },
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    if let Ok(run) = done {
                        self.forwarding.remove(&run);
                    }
                }
            }
            if writer.is_finished() {
                break Err(UpstreamError::Closed);
            }
        };
        self.tasks.shutdown().await;
        drop(tx);
        writer.abort();
        result
    }

    /// Starts forwarding every run the gateway lacks events of, and every active one.
    fn rescan(&mut self, tx: &mpsc::Sender<Out>) {
        for r in self.table.list() {
            let acked = self.status.acked(&r.run_id).unwrap_or(0);
            if r.last_seq > acked || !r.status.is_final() {
                self.forward(r.run_id, tx);
            }
        }
    }

    fn forward(&mut self, run: RunId, tx: &mpsc::Sender<Out>) {
        if self.forwarding.contains_key(&run) {
            return;
        }
        let since = self.status.acked(&run).unwrap_or(0);
        let meta = match self.table.journal().read_meta(&run) {
            Ok(m) => m,
            Err(error) => {
                tracing::warn!(run_id = %run, %error, "cannot forward run: no meta");
                return;
            }
        };
        let feed = Feed::new(
            self.table.journal().clone(),
            self.table.hub().clone(),
            run.clone(),
            since,
            true,
            LagPolicy::Replay,
        );
        let hello = AgentMsg::Run { run_id: run.to_string(), meta };
        let handle = self.tasks.spawn(forward_run(feed, hello, tx.clone(), self.status.clone()));
        self.forwarding.insert(run, handle);
    }

    async fn on_message(&mut self, text: &str, tx: &mpsc::Sender<Out>) -> Result<(), UpstreamError> {
        match serde_json::from_str::<GatewayMsg>(text) {
            Ok(GatewayMsg::Ack { acked }) => {
                let mut n = 0;
                let mut map = self.status.acked.lock().unwrap_or_else(|p| p.into_inner());
                for (run, seq) in acked {
                    if let Ok(id) = RunId::parse(&run) {
                        let old = map.insert(id, seq).unwrap_or(0);
                        n += seq.saturating_sub(old);
                    }
                }
                drop(map);
                self.status.acknowledged.fetch_add(n, Ordering::Relaxed);
                let pending = self.status.pending(self.table);
                let mut since = self.status.unacked_since.lock().unwrap_or_else(|p| p.into_inner());
                *since = (pending > 0).then(Instant::now);
                Ok(())
            }
            Ok(GatewayMsg::Cancel { req_id, run_id, reason }) => {
                let reply = match RunId::parse(&run_id) {
                    Err(e) => cancel_result(req_id, false, None, "bad-request", e.to_string()),
                    Ok(id) => {
                        tracing::info!(run_id = %id, %reason, "cancel requested through the gateway");
                        match self.table.cancel(&id, reason) {
                            Ok(info) => AgentMsg::CancelResult {
                                req_id,
                                ok: true,
                                status: Some(info.status),
                                code: None,
                                message: None,
                            },
                            Err(CancelError::NotFound(_)) => {
                                cancel_result(req_id, false, None, "not-found", format!("no run {id}"))
                            }
                            Err(e @ CancelError::Finished(_)) => {
                                let msg = e.to_string();
                                let CancelError::Finished(info) = e else { unreachable!() };
                                cancel_result(req_id, false, Some(info.status), "finished", msg)
                            }
                        }
                    }
                };
                let text = serde_json::to_string(&reply).map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                let _ = tx.send(Out::Text(text.into())).await;
                Ok(())
            }
            Ok(GatewayMsg::Welcome { .. }) => Err(UpstreamError::Protocol("welcome twice".into())),
            Err(e) => Err(UpstreamError::Protocol(format!("bad message: {e}"))),
        }
    }
}

fn cancel_result(req_id: u64, ok: bool, status: Option<crate::event::RunStatus>, code: &str, msg: String) -> AgentMsg {
    AgentMsg::CancelResult { req_id, ok, status, code: Some(code.into()), message: Some(msg) }
}

/// Sends one run: its `run` message, then its events from the acked seq on.
async fn forward_run(mut feed: Feed, hello: AgentMsg, tx: mpsc::Sender<Out>, status: Arc<UpstreamStatus>) -> RunId {
    let run = feed.run_id().clone();
    let Ok(text) = serde_json::to_string(&hello) else { return run };
    if tx.send(Out::Text(text.into())).await.is_err() {
        return run;
    }
    loop {
        match feed.next().await {
            Ok(FeedItem::Frames(d)) => {
                for f in d.frames() {
                    if tx.send(Out::Text(f.json.clone())).await.is_err() {
                        return run;
                    }
                    status.forwarded.fetch_add(1, Ordering::Relaxed);
                }
                let mut since = status.unacked_since.lock().unwrap_or_else(|p| p.into_inner());
                since.get_or_insert_with(Instant::now);
            }
            Ok(FeedItem::Gap { from, to }) => {
                tracing::error!(run_id = %run, from, to, "journal gap: these events cannot be forwarded");
            }
            Ok(FeedItem::End) | Ok(FeedItem::Lagged { .. }) => return run,
            Err(error) => {
                tracing::warn!(run_id = %run, %error, "reading the journal to forward failed");
                return run;
            }
        }
    }
}

async fn send<S>(sink: &mut S, msg: &AgentMsg) -> Result<(), UpstreamError>
where
    S: futures_util::Sink<Message> + Unpin,
{
    let text = serde_json::to_string(msg).map_err(|e| UpstreamError::Protocol(e.to_string()))?;
    match tokio::time::timeout(SEND_STALL, sink.send(Message::Text(text.into()))).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(UpstreamError::Closed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_to_full() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(2));
            assert!(j >= Duration::from_secs(1) && j <= Duration::from_secs(2), "{j:?}");
        }
    }

    /// wss:// goes through rustls: against a peer that is not TLS it fails
    /// with an error (it must not panic for want of a crypto provider).
    #[tokio::test]
    async fn wss_uses_tls_and_fails_cleanly_against_plain_tcp() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                use tokio::io::AsyncWriteExt;
                let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            }
        });
        let cfg = LinkConfig {
            url: format!("wss://{addr}"),
            host_id: "h".into(),
            token: crate::server::auth::Token::new("t"),
            epoch: "e".into(),
        };
        match connect(&cfg).await {
            Err(UpstreamError::Connect(_)) => {}
            Err(other) => panic!("unexpected error: {other}"),
            Ok(_) => panic!("a plain TCP server cannot complete a TLS handshake"),
        }
    }
}
