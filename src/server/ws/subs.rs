//! What a WebSocket session keeps with each run it follows.

use crate::event::TypeSet;
use crate::run_id::RunId;
use crate::server::streams::Streams;

/// A subscription is to a run, at a host where the backend has hosts.
pub(super) type SubKey = (Option<String>, RunId);

/// A session's subscriptions: one stream per run.
pub(super) type Subs = Streams<SubKey, Sub>;

pub(super) struct Sub {
    /// Where it started: a stalled client is told where it stopped, from this if nothing was written.
    pub(super) since: u64,
    pub(super) types: TypeSet,
    pub(super) origin: Origin,
}

/// Why the session follows a run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Origin {
    /// The client subscribed to it by name.
    Named,
    /// A pattern subscription matched it.
    Pattern,
}

pub(super) fn count(subs: &Subs, origin: Origin) -> usize {
    subs.iter().filter(|(_, _, s)| s.origin == origin).count()
}
