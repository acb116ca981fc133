//! One Socket.IO connection: a task that owns its namespace, its outbox
//! and its transport, whichever that is now.
//!
//! Over WebSocket it writes the outbox to the socket itself, as
//! `ws::session` does. Over polling, HTTP requests reach it as commands
//! (`engine::Cmd`): a `GET` waits here until there is something to send
//! or a ping is due, a `POST` brings packets. An upgrade probes a second
//! socket (`2probe`/`3probe`), answers the pending `GET` with a `noop`,
//! and on `5` moves to the WebSocket, re-framing what is queued.
//!
//! One timer covers pings, the heartbeat, the CONNECT deadline and write
//! stalls. The namespace is asked for more only while the outbox is short
//! (`REFILL_BELOW`), so a slow client's backlog stays in its bounded hub
//! queue and then the journal: slow is not stalled. A client that accepts
//! nothing for `write_stall_timeout` (no write progress, or no `GET`) is
//! disconnected.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::Server;
use super::engine::{Cmd, Entry, PollAnswer};
use super::limits::REFILL_BELOW;
use super::link::{self, Link};
use super::packet::{EioError, RUN_EVENT_PREFIX, RUN_EVENT_SUFFIX};
use super::runs_ns::{RunsNs, RunsStart};
use super::workflow_ns::WorkflowNs;
use crate::server::Shared;
use crate::server::metrics::Metrics;
use crate::server::outbox::{Framing, Outbox, TryWrite};
use crate::server::ws::limits::RateLimiter;

/// Run events on a WebSocket: one text frame each.
pub(super) const WS_FRAMING: Framing =
    Framing::Wrapped { frame: true, prefix: RUN_EVENT_PREFIX, suffix: RUN_EVENT_SUFFIX, separator: b"" };
/// Run events in a polling body: separated by `\x1e` (the last one is cut).
pub(super) const POLL_FRAMING: Framing =
    Framing::Wrapped { frame: false, prefix: RUN_EVENT_PREFIX, suffix: b"]\x1e", separator: b"\x1e" };

/// After an error or a disconnect, how long what is queued may still take to go out.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// What a namespace tells its connection.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    Go,
    /// Disconnect the client once what is queued is sent.
    Disconnect,
}

/// What the handshake said, kept until the client's CONNECT.
pub(super) struct Start {
    pub server: Server,
    /// From `Authorization: Bearer` or `?token=`; the CONNECT payload's `token` otherwise.
    pub token: Option<String>,
    pub runs: RunsStart,
    pub host: Option<String>,
}

impl Ns {
    /// When the connected namespace's token expires, on the connection's
    /// clock; `now` is the caller's, so a token past `exp` gives `now` itself.
    fn expiry(&self, now: Instant) -> Option<Instant> {
        let exp = match self {
            Ns::Runs(ns) => ns.expires?,
            Ns::Workflow(ns) => ns.scope.expires()?,
            Ns::Waiting(_) | Ns::Closing => return None,
        };
        Some(now + crate::auth::time_left(exp))
    }
}

pub(super) enum Ns {
    /// Before the client's CONNECT.
    Waiting(Box<Start>),
    Runs(Box<RunsNs>),
    Workflow(Box<WorkflowNs>),
    /// Disconnected: what is queued goes out, then the connection ends.
    Closing,
}

pub(super) enum Transport {
    Polling(Box<Polling>),
    WebSocket(Box<Link>),
}

/// The polling side: requests arrive as commands.
pub(super) struct Polling {
    pub cmds: mpsc::Receiver<Cmd>,
    /// A `GET` waiting for packets.
    pub waiting: Option<oneshot::Sender<PollAnswer>>,
    /// A WebSocket being probed for the upgrade; `true` once it answered `3probe`.
    pub probe: Option<(Box<Link>, bool)>,
    /// Keeps the session in the table (and counted) while it polls.
    pub _entry: Entry,
}

