//! A host's link at a NATS replica: the same `/agent` protocol as the
//! local engine (`protocol::link`), with JetStream where the journals were.
//!
//! Events are gathered per run into chunks, appended as soon as what has
//! arrived is taken (a chunk grows while the previous append waits for its
//! PubAck), fenced on the run subject's last stream sequence; only once
//! JetStream has acknowledged a chunk is it acknowledged to the host. A fenced append (another replica
//! appended since) or a hold taken by another replica ends the link: the
//! host reconnects, and whichever replica it reaches resumes from what the
//! stream holds.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::{FutureExt, StreamExt};
use hyper::upgrade::Upgraded;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::index::{self, Hold, RunEntry};
use super::names::{self, RunKey};
use super::run_link::{CHUNK_BYTES, RunLink};
use super::store::StoreError;
use super::{NatsGateway, cancel};
use crate::event::Event;
use crate::gateway::agent::{Ws, accept_hello, close, send};
use crate::journal::RunMeta;
use crate::protocol::link::{self, AgentMsg, GatewayMsg, RunCursor, is_event};
use crate::run_id::RunId;
use crate::run_info::RunInfo;

/// Messages taken without waiting before chunks are appended.
const DRAIN_MESSAGES: usize = 1024;
/// The hold on the host is renewed this often (see `index::HOLD_FRESH`).
const RENEW_EVERY: Duration = Duration::from_secs(5);
/// A run's row is rewritten at most this often for progress alone (a
/// status change is written at once).
const ROW_EVERY: Duration = Duration::from_secs(1);
/// Resume points looked up at once for a `hello`.
const HELLO_LOOKUPS: usize = 32;

#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("connection closed")]
    Closed,
}

/// Serves one agent connection until it ends or `stop`.
pub(super) async fn serve(upgraded: Upgraded, gw: NatsGateway, stop: CancellationToken) {
    let Some((mut ws, host, epoch, runs)) = accept_hello(upgraded).await else { return };
    let store = gw.store().clone();
    let (hold, old_epoch) = match index::claim_host(&store.hosts, &host, &epoch, gw.replica()).await {
        Ok(h) => h,
        Err(error) => {
            tracing::error!(host, %error, "cannot take the host's link");
            return close(&mut ws, 1011, "gateway storage error").await;
        }
    };
    if let Some(old) = old_epoch {
        tracing::warn!(host, old_epoch = %old, new_epoch = %epoch, "host state dir was reset: its old runs leave the index");
        index::forget_epoch(&store.runs, gw.index(), &host, &old).await;
    }
    let cancels = match store.client.subscribe(names::cancel_subject(&host)).await {
        Ok(s) => s,
        Err(error) => {
            tracing::error!(host, %error, "cannot take the host's cancels");
            return close(&mut ws, 1011, "gateway storage error").await;
        }
    };
    tracing::info!(host, replica = gw.replica(), runs = runs.len(), "host connected");
    let mut link = Link {
        gw: gw.clone(),
        host: host.clone(),
        epoch,
        hold,
        runs: HashMap::new(),
        closed: HashMap::new(),
        pending: HashMap::new(),
        next_req: 1,
    };
    let mut result = link.run(&mut ws, &runs, cancels, stop).await;
    if let Err(LinkError::Closed) = result {
        // What arrived before the host went is stored; it is acknowledged
        // on the host's next link (its resume point).
        if let Err(e) = link.flush(&mut ws).await
            && !matches!(e, LinkError::Closed)
        {
            result = Err(e);
        }
    }
    if let Err(error) = link.hold.renew(&store.hosts, false).await {
        tracing::debug!(host, %error, "host hold not released (another replica has it)");
    }
    match result {
        Ok(()) | Err(LinkError::Closed) => {
            tracing::info!(host, "host disconnected");
            close(&mut ws, 1001, "bye").await;
        }
        Err(LinkError::Store(StoreError::Fenced(what))) => {
            tracing::warn!(host, what, "another replica holds this host now: closing the link");
            close(&mut ws, 1013, "another gateway replica holds this host").await;
        }
        Err(LinkError::Store(error)) => {
            tracing::error!(host, %error, "JetStream failing: closing the link so the host resends later");
            close(&mut ws, 1011, "gateway storage error").await;
        }
        Err(error) => {
            tracing::warn!(host, %error, "host session failed");
            close(&mut ws, 4400, "protocol error").await;
        }
    }
}

