//! A TCP proxy for one host's link with every network fault the soak
//! injects: cut (both ends dropped), refuse (new connections closed at
//! once) and hold (connections stay open but no byte moves, as on a
//! network that went silent). `proxy.rs` has the first two; this one adds
//! hold, so a link can stall without closing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Bytes one direction reads before forwarding: at most this much is in
/// flight inside the proxy when a hold begins.
const PUMP_BUFFER: usize = 16 * 1024;

struct LinkState {
    refusing: AtomicBool,
    accepted: AtomicU64,
    /// True while held; every pump waits on it before reading and writing.
    held: watch::Sender<bool>,
    conns: Mutex<Vec<tokio::task::AbortHandle>>,
}

pub struct FaultyLink {
    pub addr: String,
    state: Arc<LinkState>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultyLink {
    pub async fn start(target: String) -> FaultyLink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(LinkState {
            refusing: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            held: watch::channel(false).0,
            conns: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                if st.refusing.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                st.accepted.fetch_add(1, Ordering::SeqCst);
                let (target, held) = (target.clone(), st.held.subscribe());
                let task = tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&target).await {
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        tokio::join!(pump(cr, sw, held.clone()), pump(sr, cw, held));
                    }
                });
                let mut conns = st.conns.lock().unwrap();
                conns.retain(|c| !c.is_finished());
                conns.push(task.abort_handle());
            }
        });
        FaultyLink { addr, state, accept }
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

    /// While on, new connections are accepted and closed at once.
    pub fn refuse(&self, on: bool) {
        self.state.refusing.store(on, Ordering::SeqCst);
    }

    /// While on, no byte moves through any connection, old or new.
    pub fn hold(&self, on: bool) {
        self.state.held.send_replace(on);
    }

    /// Back to a healthy link: not refusing, not held.
    pub fn restore(&self) {
        self.refuse(false);
        self.hold(false);
    }

    pub fn accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultyLink {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Copies `from` to `to` until EOF or an error, never while held; then
/// half-closes `to`, as `copy_bidirectional` does.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut held: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; PUMP_BUFFER];
    loop {
        if held.wait_for(|h| !*h).await.is_err() {
            break;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if held.wait_for(|h| !*h).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
