//! A real WebSocket client (tokio-tungstenite) and what it received.

use runtap::event::Event;

use super::WAIT;

pub type WsClient = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
pub use tokio_tungstenite::tungstenite::Message;

/// Opens a WebSocket with extra request headers.
pub async fn ws_connect(url: &str, headers: &[(&str, &str)]) -> WsClient {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut()
            .insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), http::HeaderValue::from_str(v).unwrap());
    }
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req)).await.unwrap().unwrap();
    ws
}

/// Everything a WebSocket receives until it closes: events, other JSON
/// messages, and the close code.
#[derive(Debug, Default)]
pub struct Received {
    pub events: Vec<Event>,
    pub controls: Vec<serde_json::Value>,
    pub close: Option<u16>,
}

impl Received {
    pub fn seqs(&self) -> Vec<u64> {
        self.events.iter().map(|e| e.seq).collect()
    }
    pub fn error_code(&self) -> Option<String> {
        self.controls.iter().find(|c| c["type"] == "error").map(|c| c["code"].as_str().unwrap_or("").to_owned())
    }
}

/// Reads until close (or `stop_when` says so), bounded by WAIT.
pub async fn ws_read(ws: &mut WsClient, mut stop_when: impl FnMut(&Received) -> bool) -> Received {
    use futures_util::StreamExt;
    let mut got = Received::default();
    let r = tokio::time::timeout(WAIT, async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Text(t)) => {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                    // An event has a `seq`; nothing else the server sends does.
                    if v.get("seq").is_some() {
                        got.events.push(serde_json::from_value(v).unwrap());
                    } else {
                        got.controls.push(v);
                    }
                }
                Ok(Message::Close(frame)) => {
                    got.close = frame.map(|f| u16::from(f.code));
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
            if stop_when(&got) {
                break;
            }
        }
    })
    .await;
    assert!(r.is_ok(), "websocket read timed out; got so far: {got:?}");
    got
}

pub async fn ws_send_json(ws: &mut WsClient, v: serde_json::Value) {
    use futures_util::SinkExt;
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}
