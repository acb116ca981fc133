//! The daemon's configuration: embedded defaults < TOML file < environment < command-line flags.
//!
//! Every bound the daemon enforces lives here as a named default, so operators can find and
//! tune it in `config.toml` (the documented example at the repository root). A bad file is
//! refused at startup with the file, the key and the reason, never silently half-applied.
//! Only the `[daemon]` section has environment and flag overrides; the layering of those four
//! keys happens in `DaemonLayer` so that the socket can follow the final state dir.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{Deserializer, Error as _, Visitor};
use toml::de::{DeTable, DeValue};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Unix socket mode: owner and group may connect, others may not (the spec's "0660 or tighter").
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;
/// TCP listener: loopback only, so a fresh install exposes nothing to the network.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7878";
/// `tracing` filter directives used when neither file nor `RUNTAP_LOG` sets one.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Runs supervised at once; more are refused so a runaway client cannot fork-bomb the host.
pub const DEFAULT_MAX_CONCURRENT: usize = 64;
/// Time between SIGTERM and SIGKILL when a run is cancelled (the spec's default).
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(10);
/// How long output is still read after the process exits, when a grandchild holds the pipe.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a partial line is held back, hoping for its newline, before it is flushed.
pub const DEFAULT_LINE_HOLD: Duration = Duration::from_millis(20);
pub const DEFAULT_COALESCE: Duration = Duration::from_millis(2);
/// PTY width for `--pty` runs.
pub const DEFAULT_PTY_COLS: u16 = 160;
/// PTY height for `--pty` runs.
pub const DEFAULT_PTY_ROWS: u16 = 100;
/// Gateway: events are fsynced and acknowledged to hosts in batches this often.
pub const DEFAULT_ACK_INTERVAL: Duration = Duration::from_millis(100);
/// Gateway: a cancel routed to a host that does not answer in this time gets 504.
pub const DEFAULT_CANCEL_TIMEOUT: Duration = Duration::from_secs(10);
/// With the `wait` shutdown policy, how long runs may take before they are cancelled anyway.
pub const DEFAULT_SHUTDOWN_WAIT: Duration = Duration::from_secs(5 * 60);
/// Upper bound on how much journaled output a crash can lose.
pub const DEFAULT_FSYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Finished runs' journals older than this are deleted.
pub const DEFAULT_RETENTION_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Oldest finished journals are deleted while the total exceeds this (10 GiB).
pub const DEFAULT_RETENTION_MAX_BYTES: u64 = 10 * 1024 * 1024 * 1024;
/// How often retention runs.
pub const DEFAULT_RETENTION_CHECK_INTERVAL: Duration = Duration::from_secs(10 * 60);
/// Server ping period; under the 30-60 s idle timeouts of common proxies.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(25);
/// A peer silent for this long is closed.
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest client WebSocket frame/message (64 KiB); larger ones close with 1009.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * KIB;
/// Open WebSocket/HTTP connections accepted at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;
/// Deadline for the HTTP upgrade to complete.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for a first `{"type":"auth"}` message when no header/query token was given.
pub const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(5);
/// Sustained client messages per second per connection before `rate-limited`.
pub const DEFAULT_MAX_MESSAGES_PER_SECOND: u32 = 50;
/// Client messages allowed in a burst above the sustained rate.
pub const DEFAULT_RATE_BURST: u32 = 100;
/// Deepest JSON nesting accepted in a client message.
pub const DEFAULT_MAX_JSON_DEPTH: usize = 16;
/// Bytes queued for one subscriber before it is `lagged` (8 MiB).
pub const DEFAULT_SUBSCRIBER_QUEUE_BYTES: usize = 8 * MIB;
/// Event batches queued for one subscriber before it is `lagged`.
pub const DEFAULT_SUBSCRIBER_QUEUE_BATCHES: usize = 4096;
/// A subscriber whose socket accepts nothing for this long is closed.
pub const DEFAULT_WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Shortest accepted token, so a configured token cannot be guessed.
pub const MIN_TOKEN_LEN: usize = 16;

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
}

/// `[upstream]`: forwarding this daemon's events to a gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `ws://HOST:PORT` or `wss://HOST:PORT` of the gateway; unset = no forwarding.
    pub url: Option<String>,
    /// This host's name at the gateway; default: the hostname.
    pub host_id: Option<String>,
    /// File holding the agent token for the gateway.
    pub token_file: Option<PathBuf>,
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
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self { agent_tokens: Vec::new(), ack_interval: DEFAULT_ACK_INTERVAL, cancel_timeout: DEFAULT_CANCEL_TIMEOUT }
    }
}

