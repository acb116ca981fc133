//! Everything that accepts connections.
//!
//! - `unix`: the local socket (launch, subscribe, cancel, list, status).
//! - `http`: the TCP listener: HTTP endpoints and WebSocket upgrades.
//! - `ws`: one WebSocket session.
//! - `auth`: tokens and their scopes.
//! - `metrics`: counters behind `/metrics` and `/healthz`.

pub mod auth;
pub mod http;
pub mod metrics;
pub mod unix;
pub mod ws;

use std::sync::{Arc, RwLock};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::StreamConfig;
use crate::run::RunTable;
use auth::Tokens;
use metrics::Metrics;

/// State every network connection shares.
pub struct Shared {
    pub table: RunTable,
    pub metrics: Arc<Metrics>,
    /// Limits and timeouts; swapped whole on reload, so a session sees one consistent set.
    config: RwLock<Arc<StreamConfig>>,
    /// Accepted tokens; swapped whole on reload.
    tokens: RwLock<Arc<Tokens>>,
    /// Cancelled when connections must close (after runs have stopped at shutdown).
    pub stop: CancellationToken,
    /// Connection and session tasks, so shutdown can wait for them.
    pub tracker: TaskTracker,
}

impl Shared {
    pub fn new(table: RunTable, config: StreamConfig, tokens: Tokens, stop: CancellationToken) -> Self {
        Shared {
            table,
            metrics: Arc::default(),
            config: RwLock::new(Arc::new(config)),
            tokens: RwLock::new(Arc::new(tokens)),
            stop,
            tracker: TaskTracker::new(),
        }
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
