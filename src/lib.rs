//! runtap: supervise job processes, journal their output, stream it.
//!
//! Data flows one way:
//!
//! ```text
//! child ──> run::supervisor ──> journal (seq, durable) ──> hub (fan-out) ──> feed ──> server::{unix, ws}
//!                                                                              └──> upstream ──> gateway
//! ```
//!
//! - [`config`]: config file, environment and flags, validated.
//! - [`daemon`]: wiring and ordered shutdown.
//! - [`run`]: spawning, output chunking, cancel, the run table.
//! - [`event`]: the event envelope and run status.
//! - [`journal`]: per-run append-only files; assigns `seq`; recovery.
//! - [`hub`]: live fan-out with a bounded queue per subscriber.
//! - [`feed`]: the history-then-live hand-off for one subscription.
//! - [`server`]: the Unix socket, HTTP and WebSocket endpoints, tokens, metrics.
//! - [`client`]: the CLI's side of the Unix socket; [`protocol`] its messages.
//! - [`upstream`]: forwarding to a gateway; [`link`] the daemon ↔ gateway protocol.
//! - [`gateway`]: `runtap gateway`: every host's journals, served like a daemon.
//! - [`systemd`] and [`logging`]: sd_notify, watchdog, journald.
//! - [`run_id`]: the validated run ID type.
//! - [`sys`]: the few raw OS calls (fd flags, terminal size).

pub mod client;
pub mod config;
pub mod daemon;
pub mod event;
pub mod feed;
pub mod gateway;
pub mod hub;
pub mod journal;
pub mod link;
pub mod logging;
pub mod protocol;
pub mod run;
pub mod run_id;
pub mod server;
pub mod sys;
pub mod systemd;
pub mod upstream;
