//! A streaming subscriber (reads one run to its final event and checks it
//! got every line), a stalled one, and the wait for all to be ready.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::cli::{Proto, Scan, Target};
use crate::conn::{STALLED_RCVBUF, Ws, connect, connect_with};
use crate::frames::{Kind, classify, num_after, scan_lines};
use crate::histogram::Hist;
use crate::proc::now_ns;

/// How long all subscribers together may take to connect and subscribe.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(90);
/// Resubscriptions allowed per subscriber after a `lagged` close (runtap).
pub(crate) const MAX_RESUBSCRIBES: u32 = 1000;

#[derive(Default)]
pub(crate) struct SubStats {
    pub(crate) events: u64,
    pub(crate) bytes: u64,
    pub(crate) lines: u64,
    /// Highest line index seen (-1: none).
    pub(crate) max_idx: i64,
    pub(crate) gaps: u64,
    pub(crate) dups: u64,
    pub(crate) hist: Option<Hist>,
    pub(crate) first_at: Option<Instant>,
    pub(crate) done_at: Option<Instant>,
    pub(crate) resubscribes: u32,
    pub(crate) error: Option<String>,
}

impl SubStats {
    pub(crate) fn new() -> Self {
        SubStats { max_idx: -1, ..Default::default() }
    }

    pub(crate) fn on_output(&mut self, text: &str, scan: Scan) {
        let now = now_ns();
        self.events += 1;
        let b = text.as_bytes();
        let hist = self.hist.get_or_insert_with(Hist::new);
        let (mut lo, mut hi) = (None, None);
        scan_lines(b, scan, |t, i, sample| {
            if sample {
                hist.record(now.saturating_sub(t) / 1000);
            }
            lo = Some(lo.map_or(i, |l: u64| l.min(i)));
            hi = Some(hi.map_or(i, |h: u64| h.max(i)));
        });
        if let (Some(lo), Some(hi)) = (lo, hi) {
            let (lo, hi) = (lo as i64, hi as i64);
            // A line cut between two chunks (the Node servers cut anywhere)
            // may be unreadable in both: allow one skipped index.
            if lo > self.max_idx + 2 {
                self.gaps += 1;
            }
            if lo <= self.max_idx {
                self.dups += 1;
            }
            if hi > self.max_idx {
                self.lines += (hi - self.max_idx) as u64;
                self.max_idx = hi;
            }
        }
    }
}

pub(crate) async fn subscriber(
    t: Arc<Target>,
    scan: Scan,
    gate: Arc<Semaphore>,
    ready: mpsc::Sender<Result<(), String>>,
    stop: CancellationToken,
) -> SubStats {
    let mut st = SubStats::new();
    let mut ws = {
        let _permit = gate.acquire().await;
        match connect(&t, 0).await {
            Ok(ws) => ws,
            Err(e) => {
                let _ = ready.send(Err(e.clone())).await;
                st.error = Some(e);
                return st;
            }
        }
    };
    let _ = ready.send(Ok(())).await;
    let mut last_seq = 0u64;
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => { st.error = Some("stopped before the final event".into()); return st; }
            m = ws.next() => m,
        };
        let text = match msg {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map(|f| u16::from(f.code));
                if code == Some(1013) && t.proto == Proto::Runtap && st.resubscribes < MAX_RESUBSCRIBES {
                    match reconnect(&t, last_seq, &mut st).await {
                        Some(w) => {
                            ws = w;
                            continue;
                        }
                        None => return st,
                    }
                }
                st.error = Some(format!("closed ({code:?}) before the final event"));
                return st;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                st.error = Some(e.to_string());
                return st;
            }
            None => {
                st.error = Some("connection ended before the final event".into());
                return st;
            }
        };
        let s = text.as_str();
        st.bytes += s.len() as u64;
        let kind = classify(t.proto, s);
        if t.proto == Proto::Runtap && matches!(kind, Kind::Output | Kind::Status { .. }) {
            last_seq = num_after(s, "\"seq\":").unwrap_or(last_seq);
        }
        match kind {
            Kind::Output => {
                st.first_at.get_or_insert_with(Instant::now);
                st.on_output(s, scan);
            }
            Kind::Status { last: true, .. } => {
                st.done_at = Some(Instant::now());
                return st;
            }
            Kind::Ping => {
                if let Err(e) = ws.send(Message::text("3")).await {
                    st.error = Some(e.to_string());
                    return st;
                }
            }
            Kind::Lagged { last_seq: Some(seq) } => last_seq = seq,
            Kind::OtherError(e) => {
                st.error = Some(e);
                return st;
            }
            _ => {}
        }
    }
}

pub(crate) async fn reconnect(t: &Target, since: u64, st: &mut SubStats) -> Option<Ws> {
    st.resubscribes += 1;
    match connect(t, since).await {
        Ok(w) => Some(w),
        Err(e) => {
            st.error = Some(format!("resubscribe: {e}"));
            None
        }
    }
}

/// Connects and subscribes, then holds the connection without reading.
pub(crate) async fn stalled(
    t: Arc<Target>,
    gate: Arc<Semaphore>,
    ready: mpsc::Sender<Result<(), String>>,
    stop: CancellationToken,
) {
    let ws = {
        let _permit = gate.acquire().await;
        connect_with(&t, 0, Some(STALLED_RCVBUF)).await
    };
    let _ = ready.send(ws.as_ref().map(|_| ()).map_err(|e| e.clone())).await;
    stop.cancelled().await;
    drop(ws);
}

/// Waits for `n` ready signals; the first error or the timeout ends it.
pub(crate) async fn all_ready(rx: &mut mpsc::Receiver<Result<(), String>>, n: usize) -> Result<(), String> {
    let wait = async {
        for _ in 0..n {
            match rx.recv().await {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(format!("subscriber failed to connect: {e}")),
                None => return Err("subscribers gone".into()),
            }
        }
        Ok(())
    };
    tokio::time::timeout(CONNECT_TIMEOUT, wait).await.map_err(|_| "subscribers did not connect in time".to_string())?
}
