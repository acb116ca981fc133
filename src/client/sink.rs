//! Where `runtap run` and `logs` write the job's output.

use std::io::Write;
use std::os::fd::AsFd as _;

use base64::Engine as _;

use super::ClientError;
use crate::event::{Encoding, EventType};

/// Where `runtap run` and `logs` write the job's output: stdout and stderr
/// each get exactly their own events' bytes, in event order. Output of one
/// stream is gathered while events of that stream follow each other and
/// written when the stream changes or the client would wait for the
/// daemon: a few big writes instead of a write and a flush per event.
#[derive(Default)]
pub struct OutputSink {
    /// Bytes not yet written, all of `stream`.
    pending: Vec<u8>,
    stream: Option<EventType>,
    /// The current event's `data`, as decoded from JSON (base64 or text).
    pub(super) data: Vec<u8>,
}

/// Pending output written even while more is ready, to bound the buffer.
const SINK_FLUSH: usize = 1024 * 1024;
/// Capacity asked for stdout and stderr when they are pipes (Linux
/// defaults to 64 KiB): a 1 MiB write into a 64 KiB pipe blocks 16 times,
/// and each block is a context switch for runtap and its reader.
const OUTPUT_PIPE_SIZE: i32 = SINK_FLUSH as i32;

impl OutputSink {
    /// A sink for this process's stdout and stderr, with their pipes grown.
    pub fn new() -> Self {
        for fd in [std::io::stdout().as_fd(), std::io::stderr().as_fd()] {
            // Best effort: not a pipe (a terminal, a file), or above
            // /proc/sys/fs/pipe-max-size, and it stays as it is.
            let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(OUTPUT_PIPE_SIZE));
        }
        OutputSink::default()
    }

    /// Moves the decoded `data` of an output event into the pending bytes.
    pub(super) fn take_data(
        &mut self,
        stream: EventType,
        encoding: Option<Encoding>,
        seq: u64,
    ) -> Result<(), ClientError> {
        if self.stream != Some(stream) {
            self.flush()?;
            self.stream = Some(stream);
        }
        match encoding {
            Some(Encoding::Base64) => {
                let bad = |e| ClientError::Protocol(format!("bad base64 in event {seq}: {e}"));
                base64::engine::general_purpose::STANDARD.decode_vec(&self.data, &mut self.pending).map_err(bad)?;
            }
            None if self.pending.is_empty() => std::mem::swap(&mut self.pending, &mut self.data),
            None => self.pending.extend_from_slice(&self.data),
        }
        self.data.clear();
        if self.pending.len() >= SINK_FLUSH {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes out what is pending.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        match self.stream {
            Some(EventType::Stdout) => {
                let mut out = std::io::stdout().lock();
                out.write_all(&self.pending)?;
                out.flush()?;
            }
            Some(EventType::Stderr) => {
                let mut err = std::io::stderr().lock();
                err.write_all(&self.pending)?;
                err.flush()?;
            }
            _ => {}
        }
        self.pending.clear();
        Ok(())
    }
}

impl Drop for OutputSink {
    /// Output already received is written even when the client stops on an
    /// error (a broken line, a lost socket) before its next flush.
    fn drop(&mut self) {
        let _ = self.flush();
    }
}
