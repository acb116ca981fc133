//! `handshakes` mode: how fast the server sets up connections. For each
//! `--set-up` kind in turn, `--concurrency` workers loop for `--secs`:
//! TCP connect, a full TLS handshake if `--tls-ca` (resumption off: every
//! connection pays for the key exchange and the certificate), then the
//! WebSocket upgrade to an idle run, up to its first text frame, and a
//! close handshake (or `GET /healthz` read to the end); then the next one.
//! Reports connections per second, set-up latency and the server's CPU
//! per 1000 connections.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::cli::{HandshakeArgs, SetUp, Target};
use crate::conn::{open, url, ws_config};
use crate::control::{cancel, launch};
use crate::histogram::Hist;
use crate::proc::cpu_secs;
use crate::round;

/// One connection, from connect to closed, may take this long.
const PER_CONNECTION: Duration = Duration::from_secs(10);

/// What one connection's set-up took.
struct Times {
    /// Connect, TLS, and the upgrade's `101` (or the whole `/healthz` answer).
    set_up: Duration,
    /// `ws`: until the run's first text frame.
    first_frame: Option<Duration>,
    /// TLS parameters, from a worker's first connection.
    tls: Option<Value>,
}

#[derive(Default)]
struct Worker {
    set_up: Option<Hist>,
    first_frame: Option<Hist>,
    n: u64,
    errors: u64,
    error_samples: Vec<String>,
    tls: Option<Value>,
}

