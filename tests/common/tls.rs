//! Certificates made in the test (rcgen), and TLS clients that trust them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};

use super::WAIT;
use super::ws::WsClient;

/// A certificate authority of the test's own.
pub struct TestCa {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    pub pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertifiedIssuer::self_signed(params, key).unwrap();
        let pem = ca.pem();
        TestCa { ca, pem }
    }

    /// A leaf for `localhost` and 127.0.0.1: (certificate PEM, key PEM, certificate DER).
    pub fn leaf(&self) -> (String, String, Vec<u8>) {
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    /// Writes a fresh leaf to `dir/cert.pem` and `dir/key.pem`; returns its DER.
    pub fn write_leaf(&self, dir: &Path) -> Vec<u8> {
        let (cert, key, der) = self.leaf();
        std::fs::write(dir.join("cert.pem"), cert).unwrap();
        std::fs::write(dir.join("key.pem"), key).unwrap();
        der
    }

    /// Writes this CA's certificate to `path`.
    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, &self.pem).unwrap();
        path.to_owned()
    }
}

/// `[stream] tls_cert/tls_key` for the files `write_leaf` made in `dir`.
pub fn tls_config_toml(dir: &Path) -> String {
    format!(
        "[stream]\ntls_cert = {:?}\ntls_key = {:?}\n",
        dir.join("cert.pem").display().to_string(),
        dir.join("key.pem").display().to_string()
    )
}

/// A client trusting exactly `ca_pems` (no system roots).
pub fn client_config(ca_pems: &[&str]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for pem in ca_pems {
        roots.add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

/// A TLS connection to `addr` (as 127.0.0.1), or the handshake's error.
pub async fn tls_connect(
    addr: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap().to_owned();
    tokio::time::timeout(WAIT, tokio_rustls::TlsConnector::from(config).connect(name, tcp)).await.unwrap()
}

/// The certificate the server presented on `stream`.
pub fn peer_cert(stream: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// One HTTPS request over a fresh connection: (status, body).
pub async fn https(
    addr: &str,
    config: Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tls_connect(addr, config).await.unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    // A server may close without close_notify after `Connection: close`; what came is the answer.
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// A `wss://` WebSocket over `config`.
pub async fn wss_connect(url: &str, config: Arc<rustls::ClientConfig>) -> WsClient {
    let connector = tokio_tungstenite::Connector::Rustls(config);
    let connecting = tokio_tungstenite::connect_async_tls_with_config(url, None, true, Some(connector));
    let (ws, _) = tokio::time::timeout(WAIT, connecting).await.unwrap().unwrap();
    ws
}
