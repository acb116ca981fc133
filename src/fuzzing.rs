//! Entry points for the fuzz targets in `fuzz/` and their replay test
//! (`tests/fuzz_corpora.rs`); docs/fuzzing.md says what each covers.
//!
//! Each takes arbitrary bytes and runs them through the parse and
//! validation path the daemon or the gateway runs on that input, in the
//! same order and with the same limits, without sockets or tasks. None may
//! panic on any input: the only panics here are the `assert!`s that check
//! what must hold of an accepted input (an event the gateway journals must
//! read back as intact, an encoded packet must decode to itself), and one
//! that fires is a bug to fix, found by the fuzzer.
//!
//! Not part of the API: `#[doc(hidden)]`, and free to change with the code it drives.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use base64::Engine as _;
use serde_json::Value;

use crate::auth::{At, Tokens};
use crate::config::{AuthConfig, Config, StreamConfig};
use crate::event::{Event, EventType, TypeSet};
use crate::journal::lines::{is_json_object, line_seq};
use crate::journal::{HistoryItem, Journal, RunMeta};
use crate::protocol::link::{AgentMsg, GatewayMsg, MAX_LINK_MESSAGE, is_event};
use crate::protocol::unix::{MAX_REQUEST_BYTES, Request, Response};
use crate::run::child::Spec;
use crate::run::steps::{MAX_LINE, Steps};
use crate::run_id::{RunId, RunPattern};
use crate::run_info::RunInfo;
use crate::server::socketio::packet::{self as sio, EioKind, EioPacket, SioKind, SioPacket};
use crate::server::ws::requests::{ClientMsg, Target, target, type_set};
use crate::server::ws::{WsError, limits::json_depth};

/// An entry point: takes any bytes, never panics.
pub type EntryPoint = fn(&[u8]);

/// Every entry point by the name of its fuzz target (and corpus directory).
pub const TARGETS: &[(&str, EntryPoint)] = &[
    ("ws_message", ws_message),
    ("unix_request", unix_request),
    ("link_message", link_message),
    ("journal_recovery", journal_recovery),
    ("config_toml", config_toml),
    ("events_fd", events_fd),
    ("socketio_packets", socketio_packets),
    ("jwt", jwt),
];

/// A run ID the checks below match patterns against.
fn sample_run() -> Option<RunId> {
    RunId::parse("build-42").ok()
}

/// One `/ws` text message, as a session handles it: size, nesting depth,
/// the message, then what a subscribe or unsubscribe names (run or
/// pattern, host, types). Authentication itself is the `jwt` target.
pub fn ws_message(data: &[u8]) {
    let stream = StreamConfig::default();
    // tungstenite hands a session only UTF-8 text frames.
    let Ok(text) = std::str::from_utf8(data) else { return };
    if text.len() > stream.max_frame_bytes || json_depth(data) > stream.max_json_depth {
        return;
    }
    let msg = match serde_json::from_str::<ClientMsg>(text) {
        Ok(msg) => msg,
        Err(e) => {
            let _ = WsError::bad_request(format!("malformed message: {e}")).to_json();
            return;
        }
    };
    let answer = match msg {
        ClientMsg::Auth { token } => {
            let _ = crate::auth::jwt::looks_like_jwt(&token);
            Ok(())
        }
        ClientMsg::Subscribe { run_id, since, host, types } => {
            type_set(types).and_then(|types| check_target(run_id.as_deref(), since, host.as_deref(), types))
        }
        ClientMsg::Unsubscribe { run_id, host } => check_target(run_id.as_deref(), 0, host.as_deref(), TypeSet::ALL),
    };
    if let Err(e) = answer {
        let _ = e.to_json();
    }
}

