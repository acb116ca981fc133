//! One WebSocket session: authentication, subscriptions, heartbeat, limits.
//!
//! Tasks per session: this one (reads client messages, runs timers), a
//! writer (owns the socket's write half; feeds every queued frame, then
//! flushes once), and one per subscription (pulls its `Feed`). The queue
//! from subscriptions to the writer is short; behind it, each
//! subscription's hub queue is bounded in bytes. A client that stops reading
//! therefore fills its own queues and gets `lagged` (1013), while the run
//! and every other subscriber carry on. A write that makes no progress for
//! `write_stall_timeout` ends the session.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role as WsRole, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsProtoError, Message};

use super::auth::Scope;
use super::metrics::Metrics;
use super::{Role, Shared};
use crate::event::Utf8Bytes;
use crate::feed::{Delivery, Feed, FeedItem, LagPolicy};
use crate::run_id::RunId;

type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// Subscriptions one `/ws` session may hold at once: each can pin a
/// delivery of history in memory while its client is slow.
const MAX_SUBSCRIPTIONS: usize = 64;
/// Deliveries queued between subscriptions and the writer. Small on
/// purpose: the byte bound lives in each subscription's hub queue.
const WRITER_QUEUE: usize = 16;
/// Frames fed to the socket before a flush, so a busy stream still flushes regularly.
const FRAMES_PER_FLUSH: usize = 512;
/// tungstenite's read buffer, allocated up front per connection (its default
/// is 128 KiB). Clients send a few small messages; larger ones still work,
/// read in several chunks. 4 KiB → 1 KiB took idle RSS per subscriber at
/// 10 000 from 13.8 to 10.7 KB (BENCHMARKS.md).
const READ_BUFFER: usize = 1024;
/// Bytes tungstenite collects before writing to the socket. Its buffer keeps
/// its capacity, so this is roughly what each busy subscriber costs: at
/// 64 KiB a 1000-subscriber fan-out held ~130 MB of write buffers.
const WRITE_BUFFER: usize = 8 * 1024;

/// Which endpoint the session came in on.
pub enum Endpoint {
    /// `/runs?runId=` and `/api/v2/workflows/runs/ID/stream`: one run; closed (1000) when it ends.
    /// `host` picks the host at a gateway.
    Single { run: Result<RunId, WsError>, since: u64, host: Option<String> },
    /// `/ws`: subscribe and unsubscribe by message.
    Multi,
}

/// An error event plus the close code that follows it (the spec's table).
#[derive(Debug, Clone)]
pub struct WsError {
    pub code: &'static str,
    pub close: u16,
    pub message: String,
    pub last_seq: Option<u64>,
}

impl WsError {
    pub fn new(code: &'static str, close: u16, message: impl Into<String>) -> Self {
        WsError { code, close, message: message.into(), last_seq: None }
    }
    pub fn unauthorized() -> Self {
        Self::new("unauthorized", 4401, "missing or wrong token")
    }
    pub fn forbidden(run: &RunId) -> Self {
        Self::new("forbidden", 4403, format!("this token may not see run {run}"))
    }
    pub fn host_token() -> Self {
        Self::new("forbidden", 4403, "host (agent) tokens cannot subscribe to runs")
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new("bad-request", 4400, message)
    }
    pub fn missing_run_id() -> Self {
        Self::new("missing-run-id", 4400, "no run ID given")
    }
    /// From a raw `runId` value: missing, or malformed.
    pub fn for_run_id(raw: Option<&str>) -> Result<RunId, WsError> {
        match raw {
            None | Some("") => Err(Self::missing_run_id()),
            Some(s) => RunId::parse(s).map_err(|e| Self::bad_request(format!("invalid run ID {s:?}: {e}"))),
        }
    }

    pub fn to_json(&self, run: Option<&RunId>) -> Utf8Bytes {
        let mut v = json!({"type": "error", "code": self.code, "message": self.message});
        if let Some(seq) = self.last_seq {
            v["lastSeq"] = seq.into();
        }
        if let Some(run) = run {
            v["runId"] = run.as_str().into();
        }
        Utf8Bytes::from(v.to_string())
    }
}

