//! Everything that accepts connections: transport only.
//!
//! The server knows runs only through the traits it owns — [`Backend`]
//! for HTTP and WebSocket, [`unix::Runs`] for the local socket — and
//! imports nothing of the daemon, the gateway or the upstream link above it.
//!
//! - `backend`: the [`Backend`] trait and the types it answers with.
//! - `http`: the TCP listener: HTTP endpoints and WebSocket upgrades.
//! - `ws`: one WebSocket session (its subscriptions, limits, errors, frames).
//! - `socketio`: Socket.IO v5 over Engine.IO v4 (polling and WebSocket) for dashboards.
//! - `unix`: the local socket (launch, subscribe, cancel, list, status).
//! - `conn`: an upgraded connection's bytes, plain TCP or TLS; `tls`: the listener's certificate.
//! - `outbox`: what waits to be written to one connection, either socket.
//! - `run_stream`: one run's events for one network subscriber; `streams`: a
//!   connection's set of them, polled as woken.
//! - `metrics`: counters behind `/metrics` and `/healthz`.

pub(crate) mod backend;
mod conn;
pub(crate) mod http;
pub(crate) mod metrics;
mod outbox;
mod run_stream;
pub(crate) mod socketio;
mod streams;
pub(crate) mod tls;
pub(crate) mod unix;
pub(crate) mod ws;

use std::sync::{Arc, RwLock};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{self, Tokens};
use crate::config::StreamConfig;
pub(crate) use backend::Backend;
use metrics::Metrics;

/// State every network connection shares.
pub(crate) struct Shared {
    pub backend: Arc<dyn Backend>,
    pub metrics: Arc<Metrics>,
    /// Limits and timeouts; swapped whole on reload, so a session sees one consistent set.
    config: RwLock<Arc<StreamConfig>>,
    /// Accepted tokens; swapped whole on reload.
    tokens: RwLock<Arc<Tokens>>,
    /// With an agent endpoint: the tokens hosts present on `/agent` (never valid for viewing).
    agent_tokens: RwLock<Option<Arc<Tokens>>>,
    /// Cancelled when connections must close (after runs have stopped at shutdown).
    pub stop: CancellationToken,
    /// Connection and session tasks, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Engine.IO polling sessions by `sid`, so a request can find its connection's task.
    pub socketio: socketio::Sessions,
    /// File descriptors the program keeps for itself (its runs' pipes and
    /// journals, the Unix socket's clients); TCP connections get what the
    /// fd limit leaves, so a flood of clients cannot take those.
    reserved_fds: std::sync::atomic::AtomicUsize,
    /// With `stream.tls_cert`: the listener speaks TLS only. Chosen at start.
    tls: Option<tls::Tls>,
}

impl Shared {
    pub(crate) fn new(
        backend: Arc<dyn Backend>,
        config: StreamConfig,
        tokens: Tokens,
        tls: Option<tls::Tls>,
        stop: CancellationToken,
    ) -> Self {
        Shared {
            backend,
            metrics: Arc::default(),
            config: RwLock::new(Arc::new(config)),
            tokens: RwLock::new(Arc::new(tokens)),
            agent_tokens: RwLock::new(None),
            stop,
            tracker: TaskTracker::new(),
            socketio: socketio::Sessions::default(),
            reserved_fds: std::sync::atomic::AtomicUsize::new(0),
            tls,
        }
    }

    /// Keeps `n` file descriptors out of the connections' reach.
    pub(crate) fn reserve_fds(&self, n: usize) {
        self.reserved_fds.store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Connections accepted at once: `max_connections`, within what the
    /// fd limit (read now: an operator may lower it on a running daemon)
    /// leaves after the reserve.
    pub(crate) fn connection_limit(&self) -> usize {
        let reserved = self.reserved_fds.load(std::sync::atomic::Ordering::Relaxed);
        let fd_cap = crate::sys::open_file_limit()
            .and_then(|limit| usize::try_from(limit).ok())
            .map_or(usize::MAX, |limit| limit.saturating_sub(reserved).max(1));
        self.stream_config().max_connections.min(fd_cap)
    }

    pub(crate) fn agent_tokens(&self) -> Option<Arc<Tokens>> {
        self.agent_tokens.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn set_agent_tokens(&self, tokens: Tokens) {
        *self.agent_tokens.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(tokens));
    }

    /// What a presented token may do here.
    pub(crate) fn role(&self, token: &str) -> Role {
        if let Some(scope) = self.tokens().check(token) {
            if let Some(sub) = scope.sub() {
                self.metrics.note_subject(sub);
            }
            return Role::Viewer(scope);
        }
        if self.agent_tokens().is_some_and(|a| a.check(token).is_some()) {
            return Role::Agent;
        }
        Role::None
    }

    pub(crate) fn stream_config(&self) -> Arc<StreamConfig> {
        self.config.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn tokens(&self) -> Arc<Tokens> {
        self.tokens.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn tls(&self) -> Option<&tls::Tls> {
        self.tls.as_ref()
    }

    /// Installs a new config, token set and certificate (SIGHUP); open
    /// sessions keep working, and keep the TLS session they have.
    pub(crate) fn reload(&self, config: StreamConfig, tokens: Tokens, cert: Option<tls::Certificate>) {
        match (&self.tls, cert) {
            (Some(tls), Some(cert)) => tls.swap(cert),
            (None, None) => {}
            // The listener's protocol is chosen at start: a client would
            // not know which one to speak mid-life.
            (Some(_), None) => tracing::warn!("turning TLS off takes effect at the next restart"),
            (None, Some(_)) => tracing::warn!("turning TLS on takes effect at the next restart"),
        }
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tokens);
    }
}

/// Who a token belongs to. Hosts and viewers hold different tokens: a host
/// token cannot watch runs, and a viewer token cannot register as a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Viewer(auth::Scope),
    Agent,
    None,
}
