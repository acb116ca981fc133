//! The loop of one WebSocket session: read client messages, pull the
//! subscriptions' feeds, write frames; ping, heartbeat and write-stall
//! deadlines on one timer.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role as WsRole;
use tokio_tungstenite::tungstenite::{Error as WsProtoError, Message};

use super::Endpoint;
use super::error::WsError;
use super::frame::{self, ClientIo};
use super::limits::{AUTH_READ_BUDGET, RateLimiter, ws_config};
use super::patterns::Patterns;
use super::requests::ClientMsg;
use super::subs::{Origin, Sub, SubKey, Subs};
use crate::auth::Scope;
use crate::event::TypeSet;
use crate::server::Shared;
use crate::server::backend::RunRef;
use crate::server::conn::Conn;
use crate::server::metrics::Metrics;
use crate::server::outbox::{Framing, Outbox, TryWrite as _};
use crate::server::run_stream::{StreamError, StreamOut};
use crate::server::streams::Polled;

/// The session pulls more from its feeds once less than this is waiting to
/// be written. The outbox holds shared batches, not copies, so this only
/// decides how soon a slow client's backlog moves to its bounded hub queue.
const REFILL_BELOW: usize = 64 * 1024;

/// After an error close, how long (and how much) unread client data is
/// still drained, so the close does not turn into a reset that loses the
/// error event on the way.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 4 * 1024 * 1024;

/// Why a session ended without an error of the client's making.
enum End {
    /// Send this close frame, then hang up.
    Close(u16, &'static str),
    /// The client closed, or the socket broke: send what is left (a close reply) if it goes.
    PeerGone,
    /// Writes made no progress for `write_stall_timeout`: tell it where
    /// it stopped (`lagged`, 1013), if it ever reads again, and hang up.
    Stalled,
}

/// What a session starts from, in one box. An async fn keeps its
/// arguments in its future for its whole life, and an idle subscriber is
/// mostly that future: the socket and the request would be 120 bytes of
/// every session, kept for nothing once it has started.
pub(super) struct Start {
    pub(super) conn: Conn,
    pub(super) early: bytes::Bytes,
    /// Freed by `Session::start`, once the session is authenticated and subscribed.
    pub(super) request: Box<(Endpoint, Option<String>)>,
}

/// Moves the contents out and frees the box now (a box moved out of in
/// place is freed only when it goes out of scope: here, never before the end).
#[allow(clippy::boxed_local)] // taking the box is the point: it is freed here
fn unbox<T>(b: Box<T>) -> T {
    *b
}

pub(super) async fn run(start: Box<Start>, shared: Arc<Shared>) {
    let cfg = shared.stream_config();
    // In a block, so that nothing of it stays in the future once the session exists.
    let (mut session, request) = {
        let Start { conn, early, request } = unbox(start);
        let conn = Arc::new(conn);
        let control = Arc::new(Mutex::new(BytesMut::new()));
        let io = ClientIo::new(conn.clone(), early, control.clone(), AUTH_READ_BUDGET);
        let reader = WebSocketStream::from_raw_socket(io, WsRole::Server, Some(ws_config(cfg.max_frame_bytes))).await;
        let session = Session {
            limiter: RateLimiter::new(cfg.max_messages_per_second, cfg.rate_burst),
            max_depth: cfg.max_json_depth,
            shared: shared.clone(),
            conn,
            reader,
            control,
            outbox: Outbox::new(Framing::WebSocket),
            scope: None,
            subs: Subs::default(),
            patterns: Patterns::default(),
            single: matches!(request.0, Endpoint::Single { .. }),
        };
        (session, request)
    };
    shared.metrics.websockets.fetch_add(1, Ordering::Relaxed);
    // Start-up is boxed (it runs once), and its result is gone before the
    // session's long wait begins (`if let` drops it before `else` in Rust 2024).
    let ended = if let Err(err) = Box::pin(session.start(request)).await { Err(err) } else { session.run().await };
    match ended {
        Ok(End::Close(code, reason)) => {
            session.outbox.push_raw(frame::close_frame(code, reason));
            Box::pin(session.drain(cfg.write_stall_timeout)).await;
        }
        Ok(End::PeerGone) => {
            session.pull_control();
            Box::pin(session.drain(cfg.write_stall_timeout)).await;
        }
        Ok(End::Stalled) => {
            // What is half written is finished (the stream must stay
            // parseable); nothing else queued is sent. Each subscription
            // learns the last event it has in full, to resume `since` it.
            session.outbox.cut_to_front();
            Metrics::add(&shared.metrics.lagged_disconnects, 1);
            let lagged: Vec<WsError> = session
                .subs
                .iter()
                .map(|((_, run), slot, sub)| {
                    let mut err = WsError::new(
                        "lagged",
                        1013,
                        "accepted no data for write_stall_timeout; reconnect with since=lastSeq",
                    );
                    err.last_seq = Some(session.outbox.written(slot).unwrap_or(sub.since));
                    err.with_run(run.clone())
                })
                .collect();
            for err in &lagged {
                session.outbox.push_text(&err.to_json());
            }
            session.outbox.push_raw(frame::close_frame(1013, "lagged"));
            Box::pin(session.drain(cfg.write_stall_timeout)).await;
            Box::pin(linger(session.conn.tcp())).await;
        }
        Err(err) => {
            tracing::debug!(code = err.code, close = err.close, message = %err.message, "closing websocket with error");
            session.outbox.push_text(&err.to_json());
            session.outbox.push_raw(frame::close_frame(err.close, err.code));
            Box::pin(session.drain(cfg.write_stall_timeout)).await;
            Box::pin(linger(session.conn.tcp())).await;
        }
    }
    shared.metrics.websockets.fetch_sub(1, Ordering::Relaxed);
}

/// Reads and drops what the client still sends, bounded, straight from
/// the socket (tungstenite may be stopped mid-frame), until it closes.
async fn linger(tcp: &tokio::net::TcpStream) {
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        // On the heap: the session future must stay small while idle.
        let mut sink = vec![0u8; 8192];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            if tcp.readable().await.is_err() {
                return;
            }
            match tcp.try_read(&mut sink) {
                Ok(0) => return,
                Ok(n) => drained += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    })
    .await;
}

