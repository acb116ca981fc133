//! WebSocket bytes on the wire: frames written straight from shared event
//! buffers, and the read side handed to tungstenite.
//!
//! tungstenite copies every outgoing message into a per-connection buffer
//! before the socket copies it again. At 1000 subscribers that copy was 18 %
//! of the fan-out profile, and each connection's buffer kept the capacity of
//! its largest burst (BENCHMARKS.md). Here an event frame is a header of at
//! most 10 bytes built on the stack plus the journaled JSON that every
//! subscriber shares, handed to `writev`: the only copy is the kernel's.
//!
//! Reading stays with tungstenite (masking, fragments, UTF-8, control
//! frames, size limits). Its writes — pongs and close replies — land in a
//! small buffer that the session sends between frames, so the socket has a
//! single writer and frames never interleave.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::event::Batch;

/// Frames per `writev` (two slices each; Linux allows 1024 slices).
const FRAMES_PER_WRITE: usize = 256;

/// RFC 6455 opcodes the server sends.
pub(super) const TEXT: u8 = 0x1;
pub(super) const CLOSE: u8 = 0x8;
pub(super) const PING: u8 = 0x9;

/// Encodes an unmasked, final frame header (RFC 6455 §5.2) into `out`;
/// returns its length. Server frames are never masked, so 10 bytes suffice.
fn header(opcode: u8, len: usize, out: &mut [u8; 10]) -> usize {
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

fn header_len(len: usize) -> usize {
    match len {
        0..126 => 2,
        126..=0xffff => 4,
        _ => 10,
    }
}

/// One complete frame, encoded: for the session's own messages, pings and closes.
pub(super) fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    let mut h = [0u8; 10];
    let n = header(opcode, payload.len(), &mut h);
    let mut out = BytesMut::with_capacity(n + payload.len());
    out.put_slice(&h[..n]);
    out.put_slice(payload);
    out.freeze()
}

/// A close frame with its status code and a short reason.
pub(super) fn close_frame(code: u16, reason: &str) -> Bytes {
    // Control frames carry at most 125 bytes: the code and up to 123 of reason.
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = Vec::with_capacity(2 + cut);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    encode(CLOSE, &payload)
}

enum Pending {
    /// Text frames of a batch shared with every subscriber, from index `next`.
    Batch { batch: Arc<Batch>, next: usize },
    /// Bytes already framed.
    Raw(Bytes),
}

/// What is waiting to be written to one connection, in order. Holding a
/// batch costs a pointer, so a subscriber's backlog is bounded by its hub
/// queue, not here; the session only refills the outbox once it is short.
#[derive(Default)]
pub(super) struct Outbox {
    queue: VecDeque<Pending>,
    /// Bytes of the front frame already written (header included).
    offset: usize,
    /// Bytes still to write.
    bytes: usize,
}

/// A piece of the outbox: a text payload that needs a header, or raw bytes.
enum Piece<'a> {
    Text(&'a [u8]),
    Raw(&'a [u8]),
}

impl Piece<'_> {
    fn len(&self) -> usize {
        match self {
            Piece::Text(p) => header_len(p.len()) + p.len(),
            Piece::Raw(r) => r.len(),
        }
    }
}

impl Outbox {
    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Queues `batch`'s events with `seq > after` as text frames; returns
    /// how many events and payload bytes that was.
    pub(super) fn push_batch(&mut self, batch: Arc<Batch>, after: u64) -> (u64, u64) {
        let next = batch.frames.partition_point(|f| f.seq <= after);
        let frames = &batch.frames[next..];
        if frames.is_empty() {
            return (0, 0);
        }
        let payload: usize = frames.iter().map(|f| f.json.len()).sum();
        self.bytes += payload + frames.iter().map(|f| header_len(f.json.len())).sum::<usize>();
        let counts = (frames.len() as u64, payload as u64);
        self.queue.push_back(Pending::Batch { batch, next });
        counts
    }

    pub(super) fn push_raw(&mut self, raw: Bytes) {
        if !raw.is_empty() {
            self.bytes += raw.len();
            self.queue.push_back(Pending::Raw(raw));
        }
    }

    pub(super) fn push_text(&mut self, text: &str) {
        self.push_raw(encode(TEXT, text.as_bytes()));
    }