fn check_target(run_id: Option<&str>, since: u64, host: Option<&str>, types: TypeSet) -> Result<(), WsError> {
    let at = At::request(host.is_some(), host);
    match target(run_id)? {
        Target::One(run) => {
            assert!(RunId::parse(run.as_str()).as_ref() == Ok(&run), "a run ID does not parse back to itself");
            let _ = (crate::auth::Scope::read_only().allows(at, &run), since);
        }
        Target::Many(pattern) => {
            let wire = pattern.to_wire();
            assert!(
                RunPattern::parse(&wire).ok().flatten().as_ref() == Some(&pattern),
                "pattern {wire:?} does not parse back to itself"
            );
            if let Some(run) = sample_run() {
                let _ = pattern.matches(&run);
            }
        }
    }
    let _ = types.wants_line(br#"{"runId":"r","seq":1,"type":"stdout"}"#);
    Ok(())
}

/// A connection's bytes on the Unix socket: cut into request lines (at
/// most `MAX_REQUEST_BYTES`), each parsed and its run ID and launch spec
/// checked as the server and the run table do; every answer encoded.
pub fn unix_request(data: &[u8]) {
    for line in data.split(|&b| b == b'\n') {
        if line.len() > MAX_REQUEST_BYTES {
            let _ = Response::error("message-too-large", "request line too long").to_line();
            return;
        }
        if line.trim_ascii().is_empty() {
            continue;
        }
        let answer = match serde_json::from_slice::<Request>(line) {
            Err(e) => Response::error("bad-request", format!("malformed request: {e}")),
            Ok(Request::Launch(req)) => match req.run_id.as_deref().map(RunId::parse).transpose() {
                Err(e) => Response::error("bad-request", format!("invalid run ID: {e}")),
                Ok(id) => {
                    let spec = Spec {
                        argv: req.command,
                        env: req.env,
                        clear_env: req.clear_env,
                        cwd: req.cwd,
                        pty: req.pty.then(|| (req.cols.unwrap_or(80).max(1), req.rows.unwrap_or(24).max(1))),
                    };
                    match crate::run::table::check_spec(&spec) {
                        Ok(()) => Response::Launched { run_id: id.map(|i| i.to_string()).unwrap_or_default() },
                        Err(e) => Response::error("bad-request", e.to_string()),
                    }
                }
            },
            Ok(
                Request::Subscribe { run_id, .. }
                | Request::Unsubscribe { run_id }
                | Request::Cancel { run_id, .. }
                | Request::Status { run_id },
            ) => match RunId::parse(&run_id) {
                Ok(id) => Response::Unsubscribed { run_id: id.to_string() },
                Err(e) => Response::error("bad-request", format!("invalid run ID {run_id:?}: {e}")),
            },
            Ok(Request::List) => Response::Runs { runs: Vec::new() },
        };
        let line = answer.to_line();
        assert!(serde_json::from_slice::<Response>(&line).is_ok(), "an answer does not parse back");
    }
}

/// One text message on the gateway link, read by both ends: as the
/// gateway reads what a host sends (a raw event, checked and journaled
/// as the gateway's copy, or a `hello`, `run`, `cancel-result`, ...), and
/// as the daemon reads what the gateway sends (`welcome`, `ack`, `cancel`).
pub fn link_message(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if text.len() > MAX_LINK_MESSAGE {
        return;
    }
    if is_event(text) {
        if let Ok(event) = serde_json::from_str::<Event>(text) {
            gateway_event(event);
        }
    } else if let Ok(msg) = serde_json::from_str::<AgentMsg>(text) {
        if let AgentMsg::Hello { host, epoch, runs } = &msg {
            let _ = (RunId::parse(host).is_ok() && !epoch.is_empty(), runs.iter().map(|c| RunId::parse(&c.run_id)));
        }
        if let AgentMsg::Run { run_id, meta } = msg
            && let Ok(id) = RunId::parse(&run_id)
        {
            let info = RunInfo::queued(id, meta);
            let _ = serde_json::to_vec(&info);
        }
    }
    match serde_json::from_str::<GatewayMsg>(text) {
        Ok(GatewayMsg::Ack { acked } | GatewayMsg::Welcome { acked }) => {
            let n: u64 = acked.iter().filter(|(run, _)| RunId::parse(run).is_ok()).map(|(_, seq)| *seq).sum();
            let _ = n;
        }
        Ok(GatewayMsg::Cancel { run_id, reason, .. }) => {
            let _ = (RunId::parse(&run_id), reason.len());
        }
        Err(_) => {}
    }
}

/// What the gateway does with a host's event (`gateway::agent`): the run
/// ID checked, the status applied to the run's row, and the event
/// serialized into the gateway's journal, which must read it back intact.
fn gateway_event(mut event: Event) {
    let Ok(run) = RunId::parse(&event.run_id) else { return };
    let meta = RunMeta { run_id: Some(run.clone()), created_at: event.timestamp.clone(), ..RunMeta::default() };
    let mut info = RunInfo::queued(run, meta);
    info.last_seq = event.seq;
    if let Some(change) = event.status_change() {
        info.apply(&change, &event.timestamp);
    }
    let _ = event.output_bytes();
    event.host = Some("fuzz-host".into());
    let Ok(line) = serde_json::to_vec(&event) else { return };
    assert_eq!(line_seq(&line), Some(event.seq), "a journaled event's seq cannot be read back");
    assert!(is_json_object(&line), "a journaled event reads back as damaged: {}", String::from_utf8_lossy(&line));
}

/// What recovery and a history read make of arbitrary bytes as one run's
/// files: `events.jsonl`, then optionally (after a `\0STATE\0` marker) its
/// `state` record and (after a `\0META\0` marker) its `meta.json`. The
/// files live in one temp dir per process, so a run costs a few syscalls.
pub fn journal_recovery(data: &[u8]) {
    let Some(dir) = fuzz_dir() else { return };
    let (events, rest) = split_at_marker(data, b"\0STATE\0");
    let (state, meta) = rest.map_or((None, None), |r| {
        let (s, m) = split_at_marker(r, b"\0META\0");
        (Some(s), m)
    });
    let state_dir = dir.join("journal");
    let run_dir = state_dir.join("runs").join("fuzz-run");
    let _ = std::fs::remove_dir_all(&state_dir);
    if std::fs::create_dir_all(&run_dir).is_err() || std::fs::write(run_dir.join("events.jsonl"), events).is_err() {
        return;
    }
    if let Some(state) = state {
        let _ = std::fs::write(run_dir.join("state"), state);
    }
    if let Some(meta) = meta {
        let _ = std::fs::write(run_dir.join("meta.json"), meta);
    }
    let Ok(journal) = Journal::open(&state_dir) else { return };
    let Ok(runs) = journal.recover() else { return };
    let Some(runtime) = runtime() else { return };
    for run in &runs {
        runtime.block_on(read_whole_run(&journal, &run.run_id, run.last_seq));
    }
    // A second start finds what the first one left: nothing changes.
    let fresh = Journal::open(&state_dir);
    if let Ok(again) = fresh.as_ref().map(Journal::recover) {
        let Ok(again) = again else { return };
        let before: Vec<_> = runs.iter().map(|r| (&r.run_id, r.last_seq, r.status)).collect();
        let after: Vec<_> = again.iter().map(|r| (&r.run_id, r.last_seq, r.status)).collect();
        assert_eq!(before, after, "a second recovery changed what the first one found");
    }
}

/// Reads `1..=last_seq` of `run`: every seq is handed out once, as an
/// intact event (valid JSON) or inside a gap, in order.
async fn read_whole_run(journal: &Journal, run: &RunId, last_seq: u64) {
    let Ok(mut reader) = journal.history(run, 1, last_seq).await else { return };
    let mut next = 1u64;
    // A bound on turns: each one hands out at least one seq, or ends.
    for _ in 0..=last_seq.min(1 << 20).saturating_add(2) {
        match reader.next().await {
            Ok(HistoryItem::Frames(frames)) => {
                for frame in frames {
                    assert_eq!(frame.seq, next, "history skipped or repeated a seq");
                    assert!(
                        serde_json::from_slice::<Value>(frame.json.as_str().as_bytes()).is_ok_and(|v| v.is_object()),
                        "history handed out a line that is not a JSON object: {:?}",
                        frame.json.as_str()
                    );
                    next += 1;
                }
            }
            Ok(HistoryItem::Gap { from, to }) => {
                assert!(from == next && to >= from, "gap {from}..={to} where {next} was next");
                next = to + 1;
            }
            Ok(HistoryItem::End) => {
                assert_eq!(next, last_seq + 1, "history ended before the run's last seq");
                return;
            }
            Err(_) => return,
        }
    }
    panic!("history of {last_seq} events took more turns than it has events");
}

fn split_at_marker<'a>(data: &'a [u8], marker: &[u8]) -> (&'a [u8], Option<&'a [u8]>) {
    match data.windows(marker.len()).position(|w| w == marker) {
        Some(at) => (&data[..at], Some(&data[at + marker.len()..])),
        None => (data, None),
    }
}

