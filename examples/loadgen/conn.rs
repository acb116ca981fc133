//! Connecting a WebSocket subscriber to each kind of server.

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
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
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let url = match t.proto {
        Proto::Runtap | Proto::Ws => {
            format!("ws://{}/runs?runId={}&token={}&since={since}", t.addr, enc(&t.run_id), enc(&t.token))
        }
        Proto::Socketio => format!("ws://{}/socket.io/?EIO=4&transport=websocket", t.addr),
        Proto::RuntapSocketio => {
            format!("ws://{}/runs/?EIO=4&transport=websocket&runId={}&since={since}", t.addr, enc(&t.run_id))
        }
    };
    let req = url.into_client_request().map_err(|e| e.to_string())?;
    let addr: std::net::SocketAddr = t.addr.parse().map_err(|e| format!("--addr {}: {e}", t.addr))?;
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }
        .map_err(|e| e.to_string())?;
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size).map_err(|e| e.to_string())?;
    }
    let tcp = socket.connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(req, MaybeTlsStream::Plain(tcp), Some(ws_config()))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    match t.proto {
        Proto::Socketio => socketio_subscribe(&mut ws, t).await?,
        Proto::RuntapSocketio => socketio_connect(&mut ws, t).await?,
        Proto::Runtap | Proto::Ws => {}
    }
    Ok(ws)
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
