//! Engine.IO v4 over HTTP: the handshake, polling requests, the upgrade
//! to WebSocket, CORS, and the table of polling sessions.
//!
//! A session is a `conn::Conn` task; a polling request reaches it through
//! the table (`sid` → command channel) and waits for its answer there. The
//! table is bounded: every session counts as a connection against
//! `max_connections` for its whole life, and leaves the table when its
//! task ends (no `GET` for `ping_timeout`, a disconnect, an upgrade).
//! Refusals are Engine.IO's own: 400 with `{"code":N,"message":"..."}`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::sync::{mpsc, oneshot};

use super::Server;
use super::conn::{Conn, Ns, POLL_FRAMING, Polling, Start, Transport, WS_FRAMING};
use super::link::Link;
use super::packet::EioError;
use super::runs_ns::RunsStart;
use crate::auth::request_token;
use crate::server::Shared;
use crate::server::http::KeepOpen;
use crate::server::outbox::Outbox;
use crate::server::ws::limits::RateLimiter;

type Body = Full<Bytes>;

/// Commands a session takes from the HTTP side.
pub(super) enum Cmd {
    /// A `GET`: answered when there is something to send (or a ping is due).
    Poll(oneshot::Sender<PollAnswer>),
    /// A `POST`'s body.
    Post(Bytes, oneshot::Sender<Result<(), EioError>>),
    /// A WebSocket to probe, then upgrade to.
    Upgrade(Box<Link>),
}

pub(super) enum PollAnswer {
    Packets(Bytes),
    Error(EioError),
}

/// Commands queued per session: requests are sequential per client.
const COMMANDS: usize = 4;

/// Polling sessions by `sid`.
#[derive(Default)]
pub(crate) struct Sessions {
    map: Mutex<HashMap<Arc<str>, mpsc::Sender<Cmd>>>,
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, mpsc::Sender<Cmd>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, sid: &str) -> Option<mpsc::Sender<Cmd>> {
        self.lock().get(sid).cloned()
    }
}

/// A session's place in the table; dropping it takes the session out and
/// uncounts it.
pub(super) struct Entry {
    shared: Arc<Shared>,
    sid: Arc<str>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.shared.socketio.lock().remove(&self.sid);
    }
}

