//! `[gateway] engine = "nats"`: any number of interchangeable replicas
//! sharing one NATS JetStream deployment (docs/gateway.md).
//!
//! - `names`: subjects, buckets, keys, headers; `store`: the stream, the
//!   fenced append, direct gets.
//! - `link`: a host's `/agent` link at this replica (appends).
//! - `history`, `live`: what a viewer here reads (direct gets, then one
//!   subscription per watched run into the host's hub).
//! - `index`: the hosts and runs buckets, mirrored here (`mirror`).
//! - `cancel`: cancels routed to the replica holding the host.
//! - `backend`: all of it as the server's `Backend`.
//!
//! A replica keeps nothing on its disk but its tokens: any replica can be
//! killed, and any other serves every host and viewer.

mod backend;
mod cancel;
mod history;
mod index;
mod link;
mod live;
mod mirror;
mod names;
mod run_link;
mod store;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::GatewayConfig;
use crate::run_id::RunId;
use crate::server::backend::LookupError;
use index::{Index, RunEntry};
use live::Live;
pub(crate) use store::StoreError;

use store::Store;

/// The buckets are read through before the replica says it is ready; this
/// bounds that wait (a NATS that answers nothing).
const LOAD_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub(crate) struct NatsGateway {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    index: Arc<Index>,
    live: Live,
    config: Mutex<GatewayConfig>,
    /// This process, in the hosts bucket: a restarted replica is a new holder.
    replica: String,
    events_in: AtomicU64,
    duplicates: AtomicU64,
}

impl NatsGateway {
    /// Connects, sets up the stream and buckets, and reads the buckets.
    /// A NATS that is down, or a cluster still electing its leaders, is
    /// waited for (the caller bounds it by the gateway's shutdown); a
    /// setting JetStream refuses is an error at once.
    pub(crate) async fn open(config: GatewayConfig, stop: CancellationToken) -> Result<NatsGateway, StoreError> {
        let mut wait = Duration::from_millis(250);
        let (store, index) = loop {
            match Self::connect(&config, &stop).await {
                Ok(both) => break both,
                // JetStream answered with a refusal (its error code), not
                // "temporarily unavailable" (10008): the config is wrong.
                Err(StoreError::Setup(e)) if e.contains("error code") && !e.contains("10008") => {
                    return Err(StoreError::Setup(e));
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?wait, "JetStream not ready; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        };
        let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
        let replica = format!("{host}-{}", RunId::generate());
        tracing::info!(replica, urls = ?config.nats_url, "connected to NATS JetStream");
        let live = Live::new(store.clone(), stop);
        Ok(NatsGateway {
            inner: Arc::new(Inner {
                store,
                index,
                live,
                config: Mutex::new(config),
                replica,
                events_in: AtomicU64::new(0),
                duplicates: AtomicU64::new(0),
            }),
        })
    }

    async fn connect(config: &GatewayConfig, stop: &CancellationToken) -> Result<(Store, Arc<Index>), StoreError> {
        let store = Store::open(config).await?;
        let index = Index::new();
        let mine = stop.child_token();
        let mut loaded = index.follow(store.hosts.clone(), store.runs.clone(), mine.clone());
        let both = loaded.wait_for(|n| *n >= 2);
        match tokio::time::timeout(LOAD_TIMEOUT, both).await {
            Ok(Ok(_)) => Ok((store, index)),
            _ => {
                mine.cancel();
                Err(StoreError::Request("reading the hosts and runs buckets timed out".into()))
            }
        }
    }

    pub(crate) fn config(&self) -> GatewayConfig {
        self.inner.config.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A reload: timings and tokens apply; where NATS is and the stream's
    /// limits need a restart.
    pub(crate) fn set_config(&self, new: GatewayConfig) {
        *self.inner.config.lock().unwrap_or_else(|p| p.into_inner()) = new;
    }

    fn store(&self) -> &Store {
        &self.inner.store
    }

    fn index(&self) -> &Index {
        &self.inner.index
    }

    fn replica(&self) -> &str {
        &self.inner.replica
    }

    fn count_appended(&self, n: u64) {
        self.inner.events_in.fetch_add(n, Ordering::Relaxed);
    }

    fn count_duplicate(&self) {
        self.inner.duplicates.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn hosts_known(&self) -> usize {
        self.index().hosts.lock().map_or(0, |h| h.len())
    }

    /// The row of a run: by host, or by ID across hosts (unique there).
    fn resolve(&self, host: Option<&str>, run: &RunId) -> Result<RunEntry, LookupError> {
        match host {
            Some(h) => self.index().run(h, run).ok_or_else(|| match self.index().host(h) {
                Some(_) => LookupError::NotFound(run.to_string()),
                None => LookupError::UnknownHost(h.to_owned()),
            }),
            None => {
                let mut holders = self.index().holders(run);
                match holders.len() {
                    1 => Ok(holders.remove(0)),
                    0 => Err(LookupError::NotFound(run.to_string())),
                    _ => {
                        let names: Vec<_> = holders.iter().map(|e| e.host.clone()).collect();
                        Err(LookupError::Ambiguous(run.clone(), names.join(", ")))
                    }
                }
            }
        }
    }
}
