//! The shim's side of its socket: tells the attached daemon how far the
//! journal is written, takes cancels from it, and mirrors what it says of
//! delivery for output pacing.
//!
//! The supervisor only ever replaces a value in a `watch` (the latest mark
//! supersedes one not sent yet), so a daemon that is slow, stopped or gone
//! can never hold up the job. One daemon is attached at a time: a new
//! connection (a restarted daemon) replaces the old one.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::StreamExt as _;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio_util::codec::{FramedRead, LinesCodec};

use super::wire::{self, FromShim, MAX_EVENTS_BYTES, MAX_LINE, Mark, ToShim};
use crate::event::{Batch, Frame};
use crate::hub::Delivered;
use crate::journal::RunWriter;
use crate::run::supervisor::{Control, Sink};

/// Events a degraded journal could not keep, held for the attached
/// daemon's live readers, at most this much (the oldest go first: a
/// gap for live readers too, rather than unbounded memory).
const UNWRITTEN_MAX: usize = 8 * 1024 * 1024;

/// What the file lacks, waiting to be sent.
#[derive(Default)]
pub(super) struct Unwritten {
    frames: VecDeque<Frame>,
    bytes: usize,
    /// Where the file stopped: these frames come after all it holds.
    offset: u64,
}

impl Unwritten {
    fn push(&mut self, frames: Vec<Frame>, offset: u64) {
        self.offset = offset;
        for frame in frames {
            self.bytes += frame.bytes().len();
            self.frames.push_back(frame);
        }
        while self.bytes > UNWRITTEN_MAX {
            let Some(old) = self.frames.pop_front() else { break };
            self.bytes -= old.bytes().len();
        }
    }

    /// The next message's worth, as JSON strings, and where the file stopped.
    fn take(&mut self) -> (u64, Vec<String>) {
        let mut lines = Vec::new();
        let mut size = 0;
        while size < MAX_EVENTS_BYTES {
            let Some(frame) = self.frames.pop_front() else { break };
            self.bytes -= frame.bytes().len();
            size += frame.bytes().len();
            lines.push(frame.json.as_str().to_owned());
        }
        (self.offset, lines)
    }
}

pub(super) type Shared = Arc<Mutex<Unwritten>>;

/// The supervisor's end: a [`Sink`] that publishes marks.
pub(super) struct Link {
    marks: watch::Sender<Mark>,
    delivered: Arc<Delivered>,
    bad_lines: u64,
    unwritten: Shared,
}

impl Link {
    pub(super) fn new() -> (Link, watch::Receiver<Mark>, Arc<Delivered>, Shared) {
        let (marks, rx) = watch::channel(Mark::default());
        let delivered = Arc::<Delivered>::default();
        let unwritten = Shared::default();
        let link = Link { marks, delivered: delivered.clone(), bad_lines: 0, unwritten: unwritten.clone() };
        (link, rx, delivered, unwritten)
    }

    fn mark(&self, writer: &RunWriter, done: bool) -> Mark {
        let (seq, offset, degraded) = (writer.last_seq(), writer.offset(), writer.is_degraded());
        Mark { seq, offset, done, bad_lines: self.bad_lines, degraded }
    }
}

impl Sink for Link {
    fn written(&mut self, batch: Batch, writer: &RunWriter) {
        if batch.frames.is_empty() {
            return;
        }
        if writer.is_degraded() {
            // Kept while no daemon is attached too (one starting, or one
            // restarting): whoever attaches next can still serve them live.
            lock(&self.unwritten).push(batch.frames, writer.offset());
        }
        self.delivered.remote_written();
        self.marks.send_replace(self.mark(writer, false));
    }

    fn done(&mut self, writer: &RunWriter) {
        self.marks.send_replace(self.mark(writer, true));
    }

    fn bad_event_line(&mut self) {
        self.bad_lines += 1;
    }

    fn delivered(&self) -> Arc<Delivered> {
        self.delivered.clone()
    }
}

