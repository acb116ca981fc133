//! `stream` mode: N subscribers (+ K stalled) to one run launched once all
//! are ready.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::cli::StreamArgs;
use crate::control::{cancel, launch};
use crate::histogram::Hist;
use crate::proc::{cpu_secs, proc_status_field, rss_kib, spawn_rss_sampler};
use crate::round;
use crate::stats::SubStats;
use crate::subscriber::{Opts, all_ready, stalled, subscriber};

pub(crate) async fn stream(a: StreamArgs) -> Result<Value, String> {
    let t = Arc::new(a.target.clone());
    let gate = Arc::new(Semaphore::new(t.connect_concurrency.max(1)));
    let stop = CancellationToken::new();
    let stop_stalled = CancellationToken::new();
    let (ready_tx, mut ready_rx) = mpsc::channel(1024);
    let connect_start = Instant::now();
    let opts = Opts {
        scan: a.scan,
        decode: a.decode,
        resubscribe: a.resubscribe,
        per_frame: (a.slow_ms > 0.0).then(|| Duration::from_secs_f64(a.slow_ms / 1000.0)),
    };
    // `--spread`: subscriber i reads from listener i mod n.
    let spread: Vec<Arc<_>> =
        a.spread.iter().map(|addr| Arc::new(crate::cli::Target { addr: addr.clone(), ..a.target.clone() })).collect();
    let mut subs = Vec::with_capacity(a.subs);
    for i in 0..a.subs {
        let (at, ti) =
            if spread.is_empty() { (0, t.clone()) } else { (i % spread.len(), spread[i % spread.len()].clone()) };
        subs.push((at, tokio::spawn(subscriber(ti, opts, gate.clone(), ready_tx.clone(), stop.clone()))));
    }
    let mut stalls = Vec::new();
    for _ in 0..a.stalled {
        stalls.push(tokio::spawn(stalled(t.clone(), gate.clone(), ready_tx.clone(), stop_stalled.clone())));
    }
    drop(ready_tx);
    all_ready(&mut ready_rx, a.subs + a.stalled).await?;
    let connect_s = connect_start.elapsed().as_secs_f64();

    let rss_before = t.server_pid.and_then(rss_kib).unwrap_or(0);
    let sampler_stop = CancellationToken::new();
    let sampler = spawn_rss_sampler(t.server_pid, sampler_stop.clone());
    let (server_cpu0, self_cpu0) = (t.server_pid.and_then(|p| cpu_secs(Some(p))), cpu_secs(None));
    if let Some(f) = &a.job_time_file {
        let _ = std::fs::remove_file(f);
    }
    let t0 = Instant::now();
    launch(&t, &a.command).await?;

    let mut stats = Vec::with_capacity(subs.len());
    let mut stats_at = Vec::with_capacity(subs.len());
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(a.timeout);
    let mut timed_out = false;
    for (at, mut h) in subs {
        if !timed_out {
            match tokio::time::timeout_at(deadline, &mut h).await {
                Ok(r) => {
                    stats.push(r.map_err(|e| e.to_string())?);
                    stats_at.push(at);
                    continue;
                }
                Err(_) => {
                    timed_out = true;
                    stop.cancel();
                }
            }
        }
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(5), h).await {
            stats.push(s);
            stats_at.push(at);
        }
    }
    let job_s = match &a.job_time_file {
        Some(f) if !timed_out => job_time(f, deadline).await.ok(),
        _ => None,
    };
    let wall = t0.elapsed().as_secs_f64();
    let (server_cpu1, self_cpu1) = (t.server_pid.and_then(|p| cpu_secs(Some(p))), cpu_secs(None));
    sampler_stop.cancel();
    let rss_peak = sampler.await.unwrap_or(0).max(rss_before);
    let rss_after = t.server_pid.and_then(rss_kib).unwrap_or(0);
    let hwm = t.server_pid.and_then(|p| proc_status_field(p, "VmHWM:"));
    stop_stalled.cancel();
    for h in stalls {
        let _ = tokio::time::timeout(Duration::from_secs(2), h).await;
    }
    if timed_out {
        let _ = cancel(&t).await;
    }

    let (tot, hist) = Totals::of(&stats, &a);
    let by_addr: serde_json::Map<String, Value> = a
        .spread
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let mine = stats.iter().zip(&stats_at).filter(|&(_, &at)| at == i).map(|(s, _)| s);
            let (tot, hist) = Totals::of(mine, &a);
            let v = json!({
                "subs": a.subs / a.spread.len() + usize::from(i < a.subs % a.spread.len()),
                "complete_subs": tot.complete,
                "time_s": tot.last_done.map(|d| round(d.duration_since(t0).as_secs_f64(), 3)),
                "frames": tot.frames,
                "samples": hist.n,
                "p50_ms": hist.quantile_ms(0.50),
                "p90_ms": hist.quantile_ms(0.90),
                "p99_ms": hist.quantile_ms(0.99),
                "max_ms": (hist.n > 0).then(|| hist.max as f64 / 1000.0),
            });
            (addr.clone(), v)
        })
        .collect();
    let since_t0 = |i: Option<Instant>| i.map(|i| round(i.duration_since(t0).as_secs_f64(), 3));
    let cpu = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| round(b - a, 2));
    let mut report = json!({
        "mode": "stream",
        "proto": format!("{:?}", t.proto).to_lowercase(),
        "tls": t.tls_ca.is_some(),
        "subs": a.subs,
        "stalled": a.stalled,
        "expect_lines": a.expect_lines,
        "decode": format!("{:?}", a.decode).to_lowercase(),
        "resubscribe_limit": a.resubscribe,
        "slow_ms": a.slow_ms,
        "connect_s": round(connect_s, 3),
        "time_s": since_t0(tot.last_done),
        "first_event_s": since_t0(tot.first_event),
        "wall_s": round(wall, 3),
        "job_s": job_s.map(|s| round(s, 3)),
        "timed_out": timed_out,
        "complete_subs": tot.complete,
        "cut_off_subs": tot.cut_off_subs,
        "frames": tot.frames,
        "events": tot.events,
        "bytes": tot.bytes,
        "data_bytes": tot.data_bytes,
        "lines": tot.lines,
        "gaps": tot.gaps,
        "dups": tot.dups,
        "seq_gaps": tot.seq_gaps,
        "seq_dups": tot.seq_dups,
        "bad_lines": tot.bad_lines,
        "resubscribes": tot.resubscribes,
        "samples": hist.n,
        "p50_ms": hist.quantile_ms(0.50),
        "p90_ms": hist.quantile_ms(0.90),
        "p99_ms": hist.quantile_ms(0.99),
        "p999_ms": hist.quantile_ms(0.999),
        "max_ms": (hist.n > 0).then(|| hist.max as f64 / 1000.0),
        "server_rss_before_kib": rss_before,
        "server_rss_peak_kib": rss_peak,
        "server_rss_after_kib": rss_after,
        "server_hwm_kib": hwm,
        "server_cpu_s": cpu(server_cpu0, server_cpu1),
        "loadgen_cpu_s": cpu(self_cpu0, self_cpu1),
        "errors": tot.errors,
    });
    report["by_addr"] = Value::Object(by_addr);
    Ok(report)
}

