//! The gateway's side of one host's link (`GET /agent`, agent token).
//!
//! Appends each event only if its seq is the next one for its run, so
//! resends after a reconnect are dropped (exactly-once in effect). Every
//! `ack_interval` the touched journals are fsynced and only then
//! acknowledged: an acked event survives a gateway crash.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_util::sync::CancellationToken;

use super::Gateway;
use super::cancel::{CancelReply, CancelRequest};
use super::hosts::Host;
use crate::event::{Event, RunStatus};
use crate::hub::Publisher;
use crate::journal::{JournalError, RunMeta, RunWriter};
use crate::protocol::link::{self, AgentMsg, GatewayMsg, MAX_LINK_MESSAGE, RunCursor, is_event};
use crate::run_id::RunId;
use crate::run_info::RunInfo;

/// Deadline for the host's `hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new session waits for the previous one of the same host to let go.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages taken without waiting before the touched journals are written out.
const DRAIN_MESSAGES: usize = 1024;
/// Cancels waiting to be sent down to the host.
const CANCEL_QUEUE: usize = 64;

pub(super) type Ws = WebSocketStream<TokioIo<Upgraded>>;

#[derive(Debug, thiserror::Error)]
pub(super) enum SessionError {
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("journal: {0}")]
    Journal(JournalError),
    /// Writing some runs' journals here failed: what they lack was not
    /// acknowledged, and the host resends it on its next connection.
    #[error("cannot store runs {0}; not acknowledged")]
    Storage(String),
    #[error("connection closed")]
    Closed,
}

/// By hand, not `#[from]`: the journal's message is already in ours, and a
/// `source` would print it twice.
impl From<JournalError> for SessionError {
    fn from(error: JournalError) -> Self {
        SessionError::Journal(error)
    }
}

pub(super) fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_LINK_MESSAGE))
        .max_frame_size(Some(MAX_LINK_MESSAGE))
}

/// Upgrades an agent connection and reads its `hello` (host, epoch, runs),
/// closing it (4400) if that does not come in time or is not valid. Both
/// engines' links start here.
pub(super) async fn accept_hello(upgraded: Upgraded) -> Option<(Ws, String, String, Vec<RunCursor>)> {
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(ws_config())).await;
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str::<AgentMsg>(&t).ok(),
        _ => None,
    };
    let Some(AgentMsg::Hello { host, epoch, runs }) = hello else {
        close(&mut ws, 4400, "expected hello").await;
        return None;
    };
    if RunId::parse(&host).is_err() || epoch.is_empty() {
        close(&mut ws, 4400, "bad host ID or epoch").await;
        return None;
    }
    Some((ws, host, epoch, runs))
}

/// Serves one agent connection until it ends or `stop`.
pub(super) async fn serve(upgraded: Upgraded, gateway: Gateway, stop: CancellationToken) {
    let Some((mut ws, host, epoch, runs)) = accept_hello(upgraded).await else { return };
    let host = match gateway.host_for_session(&host, &epoch) {
        Ok(h) => h,
        Err(error) => {
            tracing::error!(host, %error, "cannot open host state");
            return close(&mut ws, 1011, "gateway storage error").await;
        }
    };
    // One appender per host: stop an older session and wait for it to let go.
    let link_stop = stop.child_token();
    let (cancel_tx, cancel_rx) = mpsc::channel(CANCEL_QUEUE);
    let link_id = gateway.next_link_id();
    gateway.attach(&host, link_id, cancel_tx, link_stop.clone());
    let Ok(_guard) = tokio::time::timeout(TAKEOVER_TIMEOUT, host.session.lock()).await else {
        gateway.detach(&host, link_id);
        return close(&mut ws, 1013, "previous session still active").await;
    };
    gateway.metrics().agent_sessions.fetch_add(1, Ordering::Relaxed);
    let behind: u64 = {
        let held = host.cursors();
        runs.iter().map(|c| c.last_seq.saturating_sub(held.get(&c.run_id).copied().unwrap_or(0))).sum()
    };
    tracing::info!(host = %host.id, link_id, runs = runs.len(), behind, "host connected");
    let mut session = Session {
        gateway: gateway.clone(),
        host: host.clone(),
        writers: HashMap::new(),
        touched: HashSet::new(),
        unacked: HashSet::new(),
        finished: HashSet::new(),
        pending: HashMap::new(),
        next_req: 1,
        refused: HashSet::new(),
    };
    let result = session.run(&mut ws, &runs, cancel_rx, link_stop).await;
    session.flush_all();
    gateway.detach(&host, link_id);
    match result {
        Ok(()) | Err(SessionError::Closed) => {
            tracing::info!(host = %host.id, link_id, "host disconnected");
            close(&mut ws, 1001, "bye").await;
        }
        Err(SessionError::Storage(runs)) => {
            tracing::error!(host = %host.id, link_id, runs, "gateway storage failing: closing the link so the host resends later");
            close(&mut ws, 1011, "gateway storage error").await;
        }
        Err(error) => {
            tracing::warn!(host = %host.id, link_id, %error, "host session failed");
            close(&mut ws, 4400, "protocol error").await;
        }
    }
}

