//! One connection to the gateway: `hello`, `welcome`, then every run
//! forwarded by its own feed from the gateway's acknowledged seq, acks
//! recorded, cancels applied.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::{LinkConfig, UpstreamError, UpstreamStatus, Ws};
use crate::event::Utf8Bytes;
use crate::feed::{Feed, FeedItem};
use crate::protocol::link::{self, AgentMsg, GatewayMsg, RunCursor};
use crate::run::RunTable;
use crate::run_id::RunId;
use crate::run_info::CancelError;

/// Deadline for the gateway's `welcome`.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames queued for the socket. Small: behind it, feeds replay from the journal.
const SEND_QUEUE: usize = 256;
/// A send that makes no progress for this long ends the connection.
pub(super) const SEND_STALL: Duration = Duration::from_secs(30);

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

pub(super) struct Session<'a> {
    cfg: &'a LinkConfig,
    table: &'a RunTable,
    status: &'a Arc<UpstreamStatus>,
    /// The gateway's URL, for the log.
    url: &'a str,
    /// Runs being forwarded, so a launch or rescan starts each only once.
    forwarding: HashMap<RunId, tokio::task::AbortHandle>,
    tasks: JoinSet<RunId>,
}

impl<'a> Session<'a> {
    pub(super) fn new(cfg: &'a LinkConfig, table: &'a RunTable, status: &'a Arc<UpstreamStatus>, url: &'a str) -> Self {
        Session { cfg, table, status, url, forwarding: HashMap::new(), tasks: JoinSet::new() }
    }

    pub(super) async fn run(mut self, ws: Ws, stop: &CancellationToken) -> Result<(), UpstreamError> {
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
        tracing::info!(url = %self.url, host = %self.cfg.host_id, gateway_runs = acked.len(), "gateway link up");
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
        let mut ping = tokio::time::interval(link::LINK_PING);
        let mut heard = Instant::now();
        let result = loop {
            let silent_until = tokio::time::Instant::from_std(heard + link::LINK_TIMEOUT);
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
        let feed = Feed::new(self.table.journal().clone(), self.table.hub().clone(), run.clone(), since, true);
        let hello = AgentMsg::Run { run_id: run.to_string(), meta };
        let (status, table) = (self.status.clone(), self.table.clone());
        let handle = self.tasks.spawn(forward_run(feed, hello, tx.clone(), status, table));
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
                            Err(CancelError::Finished(info)) => {
                                cancel_result(req_id, false, Some(info.status), "finished", info.finished_message())
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
async fn forward_run(
    mut feed: Feed,
    hello: AgentMsg,
    tx: mpsc::Sender<Out>,
    status: Arc<UpstreamStatus>,
    table: RunTable,
) -> RunId {
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
                tracing::error!(run_id = %run, from, to, "journal gap: these events cannot be forwarded; telling the gateway");
                // A gap to the end of a finished run took its final status
                // with it: that one is rebuilt from the run's row, so the
                // gateway's copy still ends, as the run did.
                let end = table.get(&run).filter(|i| i.last_seq == to).and_then(|i| i.final_event());
                let skip_to = if end.is_some() { to - 1 } else { to };
                let mut out = Vec::new();
                if skip_to >= from {
                    out.push(serde_json::to_string(&AgentMsg::Gap { run_id: run.to_string(), from, to: skip_to }));
                }
                if let Some(event) = end {
                    out.push(serde_json::to_string(&event));
                }
                for text in out {
                    let Ok(text) = text else { return run };
                    if tx.send(Out::Text(text.into())).await.is_err() {
                        return run;
                    }
                }
            }
            Ok(FeedItem::End) => return run,
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