/// What the writer task sends.
enum Out {
    Frames(Delivery),
    Text(Utf8Bytes),
    Ping,
    /// Push out anything tungstenite queued itself (pongs).
    Flush,
    Close(u16, String),
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ClientMsg {
    Auth {
        token: String,
    },
    #[serde(rename_all = "camelCase")]
    Subscribe {
        run_id: Option<String>,
        #[serde(default)]
        since: u64,
        #[serde(default)]
        host: Option<String>,
    },
    #[serde(rename_all = "camelCase")]
    Unsubscribe {
        run_id: Option<String>,
        #[serde(default)]
        host: Option<String>,
    },
}

/// tungstenite reads messages up to this, and the session refuses those over
/// `max_frame_bytes` itself: a message read in full can be answered with
/// `message-too-large`; one cut off mid-read leaves bytes unread, and the
/// close then resets the connection, losing the error on the way.
fn read_limit(max_frame_bytes: usize) -> usize {
    (max_frame_bytes * 4).max(256 * 1024)
}

/// After an error close, how long unread client data is still drained so
/// the close does not turn into a reset that loses the error event.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

pub fn ws_config(max_frame_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(Some(read_limit(max_frame_bytes)))
        .max_frame_size(Some(read_limit(max_frame_bytes)))
}

/// Runs a session to its end. `token` is the one from the header or query.
pub async fn serve(upgraded: Upgraded, endpoint: Endpoint, token: Option<String>, shared: Arc<Shared>) {
    let cfg = shared.stream_config();
    let ws =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), WsRole::Server, Some(ws_config(cfg.max_frame_bytes)))
            .await;
    let (sink, mut stream) = ws.split();
    let (tx, rx) = mpsc::channel(WRITER_QUEUE);
    let mut writer = tokio::spawn(write_loop(sink, rx, cfg.write_stall_timeout, shared.metrics.clone()));
    shared.metrics.websockets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut session = Session {
        limiter: RateLimiter::new(cfg.max_messages_per_second, cfg.rate_burst),
        max_depth: cfg.max_json_depth,
        shared: shared.clone(),
        tx,
        scope: None,
        subs: HashMap::new(),
        feeds: JoinSet::new(),
        single: matches!(endpoint, Endpoint::Single { .. }),
    };
    let ended = tokio::select! {
        r = session.run(&mut stream, endpoint, token) => r,
        _ = &mut writer => Ok(()),
    };
    if let Err(err) = ended {
        session.fail(err).await;
        // Keep reading (and dropping) until the client closes, briefly.
        let _ = tokio::time::timeout(CLOSE_LINGER, async { while let Some(Ok(_)) = stream.next().await {} }).await;
    }
    session.feeds.shutdown().await;
    drop(session.tx);
    // The writer gets to deliver the close frame unless the peer is stalled.
    if tokio::time::timeout(cfg.write_stall_timeout, &mut writer).await.is_err() {
        writer.abort();
    }
    shared.metrics.websockets.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

struct Session {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Out>,
    /// Set once authenticated.
    scope: Option<Scope>,
    /// Subscriptions by (host, run), so a second `subscribe` or `unsubscribe` can stop one.
    subs: HashMap<(Option<String>, RunId), AbortHandle>,
    feeds: JoinSet<()>,
    limiter: RateLimiter,
    max_depth: usize,
    single: bool,
}

