//! Path `/socket.io/`, namespace `/workflow`: the seed dashboards' gateway.
//!
//! `connected` on connect; `subscribe {type, resourceId?, filters?}` →
//! `subscription_confirmed`, then `initial_data` (current state and
//! history, one piece per step of history read, never one unbounded
//! message) and an `update` per event; `unsubscribe`, `ping`, `get_status`.
//! A refused or malformed request is answered by `error {message, type,
//! timestamp}` and costs the client nothing else: its other subscriptions
//! go on. Subscriptions are polled in turn, and only while the outbox is
//! short, so a slow client reads each run from the journal at its pace.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use serde_json::{Map, Value, json};
use tokio::time::{Instant, Sleep};

use super::lifecycle::Lifecycle;
use super::limits::{EventLimits, Limited, MAX_SUBSCRIPTIONS};
use super::packet;
use super::updates::{Topic, update_for};
use crate::auth::{At, Scope};
use crate::event::LogLevel;
use crate::event::now_timestamp;
use crate::feed::Delivery;
use crate::run_id::{RunId, RunPattern};
use crate::server::backend::LookupError;
use crate::server::outbox::Outbox;
use crate::server::run_stream::{RunStream, StreamOut};
use crate::server::{Role, Shared};

pub(super) const NS: &str = "/workflow";

pub(super) struct WorkflowNs {
    shared: Arc<Shared>,
    pub(super) scope: Scope,
    /// `host=` of the handshake: the default host of every request (gateway).
    host: Option<String>,
    subs: Vec<Sub>,
    turn: usize,
    limits: EventLimits,
    /// Set while a `metrics` subscription exists.
    metrics_timer: Option<Pin<Box<Sleep>>>,
}

struct Sub {
    key: String,
    source: Source,
}

enum Source {
    Run {
        topic: Topic,
        stream: Box<RunStream>,
        /// Events up to this seq are history: they go out as `initial_data`.
        history_to: u64,
        /// The last `initial_data` piece has been sent.
        history_done: bool,
    },
    Metrics,
    /// `workflow` and `tenant_activity`: the lifecycle of many runs.
    Lifecycle(Box<Lifecycle>),
}

/// A subscription about to be added, and what its client is told first.
struct NewSub {
    key: String,
    source: Source,
    /// `initial_data` to send now; `None` when it comes from the stream (a run's history).
    initial: Option<Value>,
    resource: Value,
}