impl fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("agent_tokens", &format_args!("[{} redacted]", self.agent_tokens.len()))
            .field("ack_interval", &self.ack_interval)
            .field("cancel_timeout", &self.cancel_timeout)
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
    /// What daemon shutdown does to active runs.
    pub shutdown_policy: ShutdownPolicy,
    /// With `shutdown_policy = "wait"`: how long to wait before cancelling anyway.
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_wait: Duration,
}

/// What happens to active runs when the daemon stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShutdownPolicy {
    /// Cancel them (reason "daemon shutdown"), with the normal grace period.
    #[default]
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
}

/// A viewer token limited to the runs whose ID starts with `run_prefix`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestrictedToken {
    pub token: String,
    pub run_prefix: String,
}

/// Reads `XDG_STATE_HOME` and `XDG_RUNTIME_DIR` (see [`default_state_dir`], [`default_socket`]).
impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonLayer::default().resolve(&process_env)
    }
}

impl Default for RunsConfig {
    fn default() -> Self {
        Self {
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            grace_period: DEFAULT_GRACE_PERIOD,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            line_hold: DEFAULT_LINE_HOLD,
            coalesce: DEFAULT_COALESCE,
            pty_cols: DEFAULT_PTY_COLS,
            pty_rows: DEFAULT_PTY_ROWS,
            shutdown_policy: ShutdownPolicy::Cancel,
            shutdown_wait: DEFAULT_SHUTDOWN_WAIT,
        }
    }
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            fsync_interval: DEFAULT_FSYNC_INTERVAL,
            retention_max_age: DEFAULT_RETENTION_MAX_AGE,
            retention_max_bytes: DEFAULT_RETENTION_MAX_BYTES,
            retention_check_interval: DEFAULT_RETENTION_CHECK_INTERVAL,
        }
    }
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            tokens: Vec::new(),
            token_file: None,
            ping_interval: DEFAULT_PING_INTERVAL,
            ping_timeout: DEFAULT_PING_TIMEOUT,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            auth_timeout: DEFAULT_AUTH_TIMEOUT,
            max_messages_per_second: DEFAULT_MAX_MESSAGES_PER_SECOND,
            rate_burst: DEFAULT_RATE_BURST,
            max_json_depth: DEFAULT_MAX_JSON_DEPTH,
            subscriber_queue_bytes: DEFAULT_SUBSCRIBER_QUEUE_BYTES,
            subscriber_queue_batches: DEFAULT_SUBSCRIBER_QUEUE_BATCHES,
            write_stall_timeout: DEFAULT_WRITE_STALL_TIMEOUT,
            allowed_origins: Vec::new(),
            restricted_tokens: Vec::new(),
        }
    }
}

impl fmt::Debug for StreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Written out by hand so the tokens never reach a log line.
        f.debug_struct("StreamConfig")
            .field("tokens", &format_args!("[{} redacted]", self.tokens.len()))
            .field("token_file", &self.token_file)
            .field("ping_interval", &self.ping_interval)
            .field("ping_timeout", &self.ping_timeout)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("max_connections", &self.max_connections)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("auth_timeout", &self.auth_timeout)
            .field("max_messages_per_second", &self.max_messages_per_second)
            .field("rate_burst", &self.rate_burst)
            .field("max_json_depth", &self.max_json_depth)
            .field("subscriber_queue_bytes", &self.subscriber_queue_bytes)
            .field("subscriber_queue_batches", &self.subscriber_queue_batches)
            .field("write_stall_timeout", &self.write_stall_timeout)
            .field("allowed_origins", &self.allowed_origins)
            .field(
                "restricted_tokens",
                &self.restricted_tokens.iter().map(|t| format!("[redacted] -> {:?}", t.run_prefix)).collect::<Vec<_>>(),
            )
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
    pub upstream: Option<String>,
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

/// The file's shape. Sections other than `[daemon]` need no layering and parse straight in.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FileConfig {
    daemon: DaemonLayer,
    runs: RunsConfig,
    journal: JournalConfig,
    stream: StreamConfig,
    upstream: UpstreamConfig,
    gateway: GatewayConfig,
}