pub(super) async fn close(ws: &mut Ws, code: u16, reason: &str) {
    let frame = CloseFrame { code: CloseCode::from(code), reason: reason.to_owned().into() };
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.send(Message::Close(Some(frame)))).await;
}

struct Session {
    gateway: Gateway,
    host: Arc<Host>,
    /// Open journals (and hub topics) of the runs this session appends to.
    writers: HashMap<RunId, (RunWriter, Publisher)>,
    /// Runs with events written since the last flush to the hub.
    touched: HashSet<RunId>,
    /// Runs with events not yet fsynced and acknowledged.
    unacked: HashSet<RunId>,
    /// Runs whose final status is written: their writers are dropped (the
    /// files closed) once it is acknowledged, so a link that lives for
    /// weeks does not hold a journal open per run it ever forwarded.
    finished: HashSet<RunId>,
    /// Cancels sent down, by request ID.
    pending: HashMap<u64, (String, oneshot::Sender<CancelReply>)>,
    next_req: u64,
    /// Runs this gateway cannot store (their journal could not be opened
    /// or a write failed): their events are dropped unacknowledged, so the
    /// host keeps them, while its other runs flow.
    refused: HashSet<RunId>,
}

impl Session {
    /// What the gateway holds per run, leaving out runs whose ID the host
    /// now uses for a different run (so it sends that one from the start).
    fn acked_for(&self, hello_runs: &[RunCursor]) -> HashMap<String, u64> {
        let mut acked = self.host.cursors();
        for c in hello_runs {
            let Ok(id) = RunId::parse(&c.run_id) else { continue };
            if let (Some(theirs), Some(ours)) = (&c.created_at, self.host.run_info(&id))
                && &ours.created_at != theirs
            {
                acked.remove(&c.run_id);
            }
        }
        acked
    }

