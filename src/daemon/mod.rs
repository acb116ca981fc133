//! Wiring and ordered shutdown of the per-host daemon.
//!
//! `run` takes already-bound listeners and a shutdown token, so tests start
//! the real daemon in-process on temp paths with no test-only switches.
//!
//! Shutdown order matters: stop accepting, then leave the runs to their
//! shims (`runs.on_shutdown = "detach"`) or cancel them and wait for their
//! final statuses (bounded), and only then close client connections, so
//! that `runtap run` clients see how their run ended.

mod backend;

use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use tokio::sync::mpsc;

use crate::auth::{AuthError, Tokens};
use crate::config::{Config, ShutdownPolicy};
use crate::hub::{Hub, QueueLimits};
use crate::journal::{Journal, JournalError};
use crate::run::{RunLimits, RunTable, ShimSetup, Timing};
use crate::server::unix::{self, SocketGuard};
use crate::server::{Shared, http};
use crate::sys::{StateDirLock, create_private_dir, lock_state_dir};
use crate::upstream::{self, UpstreamStatus};
use backend::DaemonRuns;

/// Extra time, past the grace period and drain timeout, that shutdown
/// waits for runs to write their final status.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(5);
/// How long connections get to flush after the runs are done.
const CONNECTION_DRAIN: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    // Each message carries its cause, and nothing is a `source`: printing
    // the chain (`{e:#}`) would say it twice.
    #[error("create state dir {}: {error}", .path.display())]
    StateDir { path: PathBuf, error: std::io::Error },
    #[error("bind unix socket {}: {error}", .path.display())]
    BindUnix { path: PathBuf, error: std::io::Error },
    #[error("bind {addr}: {error}")]
    BindTcp { addr: String, error: std::io::Error },
    #[error("{0}")]
    Locked(crate::sys::LockError),
    #[error("recover journal: {0}")]
    Journal(JournalError),
    #[error("load tokens: {0}")]
    Tokens(AuthError),
    #[error("upstream: {0}")]
    Upstream(upstream::UpstreamError),
    #[error("{0}")]
    Tls(crate::server::tls::TlsError),
}

/// How long shutdown lets the upstream link forward the runs' final events.
const UPSTREAM_DRAIN: Duration = Duration::from_secs(3);

/// Sockets bound before `run`, so binding errors surface before anything starts.
pub struct Listeners {
    /// Held for the daemon's life: one daemon per state dir.
    lock: StateDirLock,
    unix: UnixListener,
    /// Removes the socket file when the daemon is done with it.
    unix_guard: SocketGuard,
    /// HTTP and WebSocket.
    tcp: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> Result<Self, DaemonError> {
        // Before the socket: by default it lives in the state dir, and binding
        // would otherwise create that dir with the umask (0755 = readable job output).
        let state_dir = &config.daemon.state_dir;
        create_private_dir(state_dir).map_err(|error| DaemonError::StateDir { path: state_dir.clone(), error })?;
        // Before binding anything: a second daemon must not even replace
        // the first one's stale-looking socket.
        let lock = lock_state_dir(state_dir).map_err(DaemonError::Locked)?;
        let addr = &config.daemon.listen;
        let tcp = TcpListener::bind(addr).await.map_err(|error| DaemonError::BindTcp { addr: addr.clone(), error })?;
        let path = &config.daemon.socket;
        let (unix, unix_guard) = unix::bind(path, config.daemon.socket_mode)
            .map_err(|error| DaemonError::BindUnix { path: path.clone(), error })?;
        Ok(Listeners { lock, unix, unix_guard, tcp })
    }
}

fn run_limits(config: &Config) -> RunLimits {
    RunLimits {
        max_concurrent: config.runs.max_concurrent,
        timing: Timing {
            grace_period: config.runs.grace_period,
            drain_timeout: config.runs.drain_timeout,
            pacing: crate::run::output::Pacing { line_hold: config.runs.line_hold, coalesce: config.runs.coalesce },
            fsync_interval: config.journal.fsync_interval,
        },
    }
}

