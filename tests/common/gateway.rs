//! A `runtap gateway` under test, and daemons that forward to it.

use std::path::{Path, PathBuf};

use super::{Daemon, Instance};

/// A `runtap gateway` on a fixed loopback port (chosen up front), so it can
/// be killed and restarted at the same address the daemons forward to.
pub struct Gateway {
    process: Instance,
    /// `127.0.0.1:PORT`, the same across restarts.
    pub addr: String,
}

impl std::ops::Deref for Gateway {
    type Target = Instance;
    fn deref(&self) -> &Instance {
        &self.process
    }
}

impl std::ops::DerefMut for Gateway {
    fn deref_mut(&mut self) -> &mut Instance {
        &mut self.process
    }
}

impl Gateway {
    pub fn start() -> Gateway {
        Gateway::start_with("")
    }

    pub fn start_with(config: &str) -> Gateway {
        let mut g = Gateway::prepare(config);
        g.spawn();
        g
    }

    /// A gateway not started yet; its port is picked now.
    pub fn prepare(config: &str) -> Gateway {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Gateway { process: Instance::new("gateway", config), addr: format!("127.0.0.1:{port}") }
    }

    /// (Re)starts the gateway on the same state dir and port; waits until it accepts.
    pub fn spawn(&mut self) {
        let addr = self.addr.clone();
        self.process.launch(|cmd| {
            cmd.arg("--listen").arg(addr);
        });
    }

    /// The file holding the host (agent) token.
    pub fn agent_token_path(&self) -> PathBuf {
        self.state_dir().join("agent-token")
    }

    pub fn agent_token(&self) -> String {
        std::fs::read_to_string(self.agent_token_path()).unwrap().trim().to_owned()
    }

    /// The `--upstream` URL for daemons.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{}", self.addr, path_and_query)
    }

    /// The gateway's journal of one host's run.
    pub fn events_path(&self, host: &str, run: &str) -> PathBuf {
        self.state_dir().join("hosts").join(host).join("runs").join(run).join("events.jsonl")
    }

    /// A daemon (not started) that forwards to this gateway as `host`.
    pub fn prepare_host(&self, host: &str) -> Daemon {
        let mut d = Daemon::prepare("");
        d.extra_args = upstream_args(&self.url(), host, &self.agent_token_path());
        d
    }

    /// A started daemon forwarding to this gateway as `host`.
    pub fn start_host(&self, host: &str) -> Daemon {
        let mut d = self.prepare_host(host);
        d.spawn();
        d
    }
}

/// `--upstream URL --host-id HOST --upstream-token-file FILE`.
pub fn upstream_args(url: &str, host: &str, token_file: &Path) -> Vec<String> {
    upstreams_args(&[url.to_owned()], host, token_file)
}

/// `--upstream URL1 --upstream URL2 ... --host-id HOST --upstream-token-file
/// FILE`: a daemon that tries the URLs in turn and fails over (issue 16).
pub fn upstreams_args(urls: &[String], host: &str, token_file: &Path) -> Vec<String> {
    assert!(!urls.is_empty(), "no upstream URL");
    let mut args: Vec<String> = urls.iter().flat_map(|u| ["--upstream".to_owned(), u.clone()]).collect();
    args.extend(["--host-id".into(), host.into(), "--upstream-token-file".into(), token_file.display().to_string()]);
    args
}
