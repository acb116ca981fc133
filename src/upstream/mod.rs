//! Forwarding this host's events to a gateway (see `protocol::link`).
//!
//! The link is a state machine, `Disconnected { wait } → Connecting { url }
//! → Connected`, over one or several gateway URLs: `rotation` says which URL
//! comes next (on a failure or a drop, the next one at once) and how long to
//! wait after a whole round failed (jittered, 0.25 s up to 2 s; why those
//! numbers is written there). Each run is forwarded by a `Feed` that reads
//! the journal from the gateway's acknowledged seq with the replay lag
//! policy: a slow or absent gateway only makes the feed fall back to the
//! journal; it never holds up a run. After any outage, or on another
//! gateway, the gateway's `welcome` says where to resume.
//!
//! - `config`: what the link needs to know; `status`: its state and counters.
//! - `rotation`: the choice of URL and the backoff; `session`: one connection's life.

mod config;
mod rotation;
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
use rotation::{Next, Rotation};
use session::Session;
pub(crate) use status::{LinkState, UpstreamStatus};

/// Deadline for the TCP connect, TLS and WebSocket handshakes with one URL.
/// Not longer: a gateway whose machine is gone (no refusal, just silence)
/// holds up the failover to the next URL for this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// Every URL failed in this round: wait before the next.
    Disconnected {
        wait: Duration,
    },
    /// Connecting to the URL at this index of `LinkConfig::urls`.
    Connecting {
        url: usize,
    },
    Connected {
        ws: Box<Ws>,
        url: usize,
    },
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Keeps the link to a gateway up until `stop`.
pub(crate) async fn run(cfg: LinkConfig, table: RunTable, status: Arc<UpstreamStatus>, stop: CancellationToken) {
    let mut rotation = Rotation::new(cfg.urls.len());
    let mut link = Link::Connecting { url: 0 };
    let mut first = true;
    loop {
        link = match link {
            Link::Disconnected { wait } => {
                status.set_link(LinkState::Disconnected, None);
                if rotation.loud() {
                    tracing::info!(retry_in = ?wait, "gateway link down: no gateway URL answered");
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                next(&mut rotation)
            }
            Link::Connecting { url } => {
                status.set_link(LinkState::Connecting, None);
                if !first {
                    status.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                first = false;
                match tokio::select! {
                    _ = stop.cancelled() => return,
                    r = connect(&cfg, url) => r,
                } {
                    Ok(ws) => {
                        rotation.connected(url);
                        Link::Connected { ws: Box::new(ws), url }
                    }
                    Err(error) => {
                        let url_text = cfg.urls.get(url).map_or("", String::as_str);
                        if rotation.loud() {
                            tracing::warn!(url = %url_text, %error, "cannot reach the gateway");
                        } else {
                            tracing::debug!(url = %url_text, %error, "cannot reach the gateway");
                        }
                        rotation.failed(url);
                        next(&mut rotation)
                    }
                }
            }
            Link::Connected { ws, url } => {
                status.set_link(LinkState::Connected, Some(url));
                let since = Instant::now();
                let url_text = cfg.urls.get(url).map_or("", String::as_str);
                let result = Session::new(&cfg, &table, &status, url_text).run(*ws, &stop).await;
                *status.unacked_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
                if stop.is_cancelled() {
                    return;
                }
                match result {
                    Err(error) => tracing::warn!(url = %url_text, %error, "gateway link ended"),
                    Ok(()) => tracing::info!(url = %url_text, "gateway link ended"),
                }
                rotation.dropped(url, since.elapsed());
                next(&mut rotation)
            }
        };
    }
}

fn next(rotation: &mut Rotation) -> Link {
    match rotation.next() {
        Next::Try(url) => Link::Connecting { url },
        Next::Wait(wait) => Link::Disconnected { wait },
    }
}

/// Makes `ring` the process's TLS crypto provider (for `wss://`). Safe to call twice.
pub(crate) fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Connects to the gateway at `cfg.urls[url]`.
async fn connect(cfg: &LinkConfig, url: usize) -> Result<Ws, UpstreamError> {
    install_tls_provider();
    let base = cfg.urls.get(url).ok_or_else(|| UpstreamError::Connect(format!("no gateway URL #{url}")))?;
    let url = format!("{}/agent", base.trim_end_matches('/'));
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
            urls: vec![format!("wss://{addr}")],
            host_id: "h".into(),
            token: crate::auth::Token::new("t"),
            epoch: "e".into(),
            tls: Some(crate::trust::client_config(None).unwrap()),
        };
        match connect(&cfg, 0).await {
            Err(UpstreamError::Connect(_)) => {}
            Err(other) => panic!("unexpected error: {other}"),
            Ok(_) => panic!("a plain TCP server cannot complete a TLS handshake"),
        }
    }
}
