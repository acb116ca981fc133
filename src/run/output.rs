//! Turning a byte stream from the child into output events.
//!
//! Rules (the issue's, and what terminals users expect):
//! - no event carries more than [`MAX_CHUNK`] bytes;
//! - an event carries whole lines when it can; a partial line is held for
//!   `line_hold` (tens of ms) or until the buffer reaches `MAX_CHUNK`;
//! - a cut that is not at a newline never splits a UTF-8 character, so text
//!   stays text; bytes that are not UTF-8 at all go out as base64;
//! - whatever is buffered at end of stream is flushed.

use std::time::Duration;

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut as _, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::time::{Instant, Sleep};

use std::sync::Arc;

use crate::event::EventType;
use crate::hub::Delivered;

use super::chunker::Chunker;
/// Largest event payload (before encoding).
pub(crate) use super::chunker::MAX_CHUNK;
/// Largest read from the child. A job that fills every read gets bigger
/// ones, up to this: each read is one journal batch, so a fast job costs
/// fewer wake-ups per byte, while a quiet one keeps a small buffer.
const MAX_READ: usize = 1024 * 1024;
/// Events are spaced by this many times the last round of delivery: the
/// subscribers' own work on an event (a dashboard parses it) is of the
/// order of the server's, and both share the machine. Chosen by
/// measurement (BENCHMARKS.md, issue 11): 1000 subscribers at a line per
/// ms, factors 0, 1, 2, 3 and 6 and counts of 5, 10 and 20 µs.
const ROUND_FACTOR: u32 = 3;
/// ...and by at most this much per subscriber: a bound on what one noisy
/// round can do to the spacing of a small fan-out (100 subscribers: 2 ms).
const PER_SUBSCRIBER: Duration = Duration::from_micros(20);

/// A read buffer grown for a burst is let go once its stream has been
/// waiting this long with nothing buffered, so an idle run holds no MBs.
const TRIM_AFTER: Duration = Duration::from_secs(1);

/// Event-sized pieces of one stream, in order, from one read.
#[derive(Debug)]
pub(crate) struct Output {
    pub stream: EventType,
    pub pieces: Vec<Bytes>,
}

/// How output is cut into events over time (`[runs]` in the config).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pacing {
    /// A partial line waits this long for its newline.
    pub line_hold: Duration,
    /// The longest complete lines wait, while subscribers are still taking
    /// the previous event, to go out together (see `runs.coalesce`).
    pub coalesce: Duration,
}

/// A job's output streams, read by the run's supervisor itself: no task
/// and no message per read, and no queue of reads (up to 8 MiB with a
/// reader task per stream). It keeps the job's back-pressure: while the
/// journal is busy nobody reads, and the job waits on its full pipe, as it
/// would writing to a slow disk itself.
pub(crate) struct Readers {
    streams: Vec<StreamReader>,
    /// Where the next poll starts, so that one busy stream cannot starve the other.
    turn: usize,
}

struct StreamReader {
    reader: Box<dyn AsyncRead + Unpin + Send>,
    stream: EventType,
    chunker: Chunker,
    read_size: usize,
    /// The last read came back well short of `read_size`.
    quiet: bool,
    line_hold: Duration,
    /// Complete lines that arrive while subscribers are still taking the
    /// previous event wait for them, at most this long, and go out together
    /// (zero: every read at once). Batching follows delivery, not the job:
    /// on an idle system each line goes at once; with a thousand
    /// subscribers, events grow to what a round of delivery takes.
    coalesce: Duration,
    /// Whether the run's subscribers have taken everything published.
    delivered: Arc<Delivered>,
    /// When the last event was cut.
    last_event: Option<Instant>,
    /// While lines wait: not before this (spacing events)...
    spaced_until: Instant,
    /// ...and then until everyone has taken the last event, but not after
    /// this (the window).
    window_end: Instant,
    /// Fires at the next of those two deadlines; armed only while lines wait.
    batch: Pin<Box<Sleep>>,
    batching: bool,
    /// Fires when a partial line has been held for `line_hold`; armed
    /// only while one is.
    hold: Pin<Box<Sleep>>,
    holding: bool,
    /// Fires [`TRIM_AFTER`] after a read found a burst-sized buffer idle.
    trim: Pin<Box<Sleep>>,
    trimming: bool,
    done: bool,
}