/// Why a connection ends.
#[derive(Debug)]
pub(super) enum End {
    /// The namespace is done (or refused), and its `41` was sent.
    Disconnect,
    /// The client closed, or the socket broke.
    PeerGone,
    /// No write progress for `write_stall_timeout`.
    Stalled,
    /// No pong, or no CONNECT, in time.
    Timeout(&'static str),
    Shutdown,
    /// A protocol error of the client's: close code and reason.
    Error(u16, String),
}

pub(super) struct Conn {
    pub shared: Arc<Shared>,
    pub server: Server,
    /// The Socket.IO socket ID, sent in the CONNECT reply.
    pub socket_id: String,
    pub transport: Transport,
    pub outbox: Outbox,
    pub ns: Ns,
    pub limiter: RateLimiter,
    /// Counts the connection against `max_connections` for its whole life.
    pub _count: Arc<dyn Send + Sync>,
}

impl Conn {
    pub(super) async fn run(mut self: Box<Self>) {
        let cfg = self.shared.stream_config();
        let stall = cfg.write_stall_timeout;
        let mut heard = Instant::now();
        let connect_by = heard + cfg.auth_timeout;
        let mut next_ping = heard + cfg.ping_interval;
        let mut moved = heard;
        let mut idle = true;
        let timer = tokio::time::sleep_until(connect_by.min(next_ping));
        tokio::pin!(timer);
        let stopped = self.shared.stop.clone().cancelled_owned();
        tokio::pin!(stopped);
        let end = loop {
            if idle {
                moved = Instant::now();
            }
            match self.flush() {
                Ok(true) => moved = Instant::now(),
                Ok(false) => {}
                Err(()) => break End::PeerGone,
            }
            idle = self.written_out();
            // Disconnected, and the DISCONNECT is out (an upgrade under way
            // still gets its answers until then).
            if idle && matches!(self.ns, Ns::Closing) {
                break End::Disconnect;
            }
            if !idle && timer.deadline() > moved + stall {
                timer.as_mut().reset(moved + stall);
            }
            if let Some(at) = self.ns.expiry(Instant::now()).filter(|at| timer.deadline() > *at) {
                timer.as_mut().reset(at);
            }
            let refill = self.outbox.bytes() < REFILL_BELOW && matches!(self.ns, Ns::Runs(_) | Ns::Workflow(_));
            let ws_pending = !idle && matches!(self.transport, Transport::WebSocket(_));
            let step = tokio::select! {
                input = std::future::poll_fn(|cx| poll_input(&mut self.transport, ws_pending, cx)) => {
                    match input {
                        // The socket takes more: the loop writes it.
                        Input::Writable(r) => r.map_err(|_| End::PeerGone),
                        input => {
                            heard = Instant::now();
                            self.on_input(input)
                        }
                    }
                }
                verdict = std::future::poll_fn(|cx| poll_ns(&mut self.ns, cx, &mut self.outbox)), if refill => {
                    if verdict == Verdict::Disconnect {
                        self.disconnect();
                    }
                    Ok(())
                }
                () = &mut timer => {
                    let now = Instant::now();
                    if self.ns.expiry(now).is_some_and(|at| now >= at) {
                        self.token_expired();
                    }
                    if now >= heard + cfg.ping_timeout {
                        Metrics::add(&self.shared.metrics.heartbeat_timeouts, 1);
                        break End::Timeout("ping timeout");
                    }
                    if !idle && now >= moved + stall {
                        Metrics::add(&self.shared.metrics.write_stalls, 1);
                        break End::Stalled;
                    }
                    if matches!(self.ns, Ns::Waiting(_)) && now >= connect_by {
                        break End::Timeout("no CONNECT in time");
                    }
                    if now >= next_ping {
                        self.outbox.push_message(Bytes::from_static(b"2"));
                        next_ping = now + cfg.ping_interval;
                    }
                    let mut next = next_ping.min(heard + cfg.ping_timeout);
                    if matches!(self.ns, Ns::Waiting(_)) {
                        next = next.min(connect_by);
                    }
                    if !idle {
                        next = next.min(moved + stall);
                    }
                    timer.as_mut().reset(next);
                    Ok(())
                }
                () = &mut stopped => break End::Shutdown,
            };
            if let Err(end) = step {
                break end;
            }
        };
        self.finish(end).await;
    }