/// `[daemon]` as set so far by file, environment and flags; `None` means "not set by anyone",
/// which is how [`resolve`](Self::resolve) knows the socket should follow the final state dir.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct DaemonLayer {
    state_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    #[serde(deserialize_with = "de_octal")]
    socket_mode: Option<u32>,
    listen: Option<String>,
    log_level: Option<String>,
}

impl DaemonLayer {
    /// The environment layer. Empty values are ignored, so `RUNTAP_LISTEN=` is not an error.
    fn apply_env(&mut self, env: &impl Fn(&str) -> Option<String>) {
        let get = |name: &str| env(name).filter(|v| !v.is_empty());
        self.state_dir = get("RUNTAP_STATE_DIR").map(PathBuf::from).or(self.state_dir.take());
        self.socket = get("RUNTAP_SOCKET").map(PathBuf::from).or(self.socket.take());
        self.listen = get("RUNTAP_LISTEN").or(self.listen.take());
        self.log_level = get("RUNTAP_LOG").or(self.log_level.take());
    }

    fn apply_overrides(&mut self, o: &Overrides) {
        self.state_dir = o.state_dir.clone().or(self.state_dir.take());
        self.socket = o.socket.clone().or(self.socket.take());
        self.listen = o.listen.clone().or(self.listen.take());
    }

    /// Fills what no layer set; the XDG lookups go through `env` so tests stay hermetic.
    fn resolve(self, env: &impl Fn(&str) -> Option<String>) -> DaemonConfig {
        let state_dir = self.state_dir.unwrap_or_else(|| state_dir_from(env));
        DaemonConfig {
            socket: self.socket.unwrap_or_else(|| socket_from(env, &state_dir)),
            state_dir,
            socket_mode: self.socket_mode.unwrap_or(DEFAULT_SOCKET_MODE),
            listen: self.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_owned()),
            log_level: self.log_level.unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_owned()),
        }
    }
}

