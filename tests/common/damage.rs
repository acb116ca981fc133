//! Journal files damaged on purpose, and the one rule for serving them.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Daemon, Seen, WAIT, finished_run, http_run, listed, unix_seen, ws_seen};

// ---------------------------------------------------------------------------
// Journal files, edited while the daemon is stopped.

pub fn run_dir(d: &Daemon, id: &str) -> PathBuf {
    d.state_dir().join("runs").join(id)
}

pub fn events_path(d: &Daemon, id: &str) -> PathBuf {
    run_dir(d, id).join("events.jsonl")
}

pub fn read_lines(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let mut lines: Vec<Vec<u8>> = bytes.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    if lines.last().is_some_and(Vec::is_empty) {
        lines.pop();
    }
    lines
}

pub fn write_lines(path: &Path, lines: &[Vec<u8>]) {
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    std::fs::write(path, out).unwrap();
}

pub fn seq_of(line: &[u8]) -> u64 {
    runtap::journal::line_seq(line).expect("a journal line with a seq")
}

/// Index of the middle `stdout` line of a journal.
pub fn middle_stdout(lines: &[Vec<u8>]) -> usize {
    let out: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| String::from_utf8_lossy(l).contains(r#""type":"stdout""#))
        .map(|(i, _)| i)
        .collect();
    assert!(out.len() >= 3, "want several output lines to damage one in the middle: {}", out.len());
    out[out.len() / 2]
}

/// Cuts bytes out of the middle of a line, keeping its start (with the seq) and end.
pub fn tear(line: &[u8]) -> Vec<u8> {
    assert!(line.len() > 70, "line too short to tear: {}", String::from_utf8_lossy(line));
    [&line[..40], &line[line.len() - 20..]].concat()
}

/// Two finished runs, `bad` and `good`; the daemon is stopped, `edit`
/// damages `bad`'s files, and the daemon is started again. Returns the
/// daemon and the two runs' last seqs.
pub async fn with_damaged_run(edit: impl FnOnce(&Path)) -> (Daemon, u64, u64) {
    let mut d = Daemon::start();
    let bad_last = finished_run(&d, "bad", 6).await;
    let good_last = finished_run(&d, "good", 3).await;
    d.stop();
    edit(&run_dir(&d, "bad"));
    d.spawn();
    (d, bad_last, good_last)
}

/// `with_damaged_run`, where `edit` damages the middle output line of
/// `bad` (given the lines and its index). Also returns that line's seq.
pub async fn with_middle_line_damaged(edit: impl FnOnce(&mut Vec<Vec<u8>>, usize)) -> (Daemon, u64, u64, u64) {
    let mut damaged = 0;
    let (d, bad_last, good_last) = with_damaged_run(|dir| {
        let path = dir.join("events.jsonl");
        let mut lines = read_lines(&path);
        let i = middle_stdout(&lines);
        damaged = seq_of(&lines[i]);
        edit(&mut lines, i);
        write_lines(&path, &lines);
    })
    .await;
    (d, bad_last, good_last, damaged)
}

/// The one rule for damage inside a journal, on one surface: every frame
/// is JSON; every intact event of 1..=last is delivered once, in order;
/// each damaged seq is reported by a `journal-gap` exactly once; the
/// stream ends normally, with no other error.
pub fn assert_served(surface: &str, s: &Seen, last: u64, damaged: &[u64]) {
    assert!(
        s.invalid.is_empty(),
        "{surface}: sent frames that are not JSON events (damage passed off as data): {:?}",
        s.invalid
    );
    assert!(
        s.errors.is_empty(),
        "{surface}: history failed instead of serving the intact events: {:?}; got seqs {:?}",
        s.errors,
        s.seqs
    );
    let intact: Vec<u64> = (1..=last).filter(|q| !damaged.contains(q)).collect();
    let got: Vec<u64> = s.seqs.iter().copied().filter(|&q| q <= last).collect();
    assert_eq!(got, intact, "{surface}: not every intact event was served, once and in order");
    assert!(s.seqs.windows(2).all(|w| w[0] < w[1]), "{surface}: seqs out of order or repeated: {:?}", s.seqs);
    assert_eq!(
        s.gap_seqs(),
        damaged,
        "{surface}: the damaged seqs {damaged:?} must each be reported once as a journal-gap (gaps reported: {:?})",
        s.gaps
    );
    assert!(
        !s.timed_out && s.ended,
        "{surface}: the stream did not end normally (timed out: {}, close: {:?})",
        s.timed_out,
        s.close
    );
}

/// `bad` on both surfaces, `good` untouched beside it, and `bad` still
/// listed and marked degraded.
pub async fn assert_damage_handled(d: &Daemon, bad_last: u64, good_last: u64, damaged: &[u64]) {
    let t = d.token();
    let ws = ws_seen(&d.ws_url(&format!("/runs?runId=bad&token={t}")), &[], |_| false, WAIT).await;
    assert_served("websocket", &ws, bad_last, damaged);
    let sock = unix_seen(&d.socket(), "bad", 0, true, WAIT).await;
    assert_served("unix socket", &sock, bad_last, damaged);
    let good = ws_seen(&d.ws_url(&format!("/runs?runId=good&token={t}")), &[], |_| false, WAIT).await;
    assert_served("websocket, untouched run", &good, good_last, &[]);
    assert_run_degraded(d, "bad").await;
}

pub async fn assert_run_degraded(d: &Daemon, id: &str) {
    let (socket_ids, http_ids) = listed(d).await;
    assert!(socket_ids.iter().any(|r| r == id), "run {id} vanished from the socket's list: {socket_ids:?}");
    assert!(http_ids.iter().any(|r| r == id), "run {id} vanished from GET /runs: {http_ids:?}");
    let (status, run) = http_run(d, id).await;
    assert_eq!(status, 200, "GET /runs/{id}: {run}");
    assert_eq!(run["journal"], "degraded", "a damaged journal must mark run {id} degraded: {run}");
}

pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0750"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount: {out:?}");
        Tmpfs(dir.to_owned())
    }

    pub fn resize(&self, size: &str) {
        let out = Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(&self.0).output().unwrap();
        assert!(out.status.success(), "remount: {out:?}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}
