//! What is waiting to be written to one connection, written straight from
//! the journal's shared event buffers with `writev`: the only copy is the
//! kernel's. One implementation for every socket: WebSocket text frames (a
//! header of at most 10 bytes, built on the stack, before each event), the
//! Unix socket's lines (a newline after each), and Socket.IO's events (the
//! event between a fixed prefix and suffix, in a WebSocket frame or
//! followed by a polling body's separator).
//!
//! Holding a batch costs a pointer, so a subscriber's backlog is bounded by
//! its hub queue, not here; the owner only refills the outbox once it is
//! short. The outbox also remembers, per subscription, the last event it
//! wrote in full: what a subscriber cut off for stalling is told it has.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;

use bytes::Bytes;

use crate::event::Batch;

/// Events per `writev` (up to four slices each; Linux allows 1024).
const EVENTS_PER_WRITE: usize = 256;

/// How events are cut apart on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// An RFC 6455 text frame each (server frames are never masked).
    WebSocket,
    /// A line each: the event's JSON and a newline.
    Lines,
    /// `prefix`, the event's JSON and `suffix`, in an RFC 6455 text frame
    /// each (`frame`), or not framed (a polling body: then `suffix` ends
    /// with the separator). The connection's own messages are framed the
    /// same way without the prefix and suffix, or followed by `separator`.
    Wrapped { frame: bool, prefix: &'static [u8], suffix: &'static [u8], separator: &'static [u8] },
}

/// A socket that takes what it can without waiting.
pub(crate) trait TryWrite {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;

    /// Sends what the socket itself holds (TLS records the kernel did not
    /// take yet, see `server::conn`) as far as it goes; bytes sent.
    fn try_flush(&self) -> io::Result<usize> {
        Ok(0)
    }

    /// Whether the socket itself still holds bytes to send.
    fn pending(&self) -> bool {
        false
    }
}

impl TryWrite for tokio::net::TcpStream {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        tokio::net::TcpStream::try_write_vectored(self, bufs)
    }
}

impl TryWrite for tokio::net::unix::OwnedWriteHalf {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        tokio::net::unix::OwnedWriteHalf::try_write_vectored(self, bufs)
    }
}

/// RFC 6455 opcode of a text frame.
pub(crate) const TEXT: u8 = 0x1;

/// Encodes an unmasked, final frame header (RFC 6455 §5.2) into `out`;
/// returns its length.
pub(crate) fn ws_header(opcode: u8, len: usize, out: &mut [u8; 10]) -> usize {
    out[0] = 0x80 | opcode;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

#[cfg(test)]
fn ws_header_len(len: usize) -> usize {
    match len {
        0..126 => 2,
        126..=0xffff => 4,
        _ => 10,
    }
}

enum Pending {
    /// Events `next..end` of a batch shared with every subscriber, for
    /// subscription `slot`.
    Batch { batch: Arc<Batch>, next: usize, end: usize, slot: usize },
    /// Bytes already framed.
    Raw(Bytes),
    /// A message of the connection's own, framed when it is written (so
    /// that a connection may change its framing, see [`Outbox::set_framing`]).
    Text(Bytes),
}

/// The bytes of one queued piece, as up to four slices.
struct Piece<'a> {
    head: ([u8; 10], usize),
    pre: &'static [u8],
    body: &'a [u8],
    tail: &'a [u8],
}

impl<'a> Piece<'a> {
    fn len(&self) -> usize {
        self.head.1 + self.pre.len() + self.body.len() + self.tail.len()
    }

    fn plain(body: &'a [u8]) -> Self {
        Piece { head: ([0; 10], 0), pre: &[], body, tail: &[] }
    }

    /// `body` as `framing` frames it; `wrap`: between the framing's prefix
    /// and suffix (an event) or not (a message of the connection's own).
    fn framed(framing: Framing, body: &'a [u8], wrap: bool) -> Self {
        let header = |payload: usize| {
            let mut h = [0u8; 10];
            let n = ws_header(TEXT, payload, &mut h);
            (h, n)
        };
        match framing {
            Framing::WebSocket => Piece { head: header(body.len()), ..Piece::plain(body) },
            Framing::Lines => Piece { tail: b"\n", ..Piece::plain(body) },
            Framing::Wrapped { frame, prefix, suffix, separator } => match (wrap, frame) {
                (true, true) => {
                    Piece { head: header(prefix.len() + body.len() + suffix.len()), pre: prefix, body, tail: suffix }
                }
                (true, false) => Piece { pre: prefix, tail: suffix, ..Piece::plain(body) },
                (false, true) => Piece { head: header(body.len()), ..Piece::plain(body) },
                (false, false) => Piece { tail: separator, ..Piece::plain(body) },
            },
        }
    }
}

