//! An upgraded connection's byte stream: plain TCP, or TLS over it.
//!
//! Sessions write events straight from the journal's shared buffers with
//! `writev` and read through tungstenite (see `outbox`, `ws::frame`); both
//! need a socket they can try without waiting, from one task, through a
//! shared reference. With TLS that socket is rustls' connection state
//! driven by hand (its sans-I/O API) over the same non-blocking TCP
//! stream: plaintext in, records out to the kernel as far as it takes
//! them. The one extra copy is the encryption itself.
//!
//! rustls may hold records the kernel did not take yet (`pending`): a
//! session is not idle until they are out, or they would wait for the
//! next event.

use std::io::{self, IoSlice, Read as _, Write as _};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use rustls::ServerConnection;
use tokio::net::TcpStream;

use super::outbox::TryWrite;

pub(crate) struct Conn {
    tcp: TcpStream,
    /// Boxed: a plain connection does not carry rustls' state inline.
    /// Locked only by the connection's own task, so never contended.
    tls: Option<Box<Mutex<ServerConnection>>>,
}

impl Conn {
    pub(crate) fn plain(tcp: TcpStream) -> Self {
        Conn { tcp, tls: None }
    }

    /// After the handshake (and any requests hyper read through it).
    pub(crate) fn tls(tcp: TcpStream, tls: ServerConnection) -> Self {
        Conn { tcp, tls: Some(Box::new(Mutex::new(tls))) }
    }

    /// The TCP socket, for waiting on readiness and for the raw drain
    /// after a close (what is read then is thrown away, decrypted or not).
    pub(crate) fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Whether encrypted bytes wait for the kernel to take them.
    pub(crate) fn pending(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| lock(t).wants_write())
    }

    pub(crate) fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp.poll_write_ready(cx)
    }

    pub(crate) async fn writable(&self) -> io::Result<()> {
        self.tcp.writable().await
    }

    /// Reads what the peer sent: plaintext. `Ok(0)` is the end.
    pub(crate) fn poll_read(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let Some(tls) = &self.tls else {
            loop {
                ready!(self.tcp.poll_read_ready(cx))?;
                match self.tcp.try_read(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    done => return Poll::Ready(done),
                }
            }
        };
        loop {
            {
                let mut tls = lock(tls);
                // Plaintext rustls already holds comes first: there may be
                // no more on the socket to wake us.
                match tls.reader().read(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    done => return Poll::Ready(done),
                }
                match tls.read_tls(&mut Raw(&self.tcp)) {
                    Ok(_) => {
                        if let Err(error) = tls.process_new_packets() {
                            // The alert rustls queued goes out if it can.
                            let _ = flush(&mut tls, &self.tcp);
                            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, error)));
                        }
                        // A reply of its own (a key update, a close_notify); the
                        // rest goes with the next write (see `pending`).
                        let _ = flush(&mut tls, &self.tcp);
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            ready!(self.tcp.poll_read_ready(cx))?;
        }
    }

    /// Queues a TLS close_notify (sent by the next write or flush).
    pub(crate) fn close_notify(&self) {
        if let Some(tls) = &self.tls {
            lock(tls).send_close_notify();
        }
    }
}

impl TryWrite for Conn {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let Some(tls) = &self.tls else { return self.tcp.try_write_vectored(bufs) };
        let mut tls = lock(tls);
        // Records already made go first; while they wait, no new plaintext
        // is taken, so what rustls buffers stays within its limit.
        flush(&mut tls, &self.tcp)?;
        if tls.wants_write() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = tls.writer().write_vectored(bufs)?;
        flush(&mut tls, &self.tcp)?;
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn try_flush(&self) -> io::Result<usize> {
        match &self.tls {
            Some(tls) => flush(&mut lock(tls), &self.tcp),
            None => Ok(0),
        }
    }

    fn pending(&self) -> bool {
        Conn::pending(self)
    }
}

/// Writes the records rustls holds as far as the socket takes them;
/// returns how many bytes went (`wants_write` says whether any are left).
fn flush(tls: &mut ServerConnection, tcp: &TcpStream) -> io::Result<usize> {
    let mut sent = 0;
    while tls.wants_write() {
        match tls.write_tls(&mut Raw(tcp)) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

/// A poisoned lock still holds a consistent connection state: every
/// operation on it runs to completion or fails as a whole.
fn lock(m: &Mutex<ServerConnection>) -> MutexGuard<'_, ServerConnection> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The non-blocking socket as rustls' `Read`/`Write`: `WouldBlock` when
/// the kernel has nothing or takes nothing (and tokio then waits for
/// readiness again).
struct Raw<'a>(&'a TcpStream);

impl io::Read for Raw<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl io::Write for Raw<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The connection under an upgraded request, and what hyper read past the
/// request; `None` if it is neither of the two streams the listener makes.
pub(crate) fn from_upgraded(upgraded: hyper::upgrade::Upgraded) -> Option<(Conn, bytes::Bytes)> {
    use hyper_util::rt::TokioIo;
    let upgraded = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => return Some((Conn::plain(parts.io.into_inner()), parts.read_buf)),
        Err(upgraded) => upgraded,
    };
    let parts = upgraded.downcast::<TokioIo<tokio_rustls::server::TlsStream<TcpStream>>>().ok()?;
    let (tcp, tls) = parts.io.into_inner().into_inner();
    Some((Conn::tls(tcp, tls), parts.read_buf))
}
