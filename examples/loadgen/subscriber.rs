//! A streaming subscriber (reads one run to its final event and checks it
//! got every line, decoding frames as `--decode` says, optionally slowly),
//! a stalled one, and the wait for all to be ready.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::cli::{Decode, Scan, Target};
use crate::conn::{STALLED_RCVBUF, Ws, connect, connect_with};
use crate::json::json_frame;
use crate::light::light_frame;
use crate::stats::{Step, SubStats};

/// How long all subscribers together may take to connect and subscribe.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(90);

/// How a streaming subscriber reads.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Opts {
    pub(crate) scan: Scan,
    pub(crate) decode: Decode,
    /// Resubscriptions allowed after a `lagged` close (runtap).
    pub(crate) resubscribe: u32,
    /// Time spent on each text frame (slow reader), if any.
    pub(crate) per_frame: Option<Duration>,
}

/// A slow reader's clock. Each text frame keeps the reader busy for
/// `per_frame` from when it arrived, or from when the previous one was
/// done if that is later, and the next frame is read only after that.
/// The wait is a sleep, not a busy loop: 100 slow readers stand for 100
/// browsers on their own machines, and 100 busy loops on this box's 2
/// cores would measure the loops starving the server, not the server.
/// tokio's timer rounds each wake-up up to the next millisecond, but the
/// deadlines are chained, so the mean time per frame stays `per_frame`
/// whenever frames queue up.
struct Pace {
    per_frame: Duration,
    busy_until: Instant,
}

impl Pace {
    async fn frame(&mut self, arrived: Instant) {
        self.busy_until = self.busy_until.max(arrived) + self.per_frame;
        tokio::time::sleep_until(self.busy_until.into()).await;
    }
}

/// Reads one run to its final event, resubscribing after `lagged` (runtap).
pub(crate) async fn subscriber(
    t: Arc<Target>,
    opts: Opts,
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
    let mut pace = opts.per_frame.map(|per_frame| Pace { per_frame, busy_until: Instant::now() });
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => { st.error = Some("stopped before the final event".into()); return st; }
            m = ws.next() => m,
        };
        let text = match msg {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map(|f| u16::from(f.code));
                if code == Some(1013) {
                    st.cut_offs += 1;
                }
                if code == Some(1013) && t.proto.is_runtap() && st.resubscribes < opts.resubscribe {
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
        let arrived = Instant::now();
        let s = text.as_str();
        st.frames += 1;
        st.bytes += s.len() as u64;
        let step = match opts.decode {
            Decode::Light => light_frame(t.proto, s, opts.scan, &mut st, &mut last_seq),
            Decode::Json => json_frame(t.proto, s.as_bytes(), opts.scan, &mut st, &mut last_seq),
        };
        match step {
            Step::Next => {}
            Step::Done => {
                st.done_at = Some(Instant::now());
                return st;
            }
            Step::Pong => {
                if let Err(e) = ws.send(Message::text("3")).await {
                    st.error = Some(e.to_string());
                    return st;
                }
            }
            Step::Fail(e) => {
                st.error = Some(e);
                return st;
            }
        }
        if let Some(p) = &mut pace {
            p.frame(arrived).await;
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