/// The reply event (`None`: sent already) and its body, which an ack repeats.
type Answer = Result<(Option<&'static str>, Value), Refusal>;

/// An `error` for the client: its `type` and `message`.
struct Refusal(&'static str, String);

impl Refusal {
    fn bad(message: impl Into<String>) -> Self {
        Refusal("bad-request", message.into())
    }
}

impl WorkflowNs {
    /// The client's CONNECT, with the token it presented; `Err(code)` refuses it.
    pub(super) fn connect(
        shared: &Arc<Shared>,
        token: Option<&str>,
        host: Option<String>,
        client_id: &str,
        outbox: &mut Outbox,
    ) -> Result<WorkflowNs, &'static str> {
        let scope = match token.map(|t| shared.role(t)) {
            Some(Role::Viewer(scope)) => scope,
            Some(Role::Agent) => return Err("forbidden"),
            Some(Role::None) | None => {
                crate::server::metrics::Metrics::add(&shared.metrics.auth_failures, 1);
                return Err("unauthorized");
            }
        };
        // Static tokens name no user (a JWT's `sub` does); a token of one
        // run prefix has it as its tenant.
        let hello = json!({"clientId": client_id, "userId": scope.sub(), "tenantId": scope.tenant(),
            "timestamp": now_timestamp()});
        outbox.push_message(packet::event(NS, "connected", &[&hello]).into());
        let cfg = shared.stream_config();
        Ok(WorkflowNs {
            shared: shared.clone(),
            scope,
            host: host.filter(|_| shared.backend.has_hosts()),
            subs: Vec::new(),
            turn: 0,
            limits: EventLimits::new(&cfg.socketio, Instant::now()),
            metrics_timer: None,
        })
    }

    /// One client event: its name, its first argument, and its ack ID.
    pub(super) fn on_event(&mut self, name: &str, arg: &Value, ack: Option<u64>, outbox: &mut Outbox) {
        let limited = match name {
            "subscribe" => Some(Limited::Subscribe),
            "unsubscribe" => Some(Limited::Unsubscribe),
            "ping" => Some(Limited::Ping),
            "get_status" => Some(Limited::GetStatus),
            _ => None,
        };
        let answer = match limited {
            None => Err(Refusal::bad(format!("unknown event {name:?}"))),
            Some(l) if !self.limits.allow(l, Instant::now()) => {
                let per_minute = self.limits.per_minute(l);
                Err(Refusal("rate-limited", format!("at most {per_minute} {} events per minute", l.name())))
            }
            Some(Limited::Subscribe) => self.subscribe(arg, outbox),
            Some(Limited::Unsubscribe) => self.unsubscribe(arg),
            Some(Limited::Ping) => Ok((Some("pong"), json!({"timestamp": now_timestamp()}))),
            Some(Limited::GetStatus) => self.get_status(arg),
        };
        let (event, body) = match answer {
            Ok(reply) => reply,
            Err(Refusal(kind, message)) => {
                (Some("error"), json!({"message": message, "type": kind, "event": name, "timestamp": now_timestamp()}))
            }
        };
        if let Some(event) = event {
            outbox.push_message(packet::event(NS, event, &[&body]).into());
        }
        if let Some(id) = ack {
            outbox.push_message(packet::ack(NS, id, &[&body]).into());
        }
    }

    fn subscribe(&mut self, arg: &Value, outbox: &mut Outbox) -> Answer {
        let req = arg.as_object().ok_or_else(|| Refusal::bad("subscribe takes {type, resourceId?, filters?}"))?;
        let kind = req.get("type").and_then(Value::as_str).ok_or_else(|| Refusal::bad("subscribe needs a type"))?;
        let filters = match req.get("filters") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(f)) => f.clone(),
            Some(_) => return Err(Refusal::bad("filters must be an object")),
        };
        let NewSub { key, source, initial, resource } = match kind {
            "execution" | "logs" => self.run_subscription(kind, req, &filters)?,
            "metrics" => NewSub {
                key: "metrics".to_owned(),
                source: Source::Metrics,
                initial: self.metrics_payload(),
                resource: Value::Null,
            },
            "workflow" | "tenant_activity" => return self.lifecycle_subscription(kind, req, outbox),
            other => return Err(Refusal::bad(format!("unknown subscription type {other:?}"))),
        };
        self.subs.retain(|s| s.key != key);
        if self.subs.len() >= MAX_SUBSCRIPTIONS {
            return Err(Refusal("too-many-subscriptions", format!("at most {MAX_SUBSCRIPTIONS} per connection")));
        }
        let now = now_timestamp();
        let confirmed = json!({"type": kind, "resourceId": resource, "subscriptionKey": key, "timestamp": now});
        outbox.push_message(packet::event(NS, "subscription_confirmed", &[&confirmed]).into());
        if let Some(data) = initial {
            let mut piece = json!({"type": kind, "data": data, "timestamp": now, "subscriptionKey": key});
            if kind == "logs" {
                piece["complete"] = true.into();
            }
            outbox.push_message(packet::event(NS, "initial_data", &[&piece]).into());
        }
        if matches!(source, Source::Metrics) && self.metrics_timer.is_none() {
            let every = self.shared.stream_config().socketio.metrics_interval;
            self.metrics_timer = Some(Box::pin(tokio::time::sleep(every)));
        }
        self.subs.push(Sub { key, source });
        // Sent already, before its initial data; an ack repeats it.
        Ok((None, confirmed))
    }

    /// `execution` and `logs`: one run. The initial data is its status now
    /// (`execution`), or its history so far, in pieces as it is read (`logs`).
    fn run_subscription(
        &self,
        kind: &str,
        req: &Map<String, Value>,
        filters: &Map<String, Value>,
    ) -> Result<NewSub, Refusal> {
        let raw = req.get("resourceId").and_then(Value::as_str).unwrap_or("");
        let run = self.run_id(raw)?;
        let step = match filters.get("stepId") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if kind == "logs" => Some(s.clone()),
            Some(_) if kind == "logs" => return Err(Refusal::bad("filters.stepId is a string")),
            Some(_) => return Err(Refusal::bad("filters.stepId applies to logs")),
        };
        let min_level = match filters.get("logLevel") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_str()
                    .and_then(LogLevel::parse)
                    .ok_or_else(|| Refusal::bad("filters.logLevel is one of debug, info, warn, error"))?,
            ),
        };
        let host = req.get("host").and_then(Value::as_str).map(str::to_owned).or_else(|| self.host.clone());
        let host = host.filter(|_| self.shared.backend.has_hosts());
        let (info, last_seq) = match self.shared.backend.get(host.as_deref(), &run) {
            Ok(info) => {
                let last = info.get("lastSeq").and_then(Value::as_u64).unwrap_or(0);
                (info, last)
            }
            // Not there yet: its stream waits for it, as every subscription does.
            Err(LookupError::NotFound(_)) => (Value::Null, 0),
            Err(e) => return Err(Refusal("not-found", e.to_string())),
        };
        let mut key = format!("{kind}:{run}");
        if let Some(level) = filters.get("logLevel").and_then(Value::as_str) {
            key = format!("{key}:{level}");
        }
        if let Some(step) = &step {
            key = format!("{key}:step={step}");
        }
        let resource = Value::from(run.as_str());
        let (topic, since, initial) = match kind {
            "execution" => (Topic::Execution, last_seq, Some(info)),
            _ => (Topic::Logs { min_level, step }, 0, (last_seq == 0).then(|| json!([]))),
        };
        let history_to = if since == 0 { last_seq } else { 0 };
        let stream = RunStream::new(self.shared.clone(), run, since, host);
        let source = Source::Run { topic, stream: Box::new(stream), history_to, history_done: initial.is_some() };
        Ok(NewSub { key, source, initial, resource })
    }

    /// `workflow` (`resourceId` a run-ID pattern) and `tenant_activity`
    /// (every run the token may see): confirmed, then the active runs as
    /// `initial_data`, then their status changes.
    fn lifecycle_subscription(&mut self, kind: &str, req: &Map<String, Value>, outbox: &mut Outbox) -> Answer {
        let pattern = if kind == "tenant_activity" {
            RunPattern::parse("*").ok().flatten()
        } else {
            let raw = req.get("resourceId").and_then(Value::as_str).unwrap_or("");
            match RunPattern::parse(raw) {
                Ok(Some(p)) => Some(p),
                Ok(None) => {
                    return Err(Refusal::bad(format!(
                        "workflow takes a run-ID pattern ending in * as resourceId (got {raw:?}); use execution for one run"
                    )));
                }
                Err(e) => return Err(Refusal::bad(format!("bad run-ID pattern {raw:?}: {e}"))),
            }
        };
        let Some(pattern) = pattern else {
            return Err(Refusal::bad("no run-ID pattern"));
        };
        let key = format!("{kind}:{}", pattern.to_wire());
        self.subs.retain(|s| s.key != key);
        if self.subs.len() >= MAX_SUBSCRIPTIONS {
            return Err(Refusal("too-many-subscriptions", format!("at most {MAX_SUBSCRIPTIONS} per connection")));
        }
        let resource = if kind == "tenant_activity" { Value::Null } else { Value::from(pattern.to_wire()) };
        let confirmed =
            json!({"type": kind, "resourceId": resource, "subscriptionKey": key, "timestamp": now_timestamp()});
        outbox.push_message(packet::event(NS, "subscription_confirmed", &[&confirmed]).into());
        let host = req.get("host").and_then(Value::as_str).map(str::to_owned).or_else(|| self.host.clone());
        let host = host.filter(|_| self.shared.backend.has_hosts());
        let lifecycle = Lifecycle::start(&self.shared, pattern, host, self.scope.clone(), kind, &key, outbox);
        self.subs.push(Sub { key, source: Source::Lifecycle(Box::new(lifecycle)) });
        Ok((None, confirmed))
    }

    fn unsubscribe(&mut self, arg: &Value) -> Answer {
        let key = arg
            .get("subscriptionKey")
            .and_then(Value::as_str)
            .ok_or_else(|| Refusal::bad("unsubscribe takes {subscriptionKey}"))?;
        // Idempotent: a subscription whose run ended is gone already.
        self.subs.retain(|s| s.key != key);
        if !self.subs.iter().any(|s| matches!(s.source, Source::Metrics)) {
            self.metrics_timer = None;
        }
        Ok((Some("unsubscription_confirmed"), json!({"subscriptionKey": key, "timestamp": now_timestamp()})))
    }

    fn get_status(&self, arg: &Value) -> Answer {
        let raw = arg.get("executionId").and_then(Value::as_str).unwrap_or("");
        let run = self.run_id(raw)?;
        let host = arg.get("host").and_then(Value::as_str).map(str::to_owned).or_else(|| self.host.clone());
        let host = host.filter(|_| self.shared.backend.has_hosts());
        let status = self.shared.backend.get(host.as_deref(), &run).map_err(|e| Refusal("not-found", e.to_string()))?;
        Ok((
            Some("status_response"),
            json!({"executionId": run.as_str(), "status": status, "timestamp": now_timestamp()}),
        ))
    }

    fn run_id(&self, raw: &str) -> Result<RunId, Refusal> {
        if raw.is_empty() {
            return Err(Refusal::bad("no run ID given"));
        }
        let run = RunId::parse(raw).map_err(|e| Refusal::bad(format!("invalid run ID {raw:?}: {e}")))?;
        if !self.scope.allows(At::request(self.shared.backend.has_hosts(), self.host.as_deref()), &run) {
            return Err(Refusal("forbidden", format!("this token may not see run {run}")));
        }
        Ok(run)
    }

    fn metrics_payload(&self) -> Option<Value> {
        let stats = self.shared.backend.stats();
        let by_status: Map<String, Value> =
            stats.by_status.iter().map(|(s, n)| (s.as_str().to_owned(), Value::from(*n))).collect();
        Some(json!({
            "runs": stats.runs,
            "activeRuns": stats.active,
            "degradedRuns": stats.degraded,
            "subscriptions": stats.subscriptions,
            "eventsIn": stats.events_in,
            "journalBytes": stats.journal_bytes,
            "journalErrors": stats.journal_errors,
            "byStatus": by_status,
            "connections": self.shared.metrics.connections.load(Ordering::Relaxed),
        }))
    }

    /// Moves what the subscriptions have into `outbox`, one step of one
    /// subscription (in turn) or one metrics tick at a time.
    pub(super) fn poll(&mut self, cx: &mut Context<'_>, outbox: &mut Outbox) -> Poll<()> {
        if let Some(timer) = &mut self.metrics_timer
            && timer.as_mut().poll(cx).is_ready()
        {
            let every = self.shared.stream_config().socketio.metrics_interval;
            timer.as_mut().reset(Instant::now() + every);
            let update =
                json!({"type": "metrics.updated", "payload": self.metrics_payload(), "timestamp": now_timestamp()});
            outbox.push_message(packet::event(NS, "update", &[&update]).into());
            return Poll::Ready(());
        }
        for _ in 0..self.subs.len() {
            let i = self.turn % self.subs.len();
            self.turn = self.turn.wrapping_add(1);
            let sub = &mut self.subs[i];
            let stream = match &mut sub.source {
                Source::Run { stream, .. } => stream,
                Source::Lifecycle(lc) => {
                    if lc.poll(cx, &self.shared, &sub.key, outbox).is_ready() {
                        return Poll::Ready(());
                    }
                    continue;
                }
                Source::Metrics => continue,
            };
            if let Poll::Ready(out) = stream.poll_next(cx) {
                if self.on_stream(i, out, outbox) {
                    self.subs.swap_remove(i);
                }
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }

    /// Queues what subscription `i`'s stream gave; true when it is over.
    fn on_stream(&mut self, i: usize, out: StreamOut, outbox: &mut Outbox) -> bool {
        let sub = &mut self.subs[i];
        let Source::Run { topic, history_to, history_done, .. } = &mut sub.source else { return true };
        let kind = match topic {
            Topic::Execution => "execution",
            Topic::Logs { .. } => "logs",
            Topic::Lifecycle => "workflow",
        };
        let (over, error) = match out {
            StreamOut::Frames(delivery) => {
                send_frames(&delivery, topic, kind, &sub.key, *history_to, history_done, outbox);
                (false, None)
            }
            StreamOut::Gap { from, to } => {
                (false, Some(("journal-gap", format!("events {from}..={to} are missing from the degraded journal"))))
            }
            StreamOut::End { .. } => (true, None),
            StreamOut::Fail(error) => (true, Some((error.code(), error.to_string()))),
        };
        if over && !*history_done {
            *history_done = true;
            let piece = json!({"type": kind, "data": [], "timestamp": now_timestamp(), "subscriptionKey": sub.key, "complete": true});
            outbox.push_message(packet::event(NS, "initial_data", &[&piece]).into());
        }
        if let Some((kind, message)) = error {
            let body =
                json!({"message": message, "type": kind, "subscriptionKey": sub.key, "timestamp": now_timestamp()});
            outbox.push_message(packet::event(NS, "error", &[&body]).into());
        }
        over
    }
}

/// One delivery of a run's events: history into one `initial_data` piece,
/// live ones into an `update` each.
fn send_frames(
    delivery: &Delivery,
    topic: &Topic,
    kind: &str,
    key: &str,
    history_to: u64,
    history_done: &mut bool,
    outbox: &mut Outbox,
) {
    let mut piece = Vec::new();
    let mut piece_ends = false;
    for frame in delivery.frames() {
        let Ok(event) = serde_json::from_slice::<Value>(frame.bytes()) else { continue };
        let update = update_for(topic, &event);
        if !*history_done && frame.seq <= history_to {
            piece.extend(update.map(|(_, payload)| payload));
            piece_ends |= frame.seq == history_to;
            continue;
        }
        if !*history_done {
            piece_ends = true;
        }
        if piece_ends && !*history_done {
            *history_done = true;
            push_piece(outbox, kind, key, std::mem::take(&mut piece), true);
        }
        if let Some((ty, payload)) = update {
            let body = json!({"type": ty, "payload": payload, "timestamp": now_timestamp()});
            outbox.push_message(packet::event(NS, "update", &[&body]).into());
        }
    }
    if !*history_done && (piece_ends || !piece.is_empty()) {
        *history_done = piece_ends;
        push_piece(outbox, kind, key, piece, piece_ends);
    }
}

fn push_piece(outbox: &mut Outbox, kind: &str, key: &str, data: Vec<Value>, complete: bool) {
    let piece =
        json!({"type": kind, "data": data, "timestamp": now_timestamp(), "subscriptionKey": key, "complete": complete});
    outbox.push_message(packet::event(NS, "initial_data", &[&piece]).into());
}