pub(crate) async fn handshakes(a: HandshakeArgs) -> Result<Value, String> {
    let t = Arc::new(a.target.clone());
    if !matches!(t.proto, crate::cli::Proto::Runtap | crate::cli::Proto::Ws) {
        return Err("handshakes: --proto runtap or ws (the /runs?runId= endpoint)".into());
    }
    launch(&t, &a.command).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut out = serde_json::Map::new();
    out.insert("mode".into(), json!("handshakes"));
    out.insert("proto".into(), json!(format!("{:?}", t.proto).to_lowercase()));
    out.insert("tls".into(), json!(t.tls_ca.is_some()));
    if t.tls_ca.is_some() {
        out.insert("resumption".into(), json!("off: a full handshake on every connection"));
    }
    out.insert("concurrency".into(), json!(a.concurrency));
    out.insert("secs".into(), json!(a.secs));
    let mut result = Ok(());
    for kind in &a.set_up {
        match phase(&t, *kind, &a).await {
            Ok((name, v, tls)) => {
                if let Some(tls) = tls {
                    out.entry("tls_session").or_insert(tls);
                }
                out.insert(name.into(), v);
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let _ = cancel(&t).await;
    result.map(|()| Value::Object(out))
}

async fn phase(
    t: &Arc<Target>,
    kind: SetUp,
    a: &HandshakeArgs,
) -> Result<(&'static str, Value, Option<Value>), String> {
    let pid = t.server_pid;
    let until = Instant::now() + Duration::from_secs_f64(a.secs);
    let cpu0 = pid.map(|p| cpu_secs(Some(p)).ok_or("server process gone")).transpose()?;
    let own0 = cpu_secs(None);
    let start = Instant::now();
    let workers: Vec<_> = (0..a.concurrency.max(1)).map(|_| tokio::spawn(worker(t.clone(), kind, until))).collect();
    let mut all = Worker::default();
    for w in workers {
        let w = w.await.map_err(|e| format!("worker: {e}"))?;
        merge(&mut all.set_up, w.set_up.as_ref());
        merge(&mut all.first_frame, w.first_frame.as_ref());
        all.n += w.n;
        all.errors += w.errors;
        for e in w.error_samples {
            if all.error_samples.len() < 3 {
                all.error_samples.push(e);
            }
        }
        all.tls = all.tls.or(w.tls);
    }
    let elapsed = start.elapsed().as_secs_f64();
    if all.n == 0 {
        return Err(format!("handshakes {kind:?}: no connection set up; {:?}", all.error_samples));
    }
    let cpu1 = pid.map(|p| cpu_secs(Some(p)).ok_or("server process gone")).transpose()?;
    let own1 = cpu_secs(None);
    let server_cpu = cpu0.zip(cpu1).map(|(a, b)| b - a);
    let q = |h: &Option<Hist>, q: f64| h.as_ref().and_then(|h| h.quantile_ms(q)).map(|x| round(x, 3));
    let mut v = json!({
        "connections": all.n,
        "elapsed_s": round(elapsed, 3),
        "per_s": round(all.n as f64 / elapsed, 1),
        "p50_ms": q(&all.set_up, 0.5),
        "p99_ms": q(&all.set_up, 0.99),
        "max_ms": all.set_up.as_ref().map(|h| round(h.max as f64 / 1000.0, 3)),
        "errors": all.errors,
        "error_samples": all.error_samples,
        "server_cpu_s": server_cpu.map(|c| round(c, 2)),
        "server_cpu_s_per_1000": server_cpu.map(|c| round(c / all.n as f64 * 1000.0, 3)),
        "loadgen_cpu_s": own0.zip(own1).map(|(a, b)| round(b - a, 2)),
    });
    if kind == SetUp::Ws {
        v["first_frame_p50_ms"] = json!(q(&all.first_frame, 0.5));
        v["first_frame_p99_ms"] = json!(q(&all.first_frame, 0.99));
    }
    let name = match kind {
        SetUp::Ws => "ws",
        SetUp::Healthz => "healthz",
    };
    Ok((name, v, all.tls))
}

fn merge(into: &mut Option<Hist>, h: Option<&Hist>) {
    if let Some(h) = h {
        into.get_or_insert_with(Hist::new).merge(h);
    }
}

async fn worker(t: Arc<Target>, kind: SetUp, until: Instant) -> Worker {
    let mut w = Worker::default();
    let ws_url = url(&t, 0);
    while Instant::now() < until {
        let one = async {
            match kind {
                SetUp::Ws => ws_once(&t, &ws_url, w.tls.is_none()).await,
                SetUp::Healthz => healthz_once(&t, w.tls.is_none()).await,
            }
        };
        match tokio::time::timeout(PER_CONNECTION, one).await.unwrap_or_else(|_| Err("timed out".into())) {
            Ok(times) => {
                w.n += 1;
                w.set_up.get_or_insert_with(Hist::new).record(times.set_up.as_micros() as u64);
                if let Some(f) = times.first_frame {
                    w.first_frame.get_or_insert_with(Hist::new).record(f.as_micros() as u64);
                }
                w.tls = w.tls.take().or(times.tls);
            }
            Err(e) => {
                w.errors += 1;
                if w.error_samples.len() < 3 {
                    w.error_samples.push(e);
                }
                // A refused or failing server: do not spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    w
}

/// The negotiated TLS parameters of a connection, for the report.
fn tls_of(s: &MaybeTlsStream<tokio::net::TcpStream>) -> Option<Value> {
    let MaybeTlsStream::Rustls(s) = s else { return None };
    let c = s.get_ref().1;
    Some(json!({
        "version": c.protocol_version().map(|v| format!("{v:?}")),
        "cipher_suite": c.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())),
        "kx_group": c.negotiated_key_exchange_group().map(|g| format!("{:?}", g.name())),
        "alpn": c.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned()),
    }))
}

async fn ws_once(t: &Target, ws_url: &str, describe: bool) -> Result<Times, String> {
    let t0 = Instant::now();
    let req = ws_url.into_client_request().map_err(|e| e.to_string())?;
    let stream = open(t, None).await?;
    let tls = if describe { tls_of(&stream) } else { None };
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(req, stream, Some(ws_config()))
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
    let set_up = t0.elapsed();
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(_))) => break,
            Some(Ok(Message::Close(frame))) => return Err(format!("closed before the first frame: {frame:?}")),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("before the first frame: {e}")),
            None => return Err("ended before the first frame".into()),
        }
    }
    let first_frame = Some(t0.elapsed());
    ws.close(None).await.map_err(|e| format!("close: {e}"))?;
    // The server answers the close and then ends the TCP connection.
    while let Some(m) = ws.next().await {
        if m.is_err() {
            break;
        }
    }
    Ok(Times { set_up, first_frame, tls })
}

async fn healthz_once(t: &Target, describe: bool) -> Result<Times, String> {
    let t0 = Instant::now();
    let mut stream = open(t, None).await?;
    let tls = if describe { tls_of(&stream) } else { None };
    let req = format!("GET /healthz HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n", t.addr);
    stream.write_all(req.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
    let mut resp = Vec::with_capacity(1024);
    let read = stream.read_to_end(&mut resp).await;
    if !resp.starts_with(b"HTTP/1.1 200") {
        let head = String::from_utf8_lossy(&resp[..resp.len().min(80)]).into_owned();
        return Err(format!("GET /healthz: {head:?} ({read:?})"));
    }
    // An end without TLS close_notify after a whole answer is still an answer.
    if let Err(e) = read
        && e.kind() != std::io::ErrorKind::UnexpectedEof
    {
        return Err(format!("read: {e}"));
    }
    Ok(Times { set_up: t0.elapsed(), first_frame: None, tls })
}
