//! What a client may ask of a WebSocket session, and the answers:
//! authenticating, subscribing to a run or a pattern, unsubscribing.

use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::error::WsError;
use super::limits::{MAX_SUBSCRIPTIONS, json_depth};
use super::session::Session;
use super::subs::{self, Origin, Sub};
use crate::auth::At;
use crate::event::{EventType, TypeSet};
use crate::run_id::{RunId, RunPattern};
use crate::server::Role;
use crate::server::metrics::Metrics;
use crate::server::run_stream::RunStream;

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(crate) enum ClientMsg {
    Auth {
        token: String,
    },
    #[serde(rename_all = "camelCase")]
    Subscribe {
        run_id: Option<String>,
        #[serde(default)]
        since: u64,
        #[serde(default)]
        host: Option<String>,
        /// Only these event types (all when absent).
        #[serde(default)]
        types: Option<Vec<String>>,
    },
    #[serde(rename_all = "camelCase")]
    Unsubscribe {
        run_id: Option<String>,
        #[serde(default)]
        host: Option<String>,
    },
}

impl ClientMsg {
    fn kind(&self) -> &'static str {
        match self {
            ClientMsg::Auth { .. } => "auth",
            ClientMsg::Subscribe { .. } => "subscribe",
            ClientMsg::Unsubscribe { .. } => "unsubscribe",
        }
    }
}

/// What `runId` in a message names: one run, or a pattern.
pub(crate) enum Target {
    One(RunId),
    Many(RunPattern),
}

pub(crate) fn target(run_id: Option<&str>) -> Result<Target, WsError> {
    let Some(s) = run_id else {
        return WsError::for_run_id(None).map(Target::One);
    };
    match RunPattern::parse(s) {
        Ok(Some(p)) => Ok(Target::Many(p)),
        Ok(None) => WsError::for_run_id(Some(s)).map(Target::One),
        Err(e) => Err(WsError::new("missing-run-id", 4400, format!("bad run ID pattern {s:?}: {e}"))),
    }
}

pub(crate) fn type_set(types: Option<Vec<String>>) -> Result<TypeSet, WsError> {
    let Some(names) = types else {
        return Ok(TypeSet::ALL);
    };
    let mut set = Vec::with_capacity(names.len());
    for name in &names {
        let t = EventType::from_wire(name).ok_or_else(|| {
            let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
            WsError::bad_request(format!("unknown event type {name:?} in types (known: {})", known.join(", ")))
        })?;
        set.push(t);
    }
    if set.is_empty() {
        return Err(WsError::bad_request("types is empty: leave it out to get every type"));
    }
    Ok(TypeSet::of(set))
}

impl Session {
    pub(super) fn authenticate(&mut self, token: &str) -> Result<(), WsError> {
        match self.shared.role(token) {
            Role::Viewer(scope) => {
                self.scope = Some(scope);
                self.reader.get_mut().lift_budget();
                Ok(())
            }
            Role::Agent => Err(WsError::host_token()),
            Role::None => Err(self.auth_failed()),
        }
    }

    pub(super) fn too_large(&self) -> WsError {
        Metrics::add(&self.shared.metrics.oversized_messages, 1);
        let max = self.shared.stream_config().max_frame_bytes;
        WsError::new("message-too-large", 1009, format!("message over {max} bytes"))
    }

    pub(super) fn auth_failed(&self) -> WsError {
        Metrics::add(&self.shared.metrics.auth_failures, 1);
        WsError::unauthorized()
    }

    /// Size, rate and nesting depth of one client message.
    pub(super) fn check_message(&mut self, text: &str) -> Result<(), WsError> {
        let max = self.shared.stream_config().max_frame_bytes;
        if text.len() > max {
            Metrics::add(&self.shared.metrics.oversized_messages, 1);
            return Err(WsError::new("message-too-large", 1009, format!("message over {max} bytes")));
        }
        if !self.limiter.allow(Instant::now()) {
            Metrics::add(&self.shared.metrics.rate_limited, 1);
            return Err(WsError::new("rate-limited", 4429, "too many messages"));
        }
        if json_depth(text.as_bytes()) > self.max_depth {
            return Err(WsError::bad_request(format!("JSON nested deeper than {}", self.max_depth)));
        }
        Ok(())
    }

