//! One run's owning task, in the run's shim: starts the job, turns its
//! output into journaled events, handles cancel, and writes the final status.
//!
//! Everything about a run happens on this one task, in order, so `seq`
//! order is the order things happened: output, then exit, then final status.
//! It writes the journal and tells its [`Sink`] how far; it never waits
//! for a reader (the daemon may be down).

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::child::{self, Outcome, SpawnLock, Spec, Started, Streams};
use super::output::{self, Output};
use super::reaper::Reaper;
use super::steps::{EventLines, Got, StepEvent, Steps};
use crate::event::{Batch, EventType, Payload, RunStatus, StatusChange};
use crate::hub::Delivered;
use crate::journal::RunWriter;
use crate::run_id::RunId;

/// Timing knobs, from `[runs]` and `[journal]` in the config.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    pub grace_period: Duration,
    pub drain_timeout: Duration,
    pub pacing: output::Pacing,
    pub fsync_interval: Duration,
}

/// Who hears how far the journal is written (the shim's link to the
/// daemon). Told after each batch is in the file; must never wait.
pub(crate) trait Sink: Send + 'static {
    /// A batch was written (`writer` says up to where).
    fn written(&mut self, batch: Batch, writer: &RunWriter);
    /// The final status is written and synced: nothing follows.
    fn done(&mut self, writer: &RunWriter);
    /// A line on the job's events channel was dropped (see `steps`).
    fn bad_event_line(&mut self);
    /// Whether the run's readers took what was written (output pacing).
    fn delivered(&self) -> Arc<Delivered>;
}

/// Requests from the run's handle (the table) to this task.
#[derive(Debug)]
pub(crate) enum Control {
    Cancel { reason: String },
}

struct Cancel {
    reason: String,
    /// When SIGKILL is due if the job is still there.
    kill_at: Instant,
    killed: bool,
}

pub(super) struct Supervisor<S> {
    run_id: RunId,
    spec: Spec,
    writer: RunWriter,
    sink: S,
    reaper: Reaper,
    control: mpsc::UnboundedReceiver<Control>,
    timing: Timing,
    cancel: Option<Cancel>,
    /// Journal fsync running on a blocking thread, so the run never waits on the disk.
    sync_job: Option<JoinHandle<std::io::Result<()>>>,
    spawn_lock: SpawnLock,
    /// The steps the job has open.
    steps: Steps,
}

/// What a run is written to and controlled through, made by the shim.
pub(super) struct Channels<S> {
    pub writer: RunWriter,
    pub sink: S,
    pub reaper: Reaper,
    pub control: mpsc::UnboundedReceiver<Control>,
}

impl<S: Sink> Supervisor<S> {
    pub(super) fn new(run_id: RunId, spec: Spec, channels: Channels<S>, timing: Timing) -> Self {
        let Channels { writer, sink, reaper, control } = channels;
        let (cancel, sync_job, steps, spawn_lock) = (None, None, Steps::default(), SpawnLock::default());
        Supervisor { run_id, spec, writer, sink, reaper, control, timing, cancel, sync_job, spawn_lock, steps }
    }

    pub(super) async fn run(mut self) {
        self.record_status(StatusChange { status: Some(RunStatus::Queued), ..Default::default() }, false);
        if let Ok(Control::Cancel { reason }) = self.control.try_recv() {
            let change =
                StatusChange { status: Some(RunStatus::Cancelled), reason: Some(reason), ..Default::default() };
            return self.finish(change).await;
        }
        if let Some(cwd) = &self.spec.cwd
            && !std::path::Path::new(cwd).is_dir()
        {
            let change = StatusChange {
                status: Some(RunStatus::Failed),
                exit_code: Some(126),
                reason: Some(format!("cannot start: working directory {cwd:?} does not exist")),
                ..Default::default()
            };
            return self.finish(change).await;
        }
        let started = match child::spawn(&self.run_id, &self.spec, &self.spawn_lock) {
            Ok(started) => started,
            Err(error) => {
                tracing::warn!(run_id = %self.run_id, %error, "job could not be started");
                // Shell conventions: 127 command not found, 126 not executable.
                let code = match error.kind() {
                    std::io::ErrorKind::NotFound => 127,
                    _ => 126,
                };
                let program = self.spec.argv.first().cloned().unwrap_or_default();
                let change = StatusChange {
                    status: Some(RunStatus::Failed),
                    exit_code: Some(code),
                    reason: Some(format!("cannot start {program:?}: {error}")),
                    ..Default::default()
                };
                return self.finish(change).await;
            }
        };
        let change = self.supervise(started).await;
        self.finish(change).await;
    }

