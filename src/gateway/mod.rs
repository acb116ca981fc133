//! The central gateway: stores every host's events in its own journals and
//! serves them with the daemon's API (see `server`), plus `/hosts`.
//!
//! Layout under the gateway's state dir:
//!
//! ```text
//! token, agent-token          viewer and host tokens (generated if not configured)
//! hosts/<host>/epoch          the epoch of the host's state dir we hold
//! hosts/<host>/runs/<run>/    the daemon's journal format, events carrying "host"
//! archive/<host>-<epoch>/     a host's old data after its state dir was wiped
//! ```
//!
//! One agent session per host appends (`agent`); viewers read through the
//! host's hub and journal, exactly as on a daemon.
//!
//! - `hosts`: one host's copy and its link; `lookup`: finding a run's host.
//! - `cancel`: cancels routed down to hosts; `metrics`: counters.
//! - `backend`: the gateway as the server's `Backend`.

mod agent;
mod backend;
mod cancel;
mod hosts;
mod lookup;
mod metrics;
mod nats;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthError, Scope, Token, Tokens, ensure_token_file};
use crate::config::{Config, GatewayConfig, GatewayEngine};
use crate::journal::JournalError;
use crate::run_id::RunId;
use crate::server::{Shared, http};
use crate::sys::create_private_dir;
use hosts::Host;
use metrics::GatewayMetrics;

/// Name of the generated host (agent) token file.
const AGENT_TOKEN_FILE: &str = "agent-token";
/// New-run announcements buffered for viewers waiting on a run ID.
const ARRIVALS_BACKLOG: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The OS reason is in the message, not a `source`: printing the
    /// chain would repeat it.
    #[error("create state dir {}: {error}", .path.display())]
    StateDir { path: PathBuf, error: std::io::Error },
    #[error("journal: {0}")]
    Journal(JournalError),
    #[error("tokens: {0}")]
    Tokens(AuthError),
    #[error("{0}")]
    Tls(crate::server::tls::TlsError),
    #[error("{0}")]
    /// The NATS engine's error, as text: its type is the engine's own.
    Nats(String),
}

/// The engine behind the listener (`[gateway] engine`).
enum Engine {
    Local(Gateway),
    Nats(nats::NatsGateway),
}

impl Engine {
    async fn open(state_dir: &Path, config: &GatewayConfig, stop: CancellationToken) -> Result<Engine, GatewayError> {
        Ok(match config.engine {
            GatewayEngine::Local => Engine::Local(Gateway::open(state_dir, config.clone())?),
            GatewayEngine::Nats => Engine::Nats(
                nats::NatsGateway::open(config.clone(), stop).await.map_err(|e| GatewayError::Nats(e.to_string()))?,
            ),
        })
    }

    fn backend(&self) -> Arc<dyn crate::server::Backend> {
        match self {
            Engine::Local(g) => Arc::new(g.clone()),
            Engine::Nats(g) => Arc::new(g.clone()),
        }
    }

    fn set_config(&self, config: GatewayConfig) {
        match self {
            Engine::Local(g) => *lock(&g.inner.config) = config,
            Engine::Nats(g) => g.set_config(config),
        }
    }

