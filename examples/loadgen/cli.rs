//! Command line: modes, the server a run talks to, per-mode options.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(about = "runtap benchmark load generator")]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) mode: Mode,
}

#[derive(Subcommand)]
pub(crate) enum Mode {
    /// N subscribers to one run that is launched once all are ready.
    Stream(StreamArgs),
    /// N idle subscribers to an idle run: RSS per subscriber, idle CPU.
    Idle(IdleArgs),
    /// Short runs launched over runtap's Unix socket, per second.
    Launches(LaunchArgs),
    /// Runs that write a burst and then stay alive idle: runtap's RSS then.
    IdleRuns(IdleRunsArgs),
    /// Connection set-up rate: connect (TLS), upgrade or GET, close; repeat.
    Handshakes(HandshakeArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub(crate) enum Proto {
    Runtap,
    Ws,
    Socketio,
    /// runtap's own Socket.IO endpoint (path `/runs/`, the run in the handshake query).
    RuntapSocketio,
}

impl Proto {
    /// Launched and cancelled over runtap's Unix socket.
    pub(crate) fn is_runtap(self) -> bool {
        matches!(self, Proto::Runtap | Proto::RuntapSocketio)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub(crate) enum Scan {
    /// Every line of every frame is a latency sample.
    All,
    /// Only the first (oldest) line of each frame; lines are counted by index.
    Ends,
}

/// How a subscriber reads each text frame.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub(crate) enum Decode {
    /// A byte scan of the frame for its `type` and the job's line heads; the
    /// JSON is never decoded (cheap: the client stays out of the way).
    Light,
    /// Every frame fully parsed (`serde_json::Value`, as a dashboard's
    /// `JSON.parse`), then `seq`, `type` and `data` read from the value;
    /// `data` is reassembled into lines and every line is checked.
    Json,
}

#[derive(Args, Clone, Debug)]
pub(crate) struct Target {
    #[arg(long, value_enum)]
    pub(crate) proto: Proto,
    /// HOST:PORT of the server's HTTP/WebSocket listener.
    #[arg(long)]
    pub(crate) addr: String,
    #[arg(long, default_value = "")]
    pub(crate) token: String,
    /// runtap's Unix socket (launch and cancel for `--proto runtap`).
    #[arg(long)]
    pub(crate) socket: Option<PathBuf>,
    /// Server process to sample for RSS and CPU.
    #[arg(long)]
    pub(crate) server_pid: Option<u32>,
    #[arg(long)]
    pub(crate) run_id: String,
    /// At a gateway: the host the run is on (`&host=HOST` on each
    /// subscription). The run is still launched over `--socket`, which is
    /// then that host daemon's.
    #[arg(long)]
    pub(crate) host: Option<String>,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    pub(crate) connect_concurrency: usize,
    /// PEM file of the CA that signed the server's certificate: connect
    /// with `wss://` (rustls, `ring`), the host of `--addr` as the server
    /// name, ALPN `http/1.1`, no session resumption.
    #[arg(long)]
    pub(crate) tls_ca: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct StreamArgs {
    #[command(flatten)]
    pub(crate) target: Target,
    #[arg(long)]
    pub(crate) subs: usize,
    /// Spread the subscribers round-robin over these HOST:PORT listeners
    /// (e.g. gateway replicas) instead of `--addr` alone; the report then
    /// adds `by_addr`, latency and completeness per listener.
    #[arg(long, value_delimiter = ',')]
    pub(crate) spread: Vec<String>,
    /// Extra subscribers that connect and subscribe, then never read.
    #[arg(long, default_value_t = 0)]
    pub(crate) stalled: usize,
    /// Lines the job writes (to check every subscriber got all of them).
    #[arg(long)]
    pub(crate) expect_lines: u64,
    #[arg(long, value_enum, default_value = "ends")]
    pub(crate) scan: Scan,
    #[arg(long, value_enum, default_value = "light")]
    pub(crate) decode: Decode,
    /// Resubscriptions (with `since`) allowed per subscriber after a `lagged`
    /// close by runtap; 0 = a cut-off subscriber stays incomplete.
    #[arg(long, default_value_t = 1000)]
    pub(crate) resubscribe: u32,
    /// Each subscriber spends this long on every text frame it receives
    /// (paced sleep; see `subscriber::Pace`). 0 = none.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) slow_ms: f64,
    /// `--decode json`: also require exactly this many stdout bytes.
    #[arg(long)]
    pub(crate) expect_bytes: Option<u64>,
    /// A file the job writes its own wall time into (`bench/jobs/lines.py`'s
    /// 4th argument); removed before the launch, waited for after it.
    #[arg(long)]
    pub(crate) job_time_file: Option<PathBuf>,
    #[arg(long, default_value_t = 150.0)]
    pub(crate) timeout: f64,
    /// The job.
    #[arg(last = true, required = true)]
    pub(crate) command: Vec<String>,
}

#[derive(Args, Debug)]
pub(crate) struct IdleArgs {
    #[command(flatten)]
    pub(crate) target: Target,
    #[arg(long)]
    pub(crate) subs: usize,
    /// Pause after the last subscriber is ready before measuring RSS.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) settle: f64,
    /// Window over which the server's CPU use is measured.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) cpu_window: f64,
    /// The idle job (e.g. `sleep 600`).
    #[arg(last = true, required = true)]
    pub(crate) command: Vec<String>,
}

/// What a `handshakes` connection does once TCP (and TLS) is up.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub(crate) enum SetUp {
    /// WebSocket upgrade to the run (`/runs?runId=&token=`), up to its
    /// first text frame, then a close handshake: what a dashboard does.
    Ws,
    /// `GET /healthz` over HTTP/1.1 with `connection: close`, read to the end.
    Healthz,
}

#[derive(Args, Debug)]
pub(crate) struct HandshakeArgs {
    #[command(flatten)]
    pub(crate) target: Target,
    /// Seconds each kind of set-up is repeated for.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) secs: f64,
    /// Workers, each with one connection at a time.
    #[arg(long, default_value_t = 32)]
    pub(crate) concurrency: usize,
    /// Kinds of set-up, measured one after the other.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "ws,healthz")]
    pub(crate) set_up: Vec<SetUp>,
    /// The idle job whose run the WebSocket connections subscribe to.
    #[arg(last = true, required = true)]
    pub(crate) command: Vec<String>,
}

#[derive(Args, Debug)]
pub(crate) struct LaunchArgs {
    #[arg(long)]
    pub(crate) socket: PathBuf,
    #[arg(long, default_value_t = 5.0)]
    pub(crate) duration: f64,
    /// Runs in flight at once (runtap's default `runs.max_concurrent` is 64).
    #[arg(long, default_value_t = 32)]
    pub(crate) window: usize,
    #[arg(long, default_value = "launch")]
    pub(crate) prefix: String,
    /// Also measure spawning `true` directly from this process, as a ceiling.
    #[arg(long)]
    pub(crate) reference: bool,
}

#[derive(Args, Debug)]
pub(crate) struct IdleRunsArgs {
    /// runtap's Unix socket.
    #[arg(long)]
    pub(crate) socket: PathBuf,
    #[arg(long)]
    pub(crate) server_pid: u32,
    #[arg(long, default_value_t = 10)]
    pub(crate) runs: usize,
    /// Bytes each run writes to stdout at once before going idle.
    #[arg(long, default_value_t = 16_000_000)]
    pub(crate) bytes: u64,
    /// How long each run stays alive (idle) after its burst, in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub(crate) hold: f64,
    /// Idle time after the last burst before the RSS that is reported.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) settle: f64,
    /// Directory for the runs' "burst written" marker files.
    #[arg(long)]
    pub(crate) marker_dir: PathBuf,
    #[arg(long, default_value = "idle-run")]
    pub(crate) prefix: String,
    #[arg(long, default_value_t = 120.0)]
    pub(crate) timeout: f64,
}
