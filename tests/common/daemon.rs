//! A `runtap daemon` under test, and the socket client calls tests use on it.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use runtap::client::{Client, Line};
use runtap::event::{Event, RunStatus};
use runtap::protocol::unix::{Request, Response};

use super::{Instance, WAIT, bin, output_with_timeout};

pub struct Daemon {
    process: Instance,
    /// The HTTP/WebSocket address, read from the daemon's ready line.
    pub addr: String,
    /// Extra environment for the daemon process.
    pub env: Vec<(String, String)>,
    /// Extra command-line arguments, appended after the harness's own.
    pub extra_args: Vec<String>,
}

impl std::ops::Deref for Daemon {
    type Target = Instance;
    fn deref(&self) -> &Instance {
        &self.process
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut Instance {
        &mut self.process
    }
}

impl Daemon {
    /// Starts a daemon with `config` (TOML) merged into a temp config file.
    pub fn start_with(config: &str) -> Daemon {
        let mut d = Daemon::prepare(config);
        d.spawn();
        d
    }

    /// A daemon not started yet (to set `env` first).
    pub fn prepare(config: &str) -> Daemon {
        Daemon {
            process: Instance::new("daemon", config),
            addr: String::new(),
            env: Vec::new(),
            extra_args: Vec::new(),
        }
    }

    pub fn start() -> Daemon {
        Daemon::start_with("")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("runtap.sock")
    }

    /// (Re)starts the daemon process on the same state dir and waits until it accepts.
    pub fn spawn(&mut self) {
        let (socket, extra_args, env) = (self.socket(), self.extra_args.clone(), self.env.clone());
        let line = self.process.launch(|cmd| {
            cmd.arg("--socket").arg(socket).args(["--listen", "127.0.0.1:0"]).args(extra_args);
            cmd.env_remove("RUNTAP_SOCKET").envs(env);
        });
        self.addr = line.split_whitespace().find_map(|w| w.strip_prefix("listen=")).unwrap().to_owned();
    }

    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{}", self.addr, path_and_query)
    }

    pub fn http_url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    /// A `runtap` CLI command pointed at this daemon.
    pub fn cli(&self) -> Command {
        let mut c = Command::new(bin());
        c.env("RUNTAP_SOCKET", self.socket());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let mut c = self.cli();
        c.args(args).stdin(Stdio::null());
        output_with_timeout(c, WAIT)
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.socket()).await.unwrap()
    }

    /// Waits (through the daemon's own stream) for a run's final status event.
    pub async fn wait_final(&self, id: &str) -> Event {
        tokio::time::timeout(WAIT, async {
            let mut c = self.client().await;
            c.send(&Request::Subscribe { run_id: id.into(), since: 0, follow: true }).await.unwrap();
            loop {
                match c.next().await.unwrap() {
                    Line::Event(ev) if ev.status().is_some_and(RunStatus::is_final) => return *ev,
                    _ => {}
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("run {id} did not finish in time:\n{}", self.log()))
    }

    /// Waits for a run's `running` event and returns its pid.
    pub async fn wait_running(&self, id: &str) -> u32 {
        tokio::time::timeout(WAIT, async {
            let mut c = self.client().await;
            c.send(&Request::Subscribe { run_id: id.into(), since: 0, follow: true }).await.unwrap();
            loop {
                if let Line::Event(ev) = c.next().await.unwrap()
                    && ev.status() == Some(RunStatus::Running)
                {
                    return ev.pid.unwrap();
                }
            }
        })
        .await
        .expect("run did not start in time")
    }

    /// All events of a run (it must be finished).
    pub async fn events(&self, id: &str) -> Vec<Event> {
        let mut c = self.client().await;
        c.send(&Request::Subscribe { run_id: id.into(), since: 0, follow: false }).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(WAIT, async {
            loop {
                match c.next().await.unwrap() {
                    Line::Event(ev) => out.push(*ev),
                    Line::Control(Response::End { .. }) => break,
                    Line::Control(_) => {}
                }
            }
        })
        .await
        .expect("history in time");
        out
    }

    pub async fn request(&self, req: Request) -> Response {
        let mut c = self.client().await;
        c.send(&req).await.unwrap();
        match tokio::time::timeout(WAIT, c.next()).await.unwrap().unwrap() {
            Line::Control(r) => r,
            Line::Event(e) => panic!("unexpected event {e:?}"),
        }
    }
}