/// Sums over all subscribers.
#[derive(Default)]
struct Totals {
    frames: u64,
    events: u64,
    bytes: u64,
    data_bytes: u64,
    lines: u64,
    gaps: u64,
    dups: u64,
    seq_gaps: u64,
    seq_dups: u64,
    bad_lines: u64,
    resubscribes: u64,
    complete: u64,
    cut_off_subs: u64,
    errors: Vec<String>,
    last_done: Option<Instant>,
    first_event: Option<Instant>,
}

impl Totals {
    fn of<'a>(stats: impl IntoIterator<Item = &'a SubStats>, a: &StreamArgs) -> (Totals, Hist) {
        let mut t = Totals::default();
        let mut hist = Hist::new();
        for s in stats {
            t.frames += s.frames;
            t.events += s.events;
            t.bytes += s.bytes;
            t.data_bytes += s.data_bytes;
            t.lines += s.lines;
            t.gaps += s.gaps;
            t.dups += s.dups;
            t.seq_gaps += s.seq_gaps;
            t.seq_dups += s.seq_dups;
            t.bad_lines += s.bad_lines;
            t.resubscribes += u64::from(s.resubscribes);
            t.cut_off_subs += u64::from(s.cut_offs > 0);
            t.complete += u64::from(s.complete(a.decode, a.expect_lines, a.expect_bytes));
            if let Some(h) = &s.hist {
                hist.merge(h);
            }
            if let Some(e) = &s.error
                && t.errors.len() < 5
            {
                t.errors.push(e.clone());
            }
            t.last_done = t.last_done.max(s.done_at);
            t.first_event = match (t.first_event, s.first_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        (t, hist)
    }
}

/// Waits for the job to write its wall time (seconds) into `f`.
async fn job_time(f: &Path, deadline: tokio::time::Instant) -> Result<f64, String> {
    loop {
        if let Ok(s) = std::fs::read_to_string(f)
            && let Ok(secs) = s.trim().parse()
        {
            return Ok(secs);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("the job wrote no time into {}", f.display()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
