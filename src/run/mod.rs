//! Running jobs: spawning them, reading their output, cancelling them, and
//! the table that tracks them.
//!
//! - `child`: process creation in its own group, signalling the group.
//! - `pty`: pseudo-terminals (the only module here that needs `unsafe`).
//! - `chunker` and `output`: byte stream → line-aligned, UTF-8-safe event payloads, and when they go.
//! - `steps`: the job's step and progress reports (`RUNTAP_EVENTS_FD`).
//! - `supervisor`: the task that owns one run from spawn to final status.
//! - `table`: launch/cancel/list, the concurrency cap, retention.

pub(crate) mod child;
mod chunker;
pub(crate) mod output;
pub(crate) mod pty;
pub(crate) mod steps;
pub(crate) mod supervisor;
pub(crate) mod table;

pub(crate) use child::Spec;
pub(crate) use supervisor::Timing;
pub(crate) use table::{LaunchError, RunLimits, RunTable};
