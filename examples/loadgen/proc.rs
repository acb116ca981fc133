//! The server's RSS and CPU from /proc, and the wall clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

/// How often the server's RSS is sampled during a `stream` run.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// /proc reports CPU times in USER_HZ, which is 100 on Linux/x86-64.
pub(crate) const USER_HZ: f64 = 100.0;

/// Resident set size of `pid` in KiB.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    proc_status_field(pid, "VmRSS:")
}

pub(crate) fn proc_status_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime of a process, in seconds. `pid` None = this process.
pub(crate) fn cpu_secs(pid: Option<u32>) -> Option<f64> {
    let path = pid.map_or_else(|| "/proc/self/stat".to_string(), |p| format!("/proc/{p}/stat"));
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the `(comm)`, which may itself contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / USER_HZ)
}

pub(crate) fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Samples the server's RSS until stopped; returns the peak in KiB.
pub(crate) fn spawn_rss_sampler(pid: Option<u32>, stop: CancellationToken) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let Some(pid) = pid else { return 0 };
        let mut peak = 0;
        loop {
            peak = peak.max(rss_kib(pid).unwrap_or(0));
            tokio::select! {
                _ = stop.cancelled() => return peak,
                _ = tokio::time::sleep(SAMPLE_EVERY) => {}
            }
        }
    })
}
