//! `logs`, `ps` and `cancel` against a daemon or gateway over the network
//! (`--url`), with the same output and exit codes as over the Unix socket.
//!
//! `logs` reads the run's WebSocket (`/runs?runId=`) and hands every event
//! to the same decoder and sink as the socket client (`decode::into_sink`),
//! so stdout and stderr get the same bytes. Without `-f` it stops at the
//! run's `lastSeq` as `GET /runs/ID` gave it, which is the socket's "what
//! the journal holds now". A stream the server ends as `lagged` (stdout was
//! blocked for `write_stall_timeout`, e.g. a pager) is resumed from the
//! last event printed, with nothing lost or printed twice.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ::http::{Method, StatusCode};
use futures_util::{FutureExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::http::{self as net, Answer, Url};
use super::{ClientError, OutputSink, decode};
use crate::auth::Token;
use crate::run_id::RunId;
use crate::run_info::RunInfo;

/// A stream that has heard nothing (not even the server's pings, every
/// `stream.ping_interval`, 25 s by default) for this long is dead.
const STREAM_SILENCE: Duration = Duration::from_secs(120);

/// Where a token came from, to say so when it is refused (never the token).
#[derive(Clone, Debug)]
enum TokenSource {
    Flag(PathBuf),
    EnvFile(PathBuf),
    Env,
}

impl std::fmt::Display for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::Flag(p) => write!(f, "--token-file {}", p.display()),
            TokenSource::EnvFile(p) => write!(f, "RUNTAP_TOKEN_FILE ({})", p.display()),
            TokenSource::Env => f.write_str("RUNTAP_TOKEN"),
        }
    }
}

/// The `--url`, `--token-file` and `--host` flags, as given.
#[derive(Clone, Debug, Default)]
pub struct RemoteArgs {
    pub url: Option<String>,
    pub token_file: Option<PathBuf>,
    pub host: Option<String>,
}

/// A daemon or gateway to talk to over the network, with its token.
pub struct Remote {
    url: Url,
    token: Token,
    source: TokenSource,
    host: Option<String>,
}

impl Remote {
    /// From the flags, else the environment (`env`: `RUNTAP_URL`,
    /// `RUNTAP_TOKEN_FILE`, `RUNTAP_TOKEN`; empty values count as unset).
    /// `None`: no URL at all, so the command goes to the Unix socket.
    pub fn from_args(args: RemoteArgs, env: impl Fn(&str) -> Option<String>) -> Result<Option<Remote>, ClientError> {
        let env = |name: &str| env(name).filter(|v| !v.is_empty());
        let (raw, origin) = match (args.url, env("RUNTAP_URL")) {
            (Some(url), _) => (url, "--url"),
            (None, Some(url)) => (url, "RUNTAP_URL"),
            (None, None) if args.token_file.is_some() || args.host.is_some() => {
                return Err(ClientError::Usage("--token-file and --host need --url (or RUNTAP_URL)".into()));
            }
            (None, None) => return Ok(None),
        };
        let url = Url::parse(&raw, origin)?;
        let source = match (args.token_file, env("RUNTAP_TOKEN_FILE")) {
            (Some(path), _) => TokenSource::Flag(path),
            (None, Some(path)) => TokenSource::EnvFile(path.into()),
            (None, None) => TokenSource::Env,
        };
        let token = match &source {
            TokenSource::Flag(path) | TokenSource::EnvFile(path) => read_token(path, &source)?,
            TokenSource::Env => Token::new(env("RUNTAP_TOKEN").ok_or_else(|| {
                ClientError::Usage(format!(
                    "no token for {}: give --token-file FILE, or set RUNTAP_TOKEN_FILE or RUNTAP_TOKEN",
                    url.text
                ))
            })?),
        };
        if let Some(host) = &args.host {
            RunId::parse(host).map_err(|e| ClientError::Usage(format!("invalid --host {host:?}: {e}")))?;
        }
        Ok(Some(Remote { url, token, source, host: args.host }))
    }

