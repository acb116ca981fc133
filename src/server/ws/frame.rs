//! WebSocket bytes on the wire: the session's own frames (control
//! messages, pings, closes), and the read side handed to tungstenite.
//!
//! tungstenite copies every outgoing message into a per-connection buffer
//! before the socket copies it again. At 1000 subscribers that copy was 18 %
//! of the fan-out profile, and each connection's buffer kept the capacity of
//! its largest burst (BENCHMARKS.md). So events are written by the session
//! itself, from the journal's shared buffers (`server::outbox`).
//!
//! Reading stays with tungstenite (masking, fragments, UTF-8, control
//! frames, size limits). Its writes — pongs and close replies — land in a
//! small buffer that the session sends between frames, so the socket has a
//! single writer and frames never interleave.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::server::conn::Conn;
use crate::server::outbox::ws_header;

/// RFC 6455 opcodes the server sends.
pub(in crate::server) const CLOSE: u8 = 0x8;
pub(in crate::server) const PING: u8 = 0x9;

/// One complete frame, encoded: for the session's own messages, pings and closes.
pub(in crate::server) fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    let mut h = [0u8; 10];
    let n = ws_header(opcode, payload.len(), &mut h);
    let mut out = BytesMut::with_capacity(n + payload.len());
    out.put_slice(&h[..n]);
    out.put_slice(payload);
    out.freeze()
}

/// A close frame with its status code and a short reason.
pub(in crate::server) fn close_frame(code: u16, reason: &str) -> Bytes {
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

/// The read side of a connection as tungstenite sees it: reads come from
/// the socket (after any bytes hyper read past the upgrade request), and
/// writes are collected in `control` for the session to send.
pub(in crate::server) struct ClientIo {
    conn: Arc<Conn>,
    early: Bytes,
    control: Arc<Mutex<BytesMut>>,
    /// Bytes the client may still send before it is authenticated; `None`
    /// once it is. Spent, reads fail: an unauthenticated peer cannot make
    /// the daemon buffer more than this, in whole or in fragments.
    budget: Option<usize>,
}

impl ClientIo {
    pub(in crate::server) fn new(conn: Arc<Conn>, early: Bytes, control: Arc<Mutex<BytesMut>>, budget: usize) -> Self {
        // `early` is a view into hyper's read buffer (8 KiB or more); keeping
        // the view would keep that buffer for the life of the connection.
        let early = if early.is_empty() { Bytes::new() } else { Bytes::copy_from_slice(&early) };
        ClientIo { conn, early, control, budget: Some(budget) }
    }

    /// The client is authenticated: only the message limits apply now.
    pub(in crate::server) fn lift_budget(&mut self) {
        self.budget = None;
    }

    /// Whether reads failed because the unauthenticated budget was spent.
    pub(in crate::server) fn budget_spent(&self) -> bool {
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
pub(in crate::server) fn take_control(control: &Mutex<BytesMut>) -> Bytes {
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
        let unfilled = buf.initialize_unfilled();
        let limit = unfilled.len().min(room);
        let n = ready!(self.conn.poll_read(cx, &mut unfilled[..limit]))?;
        buf.advance(n);
        self.spend(n);
        Poll::Ready(Ok(()))
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

    #[test]
    fn close_reason_is_cut_at_a_char_boundary() {
        let frame = close_frame(4400, &"é".repeat(100));
        assert!(frame.len() <= 2 + 125);
        assert!(std::str::from_utf8(&frame[4..]).is_ok());
    }
}
