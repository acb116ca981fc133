//! The CLI's side of a daemon's or gateway's listener: its URL, one
//! connection (TCP, or TLS through rustls for `https://`), an HTTP request
//! over it with hyper, or a WebSocket with tungstenite.
//!
//! Each call opens its own connection: a command makes one or two
//! requests, and the server bounds a connection's life anyway
//! (`handshake_timeout`). Every step before the stream is bounded by
//! [`REQUEST_TIMEOUT`], so a black-holed address fails instead of hanging.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::ClientError;
use crate::auth::Token;

/// Connecting, the TLS handshake, and a whole HTTP exchange (or a
/// WebSocket handshake) must each be done within this.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest HTTP answer read: `GET /runs` of a gateway with many hosts.
const MAX_ANSWER: usize = 256 * 1024 * 1024;
/// Environment variable naming an extra CA certificate file (PEM) for
/// `https://`, beside the system's roots: for a private CA.
const CA_FILE_ENV: &str = "RUNTAP_CA_FILE";

/// A parsed `--url`: where to connect, and the path prefix the API lives
/// under (empty, or e.g. `/runtap` behind a reverse proxy).
#[derive(Clone, Debug)]
pub(super) struct Url {
    tls: bool,
    host: String,
    port: u16,
    base: String,
    /// As given, for messages.
    pub(super) text: String,
}

impl Url {
    pub(super) fn parse(raw: &str, origin: &str) -> Result<Url, ClientError> {
        let bad = |why: &str| ClientError::Usage(format!("invalid URL {raw:?} ({origin}): {why}"));
        let uri: http::Uri = raw.parse().map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(other) => return Err(bad(&format!("unsupported scheme {other}://; use http:// or https://"))),
            None => return Err(bad("no scheme; use http://HOST:PORT or https://HOST:PORT")),
        };
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| bad("no host"))?;
        if uri.query().is_some() {
            return Err(bad("a query has no place here; give the address only"));
        }
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let base = uri.path().trim_end_matches('/').to_owned();
        Ok(Url { tls, host, port, base, text: raw.to_owned() })
    }

    /// `host:port` for the `Host` header (IPv6 in brackets).
    fn authority(&self) -> String {
        match self.host.contains(':') {
            true => format!("[{}]:{}", self.host, self.port),
            false => format!("{}:{}", self.host, self.port),
        }
    }
}

/// An HTTP answer: its status and its whole body.
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) body: Bytes,
}

