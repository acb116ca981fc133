//! `logs`, `ps` and `cancel` against a daemon or gateway over the network
//! (`--url`), with the same output and exit codes as over the Unix socket.
//!
//! - this file: the target (URL, token and where it came from, `--host`),
//!   its refusals as the socket client's errors, `ps` and `cancel`.
//! - `logs`: a run's events over its WebSocket.

mod logs;

pub use logs::logs;

use std::path::{Path, PathBuf};

use ::http::{Method, StatusCode};
use serde_json::{Value, json};

use super::ClientError;
use super::http::{self as net, Answer, Url};
use crate::auth::Token;
use crate::run_id::RunId;
use crate::run_info::RunInfo;

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
