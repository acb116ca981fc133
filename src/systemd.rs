//! systemd's notify protocol: readiness, status, watchdog, reload, stop.
//!
//! Every call is a no-op without `NOTIFY_SOCKET`, so the daemon behaves the
//! same in a terminal, in tests, and under systemd.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

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

/// What `STATUS=` says; called from the watchdog's probe, so a wedged
/// runtime also stops the petting.
pub type StatusLine = Arc<dyn Fn() -> String + Send + Sync>;

/// Sends `WATCHDOG=1` (and a fresh `STATUS=`) every half watchdog period,
/// but only after a probe shows the daemon is making progress: the runtime
/// schedules a new task and `status` (which reads the run table and hub)
/// answers, each within a quarter period. A wedged daemon stops petting and
/// systemd restarts it.
pub async fn watchdog(status: StatusLine, stop: CancellationToken) {
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
        match probe(&status, interval / 2).await {
            Some(line) => notify(&[NotifyState::Watchdog, NotifyState::Status(&line)]),
            None => tracing::error!("watchdog probe failed; not notifying systemd"),
        }
    }
}

async fn probe(status: &StatusLine, bound: Duration) -> Option<String> {
    let status = status.clone();
    let check = tokio::spawn(async move { status() });
    tokio::time::timeout(bound, check).await.ok()?.ok()
}
