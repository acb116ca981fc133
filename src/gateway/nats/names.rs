//! What things are called in NATS: the stream, its subjects, the buckets,
//! their keys and the headers of a chunk of events.
//!
//! ```text
//! stream RUNTAP_EVENTS   runtap.ev.<host>.<epoch>.<run>.<incarnation>   one subject per run incarnation
//!   republished as       runtap.live.<same>                             stored chunks only, for live viewers
//! bucket runtap-hosts    <host>                                         which replica holds the host's link
//! bucket runtap-runs     <host>.<run>                                   the run index (GET /runs)
//! requests               runtap.cancel.<host>                           answered by the holding replica
//! ```
//!
//! IDs may hold `.` and `:`, which NATS reads as a token separator and KV
//! keys refuse, so every token is encoded: `[A-Za-z0-9_-]` as is, any
//! other byte as `=XX` (hex). Two IDs never encode alike, and `=` is legal
//! in both subjects and keys.

use std::fmt::Write as _;

pub(super) const STREAM: &str = "RUNTAP_EVENTS";
pub(super) const EVENTS_PREFIX: &str = "runtap.ev";
pub(super) const LIVE_PREFIX: &str = "runtap.live";
pub(super) const CANCEL_PREFIX: &str = "runtap.cancel";
pub(super) const HOSTS_BUCKET: &str = "runtap-hosts";
pub(super) const RUNS_BUCKET: &str = "runtap-runs";

/// First and last event seq a chunk holds (`first..=last`, consecutive).
pub(super) const FIRST_SEQ: &str = "Runtap-First-Seq";
pub(super) const LAST_SEQ: &str = "Runtap-Last-Seq";
/// Set on a chunk that records a gap (events the host's journal lost): no body.
pub(super) const GAP: &str = "Runtap-Gap";
/// Set on the chunk that carries the run's final status.
pub(super) const FINAL: &str = "Runtap-Final";
/// The replica that appended the chunk, for people reading the stream.
pub(super) const REPLICA: &str = "Runtap-Replica";

/// One token of a subject or key.
pub(super) fn token(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "={b:02X}");
        }
    }
    out
}

/// Which run of a reused ID: its `createdAt`, hashed (FNV-1a) to a short
/// token, since two runs of one ID must never share a subject.
pub(super) fn incarnation(created_at: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in created_at.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// One run incarnation of one life (epoch) of one host's state dir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct RunKey {
    pub host: String,
    pub epoch: String,
    pub run: String,
    pub incarnation: String,
}

impl RunKey {
    pub(super) fn new(host: &str, epoch: &str, run: &str, created_at: &str) -> Self {
        RunKey { host: host.into(), epoch: epoch.into(), run: run.into(), incarnation: incarnation(created_at) }
    }

    fn tail(&self) -> String {
        format!("{}.{}.{}.{}", token(&self.host), token(&self.epoch), token(&self.run), self.incarnation)
    }

    /// Where its chunks are appended (and read back).
    pub(super) fn subject(&self) -> String {
        format!("{EVENTS_PREFIX}.{}", self.tail())
    }

    /// Where the stream republishes its stored chunks.
    pub(super) fn live_subject(&self) -> String {
        format!("{LIVE_PREFIX}.{}", self.tail())
    }

    /// Dedup ID of a chunk: the same events of the same run get the same ID,
    /// whichever replica sends them.
    pub(super) fn msg_id(&self, first: u64, last: u64) -> String {
        format!("{}:{first}-{last}", self.tail())
    }
}

/// The run index key of a host's run.
pub(super) fn run_key(host: &str, run: &str) -> String {
    format!("{}.{}", token(host), token(run))
}

/// The hosts bucket key of a host.
pub(super) fn host_key(host: &str) -> String {
    token(host)
}

/// Where cancels for a host are sent.
pub(super) fn cancel_subject(host: &str) -> String {
    format!("{CANCEL_PREFIX}.{}", token(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_and_colons_never_split_a_token() {
        assert_eq!(token("build.42:a_b-C"), "build=2E42=3Aa_b-C");
        assert_ne!(token("a.b"), token("a=2Eb"));
        let k = RunKey::new("host.1", "E1", "run.x", "2026-12-01T00:00:00Z");
        let subject = k.subject();
        assert_eq!(subject.split('.').count(), 6, "{subject}");
        assert!(subject.starts_with("runtap.ev.host=2E1.E1.run=2Ex."));
        assert_eq!(run_key("h.1", "r:2"), "h=2E1.r=3A2");
    }

    #[test]
    fn incarnations_differ_by_created_at() {
        assert_ne!(incarnation("2026-12-01T00:00:00Z"), incarnation("2026-12-01T00:00:01Z"));
        assert_eq!(incarnation("x").len(), 16);
    }
}
