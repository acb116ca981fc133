//! Running jobs: spawning them, reading their output, cancelling them, and
//! the table that tracks them.
//!
//! - `child`: process creation in its own group, signalling the group.
//! - `pty`: pseudo-terminals (the only module here that needs `unsafe`).
//! - `chunker` and `output`: byte stream → line-aligned, UTF-8-safe event payloads, and when they go.
//! - `steps`: the job's step and progress reports (`RUNTAP_EVENTS_FD`).
//! - `supervisor`: the task that owns one run from spawn to final status,
//!   in the run's own process, `shim` (with `reaper`, its one `waitpid`).
//! - `attach` and `tail`: the daemon's side of a run: following its shim,
//!   reading its journal, publishing it.
//! - `reconcile`: runs a starting daemon finds without a live shim.
//! - `table`: launch/cancel/list, the concurrency cap, retention.

mod attach;
pub(crate) mod child;
mod chunker;
pub(crate) mod output;
pub(crate) mod pty;
mod reaper;
mod reconcile;
pub(crate) mod shim;
pub(crate) mod steps;
pub(crate) mod supervisor;
pub(crate) mod table;
mod tail;

pub(crate) use child::Spec;
pub(crate) use supervisor::Timing;
pub(crate) use table::{LaunchError, RunLimits, RunTable, ShimSetup};