    async fn supervise(&mut self, started: Started) -> StatusChange {
        let Started { pgid, streams, events } = started;
        self.reaper.watch(pgid);
        let mut events = EventLines::new(events);
        let pid = pgid.as_raw() as u32;
        tracing::info!(run_id = %self.run_id, pid, pty = self.spec.pty.is_some(), "run started");
        self.record_status(
            StatusChange { status: Some(RunStatus::Running), pid: Some(pid), ..Default::default() },
            false,
        );
        let delivered = self.sink.delivered();
        let mut readers = match streams {
            Streams::Pipes { stdout, stderr } => output::Readers::new(
                vec![(Box::new(stdout), EventType::Stdout), (Box::new(stderr), EventType::Stderr)],
                self.timing.pacing,
                delivered,
            ),
            Streams::Pty(reader) => {
                output::Readers::new(vec![(Box::new(reader), EventType::Stdout)], self.timing.pacing, delivered)
            }
        };

        let mut outcome: Option<Outcome> = None;
        let mut drain_deadline: Option<Instant> = None;
        let mut fsync = tokio::time::interval(self.timing.fsync_interval);
        fsync.set_missed_tick_behavior(MissedTickBehavior::Delay);
        while outcome.is_none() || !readers.is_done() || !events.is_done() {
            let kill_at = self.cancel.as_ref().filter(|c| !c.killed).map(|c| c.kill_at);
            tokio::select! {
                // The events channel first, so that output is never taken in
                // a step that a line already waiting should have changed
                // (and `on_events_line` reads the output pipes before
                // applying it).
                biased;
                got = events.next(), if !events.is_done() => {
                    if let Some(got) = got {
                        self.on_events_line(got, &mut readers);
                    }
                }
                // None when the last stream ends: the loop condition then
                // sees it at once (a `Some(out)` pattern would disable this
                // branch and leave the loop waiting on the next fsync tick).
                out = readers.next(), if !readers.is_done() => {
                    if let Some(out) = out {
                        self.record_output([out]);
                    }
                }
                status = self.reaper.wait(), if outcome.is_none() => {
                    outcome = Some(match status {
                        Ok(outcome) => outcome,
                        Err(error) => {
                            tracing::error!(run_id = %self.run_id, %error, "waiting for the job failed");
                            Outcome::Unknown
                        }
                    });
                    drain_deadline = Some(Instant::now() + self.timing.drain_timeout);
                }
                Some(ctl) = self.control.recv() => {
                    if outcome.is_some() {
                        // The job already exited on its own: its outcome
                        // stands; only stop waiting for leftover output.
                        tracing::info!(run_id = %self.run_id, "cancel after the job exited: ending leftovers");
                        let _ = child::signal_group(pgid, Signal::SIGTERM);
                        self.record_output(readers.stop());
                        events.stop();
                    } else {
                        self.on_control(ctl, pgid);
                    }
                }
                _ = sleep_until(kill_at) => self.kill(pgid),
                _ = sleep_until(drain_deadline) => {
                    tracing::info!(run_id = %self.run_id, "output still open after the job exited; closing it");
                    self.record_output(readers.stop());
                    events.stop();
                    drain_deadline = None;
                }
                _ = fsync.tick() => self.start_sync(),
            }
        }
        let outcome = outcome.unwrap_or(Outcome::Unknown);
        if self.cancel.as_ref().is_some_and(|c| !c.killed) {
            // The job is gone; anything still in its group ignored SIGTERM.
            let _ = child::signal_group(pgid, Signal::SIGKILL);
        }
        let change = self.final_status(outcome);
        let left_open = self.steps.close_all(change.status == Some(RunStatus::Succeeded));
        if !left_open.is_empty() {
            self.record_steps(left_open);
        }
        change
    }

    /// A line from the job's events channel. Output already in the pipes
    /// (or read and held back) was written before it: journaled first, in
    /// the step it was written in.
    fn on_events_line(&mut self, got: Got, readers: &mut output::Readers) {
        let before = self.steps.rejected();
        let events = match got {
            Got::Line(line) => self.steps.line(&line),
            Got::Oversized => self.steps.oversized(),
        };
        for _ in before..self.steps.rejected() {
            self.sink.bad_event_line();
        }
        if !events.is_empty() {
            self.record_output(readers.ready_now());
            self.record_steps(events);
        }
    }