/// A config file, as `--config FILE` loads it: parsed and validated.
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Config::from_toml_str(text, Some(Path::new("/etc/runtap/config.toml"))) {
        Ok(config) => {
            let _ = format!("{config:?}");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// A job's `RUNTAP_EVENTS_FD` stream: cut into lines as the supervisor
/// reads them (a line over `MAX_LINE` is dropped as oversized), each
/// turned into events, the steps left open closed at the end; every event
/// serialized as the journal does, which must read back intact.
pub fn events_fd(data: &[u8]) {
    let mut steps = Steps::default();
    let mut seq = 0;
    let mut journal = |events: Vec<crate::run::steps::StepEvent>, step: Option<&str>| {
        for e in events {
            seq += 1;
            let event = Event {
                run_id: "fuzz-run".into(),
                seq,
                kind: e.kind,
                payload: Some(e.payload),
                step_id: step.map(str::to_owned),
                timestamp: "2026-12-01T00:00:00.000000Z".into(),
                ..Event::default()
            };
            let Ok(line) = serde_json::to_vec(&event) else { continue };
            assert!(is_json_object(&line) && line_seq(&line) == Some(seq), "a step event reads back as damaged");
            let _ = EventType::of_line(&line);
        }
    };
    for line in data.split(|&b| b == b'\n') {
        let events = if line.len() > MAX_LINE { steps.oversized() } else { steps.line(line) };
        journal(events, steps.current());
    }
    let first = data.first().copied().unwrap_or(0);
    journal(steps.close_all(first % 2 == 0), None);
}

/// A polling `POST` body (or one WebSocket message) on Engine.IO:
/// packets split at `\x1e`, each decoded, a Socket.IO packet's JSON depth
/// checked, a CONNECT's auth and an EVENT's arguments read as the
/// dispatcher reads them; an event re-encoded decodes to itself.
pub fn socketio_packets(data: &[u8]) {
    let max_depth = StreamConfig::default().max_json_depth;
    let Ok(text) = std::str::from_utf8(data) else { return };
    for part in sio::split_payload(text) {
        let Ok(pkt) = EioPacket::parse(part) else { continue };
        if pkt.kind == EioKind::Ping {
            let _ = format!("3{}", pkt.data);
        }
        if pkt.kind != EioKind::Message {
            continue;
        }
        let Ok(sio_pkt) = SioPacket::parse(pkt.data) else { continue };
        if json_depth(sio_pkt.data.as_bytes()) > max_depth {
            continue;
        }
        match sio_pkt.kind {
            SioKind::Connect => {
                let auth: Value = serde_json::from_str(sio_pkt.data).unwrap_or(Value::Null);
                let _ = auth.get("token").and_then(Value::as_str);
            }
            SioKind::Event => {
                let Ok(Value::Array(args)) = serde_json::from_str::<Value>(sio_pkt.data) else { continue };
                let Some(name) = args.first().and_then(Value::as_str) else { continue };
                let rest: Vec<&Value> = args.iter().skip(1).collect();
                let encoded = sio::event(sio_pkt.ns, name, &rest);
                let again = EioPacket::parse(&encoded).ok().and_then(|p| SioPacket::parse(p.data).ok());
                assert!(
                    again.as_ref().is_some_and(|p| p.ns == sio_pkt.ns && p.kind == SioKind::Event && p.ack.is_none()),
                    "event {encoded:?} does not decode to itself"
                );
            }
            SioKind::Disconnect | SioKind::Ack | SioKind::ConnectError => {}
        }
    }
}

/// A presented token, checked as every surface checks one
/// (`Tokens::check`: a JWT shape is verified with the HS256 secret and the
/// Ed25519 key of tests/fixtures, anything else is compared with the
/// static tokens). Then the bytes as a JWT's claims (or, after a newline,
/// header and claims), signed with the HS256 secret, so that the fuzzer
/// reaches the claims and caps behind the signature.
pub fn jwt(data: &[u8]) {
    let Some(tokens) = fuzz_tokens() else { return };
    let run = sample_run();
    let check = |token: &str| {
        if let (Some(scope), Some(run)) = (tokens.check(token), &run) {
            let _ = (scope.allows(At::Local, run), scope.allows(At::known(Some("h")), run), scope.cancels());
        }
    };
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    }
    let (header, claims) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&br#"{"alg":"HS256","typ":"JWT"}"#[..], data),
    };
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let message = format!("{}.{}", b64.encode(header), b64.encode(claims));
    let Ok(key) = jsonwebtoken::EncodingKey::from_secret(FUZZ_SECRET.as_bytes()) else { return };
    if let Ok(signature) = jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256) {
        check(&format!("{message}.{signature}"));
    }
}

