//! Cancels sent to the gateway, routed down to the run's host.

use tokio::sync::oneshot;

use super::Gateway;
use super::lock;
use crate::event::RunStatus;
use crate::run_id::RunId;
use crate::server::backend::LookupError;

#[derive(Debug, thiserror::Error)]
pub(crate) enum CancelError {
    #[error(transparent)]
    Lookup(LookupError),
    #[error("host {0} is not connected")]
    Offline(String),
    #[error("host {0} did not answer")]
    Timeout(String),
}

/// A host's answer to a routed cancel.
#[derive(Debug)]
pub(crate) struct CancelReply {
    pub host: String,
    pub ok: bool,
    pub status: Option<RunStatus>,
    pub code: Option<String>,
    pub message: Option<String>,
}

/// A cancel on its way down to a host's agent session.
pub(super) struct CancelRequest {
    pub run: RunId,
    pub reason: String,
    pub reply: oneshot::Sender<CancelReply>,
}

impl Gateway {
    /// Routes a cancel to the run's host and waits for its answer.
    pub(crate) async fn cancel(
        &self,
        host: Option<&str>,
        run: &RunId,
        reason: String,
    ) -> Result<CancelReply, CancelError> {
        let h = self.resolve(host, run).map_err(CancelError::Lookup)?;
        if h.run_info(run).is_none() {
            return Err(CancelError::Lookup(LookupError::NotFound(run.to_string())));
        }
        let link = lock(&h.state).link.as_ref().map(|l| l.cancels.clone());
        let Some(link) = link else {
            return Err(CancelError::Offline(h.id.clone()));
        };
        let (tx, rx) = oneshot::channel();
        let timeout = self.config().cancel_timeout;
        if link.send(CancelRequest { run: run.clone(), reason, reply: tx }).await.is_err() {
            return Err(CancelError::Offline(h.id.clone()));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(CancelError::Offline(h.id.clone())),
            Err(_) => Err(CancelError::Timeout(h.id.clone())),
        }
    }
}
