//! WebSocket upgrades on the HTTP listener: a viewer's session (`ws`) or
//! a host's link (`/agent`, handed to the backend). The 101 is answered
//! here; the upgraded connection keeps its `ConnGuard` until it closes.

use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;

use super::{Body, ConnGuard, error};
use crate::auth::request_token;
use crate::server::metrics::Metrics;
use crate::server::ws::{self, Endpoint, WsError};
use crate::server::{Role, Shared};

pub(super) fn is_websocket(req: &Request<Incoming>) -> bool {
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
pub(super) fn upgrade_to(
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

/// `/agent`: a host daemon's link, handed to the backend's agent
/// endpoint. Only agent tokens get in.
pub(super) fn upgrade_agent(
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
