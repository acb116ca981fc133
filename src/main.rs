//! The `runtap` binary: parse arguments, set up logging, hand off to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use runtap::client::{self, EXIT_RUNTAP_ERROR, RunOptions};
use runtap::config::{self, Config, Overrides};
use runtap::daemon::{self, Listeners};
use runtap::logging::LogHandle;
use tokio::sync::mpsc;

#[derive(Parser)]
#[command(name = "runtap", version, about = "Supervise job processes, journal their output, stream it.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct SocketArg {
    /// The daemon's Unix socket [default: the daemon's embedded default]
    #[arg(long, env = "RUNTAP_SOCKET", global = true)]
    socket: Option<PathBuf>,
}

impl SocketArg {
    /// Same fallback as the daemon: RUNTAP_STATE_DIR, then the embedded default.
    fn path(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(|| {
            let state = std::env::var_os("RUNTAP_STATE_DIR")
                .filter(|s| !s.is_empty())
                .map_or_else(config::default_state_dir, PathBuf::from);
            config::default_socket(&state)
        })
    }
}

/// `logs`, `cancel` and `ps` over the network instead of the socket.
#[derive(clap::Args)]
struct RemoteArg {
    /// http:// or https:// address of a daemon or gateway [env: RUNTAP_URL]; the socket is then not used
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// File holding the token for --url [env: RUNTAP_TOKEN_FILE; else the token itself in RUNTAP_TOKEN]
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// At a gateway: the host the run is on
    #[arg(long, value_name = "HOST")]
    host: Option<String>,
}

impl RemoteArg {
    /// The daemon or gateway to ask, or `None` for the Unix socket.
    fn resolve(self) -> Result<Option<client::Remote>, client::ClientError> {
        let args = client::RemoteArgs { url: self.url, token_file: self.token_file, host: self.host };
        client::Remote::from_args(args, |name| std::env::var(name).ok())
    }
}