    fn hosts(&self) -> usize {
        match self {
            Engine::Local(g) => g.all_hosts().len(),
            Engine::Nats(g) => g.hosts_known(),
        }
    }
}
/// The gateway's default state dir, next to (not inside) the daemon's.
pub fn default_state_dir(daemon_default: &Path) -> PathBuf {
    let name = daemon_default.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    daemon_default.with_file_name(format!("{name}-gateway"))
}
#[derive(Clone)]
pub(crate) struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    state_dir: PathBuf,
    hosts: Mutex<HashMap<String, Arc<Host>>>,
    /// `(host, Some(run))` for each run a host starts forwarding, and
    /// `(host, None)` when a host is seen for the first time.
    arrivals: broadcast::Sender<(String, Option<RunId>)>,
    config: Mutex<GatewayConfig>,
    metrics: GatewayMetrics,
    /// Numbers agent sessions, so a session only detaches itself.
    next_link_id: AtomicU64,
}
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Gateway {
    /// Opens the state dir and every host found in it.
    pub(crate) fn open(state_dir: &Path, config: GatewayConfig) -> Result<Gateway, GatewayError> {
        let hosts_dir = state_dir.join("hosts");
        std::fs::create_dir_all(&hosts_dir)
            .map_err(|error| GatewayError::StateDir { path: hosts_dir.clone(), error })?;
        let mut hosts = HashMap::new();
        let entries =
            std::fs::read_dir(&hosts_dir).map_err(|error| GatewayError::StateDir { path: hosts_dir.clone(), error })?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if RunId::parse(&name).is_err() {
                continue;
            }
            let host = Host::open(state_dir, &name)?;
            hosts.insert(name, Arc::new(host));
        }
        let (arrivals, _) = broadcast::channel(ARRIVALS_BACKLOG);
        Ok(Gateway {
            inner: Arc::new(Inner {
                state_dir: state_dir.to_owned(),
                hosts: Mutex::new(hosts),
                arrivals,
                config: Mutex::new(config),
                metrics: GatewayMetrics::default(),
                next_link_id: AtomicU64::new(1),
            }),
        })
    }

    pub(crate) fn config(&self) -> GatewayConfig {
        lock(&self.inner.config).clone()
    }

    pub(crate) fn metrics(&self) -> &GatewayMetrics {
        &self.inner.metrics
    }

    pub(crate) fn host(&self, id: &str) -> Option<Arc<Host>> {
        lock(&self.inner.hosts).get(id).cloned()
    }

    fn all_hosts(&self) -> Vec<Arc<Host>> {
        let mut v: Vec<_> = lock(&self.inner.hosts).values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    fn next_link_id(&self) -> u64 {
        self.inner.next_link_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn announce(&self, host: &str, run: Option<&RunId>) {
        let _ = self.inner.arrivals.send((host.to_owned(), run.cloned()));
    }
}

/// Viewer tokens (`[stream]` or `STATE_DIR/token`) and host tokens
/// (`[gateway] agent_tokens` or `STATE_DIR/agent-token`).
fn load_tokens(config: &Config, state_dir: &Path) -> Result<(Tokens, Tokens), AuthError> {
    let viewers = Tokens::load(&config.stream, &config.auth, state_dir)?;
    let agents = if config.gateway.agent_tokens.is_empty() {
        Tokens::new(vec![(ensure_token_file(&state_dir.join(AGENT_TOKEN_FILE))?, Scope::full())])
    } else {
        Tokens::new(config.gateway.agent_tokens.iter().map(|t| (Token::new(t.clone()), Scope::full())).collect())
    };
    Ok((viewers, agents))
}

/// Runs the gateway until `shutdown`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
    mut reloads: mpsc::UnboundedReceiver<Config>,
) -> Result<(), GatewayError> {
    let state_dir = config.daemon.state_dir.clone();
    create_private_dir(&state_dir).map_err(|error| GatewayError::StateDir { path: state_dir.clone(), error })?;
    let engine_stop = CancellationToken::new();
    let gateway = tokio::select! {
        g = Engine::open(&state_dir, &config.gateway, engine_stop.clone()) => g?,
        _ = shutdown.cancelled() => return Ok(()),
    };
    let (viewers, agents) = load_tokens(&config, &state_dir).map_err(GatewayError::Tokens)?;
    let tls = crate::server::tls::for_listener(&config.stream).map_err(GatewayError::Tls)?;
    let stop_accepting = CancellationToken::new();
    let stop_connections = CancellationToken::new();
    let shared = Shared::new(gateway.backend(), config.stream.clone(), viewers, tls, stop_connections.clone());
    shared.set_agent_tokens(agents);
    // Its own fds and one open journal per host link; the rest is connections.
    shared.reserve_fds(128);
    let shared = Arc::new(shared);
    let listen = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let server = tokio::spawn(http::serve(listener, shared.clone(), stop_accepting.clone()));
    let conns = shared.clone();
    let load =
        move || usize::try_from(conns.metrics.connections.load(std::sync::atomic::Ordering::Relaxed)).unwrap_or(0);
    let memory = tokio::spawn(crate::sys::release_when_shrinking(load, 64, stop_accepting.clone()));
    tracing::info!(state_dir = %state_dir.display(), listen = %listen, hosts = gateway.hosts(), engine = ?config.gateway.engine, "runtap gateway ready");
    crate::systemd::ready("gateway ready");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(new) = reloads.recv() => {
                let loaded = load_tokens(&new, &state_dir).map_err(|e| e.to_string())
                    .and_then(|t| Ok((t, crate::server::tls::load(&new.stream).map_err(|e| e.to_string())?)));
                match loaded {
                    Ok(((v, a), cert)) => {
                        shared.reload(new.stream.clone(), v, cert);
                        shared.set_agent_tokens(a);
                        gateway.set_config(new.gateway.clone());
                        tracing::info!("config reloaded");
                    }
                    Err(error) => tracing::error!(%error, "reload refused: keeping the old config"),
                }
                crate::systemd::ready("gateway ready");
            }
        }
    }
    crate::systemd::stopping();
    stop_accepting.cancel();
    stop_connections.cancel();
    shared.tracker.close();
    if tokio::time::timeout(std::time::Duration::from_secs(5), shared.tracker.wait()).await.is_err() {
        tracing::warn!("connections did not close in time");
    }
    let _ = server.await;
    let _ = memory.await;
    engine_stop.cancel();
    tracing::info!("runtap gateway stopped");
    Ok(())
}