    /// Journals step and progress events as one batch; output from now on
    /// belongs to the step then open.
    fn record_steps(&mut self, events: Vec<StepEvent>) {
        for StepEvent { kind, payload } in events {
            self.writer.append(Payload::Structured { kind, payload });
        }
        self.writer.set_step(self.steps.current());
        self.publish(false);
    }

    /// Journals output as one batch and publishes it.
    fn record_output(&mut self, outputs: impl IntoIterator<Item = Output>) {
        for Output { stream, pieces } in outputs {
            for piece in pieces {
                self.writer.append_output(stream, &piece);
            }
        }
        self.publish(false);
    }

    fn on_control(&mut self, ctl: Control, pgid: nix::unistd::Pid) {
        let Control::Cancel { reason } = ctl;
        if self.cancel.is_some() {
            return; // Cancelling twice is harmless.
        }
        tracing::info!(run_id = %self.run_id, %reason, grace = ?self.timing.grace_period, "cancelling run");
        if let Err(error) = child::signal_group(pgid, Signal::SIGTERM) {
            tracing::warn!(run_id = %self.run_id, %error, "SIGTERM to the run's process group failed");
        }
        self.cancel = Some(Cancel { reason, kill_at: Instant::now() + self.timing.grace_period, killed: false });
    }

    fn kill(&mut self, pgid: nix::unistd::Pid) {
        tracing::info!(run_id = %self.run_id, "grace period over; sending SIGKILL to the process group");
        if let Err(error) = child::signal_group(pgid, Signal::SIGKILL) {
            tracing::warn!(run_id = %self.run_id, %error, "SIGKILL to the run's process group failed");
        }
        if let Some(c) = &mut self.cancel {
            c.killed = true;
        }
    }

    fn final_status(&self, outcome: Outcome) -> StatusChange {
        let (exit_code, signal) = match outcome {
            Outcome::Exited(code) => (Some(code), None),
            Outcome::Signaled(sig) => (None, Some(sig)),
            Outcome::Unknown => (None, None),
        };
        let (status, reason) = match (&self.cancel, outcome) {
            (Some(c), _) if c.killed => (
                RunStatus::Cancelled,
                format!("{}; SIGKILL after the {:?} grace period", c.reason, self.timing.grace_period),
            ),
            (Some(c), _) => (RunStatus::Cancelled, c.reason.clone()),
            (None, Outcome::Exited(0)) => (RunStatus::Succeeded, "exited with code 0".to_owned()),
            (None, Outcome::Exited(code)) => (RunStatus::Failed, format!("exited with code {code}")),
            (None, Outcome::Signaled(sig)) => (
                RunStatus::Failed,
                format!("killed by signal {sig} ({})", crate::event::signal_name(sig).unwrap_or_default()),
            ),
            (None, Outcome::Unknown) => {
                (RunStatus::Failed, "exit status unknown: waiting for the job failed".to_owned())
            }
        };
        StatusChange { status: Some(status), exit_code, signal, reason: Some(reason), pid: None }
    }

    fn record_status(&mut self, change: StatusChange, last: bool) {
        self.writer.append(Payload::Status(change));
        self.publish(last);
    }

    fn publish(&mut self, last: bool) {
        let batch = self.writer.finish_batch(last);
        self.sink.written(batch, &self.writer);
    }

    /// Starts an fsync on a blocking thread unless one is still running;
    /// a finished one's failure degrades the journal.
    fn start_sync(&mut self) {
        if self.sync_job.as_ref().is_some_and(|j| !j.is_finished()) {
            return;
        }
        if let Some(job) = self.sync_job.take()
            && let Some(Ok(Err(error))) = job.now_or_never()
        {
            self.writer.sync_failed(error);
        }
        if let Some(file) = self.writer.take_sync_job() {
            self.sync_job = Some(tokio::task::spawn_blocking(move || file.sync_data()));
        }
    }

    /// Waits for the fsync in flight; its failure degrades the journal.
    async fn wait_sync(&mut self) {
        if let Some(job) = self.sync_job.take() {
            match job.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => self.writer.sync_failed(error),
                Err(error) => tracing::error!(run_id = %self.run_id, %error, "journal fsync task failed"),
            }
        }
    }

    async fn finish(mut self, change: StatusChange) {
        let status = change.status;
        self.record_status(change, true);
        self.wait_sync().await;
        // On this task, not a blocking thread: nothing is left to read, and
        // a short run would otherwise start a thread for this one call.
        self.writer.sync_now();
        self.sink.done(&self.writer);
        tracing::info!(run_id = %self.run_id, status = ?status, last_seq = self.writer.last_seq(), "run finished");
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
