//! Connecting a WebSocket subscriber to each kind of server, over plain
//! TCP or (`--tls-ca`) TLS.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use futures_util::{SinkExt, StreamExt};
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::cli::{Proto, Target};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub(crate) fn ws_config() -> WebSocketConfig {
    // Small buffers: 10 000 of these share the box with the server.
    WebSocketConfig::default().read_buffer_size(16 * 1024).write_buffer_size(0)
}

/// Receive buffer of a stalled subscriber's socket, so the kernel soaks up
/// little and the server's own bounds are what a stall runs into.
pub(crate) const STALLED_RCVBUF: u32 = 4 * 1024;

/// Connects and subscribes; for socket.io, up to the `subscribed` ack.
pub(crate) async fn connect(t: &Target, since: u64) -> Result<Ws, String> {
    connect_with(t, since, None).await
}

pub(crate) async fn connect_with(t: &Target, since: u64, rcvbuf: Option<u32>) -> Result<Ws, String> {
    let req = url(t, since).into_client_request().map_err(|e| e.to_string())?;
    let stream = open(t, rcvbuf).await?;
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(req, stream, Some(ws_config()))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    match t.proto {
        Proto::Socketio => socketio_subscribe(&mut ws, t).await?,
        Proto::RuntapSocketio => socketio_connect(&mut ws, t).await?,
        Proto::Runtap | Proto::Ws => {}
    }
    Ok(ws)
}

/// The subscriber's URL: `wss://` with `--tls-ca`, else `ws://`.
pub(crate) fn url(t: &Target, since: u64) -> String {
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let scheme = if t.tls_ca.is_some() { "wss" } else { "ws" };
    let addr = &t.addr;
    match t.proto {
        Proto::Runtap | Proto::Ws => {
            let host = t.host.as_deref().map(|h| format!("&host={}", enc(h))).unwrap_or_default();
            format!("{scheme}://{addr}/runs?runId={}&token={}&since={since}{host}", enc(&t.run_id), enc(&t.token))
        }
        Proto::Socketio => format!("{scheme}://{addr}/socket.io/?EIO=4&transport=websocket"),
        Proto::RuntapSocketio => {
            format!("{scheme}://{addr}/runs/?EIO=4&transport=websocket&runId={}&since={since}", enc(&t.run_id))
        }
    }
}

/// A TCP connection to `--addr` (receive buffer `rcvbuf` if given), with a
/// full TLS handshake over it when `--tls-ca` is set.
pub(crate) async fn open(t: &Target, rcvbuf: Option<u32>) -> Result<MaybeTlsStream<TcpStream>, String> {
    let addr: std::net::SocketAddr = t.addr.parse().map_err(|e| format!("--addr {}: {e}", t.addr))?;
    // Built before the connect, so a bad CA file fails without touching the server.
    let tls = t.tls_ca.as_deref().map(tls_connector).transpose()?;
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }
        .map_err(|e| e.to_string())?;
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size).map_err(|e| e.to_string())?;
    }
    let tcp = socket.connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let Some(tls) = tls else { return Ok(MaybeTlsStream::Plain(tcp)) };
    // `--addr` is an IP address; the certificate names it (IP:127.0.0.1).
    let name = ServerName::IpAddress(addr.ip().into());
    let stream = tls.connect(name, tcp).await.map_err(|e| format!("TLS handshake: {e}"))?;
    Ok(MaybeTlsStream::Rustls(stream))
}

/// One client configuration for the whole process (the CA file is read
/// once): every connection shares it. A `Target` names one CA file, and a
/// process has one `Target`.
static TLS: OnceLock<Result<TlsConnector, String>> = OnceLock::new();

fn tls_connector(ca: &Path) -> Result<TlsConnector, String> {
    TLS.get_or_init(|| tls_config(ca).map(|c| TlsConnector::from(Arc::new(c)))).clone()
}

/// Roots: the CA file only. ALPN `http/1.1` (the server offers nothing
/// else). Resumption off, so every connection is a full handshake (the
/// server's session tickets are received and thrown away).
fn tls_config(ca: &Path) -> Result<ClientConfig, String> {
    let err = |e: &dyn std::fmt::Display| format!("--tls-ca {}: {e}", ca.display());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| err(&e))? {
        roots.add(cert.map_err(|e| err(&e))?).map_err(|e| err(&e))?;
    }
    if roots.is_empty() {
        return Err(err(&"no CERTIFICATE in the file"));
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| err(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = Resumption::disabled();
    Ok(config)
}

/// runtap's `/runs/`: the run is in the handshake; CONNECT with the token
/// (seed 000's `auth: {token}`), and the run's events follow the reply.
pub(crate) async fn socketio_connect(ws: &mut Ws, t: &Target) -> Result<(), String> {
    while let Some(msg) = ws.next().await {
        let Message::Text(text) = msg.map_err(|e| e.to_string())? else { continue };
        let s = text.as_str();
        if s.starts_with('0') {
            let connect = format!("40{}", json!({"token": t.token}));
            ws.send(Message::text(connect)).await.map_err(|e| e.to_string())?;
        } else if s.starts_with("40") {
            return Ok(());
        } else if s.starts_with("44") || s.starts_with("42[\"error\"") {
            return Err(format!("socket.io connect refused: {s}"));
        }
    }
    Err("closed during socket.io handshake".into())
}

pub(crate) async fn socketio_subscribe(ws: &mut Ws, t: &Target) -> Result<(), String> {
    let mut sent_subscribe = false;
    while let Some(msg) = ws.next().await {
        let Message::Text(text) = msg.map_err(|e| e.to_string())? else { continue };
        let s = text.as_str();
        let reply = if s.starts_with('0') {
            format!("40{}", json!({"token": t.token}))
        } else if s.starts_with("40") && !sent_subscribe {
            sent_subscribe = true;
            format!("42{}", json!(["subscribe", t.run_id]))
        } else if s == "2" {
            "3".to_string()
        } else if s.starts_with("42[\"subscribed\"") {
            return Ok(());
        } else if s.starts_with("44") {
            return Err(format!("socket.io connect refused: {s}"));
        } else {
            continue;
        };
        ws.send(Message::text(reply)).await.map_err(|e| e.to_string())?;
    }
    Err("closed during socket.io handshake".into())
}
