//! The TCP listener: HTTP endpoints and WebSocket upgrades on one port.
//!
//! | path | what |
//! |---|---|
//! | `GET /` | the dashboard's page (no token: it logs in itself), see `assets` |
//! | `GET /ui/NAME` | the page's scripts and styles (no token) |
//! | `GET /healthz` | liveness and a summary (no token) |
//! | `GET /metrics` | Prometheus text (no token) |
//! | `GET /me` | what the token may do: `{"runs":"*"\|"PREFIX*","cancel":bool,"hosts":bool}` (token) |
//! | `GET /runs` | list runs (token); with a WebSocket upgrade and `?runId=`: stream one run |
//! | `GET /runs/ID` | one run's status (token) |
//! | `GET /runs/ID/log` | the run's raw output so far, stdout and stderr in journal order (token), see `log` |
//! | `POST /runs/ID/cancel` | cancel (a token that may cancel; read-only: 403): 200, 404, or 409 with the final status |
//! | `GET /api/v2/workflows/runs/ID/stream` | WebSocket: stream one run |
//! | `GET /ws` | WebSocket: subscribe by message |
//! | `GET /hosts` | backends with hosts: hosts and their connection state (token) |
//! | `GET /agent` | backends with an agent endpoint: WebSocket for host daemons (agent token) |
//! | `/socket.io/`, `/runs/?EIO=4` | Socket.IO (Engine.IO polling and WebSocket), see `socketio` |
//!
//! Where the backend has hosts every run endpoint takes `host=HOST`;
//! without it the run ID must be unique across hosts. The gateway serves
//! all of this, the page included, through the same code.
//!
//! A TCP connection gets `handshake_timeout` in all for its HTTP requests
//! (keep-alive included) or its upgrade, so a slow or idle client cannot
//! hold a slot before it has upgraded; an Engine.IO polling request extends
//! that (`KeepOpen`), as a long poll lasts up to `ping_interval`. (Keep-alive stays on: with it off,
//! hyper answers `Connection: close`, which breaks the 101 response.)
//! Launching runs over HTTP is deliberately absent. With `stream.tls_cert`
//! every connection is TLS (HTTPS and WSS), its handshake within the same
//! deadline; plain HTTP gets a 400 that says so.
//!
//! - this file: the accept loop, the connection limit, a connection's deadline.
//! - `routes`: which request goes where, and the JSON endpoints.
//! - `upgrade`: WebSocket upgrades (`/runs?runId=`, `/ws`, `/agent`).
//! - `assets`: the dashboard's files, embedded; `log`: the raw output download.
//! - `tls`: telling TLS from plain HTTP on a TLS listener.

mod assets;
mod log;
mod routes;
mod tls;
mod upgrade;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::metrics::Metrics;
pub(crate) use upgrade::{accept_key, switching_protocols};

/// How long a refused connection is given to take its 503.
const REFUSE_LINGER: std::time::Duration = std::time::Duration::from_secs(1);
/// 503s being sent at once; connections refused beyond this are closed.
const MAX_REFUSING: usize = 64;
/// Largest request head read (hyper's buffer grows to it only as needed;
/// it starts at 8 KiB): room for a large JWT in `Authorization`.
const HTTP_READ_BUFFER: usize = 32 * 1024;

/// What most answers carry: the whole body at once.
type Body = Full<Bytes>;
/// What the connection sends: a whole body, or a download written as it
/// is read (`GET /runs/ID/log`).
type Reply = http_body_util::Either<Body, log::LogBody>;

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
    let _ = tokio::time::timeout(REFUSE_LINGER, answer_and_close(&mut stream, &resp)).await;
}

/// Writes a whole plain-HTTP answer, half-closes, then drains what the
/// client sent: closing with its request unread would reset the
/// connection and lose the answer. The caller bounds it in time.
async fn answer_and_close(stream: &mut TcpStream, resp: &str) -> std::io::Result<()> {
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await?;
    let mut sink = [0u8; 1024];
    while stream.read(&mut sink).await? > 0 {}
    Ok(())
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
    let Some(tls) = shared.tls() else {
        return serve_http(TokioIo::new(stream), peer, shared, guard, keep).await;
    };
    // The TLS handshake counts against the same deadline as the requests.
    let deadline = keep.deadline();
    let accepted = tokio::time::timeout_at(deadline, async {
        if !tls::starts_like_tls(&stream).await? {
            tls::refuse_plain(stream).await;
            return Ok(None);
        }
        tls.acceptor().accept(stream).await.map(Some)
    });
    match accepted.await {
        Ok(Ok(Some(stream))) => serve_http(TokioIo::new(stream), peer, shared, guard, keep).await,
        Ok(Ok(None)) => tracing::debug!(%peer, "plain HTTP on the TLS port: refused"),
        Ok(Err(error)) => {
            Metrics::add(&shared.metrics.tls_handshake_failures, 1);
            tracing::debug!(%peer, %error, "TLS handshake failed");
        }
        Err(_) => {
            Metrics::add(&shared.metrics.tls_handshake_failures, 1);
            tracing::debug!(%peer, "TLS handshake timeout");
        }
    }
}

/// HTTP/1.1 on an accepted connection, plain or TLS, until its deadline.
async fn serve_http<I>(io: I, peer: SocketAddr, shared: Arc<Shared>, guard: ConnGuard, keep: Arc<KeepOpen>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let guard = Arc::new(guard);
    let svc_shared = shared.clone();
    let svc_keep = keep.clone();
    let svc = service_fn(move |req| {
        let (shared, guard, keep) = (svc_shared.clone(), guard.clone(), svc_keep.clone());
        async move { Ok::<_, Infallible>(routes::route(req, peer, shared, guard, keep).await) }
    });
    let conn = http1::Builder::new().max_buf_size(HTTP_READ_BUFFER).serve_connection(io, svc).with_upgrades();
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

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response<Body> {
    json_response(status, &json!({"code": code, "message": message.into()}))
}
