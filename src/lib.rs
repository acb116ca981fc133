//! runtap: supervise job processes, journal their output, stream it.
//!
//! Data flows one way:
//!
//! ```text
//! child ──> run::supervisor ──> journal (seq, durable) ──> hub (fan-out) ──> feed ──> server::{unix, ws}
//!                                                                              └──> upstream ──> gateway
//! ```
//!
//! The layers, lowest first; each imports only from those before it
//! (docs/architecture.md draws the map):
//!
//! - [`run_id`], [`event`]: the run ID type; the event envelope and run status.
//! - [`config`]: config file, environment and flags, validated. [`auth`]: tokens and scopes.
//! - [`journal`]: per-run append-only files; assigns `seq`; recovery.
//! - [`run_info`]: what `ps` shows about a run, and the one way it changes.
//! - `hub`: live fan-out with a bounded queue per subscriber; `feed`: the
//!   history-then-live hand-off for one subscription.
//! - `run`: spawning, output chunking, cancel, the run table.
//! - [`protocol`]: the Unix socket's and the gateway link's messages.
//! - `server`: transport only — the Unix socket, HTTP and WebSocket; it
//!   serves whatever implements its `Backend` and `unix::Runs` traits.
//! - `upstream`: forwarding to a gateway.
//! - [`daemon`] and [`gateway`]: the two programs, wiring the above.
//! - [`client`]: the CLI's side of the Unix socket and of a remote listener;
//!   `trust`: the roots our TLS clients (the CLI, the upstream link) trust.
//! - [`systemd`] and [`logging`]: sd_notify, watchdog, journald; [`sys`]: raw OS calls.

mod auth;
pub mod client;
pub mod config;
pub mod daemon;
pub mod event;
mod feed;
#[doc(hidden)]
pub mod fuzzing; // entry points of fuzz/ and tests/fuzz_corpora.rs (docs/fuzzing.md)
pub mod gateway;
mod history;
mod hub;
pub mod journal;
pub mod logging;
pub mod protocol;
mod run;
pub mod run_id;
pub mod run_info;
mod server;
pub mod sys;
pub mod systemd;
mod trust;
mod upstream;

/// `runtap shim`: the per-run supervisor process the daemon starts (see `run::shim`).
pub fn shim_main() -> std::process::ExitCode {
    run::shim::main()
}
