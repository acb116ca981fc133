//! `runs/<id>/supervisor.json`: which process supervises a run, since
//! which boot, and where its socket is. The shim writes it at start; a
//! daemon reads it to reattach, or to say why a run was lost.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::run_id::RunId;

const FILE: &str = "supervisor.json";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Record {
    /// The shim's protocol version (`wire::VERSION` of its build).
    pub version: u32,
    pub pid: u32,
    pub boot_id: String,
    pub socket: PathBuf,
}

impl Record {
    pub(crate) fn read(run_dir: &Path) -> Option<Record> {
        let bytes = std::fs::read(run_dir.join(FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Written once, in one `write` of a new file, at the shim's start.
    /// No temp file and rename: file creation is most of what a short run
    /// costs on a busy ext4, and a torn record (a crash mid-write) only
    /// loses the lost run's reason, which then says less.
    pub(crate) fn write(&self, run_dir: &Path) -> std::io::Result<()> {
        std::fs::write(run_dir.join(FILE), serde_json::to_vec(self).map_err(std::io::Error::other)?)
    }
}

/// This boot of the host: a record from another one names processes that
/// no longer exist (and pids that may now be someone else's).
pub(crate) fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// A run's socket: `<dir>/<hash>.sock`. Hashed because a run ID may be
/// longer than a socket path can be (108 bytes); the record, not this
/// function, is what a later daemon reads, so the hash need not be stable
/// across builds. FNV-1a, 64 bits: collisions would need ~4 billion runs.
pub(crate) fn socket_path(dir: &Path, run: &RunId) -> PathBuf {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in run.as_str().bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    dir.join(format!("{hash:016x}.sock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_paths_are_short_and_distinct() {
        let dir = Path::new("/run/runtap/shims");
        let long = RunId::parse(&"a".repeat(120)).unwrap();
        let p = socket_path(dir, &long);
        assert!(p.as_os_str().len() < 60, "{p:?}");
        assert_ne!(p, socket_path(dir, &RunId::parse("b").unwrap()));
    }

    #[test]
    fn record_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let r = Record { version: 1, pid: 42, boot_id: boot_id(), socket: "/x.sock".into() };
        r.write(dir.path()).unwrap();
        assert_eq!(Record::read(dir.path()), Some(r));
    }
}
