//! `stream` mode: N subscribers (+ K stalled) to one run launched once all
//! are ready.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::cli::StreamArgs;
use crate::control::{cancel, launch};
use crate::histogram::Hist;
use crate::proc::{cpu_secs, rss_kib, spawn_rss_sampler};
use crate::round;
use crate::subscriber::{all_ready, stalled, subscriber};

pub(crate) async fn stream(a: StreamArgs) -> Result<Value, String> {
    let t = Arc::new(a.target.clone());
    let gate = Arc::new(Semaphore::new(t.connect_concurrency.max(1)));
    let stop = CancellationToken::new();
    let stop_stalled = CancellationToken::new();
    let (ready_tx, mut ready_rx) = mpsc::channel(1024);
    let connect_start = Instant::now();
    let mut subs = Vec::with_capacity(a.subs);
    for _ in 0..a.subs {
        subs.push(tokio::spawn(subscriber(t.clone(), a.scan, gate.clone(), ready_tx.clone(), stop.clone())));
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
    let t0 = Instant::now();
    launch(&t, &a.command).await?;

    let mut stats = Vec::with_capacity(subs.len());
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(a.timeout);
    let mut timed_out = false;
    for mut h in subs {
        if !timed_out {
            match tokio::time::timeout_at(deadline, &mut h).await {
                Ok(r) => {
                    stats.push(r.map_err(|e| e.to_string())?);
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
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let (server_cpu1, self_cpu1) = (t.server_pid.and_then(|p| cpu_secs(Some(p))), cpu_secs(None));
    sampler_stop.cancel();
    let rss_peak = sampler.await.unwrap_or(0).max(rss_before);
    let rss_after = t.server_pid.and_then(rss_kib).unwrap_or(0);
    stop_stalled.cancel();
    for h in stalls {
        let _ = tokio::time::timeout(Duration::from_secs(2), h).await;
    }
    if timed_out {
        let _ = cancel(&t).await;
    }

    let mut hist = Hist::new();
    let (mut events, mut bytes, mut lines, mut gaps, mut dups, mut resubs) = (0, 0, 0, 0, 0, 0);
    let (mut complete, mut errors) = (0, Vec::new());
    let mut last_done: Option<Instant> = None;
    let mut first_event: Option<Instant> = None;
    for s in &stats {
        events += s.events;
        bytes += s.bytes;
        lines += s.lines;
        gaps += s.gaps;
        dups += s.dups;
        resubs += u64::from(s.resubscribes);
        if let Some(h) = &s.hist {
            hist.merge(h);
        }
        if s.done_at.is_some() && s.max_idx + 1 == a.expect_lines as i64 && s.gaps == 0 {
            complete += 1;
        }
        if let Some(e) = &s.error
            && errors.len() < 5
        {
            errors.push(e.clone());
        }
        last_done = last_done.max(s.done_at);
        first_event = match (first_event, s.first_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    let since_t0 = |i: Option<Instant>| i.map(|i| round(i.duration_since(t0).as_secs_f64(), 3));
    let cpu = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| round(b - a, 2));
    Ok(json!({
        "mode": "stream",
        "proto": format!("{:?}", t.proto).to_lowercase(),
        "subs": a.subs,
        "stalled": a.stalled,
        "expect_lines": a.expect_lines,
        "connect_s": round(connect_s, 3),
        "time_s": since_t0(last_done),
        "first_event_s": since_t0(first_event),
        "wall_s": round(wall, 3),
        "timed_out": timed_out,
        "complete_subs": complete,
        "events": events,
        "bytes": bytes,
        "lines": lines,
        "gaps": gaps,
        "dups": dups,
        "resubscribes": resubs,
        "samples": hist.n,
        "p50_ms": hist.quantile_ms(0.50),
        "p90_ms": hist.quantile_ms(0.90),
        "p99_ms": hist.quantile_ms(0.99),
        "p999_ms": hist.quantile_ms(0.999),
        "max_ms": (hist.n > 0).then(|| hist.max as f64 / 1000.0),
        "server_rss_before_kib": rss_before,
        "server_rss_peak_kib": rss_peak,
        "server_rss_after_kib": rss_after,
        "server_cpu_s": cpu(server_cpu0, server_cpu1),
        "loadgen_cpu_s": cpu(self_cpu0, self_cpu1),
        "errors": errors,
    }))
}