/// Counts a session against `max_connections` while it lives.
struct Counted(Arc<Shared>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.metrics.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An Engine.IO request (`server_for` said so). `guard` counts the TCP
/// connection; `keep` lets polling requests outlive `handshake_timeout`.
pub(crate) async fn handle(
    req: Request<Incoming>,
    server: Server,
    query: Vec<(String, String)>,
    shared: Arc<Shared>,
    guard: Arc<dyn Send + Sync>,
    keep: Arc<KeepOpen>,
) -> Response<Body> {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let cfg = shared.stream_config();
    if let Some(o) = &origin
        && !cfg.allowed_origins.is_empty()
        && !cfg.allowed_origins.iter().any(|a| o.as_bytes() == a.as_bytes())
    {
        tracing::info!(origin = ?o, "socket.io origin refused");
        return refusal(StatusCode::FORBIDDEN, EioError::Forbidden, None);
    }
    let origin = origin.as_ref();
    if req.method() == Method::OPTIONS {
        return preflight(&req, origin);
    }
    let param = |k: &str| query.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    if param("EIO") != Some("4") {
        return refusal(StatusCode::BAD_REQUEST, EioError::UnsupportedProtocolVersion, origin);
    }
    let websocket = match param("transport") {
        Some("polling") => false,
        Some("websocket") => true,
        _ => return refusal(StatusCode::BAD_REQUEST, EioError::UnknownTransport, origin),
    };
    let sid = param("sid").map(str::to_owned);
    match (sid, websocket) {
        (None, false) if req.method() == Method::GET => {
            keep.extend(cfg.ping_timeout);
            handshake_polling(&req, server, &query, &shared, origin)
        }
        (None, false) => refusal(StatusCode::BAD_REQUEST, EioError::BadHandshakeMethod, origin),
        (None, true) => upgrade(req, server, &query, shared, guard, None),
        (Some(sid), ws) => {
            let Some(tx) = shared.socketio.get(&sid) else {
                return refusal(StatusCode::BAD_REQUEST, EioError::UnknownSid, origin);
            };
            if ws {
                return upgrade(req, server, &query, shared, guard, Some(tx));
            }
            keep.extend(cfg.ping_timeout);
            let answer = match *req.method() {
                Method::GET => poll(tx, &cfg).await,
                Method::POST => post(req, tx, cfg.max_frame_bytes).await,
                _ => Err(EioError::BadRequest),
            };
            match answer {
                Ok(body) => with_cors(polling_body(body), origin),
                Err(EioError::UnknownSid) => refusal(StatusCode::BAD_REQUEST, EioError::UnknownSid, origin),
                Err(e) => refusal(StatusCode::BAD_REQUEST, e, origin),
            }
        }
    }
}

/// A `GET` for a session: waits for its answer (the session answers within
/// `ping_interval`, with a ping if nothing else).
async fn poll(tx: mpsc::Sender<Cmd>, cfg: &crate::config::StreamConfig) -> Result<Bytes, EioError> {
    let (reply, answer) = oneshot::channel();
    tx.send(Cmd::Poll(reply)).await.map_err(|_| EioError::UnknownSid)?;
    match tokio::time::timeout(cfg.ping_timeout, answer).await {
        Ok(Ok(PollAnswer::Packets(body))) => Ok(body),
        Ok(Ok(PollAnswer::Error(e))) => Err(e),
        // The session ended while this waited: Engine.IO's close packet.
        Ok(Err(_)) | Err(_) => Ok(Bytes::from_static(b"1")),
    }
}

async fn post(req: Request<Incoming>, tx: mpsc::Sender<Cmd>, max: usize) -> Result<Bytes, EioError> {
    let body = match Limited::new(req.into_body(), max).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Err(EioError::BadRequest),
    };
    let (reply, answer) = oneshot::channel();
    tx.send(Cmd::Post(body, reply)).await.map_err(|_| EioError::UnknownSid)?;
    match answer.await {
        Ok(Ok(())) => Ok(Bytes::from_static(b"ok")),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(EioError::UnknownSid),
    }
}

/// The open packet: the session's ID, its upgrades and its timings.
fn open_packet(sid: &str, upgrades: &[&str], cfg: &crate::config::StreamConfig) -> String {
    let interval = cfg.ping_interval.as_millis() as u64;
    // Engine.IO's pingTimeout is the wait after a ping; runtap's ping_timeout the whole silence.
    let timeout = cfg.ping_timeout.saturating_sub(cfg.ping_interval).as_millis() as u64;
    let open = serde_json::json!({"sid": sid, "upgrades": upgrades, "pingInterval": interval,
        "pingTimeout": timeout, "maxPayload": cfg.max_frame_bytes});
    format!("0{open}")
}

fn handshake_polling(
    req: &Request<Incoming>,
    server: Server,
    query: &[(String, String)],
    shared: &Arc<Shared>,
    origin: Option<&HeaderValue>,
) -> Response<Body> {
    let Some(count) = count(shared) else {
        return with_cors(too_many(), origin);
    };
    let Some(sid) = new_id() else {
        return refusal(StatusCode::INTERNAL_SERVER_ERROR, EioError::BadRequest, origin);
    };
    let sid: Arc<str> = sid.into();
    let (tx, cmds) = mpsc::channel(COMMANDS);
    shared.socketio.lock().insert(sid.clone(), tx);
    let entry = Entry { shared: shared.clone(), sid: sid.clone() };
    let polling = Polling { cmds, waiting: None, probe: None, _entry: entry };
    let cfg = shared.stream_config();
    let open = open_packet(&sid, &["websocket"], &cfg);
    let conn = new_conn(shared, server, start(req, server, query), Transport::Polling(Box::new(polling)), count);
    shared.tracker.spawn(conn.run());
    with_cors(polling_body(Bytes::from(open)), origin)
}

