//! A TCP proxy in front of the gateway that can cut every connection, and
//! send new ones elsewhere (to another gateway replica: a daemon with one
//! upstream URL that still fails over).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
pub struct ProxyState {
    /// Where new connections go (`HOST:PORT`); open ones stay where they are.
    target: Mutex<String>,
    refusing: AtomicBool,
    accepted: AtomicU64,
    conns: Mutex<Vec<tokio::task::AbortHandle>>,
}

pub struct Proxy {
    pub addr: String,
    state: Arc<ProxyState>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(ProxyState { target: Mutex::new(target), ..ProxyState::default() });
        let st = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { continue };
                if st.refusing.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                st.accepted.fetch_add(1, Ordering::SeqCst);
                let target = st.target.lock().unwrap().clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                let mut conns = st.conns.lock().unwrap();
                conns.retain(|c| !c.is_finished());
                conns.push(task.abort_handle());
            }
        });
        Proxy { addr, state, accept }
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Drops every connection through the proxy, both ends.
    pub fn cut(&self) {
        for c in self.state.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// New connections go to `target` from now on; open ones are kept
    /// (cut them too for a move).
    pub fn retarget(&self, target: &str) {
        *self.state.target.lock().unwrap() = target.to_owned();
    }

    /// While on, new connections are accepted and closed at once.
    pub fn refuse(&self, on: bool) {
        self.state.refusing.store(on, Ordering::SeqCst);
    }

    pub fn accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
