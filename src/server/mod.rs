//! Everything that accepts connections.
//!
//! - `unix`: the local socket (launch, subscribe, cancel, list, status).
//! - `http`: the TCP listener: HTTP endpoints and WebSocket upgrades.
//! - `ws`: one WebSocket session; `subscription`: its feeds; `wire`: its frames on the socket.
//! - `auth`: tokens and their scopes.
//! - `metrics`: counters behind `/metrics` and `/healthz`.

pub mod auth;
pub mod backend;
pub mod http;
pub mod metrics;
mod subscription;
pub mod unix;
pub mod wire;
pub mod ws;

use std::sync::{Arc, RwLock};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::StreamConfig;
use crate::gateway::Gateway;
use crate::run::RunTable;
use auth::Tokens;
use backend::Backend;
use metrics::Metrics;

/// State every network connection shares.
pub struct Shared {
    pub backend: Backend,
    pub metrics: Arc<Metrics>,
    /// Limits and timeouts; swapped whole on reload, so a session sees one consistent set.
    config: RwLock<Arc<StreamConfig>>,
    /// Accepted tokens; swapped whole on reload.
    tokens: RwLock<Arc<Tokens>>,
    /// Gateway only: the tokens hosts present on `/agent` (never valid for viewing).
    agent_tokens: RwLock<Option<Arc<Tokens>>>,
    /// Cancelled when connections must close (after runs have stopped at shutdown).
    pub stop: CancellationToken,
    /// Connection and session tasks, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Daemon with `[upstream]`: the link's state, shown in `/metrics`.
    pub upstream: Option<Arc<crate::upstream::UpstreamStatus>>,
}

impl Shared {
    pub fn new(table: RunTable, config: StreamConfig, tokens: Tokens, stop: CancellationToken) -> Self {
        Shared::new_inner(Backend::Daemon(table), config, tokens, stop)
    }

    pub fn new_gateway(
        gateway: Gateway,
        config: StreamConfig,
        viewers: Tokens,
        agents: Tokens,
        stop: CancellationToken,
    ) -> Self {
        let mut s = Shared::new_inner(Backend::Gateway(gateway), config, viewers, stop);
        s.agent_tokens = RwLock::new(Some(Arc::new(agents)));
        s
    }

    fn new_inner(backend: Backend, config: StreamConfig, tokens: Tokens, stop: CancellationToken) -> Self {
        Shared {
            backend,
            metrics: Arc::default(),
            config: RwLock::new(Arc::new(config)),
            tokens: RwLock::new(Arc::new(tokens)),
            agent_tokens: RwLock::new(None),
            stop,
            tracker: TaskTracker::new(),
            upstream: None,
        }
    }

    pub fn agent_tokens(&self) -> Option<Arc<Tokens>> {
        self.agent_tokens.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_agent_tokens(&self, tokens: Tokens) {
        *self.agent_tokens.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(tokens));
    }

    /// What a presented token may do here.
    pub fn role(&self, token: &str) -> Role {
        if let Some(scope) = self.tokens().check(token) {
            return Role::Viewer(scope);
        }
        if self.agent_tokens().is_some_and(|a| a.check(token).is_some()) {
            return Role::Agent;
        }
        Role::None
    }

    pub fn stream_config(&self) -> Arc<StreamConfig> {
        self.config.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn tokens(&self) -> Arc<Tokens> {
        self.tokens.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Installs a new config and token set (SIGHUP); open sessions keep working.
    pub fn reload(&self, config: StreamConfig, tokens: Tokens) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tokens);
    }
}

/// Who a token belongs to. Hosts and viewers hold different tokens: a host
/// token cannot watch runs, and a viewer token cannot register as a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    Viewer(auth::Scope),
    Agent,
    None,
}