/// A WebSocket: a new session (`tx` None), or the upgrade of a polling one.
fn upgrade(
    req: Request<Incoming>,
    server: Server,
    query: &[(String, String)],
    shared: Arc<Shared>,
    guard: Arc<dyn Send + Sync>,
    tx: Option<mpsc::Sender<Cmd>>,
) -> Response<Body> {
    let Some(accept) = crate::server::http::accept_key(&req) else {
        return refusal(StatusCode::BAD_REQUEST, EioError::BadRequest, None);
    };
    let start = start(&req, server, query);
    let task_shared = shared.clone();
    let upgrade = hyper::upgrade::on(req);
    shared.tracker.spawn(async move {
        let max = task_shared.stream_config().max_frame_bytes;
        let link = match upgrade.await {
            Ok(upgraded) => Link::from_upgraded(upgraded, max).await,
            Err(error) => {
                tracing::debug!(%error, "socket.io upgrade failed");
                None
            }
        };
        let Some(link) = link else { return };
        match tx {
            // The session counts itself; this TCP connection now belongs to it.
            Some(tx) => {
                let _ = tx.send(Cmd::Upgrade(Box::new(link))).await;
            }
            None => {
                let Some(sid) = new_id() else { return };
                let cfg = task_shared.stream_config();
                let mut conn = new_conn(&task_shared, server, start, Transport::WebSocket(Box::new(link)), guard);
                conn.outbox.set_framing(WS_FRAMING);
                conn.outbox.push_message(Bytes::from(open_packet(&sid, &[], &cfg)));
                conn.run().await;
            }
        }
    });
    crate::server::http::switching_protocols(&accept)
}

fn start(req: &Request<Incoming>, server: Server, query: &[(String, String)]) -> Box<Start> {
    let param = |k: &str| query.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let runs = match server {
        Server::Runs => RunsStart { run: param("runId"), since: param("since"), host: param("host") },
        Server::Workflow => RunsStart::default(),
    };
    Box::new(Start { server, token: request_token(req.headers(), query), runs, host: param("host") })
}

fn new_conn(
    shared: &Arc<Shared>,
    server: Server,
    start: Box<Start>,
    transport: Transport,
    count: Arc<dyn Send + Sync>,
) -> Box<Conn> {
    let cfg = shared.stream_config();
    Box::new(Conn {
        shared: shared.clone(),
        server,
        socket_id: new_id().unwrap_or_else(|| "socket".into()),
        transport,
        outbox: Outbox::new(POLL_FRAMING),
        ns: Ns::Waiting(start),
        limiter: RateLimiter::new(cfg.max_messages_per_second, cfg.rate_burst),
        _count: count,
    })
}

/// Counts a new polling session, unless the connection limit is reached.
fn count(shared: &Arc<Shared>) -> Option<Arc<dyn Send + Sync>> {
    let open = shared.metrics.connections.fetch_add(1, Ordering::Relaxed);
    let counted = Counted(shared.clone());
    if open >= shared.connection_limit() as i64 {
        crate::server::metrics::Metrics::add(&shared.metrics.connections_refused, 1);
        return None;
    }
    Some(Arc::new(counted))
}

/// 20 random characters (120 bits), URL-safe.
fn new_id() -> Option<String> {
    use base64::Engine as _;
    let mut bytes = [0u8; 15];
    getrandom::fill(&mut bytes).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn polling_body(body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=UTF-8"));
    r
}

fn refusal(status: StatusCode, e: EioError, origin: Option<&HeaderValue>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(e.body())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    with_cors(r, origin)
}

fn too_many() -> Response<Body> {
    let body = r#"{"code":"too-many-connections","message":"connection limit reached; try again later"}"#;
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// A browser page's request: the page's origin may read the answer (and
/// send its credentials). `allowed_origins` was checked before.
fn with_cors(mut r: Response<Body>, origin: Option<&HeaderValue>) -> Response<Body> {
    if let Some(origin) = origin {
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    r
}

/// `OPTIONS`: the CORS preflight of a polling `POST` (or a `GET` with an
/// `Authorization` header).
fn preflight(req: &Request<Incoming>, origin: Option<&HeaderValue>) -> Response<Body> {
    let mut r = Response::new(Full::default());
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
    let asked = req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        asked.unwrap_or_else(|| HeaderValue::from_static("authorization, content-type")),
    );
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    with_cors(r, origin)
}