impl Session {
    async fn run(
        &mut self,
        stream: &mut SplitStream<Ws>,
        endpoint: Endpoint,
        token: Option<String>,
    ) -> Result<(), WsError> {
        let cfg = self.shared.stream_config();
        let mut heard = Instant::now();
        match token {
            Some(t) => self.authenticate(&t)?,
            None => {
                let first = tokio::time::timeout(cfg.auth_timeout, stream.next()).await;
                let Ok(Some(Ok(Message::Text(text)))) = first else {
                    return Err(self.auth_failed());
                };
                self.check_message(&text)?;
                match serde_json::from_str::<ClientMsg>(&text) {
                    Ok(ClientMsg::Auth { token }) => self.authenticate(&token)?,
                    _ => return Err(self.auth_failed()),
                }
                self.send(Out::Text(Utf8Bytes::from_static(r#"{"type":"authenticated"}"#))).await;
            }
        }
        if let Endpoint::Single { run, since, host } = endpoint {
            self.subscribe(run?, since, host).await?;
        }
        let mut ping = tokio::time::interval_at(Instant::now() + cfg.ping_interval, cfg.ping_interval);
        let stop = self.shared.stop.clone();
        loop {
            let deadline = heard + cfg.ping_timeout;
            tokio::select! {
                msg = stream.next() => {
                    heard = Instant::now();
                    match msg {
                        None | Some(Ok(Message::Close(_))) => return Ok(()),
                        Some(Ok(msg)) => self.on_message(msg).await?,
                        Some(Err(WsProtoError::Capacity(e))) => {
                            Metrics::add(&self.shared.metrics.oversized_messages, 1);
                            return Err(WsError::new("message-too-large", 1009, format!("{e} (limit {} bytes)", cfg.max_frame_bytes)));
                        }
                        Some(Err(error)) => {
                            tracing::debug!(%error, "websocket read failed");
                            return Ok(());
                        }
                    }
                }
                Some(done) = self.feeds.join_next(), if !self.feeds.is_empty() => {
                    if self.single && done.is_ok() {
                        self.send(Out::Close(1000, "run ended".into())).await;
                        return Ok(());
                    }
                }
                _ = ping.tick() => self.send(Out::Ping).await,
                _ = tokio::time::sleep_until(deadline) => {
                    Metrics::add(&self.shared.metrics.heartbeat_timeouts, 1);
                    tracing::debug!("peer did not answer pings; closing");
                    self.send(Out::Close(1001, "ping timeout".into())).await;
                    return Ok(());
                }
                _ = stop.cancelled() => {
                    self.send(Out::Close(1001, "server shutting down".into())).await;
                    return Ok(());
                }
            }
        }
    }

    fn authenticate(&mut self, token: &str) -> Result<(), WsError> {
        match self.shared.role(token) {
            Role::Viewer(scope) => {
                self.scope = Some(scope);
                Ok(())
            }
            Role::Agent => Err(WsError::host_token()),
            Role::None => Err(self.auth_failed()),
        }
    }

    fn auth_failed(&self) -> WsError {
        Metrics::add(&self.shared.metrics.auth_failures, 1);
        WsError::unauthorized()
    }

    /// Size, rate and nesting depth of one client message.
    fn check_message(&mut self, text: &str) -> Result<(), WsError> {
        let max = self.shared.stream_config().max_frame_bytes;
        if text.len() > max {
            Metrics::add(&self.shared.metrics.oversized_messages, 1);
            return Err(WsError::new("message-too-large", 1009, format!("message over {max} bytes")));
        }
        if !self.limiter.allow(Instant::now()) {
            Metrics::add(&self.shared.metrics.rate_limited, 1);
            return Err(WsError::new("rate-limited", 4429, "too many messages"));
        }
        if json_depth(text.as_bytes()) > self.max_depth {
            return Err(WsError::bad_request(format!("JSON nested deeper than {}", self.max_depth)));
        }
        Ok(())
    }

    async fn on_message(&mut self, msg: Message) -> Result<(), WsError> {
        match msg {
            Message::Text(text) => {
                self.check_message(&text)?;
                let parsed: ClientMsg =
                    serde_json::from_str(&text).map_err(|e| WsError::bad_request(format!("malformed message: {e}")))?;
                match parsed {
                    ClientMsg::Auth { .. } => Ok(()), // already authenticated; harmless
                    ClientMsg::Subscribe { .. } | ClientMsg::Unsubscribe { .. } if self.single => {
                        Err(WsError::bad_request("this endpoint streams one run; use /ws to subscribe by message"))
                    }
                    ClientMsg::Subscribe { run_id, since, host } => {
                        let run = WsError::for_run_id(run_id.as_deref())?;
                        self.subscribe(run, since, host).await
                    }
                    ClientMsg::Unsubscribe { run_id, host } => {
                        let run = WsError::for_run_id(run_id.as_deref())?;
                        if let Some(h) = self.subs.remove(&(host, run.clone())) {
                            h.abort();
                        }
                        let ack = json!({"type": "unsubscribed", "runId": run.as_str()}).to_string();
                        self.send(Out::Text(ack.into())).await;
                        Ok(())
                    }
                }
            }
            Message::Binary(b) => {
                let max = self.shared.stream_config().max_frame_bytes;
                if b.len() > max {
                    Metrics::add(&self.shared.metrics.oversized_messages, 1);
                    return Err(WsError::new("message-too-large", 1009, format!("message over {max} bytes")));
                }
                self.check_message("")?;
                Err(WsError::bad_request("binary messages are not part of the protocol"))
            }
            Message::Ping(_) => {
                self.check_message("")?;
                self.send(Out::Flush).await;
                Ok(())
            }
            Message::Pong(_) | Message::Frame(_) | Message::Close(_) => Ok(()),
        }
    }

    async fn subscribe(&mut self, run: RunId, since: u64, host: Option<String>) -> Result<(), WsError> {
        if !self.scope.as_ref().is_some_and(|s| s.allows(&run)) {
            return Err(WsError::forbidden(&run));
        }
        // A daemon has one host: `host` must not make two subscriptions to one run.
        let host = if self.shared.backend.table().is_some() { None } else { host };
        let key = (host.clone(), run.clone());
        if let Some(old) = self.subs.remove(&key) {
            old.abort();
        }
        self.subs.retain(|_, h| !h.is_finished());
        if self.subs.len() >= MAX_SUBSCRIPTIONS {
            return Err(WsError::bad_request(format!("at most {MAX_SUBSCRIPTIONS} subscriptions per connection")));
        }
        if !self.single {
            let mut ack = json!({"type": "subscribed", "runId": run.as_str(), "since": since});
            if let Some(h) = &host {
                ack["host"] = json!(h);
            }
            self.send(Out::Text(ack.to_string().into())).await;
        }
        let sub = Subscribe { shared: self.shared.clone(), run, since, host, tx: self.tx.clone(), multi: !self.single };
        let handle = self.feeds.spawn(sub.run());
        self.subs.insert(key, handle);
        Ok(())
    }

    async fn send(&self, out: Out) {
        // If the writer is gone the session is ending anyway.
        let _ = self.tx.send(out).await;
    }

    async fn fail(&self, err: WsError) {
        tracing::debug!(code = err.code, close = err.close, message = %err.message, "closing websocket with error");
        self.send(Out::Text(err.to_json(None))).await;
        self.send(Out::Close(err.close, err.code.to_owned())).await;
    }
}

/// One subscription's task: finds the run (at a gateway this may wait for
/// a host to start it), then moves its feed into the writer queue.
struct Subscribe {
    shared: Arc<Shared>,
    run: RunId,
    since: u64,
    host: Option<String>,
    tx: mpsc::Sender<Out>,
    multi: bool,
}

impl Subscribe {
    async fn run(self) {
        let source = match self.shared.backend.source(self.host.as_deref(), &self.run).await {
            Ok(s) => s,
            Err(e) => {
                let err = WsError::bad_request(e.to_string());
                let _ = self.tx.send(Out::Text(err.to_json(Some(&self.run)))).await;
                let _ = self.tx.send(Out::Close(err.close, err.code.to_owned())).await;
                return;
            }
        };
        let feed = Feed::new(source.journal, source.hub, self.run, self.since, true, LagPolicy::Close);
        pump(feed, self.tx, self.multi, self.shared.metrics.clone()).await;
    }
}

/// Moves one subscription's feed into the writer queue until the run ends.
async fn pump(mut feed: Feed, tx: mpsc::Sender<Out>, announce_end: bool, metrics: Arc<Metrics>) {
    loop {
        let item = match feed.next().await {
            Ok(item) => item,
            Err(error) => {
                tracing::warn!(run_id = %feed.run_id(), %error, "reading history failed");
                let err = WsError::new("journal", 1011, error.to_string());
                let _ = tx.send(Out::Text(err.to_json(Some(feed.run_id())))).await;
                let _ = tx.send(Out::Close(err.close, err.code.to_owned())).await;
                return;
            }
        };
        let out = match item {
            FeedItem::Frames(d) => Out::Frames(d),
            FeedItem::Gap { from, to } => {
                let msg = format!("events {from}..={to} are missing from the degraded journal");
                Out::Text(WsError::new("journal-gap", 0, msg).to_json(Some(feed.run_id())))
            }
            FeedItem::Lagged { last_seq } => {
                Metrics::add(&metrics.lagged_disconnects, 1);
                let mut err = WsError::new("lagged", 1013, "subscriber too slow; reconnect with since=lastSeq");
                err.last_seq = Some(last_seq);
                let _ = tx.send(Out::Text(err.to_json(Some(feed.run_id())))).await;
                let _ = tx.send(Out::Close(1013, "lagged".into())).await;
                return;
            }
            FeedItem::End => {
                if announce_end {
                    let end = json!({"type": "end", "runId": feed.run_id().as_str(), "lastSeq": feed.last_seq()});
                    let _ = tx.send(Out::Text(end.to_string().into())).await;
                }
                return;
            }
        };
        if tx.send(out).await.is_err() {
            return;
        }
    }
}

/// Owns the write half: feeds every queued item, then flushes once.
async fn write_loop(
    mut sink: SplitSink<Ws, Message>,
    mut rx: mpsc::Receiver<Out>,
    stall: Duration,
    metrics: Arc<Metrics>,
) {
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut fed = 0usize;
        let mut close = None;
        while let Some(out) = next.take() {
            let r = match out {
                Out::Frames(d) => {
                    let (mut events, mut bytes) = (0u64, 0u64);
                    let mut r = Ok(());
                    for f in d.frames() {
                        events += 1;
                        bytes += f.json.len() as u64;
                        r = feed(&mut sink, Message::Text(f.json.clone()), stall).await;
                        if r.is_err() {
                            break;
                        }
                    }
                    fed += events as usize;
                    Metrics::add(&metrics.events_out, events);
                    Metrics::add(&metrics.bytes_out, bytes);
                    r
                }
                Out::Text(t) => feed(&mut sink, Message::Text(t), stall).await,
                Out::Ping => feed(&mut sink, Message::Ping(Default::default()), stall).await,
                Out::Flush => Ok(()),
                Out::Close(code, reason) => {
                    close = Some(CloseFrame { code: CloseCode::from(code), reason: reason.into() });
                    Ok(())
                }
            };
            if let Err(stalled) = r {
                if stalled {
                    Metrics::add(&metrics.write_stalls, 1);
                    tracing::debug!("websocket write made no progress; dropping the peer");
                }
                return;
            }
            if close.is_some() || fed >= FRAMES_PER_FLUSH {
                break;
            }
            next = rx.try_recv().ok();
        }
        if let Some(frame) = close {
            let _ = tokio::time::timeout(stall, sink.send(Message::Close(Some(frame)))).await;
            return;
        }
        match tokio::time::timeout(stall, sink.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                Metrics::add(&metrics.write_stalls, 1);
                return;
            }
        }
    }
}

/// Err(true) on a stall, Err(false) on a closed or broken socket.
async fn feed(sink: &mut SplitSink<Ws, Message>, msg: Message, stall: Duration) -> Result<(), bool> {
    match tokio::time::timeout(stall, sink.feed(msg)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(false),
        Err(_) => Err(true),
    }
}

/// Token bucket: `rate` messages per second, bursts up to `burst`.
struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        RateLimiter { rate: f64::from(rate), burst, tokens: burst, last: Instant::now() }
    }

    fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Deepest nesting of objects/arrays in `json` (strings skipped), without parsing it.
