//! The TCP listener: HTTP endpoints and WebSocket upgrades on one port.
//!
//! | path | what |
//! |---|---|
//! | `GET /healthz` | liveness and a summary (no token) |
//! | `GET /metrics` | Prometheus text (no token) |
//! | `GET /runs` | list runs (token); with a WebSocket upgrade and `?runId=`: stream one run |
//! | `GET /runs/ID` | one run's status (token) |
//! | `POST /runs/ID/cancel` | cancel (token): 200, 404, or 409 with the final status |
//! | `GET /api/v2/workflows/runs/ID/stream` | WebSocket: stream one run |
//! | `GET /ws` | WebSocket: subscribe by message |
//! | `GET /hosts` | backends with hosts: hosts and their connection state (token) |
//! | `GET /agent` | backends with an agent endpoint: WebSocket for host daemons (agent token) |
//! | `/socket.io/`, `/runs/?EIO=4` | Socket.IO (Engine.IO polling and WebSocket), see `socketio` |
//!
//! Where the backend has hosts every run endpoint takes `host=HOST`;
//! without it the run ID must be unique across hosts.
//!
//! A TCP connection gets `handshake_timeout` in all for its HTTP requests
//! (keep-alive included) or its upgrade, so a slow or idle client cannot
//! hold a slot before it has upgraded; an Engine.IO polling request extends
//! that (`KeepOpen`), as a long poll lasts up to `ping_interval`. (Keep-alive stays on: with it off,
//! hyper answers `Connection: close`, which breaks the 101 response.)
//! Launching runs over HTTP is deliberately absent.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::backend::{CancelOutcome, LookupError};
use super::metrics::Metrics;
use super::socketio;
use super::ws::{self, Endpoint, WsError};
use super::{Role, Shared};
use crate::auth::{Scope, request_token};
use crate::run_id::RunId;

/// Largest request body read (only `POST /runs/ID/cancel` has one).
const MAX_BODY: usize = 64 * 1024;
/// How long a refused connection is given to take its 503.
const REFUSE_LINGER: std::time::Duration = std::time::Duration::from_secs(1);
/// 503s being sent at once; connections refused beyond this are closed.
const MAX_REFUSING: usize = 64;
/// Largest request head read (hyper's buffer grows to it only as needed;
/// it starts at 8 KiB): room for a large JWT in `Authorization`.
const HTTP_READ_BUFFER: usize = 32 * 1024;

type Body = Full<Bytes>;

/// Counts a connection for as long as any part of it (HTTP or WebSocket) lives.
struct ConnGuard(Arc<Shared>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.metrics.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts connections until `stop_accepting`.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, stop_accepting: CancellationToken) {
    let refusing = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop_accepting.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    tracing::warn!(%error, "tcp accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let max = shared.connection_limit();
        let open = shared.metrics.connections.fetch_add(1, Ordering::Relaxed);
        let guard = ConnGuard(shared.clone());
        if open >= max as i64 {
            Metrics::add(&shared.metrics.connections_refused, 1);
            tracing::debug!(%peer, max, "connection refused: connection limit reached");
            // Each 503 holds its socket for up to REFUSE_LINGER: past a few
            // at once, a flood is just closed, so refusals cannot eat the fds.
            if refusing.load(Ordering::Relaxed) < MAX_REFUSING {
                shared.tracker.spawn(refuse(stream, guard, Refusing::new(&refusing)));
            }
            continue;
        }
        shared.tracker.spawn(connection(stream, peer, shared.clone(), guard));
    }
}

/// Counts a 503 being sent, for as long as it is.
struct Refusing(Arc<AtomicUsize>);

impl Refusing {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Refusing(count.clone())
    }
}

