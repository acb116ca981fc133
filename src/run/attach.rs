//! The daemon's side of a run: attached to the run's shim over its socket,
//! it reads what the shim journaled (after each mark, from the page cache)
//! and publishes it to the hub, tells the table of status changes, passes
//! cancels on, and reports delivery back for output pacing. When the shim
//! dies without finishing, it closes the run `lost`, once the journal's
//! writer lock says nobody writes any more.
//!
//! One task per run, from launch (or from a daemon's start, for a run it
//! takes back) until the run's final status is published, or until the
//! daemon detaches at shutdown, leaving the shim to carry on alone.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::io::AsyncWriteExt as _;
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, LinesCodec};
use tokio_util::sync::CancellationToken;

use super::child;
use super::shim::record::Record;
use super::shim::wire::{self, ATTACHES_TO, FromShim, Launch, MAX_LINE, Mark, ToShim};
use super::supervisor::Control;
use super::tail::Tail;
use crate::event::{Batch, Event, RunStatus, StatusChange};
use crate::hub::Publisher;
use crate::journal::{Journal, WriterLock};
use crate::run_id::RunId;

/// Who learns what happens to a run (the run table): just before the hub
/// publishes the event, so that a subscriber that saw a run end finds it
/// ended in `status` and `GET /runs` too; `seq` is the event's, so the row
/// counts it though the hub does not hold it yet.
pub(crate) trait Observer: Send + Sync + 'static {
    /// A status event `seq` is about to be published.
    fn on_status(&self, run: &RunId, seq: u64, change: &StatusChange);
    /// Lines the job's events channel dropped (see `steps`).
    fn on_bad_event_lines(&self, _n: u64) {}
}

/// How long a shim that closed its socket gets to let go of the journal.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// How often a live shim that does not answer is tried again.
const RETRY: Duration = Duration::from_secs(1);
/// How long a connected shim has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) struct Attach<O> {
    pub run_id: RunId,
    pub journal: Journal,
    pub publisher: Publisher,
    pub observer: O,
    pub control: mpsc::UnboundedReceiver<Control>,
    /// Cancelled at a shutdown that leaves runs running.
    pub detach: CancellationToken,
    pub tail: Tail,
    /// The last seq read from the file.
    pub read_seq: u64,
    /// The job's process group, once known.
    pub pgid: Option<u32>,
    /// The shim, when this daemon started it (so it is ours to reap).
    pub shim: Option<tokio::process::Child>,
    pub socket: Option<PathBuf>,
}

/// How a session with the shim ended.
enum End {
    /// The final status is published.
    Done,
    /// The daemon shuts down and leaves the run to its shim.
    Detached,
    /// The connection is gone (the shim died, or is unreachable).
    Gone,
}

/// What the session keeps between messages.
#[derive(Default)]
struct Session {
    bad_lines: u64,
    /// The first hello's count of dropped lines was counted elsewhere.
    counted_before: bool,
    awaiting_idle: bool,
    cancel: Option<String>,
    shim_pid: Option<u32>,
}

impl<O: Observer> Attach<O> {
    /// A new run: start its shim, then follow it.
    pub(super) async fn launch(mut self, launch: Launch) {
        match super::shim::start::start(&launch).await {
            Ok(child) => {
                self.shim = Some(child);
                self.socket = Some(launch.socket);
                self.follow(Session::default()).await;
            }
            Err(error) => {
                tracing::error!(run_id = %self.run_id, %error, "the run's supervisor did not start");
                let change = StatusChange {
                    status: Some(RunStatus::Failed),
                    exit_code: Some(126),
                    reason: Some(format!("cannot start the run's supervisor (runtap shim): {error}")),
                    ..StatusChange::default()
                };
                self.close(change).await;
            }
        }
    }

    /// A run a previous daemon started, whose shim holds its journal.
    /// The lines its events channel dropped before are that daemon's count.
    pub(super) async fn reattach(mut self) {
        self.socket = Record::read(&self.journal.run_dir(&self.run_id)).map(|r| r.socket);
        self.follow(Session { counted_before: true, ..Session::default() }).await;
    }

