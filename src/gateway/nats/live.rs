//! Live events at a replica: one core subscription per watched run (to
//! the stream's republish of its subject), feeding the host's hub, which
//! fans out to every viewer here as on a daemon.
//!
//! Only stored chunks are republished, each with the stream sequence of
//! the one before it on its subject (`Nats-Last-Sequence`). A chunk whose
//! predecessor is not the last one handed to the hub means this
//! subscription missed some (a NATS reconnect, a slow consumer): they are
//! read from the stream by direct get before it. A quiet run's tail is
//! checked now and then too, in case the chunk missed was the last one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use super::history;
use super::names::RunKey;
use super::store::{Chunk, Store, StoreError};
use crate::event::Batch;
use crate::hub::{Hub, Publisher};
use crate::run_id::RunId;

/// A quiet run's stored tail is compared with what the hub has this often.
const TAIL_CHECK: Duration = Duration::from_secs(2);

/// Every host's hub at this replica, and the runs being followed.
pub(super) struct Live {
    store: Store,
    hubs: Mutex<HashMap<String, Hub>>,
    /// One per run incarnation a viewer asked for here.
    followed: Mutex<HashMap<(String, RunId), Arc<Followed>>>,
    stop: CancellationToken,
}

struct Followed {
    incarnation: String,
    started: OnceCell<CancellationToken>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Live {
    pub(super) fn new(store: Store, stop: CancellationToken) -> Live {
        Live { store, hubs: Mutex::default(), followed: Mutex::default(), stop }
    }

    pub(super) fn hub(&self, host: &str) -> Hub {
        lock(&self.hubs).entry(host.to_owned()).or_default().clone()
    }

    pub(super) fn hubs(&self) -> Vec<Hub> {
        lock(&self.hubs).values().cloned().collect()
    }

    /// The history and hub a viewer of `key` reads, following the run live
    /// from now on if it is not over.
    /// `ended`: the run's last seq if its row says it is over.
    pub(super) async fn source(
        &self,
        key: &RunKey,
        ended: Option<u64>,
    ) -> Result<crate::server::backend::Source, StoreError> {
        let hub = self.hub(&key.host);
        let Ok(run) = RunId::parse(&key.run) else {
            return Err(StoreError::Request(format!("bad run ID {}", key.run)));
        };
        let followed = {
            let mut all = lock(&self.followed);
            let slot = all.entry((key.host.clone(), run.clone())).or_insert_with(|| {
                Arc::new(Followed { incarnation: key.incarnation.clone(), started: OnceCell::new() })
            });
            if slot.incarnation != key.incarnation {
                // The host reused the ID: the old run's topic goes.
                if let Some(stop) = slot.started.get() {
                    stop.cancel();
                }
                hub.remove(&run);
                *slot = Arc::new(Followed { incarnation: key.incarnation.clone(), started: OnceCell::new() });
            }
            slot.clone()
        };
        followed.started.get_or_try_init(|| self.start(key, &run, &hub, ended)).await?;
        Ok(crate::server::backend::Source { history: history::of(&self.store, key.clone()), hub })
    }

    async fn start(
        &self,
        key: &RunKey,
        run: &RunId,
        hub: &Hub,
        ended: Option<u64>,
    ) -> Result<CancellationToken, StoreError> {
        let stop = self.stop.child_token();
        // Subscribe before reading the tail: nothing stored after it is missed.
        let sub =
            self.store.client.subscribe(key.live_subject()).await.map_err(|e| StoreError::Request(e.to_string()))?;
        let tail = self.store.last_chunk(key).await?;
        let (cursor, last_seq, over) = tail.map_or((0, 0, false), |c| (c.stream_seq, c.last, c.last_chunk));
        if over {
            hub.insert_closed(run, last_seq);
            return Ok(stop);
        }
        if let Some(last) = ended {
            // Over, but its last chunks left the stream (retention): what
            // is left is served, the rest reported as a gap.
            hub.insert_closed(run, last.max(last_seq));
            return Ok(stop);
        }
        let follower = Follower {
            store: self.store.clone(),
            key: key.clone(),
            publisher: hub.open(run, last_seq),
            cursor,
            last_seq,
        };
        tokio::spawn(follower.run(sub, stop.clone()));
        Ok(stop)
    }
}

/// Hands one run's stored chunks to its hub, in order, each once.
struct Follower {
    store: Store,
    key: RunKey,
    publisher: Publisher,
    /// Stream sequence of the last chunk handed over.
    cursor: u64,
    /// Last event seq handed over.
    last_seq: u64,
}

impl Follower {
    async fn run(mut self, mut sub: async_nats::Subscriber, stop: CancellationToken) {
        let mut check = tokio::time::interval(TAIL_CHECK);
        loop {
            let done = tokio::select! {
                _ = stop.cancelled() => return,
                msg = sub.next() => match msg {
                    Some(msg) => match Chunk::from_live(&msg) {
                        Some((chunk, previous)) => self.on_live(chunk, previous).await,
                        None => Ok(false),
                    },
                    None => return,
                },
                _ = check.tick() => self.catch_up().await,
            };
            match done {
                Ok(true) => return,
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(subject = %self.key.subject(), %error, "cannot read the run's chunks; trying again")
                }
            }
        }
    }

    async fn on_live(&mut self, chunk: Chunk, previous: u64) -> Result<bool, StoreError> {
        if chunk.stream_seq <= self.cursor {
            return Ok(false);
        }
        if previous != self.cursor && self.catch_up().await? {
            return Ok(true);
        }
        if chunk.stream_seq <= self.cursor {
            return Ok(false);
        }
        Ok(self.hand_over(chunk))
    }

    /// Reads what the stream holds after `cursor`; true once the run is over.
    async fn catch_up(&mut self) -> Result<bool, StoreError> {
        while let Some(chunk) = self.store.chunk_from(&self.key, self.cursor + 1).await? {
            if self.hand_over(chunk) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// True once the run is over.
    fn hand_over(&mut self, chunk: Chunk) -> bool {
        self.cursor = chunk.stream_seq;
        if chunk.last <= self.last_seq {
            return false;
        }
        if chunk.gap {
            // The frames after it carry the jump; a feed reports it as a gap.
            return false;
        }
        let Some(frames) = history::frames(&chunk.body, chunk.first, self.last_seq + 1, u64::MAX) else {
            tracing::warn!(subject = %self.key.subject(), first = chunk.first, "a chunk not written by a replica; skipped");
            return false;
        };
        if let Some(f) = frames.last() {
            self.last_seq = f.seq;
        }
        self.publisher.publish(Batch { frames, last: chunk.last_chunk });
        chunk.last_chunk
    }
}
