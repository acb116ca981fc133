//! The daemon reading a run's journal as its shim writes it: the bytes
//! between two marks, from the page cache, cut into the frames every
//! subscriber shares (one allocation per read, as the writer's batches).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;

use bytes::BytesMut;

use crate::event::{EventType, Frame, Utf8Bytes};
use crate::journal::{line_seq, reserve_reusing};

/// Bigger marks are read in pieces of this size (a fast job's batch is 1 MiB).
const MAX_READ: u64 = 4 * 1024 * 1024;

pub(super) struct Tail {
    file: File,
    /// Where the next unread line starts.
    pos: u64,
    buf: BytesMut,
}

/// What one read found.
#[derive(Default)]
pub(super) struct Read {
    pub frames: Vec<Frame>,
    /// The status events among them (their seq and line), for the table.
    pub statuses: Vec<Frame>,
}

impl Tail {
    pub(super) fn new(file: File, pos: u64) -> Self {
        Tail { file, pos, buf: BytesMut::new() }
    }

    /// Every complete line below `upto` (all there is, with `None`). A
    /// line that is not an event (a damaged file) is skipped and logged.
    pub(super) fn read(&mut self, upto: Option<u64>) -> io::Result<Read> {
        let mut out = Read::default();
        loop {
            let end = match upto {
                Some(end) => end,
                None => self.file.metadata()?.len(),
            };
            if end <= self.pos {
                return Ok(out);
            }
            let want = (end - self.pos).min(MAX_READ) as usize;
            reserve_reusing(&mut self.buf, want, want);
            self.buf.resize(want, 0);
            let got = crate::journal::off_workers(|| read_full(&self.file, &mut self.buf, self.pos))?;
            self.buf.truncate(got);
            let Some(last_newline) = memchr::memrchr(b'\n', &self.buf) else {
                // Not a whole line yet (or a line longer than a read, which
                // an event never is): wait for more.
                self.buf.clear();
                return Ok(out);
            };
            let chunk = self.buf.split_to(last_newline + 1).freeze();
            self.buf.clear();
            self.pos += chunk.len() as u64;
            let mut start = 0;
            for nl in memchr::memchr_iter(b'\n', &chunk) {
                let line = chunk.slice(start..nl);
                start = nl + 1;
                let (Some(seq), Ok(json)) = (line_seq(&line), Utf8Bytes::try_from(line)) else {
                    tracing::warn!(offset = self.pos, "skipping a journal line that is not an event");
                    continue;
                };
                let frame = Frame { seq, json };
                if EventType::of_line(frame.bytes()) == Some(EventType::Status) {
                    out.statuses.push(frame.clone());
                }
                out.frames.push(frame);
            }
            if got < want {
                return Ok(out);
            }
        }
    }
}

/// Reads at `offset` until `buf` is full or the file ends; returns how much.
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