/// One task per connection: it reads client messages, pulls its
/// subscriptions' feeds, and writes, so an idle subscriber costs one task
/// and no buffer beyond tungstenite's small read buffer.
pub(super) struct Session {
    pub(super) shared: Arc<Shared>,
    conn: Arc<Conn>,
    pub(super) reader: WebSocketStream<ClientIo>,
    /// What tungstenite wrote (pongs, close replies), to send between frames.
    control: Arc<Mutex<BytesMut>>,
    pub(super) outbox: Outbox,
    /// Set once authenticated.
    pub(super) scope: Option<Scope>,
    pub(super) subs: Subs,
    pub(super) patterns: Patterns,
    pub(super) limiter: RateLimiter,
    pub(super) max_depth: usize,
    /// Came in on `/runs/ID/stream`: one run, no messages.
    pub(super) single: bool,
}

impl Session {
    /// Authentication, and the subscription of a single-run endpoint.
    /// Takes the box, not its contents, so that it is freed once the
    /// session has started rather than held for the connection's life.
    async fn start(&mut self, start: Box<(Endpoint, Option<String>)>) -> Result<(), WsError> {
        let (endpoint, token) = *start;
        match token {
            Some(t) => self.authenticate(&t)?,
            None => {
                let first = tokio::time::timeout(self.shared.stream_config().auth_timeout, self.reader.next()).await;
                let text = match first {
                    Ok(Some(Ok(Message::Text(text)))) => text,
                    Ok(Some(Err(WsProtoError::Capacity(_)))) => return Err(self.too_large()),
                    Ok(Some(Err(_))) if self.reader.get_ref().budget_spent() => {
                        Metrics::add(&self.shared.metrics.oversized_messages, 1);
                        let msg = format!("more than {AUTH_READ_BUDGET} bytes before authenticating");
                        return Err(WsError::new("message-too-large", 1009, msg));
                    }
                    _ => return Err(self.auth_failed()),
                };
                self.check_message(&text)?;
                match serde_json::from_str::<ClientMsg>(&text) {
                    Ok(ClientMsg::Auth { token }) => self.authenticate(&token)?,
                    _ => return Err(self.auth_failed()),
                }
                self.outbox.push_text(r#"{"type":"authenticated"}"#);
            }
        }
        if let Endpoint::Single { run, since, host } = endpoint {
            self.subscribe(run?, since, host, TypeSet::ALL)?;
        }
        Ok(())
    }

    async fn run(&mut self) -> Result<End, WsError> {
        let cfg = self.shared.stream_config();
        let stop = self.shared.stop.clone();
        let stall = cfg.write_stall_timeout;
        let mut heard = Instant::now();
        let mut next_ping = heard + cfg.ping_interval;
        // When the outbox last moved, or last was empty: the stall clock.
        let mut moved = heard;
        let mut idle = true;
        // One timer for pings, the heartbeat and write stalls: it fires at
        // the earliest deadline that might have passed, and each firing
        // checks them all. Three timers would cost each idle session ~250 bytes more.
        let timer = tokio::time::sleep_until(self.expiry(heard).map_or(next_ping, |at| at.min(next_ping)));
        tokio::pin!(timer);
        // Made once: every `cancelled()` future registers with the one
        // `Notify` all sessions share, and making one per loop turn had
        // every session take that lock twice per event.
        let stopped = stop.cancelled();
        tokio::pin!(stopped);
        loop {
            if idle {
                moved = Instant::now();
            }
            match self.outbox.write_to(&*self.conn) {
                Ok(true) => moved = Instant::now(),
                Ok(false) => {}
                Err(error) => {
                    tracing::debug!(%error, "websocket write failed");
                    return Ok(End::PeerGone);
                }
            }
            idle = self.outbox.is_done(&*self.conn);
            if !idle && timer.deadline() > moved + stall {
                timer.as_mut().reset(moved + stall);
            }
            let refill = self.outbox.bytes() < REFILL_BELOW && !self.subs.is_empty();
            // Nothing is awaited inside the select: what its branches produce
            // would then stay in every idle session's future.
            let received: Option<Message> = tokio::select! {
                msg = self.reader.next() => {
                    heard = Instant::now();
                    match msg {
                        None => return Ok(End::PeerGone),
                        Some(Ok(msg)) => Some(msg),
                        Some(Err(WsProtoError::Capacity(_))) => return Err(self.too_large()),
                        // RFC 6455 §7.4.1: 1007 for a text message that is not
                        // UTF-8, 1002 for a broken frame.
                        Some(Err(WsProtoError::Utf8(_))) => {
                            return Err(WsError::new("bad-request", 1007, "a text message is not valid UTF-8"));
                        }
                        Some(Err(WsProtoError::Protocol(e))) => {
                            return Err(WsError::new("bad-request", 1002, format!("WebSocket protocol error: {e}")));
                        }
                        Some(Err(error)) => {
                            tracing::debug!(%error, "websocket read failed");
                            return Ok(End::PeerGone);
                        }
                    }
                }
                out = std::future::poll_fn(|cx| self.subs.poll_next(cx)), if refill => {
                    if let Some(end) = self.on_feed(out)? {
                        return Ok(end);
                    }
                    None
                }
                started = std::future::poll_fn(|cx| self.patterns.poll_watch(cx)), if self.patterns.is_watching() => {
                    self.on_run_started(started);
                    None
                }
                r = std::future::poll_fn(|cx| self.conn.poll_write_ready(cx)), if !idle => {
                    if r.is_err() {
                        return Ok(End::PeerGone);
                    }
                    None
                }
                () = &mut timer => {
                    let now = Instant::now();
                    let expiry = self.expiry(now);
                    if expiry.is_some_and(|at| now >= at) {
                        return Err(WsError::new("token-expired", 4401, "the token expired; reconnect with a new one"));
                    }
                    if now >= heard + cfg.ping_timeout {
                        Metrics::add(&self.shared.metrics.heartbeat_timeouts, 1);
                        tracing::debug!("peer did not answer pings; closing");
                        return Ok(End::Close(1001, "ping timeout"));
                    }
                    if !idle && now >= moved + stall {
                        Metrics::add(&self.shared.metrics.write_stalls, 1);
                        tracing::debug!("websocket write made no progress; dropping the peer");
                        return Ok(End::Stalled);
                    }
                    if now >= next_ping {
                        self.outbox.push_raw(frame::encode(frame::PING, b""));
                        next_ping = now + cfg.ping_interval;
                    }
                    let mut next = next_ping.min(heard + cfg.ping_timeout);
                    if !idle {
                        next = next.min(moved + stall);
                    }
                    if let Some(at) = expiry {
                        next = next.min(at);
                    }
                    timer.as_mut().reset(next);
                    None
                }
                () = &mut stopped => return Ok(End::Close(1001, "server shutting down")),
            };
            match received {
                None => {}
                Some(Message::Close(_)) => {
                    // tungstenite queues the close reply; push it out.
                    let _ = Box::pin(self.reader.flush()).await;
                    return Ok(End::PeerGone);
                }
                // Boxed: a message (subscribe, auth) is rare, and its future
                // would otherwise be part of every idle session's.
                Some(msg) => Box::pin(self.on_message(msg)).await?,
            }
        }
    }

    /// Queues what a subscription produced; `Some` ends the session.
    fn on_feed(&mut self, polled: Polled<SubKey, Sub>) -> Result<Option<End>, WsError> {
        let Polled { slot, out, removed } = polled;
        match out {
            StreamOut::Frames(delivery) => {
                let types = self.subs.get(slot).map_or(TypeSet::ALL, |(_, sub)| sub.types);
                let (batches, after) = delivery.into_parts();
                let (mut events, mut bytes) = (0, 0);
                for batch in batches {
                    let (e, b) = if types.is_all() {
                        self.outbox.push_batch(batch, after, slot)
                    } else {
                        self.outbox.push_batch_where(batch, after, slot, |json| types.wants_line(json))
                    };
                    events += e;
                    bytes += b;
                }
                Metrics::add(&self.shared.metrics.events_out, events);
                Metrics::add(&self.shared.metrics.bytes_out, bytes);
            }
            StreamOut::Gap { from, to } => {
                // Worded as on the Unix socket, so `runtap logs --url` prints what `runtap logs` does.
                let run = self.subs.get(slot).map(|((_, run), _)| run.clone());
                let name = run.as_ref().map_or_else(String::new, |r| format!(" of run {r}"));
                let msg = format!("events {from}..={to}{name} are missing from its degraded journal");
                let mut gap = WsError::new("journal-gap", 0, msg);
                gap.run = run;
                self.outbox.push_text(&gap.to_json());
            }
            StreamOut::End { .. } if self.single => return Ok(Some(End::Close(1000, "run ended"))),
            StreamOut::End { last_seq } => {
                let Some(((host, run), _)) = removed else { return Ok(None) };
                let mut end = json!({"type": "end", "runId": run.as_str(), "lastSeq": last_seq});
                if let Some(h) = host {
                    end["host"] = json!(h);
                }
                self.outbox.push_text(&end.to_string());
            }
            StreamOut::Fail(error) => {
                let Some(((host, run), sub)) = removed else { return Ok(None) };
                // One run a pattern found failed (its journal, or it vanished):
                // the connection's other runs carry on.
                if sub.origin == Origin::Pattern {
                    self.skipped(&RunRef { host, run }, &error.to_string());
                    return Ok(None);
                }
                let err = match error {
                    StreamError::Lookup(e) => WsError::bad_request(e.to_string()),
                    StreamError::Journal(e) => WsError::new("journal", 1011, e.to_string()),
                };
                return Err(err.with_run(run));
            }
        }
        Ok(None)
    }

    /// When the token (a JWT's `exp`) expires, on the session's clock;
    /// computed when the timer fires rather than kept, so an idle session
    /// carries no more than its scope.
    /// `now` is the caller's, so a token past `exp` gives `now` itself.
    fn expiry(&self, now: Instant) -> Option<Instant> {
        Some(now + crate::auth::time_left(self.scope.as_ref()?.expires()?))
    }

    /// Moves what tungstenite wrote into the outbox.
    pub(super) fn pull_control(&mut self) {
        self.outbox.push_raw(frame::take_control(&self.control));
    }

    /// Writes out what is queued, for at most `limit`.
    async fn drain(&mut self, limit: Duration) {
        let (outbox, conn) = (&mut self.outbox, &self.conn);
        let _ = tokio::time::timeout(limit, async {
            while outbox.write_to(&**conn).is_ok() && !outbox.is_done(&**conn) {
                if conn.writable().await.is_err() {
                    return;
                }
            }
        })
        .await;
        // TLS: say goodbye in TLS too (nothing for plain TCP), if the socket takes it.
        conn.close_notify();
        let _ = conn.try_flush();
    }
}