pub(crate) struct Outbox {
    framing: Framing,
    queue: VecDeque<Pending>,
    /// Bytes of the front piece already written.
    offset: usize,
    /// Bytes still to write.
    bytes: usize,
    /// Per subscription slot: the last seq written in full.
    written: Vec<Option<u64>>,
}

impl Outbox {
    pub(crate) fn new(framing: Framing) -> Self {
        Outbox { framing, queue: VecDeque::new(), offset: 0, bytes: 0, written: Vec::new() }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    fn event_len(&self, json: &[u8]) -> usize {
        Piece::framed(self.framing, json, true).len()
    }

    /// Frames what is queued from now on, and the messages already queued
    /// but not yet started, the new way (a Socket.IO connection upgraded
    /// from polling to WebSocket). Only when nothing is half written.
    pub(crate) fn set_framing(&mut self, framing: Framing) -> bool {
        if self.offset != 0 || self.queue.iter().any(|p| matches!(p, Pending::Raw(_))) {
            return false;
        }
        self.framing = framing;
        self.bytes = self.pieces().map(|p| p.len()).sum();
        true
    }

    /// Queues `batch`'s events with `seq > after`, for subscription `slot`;
    /// returns how many events and payload bytes that was.
    pub(crate) fn push_batch(&mut self, batch: Arc<Batch>, after: u64, slot: usize) -> (u64, u64) {
        let next = batch.frames.partition_point(|f| f.seq <= after);
        let frames = &batch.frames[next..];
        if frames.is_empty() {
            return (0, 0);
        }
        let payload: usize = frames.iter().map(|f| f.json.len()).sum();
        self.bytes += frames.iter().map(|f| self.event_len(f.bytes())).sum::<usize>();
        let counts = (frames.len() as u64, payload as u64);
        let end = batch.frames.len();
        self.queue.push_back(Pending::Batch { batch, next, end, slot });
        counts
    }

    /// As `push_batch`, but only the events `keep` wants: each run of kept
    /// events is queued as a range of the shared batch, still no copy.
    pub(crate) fn push_batch_where(
        &mut self,
        batch: Arc<Batch>,
        after: u64,
        slot: usize,
        keep: impl Fn(&[u8]) -> bool,
    ) -> (u64, u64) {
        let first = batch.frames.partition_point(|f| f.seq <= after);
        let (mut events, mut payload) = (0, 0);
        let mut i = first;
        while i < batch.frames.len() {
            if !keep(batch.frames[i].bytes()) {
                i += 1;
                continue;
            }
            let next = i;
            while i < batch.frames.len() && keep(batch.frames[i].bytes()) {
                let json = batch.frames[i].bytes();
                self.bytes += self.event_len(json);
                payload += json.len() as u64;
                events += 1;
                i += 1;
            }
            self.queue.push_back(Pending::Batch { batch: batch.clone(), next, end: i, slot });
        }
        (events, payload)
    }

    /// Queues bytes already framed (a control message, a ping, a close).
    pub(crate) fn push_raw(&mut self, raw: Bytes) {
        if !raw.is_empty() {
            self.bytes += raw.len();
            self.queue.push_back(Pending::Raw(raw));
        }
    }

    /// Queues a message of the connection's own (JSON text), framed.
    pub(crate) fn push_text(&mut self, text: &str) {
        self.push_message(Bytes::copy_from_slice(text.as_bytes()));
    }

    /// Queues a message of the connection's own, framed when written.
    pub(crate) fn push_message(&mut self, text: Bytes) {
        self.bytes += Piece::framed(self.framing, &text, false).len();
        self.queue.push_back(Pending::Text(text));
    }

    /// Forgets what subscription `slot` had written (the slot is reused).
    pub(crate) fn forget(&mut self, slot: usize) {
        if let Some(w) = self.written.get_mut(slot) {
            *w = None;
        }
    }

    /// The last seq of subscription `slot` written in full, if any.
    pub(crate) fn written(&self, slot: usize) -> Option<u64> {
        self.written.get(slot).copied().flatten()
    }

    /// Drops everything queued but what is already on its way: a piece
    /// that is partly written stays (the stream must stay parseable) and
    /// counts as written.
    pub(crate) fn cut_to_front(&mut self) {
        if self.offset == 0 {
            self.queue.clear();
            self.bytes = 0;
            return;
        }
        self.queue.truncate(1);
        if let Some(Pending::Batch { batch, next, end, slot }) = self.queue.front_mut() {
            *end = *next + 1;
            let seq = batch.frames[*next].seq;
            let slot = *slot;
            self.note_written(slot, seq);
        }
        let front = self.pieces().next().map_or(0, |p| p.len());
        self.bytes = front - self.offset;
    }

    fn note_written(&mut self, slot: usize, seq: u64) {
        if self.written.len() <= slot {
            // Most connections have one stream: room for four would be 48 B wasted on each.
            self.written.reserve_exact(slot + 1 - self.written.len());
            self.written.resize(slot + 1, None);
        }
        self.written[slot] = Some(seq);
    }

    fn pieces(&self) -> impl Iterator<Item = Piece<'_>> {
        let framing = self.framing;
        self.queue.iter().flat_map(move |p| {
            let (frames, own): (&[_], _) = match p {
                Pending::Batch { batch, next, end, .. } => (&batch.frames[*next..*end], None),
                Pending::Raw(r) => (&[], Some(Piece::plain(r))),
                Pending::Text(t) => (&[], Some(Piece::framed(framing, t, false))),
            };
            frames.iter().map(move |f| Piece::framed(framing, f.bytes(), true)).chain(own)
        })
    }