impl Drop for Refusing {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Over the connection limit: a 503 before any upgrade, then close.
async fn refuse(mut stream: TcpStream, _guard: ConnGuard, _refusing: Refusing) {
    let body = r#"{"code":"too-many-connections","message":"connection limit reached; try again later"}"#;
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nRetry-After: 1\r\n\r\n{body}",
        body.len()
    );
    // Write, half-close, then drain what the client sent: closing with its
    // request unread would reset the connection and lose the 503.
    let _ = tokio::time::timeout(REFUSE_LINGER, async {
        stream.write_all(resp.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// How long an HTTP connection may stay open: `handshake_timeout` from its
/// start, or longer once an Engine.IO polling request asks (a long poll
/// lasts up to `ping_interval`, and a polling client keeps its connection).
pub(crate) struct KeepOpen {
    start: tokio::time::Instant,
    /// Milliseconds after `start`.
    until: std::sync::atomic::AtomicU64,
}

impl KeepOpen {
    fn new(first: std::time::Duration) -> Self {
        KeepOpen { start: tokio::time::Instant::now(), until: (first.as_millis() as u64).into() }
    }

    /// Keeps the connection open for at least `d` from now.
    pub(crate) fn extend(&self, d: std::time::Duration) {
        let until = (self.start.elapsed() + d).as_millis() as u64;
        self.until.fetch_max(until, Ordering::Relaxed);
    }

    fn deadline(&self) -> tokio::time::Instant {
        self.start + std::time::Duration::from_millis(self.until.load(Ordering::Relaxed))
    }
}

async fn connection(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>, guard: ConnGuard) {
    let _ = stream.set_nodelay(true);
    let keep = Arc::new(KeepOpen::new(shared.stream_config().handshake_timeout));
    let guard = Arc::new(guard);
    let svc_shared = shared.clone();
    let svc_keep = keep.clone();
    let svc = service_fn(move |req| {
        let (shared, guard, keep) = (svc_shared.clone(), guard.clone(), svc_keep.clone());
        async move { Ok::<_, Infallible>(route(req, peer, shared, guard, keep).await) }
    });
    let conn = http1::Builder::new()
        .max_buf_size(HTTP_READ_BUFFER)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::pin!(conn);
    loop {
        let deadline = keep.deadline();
        match tokio::time::timeout_at(deadline, conn.as_mut()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(%peer, %error, "http connection error"),
            Err(_) if keep.deadline() > deadline => continue,
            Err(_) => tracing::debug!(%peer, "handshake timeout"),
        }
        return;
    }
}

async fn route(
    req: Request<Incoming>,
    peer: SocketAddr,
    shared: Arc<Shared>,
    guard: Arc<ConnGuard>,
    keep: Arc<KeepOpen>,
) -> Response<Body> {
    let query: Vec<(String, String)> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect();
    let param = |k: &str| query.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let path = req.uri().path().to_owned();
    if let Some(server) = socketio::server_for(&path, &query) {
        tracing::debug!(%peer, method = %req.method(), path = %path, "socket.io request");
        return socketio::handle(req, server, query, shared, guard, keep).await;
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let upgrade = is_websocket(&req);
    tracing::debug!(%peer, method = %req.method(), path = %path, upgrade, "http request");
    match (req.method(), segments.as_slice()) {
        (&Method::GET, ["healthz"]) => healthz(&shared),
        (&Method::GET, ["metrics"]) => {
            let text = shared.metrics.render(shared.backend.as_ref());
            let mut r = Response::new(Full::new(Bytes::from(text)));
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
            r
        }
        (&Method::GET, ["ws"]) => upgrade_to(req, Endpoint::Multi, &query, shared, guard),
        (&Method::GET, ["agent"]) if shared.backend.agent().is_some() => upgrade_agent(req, &query, shared, guard),
        (&Method::GET, ["hosts"]) => match shared.backend.has_hosts() {
            false => error(StatusCode::NOT_FOUND, "not-found", "/hosts is served by the gateway"),
            true => match authorize(&req, &query, &shared) {
                Ok(_) => json_response(StatusCode::OK, &shared.backend.hosts().unwrap_or_default()),
                Err(r) => r,
            },
        },
        (&Method::GET, ["runs"]) if upgrade => {
            let host = param("host").map(str::to_owned);
            let run = parse_since(param("since")).and_then(|since| Ok((WsError::for_run_id(param("runId"))?, since)));
            let endpoint = match run {
                Ok((run, since)) => Endpoint::Single { run: Ok(run), since, host },
                Err(e) => Endpoint::Single { run: Err(e), since: 0, host },
            };
            upgrade_to(req, endpoint, &query, shared, guard)
        }
        (&Method::GET, ["api", "v2", "workflows", "runs", id, "stream"]) => {
            let host = param("host").map(str::to_owned);
            let run = parse_since(param("since")).and_then(|since| Ok((WsError::for_run_id(Some(id))?, since)));
            let endpoint = match run {
                Ok((run, since)) => Endpoint::Single { run: Ok(run), since, host },
                Err(e) => Endpoint::Single { run: Err(e), since: 0, host },
            };
            upgrade_to(req, endpoint, &query, shared, guard)
        }
        (&Method::GET, ["runs"]) => match authorize(&req, &query, &shared) {
            Ok(scope) => json_response(StatusCode::OK, &serde_json::Value::Array(shared.backend.list(&scope))),
            Err(r) => r,
        },
        (&Method::GET, ["runs", id]) => {
            let host = param("host");
            match authorized_run(&req, &query, &shared, id).map(|run| shared.backend.get(host, &run)) {
                Ok(Ok(info)) => json_response(StatusCode::OK, &info),
                Ok(Err(e)) => lookup_error(e),
                Err(r) => r,
            }
        }
        (&Method::POST, ["runs", id, "cancel"]) => {
            let id = id.to_string();
            cancel(req, &query, &shared, &id).await
        }
        (_, ["healthz" | "metrics" | "ws" | "runs" | "hosts" | "agent"])
        | (_, ["runs", _])
        | (_, ["runs", _, "cancel"])
        | (_, ["api", "v2", "workflows", "runs", _, "stream"]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", format!("{} not allowed here", req.method()))
        }
        _ => error(StatusCode::NOT_FOUND, "not-found", format!("no endpoint {path}")),
    }
}

fn parse_since(raw: Option<&str>) -> Result<u64, WsError> {
    match raw {
        None => Ok(0),
        Some(s) => {
            s.parse().map_err(|_| WsError::bad_request(format!("since must be a non-negative integer, got {s:?}")))
        }
    }
}

fn healthz(shared: &Shared) -> Response<Body> {
    let stats = shared.backend.stats();
    let ok = stats.degraded == 0;
    let body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "runs": stats.runs,
        "activeRuns": stats.active,
        "connections": shared.metrics.connections.load(Ordering::Relaxed),
        "websockets": shared.metrics.websockets.load(Ordering::Relaxed),
        "subscriptions": stats.subscriptions,
        "journal": if ok { "ok" } else { "degraded" },
        "degradedRuns": stats.degraded,
        "version": env!("CARGO_PKG_VERSION"),
    });
    json_response(StatusCode::OK, &body)
}

fn lookup_error(e: LookupError) -> Response<Body> {
    match e {
        LookupError::NotFound(_) | LookupError::UnknownHost(_) => {
            error(StatusCode::NOT_FOUND, "not-found", e.to_string())
        }
        LookupError::Ambiguous(..) => error(StatusCode::CONFLICT, "ambiguous-run-id", e.to_string()),
    }
}

/// The viewer token's scope, or the answer to send: 401 for no or a wrong
/// token, 403 for a host (agent) token.
#[allow(clippy::result_large_err)]
fn authorize(req: &Request<Incoming>, query: &[(String, String)], shared: &Shared) -> Result<Scope, Response<Body>> {
    let role = request_token(req.headers(), query).map_or(Role::None, |t| shared.role(&t));
    match role {
        Role::Viewer(scope) => Ok(scope),
        Role::Agent => Err(error(StatusCode::FORBIDDEN, "forbidden", "host (agent) tokens cannot read runs")),
        Role::None => {
            Metrics::add(&shared.metrics.auth_failures, 1);
            Err(error(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong token"))
        }
    }
}

/// Authorizes the viewer, parses the run ID and checks the token's scope.
#[allow(clippy::result_large_err)]
fn authorized_run(
    req: &Request<Incoming>,
    query: &[(String, String)],
    shared: &Shared,
    raw: &str,
) -> Result<RunId, Response<Body>> {
    let scope = authorize(req, query, shared)?;
    let run = RunId::parse(raw)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "bad-request", format!("invalid run ID {raw:?}: {e}")))?;
    if !scope.allows(&run) {
        return Err(error(StatusCode::FORBIDDEN, "forbidden", format!("this token may not see run {run}")));
    }
    Ok(run)
}

async fn cancel(req: Request<Incoming>, query: &[(String, String)], shared: &Shared, raw: &str) -> Response<Body> {
    let mut reason = query.iter().find(|(k, _)| k == "reason").map(|(_, v)| v.clone());
    let run = match authorized_run(&req, query, shared, raw) {
        Ok(run) => run,
        Err(r) => return r,
    };
    // An optional JSON body `{"reason": "..."}`.
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "message-too-large", "request body too large"),
    };
    if !body.is_empty() {
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(v) => reason = v.get("reason").and_then(|r| r.as_str()).map(str::to_owned).or(reason),
            Err(e) => return error(StatusCode::BAD_REQUEST, "bad-request", format!("malformed JSON body: {e}")),
        }
    }
    let reason = reason.unwrap_or_else(|| "cancelled over HTTP".into());
    let host = query.iter().find(|(k, _)| k == "host").map(|(_, v)| v.as_str());
    tracing::info!(run_id = %run, host, %reason, "cancel requested over HTTP");
    match shared.backend.cancel(host, &run, reason).await {
        CancelOutcome::Cancelling(body) => json_response(StatusCode::OK, &body),
        CancelOutcome::NotFound(m) => error(StatusCode::NOT_FOUND, "not-found", m),
        CancelOutcome::Finished(mut body) => {
            let status = body["status"].as_str().unwrap_or("finished").to_owned();
            body["code"] = "finished".into();
            body["message"] = format!("run {run} already {status}").into();
            json_response(StatusCode::CONFLICT, &body)
        }
        CancelOutcome::Unavailable(m) => error(StatusCode::SERVICE_UNAVAILABLE, "host-offline", m),
        CancelOutcome::Timeout(m) => error(StatusCode::GATEWAY_TIMEOUT, "host-timeout", m),
    }
}

