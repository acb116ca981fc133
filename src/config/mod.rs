//! The daemon's configuration: embedded defaults < TOML file < environment < command-line flags.
//!
//! Every bound the daemon enforces lives here as a named default, so operators can find and
//! tune it in `config.toml` (the documented example at the repository root). A bad file is
//! refused at startup with the file, the key and the reason, never silently half-applied.
//!
//! - `defaults`: every `DEFAULT_*` bound and why it is what it is.
//! - `layers`: the file, the environment and the flags, stacked; errors that name the key.
//! - `validate`: ranges and cross-field rules the types cannot express.

mod defaults;
mod layers;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use defaults::*;
use layers::{de_duration, de_string_or_list};
pub use layers::{default_socket, default_state_dir};

/// The whole configuration, after layering. Build with [`Config::load`]; always validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The file it came from, if any; named in error messages.
    pub path: Option<PathBuf>,
    pub daemon: DaemonConfig,
    pub runs: RunsConfig,
    pub journal: JournalConfig,
    pub stream: StreamConfig,
    pub upstream: UpstreamConfig,
    pub gateway: GatewayConfig,
    pub auth: AuthConfig,
}

/// `[auth]`: JWT viewer tokens (docs/auth.md). Unset keys: no JWT is
/// accepted, and static tokens work as they always did. The key files are
/// read at start and on SIGHUP; a file that does not load refuses the reload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// A file holding the HS256 shared secret (surrounding whitespace trimmed).
    pub jwt_hs256_secret_file: Option<PathBuf>,
    /// PEM files of RS256, ES256 (P-256) or EdDSA (Ed25519) public keys, or
    /// JWKS JSON files; a token's `kid` picks among keys that have one.
    pub jwt_public_keys: Vec<PathBuf>,
    /// When set, a JWT's `aud` must contain it.
    pub jwt_audience: Option<String>,
    /// When set, a JWT's `iss` must be it.
    pub jwt_issuer: Option<String>,
}

/// `[upstream]`: forwarding this daemon's events to a gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `ws://HOST:PORT` or `wss://HOST:PORT` of the gateway, or of several
    /// interchangeable ones, tried in turn (a string or a list in the file);
    /// empty = no forwarding.
    #[serde(deserialize_with = "de_string_or_list")]
    pub url: Vec<String>,
    /// This host's name at the gateway; default: the hostname.
    pub host_id: Option<String>,
    /// File holding the agent token for the gateway.
    pub token_file: Option<PathBuf>,
    /// PEM certificates trusted for a `wss://` gateway, besides the system's roots.
    pub ca_file: Option<PathBuf>,
}

/// `[gateway]`: only read by `runtap gateway`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Tokens hosts present on `/agent`; empty = use or generate `STATE_DIR/agent-token`.
    pub agent_tokens: Vec<String>,
    /// How often received events are fsynced and acknowledged to their host.
    #[serde(deserialize_with = "de_duration")]
    pub ack_interval: Duration,
    /// How long a cancel routed to a host may take before the gateway answers 504.
    #[serde(deserialize_with = "de_duration")]
    pub cancel_timeout: Duration,
    /// Where hosts' events are kept: this gateway's own journals, or NATS
    /// JetStream shared by any number of replicas (docs/gateway.md).
    pub engine: GatewayEngine,
    /// The NATS servers (`nats://HOST:PORT`) of `engine = "nats"`; a string or a list.
    #[serde(deserialize_with = "de_string_or_list")]
    pub nats_url: Vec<String>,
    /// Copies JetStream keeps of the stream and the buckets (3 in a 3-node cluster).
    pub nats_replicas: usize,
    /// Events older than this leave the stream.
    #[serde(deserialize_with = "de_duration")]
    pub nats_max_age: Duration,
    /// The stream keeps at most this many bytes; the oldest go first.
    pub nats_max_bytes: u64,
}

/// `[gateway] engine`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GatewayEngine {
    /// One gateway, its own journals (the state dir).
    #[default]
    Local,
    /// Replicas sharing NATS JetStream.
    Nats,
}

impl fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("agent_tokens", &format_args!("[{} redacted]", self.agent_tokens.len()))
            .field("ack_interval", &self.ack_interval)
            .field("cancel_timeout", &self.cancel_timeout)
            .field("engine", &self.engine)
            .field("nats_url", &self.nats_url)
            .field("nats_replicas", &self.nats_replicas)
            .field("nats_max_age", &self.nats_max_age)
            .field("nats_max_bytes", &self.nats_max_bytes)
            .finish()
    }
}

