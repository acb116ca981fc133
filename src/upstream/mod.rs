//! Forwarding this host's events to a gateway (see `protocol::link`).
//!
//! The link is a state machine, `Disconnected { backoff } → Connecting →
//! Connected`, reconnecting with jittered exponential backoff (0.5 s up to
//! 30 s). Each run is forwarded by a `Feed` that reads the journal from the
//! gateway's acknowledged seq with the replay lag policy: a slow or absent
//! gateway only makes the feed fall back to the journal; it never holds up
//! a run. After any outage the gateway's `welcome` says where to resume.
//!
//! - `config`: what the link needs to know; `status`: its state and counters.
//! - `session`: one connection's life.

mod config;
mod session;
mod status;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

use crate::protocol::link::MAX_LINK_MESSAGE;
use crate::run::RunTable;
pub(crate) use config::LinkConfig;
use session::Session;
pub(crate) use status::{LinkState, UpstreamStatus};

const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A connection that lasted this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("read token file {0}: {1}")]
    Token(String, std::io::Error),
    #[error("epoch file: {0}")]
    Epoch(std::io::Error),
    #[error("upstream.ca_file {0}")]
    Tls(String),
    #[error("connect: {0}")]
    Connect(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("connection closed")]
    Closed,
}

/// The link's state, as an explicit machine.
enum Link {
    Disconnected { backoff: Duration },
    Connecting { backoff: Duration },
    Connected { ws: Box<Ws>, backoff: Duration },
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Keeps the link to the gateway up until `stop`.
pub(crate) async fn run(cfg: LinkConfig, table: RunTable, status: Arc<UpstreamStatus>, stop: CancellationToken) {
    let mut link = Link::Connecting { backoff: BACKOFF_MIN };
    let mut first = true;
    loop {
        link = match link {
            Link::Disconnected { backoff } => {
                status.set_state(LinkState::Disconnected);
                let wait = jitter(backoff);
                tracing::info!(retry_in = ?wait, "gateway link down");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                Link::Connecting { backoff: (backoff * 2).min(BACKOFF_MAX) }
            }
            Link::Connecting { backoff } => {
                status.set_state(LinkState::Connecting);
                if !first {
                    status.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                first = false;
                match tokio::select! {
                    _ = stop.cancelled() => return,
                    r = connect(&cfg) => r,
                } {
                    Ok(ws) => Link::Connected { ws: Box::new(ws), backoff },
                    Err(error) => {
                        tracing::warn!(url = %cfg.url, %error, "cannot reach the gateway");
                        Link::Disconnected { backoff }
                    }
                }
            }
            Link::Connected { ws, backoff } => {
                status.set_state(LinkState::Connected);
                let since = Instant::now();
                let result = Session::new(&cfg, &table, &status).run(*ws, &stop).await;
                *status.unacked_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
                if stop.is_cancelled() {
                    return;
                }
                if let Err(error) = result {
                    tracing::warn!(%error, "gateway link ended");
                }
                let backoff = if since.elapsed() > STABLE_AFTER { BACKOFF_MIN } else { backoff };
                Link::Disconnected { backoff }
            }
        };
    }
}

/// Between half and all of `d`: spreads reconnects of many hosts.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let r = if getrandom::fill(&mut b).is_ok() { u16::from_le_bytes(b) } else { u16::MAX / 2 };
    d / 2 + d.mul_f64(f64::from(r) / f64::from(u16::MAX) / 2.0)
}

/// Makes `ring` the process's TLS crypto provider (for `wss://`). Safe to call twice.
pub(crate) fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

async fn connect(cfg: &LinkConfig) -> Result<Ws, UpstreamError> {
    install_tls_provider();
    let url = format!("{}/agent", cfg.url.trim_end_matches('/'));
    let mut req = url.into_client_request().map_err(|e| UpstreamError::Connect(e.to_string()))?;
    let bearer = format!("Bearer {}", cfg.token.expose());
    let value = http::HeaderValue::from_str(&bearer).map_err(|e| UpstreamError::Connect(e.to_string()))?;
    req.headers_mut().insert(http::header::AUTHORIZATION, value);
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_LINK_MESSAGE))
        .max_frame_size(Some(MAX_LINK_MESSAGE));
    // Our own roots (system + `upstream.ca_file`), not tungstenite's defaults.
    let connector = cfg.tls.clone().map(tokio_tungstenite::Connector::Rustls);
    let connecting = tokio_tungstenite::connect_async_tls_with_config(req, Some(config), true, connector);
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(UpstreamError::Connect(e.to_string())),
        Err(_) => Err(UpstreamError::Connect("timed out".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_to_full() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(2));
            assert!(j >= Duration::from_secs(1) && j <= Duration::from_secs(2), "{j:?}");
        }
    }

    /// wss:// goes through rustls: against a peer that is not TLS it fails
    /// with an error (it must not panic for want of a crypto provider).
    #[tokio::test]
    async fn wss_uses_tls_and_fails_cleanly_against_plain_tcp() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                use tokio::io::AsyncWriteExt;
                let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            }
        });
        let cfg = LinkConfig {
            url: format!("wss://{addr}"),
            host_id: "h".into(),
            token: crate::auth::Token::new("t"),
            epoch: "e".into(),
            tls: Some(crate::trust::client_config(None).unwrap()),
        };
        match connect(&cfg).await {
            Err(UpstreamError::Connect(_)) => {}
            Err(other) => panic!("unexpected error: {other}"),
            Ok(_) => panic!("a plain TCP server cannot complete a TLS handshake"),
        }
    }
}