/// Runs the daemon until `shutdown` is cancelled, then shuts down in order.
/// Each config received on `reloads` (SIGHUP) replaces tokens and limits
/// without dropping connections.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
    mut reloads: mpsc::UnboundedReceiver<Config>,
) -> Result<(), DaemonError> {
    let state_dir = &config.daemon.state_dir;
    create_private_dir(state_dir).map_err(|error| DaemonError::StateDir { path: state_dir.clone(), error })?;
    let journal = Journal::open(state_dir).map_err(DaemonError::Journal)?;
    let hub = Hub::new(QueueLimits {
        max_bytes: config.stream.subscriber_queue_bytes,
        max_batches: config.stream.subscriber_queue_batches,
    });
    let run_tasks = TaskTracker::new();
    let shims = ShimSetup {
        socket_dir: config.daemon.socket.parent().unwrap_or(state_dir).join("shims"),
        state_dir: state_dir.clone(),
        log_level: config.daemon.log_level.clone(),
    };
    let table = RunTable::new(journal, hub, run_limits(&config), run_tasks.clone(), shims);
    let (recovered, taken_back) = table.recover().map_err(DaemonError::Journal)?;
    let tokens = Tokens::load(&config.stream, &config.auth, state_dir).map_err(DaemonError::Tokens)?;
    let tls = crate::server::tls::for_listener(&config.stream).map_err(DaemonError::Tls)?;
    let listen = listeners.tcp.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(
        state_dir = %state_dir.display(),
        socket = %config.daemon.socket.display(),
        listen = %listen,
        runs = recovered,
        taken_back,
        "runtap daemon ready"
    );

    let stop_accepting = CancellationToken::new();
    let stop_connections = CancellationToken::new();
    let conn_tasks = TaskTracker::new();
    let link = upstream::LinkConfig::load(&config.upstream, state_dir).map_err(DaemonError::Upstream)?;
    let upstream_status = link.as_ref().map(|l| Arc::new(UpstreamStatus::new(&l.urls)));
    let runs = Arc::new(DaemonRuns {
        table: table.clone(),
        upstream: upstream_status.clone(),
        pty_size: (config.runs.pty_cols, config.runs.pty_rows),
    });
    let unix_server = tokio::spawn(unix::serve(
        listeners.unix,
        runs.clone(),
        stop_accepting.clone(),
        stop_connections.clone(),
        conn_tasks.clone(),
    ));
    let stop_upstream = CancellationToken::new();
    let upstream = match (link, &upstream_status) {
        (Some(link), Some(status)) => {
            tracing::info!(urls = ?link.urls, host = %link.host_id, "forwarding to the gateway");
            Some(tokio::spawn(upstream::run(link, table.clone(), status.clone(), stop_upstream.clone())))
        }
        _ => None,
    };
    let shared = Arc::new(Shared::new(runs, config.stream.clone(), tokens, tls, stop_connections.clone()));
    shared.reserve_fds(reserved_fds(config.runs.max_concurrent));
    let limit = shared.connection_limit();
    if limit < config.stream.max_connections {
        tracing::warn!(limit, max_connections = config.stream.max_connections, open_files = ?crate::sys::open_file_limit(),
            "the open file limit allows fewer connections than stream.max_connections; raise LimitNOFILE");
    }
    let http_server = tokio::spawn(http::serve(listeners.tcp, shared.clone(), stop_accepting.clone()));
    let retention =
        tokio::spawn(retention_loop(table.clone(), config.clone(), upstream_status.clone(), stop_accepting.clone()));

    let status_line = status_line(shared.clone());
    let watchdog = tokio::spawn(crate::systemd::watchdog(status_line.clone(), stop_accepting.clone()));
    let memory = tokio::spawn(crate::sys::release_when_shrinking(
        load(shared.clone(), table.clone()),
        64,
        stop_accepting.clone(),
    ));
    crate::systemd::ready(&status_line());

    let mut config = config;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(new) = reloads.recv() => {
                config = reload(config, new, &table, &shared);
                crate::systemd::ready(&status_line());
            }
        }
    }
    crate::systemd::stopping();
    tracing::info!(policy = ?config.runs.shutdown_policy, active = table.active_count(), "shutting down");
    stop_accepting.cancel();
    run_tasks.close();
    stop_runs(&config, &table, &run_tasks).await;
    if let (Some(task), Some(status)) = (upstream, &upstream_status) {
        // Give the link a moment to deliver the runs' final events; what it
        // cannot, the next start resends from the gateway's acked seq.
        let deadline = tokio::time::Instant::now() + UPSTREAM_DRAIN;
        while status.pending(&table) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop_upstream.cancel();
        let _ = task.await;
    }
    stop_connections.cancel();
    conn_tasks.close();
    shared.tracker.close();
    let drained = async {
        conn_tasks.wait().await;
        shared.tracker.wait().await;
    };
    if tokio::time::timeout(CONNECTION_DRAIN, drained).await.is_err() {
        tracing::warn!("connections did not close in time");
    }
    let _ = unix_server.await;
    let _ = http_server.await;
    let _ = retention.await;
    let _ = watchdog.await;
    let _ = memory.await;
    drop(listeners.unix_guard);
    drop(listeners.lock);
    tracing::info!("runtap daemon stopped");
    Ok(())
}