    fn pieces(&self) -> impl Iterator<Item = Piece<'_>> {
        self.queue.iter().flat_map(|p| {
            let (frames, raw) = match p {
                Pending::Batch { batch, next } => (&batch.frames[*next..], None),
                Pending::Raw(r) => (&[][..], Some(Piece::Raw(r))),
            };
            frames.iter().map(|f| Piece::Text(f.json.as_bytes())).chain(raw)
        })
    }

    /// Writes as much as the socket takes without waiting. Ok(true) if
    /// anything was written; `WouldBlock` is not an error.
    pub(super) fn write_to(&mut self, tcp: &TcpStream) -> io::Result<bool> {
        let mut progress = false;
        while !self.queue.is_empty() {
            // Sized to what is queued: a fixed array for the largest write
            // would be zeroed on every call, ~12 KiB per subscriber per event.
            let mut headers: Vec<([u8; 10], usize)> = Vec::with_capacity(self.queue.len().min(FRAMES_PER_WRITE));
            for piece in self.pieces().take(FRAMES_PER_WRITE) {
                let mut h = [0u8; 10];
                let n = match piece {
                    Piece::Text(p) => header(TEXT, p.len(), &mut h),
                    Piece::Raw(_) => 0,
                };
                headers.push((h, n));
            }
            let mut slices = Vec::with_capacity(2 * headers.len());
            let mut skip = self.offset;
            for (piece, (h, n)) in self.pieces().zip(&headers) {
                let (head, body) = match piece {
                    Piece::Text(p) => (&h[..*n], p),
                    Piece::Raw(r) => (&[][..], r),
                };
                // Only the front piece can be partly written.
                let head_skip = skip.min(head.len());
                let body_skip = skip - head_skip;
                skip = 0;
                for part in [&head[head_skip..], &body[body_skip..]] {
                    if !part.is_empty() {
                        slices.push(IoSlice::new(part));
                    }
                }
            }
            match tcp.try_write_vectored(&slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    self.advance(written);
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(progress)
    }

    /// Drops `n` written bytes from the front.
    fn advance(&mut self, mut n: usize) {
        self.bytes = self.bytes.saturating_sub(n);
        while n > 0 {
            let Some(front) = self.queue.front_mut() else { return };
            let len = match front {
                Pending::Batch { batch, next } => batch.frames.get(*next).map_or(0, |f| Piece::Text(f.bytes()).len()),
                Pending::Raw(r) => r.len(),
            };
            let left = len - self.offset;
            if n < left {
                self.offset += n;
                return;
            }
            n -= left;
            self.offset = 0;
            let done = match front {
                Pending::Batch { batch, next } => {
                    *next += 1;
                    *next >= batch.frames.len()
                }
                Pending::Raw(_) => true,
            };
            if done {
                self.queue.pop_front();
            }
        }
    }
}

/// The read side of a connection as tungstenite sees it: reads come from
/// the socket (after any bytes hyper read past the upgrade request), and
/// writes are collected in `control` for the session to send.
pub(super) struct ClientIo {
    tcp: Arc<TcpStream>,
    early: Bytes,
    control: Arc<Mutex<BytesMut>>,
    /// Bytes the client may still send before it is authenticated; `None`
    /// once it is. Spent, reads fail: an unauthenticated peer cannot make
    /// the daemon buffer more than this, in whole or in fragments.
    budget: Option<usize>,
}

impl ClientIo {
    pub(super) fn new(tcp: Arc<TcpStream>, early: Bytes, control: Arc<Mutex<BytesMut>>, budget: usize) -> Self {
        // `early` is a view into hyper's read buffer (8 KiB or more); keeping
        // the view would keep that buffer for the life of the connection.
        let early = if early.is_empty() { Bytes::new() } else { Bytes::copy_from_slice(&early) };
        ClientIo { tcp, early, control, budget: Some(budget) }
    }

    /// The client is authenticated: only the message limits apply now.
    pub(super) fn lift_budget(&mut self) {
        self.budget = None;
    }

    /// Whether reads failed because the unauthenticated budget was spent.
    pub(super) fn budget_spent(&self) -> bool {
        self.budget == Some(0)
    }
}

impl ClientIo {
    fn spend(&mut self, n: usize) {
        if let Some(left) = &mut self.budget {
            *left = left.saturating_sub(n);
        }
    }
}

/// Takes whatever tungstenite wrote (complete frames) since the last call.
pub(super) fn take_control(control: &Mutex<BytesMut>) -> Bytes {
    lock(control).split().freeze()
}

/// The buffer is only ever appended to or taken whole, so a poisoned lock
/// still holds whole frames.
fn lock(m: &Mutex<BytesMut>) -> MutexGuard<'_, BytesMut> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AsyncRead for ClientIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let room = match self.budget {
            Some(0) => return Poll::Ready(Err(io::Error::other("unauthenticated read budget spent"))),
            Some(left) => left.min(buf.remaining()),
            None => buf.remaining(),
        };
        if !self.early.is_empty() {
            let n = self.early.len().min(room);
            let early = self.early.split_to(n);
            buf.put_slice(&early);
            self.spend(n);
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let limit = unfilled.len().min(room);
            match self.tcp.try_read(&mut unfilled[..limit]) {
                Ok(n) => {
                    buf.advance(n);
                    self.spend(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        lock(&self.control).extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Frame;
    use std::io::Cursor;
    use tokio::io::AsyncReadExt;
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

    #[test]
    fn headers_parse_back_with_tungstenite() {
        for len in [0usize, 1, 125, 126, 127, 65535, 65536, 1 << 20] {
            let mut h = [0u8; 10];
            let n = header(TEXT, len, &mut h);
            assert_eq!(n, header_len(len));
            let (parsed, plen) = FrameHeader::parse(&mut Cursor::new(&h[..n])).unwrap().unwrap();
            assert_eq!(plen, len as u64);
            assert!(parsed.is_final && parsed.mask.is_none());
            assert_eq!(parsed.opcode, OpCode::Data(Data::Text));
        }
    }

    fn batch(seqs: std::ops::RangeInclusive<u64>, size: usize) -> Arc<Batch> {
        let pad = |seq: u64| "0".repeat(size - seq.to_string().len()) + &seq.to_string();
        let frames = seqs.map(|seq| Frame { seq, json: pad(seq).into() }).collect();
        Arc::new(Batch { frames, last: false })
    }

    /// Decodes server frames back into (opcode, payload).
    fn decode(mut wire: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !wire.is_empty() {
            let mut c = Cursor::new(wire);
            let (h, len) = FrameHeader::parse(&mut c).unwrap().unwrap();
            let start = c.position() as usize;
            let end = start + len as usize;
            out.push((u8::from(h.opcode), wire[start..end].to_vec()));
            wire = &wire[end..];
        }
        out
    }

    #[tokio::test]
    async fn partial_writes_resume_mid_frame_and_keep_order() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).await.unwrap();
            all
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut out = Outbox::default();
        out.push_raw(encode(TEXT, b"hello"));
        assert_eq!(out.push_batch(batch(1..=3, 5), 1), (2, 10));
        // Big frames force partial writes once the socket buffer fills.
        out.push_batch(batch(4..=20, 200_000), 0);
        out.push_raw(close_frame(1000, "done"));
        while !out.is_empty() {
            out.write_to(&tcp).unwrap();
            if !out.is_empty() {
                tcp.writable().await.unwrap();
            }
        }
        assert_eq!(out.bytes(), 0);
        drop(tcp);
        let frames = decode(&client.await.unwrap());
        assert_eq!(frames.len(), 1 + 2 + 17 + 1);
        assert_eq!(frames[0], (TEXT, b"hello".to_vec()));
        assert_eq!(frames[1], (TEXT, b"00002".to_vec()));
        assert_eq!(frames[3].1.len(), 200_000);
        assert!(frames[19].1.starts_with(b"0000") && frames[19].1.ends_with(b"20"));
        assert_eq!(frames[20], (CLOSE, [&1000u16.to_be_bytes()[..], b"done"].concat()));
    }

    #[test]
    fn close_reason_is_cut_at_a_char_boundary() {
        let frame = close_frame(4400, &"é".repeat(100));
        assert!(frame.len() <= 2 + 125);
        assert!(std::str::from_utf8(&frame[4..]).is_ok());
    }
}