impl Readers {
    pub(crate) fn new(
        streams: Vec<(Box<dyn AsyncRead + Unpin + Send>, EventType)>,
        pacing: Pacing,
        delivered: Arc<Delivered>,
    ) -> Self {
        let streams = streams
            .into_iter()
            .map(|(reader, stream)| StreamReader {
                reader,
                stream,
                chunker: Chunker::default(),
                read_size: MAX_CHUNK,
                quiet: true,
                line_hold: pacing.line_hold,
                coalesce: pacing.coalesce,
                delivered: delivered.clone(),
                last_event: None,
                spaced_until: Instant::now(),
                window_end: Instant::now(),
                batch: Box::pin(tokio::time::sleep(Duration::ZERO)),
                batching: false,
                hold: Box::pin(tokio::time::sleep(Duration::ZERO)),
                holding: false,
                trim: Box::pin(tokio::time::sleep(Duration::ZERO)),
                trimming: false,
                done: false,
            })
            .collect();
        Readers { streams, turn: 0 }
    }

    /// True once every stream has ended (or was stopped) and was flushed.
    pub(crate) fn is_done(&self) -> bool {
        self.streams.iter().all(|s| s.done)
    }

    /// The next ready pieces of any stream; None once all have ended.
    /// Cancel-safe: all state lives in `self`.
    pub(crate) async fn next(&mut self) -> Option<Output> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Output>> {
        let n = self.streams.len();
        for k in 0..n {
            let i = (self.turn + k) % n;
            if let Poll::Ready(Some(out)) = self.streams[i].poll_output(cx) {
                self.turn = (i + 1) % n;
                return Poll::Ready(Some(out));
            }
        }
        if self.is_done() { Poll::Ready(None) } else { Poll::Pending }
    }

    /// Everything the job has written so far, read now without waiting,
    /// and taken whole, partial lines included. Called when a step line
    /// arrives: output and steps come on different pipes, and what is in
    /// the output pipes by the time the step line is seen was, as long as
    /// the daemon keeps up, written before it.
    pub(crate) fn ready_now(&mut self) -> Vec<Output> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        self.streams.iter_mut().filter(|s| !s.done).filter_map(|s| s.ready_now(&mut cx)).collect()
    }

    /// Stops reading (the drain deadline passed) and returns whatever is
    /// buffered, partial lines included.
    pub(crate) fn stop(&mut self) -> Vec<Output> {
        self.streams.iter_mut().filter(|s| !s.done).filter_map(StreamReader::end).collect()
    }
}