#[derive(Subcommand)]
enum Command {
    /// A run's supervisor process, started by the daemon (not by hand):
    /// reads its launch order on stdin.
    #[command(hide = true)]
    Shim {
        /// Shown in `ps`; the launch order says which run.
        #[arg(long)]
        run_id: Option<String>,
    },
    /// Run the per-host daemon in the foreground.
    Daemon {
        /// Config file (TOML); embedded defaults without one.
        #[arg(long, env = "RUNTAP_CONFIG")]
        config: Option<PathBuf>,
        /// HTTP/WebSocket listen address.
        #[arg(long)]
        listen: Option<String>,
        /// Unix socket path.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Where journals and the token live.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Forward every event to the gateway at this ws:// or wss:// URL.
        /// Repeat for several gateways, tried in turn; replaces upstream.url.
        #[arg(long, value_name = "URL")]
        upstream: Vec<String>,
        /// This host's name at the gateway [default: the hostname].
        #[arg(long)]
        host_id: Option<String>,
        /// File holding the gateway's agent token.
        #[arg(long)]
        upstream_token_file: Option<PathBuf>,
    },
    /// Run the central gateway that host daemons forward to.
    Gateway {
        /// Config file (TOML); embedded defaults without one.
        #[arg(long, env = "RUNTAP_CONFIG")]
        config: Option<PathBuf>,
        /// HTTP/WebSocket listen address (viewers and hosts).
        #[arg(long)]
        listen: Option<String>,
        /// Where the hosts' journals and the tokens live.
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Launch a command through the daemon and stream its output.
    Run {
        /// Run ID (default: a time-sortable one made by the daemon).
        #[arg(long)]
        id: Option<String>,
        /// Give the job a pseudo-terminal.
        #[arg(long)]
        pty: bool,
        /// Print the run ID and exit without waiting.
        #[arg(long)]
        detach: bool,
        #[command(flatten)]
        socket: SocketArg,
        /// The command and its arguments (after `--`).
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
    /// Print a run's output from its journal.
    Logs {
        /// Follow until the run ends.
        #[arg(short, long)]
        follow: bool,
        /// Only events after this seq.
        #[arg(long, default_value_t = 0)]
        since: u64,
        id: String,
        #[command(flatten)]
        socket: SocketArg,
        #[command(flatten)]
        remote: RemoteArg,
    },
    /// Cancel a run (SIGTERM to its process group, SIGKILL after the grace period).
    Cancel {
        id: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        socket: SocketArg,
        #[command(flatten)]
        remote: RemoteArg,
    },
    /// List runs and their status.
    Ps {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
        #[command(flatten)]
        remote: RemoteArg,
    },
    /// Inside a job: report a step of its run (start, end, or a log line).
    Step {
        #[command(subcommand)]
        action: StepAction,
    },
    /// Inside a job: report its progress (a fraction from 0 to 1).
    Progress {
        fraction: f64,
        /// The stage it is in.
        #[arg(long)]
        stage: Option<String>,
        message: Option<String>,
    },
}

#[derive(Subcommand)]
enum StepAction {
    /// A step starts; output until it ends belongs to it.
    Start {
        id: String,
        /// A name for people [default: the ID].
        #[arg(long)]
        name: Option<String>,
    },
    /// A step ends.
    End {
        id: String,
        #[arg(long, default_value = "success", value_parser = ["success", "failure", "skipped"])]
        status: String,
    },
    /// A log line, in the step that is open.
    Log {
        #[arg(long, default_value = "info", value_parser = ["debug", "info", "warn", "error"])]
        level: String,
        message: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Daemon { config, listen, socket, state_dir, upstream, host_id, upstream_token_file } => {
            let overrides = Overrides { config, state_dir, socket, listen, upstream, host_id, upstream_token_file };
            match run_daemon(&overrides) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("runtap: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Gateway { config, listen, state_dir } => {
            let overrides = Overrides { config, state_dir, listen, ..Overrides::default() };
            match run_gateway(&overrides) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("runtap: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Shim { .. } => runtap::shim_main(),
        other => ExitCode::from(run_client(other).clamp(0, 255) as u8),
    }
}

fn run_daemon(overrides: &Overrides) -> anyhow::Result<()> {
    let config = Config::load(overrides)?;
    let log = runtap::logging::init(&config.daemon.log_level);
    match runtap::sys::raise_fd_limit() {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(error) => tracing::warn!(%error, "could not raise the open file limit"),
    }
    if let Err(error) = runtap::sys::cloexec_inherited_fds() {
        tracing::warn!(%error, "could not mark inherited fds close-on-exec; jobs may inherit them");
    }
    let runtime = tokio::runtime::Runtime::new().context("start tokio runtime")?;
    runtime.block_on(async {
        let listeners = Listeners::bind(&config).await?;
        let shutdown = CancellationToken::new();
        let (reload_tx, reload_rx) = mpsc::unbounded_channel();
        tokio::spawn(watch_signals(shutdown.clone(), overrides.clone(), log, reload_tx));
        daemon::run(config, listeners, shutdown, reload_rx).await?;
        Ok(())
    })
}

fn run_gateway(overrides: &Overrides) -> anyhow::Result<()> {
    let mut config = Config::load(overrides)?;
    if overrides.state_dir.is_none() && std::env::var_os("RUNTAP_STATE_DIR").is_none() {
        // Not the daemon's default dir: a host may run both.
        config.daemon.state_dir = runtap::gateway::default_state_dir(&config.daemon.state_dir);
    }
    let log = runtap::logging::init(&config.daemon.log_level);
    if let Err(error) = runtap::sys::raise_fd_limit() {
        tracing::warn!(%error, "could not raise the open file limit");
    }
    let runtime = tokio::runtime::Runtime::new().context("start tokio runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&config.daemon.listen)
            .await
            .with_context(|| format!("bind {}", config.daemon.listen))?;
        let shutdown = CancellationToken::new();
        let (reload_tx, reload_rx) = mpsc::unbounded_channel();
        tokio::spawn(watch_signals(shutdown.clone(), overrides.clone(), log, reload_tx));
        runtap::gateway::run(config, listener, shutdown, reload_rx).await?;
        Ok(())
    })
}

/// SIGTERM/SIGINT: graceful shutdown; a second one exits at once.
/// SIGHUP: re-read the config; a bad one is logged and the old one stays.
async fn watch_signals(
    shutdown: CancellationToken,
    overrides: Overrides,
    log: LogHandle,
    reloads: mpsc::UnboundedSender<Config>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
    else {
        tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = hup.recv() => {
                runtap::systemd::reloading();
                match Config::load(&overrides) {
                    Ok(config) => {
                        if let Err(error) = log.set_level(&config.daemon.log_level) {
                            tracing::error!(%error, "reload: bad log level; keeping the old one");
                        }
                        let _ = reloads.send(config);
                    }
                    Err(error) => {
                        tracing::error!(%error, "reload refused: keeping the old config");
                        runtap::systemd::ready("reload refused; old config in force");
                    }
                }
                continue;
            }
        }
        if shutdown.is_cancelled() {
            tracing::warn!("second signal: exiting now");
            std::process::exit(1);
        }
        shutdown.cancel();
    }
}

fn run_client(command: Command) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtap: start runtime: {e}");
            return EXIT_RUNTAP_ERROR;
        }
    };
    let is_run = matches!(command, Command::Run { .. });
    let result = runtime.block_on(async {
        match command {
            Command::Run { id, pty, detach, socket, command } => {
                client::run(&socket.path(), RunOptions { id, pty, detach, command }).await
            }
            Command::Logs { follow, since, id, socket, remote } => match remote.resolve()? {
                Some(r) => client::remote::logs(&r, &id, since, follow).await,
                None => client::logs(&socket.path(), &id, since, follow).await,
            },
            Command::Cancel { id, reason, socket, remote } => match remote.resolve()? {
                Some(r) => client::remote::cancel(&r, &id, reason).await,
                None => client::cancel(&socket.path(), &id, reason).await,
            },
            Command::Ps { json, socket, remote } => match remote.resolve()? {
                Some(r) => client::remote::ps(&r, json).await,
                None => client::ps(&socket.path(), json).await,
            },
            Command::Step { action } => client::step(match action {
                StepAction::Start { id, name } => client::StepReport::Start { id, name },
                StepAction::End { id, status } => client::StepReport::End { id, status },
                StepAction::Log { level, message } => client::StepReport::Log { level, message },
            }),
            Command::Progress { fraction, stage, message } => client::progress(fraction, stage, message),
            Command::Daemon { .. } | Command::Gateway { .. } | Command::Shim { .. } => Ok(0),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("runtap: {e}");
            // `run` mirrors the job's exit code, so its own failures use 125.
            match e {
                client::ClientError::Refused { .. } if !is_run => 1,
                _ => EXIT_RUNTAP_ERROR,
            }
        }
    }
}
