//! Path `/runs/`, namespace `/`: one run, from the handshake's `runId`
//! (and `since`, `host`), emitted as `run-event`s, history then live,
//! exactly what `GET /runs?runId=` streams over a plain WebSocket.
//!
//! Each event goes out as the journal's own bytes between
//! `42["run-event",` and `]` (the outbox's `Wrapped` framing), so a
//! thousand subscribers share one buffer per event. A refusal is an
//! `error` event with the spec's code as its argument (`missing-run-id`,
//! `unauthorized`, `forbidden`, `bad-request`), then a disconnect.

use std::sync::Arc;
use std::task::{Context, Poll, ready};

use serde_json::{Value, json};

use super::conn::Verdict;
use super::packet;
use crate::auth::At;
use crate::run_id::RunId;
use crate::server::metrics::Metrics;
use crate::server::outbox::Outbox;
use crate::server::run_stream::{RunStream, StreamOut};
use crate::server::{Role, Shared};

/// The outbox slot of the one subscription (for `lastSeq` after a stall).
pub(super) const SLOT: usize = 0;

/// What the handshake said, kept until the client's CONNECT.
#[derive(Debug, Default)]
pub(super) struct RunsStart {
    pub run: Option<String>,
    pub since: Option<String>,
    pub host: Option<String>,
}

pub(super) struct RunsNs {
    stream: RunStream,
    shared: Arc<Shared>,
    /// The token's expiry (a JWT's `exp`), when it has one.
    pub(super) expires: Option<u64>,
}

impl RunsNs {
    /// The client's CONNECT: `Err(code)` is what its `error` event carries.
    pub(super) fn connect(shared: &Arc<Shared>, start: RunsStart, token: Option<&str>) -> Result<RunsNs, &'static str> {
        let scope = match token.map(|t| shared.role(t)) {
            Some(Role::Viewer(scope)) => scope,
            Some(Role::Agent) => return Err("forbidden"),
            Some(Role::None) | None => {
                Metrics::add(&shared.metrics.auth_failures, 1);
                return Err("unauthorized");
            }
        };
        let run = match start.run.as_deref() {
            None | Some("") => return Err("missing-run-id"),
            Some(raw) => RunId::parse(raw).map_err(|_| "bad-request")?,
        };
        if !scope.allows(At::request(shared.backend.has_hosts(), start.host.as_deref()), &run) {
            return Err("forbidden");
        }
        let since = match start.since.as_deref() {
            None => 0,
            Some(s) => s.parse().map_err(|_| "bad-request")?,
        };
        // A daemon has one host: `host` is only passed on where runs have hosts.
        let host = start.host.filter(|_| shared.backend.has_hosts());
        let expires = scope.expires();
        Ok(RunsNs { stream: RunStream::new(shared.clone(), run, since, host), shared: shared.clone(), expires })
    }

    /// Moves what the run's stream has into `outbox`.
    pub(super) fn poll(&mut self, cx: &mut Context<'_>, outbox: &mut Outbox) -> Poll<Verdict> {
        let verdict = match ready!(self.stream.poll_next(cx)) {
            StreamOut::Frames(delivery) => {
                let (batches, after) = delivery.into_parts();
                let (mut events, mut bytes) = (0, 0);
                for batch in batches {
                    let (e, b) = outbox.push_batch(batch, after, SLOT);
                    events += e;
                    bytes += b;
                }
                Metrics::add(&self.shared.metrics.events_out, events);
                Metrics::add(&self.shared.metrics.bytes_out, bytes);
                Verdict::Go
            }
            StreamOut::Gap { from, to } => {
                let detail = json!({"from": from, "to": to, "message": "events missing from the degraded journal"});
                outbox.push_message(packet::event("/", "error", &[&Value::from("journal-gap"), &detail]).into());
                Verdict::Go
            }
            // The run is over and all of it is queued: as `/runs?runId=`, the stream ends.
            StreamOut::End { last_seq } => {
                let end = json!({"lastSeq": last_seq});
                outbox.push_message(packet::event("/", "run-end", &[&end]).into());
                Verdict::Disconnect
            }
            StreamOut::Fail(error) => {
                let (code, message) = (error.code(), error.to_string());
                tracing::debug!(code, %message, "socket.io run stream failed");
                let detail = json!({"message": message});
                outbox.push_message(packet::event("/", "error", &[&Value::from(code), &detail]).into());
                Verdict::Disconnect
            }
        };
        Poll::Ready(verdict)
    }
}

/// The `error` event a refused client gets before its disconnect.
pub(super) fn refusal(code: &str) -> String {
    packet::event("/", "error", &[&Value::from(code)])
}
