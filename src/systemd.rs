//! systemd's notify protocol: readiness, status, watchdog, reload, stop.
//!
//! Every call is a no-op without `NOTIFY_SOCKET`, so the daemon behaves the
//! same in a terminal, in tests, and under systemd.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::server::Shared;

fn notify(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(%error, "sd_notify failed");
    }
}

/// Listeners are bound and journals recovered.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Reload started: `RELOADING=1` with the monotonic time systemd asks for.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// A one-line summary for `systemctl status`.
pub fn status_line(shared: &Shared) -> String {
    use std::sync::atomic::Ordering;
    let stats = shared.backend.stats();
    let conns = shared.metrics.connections.load(Ordering::Relaxed);
    format!("{} active runs, {conns} connections, {} subscriptions", stats.active, stats.subscriptions)
}

/// Sends `WATCHDOG=1` (and a fresh `STATUS=`) every half watchdog period,
/// but only after a probe shows the daemon is making progress: the runtime
/// schedules a new task and the run table and hub answer, each within a
/// quarter period. A wedged daemon stops petting and systemd restarts it.
pub async fn watchdog(shared: Arc<Shared>, stop: CancellationToken) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let interval = period / 2;
    tracing::info!(?period, "systemd watchdog enabled");
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if probe(&shared, interval / 2).await {
            let status = status_line(&shared);
            notify(&[NotifyState::Watchdog, NotifyState::Status(&status)]);
        } else {
            tracing::error!("watchdog probe failed; not notifying systemd");
        }
    }
}

async fn probe(shared: &Arc<Shared>, bound: Duration) -> bool {
    let s = shared.clone();
    let check = tokio::spawn(async move {
        let _ = s.backend.stats();
    });
    matches!(tokio::time::timeout(bound, check).await, Ok(Ok(())))
}
