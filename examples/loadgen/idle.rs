//! `idle` mode: N subscribers to an idle run; server RSS per subscriber
//! and idle CPU.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::cli::{IdleArgs, Target};
use crate::conn::connect;
use crate::control::{cancel, launch};
use crate::frames::{Kind, classify};
use crate::proc::{cpu_secs, rss_kib};
use crate::round;
use crate::subscriber::all_ready;

/// An idle subscriber: ready once subscribed (runtap: once its history
/// reaches `running`), then reads (answering pings) until stopped.
pub(crate) async fn idle_subscriber(
    t: Arc<Target>,
    gate: Arc<Semaphore>,
    ready: mpsc::Sender<Result<(), String>>,
    stop: CancellationToken,
) {
    let ws = {
        let _permit = gate.acquire().await;
        connect(&t, 0).await
    };
    let mut ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            let _ = ready.send(Err(e)).await;
            return;
        }
    };
    // runtap streams the run's history: ready once it has reached `running`.
    let mut announced = !t.proto.is_runtap();
    if announced {
        let _ = ready.send(Ok(())).await;
    }
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return,
            m = ws.next() => m,
        };
        let msg = match msg {
            Some(Ok(Message::Close(frame))) if !announced => {
                let _ = ready.send(Err(format!("closed before subscribed: {frame:?}"))).await;
                return;
            }
            Some(Ok(msg)) => msg,
            other => {
                if !announced {
                    let _ = ready.send(Err(format!("closed before subscribed: {other:?}"))).await;
                }
                return;
            }
        };
        let Message::Text(text) = msg else { continue };
        match classify(t.proto, text.as_str()) {
            Kind::Status { running: true, .. } if !announced => {
                announced = true;
                let _ = ready.send(Ok(())).await;
            }
            Kind::Ping => {
                let _ = ws.send(Message::text("3")).await;
            }
            _ => {}
        }
    }
}

pub(crate) async fn idle(a: IdleArgs) -> Result<Value, String> {
    let t = Arc::new(a.target.clone());
    let pid = t.server_pid.ok_or("--server-pid is required for idle")?;
    launch(&t, &a.command).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = rss_kib(pid).ok_or("server process gone")?;

    let gate = Arc::new(Semaphore::new(t.connect_concurrency.max(1)));
    let stop = CancellationToken::new();
    let (ready_tx, mut ready_rx) = mpsc::channel(1024);
    let connect_start = Instant::now();
    let mut subs = Vec::with_capacity(a.subs);
    for _ in 0..a.subs {
        subs.push(tokio::spawn(idle_subscriber(t.clone(), gate.clone(), ready_tx.clone(), stop.clone())));
    }
    drop(ready_tx);
    let ready = all_ready(&mut ready_rx, a.subs).await;
    let connect_s = connect_start.elapsed().as_secs_f64();
    let result = async {
        ready?;
        tokio::time::sleep(Duration::from_secs_f64(a.settle)).await;
        let rss1 = rss_kib(pid).ok_or("server process gone")?;
        let cpu0 = cpu_secs(Some(pid)).ok_or("server process gone")?;
        let w0 = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(a.cpu_window)).await;
        let cpu1 = cpu_secs(Some(pid)).ok_or("server process gone")?;
        let window = w0.elapsed().as_secs_f64();
        let rss2 = rss_kib(pid).unwrap_or(0);
        Ok::<Value, String>(json!({
            "mode": "idle",
            "proto": format!("{:?}", t.proto).to_lowercase(),
            "tls": t.tls_ca.is_some(),
            "subs": a.subs,
            "connect_s": round(connect_s, 3),
            "server_rss_before_kib": rss0,
            "server_rss_subscribed_kib": rss1,
            "server_rss_end_kib": rss2,
            "bytes_per_sub": round((rss1.saturating_sub(rss0) * 1024) as f64 / a.subs.max(1) as f64, 0),
            "cpu_window_s": round(window, 2),
            "server_cpu_pct": round((cpu1 - cpu0) / window * 100.0, 2),
        }))
    }
    .await;
    stop.cancel();
    for h in subs {
        let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
    }
    let _ = cancel(&t).await;
    result
}