impl StreamReader {
    /// Ready(Some) with pieces; Ready(None) once ended; Pending while
    /// nothing is ready.
    fn poll_output(&mut self, cx: &mut Context<'_>) -> Poll<Option<Output>> {
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            if self.batching && self.may_release(cx) {
                self.batching = false;
                if let Some(out) = self.take(false, false) {
                    return Poll::Ready(Some(out));
                }
            }
            if self.holding && self.hold.as_mut().poll(cx).is_ready() {
                self.holding = false;
                self.batching = false;
                if let Some(out) = self.take(true, false) {
                    return Poll::Ready(Some(out));
                }
            }
            if self.trimming && self.trim.as_mut().poll(cx).is_ready() {
                self.trimming = false;
                if !self.chunker.has_partial() {
                    self.release();
                }
            }
            self.chunker.reserve(self.read_size, self.quiet);
            let mut room = (&mut self.chunker.buf).limit(self.read_size);
            // The read future borrows only `self`; dropping it when pending loses nothing.
            let Poll::Ready(read) = std::pin::pin!(self.reader.read_buf(&mut room)).poll(cx) else {
                if !self.quiet && !self.trimming {
                    self.trimming = true;
                    self.trim.as_mut().reset(Instant::now() + TRIM_AFTER);
                    if self.trim.as_mut().poll(cx).is_ready() {
                        continue;
                    }
                }
                return Poll::Pending;
            };
            match read {
                Ok(0) => return Poll::Ready(self.end()),
                Ok(n) => {
                    self.quiet = n < self.read_size / 4;
                    if n == self.read_size {
                        self.read_size = (self.read_size * 2).min(MAX_READ);
                    } else if self.quiet {
                        // The burst is over: back to the smallest reads.
                        self.read_size = MAX_CHUNK;
                    }
                    let out = if self.wait_for_more() {
                        None
                    } else {
                        self.batching = false;
                        self.take(false, false)
                    };
                    if !self.chunker.has_partial() {
                        self.holding = false;
                        if self.quiet {
                            self.release();
                        }
                    } else if !self.holding {
                        self.holding = true;
                        self.hold.as_mut().reset(Instant::now() + self.line_hold);
                    }
                    if out.is_some() {
                        return Poll::Ready(out);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => {
                    tracing::warn!(stream = ?self.stream, %error, "reading job output failed; treating as end of stream");
                    return Poll::Ready(self.end());
                }
            }
        }
    }

    /// Whether complete lines just read should wait (the window is armed
    /// here) rather than go out now: only while subscribers are still
    /// taking what was published, never past `coalesce`, and never with a
    /// full chunk.
    fn wait_for_more(&mut self) -> bool {
        if self.coalesce.is_zero() || self.chunker.buf.len() >= MAX_CHUNK {
            return false;
        }
        if self.batching {
            return true;
        }
        // Only a partial line waits: `line_hold` decides.
        if memchr::memchr(b'\n', &self.chunker.buf).is_none() {
            return false;
        }
        let now = Instant::now();
        // Events are spaced by a few times what the last one took to
        // deliver: with many subscribers, each event is worth its cost;
        // with one, the gap is microseconds.
        let subscribers = u32::try_from(self.delivered.subscribers()).unwrap_or(u32::MAX);
        let by_count = PER_SUBSCRIBER.saturating_mul(subscribers);
        let gap = (self.delivered.last_round() * ROUND_FACTOR).min(by_count).min(self.coalesce);
        let spaced = self.last_event.map_or(now, |t| t + gap);
        if spaced <= now && self.delivered.is_idle() {
            return false;
        }
        self.spaced_until = spaced.max(now);
        self.window_end = now + self.coalesce;
        self.batching = true;
        self.batch.as_mut().reset(self.spaced_until);
        true
    }

    /// Whether the lines that wait may go now: once they are spaced from
    /// the last event and everyone has taken it, or at the window's end.
    /// Re-arms the timer (and the delivery waker) otherwise.
    fn may_release(&mut self, cx: &mut Context<'_>) -> bool {
        let now = Instant::now();
        if now >= self.window_end {
            return true;
        }
        if now < self.spaced_until {
            if self.batch.as_mut().poll(cx).is_pending() {
                return false;
            }
            self.batch.as_mut().reset(self.window_end);
        }
        if self.delivered.poll_idle(cx).is_ready() {
            return true;
        }
        if self.batch.deadline() != self.window_end {
            self.batch.as_mut().reset(self.window_end);
        }
        self.batch.as_mut().poll(cx).is_ready()
    }

    /// Drops our hold on the read buffer, which a burst may have grown to
    /// MBs (the pieces cut from it keep what they need), and reads small
    /// again.
    fn release(&mut self) {
        self.chunker.buf = BytesMut::new();
        self.read_size = MAX_CHUNK;
        self.quiet = true;
    }

    /// Reads what is in the pipe without waiting, then takes everything.
    fn ready_now(&mut self, cx: &mut Context<'_>) -> Option<Output> {
        loop {
            self.chunker.reserve(self.read_size, self.quiet);
            let mut room = (&mut self.chunker.buf).limit(self.read_size);
            match std::pin::pin!(self.reader.read_buf(&mut room)).poll(cx) {
                Poll::Ready(Ok(0)) => return self.end(),
                Poll::Ready(Ok(_)) => continue,
                Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Poll::Ready(Err(_)) => return self.end(),
                Poll::Pending => break,
            }
        }
        self.holding = false;
        self.batching = false;
        self.take(true, false)
    }

    /// Marks the stream ended and takes everything still buffered.
    fn end(&mut self) -> Option<Output> {
        self.done = true;
        self.holding = false;
        self.batching = false;
        self.take(true, true)
    }

    fn take(&mut self, force: bool, eof: bool) -> Option<Output> {
        let pieces: Vec<Bytes> = std::iter::from_fn(|| self.chunker.take(force, eof)).collect();
        if pieces.is_empty() {
            return None;
        }
        self.last_event = Some(Instant::now());
        Some(Output { stream: self.stream, pieces })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn readers_reassemble_exact_bytes() {
        let mut input = Vec::new();
        for i in 0..5000u32 {
            input.extend_from_slice(format!("line {i} ").as_bytes());
            input.extend_from_slice(&i.to_le_bytes());
            if i % 3 == 0 {
                input.push(b'\n');
            }
        }
        let streams: Vec<(Box<dyn AsyncRead + Unpin + Send>, EventType)> = vec![
            (Box::new(std::io::Cursor::new(input.clone())), EventType::Stdout),
            (Box::new(std::io::Cursor::new(input.clone())), EventType::Stderr),
        ];
        let pacing = Pacing { line_hold: Duration::from_millis(20), coalesce: Duration::from_millis(2) };
        let mut readers = Readers::new(streams, pacing, Arc::default());
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while let Some(Output { stream, pieces }) = readers.next().await {
            for piece in pieces {
                assert!(piece.len() <= MAX_CHUNK);
                match stream {
                    EventType::Stdout => out.extend_from_slice(&piece),
                    _ => err.extend_from_slice(&piece),
                }
            }
        }
        assert!(readers.is_done());
        assert_eq!(out, input);
        assert_eq!(err, input);
    }

    /// Lines wait only while a subscriber has not yet taken what was
    /// published, go together as soon as it has, and never wait longer
    /// than the window; with everything taken, a line goes at once.
    #[tokio::test(start_paused = true)]
    async fn lines_wait_only_while_subscribers_are_still_taking_the_last_event() {
        use crate::event::{Batch, Frame};
        use crate::hub::{Hub, Recv};
        use crate::run_id::RunId;
        use tokio::io::AsyncWriteExt;
        let (mut job, pipe) = tokio::io::duplex(256 * 1024);
        let hub = Hub::default();
        let id = RunId::parse("c").unwrap();
        let publ = hub.open(&id, 0);
        let mut sub = hub.subscribe(&id).1.unwrap();
        let pacing = Pacing { line_hold: Duration::from_millis(20), coalesce: Duration::from_millis(5) };
        let mut readers = Readers::new(vec![(Box::new(pipe), EventType::Stdout)], pacing, publ.delivered());
        let text = |o: Option<Output>| o.map(|o| o.pieces.concat()).unwrap_or_default();
        let event = |seq| Batch { frames: vec![Frame { seq, json: "x".into() }], last: false };

        job.write_all(b"one\n").await.unwrap();
        let t0 = Instant::now();
        assert_eq!(text(readers.next().await), b"one\n");
        assert_eq!(t0.elapsed(), Duration::ZERO, "nothing outstanding: at once");

        publ.publish(event(1)); // the subscriber has not taken it yet
        job.write_all(b"two\n").await.unwrap();
        tokio::time::advance(Duration::from_millis(1)).await;
        job.write_all(b"three\n").await.unwrap();
        let once = std::future::poll_fn(|cx| Poll::Ready(readers.poll_next(cx))).await;
        assert!(once.is_pending(), "held while the subscriber is behind");
        assert!(matches!(sub.recv().await, Recv::Batches(_)));
        assert_eq!(text(readers.next().await), b"two\nthree\n");
        assert_eq!(t0.elapsed(), Duration::from_millis(1), "released when it was taken, together");

        publ.publish(event(2)); // and this one it never takes
        job.write_all(b"four\n").await.unwrap();
        let t1 = Instant::now();
        assert_eq!(text(readers.next().await), b"four\n");
        assert_eq!(t1.elapsed(), Duration::from_millis(5), "never past the window");

        // A full chunk does not wait, even while the subscriber is behind.
        job.write_all(b"five\n").await.unwrap();
        let big = format!("{}\n", "x".repeat(MAX_CHUNK - 6));
        job.write_all(big.as_bytes()).await.unwrap();
        let t2 = Instant::now();
        let mut got = Vec::new();
        while got.len() < 5 + big.len() {
            got.extend(text(readers.next().await));
        }
        assert_eq!(t2.elapsed(), Duration::ZERO, "a full chunk goes at once");
        assert_eq!(got, [&b"five\n"[..], big.as_bytes()].concat());
        drop(job);
        assert!(readers.next().await.is_none());
    }
}
