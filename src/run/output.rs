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

use bytes::{BufMut as _, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::event::EventType;

/// Largest event payload (before encoding).
pub const MAX_CHUNK: usize = 64 * 1024;
/// Largest read from the child. A job that fills every read gets bigger
/// ones, up to this: each read is one message to the supervisor and one
/// journal batch, so a fast job costs fewer wake-ups per byte, while a
/// quiet one keeps a small buffer.
const MAX_READ: usize = 1024 * 1024;
/// Reads that fit in one allocation of the read buffer. Pieces handed to
/// the supervisor keep their allocation alive until journaled; with room
/// for several reads the buffer is usually free again when it is full, and
/// is reused instead of a fresh one being faulted in.
const READS_PER_BUFFER: usize = 4;

/// A message from a stream reader to its run's supervisor.
#[derive(Debug)]
pub enum Output {
    /// Event-sized pieces, in order, from one read.
    Data {
        stream: EventType,
        pieces: Vec<Bytes>,
    },
    Eof {
        stream: EventType,
    },
}

/// Splits a byte stream into event-sized pieces. Pure logic, no I/O. The
/// pieces are cut off the front of the buffer the child's output was read
/// into, so they are not copied.
#[derive(Default)]
pub struct Chunker {
    buf: BytesMut,
}

impl Chunker {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Makes room to read `n` more bytes (see [`READS_PER_BUFFER`]).
    fn reserve(&mut self, n: usize) {
        if self.buf.capacity() - self.buf.len() >= n || self.buf.try_reclaim(n) {
            return;
        }
        self.buf.reserve(n * READS_PER_BUFFER);
    }

    /// Takes the next ready piece. With `force`, a partial line is taken too
    /// (minus an incomplete trailing character, unless `eof`).
    pub fn take(&mut self, force: bool, eof: bool) -> Option<Bytes> {
        if self.buf.is_empty() {
            return None;
        }
        let limit = self.buf.len().min(MAX_CHUNK);
        let cut = match memchr::memrchr(b'\n', &self.buf[..limit]) {
            Some(nl) => nl + 1,
            None if eof => limit,
            None if force || self.buf.len() >= MAX_CHUNK => match utf8_cut(&self.buf[..limit]) {
                0 if self.buf.len() >= MAX_CHUNK || eof => limit,
                0 => return None,
                cut => cut,
            },
            None => return None,
        };
        Some(self.buf.split_to(cut).freeze())
    }
}

/// The longest prefix of `bytes` that does not end inside a UTF-8 character.
fn utf8_cut(bytes: &[u8]) -> usize {
    let len = bytes.len();
    // Look back at most 3 bytes for the lead byte of a trailing character.
    for back in 1..=len.min(4) {
        let b = bytes[len - back];
        if b & 0b1100_0000 == 0b1000_0000 {
            continue; // continuation byte
        }
        let needed = match b {
            0x00..=0x7f => 1,
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf7 => 4,
            _ => return len, // not UTF-8 anyway; any cut is as good
        };
        return if needed > back { len - back } else { len };
    }
    len
}

/// Reads one of the child's streams until EOF (or `stop`, after the drain
/// deadline) and sends its pieces to the supervisor. The channel is bounded:
/// if the journal cannot keep up the child blocks on its pipe, as it would
/// writing to a slow disk itself.
pub async fn pump<R: AsyncRead + Unpin>(
    mut reader: R,
    stream: EventType,
    tx: mpsc::Sender<Output>,
    line_hold: Duration,
    stop: CancellationToken,
) {
    let mut chunker = Chunker::default();
    let mut read_size = MAX_CHUNK;
    let mut hold_until: Option<Instant> = None;
    loop {
        chunker.reserve(read_size);
        let mut room = (&mut chunker.buf).limit(read_size);
        let read = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            r = reader.read_buf(&mut room) => r,
            _ = sleep_until(hold_until) => {
                hold_until = None;
                if !send_ready(&mut chunker, true, false, stream, &tx).await {
                    return;
                }
                continue;
            }
        };
        match read {
            Ok(0) => break,
            Ok(n) => {
                if n == read_size {
                    read_size = (read_size * 2).min(MAX_READ);
                }
                if !send_ready(&mut chunker, false, false, stream, &tx).await {
                    return;
                }
                hold_until = chunker.has_partial().then(|| hold_until.unwrap_or_else(|| Instant::now() + line_hold));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => {
                tracing::warn!(?stream, %error, "reading job output failed; treating as end of stream");
                break;
            }
        }
    }
    if send_ready(&mut chunker, true, true, stream, &tx).await {
        let _ = tx.send(Output::Eof { stream }).await;
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Sends every ready piece, as one message; false if the supervisor is gone.
async fn send_ready(
    chunker: &mut Chunker,
    force: bool,
    eof: bool,
    stream: EventType,
    tx: &mpsc::Sender<Output>,
) -> bool {
    let pieces: Vec<Bytes> = std::iter::from_fn(|| chunker.take(force, eof)).collect();
    pieces.is_empty() || tx.send(Output::Data { stream, pieces }).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(c: &mut Chunker, force: bool, eof: bool) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| c.take(force, eof)).map(|b| b.to_vec()).collect()
    }

    #[test]
    fn whole_lines_go_out_partial_is_held() {
        let mut c = Chunker::default();
        c.push(b"one\ntwo\nthr");
        assert_eq!(drain(&mut c, false, false), vec![b"one\ntwo\n".to_vec()]);
        assert!(c.has_partial());
        c.push(b"ee\n");
        assert_eq!(drain(&mut c, false, false), vec![b"three\n".to_vec()]);
    }

    #[test]
    fn forced_flush_never_splits_a_character() {
        let mut c = Chunker::default();
        let euro = "€".as_bytes(); // 3 bytes
        c.push(b"ab");
        c.push(&euro[..2]);
        assert_eq!(drain(&mut c, true, false), vec![b"ab".to_vec()]);
        c.push(&euro[2..]);
        assert_eq!(drain(&mut c, true, false), vec![euro.to_vec()]);
    }

    #[test]
    fn long_lines_are_cut_at_max_chunk_on_char_boundaries() {
        let mut c = Chunker::default();
        let text = "é".repeat(MAX_CHUNK); // 2 bytes each, no newline
        c.push(text.as_bytes());
        let pieces = drain(&mut c, false, false);
        assert!(pieces.iter().all(|p| p.len() <= MAX_CHUNK && std::str::from_utf8(p).is_ok()));
        let mut all = pieces.concat();
        all.extend(drain(&mut c, true, true).concat());
        assert_eq!(all, text.as_bytes());
    }

    #[test]
    fn eof_flushes_everything_even_broken_utf8() {
        let mut c = Chunker::default();
        c.push(&[b'x', 0xe2, 0x82]);
        assert_eq!(drain(&mut c, true, false), vec![b"x".to_vec()]);
        assert_eq!(drain(&mut c, true, true), vec![vec![0xe2, 0x82]]);
    }

    #[tokio::test]
    async fn pump_reassembles_exact_bytes() {
        let mut input = Vec::new();
        for i in 0..5000u32 {
            input.extend_from_slice(format!("line {i} ").as_bytes());
            input.extend_from_slice(&i.to_le_bytes());
            if i % 3 == 0 {
                input.push(b'\n');
            }
        }
        let (tx, mut rx) = mpsc::channel(16);
        let task = tokio::spawn(pump(
            std::io::Cursor::new(input.clone()),
            EventType::Stdout,
            tx,
            Duration::from_millis(20),
            CancellationToken::new(),
        ));
        let mut got = Vec::new();
        while let Some(msg) = rx.recv().await {
            match msg {
                Output::Data { pieces, .. } => {
                    for piece in pieces {
                        assert!(piece.len() <= MAX_CHUNK);
                        got.extend_from_slice(&piece);
                    }
                }
                Output::Eof { .. } => break,
            }
        }
        task.await.unwrap();
        assert_eq!(got, input);
    }
}
