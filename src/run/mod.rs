//! Running jobs: spawning them, reading their output, cancelling them, and
//! the table that tracks them.
//!
//! - `child`: process creation in its own group, signalling the group.
//! - `pty`: pseudo-terminals (the only module here that needs `unsafe`).
//! - `output`: byte stream → line-aligned, UTF-8-safe event payloads.
//! - `supervisor`: the task that owns one run from spawn to final status.
//! - `table`: launch/cancel/list, the concurrency cap, retention.

pub mod child;
pub mod output;
pub mod pty;
pub mod supervisor;
pub mod table;

pub use child::Spec;
pub use supervisor::Timing;
pub use table::{LaunchError, RunLimits, RunTable};