    /// Nothing left to write: in the outbox, nor (TLS) in the socket.
    fn written_out(&self) -> bool {
        match &self.transport {
            Transport::WebSocket(link) => self.outbox.is_done(&*link.conn),
            Transport::Polling(_) => self.outbox.is_empty(),
        }
    }

    /// Writes what the transport takes now. Ok(true) if anything went out.
    fn flush(&mut self) -> Result<bool, ()> {
        match &mut self.transport {
            Transport::WebSocket(link) => self.outbox.write_to(&*link.conn).map_err(|error| {
                tracing::debug!(%error, "socket.io websocket write failed");
            }),
            Transport::Polling(p) => {
                // While upgrading, a waiting GET is answered at once (a `noop`
                // if there is nothing), so the client's paused polling ends.
                let upgrading = p.probe.as_ref().is_some_and(|(_, probed)| *probed);
                if p.waiting.is_none() || (self.outbox.is_empty() && !upgrading) {
                    return Ok(false);
                }
                let body = if self.outbox.is_empty() { Bytes::from_static(b"6") } else { collect(&mut self.outbox) };
                if let Some(tx) = p.waiting.take() {
                    // A client gone mid-request loses what was in the answer, as with Engine.IO.
                    let _ = tx.send(PollAnswer::Packets(body));
                }
                Ok(true)
            }
        }
    }

    /// Queues the namespace's DISCONNECT; the connection ends once it is sent.
    pub(super) fn disconnect(&mut self) {
        self.outbox.push_message(super::packet::disconnect(self.server.namespace()).into());
        self.ns = Ns::Closing;
    }

    /// Sends what the end calls for, within a bound, and lets go.
    async fn finish(mut self: Box<Self>, end: End) {
        tracing::debug!(?end, "socket.io connection ends");
        let close = match &end {
            End::Disconnect => Some((1000, "disconnect".to_owned())),
            End::PeerGone => None,
            End::Stalled => {
                self.outbox.cut_to_front();
                self.lagged();
                Some((1013, "lagged".to_owned()))
            }
            End::Timeout(why) => Some((1001, (*why).to_owned())),
            End::Shutdown => Some((1001, "server shutting down".to_owned())),
            End::Error(code, why) => Some((*code, why.clone())),
        };
        let Some((code, reason)) = close else {
            if let Transport::WebSocket(link) = &mut self.transport {
                let control = link.take_control();
                self.outbox.push_raw(control);
                self.drain(CLOSE_LINGER).await;
            }
            return;
        };
        match &self.transport {
            Transport::WebSocket(_) => self.outbox.push_raw(link::close_frame(code, &reason)),
            // After a DISCONNECT the client closes the engine itself: a close
            // packet in the same body would reach it first, read as a broken
            // transport, and make it reconnect.
            Transport::Polling(_) if matches!(end, End::Disconnect) => {}
            // Engine.IO's close packet, for the client's last GET.
            Transport::Polling(_) => self.outbox.push_message(Bytes::from_static(b"1")),
        }
        self.drain(CLOSE_LINGER).await;
    }

    /// The token expired: an `error` "token-expired", then the namespace's
    /// DISCONNECT (the connection ends once both are out).
    fn token_expired(&mut self) {
        let message = "the token expired; reconnect with a new one";
        let text = match self.ns {
            Ns::Runs(_) => {
                super::packet::event("/", "error", &[&"token-expired".into(), &serde_json::json!({"message": message})])
            }
            _ => {
                let body = serde_json::json!({"type": "token-expired", "message": message,
                    "timestamp": crate::event::now_timestamp()});
                super::packet::event(self.server.namespace(), "error", &[&body])
            }
        };
        self.outbox.push_message(text.into());
        self.disconnect();
    }