impl Config {
    /// Loads defaults, then the file (if `overrides.config` is Some; a missing explicitly-named
    /// file is an error), then the environment, then the overrides; and validates the result.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        Self::load_with(overrides, process_env)
    }

    /// [`load`](Self::load) with the environment supplied by `env`, so tests need not mutate it.
    pub fn load_with(overrides: &Overrides, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let (path, mut file) = match &overrides.config {
            None => (None, FileConfig::default()),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|error| match error.kind() {
                    std::io::ErrorKind::NotFound => ConfigError::NotFound { path: path.clone() },
                    _ => ConfigError::Read { path: path.clone(), error },
                })?;
                (Some(path.clone()), parse_file(&text, Some(path))?)
            }
        };
        file.daemon.apply_env(&env);
        file.daemon.apply_overrides(overrides);
        let up = &mut file.upstream;
        up.url = overrides.upstream.clone().or(up.url.take());
        up.host_id = overrides.host_id.clone().or(up.host_id.take());
        up.token_file = overrides.upstream_token_file.clone().or(up.token_file.take());
        Self::assemble(path, file, &env)
    }

    /// The file layer only, on top of defaults (no `RUNTAP_*` environment); validated.
    pub fn from_toml_str(text: &str, path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::assemble(path.map(Path::to_path_buf), parse_file(text, path)?, &process_env)
    }

    fn assemble(
        path: Option<PathBuf>,
        file: FileConfig,
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
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and cross-field rules that the types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check().map_err(|(key, reason)| ConfigError::Invalid { file: self.path.clone(), key, reason })
    }

    fn check(&self) -> Result<(), (String, String)> {
        let (d, r, j, s) = (&self.daemon, &self.runs, &self.journal, &self.stream);
        let not_empty = || "must not be empty".to_owned();
        ensure(!d.state_dir.as_os_str().is_empty(), "daemon.state_dir", not_empty)?;
        ensure(!d.socket.as_os_str().is_empty(), "daemon.socket", not_empty)?;
        // "Others" could connect and launch runs as the daemon's user: refuse outright.
        let mode = d.socket_mode;
        ensure(mode & 0o007 == 0 && mode & !0o777 == 0 && mode & 0o600 == 0o600, "daemon.socket_mode", || {
            format!("{mode:04o}: must give the owner read/write and others nothing (e.g. 0660, 0600)")
        })?;
        ensure(d.listen.parse::<SocketAddr>().is_ok(), "daemon.listen", || {
            format!("invalid socket address {:?}: expected IP:PORT, e.g. {DEFAULT_LISTEN:?}", d.listen)
        })?;
        ensure(!d.log_level.trim().is_empty(), "daemon.log_level", not_empty)?;
        tracing_subscriber::EnvFilter::try_new(&d.log_level)
            .map_err(|e| ("daemon.log_level".to_owned(), format!("invalid filter {:?}: {e}", d.log_level)))?;
        // Zero periods would panic `tokio::time::interval`; zero deadlines would reject everyone.
        for (key, value) in [
            ("journal.fsync_interval", j.fsync_interval),
            ("journal.retention_check_interval", j.retention_check_interval),
            ("stream.ping_interval", s.ping_interval),
            ("stream.handshake_timeout", s.handshake_timeout),
            ("stream.auth_timeout", s.auth_timeout),
            ("stream.write_stall_timeout", s.write_stall_timeout),
        ] {
            ensure(!value.is_zero(), key, || "must be greater than zero".to_owned())?;
        }
        ensure(s.ping_timeout > s.ping_interval, "stream.ping_timeout", || {
            "must be longer than stream.ping_interval".to_owned()
        })?;
        for (key, value, min) in [
            ("runs.max_concurrent", r.max_concurrent, 1),
            ("runs.pty_cols", r.pty_cols.into(), 1),
            ("runs.pty_rows", r.pty_rows.into(), 1),
            ("stream.max_frame_bytes", s.max_frame_bytes, KIB),
            ("stream.max_connections", s.max_connections, 1),
            ("stream.max_messages_per_second", s.max_messages_per_second as usize, 1),
            ("stream.rate_burst", s.rate_burst as usize, 1),
            ("stream.max_json_depth", s.max_json_depth, 1),
            ("stream.subscriber_queue_bytes", s.subscriber_queue_bytes, 64 * KIB),
            ("stream.subscriber_queue_batches", s.subscriber_queue_batches, 1),
        ] {
            ensure(value >= min, key, || format!("must be at least {min} (got {value})"))?;
        }
        ensure(s.max_frame_bytes <= 16 * MIB, "stream.max_frame_bytes", || {
            format!("must be at most {} (16 MiB)", 16 * MIB)
        })?;
        for (i, token) in s.tokens.iter().enumerate() {
            // Never echo the token itself: this message goes to logs.
            let ok = token.chars().count() >= MIN_TOKEN_LEN && !token.chars().any(char::is_whitespace);
            ensure(ok, &format!("stream.tokens[{i}]"), || {
                format!("must be at least {MIN_TOKEN_LEN} characters without whitespace")
            })?;
        }
        for (i, t) in s.restricted_tokens.iter().enumerate() {
            let ok = t.token.chars().count() >= MIN_TOKEN_LEN && !t.token.chars().any(char::is_whitespace);
            ensure(ok, &format!("stream.restricted_tokens[{i}].token"), || {
                format!("must be at least {MIN_TOKEN_LEN} characters without whitespace")
            })?;
        }
        ensure(s.token_file.as_ref().is_none_or(|p| !p.as_os_str().is_empty()), "stream.token_file", not_empty)?;
        let u = &self.upstream;
        if let Some(url) = &u.url {
            ensure(url.starts_with("ws://") || url.starts_with("wss://"), "upstream.url", || {
                format!("must start with ws:// or wss:// (got {url:?})")
            })?;
            ensure(u.token_file.is_some(), "upstream.token_file", || "is required with upstream.url".into())?;
        }
        if let Some(host) = &u.host_id {
            ensure(crate::run_id::RunId::parse(host).is_ok(), "upstream.host_id", || {
                "must match [A-Za-z0-9][A-Za-z0-9._:-]{0,127}".into()
            })?;
        }
        for (i, token) in self.gateway.agent_tokens.iter().enumerate() {
            let ok = token.chars().count() >= MIN_TOKEN_LEN && !token.chars().any(char::is_whitespace);
            ensure(ok, &format!("gateway.agent_tokens[{i}]"), || {
                format!("must be at least {MIN_TOKEN_LEN} characters without whitespace")
            })?;
        }
        ensure(!self.gateway.ack_interval.is_zero(), "gateway.ack_interval", || "must be greater than zero".into())
    }
}

