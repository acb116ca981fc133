//! Cancels at a NATS replica: a request on the host's cancel subject,
//! answered by whichever replica holds the host's link (it sends the
//! cancel down and relays the host's answer). No replica holds it: no
//! responders (503); the holder does not answer in time: 504.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::NatsGateway;
use super::names;
use crate::event::RunStatus;
use crate::gateway::cancel::{CancelError, CancelReply};
use crate::run_id::RunId;
use crate::server::backend::LookupError;

/// The request.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Ask {
    pub run_id: String,
    pub reason: String,
}

/// The holder's answer: the host's `cancel-result`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Answer {
    pub host: String,
    pub ok: bool,
    pub status: Option<RunStatus>,
    pub code: Option<String>,
    pub message: Option<String>,
}

impl NatsGateway {
    pub(super) async fn route_cancel(
        &self,
        host: Option<&str>,
        run: &RunId,
        reason: String,
    ) -> Result<CancelReply, CancelError> {
        let entry = self.resolve(host, run).map_err(CancelError::Lookup)?;
        let host = entry.host;
        let ask = Ask { run_id: run.to_string(), reason };
        let body = serde_json::to_vec(&ask).map_err(|e| CancelError::Lookup(LookupError::NotFound(e.to_string())))?;
        let timeout: Duration = self.config().cancel_timeout;
        let request = async_nats::Request::new().payload(body.into()).timeout(Some(timeout));
        match self.store().client.send_request(names::cancel_subject(&host), request).await {
            Ok(reply) => match serde_json::from_slice::<Answer>(&reply.payload) {
                Ok(a) => Ok(CancelReply { host: a.host, ok: a.ok, status: a.status, code: a.code, message: a.message }),
                Err(_) => Err(CancelError::Offline(host)),
            },
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => Err(CancelError::Offline(host)),
            Err(e) if e.kind() == async_nats::RequestErrorKind::TimedOut => Err(CancelError::Timeout(host)),
            Err(error) => {
                tracing::warn!(host, %error, "cannot route a cancel");
                Err(CancelError::Offline(host))
            }
        }
    }
}