impl Answer {
    /// The body as JSON (`Null` if it is not JSON: a proxy's error page).
    pub(super) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

type Stream = MaybeTlsStream<TcpStream>;

/// A connection to `url`, TLS for `https://`.
async fn connect(url: &Url) -> Result<Stream, ClientError> {
    let unreachable = |e: String| ClientError::Unreachable(format!("cannot connect to {}: {e}", url.text));
    let tcp = TcpStream::connect((url.host.as_str(), url.port)).await.map_err(|e| unreachable(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    if !url.tls {
        return Ok(MaybeTlsStream::Plain(tcp));
    }
    let name = rustls::pki_types::ServerName::try_from(url.host.clone()).map_err(|e| unreachable(e.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(tls_config()?);
    let tls = connector.connect(name, tcp).await.map_err(|e| unreachable(format!("TLS: {e}")))?;
    Ok(MaybeTlsStream::Rustls(tls))
}

/// The system's root certificates, plus `RUNTAP_CA_FILE` if set.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let ca_file = std::env::var_os(CA_FILE_ENV).filter(|p| !p.is_empty()).map(std::path::PathBuf::from);
    crate::trust::client_config(ca_file.as_deref()).map_err(|e| ClientError::Usage(format!("{CA_FILE_ENV} {e}")))
}

/// One HTTP request with the bearer token; the whole answer, whatever its status.
pub(super) async fn request(
    url: &Url,
    method: Method,
    path_and_query: &str,
    token: &Token,
    body: Option<Vec<u8>>,
) -> Result<Answer, ClientError> {
    let mut req = Request::builder().method(method).uri(format!("{}{path_and_query}", url.base));
    req = req.header(header::HOST, url.authority()).header(header::AUTHORIZATION, bearer(token)?);
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| ClientError::Usage(format!("invalid request to {}: {e}", url.text)))?;
    tokio::time::timeout(REQUEST_TIMEOUT, exchange(url, req)).await.map_err(|_| timed_out(url))?
}

async fn exchange(url: &Url, req: Request<Full<Bytes>>) -> Result<Answer, ClientError> {
    let stream = connect(url).await?;
    let broken = |e: hyper::Error| ClientError::Unreachable(format!("HTTP exchange with {} failed: {e}", url.text));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(broken)?;
    let conn = tokio::spawn(conn);
    let answer = sender.send_request(req).await.map_err(broken)?;
    let status = answer.status();
    let body = Limited::new(answer.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| ClientError::Unreachable(format!("reading the answer of {}: {e}", url.text)))?
        .to_bytes();
    conn.abort();
    Ok(Answer { status, body })
}

/// A WebSocket to `path_and_query`, authenticated by the `Authorization`
/// header. A refusal before the upgrade comes back as its HTTP answer.
pub(super) async fn websocket(
    url: &Url,
    path_and_query: &str,
    token: &Token,
) -> Result<Result<WebSocketStream<Stream>, Answer>, ClientError> {
    tokio::time::timeout(REQUEST_TIMEOUT, upgrade(url, path_and_query, token)).await.map_err(|_| timed_out(url))?
}

async fn upgrade(
    url: &Url,
    path_and_query: &str,
    token: &Token,
) -> Result<Result<WebSocketStream<Stream>, Answer>, ClientError> {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let stream = connect(url).await?;
    let scheme = if url.tls { "wss" } else { "ws" };
    let target = format!("{scheme}://{}{}{path_and_query}", url.authority(), url.base);
    let mut req =
        target.into_client_request().map_err(|e| ClientError::Usage(format!("invalid URL {}: {e}", url.text)))?;
    req.headers_mut().insert(header::AUTHORIZATION, bearer(token)?);
    match tokio_tungstenite::client_async_with_config(req, stream, None).await {
        Ok((ws, _)) => Ok(Ok(ws)),
        Err(WsError::Http(answer)) => {
            let status = answer.status();
            let body = Bytes::from(answer.body().clone().unwrap_or_default());
            Ok(Err(Answer { status, body }))
        }
        Err(e) => Err(ClientError::Unreachable(format!("WebSocket to {} failed: {e}", url.text))),
    }
}

fn bearer(token: &Token) -> Result<HeaderValue, ClientError> {
    let mut v = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .map_err(|_| ClientError::Usage("the token holds characters a header cannot carry".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

fn timed_out(url: &Url) -> ClientError {
    ClientError::Unreachable(format!("{} did not answer within {}s", url.text, REQUEST_TIMEOUT.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_or_say_why_not() {
        let u = Url::parse("https://gw.example/runtap/", "--url").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port, u.base.as_str()), (true, "gw.example", 443, "/runtap"));
        let u = Url::parse("http://127.0.0.1:7878", "--url").unwrap();
        assert_eq!((u.tls, u.port, u.base.as_str(), u.authority()), (false, 7878, "", "127.0.0.1:7878".into()));
        let u = Url::parse("http://[::1]:9/", "--url").unwrap();
        assert_eq!(u.authority(), "[::1]:9");
        for (raw, why) in [
            ("ws://h:1", "unsupported scheme ws://"),
            ("ftp://h", "unsupported scheme ftp://"),
            ("localhost:7878", "invalid URL"),
            ("127.0.0.1:7878", "invalid URL"),
            ("http://h:1/?token=x", "a query"),
            ("", "invalid URL"),
        ] {
            let msg = Url::parse(raw, "RUNTAP_URL").unwrap_err().to_string();
            assert!(msg.contains(why) && msg.contains("(RUNTAP_URL)"), "{raw:?}: {msg}");
        }
    }
}