/// `Err((key, reason))` unless `ok`; the reason is only built on failure.
fn ensure(ok: bool, key: &str, reason: impl FnOnce() -> String) -> Result<(), (String, String)> {
    if ok { Ok(()) } else { Err((key.to_owned(), reason())) }
}

/// `$XDG_STATE_HOME/runtap` if that is set to an absolute path (XDG says to ignore relative
/// ones), else `./runtap-data`, made absolute against the current directory when possible.
pub fn default_state_dir() -> PathBuf {
    state_dir_from(&process_env)
}

/// `$XDG_RUNTIME_DIR/runtap.sock` if that is set and non-empty (tmpfs, per-user, cleaned at
/// logout), else `STATE_DIR/runtap.sock`.
pub fn default_socket(state_dir: &Path) -> PathBuf {
    socket_from(&process_env, state_dir)
}

fn state_dir_from(env: &impl Fn(&str) -> Option<String>) -> PathBuf {
    match env("XDG_STATE_HOME").map(PathBuf::from) {
        Some(xdg) if xdg.is_absolute() => xdg.join("runtap"),
        _ => std::env::current_dir().map_or_else(|_| PathBuf::from("runtap-data"), |cwd| cwd.join("runtap-data")),
    }
}

fn socket_from(env: &impl Fn(&str) -> Option<String>, state_dir: &Path) -> PathBuf {
    match env("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("runtap.sock"),
        None => state_dir.join("runtap.sock"),
    }
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Parses the file, turning toml's span-based errors into ones that name the dotted key.
fn parse_file(text: &str, path: Option<&Path>) -> Result<FileConfig, ConfigError> {
    let err = match toml::from_str(text) {
        Ok(file) => return Ok(file),
        Err(err) => err,
    };
    let file = path.map(Path::to_path_buf);
    // toml keeps the failing key private, so locate it by span in a spanned parse of the text.
    let (Some(span), Ok(doc)) = (err.span(), DeTable::parse(text)) else {
        return Err(ConfigError::Syntax { file, reason: err.to_string().trim_end().to_owned() });
    };
    let key = key_at(doc.get_ref(), span.start).join(".");
    let line = text[..span.start].matches('\n').count() + 1;
    let column = text[..span.start].rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let message = err.message();
    if let Some((_, expected)) = message.strip_prefix("unknown field").and_then(|m| m.split_once("expected one of ")) {
        return Err(ConfigError::UnknownKey { file, key, line, column, expected: expected.to_owned() });
    }
    Err(ConfigError::Invalid { file, key, reason: format!("{message} (line {line}, column {column})") })
}

/// The dotted path of the innermost key whose key or value span contains `pos`.
fn key_at(table: &DeTable<'_>, pos: usize) -> Vec<String> {
    for (key, value) in table.iter() {
        if let DeValue::Table(inner) = value.get_ref() {
            let mut path = key_at(inner, pos);
            if !path.is_empty() {
                path.insert(0, key.get_ref().to_string());
                return path;
            }
        }
        if key.span().contains(&pos) || value.span().contains(&pos) {
            return vec![key.get_ref().to_string()];
        }
    }
    Vec::new()
}

/// A humantime duration ("250ms", "10s", "7d"); the message keeps humantime's reason.
fn de_duration<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    let text = de.deserialize_str(StrVisitor("a duration string like \"10s\""))?;
    humantime::parse_duration(&text).map_err(|e| D::Error::custom(format!("invalid duration {text:?}: {e}")))
}

/// A string of octal digits ("0660"). Strings, not integers, because TOML reads 660 as decimal.
fn de_octal<'de, D: Deserializer<'de>>(de: D) -> Result<Option<u32>, D::Error> {
    let text = de.deserialize_str(StrVisitor("a string of octal digits like \"0660\""))?;
    let digits = text.strip_prefix("0o").unwrap_or(&text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if digits.len() <= 4 && digits.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(mode)),
        _ => Err(D::Error::custom(format!("invalid mode {text:?}: expected octal digits like \"0660\""))),
    }
}

