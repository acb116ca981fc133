//! The CLI's side of the Unix socket: `run`, `logs`, `cancel`, `ps`.
//!
//! Exit codes of `runtap run`: the job's own exit code; 128+N if a signal N
//! killed it; 130 if it was cancelled before it started; 125 if runtap
//! itself failed (daemon unreachable, launch refused, connection lost).

use std::io::Write;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserializer;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::event::{Encoding, Event, EventType, RunStatus};
use crate::protocol::{LaunchRequest, Request, Response};
use crate::run::RunInfo;

/// Exit code when runtap itself fails (as `env` and container runtimes do).
pub const EXIT_RUNTAP_ERROR: i32 = 125;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot connect to the runtap daemon at {path}: {source} (is `runtap daemon` running? set --socket or RUNTAP_SOCKET)"
    )]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("daemon connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("the daemon closed the connection")]
    Closed,
    #[error("unexpected answer from the daemon: {0}")]
    Protocol(String),
    #[error("{message}")]
    Refused { code: String, message: String },
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
    /// An output event, written to the [`OutputSink`].
    Output,
    /// A status event.
    Event(Box<Event>),
    Control(Response),
}

impl Client {
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream =
            UnixStream::connect(path).await.map_err(|source| ClientError::Connect { path: path.to_owned(), source })?;
        let (r, w) = stream.into_split();
        Ok(Client { reader: r, writer: w, buf: Vec::with_capacity(READ_BUFFER), start: 0 })
    }

    pub async fn send(&mut self, req: &Request) -> Result<(), ClientError> {
        let mut line = serde_json::to_vec(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.writer.write_all(&line).await?;
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
        if let Some((stream, seq, encoding)) = parse_output_fast(line, &mut sink.data) {
            sink.take_data(stream, encoding, seq)?;
            return Ok(Streamed::Output);
        }
        sink.data.clear();
        let mut de = serde_json::Deserializer::from_slice(line);
        let head = OutputSeed(&mut sink.data).deserialize(&mut de).map_err(|e| bad_line(e, line))?;
        match head.kind {
            Some(stream @ (EventType::Stdout | EventType::Stderr)) => {
                sink.take_data(stream, head.encoding, head.seq)?;
                Ok(Streamed::Output)
            }
            _ => {
                sink.data.clear();
                Ok(Streamed::Event(Box::new(serde_json::from_slice(line).map_err(|e| bad_line(e, line))?)))
            }
        }
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
            if self.reader.read_buf(&mut self.buf).await? == 0 {
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

/// The daemon's own output lines, decoded without serde: they start
/// `{"runId":"ID","seq":N,"type":"stdout","data":"` (the field order of
/// `Event`), and the data string is unescaped straight into `data`, a
/// clean run at a time. serde_json copies each run between escapes into
/// a scratch buffer first and was most of the client's CPU. Anything
/// unexpected returns None, and the line goes through serde instead.
fn parse_output_fast(line: &[u8], data: &mut Vec<u8>) -> Option<(EventType, u64, Option<Encoding>)> {
    let rest = line.strip_prefix(br#"{"runId":""#)?;
    // Run IDs have no quote or backslash (see `RunId`).
    let rest = &rest[memchr::memchr(b'"', rest)?..];
    let rest = rest.strip_prefix(br#"","seq":"#)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let seq = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let rest = &rest[digits..];
    let (stream, mut rest) = if let Some(r) = rest.strip_prefix(br#","type":"stdout","data":""#) {
        (EventType::Stdout, r)
    } else {
        (EventType::Stderr, rest.strip_prefix(br#","type":"stderr","data":""#)?)
    };
    data.clear();
    loop {
        let i = crate::event::find_json_special(rest)?;
        data.extend_from_slice(&rest[..i]);
        let (escape, after) = match rest[i] {
            b'"' => {
                rest = &rest[i + 1..];
                break;
            }
            b'\\' => (*rest.get(i + 1)?, &rest[i + 2..]),
            _ => return None, // a raw control character is not JSON
        };
        rest = after;
        data.push(match escape {
            b'"' | b'\\' | b'/' => escape,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'b' => 0x08,
            b'f' => 0x0c,
            // serde_json only writes \u00XX; anything else takes the slow path.
            b'u' => {
                let hex = std::str::from_utf8(rest.get(..4)?).ok()?;
                rest = &rest[4..];
                u8::try_from(u16::from_str_radix(hex, 16).ok()?).ok().filter(u8::is_ascii)?
            }
            _ => return None,
        });
    }
    // The bytes were read off a socket: text must still be UTF-8.
    std::str::from_utf8(data).ok()?;
    // The remaining fields (encoding, timestamp, host) as an object of their own.
    let tail = rest.strip_prefix(b",")?;
    let mut object = Vec::with_capacity(tail.len() + 1);
    object.push(b'{');
    object.extend_from_slice(tail);
    let tail: OutputTail = serde_json::from_slice(&object).ok()?;
    Some((stream, seq, tail.encoding))
}

#[derive(serde::Deserialize)]
struct OutputTail {
    #[serde(default)]
    encoding: Option<Encoding>,
}

/// The fields of an event that say where its output goes; `data` itself
/// is unescaped into the sink by [`OutputSeed`].
struct OutputHead {
    seq: u64,
    kind: Option<EventType>,
    encoding: Option<Encoding>,
}

#[derive(serde::Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Field {
    Seq,
    Type,
    Encoding,
    Data,
    #[serde(other)]
    Other,
}

/// Decodes one event line, appending its `data` string to the vector.
struct OutputSeed<'a>(&'a mut Vec<u8>);

impl<'de> DeserializeSeed<'de> for OutputSeed<'_> {
    type Value = OutputHead;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<OutputHead, D::Error> {
        de.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for OutputSeed<'_> {
    type Value = OutputHead;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OutputHead, A::Error> {
        let mut head = OutputHead { seq: 0, kind: None, encoding: None };
        while let Some(key) = map.next_key::<Field>()? {
            match key {
                Field::Seq => head.seq = map.next_value()?,
                Field::Type => head.kind = Some(map.next_value()?),
                Field::Encoding => head.encoding = map.next_value()?,
                Field::Data => map.next_value_seed(DataSeed(&mut *self.0))?,
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(head)
    }
}

/// A JSON string appended to the vector as it is decoded.
struct DataSeed<'a>(&'a mut Vec<u8>);

impl<'de> DeserializeSeed<'de> for DataSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_str(self)
    }
}

impl Visitor<'_> for DataSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<(), E> {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Where `runtap run` and `logs` write the job's output: stdout and stderr
/// each get exactly their own events' bytes, in event order. Output of one
/// stream is gathered while events of that stream follow each other and
/// written when the stream changes or the client would wait for the
/// daemon: a few big writes instead of a write and a flush per event.
#[derive(Default)]
pub struct OutputSink {
    /// Bytes not yet written, all of `stream`.
    pending: Vec<u8>,
    stream: Option<EventType>,
    /// The current event's `data`, as decoded from JSON (base64 or text).
    data: Vec<u8>,
}

/// Pending output written even while more is ready, to bound the buffer.
const SINK_FLUSH: usize = 1024 * 1024;
/// Capacity asked for stdout and stderr when they are pipes (Linux
/// defaults to 64 KiB): a 1 MiB write into a 64 KiB pipe blocks 16 times,
/// and each block is a context switch for runtap and its reader.
const OUTPUT_PIPE_SIZE: i32 = SINK_FLUSH as i32;

impl OutputSink {
    /// A sink for this process's stdout and stderr, with their pipes grown.
    pub fn new() -> Self {
        for fd in [std::io::stdout().as_fd(), std::io::stderr().as_fd()] {
            // Best effort: not a pipe (a terminal, a file), or above
            // /proc/sys/fs/pipe-max-size, and it stays as it is.
            let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(OUTPUT_PIPE_SIZE));
        }
        OutputSink::default()
    }

    /// Moves the decoded `data` of an output event into the pending bytes.
    fn take_data(&mut self, stream: EventType, encoding: Option<Encoding>, seq: u64) -> Result<(), ClientError> {
        if self.stream != Some(stream) {
            self.flush()?;
            self.stream = Some(stream);
        }
        match encoding {
            Some(Encoding::Base64) => {
                let bad = |e| ClientError::Protocol(format!("bad base64 in event {seq}: {e}"));
                base64::engine::general_purpose::STANDARD.decode_vec(&self.data, &mut self.pending).map_err(bad)?;
            }
            None if self.pending.is_empty() => std::mem::swap(&mut self.pending, &mut self.data),
            None => self.pending.extend_from_slice(&self.data),
        }
        self.data.clear();
        if self.pending.len() >= SINK_FLUSH {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes out what is pending.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        match self.stream {
            Some(EventType::Stdout) => {
                let mut out = std::io::stdout().lock();
                out.write_all(&self.pending)?;
                out.flush()?;
            }
            Some(EventType::Stderr) => {
                let mut err = std::io::stderr().lock();
                err.write_all(&self.pending)?;
                err.flush()?;
            }
            _ => {}
        }
        self.pending.clear();
        Ok(())
    }
}

impl Drop for OutputSink {
    /// Output already received is written even when the client stops on an
    /// error (a broken line, a lost socket) before its next flush.
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Options of `runtap run`.
pub struct RunOptions {
    pub id: Option<String>,
    pub pty: bool,
    pub detach: bool,
    pub command: Vec<String>,
}

/// `runtap run`: launch, stream output, exit as the job did.
pub async fn run(socket: &Path, opts: RunOptions) -> Result<i32, ClientError> {
    let mut client = Client::connect(socket).await?;
    let size = crate::sys::terminal_size();
    let (cols, rows) = (size.map(|s| s.0), size.map(|s| s.1));
    let launch = LaunchRequest {
        run_id: opts.id,
        command: opts.command,
        env: std::env::vars().collect(),
        clear_env: true,
        cwd: std::env::current_dir().ok().map(|p| p.to_string_lossy().into_owned()),
        pty: opts.pty,
        cols,
        rows,
    };
    let run_id = match client.call(&Request::Launch(launch)).await? {
        Response::Launched { run_id } => run_id,
        other => return Err(ClientError::Protocol(format!("{other:?}"))),
    };
    if opts.detach {
        println!("{run_id}");
        return Ok(0);
    }
    client.send(&Request::Subscribe { run_id: run_id.clone(), since: 0, follow: true }).await?;
    let mut interrupts = 0;
    let mut final_event: Option<Event> = None;
    let mut started = false;
    let mut sink = OutputSink::new();
    loop {
        let line = tokio::select! {
            line = client.next_streamed(&mut sink) => line?,
            _ = tokio::signal::ctrl_c() => {
                interrupts += 1;
                sink.flush()?;
                if interrupts > 1 {
                    eprintln!("runtap: interrupted again; leaving run {run_id} to the daemon");
                    return Ok(130);
                }
                eprintln!("runtap: cancelling run {run_id} (Ctrl-C again to stop waiting)");
                let reason = Some("interrupted: SIGINT to runtap run".to_owned());
                client.send(&Request::Cancel { run_id: run_id.clone(), reason }).await?;
                continue;
            }
        };
        match line {
            Streamed::Output => {}
            Streamed::Event(ev) => {
                started |= ev.status() == Some(RunStatus::Running);
                if ev.status().is_some_and(RunStatus::is_final) {
                    final_event = Some(*ev);
                }
            }
            Streamed::Control(Response::End { .. }) => break,
            Streamed::Control(Response::Error { code, message, .. }) if code != "finished" => {
                sink.flush()?;
                eprintln!("runtap: {message}");
            }
            Streamed::Control(_) => {}
        }
    }
    sink.flush()?;
    let Some(ev) = final_event else {
        return Err(ClientError::Protocol("stream ended without a final status".into()));
    };
    if ev.status() == Some(RunStatus::Lost) {
        eprintln!("runtap: run {run_id} was lost: {}", ev.reason.as_deref().unwrap_or("daemon stopped"));
        return Ok(EXIT_RUNTAP_ERROR);
    }
    // The job never started: its output cannot say why, so say it here.
    if ev.status() == Some(RunStatus::Failed) && ev.pid.is_none() && !started {
        eprintln!("runtap: {}", ev.reason.as_deref().unwrap_or("the command could not be started"));
    }
    Ok(exit_code(&ev))
}

/// The process exit code that mirrors how the run ended. A cancelled run
/// never reports success, even if the job caught SIGTERM and exited 0.
pub fn exit_code(ev: &Event) -> i32 {
    let cancelled = ev.status() == Some(RunStatus::Cancelled);
    match (ev.exit_code, ev.signal) {
        (_, Some(sig)) => 128 + sig,
        (Some(0), None) if cancelled => 130,
        (Some(code @ 0..=255), None) => code,
        (Some(_), None) => EXIT_RUNTAP_ERROR,
        (None, None) if ev.status() == Some(RunStatus::Succeeded) => 0,
        (None, None) if cancelled => 130,
        (None, None) => 1,
    }
}

/// `runtap logs`: print a run's output from its journal.
pub async fn logs(socket: &Path, id: &str, since: u64, follow: bool) -> Result<i32, ClientError> {
    let mut client = Client::connect(socket).await?;
    client.call(&Request::Status { run_id: id.to_owned() }).await?;
    client.send(&Request::Subscribe { run_id: id.to_owned(), since, follow }).await?;
    let mut sink = OutputSink::new();
    loop {
        match client.next_streamed(&mut sink).await? {
            Streamed::Output | Streamed::Event(_) => {}
            Streamed::Control(Response::End { .. }) => {
                sink.flush()?;
                return Ok(0);
            }
            Streamed::Control(Response::Error { message, .. }) => {
                sink.flush()?;
                eprintln!("runtap: {message}");
            }
            Streamed::Control(_) => {}
        }
    }
}

/// `runtap cancel`.
pub async fn cancel(socket: &Path, id: &str, reason: Option<String>) -> Result<i32, ClientError> {
    let mut client = Client::connect(socket).await?;
    client.send(&Request::Cancel { run_id: id.to_owned(), reason }).await?;
    loop {
        match client.next().await? {
            Line::Control(Response::Cancelling { run }) => {
                println!("cancelling {} (was {})", run.run_id, run.status.as_str());
                return Ok(0);
            }
            Line::Control(Response::Error { code, message, .. }) => {
                eprintln!("runtap: {message}");
                return Ok(if code == "finished" { 0 } else { 1 });
            }
            _ => continue,
        }
    }
}

/// `runtap ps`.
pub async fn ps(socket: &Path, json: bool) -> Result<i32, ClientError> {
    let mut client = Client::connect(socket).await?;
    let runs = match client.call(&Request::List).await? {
        Response::Runs { runs } => runs,
        other => return Err(ClientError::Protocol(format!("{other:?}"))),
    };
    let mut out = std::io::stdout().lock();
    if json {
        let text = serde_json::to_string_pretty(&runs).map_err(|e| ClientError::Protocol(e.to_string()))?;
        writeln!(out, "{text}")?;
    } else {
        write!(out, "{}", ps_table(&runs, chrono::Utc::now()))?;
    }
    Ok(0)
}

/// The human table of `runtap ps`.
pub fn ps_table(runs: &[RunInfo], now: chrono::DateTime<chrono::Utc>) -> String {
    let mut rows = vec![["ID", "STATUS", "EXIT", "STARTED", "DURATION", "COMMAND"].map(String::from).to_vec()];
    for r in runs {
        let exit = match (r.exit_code, r.signal) {
            (Some(c), _) => c.to_string(),
            (None, Some(s)) => crate::event::signal_name(s).unwrap_or_else(|| format!("signal {s}")),
            _ => "-".into(),
        };
        let parse = |t: &Option<String>| {
            t.as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&chrono::Utc))
        };
        let started = parse(&r.started_at);
        let ended = parse(&r.ended_at);
        let started_s = started.map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string());
        let duration = match started {
            Some(s) => {
                let d = (ended.unwrap_or(now) - s).to_std().unwrap_or_default();
                humantime::format_duration(std::time::Duration::from_millis(d.as_millis() as u64)).to_string()
            }
            None => "-".into(),
        };
        let mut command = r.command.join(" ");
        if command.chars().count() > 60 {
            command = command.chars().take(57).collect::<String>() + "...";
        }
        rows.push(vec![r.run_id.to_string(), r.status.as_str().into(), exit, started_s, duration, command]);
    }
    let widths: Vec<usize> = (0..6).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c == 5 {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(data: &str, exit_code: Option<i32>, signal: Option<i32>) -> Event {
        serde_json::from_value(serde_json::json!({
            "runId": "r", "seq": 9, "type": "status", "data": data,
            "exitCode": exit_code, "signal": signal, "timestamp": "t"
        }))
        .unwrap()
    }

    #[test]
    fn fast_output_parse_agrees_with_serde() {
        let texts = ["plain\n", "tab\t \"q\" \\ / \u{1}\u{1f}\u{7f} \u{20ac} é\r\n", "", "x"];
        for (i, text) in texts.iter().enumerate() {
            for (encoding, data) in [(None, text.to_string()), (Some(Encoding::Base64), "AP8K".to_string())] {
                let ev = Event {
                    run_id: "r-1".into(),
                    seq: 40 + i as u64,
                    kind: if i % 2 == 0 { EventType::Stdout } else { EventType::Stderr },
                    data,
                    encoding,
                    exit_code: None,
                    signal: None,
                    signal_name: None,
                    reason: None,
                    pid: None,
                    timestamp: "2026-11-22T00:00:00.000000Z".into(),
                    host: (i == 1).then(|| "h".into()),
                };
                let line = serde_json::to_vec(&ev).unwrap();
                let mut data = Vec::new();
                let (stream, seq, enc) = parse_output_fast(&line, &mut data).expect("fast path");
                assert_eq!((stream, seq, enc), (ev.kind, ev.seq, ev.encoding));
                assert_eq!(data, ev.data.as_bytes());
            }
        }
        let mut data = Vec::new();
        let reordered = br#"{"runId":"r","type":"stdout","seq":1,"data":"x","timestamp":"t"}"#;
        assert!(parse_output_fast(reordered, &mut data).is_none(), "left to serde");
        let status = br#"{"runId":"r","seq":1,"type":"status","data":"running","timestamp":"t"}"#;
        assert!(parse_output_fast(status, &mut data).is_none());
    }

    #[test]
    fn exit_codes_mirror_the_run() {
        assert_eq!(exit_code(&status("succeeded", Some(0), None)), 0);
        assert_eq!(exit_code(&status("failed", Some(3), None)), 3);
        assert_eq!(exit_code(&status("failed", None, Some(9))), 137);
        assert_eq!(exit_code(&status("cancelled", None, Some(15))), 143);
        assert_eq!(exit_code(&status("cancelled", Some(0), None)), 130, "a cancelled run never reports success");
        assert_eq!(exit_code(&status("cancelled", None, None)), 130);
        assert_eq!(exit_code(&status("failed", Some(-1), None)), EXIT_RUNTAP_ERROR);
    }
}
