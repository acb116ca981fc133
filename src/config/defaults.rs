//! Every bound the daemon enforces, as a named default with the reason for it.

use std::time::Duration;

use super::{
    DaemonConfig, GatewayConfig, GatewayEngine, JournalConfig, RunsConfig, ShutdownPolicy, SocketIoConfig, StreamConfig,
};

pub(super) const KIB: usize = 1024;
pub(super) const MIB: usize = 1024 * KIB;

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
/// The longest a complete line waits to join the next event (see `runs.coalesce`).
pub const DEFAULT_COALESCE: Duration = Duration::from_millis(20);
/// PTY width for `--pty` runs.
pub const DEFAULT_PTY_COLS: u16 = 160;
/// PTY height for `--pty` runs.
pub const DEFAULT_PTY_ROWS: u16 = 100;
/// Gateway: events are fsynced and acknowledged to hosts in batches this often.
pub const DEFAULT_ACK_INTERVAL: Duration = Duration::from_millis(100);
/// Gateway: a cancel routed to a host that does not answer in this time gets 504.
pub const DEFAULT_CANCEL_TIMEOUT: Duration = Duration::from_secs(10);
/// `[gateway] nats_max_age`: a week, as a host keeps its own runs.
pub const DEFAULT_NATS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// `[gateway] nats_max_bytes`: 1 GiB. JetStream sets this much aside on its
/// disk when it creates the stream, and refuses a stream larger than its
/// `max_file_store` (by default 75 % of the free disk): a default any
/// server accepts, to be raised to what the deployment's disks hold.
pub const DEFAULT_NATS_MAX_BYTES: u64 = 1024 * 1024 * 1024;
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
/// Socket.IO `/workflow`: `subscribe` events per minute per connection (the seed dashboards' limit).
pub const DEFAULT_SIO_SUBSCRIBE_PER_MINUTE: u32 = 10;
/// Socket.IO `/workflow`: `unsubscribe` events per minute per connection.
pub const DEFAULT_SIO_UNSUBSCRIBE_PER_MINUTE: u32 = 20;
/// Socket.IO `/workflow`: `ping` events per minute per connection.
pub const DEFAULT_SIO_PING_PER_MINUTE: u32 = 30;
/// Socket.IO `/workflow`: `get_status` events per minute per connection.
pub const DEFAULT_SIO_GET_STATUS_PER_MINUTE: u32 = 10;
/// Socket.IO `/workflow`: how often a `metrics` subscription gets `metrics.updated`.
pub const DEFAULT_SIO_METRICS_INTERVAL: Duration = Duration::from_secs(5);
/// Shortest accepted token, so a configured token cannot be guessed.
pub const MIN_TOKEN_LEN: usize = 16;

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            agent_tokens: Vec::new(),
            ack_interval: DEFAULT_ACK_INTERVAL,
            cancel_timeout: DEFAULT_CANCEL_TIMEOUT,
            engine: GatewayEngine::Local,
            nats_url: Vec::new(),
            nats_replicas: 1,
            nats_max_age: DEFAULT_NATS_MAX_AGE,
            nats_max_bytes: DEFAULT_NATS_MAX_BYTES,
        }
    }
}

/// Reads `XDG_STATE_HOME` and `XDG_RUNTIME_DIR` (see [`default_state_dir`], [`default_socket`]).
impl Default for DaemonConfig {
    fn default() -> Self {
        super::layers::DaemonLayer::default().resolve(&super::layers::process_env)
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
            shutdown_policy: ShutdownPolicy::Detach,
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
            read_only_tokens: Vec::new(),
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
            socketio: SocketIoConfig::default(),
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        Self {
            subscribe_per_minute: DEFAULT_SIO_SUBSCRIBE_PER_MINUTE,
            unsubscribe_per_minute: DEFAULT_SIO_UNSUBSCRIBE_PER_MINUTE,
            ping_per_minute: DEFAULT_SIO_PING_PER_MINUTE,
            get_status_per_minute: DEFAULT_SIO_GET_STATUS_PER_MINUTE,
            metrics_interval: DEFAULT_SIO_METRICS_INTERVAL,
        }
    }
}