    async fn run(
        &mut self,
        ws: &mut Ws,
        hello_runs: &[RunCursor],
        mut cancels: mpsc::Receiver<CancelRequest>,
        stop: CancellationToken,
    ) -> Result<(), SessionError> {
        let welcome = GatewayMsg::Welcome { acked: self.acked_for(hello_runs) };
        send(ws, &welcome).await?;
        let mut tick = tokio::time::interval(self.gateway.config().ack_interval);
        let mut ping = tokio::time::interval(link::LINK_PING);
        let mut heard = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = ping.tick() => {
                    if heard.elapsed() > link::LINK_TIMEOUT {
                        return Err(SessionError::Protocol("the host went silent (no pong)".into()));
                    }
                    let ping = tokio::time::timeout(Duration::from_secs(10), ws.send(Message::Ping(Default::default())));
                    if !matches!(ping.await, Ok(Ok(()))) {
                        return Err(SessionError::Closed);
                    }
                }
                msg = ws.next() => {
                    heard = tokio::time::Instant::now();
                    self.on_message(msg)?;
                    // Take whatever else has already arrived, then write it out once.
                    for _ in 0..DRAIN_MESSAGES {
                        match ws.next().now_or_never() {
                            Some(msg) => {
                                heard = tokio::time::Instant::now();
                                self.on_message(msg)?
                            }
                            None => break,
                        }
                    }
                    self.flush_all();
                }
                _ = tick.tick() => self.ack(ws).await?,
                Some(req) = cancels.recv() => {
                    let id = self.next_req;
                    self.next_req += 1;
                    let msg = GatewayMsg::Cancel { req_id: id, run_id: req.run.to_string(), reason: req.reason };
                    self.pending.insert(id, (req.run.to_string(), req.reply));
                    send(ws, &msg).await?;
                }
                _ = stop.cancelled() => {
                    self.flush_all();
                    self.ack(ws).await?;
                    return Ok(());
                }
            }
        }
    }

    fn on_message(
        &mut self,
        msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Result<(), SessionError> {
        let text = match msg {
            None | Some(Ok(Message::Close(_))) | Some(Err(_)) => return Err(SessionError::Closed),
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => return Ok(()),
        };
        if is_event(&text) {
            let event: Event =
                serde_json::from_str(&text).map_err(|e| SessionError::Protocol(format!("bad event: {e}")))?;
            return self.on_event(event);
        }
        match serde_json::from_str::<AgentMsg>(&text) {
            Ok(AgentMsg::Run { run_id, meta }) => self.on_run(&run_id, meta),
            Ok(AgentMsg::Gap { run_id, from, to }) => self.on_gap(&run_id, from, to),
            Ok(AgentMsg::CancelResult { req_id, ok, status, code, message }) => {
                if let Some((_, reply)) = self.pending.remove(&req_id) {
                    let host = self.host.id.clone();
                    let _ = reply.send(CancelReply { host, ok, status, code, message });
                }
                Ok(())
            }
            Ok(AgentMsg::Hello { .. }) => Err(SessionError::Protocol("hello twice".into())),
            Err(e) => Err(SessionError::Protocol(format!("bad message: {e}"))),
        }
    }

    /// A run the host is about to forward: create its journal here if new.
    /// A journal that cannot be opened refuses that run only.
    fn on_run(&mut self, run_id: &str, meta: RunMeta) -> Result<(), SessionError> {
        let run = RunId::parse(run_id).map_err(|e| SessionError::Protocol(format!("bad run ID: {e}")))?;
        if self.refused.contains(&run) {
            return Ok(());
        }
        if let Err(error) = self.open_run(&run, meta) {
            tracing::error!(host = %self.host.id, run_id = %run, %error,
                "cannot store this run here; its events are not acknowledged, the host's other runs flow");
            self.gateway.metrics().runs_refused.fetch_add(1, Ordering::Relaxed);
            self.refused.insert(run);
        }
        Ok(())
    }

    fn open_run(&mut self, run: &RunId, meta: RunMeta) -> Result<(), JournalError> {
        let run = run.clone();
        let known = self.host.run_info(&run);
        if let Some(old) = &known
            && old.created_at != meta.created_at
        {
            // The host reused this ID after its retention deleted the old run.
            tracing::warn!(host = %self.host.id, run_id = %run, old = %old.created_at, new = %meta.created_at,
                "run ID reused by the host: archiving the gateway's copy of the old run");
            self.writers.remove(&run);
            self.finished.remove(&run);
            self.host.hub.remove(&run);
            self.host.remove_run(&run);
            self.host.journal.archive_run(&run)?;
        } else if self.writers.contains_key(&run) {
            return Ok(());
        }
        if self.host.run_info(&run).is_none() && self.host.journal.run_dir_exists(&run) {
            // Files without a run this gateway knows: recovery could not
            // read them. Moved aside, so the host's copy starts afresh.
            self.host.journal.quarantine_run(&run);
        }
        let (writer, last_seq) = match self.host.run_info(&run) {
            Some(info) => (self.host.journal.open_writer(&run, info.last_seq)?, info.last_seq),
            None => {
                let writer = self.host.journal.create_run(&run, &meta)?;
                self.host.insert_run(RunInfo::queued(run.clone(), meta));
                self.gateway.announce(&self.host.id, Some(&run));
                (writer, 0)
            }
        };
        let publisher = self.host.hub.open(&run, last_seq);
        self.writers.insert(run, (writer, publisher));
        Ok(())
    }

    fn on_event(&mut self, mut event: Event) -> Result<(), SessionError> {
        let run = RunId::parse(&event.run_id).map_err(|e| SessionError::Protocol(format!("bad run ID: {e}")))?;
        if self.refused.contains(&run) {
            return Ok(());
        }
        let Some((writer, _)) = self.writers.get_mut(&run) else {
            if self.host.run_info(&run).is_some_and(|info| info.status.is_final() && event.seq <= info.last_seq) {
                // A resend of a run this session already closed.
                self.gateway.metrics().duplicates_dropped.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            return Err(SessionError::Protocol(format!("event for run {run} before its `run` message")));
        };
        let next = writer.last_seq() + 1;
        if event.seq < next {
            self.gateway.metrics().duplicates_dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if event.seq > next {
            return Err(SessionError::Protocol(format!("run {run}: got seq {} but expected {next}", event.seq)));
        }
        event.host = Some(self.host.id.clone());
        writer.append_event(&event);
        self.gateway.metrics().events_received.fetch_add(1, Ordering::Relaxed);
        let seq = event.seq;
        let status = event.status();
        let change = event.status_change();
        self.host.update_run(&run, |info| {
            info.last_seq = seq;
            if let Some(change) = &change {
                info.apply(change, &event.timestamp);
            }
        });
        if status.is_some_and(RunStatus::is_final) {
            // Close the run's topic now, with the final status in its last batch.
            self.flush(&run, true);
            self.finished.insert(run.clone());
        } else {
            self.touched.insert(run.clone());
        }
        self.unacked.insert(run);
        Ok(())
    }

    /// The host's journal lost `from..=to`: skip them (once), so the link
    /// carries on with `to + 1` instead of failing at the hole forever.
    fn on_gap(&mut self, run_id: &str, from: u64, to: u64) -> Result<(), SessionError> {
        let run = RunId::parse(run_id).map_err(|e| SessionError::Protocol(format!("bad run ID: {e}")))?;
        if self.refused.contains(&run) {
            return Ok(());
        }
        let Some((writer, _)) = self.writers.get_mut(&run) else {
            return Err(SessionError::Protocol(format!("gap for run {run} before its `run` message")));
        };
        let next = writer.last_seq() + 1;
        if to < next {
            return Ok(()); // already skipped (a resend after a reconnect)
        }
        // Events before the gap are written first, in their own batch.
        self.flush(&run, false);
        let Some((writer, _)) = self.writers.get_mut(&run) else { return Ok(()) };
        if !writer.skip_gap(from.max(next), to) {
            return Err(SessionError::Protocol(format!("run {run}: gap {from}..={to} but expected seq {next}")));
        }
        tracing::warn!(host = %self.host.id, run_id = %run, from, to, "the host's journal lost these events; recorded as a gap");
        self.gateway.metrics().gaps_received.fetch_add(1, Ordering::Relaxed);
        self.host.update_run(&run, |info| info.last_seq = to);
        self.unacked.insert(run);
        Ok(())
    }

    fn flush(&mut self, run: &RunId, last: bool) {
        if let Some((writer, publisher)) = self.writers.get_mut(run) {
            let batch = writer.finish_batch(last);
            publisher.publish(batch);
        }
        self.touched.remove(run);
    }

    fn flush_all(&mut self) {
        let runs: Vec<RunId> = self.touched.iter().cloned().collect();
        for run in runs {
            self.flush(&run, false);
        }
    }

    /// fsyncs what was written since the last ack, then acknowledges it.
    async fn ack(&mut self, ws: &mut Ws) -> Result<(), SessionError> {
        if self.unacked.is_empty() {
            return Ok(());
        }
        self.flush_all();
        let runs: Vec<RunId> = self.unacked.drain().collect();
        let mut syncs = Vec::new();
        for run in &runs {
            if let Some((writer, _)) = self.writers.get_mut(run)
                && let Some(file) = writer.take_sync_job()
            {
                syncs.push(tokio::task::spawn_blocking(move || file.sync_data()));
            }
        }
        for s in syncs {
            if let Ok(Err(error)) = s.await {
                tracing::error!(host = %self.host.id, %error, "fsync failed; not acknowledging");
                return Err(SessionError::Journal(JournalError::Io {
                    what: "fsync journal",
                    path: self.host.journal.root().to_owned(),
                    error,
                }));
            }
        }
        // A journal that failed a write (or an fsync) holds less than its
        // writer counted: acknowledge only the whole ones.
        let (failed, whole): (Vec<RunId>, Vec<RunId>) =
            runs.into_iter().partition(|r| self.writers.get(r).is_some_and(|(w, _)| w.is_degraded()));
        let acked =
            whole.iter().filter_map(|r| self.writers.get(r).map(|(w, _)| (r.to_string(), w.last_seq()))).collect();
        send(ws, &GatewayMsg::Ack { acked }).await?;
        self.gateway.metrics().acks_sent.fetch_add(1, Ordering::Relaxed);
        for run in &whole {
            if self.finished.remove(run) {
                self.writers.remove(run);
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        for run in &failed {
            self.forget_failed(run);
        }
        let names: Vec<String> = failed.iter().map(RunId::to_string).collect();
        Err(SessionError::Storage(names.join(", ")))
    }

    /// A run whose journal here failed: its writer goes, and what this
    /// gateway holds of it is what the file holds, so the host's next
    /// connection resends the rest (once there is room again).
    fn forget_failed(&mut self, run: &RunId) {
        self.writers.remove(run);
        self.finished.remove(run);
        self.gateway.metrics().runs_refused.fetch_add(1, Ordering::Relaxed);
        match self.host.journal.rescan_run(run) {
            Ok(Some(r)) => self.host.update_run(run, |info| info.last_seq = r.file_seq),
            Ok(None) => self.host.remove_run(run),
            Err(error) => {
                tracing::error!(host = %self.host.id, run_id = %run, %error, "cannot rescan the run's journal")
            }
        }
    }
}

pub(super) async fn send(ws: &mut Ws, msg: &GatewayMsg) -> Result<(), SessionError> {
    let text = serde_json::to_string(msg).map_err(|e| SessionError::Protocol(e.to_string()))?;
    match tokio::time::timeout(Duration::from_secs(30), ws.send(Message::Text(text.into()))).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(SessionError::Closed),
    }
}