    /// Writes as much as the socket takes without waiting. Ok(true) if
    /// anything was written; `WouldBlock` is not an error.
    pub(crate) fn write_to(&mut self, socket: &impl TryWrite) -> io::Result<bool> {
        let mut progress = socket.try_flush()? > 0;
        while !self.queue.is_empty() {
            // Sized to what is queued: a fixed array for the largest write
            // would be zeroed on every call, ~12 KiB per subscriber per event.
            let pieces: Vec<Piece<'_>> = self.pieces().take(EVENTS_PER_WRITE).collect();
            let mut slices = Vec::with_capacity(4 * pieces.len());
            let mut skip = self.offset;
            for piece in &pieces {
                // Only the front piece can be partly written.
                for part in [&piece.head.0[..piece.head.1], piece.pre, piece.body, piece.tail] {
                    let cut = skip.min(part.len());
                    skip -= cut;
                    if part.len() > cut {
                        slices.push(IoSlice::new(&part[cut..]));
                    }
                }
            }
            let result = socket.try_write_vectored(&slices);
            drop(slices);
            drop(pieces);
            match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    self.advance(written);
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(progress),
                Err(e) => return Err(e),
            }
        }
        Ok(progress)
    }

    /// Nothing queued here, and nothing held by `socket` either.
    pub(crate) fn is_done(&self, socket: &impl TryWrite) -> bool {
        self.queue.is_empty() && !socket.pending()
    }

    /// Drops `n` written bytes from the front.
    fn advance(&mut self, mut n: usize) {
        self.bytes = self.bytes.saturating_sub(n);
        while n > 0 {
            let Some(len) = self.pieces().next().map(|p| p.len()) else { return };
            let left = len - self.offset;
            if n < left {
                self.offset += n;
                return;
            }
            n -= left;
            self.offset = 0;
            let (done, wrote) = match self.queue.front_mut() {
                Some(Pending::Batch { batch, next, end, slot }) => {
                    let seq = batch.frames[*next].seq;
                    *next += 1;
                    (*next >= *end, Some((*slot, seq)))
                }
                Some(Pending::Raw(_) | Pending::Text(_)) => (true, None),
                None => return,
            };
            if let Some((slot, seq)) = wrote {
                self.note_written(slot, seq);
            }
            if done {
                self.queue.pop_front();
            }
        }
    }
}

#[cfg(test)]
mod tests;
