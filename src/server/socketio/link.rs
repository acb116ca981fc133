//! A Socket.IO connection's WebSocket: read with tungstenite (masking,
//! fragments, control frames, size limits), written by the connection's
//! outbox straight to the socket, as `ws` does (see `ws::frame`).
//!
//! Engine.IO sends each packet as one text message, so a client message
//! here is one Engine.IO packet; Engine.IO's own ping/pong runs above this,
//! and WebSocket pings (rare from browsers) are answered by tungstenite
//! through the `control` buffer.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use hyper::upgrade::Upgraded;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role as WsRole;
use tokio_tungstenite::tungstenite::{Error as WsProtoError, Message};

use crate::server::conn::Conn;
use crate::server::outbox::TryWrite as _;
use crate::server::ws::frame::{self, ClientIo};
use crate::server::ws::limits::{AUTH_READ_BUDGET, ws_config};

/// What one read from the client gave.
pub(super) enum Read {
    /// One Engine.IO packet.
    Text(tokio_tungstenite::tungstenite::Utf8Bytes),
    /// Nothing for the connection (a WebSocket ping answered, a pong).
    Nothing,
    /// The client closed, or the socket broke.
    Gone,
    /// A message over `max_frame_bytes`.
    TooLarge,
    /// Bytes that are not WebSocket, binary, or text that is not UTF-8.
    Bad(String),
}

pub(super) struct Link {
    pub conn: Arc<Conn>,
    reader: WebSocketStream<ClientIo>,
    /// What tungstenite wrote (pongs, close replies), to send between frames.
    control: Arc<Mutex<BytesMut>>,
}

impl Link {
    /// The socket under an upgraded request; `None` if it is neither TCP
    /// nor TLS (the listener serves nothing else, so this does not happen).
    pub(super) async fn from_upgraded(upgraded: Upgraded, max_frame_bytes: usize) -> Option<Link> {
        let (conn, early) = crate::server::conn::from_upgraded(upgraded)?;
        Some(Link::new(conn, early, max_frame_bytes).await)
    }

    async fn new(conn: Conn, early: Bytes, max_frame_bytes: usize) -> Link {
        let conn = Arc::new(conn);
        let control = Arc::new(Mutex::new(BytesMut::new()));
        let io = ClientIo::new(conn.clone(), early, control.clone(), AUTH_READ_BUDGET);
        let reader = WebSocketStream::from_raw_socket(io, WsRole::Server, Some(ws_config(max_frame_bytes))).await;
        Link { conn, reader, control }
    }

    /// Writes `bytes` whole now, or reports that the socket would not take them.
    pub(super) fn send_now(&self, bytes: &[u8]) -> bool {
        let sent = self.conn.try_write_vectored(&[std::io::IoSlice::new(bytes)]);
        sent.ok() == Some(bytes.len()) && self.conn.try_flush().is_ok() && !self.conn.pending()
    }

    /// The client is authenticated: only the message limits apply now.
    pub(super) fn lift_budget(&mut self) {
        self.reader.get_mut().lift_budget();
    }

    pub(super) fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Read> {
        let msg = match self.reader.poll_next_unpin(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(msg) => msg,
        };
        Poll::Ready(match msg {
            None | Some(Ok(Message::Close(_))) => Read::Gone,
            Some(Ok(Message::Text(text))) => Read::Text(text),
            Some(Ok(Message::Binary(_))) => Read::Bad("binary messages are not part of this protocol".into()),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Read::Nothing,
            Some(Err(WsProtoError::Capacity(_))) => Read::TooLarge,
            Some(Err(WsProtoError::Utf8(_))) => Read::Bad("a text message is not valid UTF-8".into()),
            Some(Err(WsProtoError::Protocol(e))) => Read::Bad(format!("WebSocket protocol error: {e}")),
            Some(Err(_)) if self.reader.get_ref().budget_spent() => {
                Read::Bad(format!("more than {AUTH_READ_BUDGET} bytes before connecting"))
            }
            Some(Err(error)) => {
                tracing::debug!(%error, "socket.io websocket read failed");
                Read::Gone
            }
        })
    }

    /// What tungstenite queued (a pong, a close reply), framed, to send next.
    pub(super) fn take_control(&mut self) -> Bytes {
        // tungstenite queues control replies on read; flushing hands them to `control`.
        let waker = futures_util::task::noop_waker();
        let _ = futures_util::SinkExt::poll_flush_unpin(&mut self.reader, &mut Context::from_waker(&waker));
        frame::take_control(&self.control)
    }
}

/// A close frame with its code and reason.
pub(super) fn close_frame(code: u16, reason: &str) -> Bytes {
    frame::close_frame(code, reason)
}
