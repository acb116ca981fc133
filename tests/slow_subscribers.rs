//! Issue 11: slow is not stalled. A subscriber that reads more slowly than
//! the job writes is served from the journal at its own pace and rejoins
//! the live stream: it gets every event, in order, and is never cut off;
//! the daemon's memory stays bounded. Default queue bounds throughout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::Value;

/// Everything a paced WebSocket reader got: each frame parsed as JSON, as
/// a dashboard would, then `pause` between frames.
struct Paced {
    /// The frames' text, as received.
    frames: Vec<String>,
    stdout_bytes: usize,
    close: Option<u16>,
}

async fn paced_read(mut ws: WsClient, pause: Duration) -> Paced {
    let mut got = Paced { frames: Vec::new(), stdout_bytes: 0, close: None };
    tokio::time::timeout(Duration::from_secs(300), async {
        while let Some(Ok(msg)) = ws.next().await {
            match msg {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).unwrap_or_else(|e| panic!("not JSON ({e}): {t}"));
                    if v["type"] == "stdout" {
                        got.stdout_bytes += v["data"].as_str().unwrap().len();
                    }
                    got.frames.push(t.to_string());
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
                Message::Close(f) => {
                    got.close = f.map(|f| u16::from(f.code));
                    break;
                }
                _ => {}
            }
        }
    })
    .await
    .expect("paced reader done in time");
    got
}

fn seqs(frames: &[String]) -> Vec<u64> {
    frames
        .iter()
        .map(|f| runtap::journal::line_seq(f.as_bytes()).unwrap_or_else(|| panic!("not an event: {f}")))
        .collect()
}

fn vm_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix(key)?.trim().strip_suffix("kB")?.trim().parse().ok()).unwrap_or(0)
}

/// `bytes` of 100-byte lines, as one run through `runtap run`, in the background.
fn flood(d: &Daemon, id: &str, bytes: usize) -> tokio::task::JoinHandle<std::process::Output> {
    let job = format!(
        "yes 'the quick brown fox jumps over the lazy dog, again and again, for a hundred bytes or so....' | head -c {bytes}"
    );
    let mut cmd = d.cli();
    cmd.args(["run", "--id", id, "--", "sh", "-c", &job]).stdin(std::process::Stdio::null());
    tokio::task::spawn_blocking(move || output_with_timeout(cmd, Duration::from_secs(240)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_every_byte_of_50_mb_and_is_never_cut_off() {
    const BYTES: usize = 50_000_000;
    let d = Daemon::start();
    let t = d.token();
    let ws = ws_connect(&d.ws_url(&format!("/runs?runId=slow&token={t}")), &[]).await;
    // Far slower than the job: it sleeps after every frame.
    let reader = tokio::spawn(paced_read(ws, Duration::from_millis(3)));
    let out = flood(&d, "slow", BYTES).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let got = reader.await.unwrap();
    assert_eq!(got.close, Some(1000), "a slow reader must not be cut off");
    let s = seqs(&got.frames);
    assert_eq!(s, (1..=s.len() as u64).collect::<Vec<_>>(), "every event, once, in order");
    assert_eq!(got.stdout_bytes, BYTES, "every byte");
    assert!(got.frames.last().unwrap().contains(r#""data":"succeeded""#));
    // One slow subscriber costs its queue bound and a journal read buffer,
    // not the run's output.
    let peak = vm_kib(d.pid(), "VmHWM:") / 1024;
    println!("daemon peak RSS {peak} MiB for a slow reader of {} MB", BYTES / 1_000_000);
    assert!(peak < 100, "daemon peak RSS {peak} MiB while a slow reader caught up on {BYTES} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_readers_at_different_paces_each_equal_the_journal() {
    const READERS: usize = 200;
    let d = Daemon::start();
    let t = d.token();
    let url = d.ws_url(&format!("/runs?runId=paces&token={t}"));
    let mut readers = Vec::with_capacity(READERS);
    for i in 0..READERS {
        let ws = ws_connect(&url, &[]).await;
        // From as fast as it goes to 4 ms a frame.
        let pause = Duration::from_micros((i % 5) as u64 * 1000);
        readers.push(tokio::spawn(paced_read(ws, pause)));
    }
    let script = "for i in $(seq 1 20000); do echo \"line $i of a run read at many paces\"; done";
    let out = d.run(&["run", "--id", "paces", "--", "sh", "-c", script]);
    assert!(out.status.success(), "{out:?}");
    let journal = std::fs::read_to_string(d.state_dir().join("runs/paces/events.jsonl")).unwrap();
    let want: Vec<&str> = journal.lines().collect();
    for (i, r) in readers.into_iter().enumerate() {
        let got = r.await.unwrap();
        assert_eq!(got.close, Some(1000), "reader {i} was cut off");
        assert_eq!(got.frames.len(), want.len(), "reader {i}: number of events");
        assert!(got.frames.iter().zip(&want).all(|(a, b)| a == b), "reader {i} differs from the journal");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_at_the_gateway_gets_everything() {
    const BYTES: usize = 20_000_000;
    let gw = Gateway::start();
    let d = gw.start_host("h1");
    let url = gw.ws_url(&format!("/runs?runId=far&host=h1&token={}", gw.token()));
    let ws = ws_connect(&url, &[]).await;
    let reader = tokio::spawn(paced_read(ws, Duration::from_millis(3)));
    let out = flood(&d, "far", BYTES).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let got = reader.await.unwrap();
    assert_eq!(got.close, Some(1000), "a slow reader at the gateway must not be cut off");
    let s = seqs(&got.frames);
    assert_eq!(s, (1..=s.len() as u64).collect::<Vec<_>>(), "every event, once, in order");
    assert_eq!(got.stdout_bytes, BYTES, "every byte");
    // And it is the host's run, event for event (plus "host").
    let host = std::fs::read_to_string(d.state_dir().join("runs/far/events.jsonl")).unwrap();
    assert_eq!(host.lines().count(), got.frames.len());
}