    async fn follow(mut self, mut session: Session) {
        loop {
            if let Some(stream) = self.connect().await {
                match self.session(stream, &mut session).await {
                    End::Done | End::Detached => return self.reap(),
                    End::Gone => {}
                }
            }
            if self.detach.is_cancelled() {
                return;
            }
            if self.writer_gone().await {
                return self.shim_died(session.shim_pid).await;
            }
            // The shim lives but does not answer (stopped, or its socket
            // was removed): try again, for as long as it holds the run.
            tokio::select! {
                _ = self.detach.cancelled() => return,
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }

    async fn connect(&self) -> Option<UnixStream> {
        let path = self.socket.as_ref()?;
        match UnixStream::connect(path).await {
            Ok(stream) => Some(stream),
            Err(error) => {
                tracing::debug!(run_id = %self.run_id, %error, path = %path.display(), "cannot reach the run's shim");
                None
            }
        }
    }

    async fn session(&mut self, stream: UnixStream, s: &mut Session) -> End {
        let (rd, mut wr) = stream.into_split();
        let mut lines = FramedRead::new(rd, LinesCodec::new_with_max_length(MAX_LINE));
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, lines.next()).await {
            Ok(Some(Ok(line))) => serde_json::from_str::<FromShim>(&line),
            _ => return End::Gone,
        };
        let mark = match hello {
            Ok(FromShim::Hello { version, run_id, pid, mark }) if run_id == self.run_id.as_str() => {
                if !ATTACHES_TO.contains(&version) {
                    // Never kill what we cannot speak to: the run goes on,
                    // journaled; a daemon of a matching build takes it back.
                    tracing::error!(run_id = %self.run_id, version, supported = ?ATTACHES_TO,
                        "the run's shim speaks a protocol this daemon does not; leaving it alone");
                    return End::Detached;
                }
                s.shim_pid = Some(pid);
                if std::mem::take(&mut s.counted_before) {
                    s.bad_lines = mark.bad_lines;
                }
                mark
            }
            other => {
                tracing::error!(run_id = %self.run_id, reply = ?other.ok(), "the run's socket did not answer as its shim");
                return End::Gone;
            }
        };
        tracing::debug!(run_id = %self.run_id, shim_pid = ?s.shim_pid, seq = mark.seq, "attached to the run's shim");
        if let Some(reason) = s.cancel.clone()
            && send(&mut wr, &ToShim::Cancel { reason }).await
        {
            s.cancel = None;
        }
        if self.apply(mark, s) {
            return End::Done;
        }
        let delivered = self.publisher.delivered();
        loop {
            tokio::select! {
                biased;
                _ = self.detach.cancelled() => return End::Detached,
                line = lines.next() => {
                    let mark = match line.map(|l| l.map(|l| serde_json::from_str::<FromShim>(&l))) {
                        Some(Ok(Ok(FromShim::Mark { mark }))) => mark,
                        Some(Ok(Ok(FromShim::Events { offset, lines }))) => {
                            // What the file holds comes first.
                            if self.publish_to(Some(offset)) || self.publish_unwritten(lines) {
                                return End::Done;
                            }
                            continue;
                        }
                        Some(Ok(other)) => {
                            tracing::warn!(run_id = %self.run_id, line = ?other, "unexpected line from the run's shim");
                            continue;
                        }
                        Some(Err(_)) | None => return End::Gone,
                    };
                    if self.apply(mark, s) {
                        return End::Done;
                    }
                }
                Some(Control::Cancel { reason }) = self.control.recv() => {
                    if !send(&mut wr, &ToShim::Cancel { reason: reason.clone() }).await {
                        s.cancel = Some(reason);
                        return End::Gone;
                    }
                }
                () = std::future::poll_fn(|cx| delivered.poll_idle(cx)), if s.awaiting_idle => {
                    s.awaiting_idle = false;
                    let subscribers = u32::try_from(delivered.subscribers()).unwrap_or(u32::MAX);
                    if !send(&mut wr, &ToShim::Idle { subscribers }).await {
                        return End::Gone;
                    }
                }
            }
        }
    }

    /// Publishes what the journal gained up to `mark`; true once the run
    /// is over.
    fn apply(&mut self, mark: Mark, s: &mut Session) -> bool {
        if mark.bad_lines > s.bad_lines {
            self.observer.on_bad_event_lines(mark.bad_lines - s.bad_lines);
            s.bad_lines = mark.bad_lines;
        }
        let ended = self.publish_to(Some(mark.offset));
        s.awaiting_idle = true;
        if mark.degraded || self.read_seq < mark.seq {
            // Seqs handed out that the file does not hold: the shim's
            // writes failed. Live readers see the hole as a gap.
            self.journal.health.writer_degraded(&self.run_id);
        }
        if ended || !mark.done {
            return ended;
        }
        // Done, but the final status is not in the file: the journal is
        // degraded (a full disk); the state record has it.
        match self.journal.rescan_run(&self.run_id) {
            Ok(Some(run)) => self.publish_recorded_end(run),
            Ok(None) => {}
            Err(error) => tracing::error!(run_id = %self.run_id, %error, "cannot read the run's state record"),
        }
        true
    }

    /// Reads and publishes complete lines up to `upto` (the file's end
    /// with `None`); true if they held the final status.
    fn publish_to(&mut self, upto: Option<u64>) -> bool {
        match self.tail.read(upto) {
            Ok(read) => self.publish(read),
            Err(error) => {
                tracing::error!(run_id = %self.run_id, %error, "cannot read the run's journal");
                false
            }
        }
    }

    /// Publishes events the shim sent because its journal could not keep
    /// them (a full disk): live readers still get them.
    fn publish_unwritten(&mut self, lines: Vec<String>) -> bool {
        self.journal.health.writer_degraded(&self.run_id);
        let mut read = super::tail::Read::default();
        for line in lines {
            let Some(seq) = crate::journal::line_seq(line.as_bytes()).filter(|&seq| seq > self.read_seq) else {
                continue;
            };
            let frame = crate::event::Frame { seq, json: line.into() };
            if crate::event::EventType::of_line(frame.bytes()) == Some(crate::event::EventType::Status) {
                read.statuses.push(frame.clone());
            }
            read.frames.push(frame);
        }
        self.publish(read)
    }

    /// Tells the table of the status changes among the frames, then
    /// publishes them in one batch (see `Observer`); true if one was final.
    fn publish(&mut self, read: super::tail::Read) -> bool {
        let changes: Vec<(u64, StatusChange)> = read
            .statuses
            .iter()
            .filter_map(|f| Some((f.seq, serde_json::from_slice::<Event>(f.bytes()).ok()?.status_change()?)))
            .collect();
        let last = changes.iter().any(|(_, c)| c.status.is_some_and(RunStatus::is_final));
        if let Some(frame) = read.frames.last() {
            self.read_seq = frame.seq;
        }
        for (seq, change) in &changes {
            if change.status == Some(RunStatus::Running) {
                self.pgid = change.pid.or(self.pgid);
            }
            self.observer.on_status(&self.run_id, *seq, change);
        }
        self.publisher.publish(Batch { frames: read.frames, last });
        last
    }

    /// Publishes the final status that only the state record kept (the
    /// events file was full), rebuilt as an event.
    fn publish_recorded_end(&mut self, run: crate::journal::RecoveredRun) {
        let info = crate::run_info::RunInfo::recovered(run);
        let Some(event) = info.final_event() else { return };
        let Some(change) = event.status_change() else { return };
        self.observer.on_status(&self.run_id, event.seq, &change);
        if let Ok(json) = serde_json::to_string(&event) {
            let frame = crate::event::Frame { seq: event.seq, json: json.into() };
            self.publisher.publish(Batch { frames: vec![frame], last: true });
        }
    }

    /// Waits (bounded) for the journal's writer lock to be free: a shim
    /// that closed its socket is on its way out.
    async fn writer_gone(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + EXIT_GRACE;
        loop {
            match self.journal.try_writer_lock(&self.run_id) {
                Ok(WriterLock::Free(_)) => return true,
                Ok(WriterLock::Held) => {}
                Err(error) => {
                    tracing::error!(run_id = %self.run_id, %error, "cannot check the run's journal lock");
                    return false;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The shim is gone and the run has no final status: publish what it
    /// wrote, kill what is left of the job, and close the run `lost`.
    async fn shim_died(mut self, shim_pid: Option<u32>) {
        if self.publish_to(None) {
            return self.reap();
        }
        let mut why = String::new();
        if let Some(child) = &mut self.shim
            && let Ok(status) = child.wait().await
        {
            why = format!(" ({status})");
        }
        let pid = shim_pid.or_else(|| self.shim.as_ref().and_then(|c| c.id()));
        let pid = pid.or_else(|| Record::read(&self.journal.run_dir(&self.run_id)).map(|r| r.pid));
        let reason = match pid {
            Some(pid) => format!("supervisor died: runtap shim (pid {pid}) is gone{why}"),
            None => format!("supervisor died: the run's runtap shim is gone{why}"),
        };
        self.close(StatusChange { status: Some(RunStatus::Lost), reason: Some(reason), ..StatusChange::default() })
            .await;
    }

    /// Ends the run with `change`, written by the daemon itself (no shim
    /// writes it any more): the job's group is killed first.
    async fn close(mut self, change: StatusChange) {
        if let Some(pgid) = self.pgid {
            let _ = child::signal_group(nix::unistd::Pid::from_raw(pgid as i32), nix::sys::signal::Signal::SIGKILL);
        }
        if let Some(path) = &self.socket {
            let _ = std::fs::remove_file(path);
        }
        let closed = self.journal.rescan_run(&self.run_id).and_then(|run| match run {
            Some(mut run) => {
                // What the torn tail cut left, then the final status.
                if self.publish_to(Some(run.offset)) {
                    return Ok(None);
                }
                if run.status.is_final() {
                    self.publish_recorded_end(run);
                    return Ok(None);
                }
                self.journal.close_run(&mut run, change.clone()).map(Some)
            }
            None => Ok(None),
        });
        match closed {
            Ok(Some(batch)) => {
                let seq = batch.frames.last().map_or(0, |f| f.seq);
                self.observer.on_status(&self.run_id, seq, &change);
                self.publisher.publish(batch);
            }
            Ok(None) => {}
            Err(error) => tracing::error!(run_id = %self.run_id, %error, "cannot close the run's journal"),
        }
        self.reap();
    }

    /// A shim this daemon started is its child: it is waited for, not left a zombie.
    fn reap(&mut self) {
        if let Some(mut child) = self.shim.take() {
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
        }
    }
}

/// Writes one line to the shim; false if it is gone.
async fn send(wr: &mut OwnedWriteHalf, msg: &ToShim) -> bool {
    wr.write_all(&wire::line(msg)).await.is_ok()
}