    /// `PATH?QUERY`, with `host=` added when `--host` was given.
    fn target(&self, path: &str, query: &[(&str, String)]) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in query {
            q.append_pair(k, v);
        }
        if let Some(h) = &self.host {
            q.append_pair("host", h);
        }
        let q = q.finish();
        if q.is_empty() { path.to_owned() } else { format!("{path}?{q}") }
    }

    async fn call(&self, method: Method, target: &str, body: Option<Vec<u8>>) -> Result<Answer, ClientError> {
        net::request(&self.url, method, target, &self.token, body).await
    }

    /// The error a non-2xx answer stands for: the server's own message
    /// where it gave one (`no run X`, as on the socket).
    fn refusal(&self, answer: &Answer) -> ClientError {
        let body = answer.json();
        let code = body["code"].as_str().unwrap_or_default().to_owned();
        let message = body["message"].as_str().map(str::to_owned);
        match answer.status {
            StatusCode::UNAUTHORIZED => self.token_refused(),
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT | StatusCode::BAD_GATEWAY => {
                ClientError::Unreachable(
                    message.unwrap_or_else(|| format!("{} answered {}", self.url.text, answer.status)),
                )
            }
            status => ClientError::Refused {
                code,
                message: message.unwrap_or_else(|| format!("{} answered {status}", self.url.text)),
            },
        }
    }
}

impl Remote {
    /// Says where the refused token came from, and never what it is.
    fn token_refused(&self) -> ClientError {
        ClientError::Refused {
            code: "unauthorized".into(),
            message: format!("{} refused the token from {} (401 unauthorized)", self.url.text, self.source),
        }
    }
}

/// The first token in the file (one per line, `#` comments), as the daemon reads token files.
fn read_token(path: &Path, source: &TokenSource) -> Result<Token, ClientError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ClientError::Usage(format!("read token file {} (from {source}): {e}", path.display())))?;
    let first = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#'));
    first.map(Token::new).ok_or_else(|| ClientError::Usage(format!("token file {} holds no token", path.display())))
}

/// The run ID checked here, with the daemon's own message: it goes into a
/// URL path, and an invalid one must be refused as the socket refuses it.
fn run_id(raw: &str) -> Result<RunId, ClientError> {
    RunId::parse(raw).map_err(|e| ClientError::Refused {
        code: if raw.is_empty() { "missing-run-id" } else { "bad-request" }.into(),
        message: format!("invalid run ID {raw:?}: {e}"),
    })
}

/// `runtap logs --url`.
pub async fn logs(remote: &Remote, id: &str, since: u64, follow: bool) -> Result<i32, ClientError> {
    let run = run_id(id)?;
    let answer = remote.call(Method::GET, &remote.target(&format!("/runs/{run}"), &[]), None).await?;
    if !answer.status.is_success() {
        return Err(remote.refusal(&answer));
    }
    let until = if follow { None } else { Some(answer.json()["lastSeq"].as_u64().unwrap_or(0)) };
    let mut sink = OutputSink::new();
    let mut after = since;
    while until.is_none_or(|u| after < u) {
        match stream(remote, &run, after, until, &mut sink).await? {
            Ended::Done => break,
            Ended::Lagged(last) => after = last,
        }
    }
    sink.flush()?;
    Ok(0)
}

enum Ended {
    Done,
    /// The server gave up on a reader that took nothing for its
    /// `write_stall_timeout`; resume after this seq.
    Lagged(u64),
}

/// One WebSocket's worth of a run's events after `since`, up to `until`.
async fn stream(
    remote: &Remote,
    run: &RunId,
    since: u64,
    until: Option<u64>,
    sink: &mut OutputSink,
) -> Result<Ended, ClientError> {
    let target = remote.target("/runs", &[("runId", run.to_string()), ("since", since.to_string())]);
    let mut ws = match net::websocket(&remote.url, &target, &remote.token).await? {
        Ok(ws) => ws,
        Err(answer) => return Err(remote.refusal(&answer)),
    };
    let mut last = since;
    let mut refused: Option<ClientError> = None;
    loop {
        // Output is written out whenever the client is about to wait for
        // the server, as on the socket: live, and batched while it can be.
        let next = match ws.next().now_or_never() {
            Some(next) => next,
            None => {
                sink.flush()?;
                tokio::time::timeout(STREAM_SILENCE, ws.next()).await.map_err(|_| {
                    let secs = STREAM_SILENCE.as_secs();
                    ClientError::Unreachable(format!("{} sent nothing for {secs}s", remote.url.text))
                })?
            }
        };
        let text = match next {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                return match (refused, frame) {
                    (Some(e), _) => Err(e),
                    (None, Some(f)) if u16::from(f.code) == 1000 => Ok(Ended::Done),
                    (None, f) => Err(ClientError::Unreachable(format!(
                        "{} closed the stream: {}",
                        remote.url.text,
                        f.map_or_else(
                            || "no reason".into(),
                            |f| format!("{} {}", u16::from(f.code), f.reason.as_str())
                        )
                    ))),
                };
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(ClientError::Unreachable(format!("stream from {}: {e}", remote.url.text))),
            None => return Err(refused.unwrap_or(ClientError::Closed)),
        };
        let line = text.as_bytes();
        if !line.starts_with(br#"{"runId""#) {
            match control(line, last)? {
                Control::Ignore => {}
                Control::Lagged(at) => return Ok(Ended::Lagged(at)),
                Control::Refused(ClientError::Refused { code, .. }) if code == "unauthorized" => {
                    refused = Some(remote.token_refused());
                }
                Control::Refused(e) => refused = Some(e),
            }
            continue;
        }
        let seq = decode::seq_of(line).unwrap_or(last + 1);
        if until.is_some_and(|u| seq > u) {
            return Ok(Ended::Done);
        }
        decode::into_sink(line, sink)?;
        last = seq;
        if until == Some(seq) {
            return Ok(Ended::Done);
        }
    }
}