/// Accepts only a string, and says what kind of string in the "invalid type" message.
struct StrVisitor(&'static str);

impl Visitor<'_> for StrVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    /// Asserts that `text` is refused with a message starting `config x.toml: {want}`.
    fn refused(text: &str, want: &str) -> String {
        let msg = Config::from_toml_str(text, Some(Path::new("x.toml"))).unwrap_err().to_string();
        assert!(msg.starts_with(&format!("config x.toml: {want}")), "{text:?} gave: {msg}");
        msg
    }

    #[test]
    fn defaults_validate() {
        Config::default().validate().unwrap();
        let config = Config::load_with(&Overrides::default(), env_of(&[])).unwrap();
        assert_eq!(config.daemon.socket, config.daemon.state_dir.join("runtap.sock"));
        assert!(config.daemon.state_dir.ends_with("runtap-data"));
    }

    #[test]
    fn xdg_dirs_are_used() {
        let env = env_of(&[("XDG_STATE_HOME", "/st"), ("XDG_RUNTIME_DIR", "/run/user/1")]);
        let config = Config::load_with(&Overrides::default(), env).unwrap();
        assert_eq!(config.daemon.state_dir, Path::new("/st/runtap"));
        assert_eq!(config.daemon.socket, Path::new("/run/user/1/runtap.sock"));
    }

    #[test]
    fn full_example_parses() {
        let text = r#"
            [daemon]
            state_dir = "/var/lib/runtap"
            socket = "/run/runtap.sock"
            socket_mode = "0600"
            listen = "0.0.0.0:9000"
            log_level = "debug,hyper=info"
            [runs]
            max_concurrent = 8
            grace_period = "3s"
            drain_timeout = "500ms"
            line_hold = "5ms"
            pty_cols = 80
            pty_rows = 24
            [journal]
            fsync_interval = "250ms"
            retention_max_age = "1d"
            retention_max_bytes = 1_000_000
            retention_check_interval = "1m"
            [stream]
            tokens = ["0123456789abcdef"]
            token_file = "/etc/runtap/tokens"
            ping_interval = "5s"
            ping_timeout = "15s"
            max_frame_bytes = 2048
            max_connections = 10
            handshake_timeout = "1s"
            auth_timeout = "2s"
            max_messages_per_second = 5
            rate_burst = 6
            max_json_depth = 4
            subscriber_queue_bytes = 65536
            subscriber_queue_batches = 7
            write_stall_timeout = "9s"
            allowed_origins = ["https://ci.example"]
        "#;
        let c = Config::from_toml_str(text, None).unwrap();
        assert_eq!(c.daemon.socket, Path::new("/run/runtap.sock"));
        assert_eq!((c.daemon.socket_mode, c.daemon.listen.as_str()), (0o600, "0.0.0.0:9000"));
        assert_eq!(c.runs.drain_timeout, Duration::from_millis(500));
        assert_eq!((c.runs.pty_cols, c.runs.pty_rows), (80, 24));
        assert_eq!(c.journal.retention_max_age, Duration::from_secs(86_400));
        assert_eq!(c.journal.retention_check_interval, Duration::from_secs(60));
        assert_eq!(c.stream.tokens.len(), 1);
        assert_eq!((c.stream.subscriber_queue_batches, c.stream.rate_burst), (7, 6));
        assert_eq!(c.stream.allowed_origins, ["https://ci.example"]);
        assert!(!format!("{c:?}").contains("0123456789abcdef"), "Debug must redact tokens");
    }

    #[test]
    fn file_state_dir_moves_the_default_socket() {
        let env = env_of(&[]);
        let file = parse_file("[daemon]\nstate_dir = \"/srv/rt\"\n", None).unwrap();
        let config = Config::assemble(None, file, &env).unwrap();
        assert_eq!(config.daemon.socket, Path::new("/srv/rt/runtap.sock"));
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let text = "[runs]\ngracee_period = \"1s\"\n";
        let msg = refused(text, "unknown key `runs.gracee_period` (line 2, column 1)");
        assert!(msg.contains("`grace_period`"), "lists the valid keys: {msg}");
        refused("[strem]\n", "unknown key `strem`");
    }

    #[test]
    fn bad_values_name_the_key() {
        let msg = refused("[runs]\ngrace_period = \"ten\"\n", "runs.grace_period: invalid duration \"ten\": ");
        assert!(msg.contains("line 2"), "{msg}");
        for (text, want) in [
            ("[runs]\ngrace_period = 10", "runs.grace_period: invalid type: integer `10`, expected a duration"),
            ("[stream]\nmax_frame_bytes = \"big\"", "stream.max_frame_bytes: invalid type"),
            ("[daemon]\nsocket_mode = \"0689\"", "daemon.socket_mode: invalid mode"),
            ("[daemon]\nsocket_mode = 660", "daemon.socket_mode: invalid type: integer `660`, expected a string"),
            ("[runs\n", "TOML parse error at line 1"),
        ] {
            refused(text, want);
        }
    }

    #[test]
    fn world_accessible_socket_mode_refused() {
        for mode in ["0666", "0604", "0661", "4660", "0060"] {
            refused(&format!("[daemon]\nsocket_mode = \"{mode}\""), "daemon.socket_mode: ");
        }
        for mode in ["0600", "0640", "660", "0o660"] {
            Config::from_toml_str(&format!("[daemon]\nsocket_mode = \"{mode}\""), None).unwrap();
        }
    }

    #[test]
    fn validation_names_the_key() {
        for (text, want) in [
            ("[runs]\nmax_concurrent = 0", "runs.max_concurrent: must be at least 1 (got 0)"),
            ("[runs]\npty_rows = 0", "runs.pty_rows: "),
            ("[stream]\nmax_frame_bytes = 100", "stream.max_frame_bytes: must be at least 1024"),
            ("[stream]\nmax_frame_bytes = 16777217", "stream.max_frame_bytes: must be at most"),
            ("[stream]\nping_timeout = \"25s\"", "stream.ping_timeout: "),
            ("[stream]\nsubscriber_queue_bytes = 1024", "stream.subscriber_queue_bytes: "),
            ("[journal]\nfsync_interval = \"0s\"", "journal.fsync_interval: must be greater than zero"),
            ("[daemon]\nlisten = \"localhost\"", "daemon.listen: invalid socket address \"localhost\""),
            ("[daemon]\nlog_level = \"\"", "daemon.log_level: must not be empty"),
            ("[daemon]\nlog_level = \"a=b=c\"", "daemon.log_level: invalid filter"),
        ] {
            refused(text, want);
        }
        let msg = refused("[stream]\ntokens = [\"0123456789abcdef\", \"short\"]", "stream.tokens[1]: ");
        assert!(!msg.contains("short"), "tokens must not be echoed: {msg}");
    }

    #[test]
    fn env_overrides_file_and_flags_override_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "[daemon]\nlisten = \"127.0.0.1:1000\"\nlog_level = \"warn\"\n").unwrap();
        let env = env_of(&[("RUNTAP_LISTEN", "127.0.0.1:2000"), ("RUNTAP_STATE_DIR", "/e"), ("RUNTAP_LOG", "")]);
        let mut overrides = Overrides { config: Some(path.clone()), ..Overrides::default() };
        let config = Config::load_with(&overrides, &env).unwrap();
        assert_eq!(config.path.as_deref(), Some(path.as_path()));
        assert_eq!(config.daemon.listen, "127.0.0.1:2000");
        assert_eq!(config.daemon.log_level, "warn", "empty env values are ignored");
        assert_eq!(config.daemon.socket, Path::new("/e/runtap.sock"));

        overrides.listen = Some("127.0.0.1:3000".into());
        overrides.state_dir = Some("/f".into());
        let config = Config::load_with(&overrides, &env).unwrap();
        assert_eq!(config.daemon.listen, "127.0.0.1:3000");
        assert_eq!(config.daemon.socket, Path::new("/f/runtap.sock"));
        overrides.socket = Some("/s.sock".into());
        assert_eq!(Config::load_with(&overrides, &env).unwrap().daemon.socket, Path::new("/s.sock"));
    }

    #[test]
    fn missing_named_file_is_an_error() {
        let overrides = Overrides { config: Some("/nonexistent/runtap.toml".into()), ..Overrides::default() };
        let msg = Config::load_with(&overrides, env_of(&[])).unwrap_err().to_string();
        assert_eq!(msg, "config /nonexistent/runtap.toml: file not found");
        let dir = tempfile::tempdir().unwrap();
        let overrides = Overrides { config: Some(dir.path().into()), ..Overrides::default() };
        let msg = Config::load_with(&overrides, env_of(&[])).unwrap_err().to_string();
        assert!(msg.contains(": read: ") && msg.contains("os error"), "{msg}");
    }

    #[test]
    fn repo_config_toml_is_the_defaults() {
        let c = Config::from_toml_str(include_str!("../config.toml"), Some(Path::new("config.toml"))).unwrap();
        let d = Config::default();
        assert_eq!((c.daemon, c.runs, c.journal, c.stream), (d.daemon, d.runs, d.journal, d.stream));
    }
}