struct Link {
    gw: NatsGateway,
    host: String,
    epoch: String,
    hold: Hold,
    runs: HashMap<RunId, RunLink>,
    /// Runs whose final chunk is stored: resends of them are dropped.
    closed: HashMap<RunId, u64>,
    /// Cancels sent down: request ID → where the answer goes.
    pending: HashMap<u64, Option<async_nats::Subject>>,
    next_req: u64,
}

impl Link {
    async fn run(
        &mut self,
        ws: &mut Ws,
        hello_runs: &[RunCursor],
        mut cancels: async_nats::Subscriber,
        stop: CancellationToken,
    ) -> Result<(), LinkError> {
        let acked = self.resume_points(hello_runs).await?;
        send(ws, &GatewayMsg::Welcome { acked }).await.map_err(|_| LinkError::Closed)?;
        let mut tick = tokio::time::interval(self.gw.config().ack_interval);
        let mut renew = tokio::time::interval(RENEW_EVERY);
        let mut ping = tokio::time::interval(link::LINK_PING);
        let mut heard = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = ping.tick() => {
                    if heard.elapsed() > link::LINK_TIMEOUT {
                        return Err(LinkError::Protocol("the host went silent (no pong)".into()));
                    }
                    let ping = tokio::time::timeout(Duration::from_secs(10), futures_util::SinkExt::send(ws, Message::Ping(Default::default())));
                    if !matches!(ping.await, Ok(Ok(()))) {
                        return Err(LinkError::Closed);
                    }
                }
                msg = ws.next() => {
                    heard = tokio::time::Instant::now();
                    // Take what has already arrived (up to a full chunk), then
                    // append it at once: events reach the viewers of every
                    // replica one PubAck after they arrive, and what comes in
                    // while an append waits is the next, larger, chunk.
                    let mut full = self.on_message(msg).await?;
                    for _ in 0..DRAIN_MESSAGES {
                        if full {
                            break;
                        }
                        match ws.next().now_or_never() {
                            Some(msg) => {
                                heard = tokio::time::Instant::now();
                                full |= self.on_message(msg).await?;
                            }
                            None => break,
                        }
                    }
                    self.flush(ws).await?;
                }
                _ = tick.tick() => self.flush(ws).await?,
                _ = renew.tick() => self.hold.renew(&self.gw.store().hosts, true).await?,
                Some(req) = cancels.next() => self.on_cancel(ws, req).await?,
                _ = stop.cancelled() => {
                    self.flush(ws).await?;
                    return Ok(());
                }
            }
        }
    }

    /// What the stream holds of each run the host lists: it resumes after.
    async fn resume_points(&self, hello_runs: &[RunCursor]) -> Result<HashMap<String, u64>, LinkError> {
        let mut lookups = Vec::new();
        for c in hello_runs {
            let Some(created_at) = &c.created_at else { continue };
            let key = RunKey::new(&self.host, &self.epoch, &c.run_id, created_at);
            lookups.push(resume_point(self.gw.store().clone(), c.run_id.clone(), key));
        }
        let mut acked = HashMap::new();
        let mut results = futures_util::stream::iter(lookups).buffer_unordered(HELLO_LOOKUPS);
        while let Some((run, tail)) = results.next().await {
            let Some(chunk) = tail? else { continue };
            if chunk.last_chunk && !self.row_is_final(&run, chunk.last) {
                // Over in the stream, but its row was not written (the
                // replica that appended it died first): not acknowledged,
                // so the host sends the run again and `on_run` mends the row.
                continue;
            }
            acked.insert(run, chunk.last);
        }
        Ok(acked)
    }

    /// Returns true when a chunk is full and should be appended now.
    async fn on_message(
        &mut self,
        msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Result<bool, LinkError> {
        let text = match msg {
            None | Some(Ok(Message::Close(_))) | Some(Err(_)) => return Err(LinkError::Closed),
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => return Ok(false),
        };
        if is_event(&text) {
            let event: Event =
                serde_json::from_str(&text).map_err(|e| LinkError::Protocol(format!("bad event: {e}")))?;
            return self.on_event(event);
        }
        match serde_json::from_str::<AgentMsg>(&text) {
            Ok(AgentMsg::Run { run_id, meta }) => self.on_run(&run_id, meta).await.map(|()| false),
            Ok(AgentMsg::Gap { run_id, from, to }) => self.on_gap(&run_id, from, to).map(|()| false),
            Ok(AgentMsg::CancelResult { req_id, ok, status, code, message }) => {
                if let Some(Some(reply)) = self.pending.remove(&req_id) {
                    let answer = cancel::Answer { host: self.host.clone(), ok, status, code, message };
                    let body = serde_json::to_vec(&answer).unwrap_or_default();
                    if let Err(error) = self.gw.store().client.publish(reply, body.into()).await {
                        tracing::warn!(host = %self.host, %error, "cannot answer a routed cancel");
                    }
                }
                Ok(false)
            }
            Ok(AgentMsg::Hello { .. }) => Err(LinkError::Protocol("hello twice".into())),
            Err(e) => Err(LinkError::Protocol(format!("bad message: {e}"))),
        }
    }

    /// A run the host is about to forward: where its subject stands.
    async fn on_run(&mut self, run_id: &str, meta: RunMeta) -> Result<(), LinkError> {
        let run = RunId::parse(run_id).map_err(|e| LinkError::Protocol(format!("bad run ID: {e}")))?;
        let key = RunKey::new(&self.host, &self.epoch, run.as_str(), &meta.created_at);
        if self.runs.get(&run).is_some_and(|r| r.key == key) {
            return Ok(());
        }
        let tail = self.gw.store().last_chunk(&key).await?;
        let (expected, stored) = tail.as_ref().map_or((0, 0), |c| (c.stream_seq, c.last));
        if let Some(last) = tail.filter(|c| c.last_chunk) {
            if !self.row_is_final(run.as_str(), stored) {
                self.mend_row(&run, &key, meta, &last).await;
            }
            self.runs.remove(&run);
            self.closed.insert(run, stored);
            return Ok(());
        }
        self.closed.remove(&run);
        let known = self.gw.index().run(&self.host, &run).filter(|e| e.key() == key);
        let info = known.map_or_else(|| RunInfo::queued(run.clone(), meta), |e| e.info);
        let state = RunLink {
            key,
            info,
            expected,
            stored,
            chunks: Vec::new(),
            next: stored + 1,
            row_dirty: true,
            status_changed: true,
            row_written: None,
        };
        self.runs.insert(run, state);
        Ok(())
    }

    /// True if this replica's index has the run over, with `last` events.
    fn row_is_final(&self, run: &str, last: u64) -> bool {
        let Ok(id) = RunId::parse(run) else { return false };
        self.gw.index().run(&self.host, &id).is_some_and(|e| e.info.status.is_final() && e.info.last_seq >= last)
    }

    /// Writes the row of a run whose final chunk is stored but whose row
    /// says otherwise: the row it had (or one from `meta`), with the status
    /// changes of the final chunk applied.
    async fn mend_row(&self, run: &RunId, key: &RunKey, meta: RunMeta, last: &super::store::Chunk) {
        let known = self.gw.index().run(&self.host, run).filter(|e| &e.key() == key);
        let mut info = known.map_or_else(|| RunInfo::queued(run.clone(), meta), |e| e.info);
        for line in last.body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            if let Ok(event) = serde_json::from_slice::<Event>(line)
                && let Some(change) = event.status_change()
            {
                info.apply(&change, &event.timestamp);
            }
        }
        info.last_seq = last.last;
        let row = RunEntry { host: self.host.clone(), epoch: self.epoch.clone(), info };
        tracing::info!(host = %self.host, run_id = %run, last_seq = last.last, "writing the row of a run its last replica left unfinished");
        if let Err(error) = index::put_run(&self.gw.store().runs, &row).await {
            tracing::warn!(host = %self.host, run_id = %run, %error, "cannot write the run's row");
        }
    }

    fn on_event(&mut self, mut event: Event) -> Result<bool, LinkError> {
        let run = RunId::parse(&event.run_id).map_err(|e| LinkError::Protocol(format!("bad run ID: {e}")))?;
        let Some(state) = self.runs.get_mut(&run) else {
            if self.closed.get(&run).is_some_and(|last| event.seq <= *last) {
                self.gw.count_duplicate();
                return Ok(false);
            }
            return Err(LinkError::Protocol(format!("event for run {run} before its `run` message")));
        };
        if event.seq < state.next {
            self.gw.count_duplicate();
            return Ok(false);
        }
        if event.seq > state.next {
            return Err(LinkError::Protocol(format!("run {run}: got seq {} but expected {}", event.seq, state.next)));
        }
        event.host = Some(self.host.clone());
        let last_chunk = event.status().is_some_and(crate::event::RunStatus::is_final);
        if let Some(change) = event.status_change() {
            state.info.apply(&change, &event.timestamp);
            state.status_changed = true;
        }
        state.push(&event, last_chunk);
        Ok(state.queued_bytes() >= CHUNK_BYTES)
    }

    /// The host's journal lost `from..=to`: recorded as a gap chunk.
    fn on_gap(&mut self, run_id: &str, from: u64, to: u64) -> Result<(), LinkError> {
        let run = RunId::parse(run_id).map_err(|e| LinkError::Protocol(format!("bad run ID: {e}")))?;
        let Some(state) = self.runs.get_mut(&run) else {
            return Err(LinkError::Protocol(format!("gap for run {run} before its `run` message")));
        };
        if to < state.next {
            return Ok(());
        }
        if from > state.next {
            return Err(LinkError::Protocol(format!("run {run}: gap {from}..={to} but expected seq {}", state.next)));
        }
        tracing::warn!(host = %self.host, run_id = %run, from, to, "the host's journal lost these events; recorded as a gap");
        state.chunks.push((state.next, to, true, false, BytesMut::new()));
        state.next = to + 1;
        Ok(())
    }

    /// Appends every waiting chunk, acknowledges what JetStream stored,
    /// then writes the rows that changed.
    async fn flush(&mut self, ws: &mut Ws) -> Result<(), LinkError> {
        let gw = &self.gw;
        let mut appends = Vec::new();
        for (id, r) in self.runs.iter_mut() {
            if !r.chunks.is_empty() {
                appends.push(async move { r.append(gw).await.map(|_| id.clone()) });
            }
        }
        let appended = futures_util::future::join_all(appends).await;
        let mut acked = HashMap::new();
        let mut failure = None;
        for result in appended {
            match result {
                Ok(run) => {
                    if let Some(r) = self.runs.get(&run) {
                        acked.insert(run.to_string(), r.stored);
                    }
                }
                Err(e) => failure = Some(e),
            }
        }
        if !acked.is_empty() {
            send(ws, &GatewayMsg::Ack { acked }).await.map_err(|_| LinkError::Closed)?;
        }
        if let Some(e) = failure {
            return Err(e.into());
        }
        self.write_rows().await;
        Ok(())
    }

    async fn write_rows(&mut self) {
        let (host, epoch, bucket) = (&self.host, &self.epoch, self.gw.store().runs.clone());
        let due: Vec<(RunId, RunEntry)> = self
            .runs
            .iter()
            .filter(|(_, r)| {
                r.row_dirty && (r.status_changed || r.row_written.is_none_or(|t| t.elapsed() >= ROW_EVERY))
            })
            .filter(|(_, r)| r.chunks.is_empty())
            .map(|(id, r)| (id.clone(), r.row(host, epoch)))
            .collect();
        let writes: Vec<_> = due.into_iter().map(|(id, row)| put_row(bucket.clone(), id, row)).collect();
        for (id, result) in futures_util::future::join_all(writes).await {
            match result {
                Ok(()) => {
                    let over = self.runs.get(&id).is_some_and(|r| r.info.status.is_final());
                    if over && let Some(r) = self.runs.remove(&id) {
                        self.closed.insert(id, r.stored);
                    } else if let Some(r) = self.runs.get_mut(&id) {
                        r.row_dirty = false;
                        r.status_changed = false;
                        r.row_written = Some(Instant::now());
                    }
                }
                Err(error) => {
                    tracing::warn!(host = %self.host, run_id = %id, %error, "cannot write the run's row; retrying")
                }
            }
        }
    }

    async fn on_cancel(&mut self, ws: &mut Ws, req: async_nats::Message) -> Result<(), LinkError> {
        let Ok(ask) = serde_json::from_slice::<cancel::Ask>(&req.payload) else {
            return Ok(());
        };
        let id = self.next_req;
        self.next_req += 1;
        self.pending.insert(id, req.reply);
        let msg = GatewayMsg::Cancel { req_id: id, run_id: ask.run_id, reason: ask.reason };
        send(ws, &msg).await.map_err(|_| LinkError::Closed)
    }
}

async fn resume_point(
    store: super::store::Store,
    run: String,
    key: RunKey,
) -> (String, Result<Option<super::store::Chunk>, StoreError>) {
    (run, store.last_chunk(&key).await)
}

async fn put_row(
    bucket: async_nats::jetstream::kv::Store,
    id: RunId,
    row: RunEntry,
) -> (RunId, Result<(), StoreError>) {
    let result = index::put_run(&bucket, &row).await;
    (id, result)
}