/// What a clean stop does to active runs (`runs.on_shutdown`): leave them
/// to their shims, or cancel them (after letting them finish, with `wait`)
/// and wait, bounded, for their final statuses.
async fn stop_runs(config: &Config, table: &RunTable, run_tasks: &TaskTracker) {
    let policy = config.runs.shutdown_policy;
    if policy == ShutdownPolicy::Detach {
        let active = table.active_count();
        table.detach_all();
        run_tasks.wait().await;
        tracing::info!(active, "runs left to their shims; the next daemon takes them back");
        return;
    }
    if policy == ShutdownPolicy::Wait
        && tokio::time::timeout(config.runs.shutdown_wait, run_tasks.wait()).await.is_err()
    {
        tracing::warn!(active = table.active_count(), "runs still active after shutdown_wait; cancelling them");
    }
    let limits = table.limits();
    let cancelled = table.cancel_all("daemon shutdown");
    let bound = limits.timing.grace_period + limits.timing.drain_timeout + SHUTDOWN_SLACK;
    if tokio::time::timeout(bound, run_tasks.wait()).await.is_err() {
        tracing::warn!(active = table.active_count(), "runs did not finish within the shutdown bound");
        table.detach_all();
    }
    tracing::info!(cancelled, "runs stopped");
}

/// Applies retention at start and then every `retention_check_interval`.
async fn retention_loop(
    table: RunTable,
    config: Config,
    upstream: Option<Arc<UpstreamStatus>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(config.journal.retention_check_interval);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let t = table.clone();
        let up = upstream.clone();
        let (age, bytes) = (config.journal.retention_max_age, config.journal.retention_max_bytes);
        let before_delete = move |run: &crate::run_id::RunId, last_seq: u64| {
            if let Some(up) = &up {
                up.note_deleted(run, last_seq);
            }
        };
        match tokio::task::spawn_blocking(move || t.sweep_retention(age, bytes, before_delete)).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "retention sweep"),
            Err(error) => tracing::error!(%error, "retention sweep failed"),
        }
    }
}

/// Applies a new config where it can take effect live; returns the config in force.
fn reload(old: Config, new: Config, table: &RunTable, shared: &Shared) -> Config {
    let state_dir = &new.daemon.state_dir;
    let tokens = match Tokens::load(&new.stream, &new.auth, state_dir) {
        Ok(t) => t,
        Err(error) => {
            tracing::error!(%error, "reload refused: keeping the old config");
            return old;
        }
    };
    let cert = match crate::server::tls::load(&new.stream) {
        Ok(c) => c,
        Err(error) => {
            tracing::error!(%error, "reload refused: keeping the old config and certificate");
            return old;
        }
    };
    if (&old.daemon.state_dir, &old.daemon.socket, &old.daemon.listen)
        != (&new.daemon.state_dir, &new.daemon.socket, &new.daemon.listen)
    {
        tracing::warn!("state_dir, socket and listen changes take effect at the next restart");
    }
    if (old.stream.subscriber_queue_bytes, old.stream.subscriber_queue_batches)
        != (new.stream.subscriber_queue_bytes, new.stream.subscriber_queue_batches)
    {
        tracing::warn!("subscriber queue sizes take effect at the next restart");
    }
    shared.reload(new.stream.clone(), tokens, cert);
    table.set_limits(run_limits(&new));
    tracing::info!("config reloaded");
    new
}

/// File descriptors kept from TCP connections: the daemon's own, the Unix
/// socket's clients, journals open for history reads (a reader that finds
/// none free retries; see `journal::history`), and each run's stdout and
/// stderr pipes, journal, state record and child handle.
fn reserved_fds(max_concurrent: usize) -> usize {
    const BASE: usize = 64;
    const UNIX_CLIENTS: usize = 64;
    const HISTORY_READERS: usize = 64;
    const PER_RUN: usize = 5;
    BASE + UNIX_CLIENTS + HISTORY_READERS + PER_RUN * max_concurrent
}

/// What the daemon's memory follows: open connections, plus output
/// journaled in the last check (a unit per 64 KiB). When it falls, the
/// buffers a flood of clients or a burst of output needed are given back.
fn load(shared: Arc<Shared>, table: RunTable) -> impl Fn() -> usize + Send + 'static {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    let last_bytes = AtomicU64::new(0);
    move || {
        let conns = usize::try_from(shared.metrics.connections.load(Relaxed)).unwrap_or(0);
        let bytes = table.journal().stats.bytes_written.load(Relaxed);
        let burst = bytes.saturating_sub(last_bytes.swap(bytes, Relaxed)) / (64 * 1024);
        conns + usize::try_from(burst).unwrap_or(usize::MAX)
    }
}

/// The one-line summary for `systemctl status`.
fn status_line(shared: Arc<Shared>) -> crate::systemd::StatusLine {
    Arc::new(move || {
        use std::sync::atomic::Ordering;
        let stats = shared.backend.stats();
        let conns = shared.metrics.connections.load(Ordering::Relaxed);
        format!("{} active runs, {conns} connections, {} subscriptions", stats.active, stats.subscriptions)
    })
}