/// The HS256 secret of the `jwt` target (a corpus token signed with it verifies).
pub const FUZZ_SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";
/// The static token of the `jwt` target.
pub const FUZZ_STATIC_TOKEN: &str = "fuzz-static-token-0123456789";
/// tests/fixtures/ed25519-public.pem, the EdDSA key of the `jwt` target.
const ED25519_PUBLIC: &str = include_str!("../tests/fixtures/ed25519-public.pem");

/// The tokens of the `jwt` target, made once per process.
fn fuzz_tokens() -> Option<&'static Tokens> {
    static TOKENS: OnceLock<Option<Tokens>> = OnceLock::new();
    TOKENS
        .get_or_init(|| {
            let dir = fuzz_dir()?.join("auth");
            std::fs::create_dir_all(&dir).ok()?;
            let (secret, public) = (dir.join("secret"), dir.join("ed25519-public.pem"));
            std::fs::write(&secret, FUZZ_SECRET).ok()?;
            std::fs::write(&public, ED25519_PUBLIC).ok()?;
            let auth = AuthConfig {
                jwt_hs256_secret_file: Some(secret),
                jwt_public_keys: vec![public],
                ..AuthConfig::default()
            };
            let stream = StreamConfig { tokens: vec![FUZZ_STATIC_TOKEN.into()], ..StreamConfig::default() };
            Tokens::load(&stream, &auth, &dir).ok()
        })
        .as_ref()
}

/// Removes this process's temp dir (the replay test calls it at its end;
/// a fuzzer's process leaves its dir, a few small files, behind).
pub fn cleanup() {
    if let Some(dir) = fuzz_dir() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// One temp dir per process for the targets that need files.
fn fuzz_dir() -> Option<&'static PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("runtap-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok().map(|()| dir)
    })
    .as_ref()
}

fn runtime() -> Option<&'static tokio::runtime::Runtime> {
    static RT: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().ok()).as_ref()
}
