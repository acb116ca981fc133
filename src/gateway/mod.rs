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
//! One agent session per host appends (`agent.rs`); viewers read through
//! the host's hub and journal, exactly as on a daemon.

pub mod agent;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, GatewayConfig};
use crate::event::{RunStatus, now_timestamp};
use crate::hub::Hub;
use crate::journal::{Journal, JournalError};
use crate::run::RunInfo;
use crate::run_id::RunId;
use crate::server::auth::{AuthError, Scope, Token, Tokens, ensure_token_file};
use crate::server::backend::{BackendStats, LookupError, Source};
use crate::server::{Shared, http};

/// Name of the generated host (agent) token file.
pub const AGENT_TOKEN_FILE: &str = "agent-token";
/// New-run announcements buffered for viewers waiting on a run ID.
const ARRIVALS_BACKLOG: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("create state dir {path}: {source}")]
    StateDir { path: PathBuf, source: std::io::Error },
    #[error("journal: {0}")]
    Journal(#[from] JournalError),
    #[error("tokens: {0}")]
    Tokens(#[from] AuthError),
}

#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error(transparent)]
    Lookup(LookupError),
    #[error("host {0} is not connected")]
    Offline(String),
    #[error("host {0} did not answer")]
    Timeout(String),
}

/// A host's answer to a routed cancel.
#[derive(Debug)]
pub struct CancelReply {
    pub host: String,
    pub ok: bool,
    pub status: Option<RunStatus>,
    pub code: Option<String>,
    pub message: Option<String>,
}

/// A cancel on its way down to a host's agent session.
pub struct CancelRequest {
    pub run: RunId,
    pub reason: String,
    pub reply: oneshot::Sender<CancelReply>,
}

/// What a waiting subscription is waiting for.
enum Arrival {
    Run(RunId),
    Host(String),
}

impl Arrival {
    fn matches(&self, host: &str, run: Option<&RunId>) -> bool {
        match self {
            Arrival::Run(want) => run == Some(want),
            Arrival::Host(want) => host == want,
        }
    }
}

/// The gateway's default state dir, next to (not inside) the daemon's.
pub fn default_state_dir(daemon_default: &Path) -> PathBuf {
    let name = daemon_default.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    daemon_default.with_file_name(format!("{name}-gateway"))
}

#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    state_dir: PathBuf,
    hosts: Mutex<HashMap<String, Arc<Host>>>,
    /// `(host, Some(run))` for each run a host starts forwarding, and
    /// `(host, None)` when a host is seen for the first time.
    arrivals: broadcast::Sender<(String, Option<RunId>)>,
    config: Mutex<GatewayConfig>,
    pub metrics: GatewayMetrics,
}

#[derive(Default)]
pub struct GatewayMetrics {
    pub events_received: AtomicU64,
    pub duplicates_dropped: AtomicU64,
    pub agent_sessions: AtomicU64,
    pub acks_sent: AtomicU64,
}

