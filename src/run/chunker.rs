//! Cutting a stream of bytes into event-sized pieces: whole lines when it
//! can, never a UTF-8 character split, never more than [`MAX_CHUNK`].
//! Pure logic, no I/O (the timing is `output`'s).

use bytes::{Bytes, BytesMut};

/// Largest event payload (before encoding).
pub(crate) const MAX_CHUNK: usize = 64 * 1024;
/// Reads that fit in one allocation of the read buffer. Pieces handed to
/// the journal keep their allocation alive until it is written; with room
/// for several reads the buffer is usually free again when it is full, and
/// is reused instead of a fresh one being faulted in.
const READS_PER_BUFFER: usize = 4;

/// Splits a byte stream into event-sized pieces. Pure logic, no I/O. The
/// pieces are cut off the front of the buffer the child's output was read
/// into, so they are not copied.
#[derive(Default)]
pub(crate) struct Chunker {
    pub(super) buf: BytesMut,
}

impl Chunker {
    #[cfg(test)]
    pub(crate) fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    pub(crate) fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Makes room to read `n` more bytes (see [`READS_PER_BUFFER`]).
    ///
    /// With `quiet` (the job is not filling reads), room for this read only:
    /// an idle run then holds one small buffer per stream, not a burst's MBs.
    pub(super) fn reserve(&mut self, n: usize, quiet: bool) {
        let per_buffer = if quiet { 1 } else { READS_PER_BUFFER };
        crate::journal::reserve_reusing(&mut self.buf, n, n * per_buffer);
    }

    /// Takes the next ready piece. With `force`, a partial line is taken too
    /// (minus an incomplete trailing character, unless `eof`).
    pub(crate) fn take(&mut self, force: bool, eof: bool) -> Option<Bytes> {
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
}
