//! What the link needs to know: the gateways' URLs, this host's name, the
//! agent token, and the state dir's epoch.

use std::path::Path;

use super::UpstreamError;
use crate::auth::Token;
use crate::config::UpstreamConfig;
use crate::run_id::RunId;

/// Name of the file holding this state dir's epoch.
const EPOCH_FILE: &str = "epoch";

/// What the link needs to know, from `[upstream]`.
#[derive(Clone)]
pub(crate) struct LinkConfig {
    /// Base URLs of interchangeable gateways, tried in turn (never empty);
    /// `/agent` is appended.
    pub urls: Vec<String>,
    pub host_id: String,
    pub token: Token,
    pub epoch: String,
    /// For `wss://` (if any URL is): the system's roots and `upstream.ca_file`, read once at start.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl LinkConfig {
    pub(crate) fn load(cfg: &UpstreamConfig, state_dir: &Path) -> Result<Option<Self>, UpstreamError> {
        if cfg.url.is_empty() {
            return Ok(None);
        }
        let urls = cfg.url.clone();
        let token = match &cfg.token_file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| UpstreamError::Token(path.display().to_string(), e))?
                .trim()
                .to_owned(),
            None => String::new(),
        };
        let host_id = cfg.host_id.clone().unwrap_or_else(|| {
            nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".into())
        });
        let tls = match urls.iter().any(|u| u.starts_with("wss://")) {
            true => Some(crate::trust::client_config(cfg.ca_file.as_deref()).map_err(UpstreamError::Tls)?),
            false => None,
        };
        Ok(Some(LinkConfig { urls, host_id, token: Token::new(token), epoch: epoch(state_dir)?, tls }))
    }
}

/// The state dir's epoch: made once, so a wiped state dir gets a new one.
pub(super) fn epoch(state_dir: &Path) -> Result<String, UpstreamError> {
    let path = state_dir.join(EPOCH_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        _ => {
            let e = RunId::generate().to_string();
            std::fs::write(&path, &e).map_err(UpstreamError::Epoch)?;
            Ok(e)
        }
    }
}