pub fn json_depth(json: &[u8]) -> usize {
    let (mut depth, mut max, mut in_str, mut escaped) = (0usize, 0usize, false, false);
    for &b in json {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Refuses an upgraded connection with an error event and its close code
/// (used where no session follows, e.g. `/agent` with a viewer token).
pub async fn reject(upgraded: Upgraded, err: WsError) {
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), WsRole::Server, Some(ws_config(1024))).await;
    let frame = CloseFrame { code: CloseCode::from(err.close), reason: err.code.into() };
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        ws.send(Message::Text(err.to_json(None))).await?;
        ws.send(Message::Close(Some(frame))).await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_ignores_brackets_in_strings() {
        assert_eq!(json_depth(br#"{"a":[1,{"b":"[[[{{{"}]}"#), 3);
        assert_eq!(json_depth(br#""\"[""#), 0);
        assert_eq!(json_depth(b"[[[[[]]]]]"), 5);
    }

    #[test]
    fn rate_limiter_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(10, 3);
        assert!(r.allow(t0) && r.allow(t0) && r.allow(t0));
        assert!(!r.allow(t0));
        assert!(r.allow(t0 + Duration::from_millis(100)));
        assert!(!r.allow(t0 + Duration::from_millis(100)));
    }

    #[test]
    fn run_id_errors_follow_the_spec_table() {
        assert_eq!(WsError::for_run_id(None).unwrap_err().code, "missing-run-id");
        assert_eq!(WsError::for_run_id(Some("")).unwrap_err().code, "missing-run-id");
        let e = WsError::for_run_id(Some("../x")).unwrap_err();
        assert_eq!((e.code, e.close), ("bad-request", 4400));
    }
}
