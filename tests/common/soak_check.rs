//! The soak's invariant checker. For every host and every run the host
//! journaled, the gateway's copy must hold the same events (same seqs, the
//! same JSON apart from the `"host"` it adds, as `assert_same_copy`
//! compares them), with no gap and no duplicate on either side; and what
//! the gateway serves must be its copy. It counts rather than panics, so
//! one report says everything that went wrong. Beside it, the process
//! figures the soak bounds: fds, memory, threads, open connections.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::{Daemon, Gateway, http_to, journal, ws_seen};

/// What comparing every run of some hosts found.
#[derive(Debug, Default)]
pub struct CopyTally {
    pub runs: usize,
    /// Host events compared with the gateway's.
    pub events: u64,
    /// Host events the gateway does not hold.
    pub lost: u64,
    /// Events the gateway holds more than once.
    pub duplicated: u64,
    /// Events at the same seq whose JSON differs.
    pub differing: u64,
    /// Events whose line is the host's line with `,"host":H` spliced in, byte for byte.
    pub byte_identical: u64,
    /// Runs whose events as served by the gateway equal its journal.
    pub served_equal: usize,
    /// Final status of each run, as the host journaled it.
    pub statuses: BTreeMap<String, usize>,
    /// Every violation, in words.
    pub problems: Vec<String>,
}

/// Last status event's `data`, if the journal has one that is final.
pub fn final_status(events: &[Value]) -> Option<String> {
    let last = events.iter().rev().find(|e| e["type"] == "status")?;
    let s = last["data"].as_str()?;
    matches!(s, "succeeded" | "failed" | "cancelled" | "lost").then(|| s.to_owned())
}

/// The complete lines of a journal file (a torn last line is left out), parsed.
pub fn journal_lines_lenient(path: &Path) -> Vec<Value> {
    let text = std::fs::read(path).unwrap_or_default();
    text.split(|b| *b == b'\n').filter_map(|l| serde_json::from_slice(l).ok()).collect()
}