/// One host's copy.
pub struct Host {
    pub id: String,
    pub journal: Journal,
    pub hub: Hub,
    state: Mutex<HostState>,
    /// Held by the host's agent session: one appender at a time.
    session: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct HostState {
    epoch: Option<String>,
    runs: HashMap<RunId, RunInfo>,
    link: Option<Link>,
    last_seen: Option<String>,
    connected_since: Option<String>,
}

/// The connected agent session of a host.
struct Link {
    id: u64,
    cancels: mpsc::Sender<CancelRequest>,
    stop: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Host {
    fn open(state_dir: &Path, id: &str) -> Result<Host, GatewayError> {
        let dir = state_dir.join("hosts").join(id);
        std::fs::create_dir_all(&dir).map_err(|source| GatewayError::StateDir { path: dir.clone(), source })?;
        let journal = Journal::open(&dir)?.with_host(id);
        let hub = Hub::default();
        let mut state = HostState {
            epoch: std::fs::read_to_string(dir.join("epoch")).ok().map(|s| s.trim().to_owned()),
            ..HostState::default()
        };
        for r in journal.scan_open()? {
            if r.status.is_final() {
                hub.insert_closed(&r.run_id, r.last_seq);
            } else {
                drop(hub.open(&r.run_id, r.last_seq));
            }
            state.runs.insert(r.run_id.clone(), crate::run::table::info_from_recovered(r));
        }
        Ok(Host { id: id.to_owned(), journal, hub, state: Mutex::new(state), session: tokio::sync::Mutex::new(()) })
    }

    fn dir(&self) -> PathBuf {
        self.journal.root().parent().map(Path::to_path_buf).unwrap_or_default()
    }

    /// Last seq held for every run: what the host resumes after.
    pub fn cursors(&self) -> HashMap<String, u64> {
        lock(&self.state).runs.iter().map(|(id, r)| (id.to_string(), r.last_seq)).collect()
    }

    pub fn run_info(&self, run: &RunId) -> Option<RunInfo> {
        lock(&self.state).runs.get(run).cloned()
    }

    pub fn update_run(&self, run: &RunId, f: impl FnOnce(&mut RunInfo)) {
        if let Some(info) = lock(&self.state).runs.get_mut(run) {
            f(info);
        }
    }

    pub fn remove_run(&self, run: &RunId) {
        lock(&self.state).runs.remove(run);
    }

    pub fn insert_run(&self, info: RunInfo) {
        lock(&self.state).runs.insert(info.run_id.clone(), info);
    }

    fn to_json(&self) -> Value {
        let st = lock(&self.state);
        let active = st.runs.values().filter(|r| !r.status.is_final()).count();
        json!({
            "host": self.id,
            "connected": st.link.is_some(),
            "connectedSince": st.connected_since,
            "lastSeen": st.last_seen,
            "epoch": st.epoch,
            "runs": st.runs.len(),
            "activeRuns": active,
        })
    }
}

impl Gateway {
    /// Opens the state dir and every host found in it.
    pub fn open(state_dir: &Path, config: GatewayConfig) -> Result<Gateway, GatewayError> {
        let hosts_dir = state_dir.join("hosts");
        std::fs::create_dir_all(&hosts_dir)
            .map_err(|source| GatewayError::StateDir { path: hosts_dir.clone(), source })?;
        let mut hosts = HashMap::new();
        let entries = std::fs::read_dir(&hosts_dir)
            .map_err(|source| GatewayError::StateDir { path: hosts_dir.clone(), source })?;
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
            }),
        })
    }

    pub fn config(&self) -> GatewayConfig {
        lock(&self.inner.config).clone()
    }

    pub fn metrics(&self) -> &GatewayMetrics {
        &self.inner.metrics
    }

    pub fn host(&self, id: &str) -> Option<Arc<Host>> {
        lock(&self.inner.hosts).get(id).cloned()
    }

    fn all_hosts(&self) -> Vec<Arc<Host>> {
        let mut v: Vec<_> = lock(&self.inner.hosts).values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// The host's copy for a session that says it has `epoch`. A different
    /// epoch than the one held means the host's state dir was wiped: the
    /// old copy is archived (never merged: run IDs and seqs start over).
    pub fn host_for_session(&self, id: &str, epoch: &str) -> Result<Arc<Host>, GatewayError> {
        if let Some(host) = self.host(id) {
            let held = lock(&host.state).epoch.clone();
            match held {
                Some(e) if e != epoch => {
                    tracing::warn!(host = id, old_epoch = %e, new_epoch = epoch,
                        "host state dir was reset: archiving the gateway's old copy of its runs");
                    let archive = self.inner.state_dir.join("archive");
                    std::fs::create_dir_all(&archive)
                        .map_err(|source| GatewayError::StateDir { path: archive.clone(), source })?;
                    let to = archive.join(format!("{id}-{e}"));
                    std::fs::rename(host.dir(), &to)
                        .map_err(|source| GatewayError::StateDir { path: to.clone(), source })?;
                    for run in lock(&host.state).runs.keys() {
                        host.hub.remove(run);
                    }
                }
                _ => {
                    self.write_epoch(&host, epoch)?;
                    return Ok(host);
                }
            }
        }
        let host = Arc::new(Host::open(&self.inner.state_dir, id)?);
        self.write_epoch(&host, epoch)?;
        lock(&self.inner.hosts).insert(id.to_owned(), host.clone());
        self.announce(id, None);
        Ok(host)
    }

    fn write_epoch(&self, host: &Host, epoch: &str) -> Result<(), GatewayError> {
        let mut st = lock(&host.state);
        if st.epoch.as_deref() != Some(epoch) {
            let path = host.dir().join("epoch");
            std::fs::write(&path, epoch).map_err(|source| GatewayError::StateDir { path, source })?;
            st.epoch = Some(epoch.to_owned());
        }
        Ok(())
    }

    fn announce(&self, host: &str, run: Option<&RunId>) {
        let _ = self.inner.arrivals.send((host.to_owned(), run.cloned()));
    }

    /// Hosts that hold `run`.
    fn holders(&self, run: &RunId) -> Vec<Arc<Host>> {
        self.all_hosts().into_iter().filter(|h| lock(&h.state).runs.contains_key(run)).collect()
    }

    fn resolve(&self, host: Option<&str>, run: &RunId) -> Result<Arc<Host>, LookupError> {
        match host {
            Some(h) => self.host(h).ok_or_else(|| LookupError::UnknownHost(h.to_owned())),
            None => {
                let holders = self.holders(run);
                match holders.len() {
                    1 => Ok(holders[0].clone()),
                    0 => Err(LookupError::NotFound(run.to_string())),
                    _ => {
                        let names: Vec<_> = holders.iter().map(|h| h.id.clone()).collect();
                        Err(LookupError::Ambiguous(run.clone(), names.join(", ")))
                    }
                }
            }
        }
    }

    /// Where a run's stream lives. A run (without `host`) or a host (with
    /// it) that is not known yet is waited for, as a daemon waits for a run
    /// that does not exist yet; the caller bounds the wait.
    pub async fn source(&self, host: Option<&str>, run: &RunId) -> Result<Source, LookupError> {
        let mut arrivals = self.inner.arrivals.subscribe();
        loop {
            let waiting_for = match self.resolve(host, run) {
                Ok(h) => return Ok(Source { journal: h.journal.clone(), hub: h.hub.clone() }),
                Err(LookupError::NotFound(_)) if host.is_none() => Arrival::Run(run.clone()),
                Err(LookupError::UnknownHost(h)) => Arrival::Host(h),
                Err(e) => return Err(e),
            };
            loop {
                match arrivals.recv().await {
                    Ok((h, r)) if waiting_for.matches(&h, r.as_ref()) => break,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return Err(LookupError::NotFound(run.to_string())),
                }
            }
        }
    }

    fn with_host(host: &str, info: &RunInfo) -> Value {
        let mut v = json!(info);
        v["host"] = json!(host);
        v
    }

    pub fn list(&self, scope: &Scope) -> Vec<Value> {
        let mut out = Vec::new();
        for h in self.all_hosts() {
            let st = lock(&h.state);
            let mut runs: Vec<&RunInfo> = st.runs.values().filter(|r| scope.allows(&r.run_id)).collect();
            runs.sort_by(|a, b| a.created_at.cmp(&b.created_at));
            out.extend(runs.into_iter().map(|r| Self::with_host(&h.id, r)));
        }
        out
    }

    pub fn get(&self, host: Option<&str>, run: &RunId) -> Result<Value, LookupError> {
        let h = self.resolve(host, run)?;
        let info = h.run_info(run).ok_or_else(|| LookupError::NotFound(run.to_string()))?;
        Ok(Self::with_host(&h.id, &info))
    }

    pub fn hosts_json(&self) -> Value {
        Value::Array(self.all_hosts().iter().map(|h| h.to_json()).collect())
    }

    /// Routes a cancel to the run's host and waits for its answer.
    pub async fn cancel(&self, host: Option<&str>, run: &RunId, reason: String) -> Result<CancelReply, CancelError> {
        let h = self.resolve(host, run).map_err(CancelError::Lookup)?;
        if h.run_info(run).is_none() {
            return Err(CancelError::Lookup(LookupError::NotFound(run.to_string())));
        }
        let link = lock(&h.state).link.as_ref().map(|l| l.cancels.clone());
        let Some(link) = link else {
            return Err(CancelError::Offline(h.id.clone()));
        };
        let (tx, rx) = oneshot::channel();
        let timeout = self.config().cancel_timeout;
        if link.send(CancelRequest { run: run.clone(), reason, reply: tx }).await.is_err() {
            return Err(CancelError::Offline(h.id.clone()));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(CancelError::Offline(h.id.clone())),
            Err(_) => Err(CancelError::Timeout(h.id.clone())),
        }
    }

    pub fn stats(&self) -> BackendStats {
        use std::sync::atomic::Ordering::Relaxed;
        let mut s = BackendStats::default();
        for h in self.all_hosts() {
            let st = lock(&h.state);
            for r in st.runs.values() {
                *s.by_status.entry(r.status).or_default() += 1;
                s.runs += 1;
                s.active += usize::from(!r.status.is_final());
            }
            s.subscriptions += h.hub.stats().subscriptions.load(Relaxed);
            s.events_in += h.hub.stats().events_published.load(Relaxed);
            s.journal_bytes += h.journal.stats.bytes_written.load(Relaxed);
            s.journal_errors += h.journal.stats.write_errors.load(Relaxed);
        }
        s
    }

    pub fn render_metrics(&self) -> String {
        use std::fmt::Write as _;
        let m = &self.inner.metrics;
        let mut out = String::new();
        let _ = writeln!(out, "# HELP runtap_gateway_host_connected Whether the host's agent is connected.");
        let _ = writeln!(out, "# TYPE runtap_gateway_host_connected gauge");
        for h in self.all_hosts() {
            let connected = lock(&h.state).link.is_some();
            let _ = writeln!(out, "runtap_gateway_host_connected{{host=\"{}\"}} {}", h.id, u8::from(connected));
        }
        for (name, help, value) in [
            ("runtap_gateway_events_received_total", "Events received from hosts.", &m.events_received),
            ("runtap_gateway_duplicates_dropped_total", "Events received again and dropped.", &m.duplicates_dropped),
            ("runtap_gateway_agent_sessions_total", "Agent sessions accepted.", &m.agent_sessions),
            ("runtap_gateway_acks_sent_total", "Acknowledgement batches sent.", &m.acks_sent),
        ] {
            let _ =
                writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", value.load(Ordering::Relaxed));
        }
        out
    }

    /// Records a session as the host's live link, stopping any older one.
    fn attach(&self, host: &Host, link_id: u64, cancels: mpsc::Sender<CancelRequest>, stop: CancellationToken) {
        let mut st = lock(&host.state);
        if let Some(old) = st.link.take() {
            old.stop.cancel();
        }
        st.link = Some(Link { id: link_id, cancels, stop });
        st.connected_since = Some(now_timestamp());
        st.last_seen = Some(now_timestamp());
    }

    fn detach(&self, host: &Host, link_id: u64) {
        let mut st = lock(&host.state);
        if st.link.as_ref().is_some_and(|l| l.id == link_id) {
            st.link = None;
            st.connected_since = None;
        }
        st.last_seen = Some(now_timestamp());
    }
}

