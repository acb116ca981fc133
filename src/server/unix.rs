//! The Unix socket: launch, subscribe, cancel, list, status (see
//! `protocol::unix`), served from the [`Runs`] the daemon hands in.
//!
//! Access is the socket file's permissions (mode 0660 or tighter, group =
//! the workers allowed to launch jobs); the peer's uid is logged. Each
//! connection has a reader (requests, in order) and one writer task fed by a
//! bounded queue; subscriptions run as their own tasks and write through it.
//! A slow local reader never lags out: its feed catches up from the journal,
//! so `runtap run` and `logs -f` lose nothing.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::codec::{AnyDelimiterCodec, AnyDelimiterCodecError, FramedRead};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::backend::Source;
use super::outbox::{Framing, Outbox};
use crate::feed::{Delivery, Feed, FeedItem};
use crate::protocol::unix::{LaunchRequest, MAX_REQUEST_BYTES, Request, Response};
use crate::run_id::RunId;
use crate::run_info::{CancelError, RunInfo};

/// The runs the socket serves. The daemon implements it over its run table.
pub(crate) trait Runs: Send + Sync + 'static {
    /// Starts a run (with `id`, or one the daemon makes).
    fn launch(&self, id: Option<RunId>, req: LaunchRequest) -> Result<RunId, Refusal>;
    fn cancel(&self, run: &RunId, reason: String) -> Result<RunInfo, CancelError>;
    fn get(&self, run: &RunId) -> Option<RunInfo>;
    /// All runs, oldest first.
    fn list(&self) -> Vec<RunInfo>;
    /// Where subscriptions read.
    fn source(&self) -> Source;
}

/// A launch that was not started: the error `code` the socket answers
/// with (`run-active`, `too-many-runs`, ...) and a message for people.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub code: &'static str,
    pub message: String,
}

/// Subscriptions one connection may hold at once (each can pin a delivery
/// of history in memory while its reader is slow).
const MAX_SUBSCRIPTIONS: usize = 64;
/// Lines (or line batches) queued for one connection's writer.
const WRITE_QUEUE: usize = 32;

/// Send buffer asked for each connection (the kernel default is ~208 KiB):
/// a journal batch of a fast job (up to 1 MiB) then goes out in one
/// `writev` instead of one per ~208 KiB the client has read, each after a
/// wake-up. 1 GiB through `runtap run`: daemon context switches 20 600 ->
/// 14 000, the client's 7 100 -> 3 900.
const SEND_BUFFER: usize = 2 * 1024 * 1024;

/// Best effort: above `net.core.wmem_max` the kernel caps it, and a failure
/// only leaves the default.
fn set_send_buffer(stream: &UnixStream, bytes: usize) {
    let _ = nix::sys::socket::setsockopt(stream, nix::sys::socket::sockopt::SndBuf, &bytes);
}

/// What a connection's writer sends: a control line, or journaled frames
/// sent from the shared batch buffers as they are, one line each.
enum Out {
    Line(Bytes),
    Frames(Delivery),
}

impl From<Vec<u8>> for Out {
    fn from(line: Vec<u8>) -> Self {
        Out::Line(Bytes::from(line))
    }
}

/// The socket file; removed when dropped (daemon shutdown).
#[derive(Debug)]
pub(crate) struct SocketGuard {
    path: PathBuf,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_file(&self.path)
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), %error, "could not remove socket file");
        }
    }
}

/// Binds the socket with `mode`, replacing a stale file but never a live daemon's.
pub(crate) fn bind(path: &Path, mode: u32) -> io::Result<(UnixListener, SocketGuard)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by a running daemon", path.display()),
                ));
            }
            tracing::info!(path = %path.display(), "replacing stale socket file");
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    let guard = SocketGuard { path: path.to_owned() };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok((listener, guard))
}

