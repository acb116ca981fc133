//! `idle-runs` mode: runs that each write a burst to stdout and then stay
//! alive, idle (`sleep`); runtap's RSS once all of them are idle, which is
//! what a host with long-lived quiet jobs pays. Each run's output is then
//! read back from the journal (`"follow":false`) to check it was all kept.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::cli::IdleRunsArgs;
use crate::control::unix_request;
use crate::proc::{cpu_secs, proc_status_field, rss_kib};
use crate::round;

/// The job: the burst, a marker file once it is written, then idle.
const JOB: &str = r#"head -c "$1" /dev/zero | tr '\0' x; : > "$2"; exec sleep "$3""#;

pub(crate) async fn idle_runs(a: IdleRunsArgs) -> Result<Value, String> {
    let pid = a.server_pid;
    std::fs::create_dir_all(&a.marker_dir).map_err(|e| format!("{}: {e}", a.marker_dir.display()))?;
    let rss0 = rss_kib(pid).ok_or("server process gone")?;
    let cpu0 = cpu_secs(Some(pid));
    let ids: Vec<String> = (0..a.runs).map(|i| format!("{}-{i}", a.prefix)).collect();
    let markers: Vec<_> = ids.iter().map(|id| a.marker_dir.join(format!("{id}.done"))).collect();
    let t0 = Instant::now();
    for (id, marker) in ids.iter().zip(&markers) {
        let _ = std::fs::remove_file(marker);
        let command = [
            "sh".to_string(),
            "-c".into(),
            JOB.into(),
            "sh".into(),
            a.bytes.to_string(),
            marker.display().to_string(),
            a.hold.to_string(),
        ];
        let answer = unix_request(&a.socket, &json!({"type": "launch", "runId": id, "command": command})).await?;
        if answer["type"] != "launched" {
            return Err(format!("launch refused: {answer}"));
        }
    }
    let result = measure(&a, &ids, &markers, t0, rss0).await;
    let cpu1 = cpu_secs(Some(pid));
    for id in &ids {
        let _ = unix_request(&a.socket, &json!({"type": "cancel", "runId": id})).await;
    }
    let mut out = result?;
    out["server_cpu_s"] = json!(cpu0.zip(cpu1).map(|(a, b)| round(b - a, 2)));
    Ok(out)
}

async fn measure(
    a: &IdleRunsArgs,
    ids: &[String],
    markers: &[std::path::PathBuf],
    t0: Instant,
    rss0: u64,
) -> Result<Value, String> {
    let pid = a.server_pid;
    let deadline = t0 + Duration::from_secs_f64(a.timeout);
    let mut peak = rss0;
    // Every burst written (into the pipe: the daemon reads the last of it
    // right after), sampling the RSS on the way.
    while !markers.iter().all(|m| m.exists()) {
        if Instant::now() > deadline {
            return Err(format!("bursts not all written after {} s", a.timeout));
        }
        peak = peak.max(rss_kib(pid).ok_or("server process gone")?);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let burst_s = t0.elapsed().as_secs_f64();
    let idle_from = Instant::now();
    let mut at = Vec::new();
    for s in [1.0, a.settle, 2.0 * a.settle] {
        let until = idle_from + Duration::from_secs_f64(s);
        while Instant::now() < until {
            peak = peak.max(rss_kib(pid).unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(50).min(until - Instant::now())).await;
        }
        at.push(rss_kib(pid).ok_or("server process gone")?);
    }
    let still_running = idle_from.elapsed().as_secs_f64() < a.hold;
    let hwm = proc_status_field(pid, "VmHWM:");
    // Read back each run's output (after the RSS figures: this reads 16 MB
    // of journal per run through the daemon).
    let mut verified = 0;
    let mut short = Vec::new();
    for id in ids {
        let got = stdout_bytes(&a.socket, id).await?;
        if got == a.bytes {
            verified += 1;
        } else if short.len() < 3 {
            short.push(format!("{id}: {got} bytes"));
        }
    }
    Ok(json!({
        "mode": "idle-runs",
        "runs": a.runs,
        "bytes": a.bytes,
        "burst_s": round(burst_s, 3),
        "settle_s": a.settle,
        "still_running": still_running,
        "server_rss_before_kib": rss0,
        "server_rss_peak_kib": peak,
        "server_rss_idle_1s_kib": at[0],
        "server_rss_idle_kib": at[1],
        "server_rss_idle_later_kib": at[2],
        "server_hwm_kib": hwm,
        "verified_runs": verified,
        "short_runs": short,
    }))
}

/// Bytes of stdout in a run's journal so far.
async fn stdout_bytes(socket: &Path, id: &str) -> Result<u64, String> {
    let io = async {
        let s = UnixStream::connect(socket).await.map_err(|e| format!("connect {}: {e}", socket.display()))?;
        let (r, mut w) = s.into_split();
        let req = json!({"type": "subscribe", "runId": id, "follow": false});
        w.write_all(format!("{req}\n").as_bytes()).await.map_err(|e| e.to_string())?;
        let mut lines = BufReader::new(r).lines();
        let mut n = 0u64;
        while let Some(line) = lines.next_line().await.map_err(|e| e.to_string())? {
            let v: Value = serde_json::from_str(&line).map_err(|e| format!("bad line: {e}"))?;
            match v["type"].as_str() {
                Some("stdout") if v.get("seq").is_some() => n += v["data"].as_str().map_or(0, |d| d.len() as u64),
                Some("end") => return Ok(n),
                Some("error") => return Err(format!("subscribe {id}: {line}")),
                _ => {}
            }
        }
        Err(format!("subscribe {id}: connection closed before end"))
    };
    tokio::time::timeout(Duration::from_secs(60), io).await.map_err(|_| format!("reading {id} back timed out"))?
}