    pub(super) async fn on_message(&mut self, msg: Message) -> Result<(), WsError> {
        match msg {
            Message::Text(text) => {
                self.check_message(&text)?;
                let parsed: ClientMsg =
                    serde_json::from_str(&text).map_err(|e| WsError::bad_request(format!("malformed message: {e}")))?;
                // What kind and how big, never what it says: an auth message holds a token.
                tracing::trace!(kind = parsed.kind(), bytes = text.len(), "client message");
                self.on_request(parsed)
            }
            Message::Binary(b) => {
                let max = self.shared.stream_config().max_frame_bytes;
                if b.len() > max {
                    Metrics::add(&self.shared.metrics.oversized_messages, 1);
                    return Err(WsError::new("message-too-large", 1009, format!("message over {max} bytes")));
                }
                self.check_message("")?;
                Err(WsError::bad_request("binary messages are not part of the protocol"))
            }
            Message::Ping(_) => {
                self.check_message("")?;
                // tungstenite has queued the pong; have it written to `control`.
                let _ = futures_util::SinkExt::flush(&mut self.reader).await;
                self.pull_control();
                Ok(())
            }
            Message::Pong(_) | Message::Frame(_) | Message::Close(_) => Ok(()),
        }
    }

    fn on_request(&mut self, msg: ClientMsg) -> Result<(), WsError> {
        match msg {
            ClientMsg::Auth { .. } => Ok(()), // already authenticated; harmless
            ClientMsg::Subscribe { .. } | ClientMsg::Unsubscribe { .. } if self.single => {
                Err(WsError::bad_request("this endpoint streams one run; use /ws to subscribe by message"))
            }
            ClientMsg::Subscribe { run_id, since, host, types } => {
                let types = type_set(types)?;
                match target(run_id.as_deref())? {
                    Target::One(run) => self.subscribe(run, since, host, types),
                    Target::Many(_) if since != 0 => {
                        Err(WsError::bad_request("since applies to one run, not to a pattern"))
                    }
                    Target::Many(pattern) => self.subscribe_pattern(pattern, host, types),
                }
            }
            ClientMsg::Unsubscribe { run_id, host } => {
                let host = self.host_key(host);
                let name = match target(run_id.as_deref())? {
                    Target::One(run) => {
                        self.subs.remove(&(host, run.clone()));
                        run.to_string()
                    }
                    Target::Many(pattern) => {
                        self.unsubscribe_pattern(&pattern, host);
                        pattern.to_wire()
                    }
                };
                self.outbox.push_text(&json!({"type": "unsubscribed", "runId": name}).to_string());
                Ok(())
            }
        }
    }

    /// A daemon has one host: `host` must not make two subscriptions to one run.
    pub(super) fn host_key(&self, host: Option<String>) -> Option<String> {
        if self.shared.backend.has_hosts() { host } else { None }
    }

    pub(super) fn subscribe(
        &mut self,
        run: RunId,
        since: u64,
        host: Option<String>,
        types: TypeSet,
    ) -> Result<(), WsError> {
        let at = At::request(self.shared.backend.has_hosts(), host.as_deref());
        if !self.scope.as_ref().is_some_and(|s| s.allows(at, &run)) {
            return Err(WsError::forbidden(&run));
        }
        let host = self.host_key(host);
        let key = (host.clone(), run.clone());
        self.subs.remove(&key);
        if subs::count(&self.subs, Origin::Named) >= MAX_SUBSCRIPTIONS {
            return Err(WsError::bad_request(format!("at most {MAX_SUBSCRIPTIONS} subscriptions per connection")));
        }
        if !self.single {
            let mut ack = json!({"type": "subscribed", "runId": run.as_str(), "since": since});
            if let Some(h) = &host {
                ack["host"] = json!(h);
            }
            self.outbox.push_text(&ack.to_string());
        }
        let stream = RunStream::new(self.shared.clone(), run, since, host);
        let slot = self.subs.insert(key, Sub { since, types, origin: Origin::Named }, stream);
        self.outbox.forget(slot);
        Ok(())
    }
}