/// Viewer tokens (`[stream]` or `STATE_DIR/token`) and host tokens
/// (`[gateway] agent_tokens` or `STATE_DIR/agent-token`).
pub fn load_tokens(config: &Config, state_dir: &Path) -> Result<(Tokens, Tokens), AuthError> {
    let viewers = Tokens::load(&config.stream, state_dir)?;
    let agents = if config.gateway.agent_tokens.is_empty() {
        Tokens::new(vec![(ensure_token_file(&state_dir.join(AGENT_TOKEN_FILE))?, Scope::AllRuns)])
    } else {
        Tokens::new(config.gateway.agent_tokens.iter().map(|t| (Token::new(t.clone()), Scope::AllRuns)).collect())
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
    crate::daemon::create_private_dir(&state_dir)
        .map_err(|source| GatewayError::StateDir { path: state_dir.clone(), source })?;
    let gateway = Gateway::open(&state_dir, config.gateway.clone())?;
    let (viewers, agents) = load_tokens(&config, &state_dir)?;
    let stop_accepting = CancellationToken::new();
    let stop_connections = CancellationToken::new();
    let shared = Arc::new(Shared::new_gateway(
        gateway.clone(),
        config.stream.clone(),
        viewers,
        agents,
        stop_connections.clone(),
    ));
    let listen = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let server = tokio::spawn(http::serve(listener, shared.clone(), stop_accepting.clone()));
    tracing::info!(state_dir = %state_dir.display(), listen = %listen, hosts = gateway.all_hosts().len(), "runtap gateway ready");
    crate::systemd::ready("gateway ready");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(new) = reloads.recv() => {
                match load_tokens(&new, &state_dir) {
                    Ok((v, a)) => {
                        shared.reload(new.stream.clone(), v);
                        shared.set_agent_tokens(a);
                        *lock(&gateway.inner.config) = new.gateway.clone();
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
    tracing::info!("runtap gateway stopped");
    Ok(())
}