/// Who the shim is, for `hello`.
#[derive(Clone)]
pub(super) struct Identity {
    pub run_id: String,
    pub pid: u32,
}

/// Whether a daemon is attached, and whether it was sent the final mark:
/// what the shim waits for before it exits.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Attached {
    pub daemon: bool,
    pub told_done: bool,
}

impl Attached {
    /// Nothing more to tell anyone.
    pub(super) fn settled(&self) -> bool {
        !self.daemon || self.told_done
    }
}

/// Accepts daemons until the process exits; each new one replaces the last.
pub(super) async fn serve(
    listener: UnixListener,
    me: Identity,
    marks: watch::Receiver<Mark>,
    control: mpsc::UnboundedSender<Control>,
    delivered: Arc<Delivered>,
    attached: Arc<watch::Sender<Attached>>,
    unwritten: Shared,
) {
    let mut current: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(run_id = %me.run_id, %error, "accepting a daemon failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Some(old) = current.take() {
            old.abort();
        }
        tracing::info!(run_id = %me.run_id, "daemon attached");
        attached.send_replace(Attached { daemon: true, told_done: false });
        let session = session(stream, me.clone(), marks.clone(), control.clone(), delivered.clone(), unwritten.clone());
        let attached = attached.clone();
        current = Some(tokio::spawn(async move {
            let told_done = session.await;
            attached.send_replace(Attached { daemon: false, told_done });
        }));
    }
}

async fn session(
    stream: UnixStream,
    me: Identity,
    mut marks: watch::Receiver<Mark>,
    control: mpsc::UnboundedSender<Control>,
    delivered: Arc<Delivered>,
    unwritten: Shared,
) -> bool {
    let (rd, mut wr) = stream.into_split();
    let mut lines = FramedRead::new(rd, LinesCodec::new_with_max_length(MAX_LINE));
    let mark = *marks.borrow_and_update();
    let hello = FromShim::Hello { version: wire::VERSION, run_id: me.run_id.clone(), pid: me.pid, mark };
    if wr.write_all(&wire::line(&hello)).await.is_err() {
        return false;
    }
    let mut told_done = mark.done;
    while !told_done {
        tokio::select! {
            changed = marks.changed() => {
                if changed.is_err() {
                    break;
                }
                let mark = *marks.borrow_and_update();
                // What the file lacks goes first: the mark's status may be among it.
                loop {
                    let (offset, lines) = lock(&unwritten).take();
                    if lines.is_empty() {
                        break;
                    }
                    if wr.write_all(&wire::line(&FromShim::Events { offset, lines })).await.is_err() {
                        return false;
                    }
                }
                if wr.write_all(&wire::line(&FromShim::Mark { mark })).await.is_err() {
                    break;
                }
                told_done = mark.done;
            }
            line = lines.next() => match line {
                Some(Ok(line)) => match serde_json::from_str::<ToShim>(&line) {
                    Ok(ToShim::Cancel { reason }) => {
                        let _ = control.send(Control::Cancel { reason });
                    }
                    Ok(ToShim::Idle { subscribers }) => {
                        delivered.remote_idle(usize::try_from(subscribers).unwrap_or(usize::MAX));
                    }
                    Err(error) => tracing::warn!(run_id = %me.run_id, %error, "ignoring a bad line from the daemon"),
                },
                Some(Err(error)) => {
                    tracing::warn!(run_id = %me.run_id, %error, "daemon connection failed");
                    break;
                }
                None => break,
            },
        }
    }
    // Nobody reads now: output pacing must not wait for them.
    delivered.remote_idle(0);
    tracing::debug!(run_id = %me.run_id, told_done, "daemon session over");
    told_done
}

fn lock(u: &Shared) -> MutexGuard<'_, Unwritten> {
    // Plain data: a panic elsewhere cannot leave it half-updated.
    u.lock().unwrap_or_else(|p| p.into_inner())
}