/// Where the daemon keeps state and how it is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonConfig {
    /// Journals and the generated token live here. See [`default_state_dir`].
    pub state_dir: PathBuf,
    /// The local Unix socket. See [`default_socket`].
    pub socket: PathBuf,
    /// Permission bits of the socket file; never any bits for "others".
    pub socket_mode: u32,
    /// TCP address of the HTTP/WebSocket listener.
    pub listen: String,
    /// A `tracing` `EnvFilter` directive string, e.g. `info,runtap::journal=debug`.
    pub log_level: String,
}

/// Limits and timings of supervised runs. Each field's default is its `DEFAULT_*` constant.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunsConfig {
    pub max_concurrent: usize,
    #[serde(deserialize_with = "de_duration")]
    pub grace_period: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub drain_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub line_hold: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub coalesce: Duration,
    pub pty_cols: u16,
    pub pty_rows: u16,
    /// What a clean stop of the daemon does to active runs (`on_shutdown`;
    /// `shutdown_policy`, its name before runs could outlive the daemon,
    /// is still read).
    #[serde(rename = "on_shutdown", alias = "shutdown_policy")]
    pub shutdown_policy: ShutdownPolicy,
    /// With `on_shutdown = "wait"`: how long to wait before cancelling anyway.
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_wait: Duration,
}

/// What happens to active runs when the daemon stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShutdownPolicy {
    /// Leave them running under their supervisors: the next daemon takes
    /// them back. The default: a restart or an upgrade must not fail builds.
    #[default]
    Detach,
    /// Cancel them (reason "daemon shutdown"), with the normal grace period.
    Cancel,
    /// Let them finish, up to `shutdown_wait`; then cancel what is left.
    Wait,
}

/// Durability and retention of the per-run journals. Defaults: the `DEFAULT_*` constants.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JournalConfig {
    #[serde(deserialize_with = "de_duration")]
    pub fsync_interval: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub retention_max_age: Duration,
    pub retention_max_bytes: u64,
    #[serde(deserialize_with = "de_duration")]
    pub retention_check_interval: Duration,
}

/// Authentication and limits of the HTTP/WebSocket listener; defaults are the `DEFAULT_*`
/// constants. `Debug` is written by hand to redact the tokens.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamConfig {
    /// Accepted viewer tokens; empty means "use or generate `STATE_DIR/token`".
    pub tokens: Vec<String>,
    /// A file holding one token per line, read at startup.
    pub token_file: Option<PathBuf>,
    /// Tokens that may read every run but cancel none (dashboards on a wall,
    /// log shippers): `POST /runs/ID/cancel` answers them 403.
    pub read_only_tokens: Vec<String>,
    #[serde(deserialize_with = "de_duration")]
    pub ping_interval: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub ping_timeout: Duration,
    pub max_frame_bytes: usize,
    pub max_connections: usize,
    #[serde(deserialize_with = "de_duration")]
    pub handshake_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub auth_timeout: Duration,
    pub max_messages_per_second: u32,
    pub rate_burst: u32,
    pub max_json_depth: usize,
    pub subscriber_queue_bytes: usize,
    pub subscriber_queue_batches: usize,
    #[serde(deserialize_with = "de_duration")]
    pub write_stall_timeout: Duration,
    /// `Origin` values accepted on WebSocket upgrades; empty accepts any origin.
    pub allowed_origins: Vec<String>,
    /// Tokens that may only see runs whose ID starts with a prefix (others: `forbidden`).
    pub restricted_tokens: Vec<RestrictedToken>,
    /// `[stream.socketio]`: what only Socket.IO clients have.
    pub socketio: SocketIoConfig,
    /// PEM certificate chain (leaf first): with `tls_key`, the listener
    /// speaks HTTPS and WSS only (docs/tls.md). Reloaded on SIGHUP.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

/// `[stream.socketio]`: per-event rate limits of the `/workflow` namespace
/// (each a budget per minute per connection, refilled evenly; over it, the
/// client gets an `error` and keeps its connection) and how often `metrics`
/// subscribers get an update. Defaults: the `DEFAULT_SIO_*` constants.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SocketIoConfig {
    pub subscribe_per_minute: u32,
    pub unsubscribe_per_minute: u32,
    pub ping_per_minute: u32,
    pub get_status_per_minute: u32,
    #[serde(deserialize_with = "de_duration")]
    pub metrics_interval: Duration,
}

/// A viewer token limited to the runs whose ID starts with `run_prefix`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestrictedToken {
    pub token: String,
    pub run_prefix: String,
    /// May it cancel those runs? Default true (as before the key existed).
    #[serde(default = "cancel_allowed")]
    pub cancel: bool,
}

fn cancel_allowed() -> bool {
    true
}

