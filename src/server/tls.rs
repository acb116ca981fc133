//! The listener's TLS: certificate and key from PEM files, swapped on
//! SIGHUP without a restart.
//!
//! The certificate is chosen per handshake by a resolver holding the one
//! in force, so a reload changes what new handshakes get while open
//! connections keep the session they made. Only HTTP/1.1 is offered by
//! ALPN: WebSocket upgrades need it, and hyper serves nothing else here.
//! Crypto is rustls' `ring` provider, as for the clients.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::StreamConfig;

/// Why the certificate or key was not taken; names the file and the reason.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("stream.tls_cert {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("stream.tls_key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// A certificate chain and its key, loaded and checked against each other.
pub(crate) struct Certificate(Arc<CertifiedKey>);

/// Loads `stream.tls_cert` and `stream.tls_key`; `None` when TLS is off.
pub(crate) fn load(cfg: &StreamConfig) -> Result<Option<Certificate>, TlsError> {
    let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) else { return Ok(None) };
    load_files(cert, key).map(Some)
}

/// The listener's TLS as configured; `None` when it is off.
pub(crate) fn for_listener(cfg: &StreamConfig) -> Result<Option<Tls>, TlsError> {
    load(cfg)?.map(Tls::new).transpose()
}

fn load_files(cert_path: &Path, key_path: &Path) -> Result<Certificate, TlsError> {
    let cert_err = |reason: String| TlsError::Cert { path: cert_path.display().to_string(), reason };
    let key_err = |reason: String| TlsError::Key { path: key_path.display().to_string(), reason };
    let chain = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("no CERTIFICATE in the file".into()));
    }
    // The error names the file and what is wrong with it, never key material.
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| key_err(e.to_string()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| key_err(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|e| key_err(format!("does not match the certificate ({e})")))?;
    Ok(Certificate(Arc::new(certified)))
}

/// The listener's TLS: the acceptor and the certificate it hands out.
pub(crate) struct Tls {
    acceptor: TlsAcceptor,
    current: Arc<Current>,
}

impl Tls {
    pub(crate) fn new(cert: Certificate) -> Result<Self, TlsError> {
        let current = Arc::new(Current(RwLock::new(cert.0)));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls { acceptor: TlsAcceptor::from(Arc::new(config)), current })
    }

    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// New handshakes get `cert` from now on.
    pub(crate) fn swap(&self, cert: Certificate) {
        *self.current.0.write().unwrap_or_else(|p| p.into_inner()) = cert.0;
    }
}

/// The certificate in force.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}