enum Control {
    Ignore,
    Lagged(u64),
    /// Ends the stream (the close frame follows).
    Refused(ClientError),
}

/// A message that is not an event: `journal-gap` is printed (as the socket
/// client prints it) and the stream goes on; other errors end it.
fn control(line: &[u8], last: u64) -> Result<Control, ClientError> {
    let v: Value = serde_json::from_slice(line).map_err(|e| super::bad_line(e, line))?;
    if v["type"] != "error" {
        return Ok(Control::Ignore);
    }
    let code = v["code"].as_str().unwrap_or_default().to_owned();
    let message = v["message"].as_str().unwrap_or_default().to_owned();
    Ok(match code.as_str() {
        "journal-gap" => {
            eprintln!("runtap: {message}");
            Control::Ignore
        }
        // Ours is what we printed, which may be more than the server counted as written.
        "lagged" => Control::Lagged(v["lastSeq"].as_u64().unwrap_or(0).max(last)),
        "journal" => Control::Refused(ClientError::Unreachable(message)),
        _ => Control::Refused(ClientError::Refused { code, message }),
    })
}

/// `runtap ps --url`: every run the token may see (with `--host`, that host's).
pub async fn ps(remote: &Remote, json: bool) -> Result<i32, ClientError> {
    let answer = remote.call(Method::GET, "/runs", None).await?;
    if !answer.status.is_success() {
        return Err(remote.refusal(&answer));
    }
    let Value::Array(mut runs) = answer.json() else {
        return Err(ClientError::Protocol(format!("GET /runs of {} is not a JSON array", remote.url.text)));
    };
    // At a gateway, runs carry their host; a daemon's do not, and are all its own.
    if let Some(h) = &remote.host {
        runs.retain(|r| r["host"].as_str().is_none_or(|x| x == h));
    }
    let mut out = std::io::stdout().lock();
    use std::io::Write as _;
    if json {
        let text = serde_json::to_string_pretty(&runs).map_err(|e| ClientError::Protocol(e.to_string()))?;
        writeln!(out, "{text}")?;
        return Ok(0);
    }
    let hosts: Vec<Option<String>> = runs.iter().map(|r| r["host"].as_str().map(str::to_owned)).collect();
    let infos = runs
        .into_iter()
        .map(serde_json::from_value::<RunInfo>)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientError::Protocol(format!("a run from {}: {e}", remote.url.text)))?;
    let hosts = hosts.iter().any(Option::is_some).then_some(hosts.as_slice());
    write!(out, "{}", super::commands::table(&infos, hosts, chrono::Utc::now()))?;
    Ok(0)
}

/// `runtap cancel --url`.
pub async fn cancel(remote: &Remote, id: &str, reason: Option<String>) -> Result<i32, ClientError> {
    let run = run_id(id)?;
    let body = reason.map(|r| json!({ "reason": r }).to_string().into_bytes());
    let answer = remote.call(Method::POST, &remote.target(&format!("/runs/{run}/cancel"), &[]), body).await?;
    let v = answer.json();
    match answer.status {
        StatusCode::OK => {
            let status = v["status"].as_str().unwrap_or("?");
            println!("cancelling {} (was {status})", v["runId"].as_str().unwrap_or(run.as_str()));
            Ok(0)
        }
        // Already over: said, and not an error (as on the socket).
        StatusCode::CONFLICT if v["code"] == "finished" => {
            eprintln!("runtap: {}", v["message"].as_str().unwrap_or("run already finished"));
            Ok(0)
        }
        _ => Err(remote.refusal(&answer)),
    }
}
