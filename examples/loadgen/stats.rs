//! What one subscriber saw, and whether that was the whole run.

use std::time::Instant;

use crate::cli::Decode;
use crate::histogram::Hist;

/// What a subscriber does after a frame.
pub(crate) enum Step {
    /// Read the next frame.
    Next,
    /// The run's final status arrived.
    Done,
    /// Answer an Engine.IO ping.
    Pong,
    /// Stop: an error event, or a frame that is not what the protocol says.
    Fail(String),
}

#[derive(Default)]
pub(crate) struct SubStats {
    /// Text frames received, of any kind.
    pub(crate) frames: u64,
    /// Output events.
    pub(crate) events: u64,
    /// Text frame bytes, as received.
    pub(crate) bytes: u64,
    /// Lines counted: light, by the highest index seen; json, each line
    /// received in order.
    pub(crate) lines: u64,
    /// Highest line index seen (-1: none).
    pub(crate) max_idx: i64,
    /// Line indices skipped (light: more than one at a time) or repeated.
    pub(crate) gaps: u64,
    pub(crate) dups: u64,
    pub(crate) hist: Option<Hist>,
    pub(crate) first_at: Option<Instant>,
    pub(crate) done_at: Option<Instant>,
    pub(crate) resubscribes: u32,
    /// Closed by runtap with 1013 (`lagged`), whether resubscribed or not.
    pub(crate) cut_offs: u32,
    pub(crate) error: Option<String>,
    // `--decode json` only.
    /// `seq` not one more than the previous event's, or not above it.
    pub(crate) seq_gaps: u64,
    pub(crate) seq_dups: u64,
    /// Decoded `data` bytes of stdout events (concatenated: the job's output).
    pub(crate) data_bytes: u64,
    pub(crate) stderr_bytes: u64,
    /// Lines without a `t=… i=…` head, or not as long as the first one.
    pub(crate) bad_lines: u64,
    /// The next line index expected.
    pub(crate) next_idx: u64,
    pub(crate) line_len: usize,
    /// The start of a line whose end has not arrived yet.
    pub(crate) carry: Vec<u8>,
}

impl SubStats {
    pub(crate) fn new() -> Self {
        SubStats { max_idx: -1, ..Default::default() }
    }

    /// Whether this subscriber got the whole run: its final status, and
    /// every line (json: every byte and every `seq` too, each once, in order).
    pub(crate) fn complete(&self, decode: Decode, expect_lines: u64, expect_bytes: Option<u64>) -> bool {
        if self.done_at.is_none() || self.gaps != 0 {
            return false;
        }
        match decode {
            Decode::Light => self.max_idx + 1 == expect_lines as i64,
            Decode::Json => {
                self.next_idx == expect_lines
                    && self.lines == expect_lines
                    && self.dups == 0
                    && self.seq_gaps == 0
                    && self.seq_dups == 0
                    && self.bad_lines == 0
                    && self.carry.is_empty()
                    && expect_bytes.is_none_or(|b| b == self.data_bytes)
            }
        }
    }
}