    /// A stalled client is told where it stopped, if it ever reads again.
    fn lagged(&mut self) {
        let last = self.outbox.written(super::runs_ns::SLOT);
        let text = match self.ns {
            Ns::Runs(_) => {
                let detail =
                    serde_json::json!({"lastSeq": last, "message": "accepted no data for write_stall_timeout"});
                super::packet::event("/", "error", &[&"lagged".into(), &detail])
            }
            _ => {
                let body = serde_json::json!({"type": "lagged", "message": "accepted no data for write_stall_timeout",
                    "timestamp": crate::event::now_timestamp()});
                super::packet::event(self.server.namespace(), "error", &[&body])
            }
        };
        self.outbox.push_message(text.into());
        self.outbox.push_message(super::packet::disconnect(self.server.namespace()).into());
    }

    /// Writes out what is queued, for at most `limit`: to the socket, or to
    /// the client's next `GET`s.
    async fn drain(&mut self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            loop {
                if self.flush().is_err() || self.written_out() {
                    return;
                }
                match &mut self.transport {
                    Transport::WebSocket(link) => {
                        if link.conn.writable().await.is_err() {
                            return;
                        }
                    }
                    Transport::Polling(p) => match p.cmds.recv().await {
                        Some(Cmd::Poll(tx)) => p.waiting = Some(tx),
                        Some(Cmd::Post(_, reply)) => {
                            let _ = reply.send(Ok(()));
                        }
                        Some(Cmd::Upgrade(_)) => {}
                        None => return,
                    },
                }
            }
        })
        .await;
    }
}

/// What the transport brought.
pub(super) enum Input {
    /// A message on the WebSocket (the transport, or the one being probed).
    Ws {
        probe: bool,
        read: link::Read,
    },
    Cmd(Option<Cmd>),
    /// The WebSocket takes writes again (asked for only while the outbox waits).
    Writable(io::Result<()>),
}

fn poll_input(t: &mut Transport, want_write: bool, cx: &mut std::task::Context<'_>) -> std::task::Poll<Input> {
    match t {
        Transport::WebSocket(link) => {
            if want_write && let std::task::Poll::Ready(r) = link.conn.poll_write_ready(cx) {
                return std::task::Poll::Ready(Input::Writable(r));
            }
            link.poll_read(cx).map(|read| Input::Ws { probe: false, read })
        }
        Transport::Polling(p) => {
            if let Some((probe, _)) = &mut p.probe
                && let std::task::Poll::Ready(read) = probe.poll_read(cx)
            {
                return std::task::Poll::Ready(Input::Ws { probe: true, read });
            }
            p.cmds.poll_recv(cx).map(Input::Cmd)
        }
    }
}

fn poll_ns(ns: &mut Ns, cx: &mut std::task::Context<'_>, outbox: &mut Outbox) -> std::task::Poll<Verdict> {
    match ns {
        Ns::Runs(runs) => runs.poll(cx, outbox),
        Ns::Workflow(wf) => wf.poll(cx, outbox).map(|()| Verdict::Go),
        Ns::Waiting(_) | Ns::Closing => std::task::Poll::Pending,
    }
}

/// Everything queued, as one polling body (packets joined by `\x1e`).
fn collect(outbox: &mut Outbox) -> Bytes {
    let sink = Collect(RefCell::new(Vec::with_capacity(outbox.bytes())));
    while !outbox.is_empty() {
        if outbox.write_to(&sink).is_err() {
            break;
        }
    }
    let mut body = sink.0.into_inner();
    if body.last() == Some(&super::packet::SEPARATOR) {
        body.pop();
    }
    Bytes::from(body)
}

/// A polling body being built: takes everything it is given.
struct Collect(RefCell<Vec<u8>>);

impl TryWrite for Collect {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut out = self.0.borrow_mut();
        let before = out.len();
        for b in bufs {
            out.extend_from_slice(b);
        }
        Ok(out.len() - before)
    }
}

/// Engine.IO's answer to a `GET` that overlaps one still waiting.
pub(super) fn overlapping_poll() -> PollAnswer {
    PollAnswer::Error(EioError::BadRequest)
}
