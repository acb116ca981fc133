//! `launches` mode: short runs (`true`) over runtap's Unix socket.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::cli::LaunchArgs;
use crate::round;

pub(crate) async fn launches(a: LaunchArgs) -> Result<Value, String> {
    let s = UnixStream::connect(&a.socket).await.map_err(|e| format!("connect {}: {e}", a.socket.display()))?;
    let (r, mut w) = s.into_split();
    let mut lines = BufReader::new(r).lines();
    let duration = Duration::from_secs_f64(a.duration);
    let start = Instant::now();
    let hard_stop = start + duration + Duration::from_secs(15);
    let (mut next_id, mut in_flight, mut launched, mut completed, mut refused) = (0u64, 0usize, 0u64, 0u64, 0u64);
    let mut last_done = start;
    let mut refusals = Vec::new();
    let launch_req =
        |n: u64| format!("{}\n", json!({"type": "launch", "runId": format!("{}-{n}", a.prefix), "command": ["true"]}));
    loop {
        // Keep the window full while the measurement lasts.
        let mut out = String::new();
        while in_flight < a.window && start.elapsed() < duration {
            out.push_str(&launch_req(next_id));
            next_id += 1;
            in_flight += 1;
        }
        if !out.is_empty() {
            w.write_all(out.as_bytes()).await.map_err(|e| e.to_string())?;
        }
        if in_flight == 0 || Instant::now() > hard_stop {
            break;
        }
        let line = match tokio::time::timeout_at(hard_stop.into(), lines.next_line()).await {
            Ok(Ok(Some(l))) => l,
            Ok(Ok(None)) => return Err("daemon closed the socket".into()),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => break,
        };
        if line.starts_with("{\"runId\"") {
            continue; // an event of a run we follow
        }
        let v: Value = serde_json::from_str(&line).map_err(|e| format!("bad line {line:?}: {e}"))?;
        match v["type"].as_str() {
            Some("launched") => {
                launched += 1;
                let id = v["runId"].as_str().unwrap_or_default();
                let sub = format!("{}\n", json!({"type": "subscribe", "runId": id}));
                w.write_all(sub.as_bytes()).await.map_err(|e| e.to_string())?;
            }
            Some("end") => {
                completed += 1;
                in_flight -= 1;
                last_done = Instant::now();
            }
            Some("error") => {
                refused += 1;
                in_flight -= 1;
                if refusals.len() < 3 {
                    refusals.push(line.clone());
                }
            }
            _ => {}
        }
    }
    let elapsed = last_done.duration_since(start).as_secs_f64().max(1e-9);
    let mut out = json!({
        "mode": "launches",
        "window": a.window,
        "launched": launched,
        "completed": completed,
        "refused": refused,
        "refusals": refusals,
        "elapsed_s": round(elapsed, 3),
        "runs_per_s": round(completed as f64 / elapsed, 1),
    });
    if a.reference {
        out["direct_spawns_per_s"] =
            json!(round(direct_spawns(duration.min(Duration::from_secs(3)), a.window).await, 1));
    }
    Ok(out)
}

/// `true` spawned and reaped straight from this process, `window` at a time.
pub(crate) async fn direct_spawns(duration: Duration, window: usize) -> f64 {
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let mut done = 0u64;
    loop {
        while set.len() < window && start.elapsed() < duration {
            set.spawn(async { tokio::process::Command::new("true").status().await.is_ok() });
        }
        match set.join_next().await {
            Some(Ok(true)) => done += 1,
            Some(_) => {}
            None => break,
        }
    }
    done as f64 / start.elapsed().as_secs_f64()
}