/// Run IDs with a journal under `state/runs`.
pub fn run_ids(state_dir: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(state_dir.join("runs"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("events.jsonl").exists())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// The seqs in `seqs` that are not 1, 2, 3… in order: (gaps, duplicates).
fn gaps_and_dups(seqs: &[u64]) -> (u64, u64) {
    let (mut gaps, mut dups, mut prev) = (0, 0, 0);
    for &s in seqs {
        if s <= prev {
            dups += 1;
        } else {
            gaps += s - prev - 1;
            prev = s;
        }
    }
    (gaps, dups)
}

fn lines(path: &Path) -> Vec<Vec<u8>> {
    let text = std::fs::read(path).unwrap_or_default();
    text.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect()
}

/// Compares every run of `d` (journaled as `host`) with the gateway's copy.
pub async fn compare_host(gw: &Gateway, host: &str, d: &Daemon, tally: &mut CopyTally) {
    let host_runs = run_ids(&d.state_dir());
    let gw_runs = run_ids(&gw.state_dir().join("hosts").join(host));
    for extra in gw_runs.iter().filter(|r| !host_runs.contains(r)) {
        tally.problems.push(format!("{host}/{extra}: at the gateway, not on the host"));
    }
    for run in &host_runs {
        tally.runs += 1;
        let theirs = journal(&d.state_dir().join("runs").join(run).join("events.jsonl"));
        let their_seqs: Vec<u64> = theirs.iter().map(|e| e["seq"].as_u64().unwrap_or(0)).collect();
        let n = theirs.len() as u64;
        let (g, dup) = gaps_and_dups(&their_seqs);
        if g + dup > 0 || their_seqs.last().copied().unwrap_or(0) != n {
            tally.problems.push(format!("{host}/{run}: host journal has {g} missing and {dup} repeated seqs"));
        }
        *tally.statuses.entry(final_status(&theirs).unwrap_or_else(|| "NOT FINAL".into())).or_default() += 1;
        tally.events += n;

        let path = gw.events_path(host, run);
        let ours = if path.exists() { journal(&path) } else { Vec::new() };
        let our_seqs: Vec<u64> = ours.iter().map(|e| e["seq"].as_u64().unwrap_or(0)).collect();
        let (_, dup) = gaps_and_dups(&our_seqs);
        tally.duplicated += dup;
        let mut held = BTreeMap::new();
        for e in &ours {
            held.entry(e["seq"].as_u64().unwrap_or(0)).or_insert(e);
        }
        let (their_lines, our_lines) = (lines(&host_journal(d, run)), lines(&path));
        let mut lost = 0;
        for (i, their) in theirs.iter().enumerate() {
            let Some(mine) = held.get(&their["seq"].as_u64().unwrap_or(0)) else {
                lost += 1;
                continue;
            };
            let mut mine = (*mine).clone();
            let tagged = mine.as_object_mut().and_then(|o| o.remove("host")) == Some(Value::from(host));
            if !tagged || &mine != their {
                tally.differing += 1;
                tally.problems.push(format!("{host}/{run}: seq {} differs: {mine} vs {their}", their["seq"]));
            } else if let (Some(t), Some(o)) = (their_lines.get(i), our_lines.get(i))
                && spliced(t, host) == *o
            {
                tally.byte_identical += 1;
            }
        }
        if lost > 0 {
            tally.problems.push(format!("{host}/{run}: {lost} of {n} events missing at the gateway"));
        }
        tally.lost += lost;
        if dup > 0 {
            tally.problems.push(format!("{host}/{run}: {dup} events repeated at the gateway"));
        }
        if ours.len() as u64 > n {
            tally.problems.push(format!("{host}/{run}: gateway holds {} events, host {n}", ours.len()));
        }
        served(gw, host, run, &ours, tally).await;
    }
}

/// A host line with `,"host":"H"` before its closing brace.
fn spliced(line: &[u8], host: &str) -> Vec<u8> {
    let mut out = line[..line.len().saturating_sub(1)].to_vec();
    out.extend_from_slice(format!(",\"host\":{}}}", Value::from(host)).as_bytes());
    out
}

fn host_journal(d: &Daemon, run: &str) -> std::path::PathBuf {
    d.state_dir().join("runs").join(run).join("events.jsonl")
}

/// What a subscriber at the gateway gets for the run must be its journal.
async fn served(gw: &Gateway, host: &str, run: &str, ours: &[Value], tally: &mut CopyTally) {
    let url = gw.ws_url(&format!("/runs?runId={run}&host={host}&token={}", gw.token()));
    let seen = ws_seen(&url, &[], |_| false, Duration::from_secs(20)).await;
    if seen.events == ours && seen.close == Some(1000) {
        tally.served_equal += 1;
    } else {
        tally.problems.push(format!(
            "{host}/{run}: served {} events (close {:?}, errors {:?}), journal holds {}",
            seen.events.len(),
            seen.close,
            seen.errors,
            ours.len()
        ));
    }
}

/// A process's figures at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcFigures {
    pub fds: usize,
    pub rss_kib: u64,
    /// Peak RSS of this process (since its last start).
    pub hwm_kib: u64,
    pub threads: u64,
}

pub fn proc_figures(pid: u32) -> ProcFigures {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |key: &str| {
        status.lines().find_map(|l| l.strip_prefix(key)?.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0)
    };
    ProcFigures {
        fds: super::fd_count(pid),
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        threads: field("Threads:"),
    }
}

/// One gauge or counter from `/metrics` at `addr`.
pub async fn metric(addr: &str, name: &str) -> Option<i64> {
    let (_, body) = http_to(addr, "GET", "/metrics", None).await;
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// An HTTP request that may meet a dead server: (status, JSON body), 0
/// and Null if there was no answer within `WAIT`.
pub async fn try_http_json(addr: &str, method: &str, path: &str, token: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let answer = tokio::time::timeout(super::WAIT, async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        Some(String::from_utf8_lossy(&buf).into_owned())
    })
    .await;
    let Ok(Some(text)) = answer else { return (0, Value::Null) };
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}
