//! `/workflow` subscriptions to many runs: `workflow` (the runs whose ID
//! matches a pattern such as `build-*`) and `tenant_activity` (every run
//! the token may see). Each sends the lifecycle of its runs: the active
//! ones in `initial_data`, then an `update` per status change of any
//! matching run, current or started later.
//!
//! This is the WebSocket pattern subscription's mechanism: the backend's
//! watch for runs that start, its list of active ones, and one status-only
//! stream per run in a set polled as woken, so a thousand quiet runs cost
//! nothing per event of a busy one.

use std::sync::Arc;
use std::task::{Context, Poll};

use serde_json::{Value, json};

use super::packet;
use super::updates::{Topic, update_for};
use super::workflow_ns::NS;
use crate::auth::{At, Scope};
use crate::event::{EventType, TypeSet, now_timestamp};
use crate::run_id::RunPattern;
use crate::server::Shared;
use crate::server::backend::{RunRef, RunWatch};
use crate::server::outbox::Outbox;
use crate::server::run_stream::{RunStream, StreamOut};
use crate::server::streams::{Polled, Streams};

/// Runs one subscription follows at once; past that, a matching run is
/// left out and the client told (an `error` of type `too-many-runs`).
pub(super) const MAX_LIFECYCLE_RUNS: usize = 1024;
/// Runs per `initial_data` piece.
const RUNS_PER_PIECE: usize = 200;

pub(super) struct Lifecycle {
    pattern: RunPattern,
    host: Option<String>,
    scope: Scope,
    watch: RunWatch,
    runs: Streams<RunRef, ()>,
}

impl Lifecycle {
    /// Starts following: watch first, then the active runs (sent as
    /// `initial_data`), so a run that starts in between is in both and is
    /// followed once, from its start.
    pub(super) fn start(
        shared: &Arc<Shared>,
        pattern: RunPattern,
        host: Option<String>,
        scope: Scope,
        kind: &str,
        key: &str,
        outbox: &mut Outbox,
    ) -> Self {
        let mut me = Lifecycle { pattern, host, scope, watch: shared.backend.watch(), runs: Streams::default() };
        let mut active: Vec<Value> = Vec::new();
        for run in shared.backend.active() {
            if !me.wants(&run.at) {
                continue;
            }
            let mut item = json!({"executionId": run.at.run.as_str(), "runId": run.at.run.as_str(),
                "status": run.status, "lastSeq": run.last_seq});
            if let Some(h) = &run.at.host {
                item["host"] = json!(h);
            }
            if me.follow(shared, run.at, run.last_seq) {
                active.push(item);
            }
        }
        let mut pieces: Vec<Vec<Value>> = Vec::new();
        while !active.is_empty() {
            let rest = active.split_off(active.len().min(RUNS_PER_PIECE));
            pieces.push(std::mem::replace(&mut active, rest));
        }
        if pieces.is_empty() {
            pieces.push(Vec::new());
        }
        let last = pieces.len() - 1;
        for (i, data) in pieces.into_iter().enumerate() {
            let piece = json!({"type": kind, "data": data, "timestamp": now_timestamp(), "subscriptionKey": key,
                "complete": i == last});
            outbox.push_message(packet::event(NS, "initial_data", &[&piece]).into());
        }
        me
    }

    fn wants(&self, at: &RunRef) -> bool {
        self.pattern.matches(&at.run)
            && self.scope.allows(At::known(at.host.as_deref()), &at.run)
            && self.host.as_ref().is_none_or(|h| at.host.as_ref() == Some(h))
            && !self.runs.contains(at)
    }

    /// False when the subscription follows as many runs as it may.
    fn follow(&mut self, shared: &Arc<Shared>, at: RunRef, since: u64) -> bool {
        if self.runs.len() >= MAX_LIFECYCLE_RUNS {
            return false;
        }
        let stream = RunStream::new(shared.clone(), at.run.clone(), since, at.host.clone());
        self.runs.insert(at, (), stream);
        true
    }

    /// One step: a run that started, or one run's status changes, into
    /// `outbox` as `update`s.
    pub(super) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        shared: &Arc<Shared>,
        key: &str,
        outbox: &mut Outbox,
    ) -> Poll<()> {
        if let Poll::Ready(Some(started)) = self.watch.as_mut().poll_next(cx) {
            let found: Vec<(RunRef, u64)> = match started {
                Some(at) => vec![(at, 0)],
                // Some starts were missed: look again, from each one's first event.
                None => shared.backend.active().into_iter().map(|r| (r.at, 0)).collect(),
            };
            for (at, since) in found {
                if !self.wants(&at) {
                    continue;
                }
                let run = at.run.to_string();
                if !self.follow(shared, at, since) {
                    let msg = format!("this subscription follows {MAX_LIFECYCLE_RUNS} runs already; {run} is left out");
                    let body = json!({"message": msg, "type": "too-many-runs", "subscriptionKey": key,
                        "runId": run, "timestamp": now_timestamp()});
                    outbox.push_message(packet::event(NS, "error", &[&body]).into());
                }
            }
            return Poll::Ready(());
        }
        let Poll::Ready(Polled { slot: _, out, .. }) = self.runs.poll_next(cx) else {
            return Poll::Pending;
        };
        if let StreamOut::Frames(delivery) = out {
            for frame in delivery.frames() {
                // Status events only: most of a run is output, skipped unparsed.
                if !TypeSet::of([EventType::Status]).wants_line(frame.bytes()) {
                    continue;
                }
                let Ok(event) = serde_json::from_slice::<Value>(frame.bytes()) else { continue };
                if let Some((ty, payload)) = update_for(&Topic::Lifecycle, &event) {
                    let body = json!({"type": ty, "payload": payload, "timestamp": now_timestamp()});
                    outbox.push_message(packet::event(NS, "update", &[&body]).into());
                }
            }
        }
        // A run that ended (or whose journal failed) has left the set; its
        // last status was among its frames.
        Poll::Ready(())
    }
}