fn is_websocket(req: &Request<Incoming>) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    has(header::CONNECTION, "upgrade") && has(header::UPGRADE, "websocket")
}

/// Answers 101 and hands the upgraded connection to a WebSocket session.
fn upgrade_to(
    req: Request<Incoming>,
    endpoint: Endpoint,
    query: &[(String, String)],
    shared: Arc<Shared>,
    guard: Arc<ConnGuard>,
) -> Response<Body> {
    if !is_websocket(&req) {
        return error(StatusCode::UPGRADE_REQUIRED, "upgrade-required", "this endpoint is a WebSocket");
    }
    if req.headers().get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v != "13") {
        let mut r = error(StatusCode::UPGRADE_REQUIRED, "bad-request", "only WebSocket version 13 is supported");
        r.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return r;
    }
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).filter(|k| valid_key(k)) else {
        return error(StatusCode::BAD_REQUEST, "bad-request", "missing or malformed Sec-WebSocket-Key");
    };
    let allowed = &shared.stream_config().allowed_origins;
    if !allowed.is_empty()
        && let Some(origin) = req.headers().get(header::ORIGIN)
        && !allowed.iter().any(|a| origin.as_bytes() == a.as_bytes())
    {
        tracing::info!(origin = ?origin, "websocket origin refused");
        return error(StatusCode::FORBIDDEN, "forbidden-origin", "origin not allowed");
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let token = request_token(req.headers(), query);
    let task_shared = shared.clone();
    // Taken out of the request here so that the session task does not
    // carry the whole request (hundreds of bytes per idle subscriber).
    let upgrade = hyper::upgrade::on(req);
    shared.tracker.spawn(async move {
        match upgrade.await {
            Ok(upgraded) => ws::serve(upgraded, endpoint, token, task_shared).await,
            Err(error) => tracing::debug!(%error, "websocket upgrade failed"),
        }
        drop(guard);
    });
    switching_protocols(&accept)
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response<Body> {
    json_response(status, &json!({"code": code, "message": message.into()}))
}

/// `/agent`: a host daemon's link, handed to the backend's agent
/// endpoint. Only agent tokens get in.
fn upgrade_agent(
    req: Request<Incoming>,
    query: &[(String, String)],
    shared: Arc<Shared>,
    guard: Arc<ConnGuard>,
) -> Response<Body> {
    let role = request_token(req.headers(), query).map_or(Role::None, |t| shared.role(&t));
    let refusal = match role {
        Role::Agent => None,
        Role::Viewer(_) => Some(WsError::new("forbidden", 4403, "viewer tokens cannot register as a host")),
        Role::None => {
            Metrics::add(&shared.metrics.auth_failures, 1);
            Some(WsError::unauthorized())
        }
    };
    let Some(accept) = accept_key(&req) else {
        return error(StatusCode::BAD_REQUEST, "bad-request", "not a WebSocket upgrade");
    };
    let task_shared = shared.clone();
    shared.tracker.spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => match (refusal, task_shared.backend.agent()) {
                (Some(err), _) => ws::reject(upgraded, err).await,
                (None, Some(agent)) => agent.serve(upgraded, task_shared.stop.clone()).await,
                (None, None) => {}
            },
            Err(error) => tracing::debug!(%error, "agent upgrade failed"),
        }
        drop(guard);
    });
    switching_protocols(&accept)
}

/// The `Sec-WebSocket-Accept` value for a valid version-13 upgrade request.
pub(crate) fn accept_key(req: &Request<Incoming>) -> Option<String> {
    if !is_websocket(req) || req.headers().get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v != "13") {
        return None;
    }
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).filter(|k| valid_key(k))?;
    Some(tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// RFC 6455 §4.2.1: the key is 16 bytes, base64-encoded.
fn valid_key(key: &HeaderValue) -> bool {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(key.as_bytes()).is_ok_and(|k| k.len() == 16)
}

pub(crate) fn switching_protocols(accept: &str) -> Response<Body> {
    let mut r = Response::new(Full::default());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}
