//! Pattern subscriptions: `{"type":"subscribe","runId":"build-*"}` follows
//! every matching run the token may see, those active now (each announced
//! by a `run` message and followed from its current last event) and those
//! that start later (followed from their first event).
//!
//! New runs come from the backend's watch, one stream per connection
//! however many patterns it holds. A pattern is a prefix, so matching a new
//! run costs one `starts_with` per pattern (at most [`MAX_PATTERNS`]), and a
//! connection follows at most [`MAX_PATTERN_RUNS`] runs at once through
//! patterns; past that, a matching run is announced as `skipped`.

use std::collections::HashSet;
use std::task::{Context, Poll};

use futures_util::task::noop_waker_ref;
use serde_json::json;

use super::error::WsError;
use super::session::Session;
use super::subs::{self, Origin, Sub};
use crate::auth::At;
use crate::event::TypeSet;
use crate::run_id::RunPattern;
use crate::server::backend::{RunRef, RunWatch};
use crate::server::run_stream::RunStream;

/// Patterns one connection may hold.
pub(super) const MAX_PATTERNS: usize = 16;
/// Runs one connection may follow at once through its patterns.
pub(super) const MAX_PATTERN_RUNS: usize = 1024;

struct Pattern {
    pattern: RunPattern,
    /// Only runs of this host (at a gateway).
    host: Option<String>,
    types: TypeSet,
}

impl Pattern {
    fn matches(&self, at: &RunRef) -> bool {
        self.pattern.matches(&at.run) && self.host.as_ref().is_none_or(|h| at.host.as_ref() == Some(h))
    }
}

/// A connection's patterns, and the watch for new runs while it has any.
#[derive(Default)]
pub(super) struct Patterns {
    list: Vec<Pattern>,
    watch: Option<RunWatch>,
}

impl Patterns {
    pub(super) fn is_watching(&self) -> bool {
        self.watch.is_some()
    }

    /// The types the first pattern that matches `at` wants.
    fn matching(&self, at: &RunRef) -> Option<TypeSet> {
        self.list.iter().find(|p| p.matches(at)).map(|p| p.types)
    }

    /// The next run that started; `Some(None)`: some were missed.
    pub(super) fn poll_watch(&mut self, cx: &mut Context<'_>) -> Poll<Option<RunRef>> {
        let Some(watch) = self.watch.as_mut() else {
            return Poll::Pending;
        };
        match watch.as_mut().poll_next(cx) {
            Poll::Ready(Some(item)) => Poll::Ready(item),
            // The backend is shutting down: no more runs will start.
            Poll::Ready(None) => {
                self.watch = None;
                Poll::Pending
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// What the watch holds already, without waiting.
    fn drain_watch(&mut self) -> Vec<Option<RunRef>> {
        let mut cx = Context::from_waker(noop_waker_ref());
        let mut out = Vec::new();
        while let Poll::Ready(item) = self.poll_watch(&mut cx) {
            out.push(item);
        }
        out
    }
}

impl Session {
    pub(super) fn subscribe_pattern(
        &mut self,
        pattern: RunPattern,
        host: Option<String>,
        types: TypeSet,
    ) -> Result<(), WsError> {
        let host = self.host_key(host);
        let list = &mut self.patterns.list;
        list.retain(|p| !(p.pattern == pattern && p.host == host));
        if list.len() >= MAX_PATTERNS {
            return Err(WsError::bad_request(format!("at most {MAX_PATTERNS} patterns per connection")));
        }
        let mut ack = json!({"type": "subscribed", "runId": pattern.to_wire()});
        if let Some(h) = &host {
            ack["host"] = json!(h);
        }
        self.outbox.push_text(&ack.to_string());
        list.push(Pattern { pattern, host, types });
        // Watch first, then look at what is active: a run that starts in
        // between is in both, and is followed from its start.
        if self.patterns.watch.is_none() {
            self.patterns.watch = Some(self.shared.backend.watch());
        }
        let started: Vec<Option<RunRef>> = self.patterns.drain_watch();
        let missed = started.iter().any(Option::is_none);
        let started: HashSet<RunRef> = started.into_iter().flatten().collect();
        for at in &started {
            self.follow(at.clone(), 0);
        }
        self.follow_active(missed);
        Ok(())
    }

    pub(super) fn unsubscribe_pattern(&mut self, pattern: &RunPattern, host: Option<String>) {
        self.patterns.list.retain(|p| !(&p.pattern == pattern && p.host == host));
        let patterns = &self.patterns;
        self.subs.retain(|(host, run), sub| {
            sub.origin == Origin::Named || patterns.matching(&RunRef { host: host.clone(), run: run.clone() }).is_some()
        });
        if self.patterns.list.is_empty() {
            self.patterns.watch = None;
        }
    }

    /// A run started (`Some`), or the watch fell behind and runs were missed.
    pub(super) fn on_run_started(&mut self, started: Option<RunRef>) {
        match started {
            Some(at) => self.follow(at, 0),
            None => self.follow_active(true),
        }
    }

    /// Announces and follows each active run that matches and is not
    /// followed yet: from its last event, or from its first if runs were
    /// `missed` (one may have started after the pattern was subscribed).
    fn follow_active(&mut self, missed: bool) {
        for run in self.shared.backend.active() {
            if self.patterns.matching(&run.at).is_none() || self.is_followed(&run.at) || !self.may_see(&run.at) {
                continue;
            }
            let mut msg =
                json!({"type": "run", "runId": run.at.run.as_str(), "status": run.status, "lastSeq": run.last_seq});
            if let Some(h) = &run.at.host {
                msg["host"] = json!(h);
            }
            self.outbox.push_text(&msg.to_string());
            self.follow(run.at, if missed { 0 } else { run.last_seq });
        }
    }

    /// Follows `at` after `since` if a pattern matches it, the token may see
    /// it, and it is not followed already.
    fn follow(&mut self, at: RunRef, since: u64) {
        let Some(types) = self.patterns.matching(&at) else {
            return;
        };
        if self.is_followed(&at) || !self.may_see(&at) {
            return;
        }
        if subs::count(&self.subs, Origin::Pattern) >= MAX_PATTERN_RUNS {
            let reason = format!("this connection follows {MAX_PATTERN_RUNS} runs through patterns already");
            self.skipped(&at, &reason);
            return;
        }
        let key = (self.host_key(at.host), at.run);
        let stream = RunStream::new(self.shared.clone(), key.1.clone(), since, key.0.clone());
        let slot = self.subs.insert(key, Sub { since, types, origin: Origin::Pattern }, stream);
        self.outbox.forget(slot);
    }

    fn is_followed(&self, at: &RunRef) -> bool {
        self.subs.contains(&(self.host_key(at.host.clone()), at.run.clone()))
    }

    fn may_see(&self, at: &RunRef) -> bool {
        self.scope.as_ref().is_some_and(|s| s.allows(At::known(at.host.as_deref()), &at.run))
    }

    /// A run a pattern matched but that the connection does not follow
    /// (too many, or its journal failed): the others carry on.
    pub(super) fn skipped(&mut self, at: &RunRef, reason: &str) {
        let mut msg = json!({"type": "skipped", "runId": at.run.as_str(), "reason": reason});
        if let Some(h) = &at.host {
            msg["host"] = json!(h);
        }
        self.outbox.push_text(&msg.to_string());
    }
}