/// Accepts connections until `shutdown`.
pub(crate) async fn serve(
    listener: UnixListener,
    runs: Arc<dyn Runs>,
    stop_accepting: CancellationToken,
    stop_connections: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let stream = tokio::select! {
            _ = stop_accepting.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(%error, "unix socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        set_send_buffer(&stream, SEND_BUFFER);
        let uid = stream.peer_cred().ok().map(|c| c.uid());
        tracing::debug!(peer_uid = ?uid, "unix connection");
        let conn = Connection { runs: runs.clone(), uid, subs: HashMap::new(), tasks: JoinSet::new() };
        tracker.spawn(conn.serve(stream, stop_connections.clone()));
    }
}

struct Connection {
    runs: Arc<dyn Runs>,
    uid: Option<u32>,
    /// Live subscriptions by run, so `unsubscribe` can stop one.
    subs: HashMap<RunId, AbortHandle>,
    /// Subscription tasks; dropping the set (connection gone) aborts them.
    tasks: JoinSet<()>,
}

impl Connection {
    async fn serve(mut self, stream: UnixStream, shutdown: CancellationToken) {
        let (read, write) = stream.into_split();
        let (tx, rx) = mpsc::channel::<Out>(WRITE_QUEUE);
        let writer = tokio::spawn(write_loop(write, rx));
        let codec = AnyDelimiterCodec::new_with_max_length(b"\n".to_vec(), Vec::new(), MAX_REQUEST_BYTES);
        let mut lines = FramedRead::new(read, codec);
        loop {
            let line = tokio::select! {
                _ = shutdown.cancelled() => break,
                line = lines.next() => line,
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => continue,
            };
            let answer = match line {
                None => break,
                Some(Ok(line)) if line.trim_ascii().is_empty() => continue,
                Some(Ok(line)) => self.handle(&line, &tx),
                Some(Err(AnyDelimiterCodecError::MaxChunkLengthExceeded)) => {
                    let msg = format!("request line over {MAX_REQUEST_BYTES} bytes");
                    let _ = tx.send(Response::error("message-too-large", msg).to_line().into()).await;
                    break;
                }
                Some(Err(AnyDelimiterCodecError::Io(error))) => {
                    tracing::debug!(peer_uid = ?self.uid, %error, "unix connection read failed");
                    break;
                }
            };
            if let Some(answer) = answer
                && tx.send(answer.to_line().into()).await.is_err()
            {
                break;
            }
        }
        // EOF from the peer ends its subscriptions too: a peer that is gone
        // cannot be told apart from one that half-closed, and a subscription
        // to a run that never starts would otherwise wait forever.
        self.tasks.shutdown().await;
        drop(tx);
        let _ = writer.await;
    }

    /// Answers one request line; `None` when the answer is sent elsewhere.
    fn handle(&mut self, line: &[u8], tx: &mpsc::Sender<Out>) -> Option<Response> {
        let request: Request = match serde_json::from_slice(line) {
            Ok(r) => r,
            Err(e) => return Some(Response::error("bad-request", format!("malformed request: {e}"))),
        };
        match request {
            Request::Launch(req) => Some(self.launch(req)),
            Request::Subscribe { run_id, since, follow } => {
                let id = match RunId::parse(&run_id) {
                    Ok(id) => id,
                    Err(e) => return Some(bad_run_id(&run_id, e)),
                };
                if let Some(old) = self.subs.remove(&id) {
                    old.abort();
                }
                self.subs.retain(|_, h| !h.is_finished());
                if self.subs.len() >= MAX_SUBSCRIPTIONS {
                    let msg = format!("at most {MAX_SUBSCRIPTIONS} subscriptions per connection");
                    return Some(Response::error("too-many-subscriptions", msg));
                }
                let Source { history, hub } = self.runs.source();
                let feed = Feed::new(history, hub, id.clone(), since, follow);
                let hello = Response::Subscribed { run_id: id.to_string(), since };
                let handle = self.tasks.spawn(stream_feed(feed, hello, tx.clone()));
                self.subs.insert(id, handle);
                None
            }
            Request::Unsubscribe { run_id } => {
                let id = match RunId::parse(&run_id) {
                    Ok(id) => id,
                    Err(e) => return Some(bad_run_id(&run_id, e)),
                };
                if let Some(old) = self.subs.remove(&id) {
                    old.abort();
                }
                Some(Response::Unsubscribed { run_id })
            }
            Request::Cancel { run_id, reason } => {
                let id = match RunId::parse(&run_id) {
                    Ok(id) => id,
                    Err(e) => return Some(bad_run_id(&run_id, e)),
                };
                let reason = reason.unwrap_or_else(|| "cancelled by request".into());
                tracing::info!(run_id = %id, peer_uid = ?self.uid, %reason, "cancel requested");
                Some(match self.runs.cancel(&id, reason) {
                    Ok(run) => Response::Cancelling { run: Box::new(run) },
                    Err(CancelError::NotFound(_)) => not_found(&id),
                    Err(CancelError::Finished(run)) => {
                        let message = run.finished_message();
                        Response::Error { code: "finished".into(), message, run_id: Some(run_id), run: Some(run) }
                    }
                })
            }
            Request::Status { run_id } => Some(match RunId::parse(&run_id) {
                Err(e) => bad_run_id(&run_id, e),
                Ok(id) => match self.runs.get(&id) {
                    Some(run) => Response::Run { run: Box::new(run) },
                    None => not_found(&id),
                },
            }),
            Request::List => Some(Response::Runs { runs: self.runs.list() }),
        }
    }

    fn launch(&self, req: LaunchRequest) -> Response {
        let id = match req.run_id.as_deref().map(RunId::parse).transpose() {
            Ok(id) => id,
            Err(e) => return bad_run_id(req.run_id.as_deref().unwrap_or_default(), e),
        };
        match self.runs.launch(id, req) {
            Ok(id) => {
                tracing::info!(run_id = %id, peer_uid = ?self.uid, "run launched");
                Response::Launched { run_id: id.to_string() }
            }
            Err(Refusal { code, message }) => {
                tracing::info!(peer_uid = ?self.uid, code, error = %message, "launch refused");
                Response::error(code, message)
            }
        }
    }
}

fn bad_run_id(raw: &str, e: crate::run_id::RunIdError) -> Response {
    let code = if raw.is_empty() { "missing-run-id" } else { "bad-request" };
    Response::error(code, format!("invalid run ID {raw:?}: {e}"))
}

fn not_found(id: &RunId) -> Response {
    Response::Error {
        code: "not-found".into(),
        message: format!("no run {id}"),
        run_id: Some(id.to_string()),
        run: None,
    }
}

/// Writes whatever is queued for the connection with as few `writev`
/// calls as it takes: frames go out straight from the journal's batch
/// buffers (the same outbox as a WebSocket's, framed as lines).
async fn write_loop(write: tokio::net::unix::OwnedWriteHalf, mut rx: mpsc::Receiver<Out>) {
    let mut outbox = Outbox::new(Framing::Lines);
    while let Some(first) = rx.recv().await {
        queue(&mut outbox, first);
        while let Ok(more) = rx.try_recv() {
            queue(&mut outbox, more);
        }
        while !outbox.is_empty() {
            if outbox.write_to(&write).is_err() || (!outbox.is_empty() && write.writable().await.is_err()) {
                return;
            }
        }
    }
}

fn queue(outbox: &mut Outbox, out: Out) {
    match out {
        Out::Line(line) => outbox.push_raw(line),
        Out::Frames(delivery) => {
            let (batches, after) = delivery.into_parts();
            for batch in batches {
                outbox.push_batch(batch, after, 0);
            }
        }
    }
}

/// Sends a subscription's frames, as lines, until the run ends.
async fn stream_feed(mut feed: Feed, hello: Response, tx: mpsc::Sender<Out>) {
    if tx.send(hello.to_line().into()).await.is_err() {
        return;
    }
    loop {
        let item = match feed.next().await {
            Ok(item) => item,
            Err(error) => {
                tracing::warn!(run_id = %feed.run_id(), %error, "reading history failed");
                let _ = tx.send(Response::error("journal", error.to_string()).to_line().into()).await;
                return;
            }
        };
        let out = match item {
            FeedItem::Frames(delivery) => Out::Frames(delivery),
            FeedItem::Gap { from, to } => Response::error(
                "journal-gap",
                format!("events {from}..={to} of run {} are missing from its degraded journal", feed.run_id()),
            )
            .to_line()
            .into(),
            FeedItem::End => {
                let end = Response::End { run_id: feed.run_id().to_string(), last_seq: feed.last_seq() };
                let _ = tx.send(end.to_line().into()).await;
                return;
            }
        };
        if tx.send(out).await.is_err() {
            return;
        }
    }
}