impl fmt::Debug for StreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Written out by hand so the tokens never reach a log line.
        f.debug_struct("StreamConfig")
            .field("tokens", &format_args!("[{} redacted]", self.tokens.len()))
            .field("token_file", &self.token_file)
            .field("read_only_tokens", &format_args!("[{} redacted]", self.read_only_tokens.len()))
            .field("ping_interval", &self.ping_interval)
            .field("ping_timeout", &self.ping_timeout)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("max_connections", &self.max_connections)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("auth_timeout", &self.auth_timeout)
            .field("max_messages_per_second", &self.max_messages_per_second)
            .field("rate_burst", &self.rate_burst)
            .field("max_json_depth", &self.max_json_depth)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("subscriber_queue_bytes", &self.subscriber_queue_bytes)
            .field("subscriber_queue_batches", &self.subscriber_queue_batches)
            .field("write_stall_timeout", &self.write_stall_timeout)
            .field("allowed_origins", &self.allowed_origins)
            .field(
                "restricted_tokens",
                &self
                    .restricted_tokens
                    .iter()
                    .map(|t| format!("[redacted] -> {:?} cancel={}", t.run_prefix, t.cancel))
                    .collect::<Vec<_>>(),
            )
            .field("socketio", &self.socketio)
            .finish()
    }
}

/// The command-line layer: each `Some` beats the file and the environment.
#[derive(Default, Clone, Debug)]
pub struct Overrides {
    /// The file to load (`--config`, or `RUNTAP_CONFIG` as resolved by the CLI); `None` = no file.
    pub config: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub listen: Option<String>,
    /// `--upstream`, repeatable; when not empty it replaces `upstream.url`.
    pub upstream: Vec<String>,
    pub host_id: Option<String>,
    pub upstream_token_file: Option<PathBuf>,
}

/// Why a configuration was refused. Every message starts `config FILE:` so it can be acted on.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {}: file not found", .path.display())]
    NotFound { path: PathBuf },
    /// Not a `#[source]`: the OS reason is already in the message, and chains would repeat it.
    #[error("config {}: read: {error}", .path.display())]
    Read { path: PathBuf, error: std::io::Error },
    /// Not valid TOML; `reason` is toml's report with line, column and a snippet.
    #[error("config{}: {reason}", origin(.file.as_deref()))]
    Syntax { file: Option<PathBuf>, reason: String },
    #[error("config{}: unknown key `{key}` (line {line}, column {column}); expected one of {expected}", origin(.file.as_deref()))]
    UnknownKey { file: Option<PathBuf>, key: String, line: usize, column: usize, expected: String },
    /// A value of the wrong type or out of range; `key` is dotted, e.g. `runs.grace_period`.
    #[error("config{}: {key}: {reason}", origin(.file.as_deref()))]
    Invalid { file: Option<PathBuf>, key: String, reason: String },
}

/// `" FILE"` for the error prefix, or nothing when the config did not come from a file.
fn origin(file: Option<&Path>) -> String {
    file.map(|p| format!(" {}", p.display())).unwrap_or_default()
}

impl Config {
    /// Loads defaults, then the file (if `overrides.config` is Some; a missing explicitly-named
    /// file is an error), then the environment, then the overrides; and validates the result.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        Self::load_with(overrides, layers::process_env)
    }

    /// [`load`](Self::load) with the environment supplied by `env`, so tests need not mutate it.
    pub fn load_with(overrides: &Overrides, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let (path, mut file) = match &overrides.config {
            None => (None, layers::FileConfig::default()),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|error| match error.kind() {
                    std::io::ErrorKind::NotFound => ConfigError::NotFound { path: path.clone() },
                    _ => ConfigError::Read { path: path.clone(), error },
                })?;
                (Some(path.clone()), layers::parse_file(&text, Some(path))?)
            }
        };
        file.daemon.apply_env(&env);
        file.daemon.apply_overrides(overrides);
        let up = &mut file.upstream;
        if !overrides.upstream.is_empty() {
            up.url = overrides.upstream.clone();
        }
        up.host_id = overrides.host_id.clone().or(up.host_id.take());
        up.token_file = overrides.upstream_token_file.clone().or(up.token_file.take());
        Self::assemble(path, file, &env)
    }

    /// The file layer only, on top of defaults (no `RUNTAP_*` environment); validated.
    pub fn from_toml_str(text: &str, path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::assemble(path.map(Path::to_path_buf), layers::parse_file(text, path)?, &layers::process_env)
    }

    fn assemble(
        path: Option<PathBuf>,
        file: layers::FileConfig,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let daemon = file.daemon.resolve(env);
        let config = Config {
            path,
            daemon,
            runs: file.runs,
            journal: file.journal,
            stream: file.stream,
            upstream: file.upstream,
            gateway: file.gateway,
            auth: file.auth,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests;
