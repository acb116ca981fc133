//! Which request goes where, and the JSON endpoints: health, metrics,
//! runs, cancel, hosts. Every answer that is not a WebSocket is built here
//! or in a sibling, with the JSON error shape `{"code","message"}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use serde_json::json;

use super::upgrade::{upgrade_agent, upgrade_to};
use super::{Body, ConnGuard, KeepOpen, Reply, error, json_response};
use crate::auth::{At, Scope, request_token};
use crate::run_id::RunId;
use crate::server::backend::{CancelOutcome, LookupError};
use crate::server::metrics::Metrics;
use crate::server::socketio;
use crate::server::ws::{Endpoint, WsError};
use crate::server::{Role, Shared};

/// Largest request body read (only `POST /runs/ID/cancel` has one).
const MAX_BODY: usize = 64 * 1024;

pub(super) async fn route(
    req: Request<Incoming>,
    peer: SocketAddr,
    shared: Arc<Shared>,
    guard: Arc<ConnGuard>,
    keep: Arc<KeepOpen>,
) -> Response<Reply> {
    let query: Vec<(String, String)> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect();
    let param = |k: &str| query.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let path = req.uri().path().to_owned();
    if let Some(server) = socketio::server_for(&path, &query) {
        tracing::debug!(%peer, method = %req.method(), path = %path, "socket.io request");
        return socketio::handle(req, server, query, shared, guard, keep).await.map(Either::Left);
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let upgrade = super::upgrade::is_websocket(&req);
    tracing::debug!(%peer, method = %req.method(), path = %path, upgrade, "http request");
    let answer = match (req.method(), segments.as_slice()) {
        (&Method::GET | &Method::HEAD, [""]) => asset(&req, "index.html", &path),
        (&Method::GET | &Method::HEAD, ["ui", name]) => asset(&req, name, &path),
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
                Ok(scope) => json_response(StatusCode::OK, &hosts(&scope, &shared)),
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
        (&Method::GET, ["me"]) => match authorize(&req, &query, &shared) {
            Ok(scope) => json_response(StatusCode::OK, &me(&scope, &shared)),
            Err(r) => r,
        },
        (&Method::GET, ["runs"]) => match authorize(&req, &query, &shared) {
            Ok(scope) => json_response(StatusCode::OK, &serde_json::Value::Array(shared.backend.list(&scope))),
            Err(r) => r,
        },
        (&Method::GET, ["runs", id]) => {
            let host = param("host");
            match authorized_run(&req, &query, &shared, id).map(|(_, run)| shared.backend.get(host, &run)) {
                Ok(Ok(info)) => json_response(StatusCode::OK, &info),
                Ok(Err(e)) => lookup_error(e),
                Err(r) => r,
            }
        }
        (&Method::GET, ["runs", id, "log"]) => match authorized_run(&req, &query, &shared, id) {
            Ok((_, run)) => return super::log::download(&shared, param("host"), run, keep).await,
            Err(r) => r,
        },
        (&Method::POST, ["runs", id, "cancel"]) => {
            let id = id.to_string();
            cancel(req, &query, &shared, &id).await
        }
        (_, ["" | "healthz" | "metrics" | "ws" | "me" | "runs" | "hosts" | "agent"])
        | (_, ["ui" | "runs", _])
        | (_, ["runs", _, "cancel" | "log"])
        | (_, ["api", "v2", "workflows", "runs", _, "stream"]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", format!("{} not allowed here", req.method()))
        }
        _ => not_found(&path),
    };
    answer.map(Either::Left)
}

fn not_found(path: &str) -> Response<Body> {
    error(StatusCode::NOT_FOUND, "not-found", format!("no endpoint {path}"))
}

/// `GET /` and `/ui/NAME`: an embedded file of the page; unknown names are
/// 404 like any unknown path.
fn asset(req: &Request<Incoming>, name: &str, path: &str) -> Response<Body> {
    super::assets::serve(name, req.headers()).unwrap_or_else(|| not_found(path))
}

/// `GET /me`: what the presented token may do, so the page can check a
/// token and show the cancel button only to tokens that may cancel.
fn me(scope: &Scope, shared: &Shared) -> serde_json::Value {
    // `runs`: "*" for every run, else the patterns it may read (a string when
    // one); `sub` only for a JWT, so a static token's answer is as it was.
    let mut me = json!({"runs": scope.runs_json(), "cancel": scope.cancels(), "hosts": shared.backend.has_hosts()});
    if let Some(sub) = scope.sub() {
        me["sub"] = sub.into();
    }
    me
}

/// `GET /hosts`: the hosts on which the token may read something.
fn hosts(scope: &Scope, shared: &Shared) -> serde_json::Value {
    let mut all = shared.backend.hosts().unwrap_or_default();
    if let Some(list) = all.as_array_mut() {
        list.retain(|h| h["host"].as_str().is_some_and(|id| scope.sees_host(id)));
    }
    all
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
        "quarantinedRuns": stats.quarantined,
        "version": env!("CARGO_PKG_VERSION"),
    });
    json_response(StatusCode::OK, &body)
}

pub(super) fn lookup_error(e: LookupError) -> Response<Body> {
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

/// Authorizes the viewer, parses the run ID and checks that the token may
/// read that run; the scope comes back for further checks (cancel).
#[allow(clippy::result_large_err)]
fn authorized_run(
    req: &Request<Incoming>,
    query: &[(String, String)],
    shared: &Shared,
    raw: &str,
) -> Result<(Scope, RunId), Response<Body>> {
    let scope = authorize(req, query, shared)?;
    let run = RunId::parse(raw)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "bad-request", format!("invalid run ID {raw:?}: {e}")))?;
    if !scope.allows(at(shared, query), &run) {
        return Err(error(StatusCode::FORBIDDEN, "forbidden", format!("this token may not see run {run}")));
    }
    Ok((scope, run))
}

/// Where the request's run is, for the token's host patterns: its `host=`
/// at a gateway (without one, only what every host allows).
fn at<'a>(shared: &Shared, query: &'a [(String, String)]) -> At<'a> {
    let host = query.iter().find(|(k, _)| k == "host").map(|(_, v)| v.as_str());
    At::request(shared.backend.has_hosts(), host)
}

async fn cancel(req: Request<Incoming>, query: &[(String, String)], shared: &Shared, raw: &str) -> Response<Body> {
    let mut reason = query.iter().find(|(k, _)| k == "reason").map(|(_, v)| v.clone());
    let (run, sub) = match authorized_run(&req, query, shared, raw) {
        Ok((scope, run)) if scope.may_cancel(at(shared, query), &run) => (run, scope.sub().map(str::to_owned)),
        Ok((_, run)) => {
            let msg = format!("this token may not cancel run {run} (read only); it was left alone");
            return error(StatusCode::FORBIDDEN, "forbidden", msg);
        }
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
    tracing::info!(run_id = %run, host, %reason, sub, "cancel requested over HTTP");
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
