//! A TLS listener meets plain HTTP now and then (a `http://` URL, a
//! health check written for the plain port): it is told, in plain HTTP,
//! to use `https://`, instead of a TLS alert it cannot read.

use tokio::net::TcpStream;

/// The first byte of every TLS connection: a handshake record (RFC 8446 §5.1).
const HANDSHAKE_RECORD: u8 = 0x16;

/// Whether the client's first byte opens a TLS handshake; `false` for
/// anything else, including a client that closes without sending.
pub(super) async fn starts_like_tls(stream: &TcpStream) -> std::io::Result<bool> {
    let mut first = [0u8; 1];
    let n = stream.peek(&mut first).await?;
    Ok(n == 1 && first[0] == HANDSHAKE_RECORD)
}

/// A 400 in plain HTTP, then close (within the handshake deadline the
/// caller sets).
pub(super) async fn refuse_plain(mut stream: TcpStream) {
    let body = r#"{"code":"tls-required","message":"this port speaks TLS only: use https:// or wss://"}"#;
    let resp = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = super::answer_and_close(&mut stream, &resp).await;
}
