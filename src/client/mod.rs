//! The CLI's side of the Unix socket: `run`, `logs`, `cancel`, `ps`; and of
//! the network for `logs`, `cancel` and `ps` with `--url` (`remote`).
//!
//! Exit codes of `runtap run`: the job's own exit code; 128+N if a signal N
//! killed it; 130 if it was cancelled before it started; 125 if runtap
//! itself failed (daemon unreachable, launch refused, connection lost and
//! the daemon not back within a minute).
//!
//! - this file: the connection, reading lines where they were read.
//! - `decode`: output events unescaped straight into the sink.
//! - `sink`: the job's output, written to stdout and stderr in big pieces.
//! - `follow`: a subscription that reconnects across a daemon restart.
//! - `commands`: the four commands.
//! - `remote`: `logs`, `ps`, `cancel` over HTTP/WebSocket; `http`: its URL,
//!   connections (TLS for `https://`), requests.
//! - `report`: `step` and `progress`, written to the job's events channel.

mod commands;
mod decode;
mod follow;
mod http;
pub mod remote;
mod report;
mod sink;

use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

pub use commands::{RunOptions, cancel, exit_code, logs, ps, ps_table, run};
pub use remote::{Remote, RemoteArgs};
pub use report::{StepReport, progress, step};
pub use sink::OutputSink;

use crate::event::Event;
use crate::protocol::unix::{Request, Response};

/// Exit code when runtap itself fails (as `env` and container runtimes do).
pub const EXIT_RUNTAP_ERROR: i32 = 125;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot connect to the runtap daemon at {}: {error} (is `runtap daemon` running? set --socket or RUNTAP_SOCKET)",
        .path.display()
    )]
    Connect { path: PathBuf, error: std::io::Error },
    /// The daemon did not come back after the connection was lost.
    #[error(
        "cannot reconnect to the runtap daemon at {} (tried for {}s): {error} (is `runtap daemon` running? set --socket or RUNTAP_SOCKET)",
        .path.display(), .tried.as_secs()
    )]
    Reconnect { path: PathBuf, tried: std::time::Duration, error: String },
    /// The cause is in the message, not a `source`: a chain would repeat it.
    #[error("daemon connection: {0}")]
    Io(std::io::Error),
    /// Reading from or writing to the daemon's socket failed (`Io` is
    /// also this process's stdout and stderr).
    #[error("daemon connection: {0}")]
    Socket(std::io::Error),
    #[error("the daemon closed the connection")]
    Closed,
    #[error("unexpected answer from the daemon: {0}")]
    Protocol(String),
    #[error("{message}")]
    Refused { code: String, message: String },
    /// The command was used where or how it cannot work.
    #[error("{0}")]
    Usage(String),
    /// A daemon or gateway over the network could not be reached, or gave
    /// up (its host is offline, the stream broke).
    #[error("{0}")]
    Unreachable(String),
}

impl ClientError {
    /// The connection to the daemon ended or broke: what a subscription
    /// reconnects after (see `follow`).
    pub(super) fn is_lost(&self) -> bool {
        matches!(self, ClientError::Closed | ClientError::Socket(_))
    }
}

impl From<std::io::Error> for ClientError {
    fn from(error: std::io::Error) -> Self {
        ClientError::Io(error)
    }
}

/// One line from the daemon.
pub enum Line {
    Event(Box<Event>),
    Control(Response),
}

pub struct Client {
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    /// Bytes read from the daemon; `buf[start..]` is not yet handed out.
    /// Lines are parsed where they were read, with no copy.
    buf: Vec<u8>,
    start: usize,
}

/// Socket read size: big reads let a client that fell behind catch up in
/// few syscalls and write its output in big pieces.
const READ_BUFFER: usize = 1024 * 1024;

/// What `Client::next_streamed` yields.
pub enum Streamed {
    /// An output event, written to the [`OutputSink`]: its `seq`.
    Output(u64),
    /// A status event.
    Event(Box<Event>),
    Control(Response),
}

impl Client {
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream =
            UnixStream::connect(path).await.map_err(|error| ClientError::Connect { path: path.to_owned(), error })?;
        let (r, w) = stream.into_split();
        Ok(Client { reader: r, writer: w, buf: Vec::with_capacity(READ_BUFFER), start: 0 })
    }

    pub async fn send(&mut self, req: &Request) -> Result<(), ClientError> {
        let mut line = serde_json::to_vec(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.writer.write_all(&line).await.map_err(ClientError::Socket)?;
        Ok(())
    }

    /// The next line; events are recognised by their leading `runId` field.
    pub async fn next(&mut self) -> Result<Line, ClientError> {
        let line = self.next_line().await?;
        if line.starts_with(br#"{"runId""#) {
            Ok(Line::Event(Box::new(serde_json::from_slice(line).map_err(|e| bad_line(e, line))?)))
        } else {
            Ok(Line::Control(serde_json::from_slice(line).map_err(|e| bad_line(e, line))?))
        }
    }

    /// Like `next`, but output events go straight to `sink`: their data is
    /// unescaped into the sink's buffer, with no `Event` built per chunk.
    /// The sink is flushed whenever the client is about to wait for the
    /// daemon, so output is as live as it arrives and as batched as it can be.
    pub async fn next_streamed(&mut self, sink: &mut OutputSink) -> Result<Streamed, ClientError> {
        if !self.has_line() {
            sink.flush()?;
        }
        let line = self.next_line().await?;
        if !line.starts_with(br#"{"runId""#) {
            return Ok(Streamed::Control(serde_json::from_slice(line).map_err(|e| bad_line(e, line))?));
        }
        decode::into_sink(line, sink)
    }

    fn has_line(&self) -> bool {
        memchr::memchr(b'\n', &self.buf[self.start..]).is_some()
    }

    /// The next line, without its newline, borrowed from the read buffer.
    async fn next_line(&mut self) -> Result<&[u8], ClientError> {
        let mut scanned = self.start;
        loop {
            if let Some(nl) = memchr::memchr(b'\n', &self.buf[scanned..]) {
                let line = self.start..scanned + nl;
                self.start = scanned + nl + 1;
                return Ok(&self.buf[line]);
            }
            if self.start == self.buf.len() {
                self.buf.clear();
                self.start = 0;
            }
            scanned = self.buf.len();
            if self.start > 0 && self.buf.capacity() - self.buf.len() < READ_BUFFER / 4 {
                // Move the partial line to the front instead of growing.
                self.buf.drain(..self.start);
                scanned -= self.start;
                self.start = 0;
            }
            self.buf.reserve(READ_BUFFER / 4);
            if self.reader.read_buf(&mut self.buf).await.map_err(ClientError::Socket)? == 0 {
                return Err(ClientError::Closed);
            }
        }
    }
    /// Sends a request and returns its control answer; `error` answers become `Refused`.
    pub async fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        self.send(req).await?;
        loop {
            match self.next().await? {
                Line::Event(_) => continue,
                Line::Control(Response::Error { code, message, .. }) => {
                    return Err(ClientError::Refused { code, message });
                }
                Line::Control(r) => return Ok(r),
            }
        }
    }
}

fn bad_line(e: serde_json::Error, line: &[u8]) -> ClientError {
    ClientError::Protocol(format!("{e}: {}", String::from_utf8_lossy(line)))
}
