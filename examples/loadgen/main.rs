//! Load generator for the benchmarks (see `BENCHMARKS.md` and `bench/run.sh`).
//!
//! It speaks to three servers with one client, so the client's cost is the
//! same for each: runtap (`/runs?runId=` WebSocket, launches over the Unix
//! socket), the `ws` baseline (same envelope, launches by `POST /launch`) and
//! the socket.io baseline (Engine.IO v4 / Socket.IO v5 over a bare WebSocket:
//! `40{auth}`, `42["subscribe",ID]`, `42["run-event",{..}]`, pings `2` → `3`).
//!
//! Latency comes from the job's own output: `bench/jobs/lines.py` writes
//! lines `t=<unix ns> i=<index> xxx…`; on each frame the receive time minus
//! `t` is one sample. How a subscriber reads a frame is `--decode`:
//! `light` (the default) scans the frame text for those fixed-width fields
//! rather than JSON-decoding it, so the client stays cheap on a shared box;
//! `json` parses every frame in full, as a browser dashboard does, then
//! checks every line, byte and `seq` (`json.rs`). `--slow-ms` makes each
//! subscriber spend that long on every frame (`subscriber::Pace`).
//!
//! Modes, each printing one JSON object on stdout:
//! - `stream`: N subscribers (+ K stalled ones that never read) wait for a
//!   run, which is then launched; reports time to the last final event,
//!   events, bytes, lines, latency p50/p99/max, server RSS and CPU.
//! - `idle`: N subscribers to an idle run; server RSS per subscriber and CPU.
//! - `launches`: short runs (`true`) over runtap's Unix socket, per second.
//! - `idle-runs`: runs that write a burst and then stay alive idle; runtap's
//!   RSS once they are all idle.
//! - `handshakes`: connections set up and closed in a loop (WebSocket
//!   upgrade to a run, or `GET /healthz`), per second; set-up latency and
//!   server CPU per 1000 connections.
//!
//! At a gateway, `--host H` adds `host=H` to every subscription (the run
//! is still launched on the host daemon's `--socket`), and `stream
//! --spread A,B,C` spreads the subscribers over several listeners (gateway
//! replicas), with latency and completeness per listener in `by_addr`.
//!
//! `--tls-ca FILE` makes every WebSocket (and `handshakes` connection) TLS:
//! `wss://`, rustls with the CA in FILE as the only root, no resumption.
//!
//! Every wait is bounded (`--timeout`, connect and settle limits).

mod cli;
mod conn;
mod control;
mod frames;
mod handshakes;
mod histogram;
mod idle;
mod idle_runs;
mod json;
mod launches;
mod light;
mod proc;
mod stats;
mod stream;
mod subscriber;

use std::time::Duration;

use clap::Parser;
use serde_json::json;

use crate::cli::{Cli, Mode};

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            println!("{}", json!({ "error": format!("start tokio: {e}") }));
            std::process::exit(1);
        }
    };
    let result = rt.block_on(async {
        match cli.mode {
            Mode::Stream(a) => stream::stream(a).await,
            Mode::Idle(a) => idle::idle(a).await,
            Mode::Launches(a) => launches::launches(a).await,
            Mode::IdleRuns(a) => idle_runs::idle_runs(a).await,
            Mode::Handshakes(a) => handshakes::handshakes(a).await,
        }
    });
    match result {
        Ok(v) => println!("{v}"),
        Err(e) => {
            println!("{}", json!({ "error": e }));
            std::process::exit(1);
        }
    }
    rt.shutdown_timeout(Duration::from_secs(2));
}

/// `x` rounded to `digits` decimals, for the JSON report.
pub(crate) fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}
