//! Keeps a replica's in-memory copy of one bucket up with the bucket.
//!
//! A bucket watch is an ordered push consumer, and after a cluster node
//! dies it can fall silent ("missed idle heartbeat") and then fail to start
//! again for as long as the cluster is electing leaders. A mirror fed only
//! by it went tens of seconds stale. So the watch is the fast path, and the
//! truth is the bucket's own last revision, read every `CHECK`: whatever
//! the watch has not delivered by then is read from the bucket's stream by
//! sequence (requests to its leader, no consumer) before the watch is
//! started again. A mirror is at most about two checks behind the bucket
//! whatever the watch does.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::stream::RawMessageErrorKind;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long starting a watch (its consumer) may take.
const WATCH_START: Duration = Duration::from_secs(5);
/// How often the bucket's last revision is compared with the mirror's.
const CHECK: Duration = Duration::from_secs(1);
/// How long one read of the bucket's state or of one revision may take.
const READ: Duration = Duration::from_secs(3);
/// Revisions read by sequence in one catch-up; more wait for the watch or
/// the next round.
const CATCH_UP_MAX: u64 = 4096;

/// Mirrors `bucket` into `apply` until `stop`; adds one to `ready` once
/// the bucket was read through once.
pub(super) async fn mirror(
    bucket: kv::Store,
    stop: CancellationToken,
    ready: Arc<watch::Sender<usize>>,
    apply: impl Fn(&kv::Entry),
) {
    let mut next_revision = 0u64;
    let mut loaded = false;
    loop {
        if loaded {
            next_revision = catch_up(&bucket, next_revision, &apply, &stop).await;
        } else if next_revision > 0 && last_revision(&bucket).await.is_some_and(|last| last < next_revision) {
            // A first read-through cut short after its last entry.
            read_through(&mut loaded, &ready);
        }
        let started = async {
            if next_revision == 0 {
                if last_revision(&bucket).await == Some(0) {
                    read_through(&mut loaded, &ready);
                }
                bucket.watch_with_history(">").await
            } else {
                bucket.watch_all_from_revision(next_revision).await
            }
        };
        let watch = tokio::select! {
            _ = stop.cancelled() => return,
            w = tokio::time::timeout(WATCH_START, started) => w,
        };
        match watch {
            Err(_) => tracing::warn!(bucket = bucket.name, "starting a bucket watch timed out; trying again"),
            Ok(Err(error)) => tracing::warn!(bucket = bucket.name, %error, "cannot watch a bucket; trying again"),
            Ok(Ok(mut entries)) => {
                let mut check = tokio::time::interval(CHECK);
                check.reset();
                // The bucket's last revision at the previous check: the watch
                // should have delivered it by this one.
                let mut due = 0u64;
                // While loading: checks in a row with nothing delivered.
                let mut silent = 0u32;
                loop {
                    let item = tokio::select! {
                        _ = stop.cancelled() => return,
                        item = entries.next() => item,
                        _ = check.tick() => {
                            if loaded && due >= next_revision {
                                tracing::warn!(bucket = bucket.name, behind = due + 1 - next_revision, "bucket watch fell behind; reading the bucket");
                                break;
                            }
                            // A first read-through that stalled is taken up
                            // again from what it delivered.
                            silent += 1;
                            if !loaded && silent > 2 {
                                tracing::warn!(bucket = bucket.name, "bucket watch stalled before the bucket was read through; watching again");
                                break;
                            }
                            match last_revision(&bucket).await {
                                Some(last) => due = last,
                                None => {
                                    tracing::warn!(bucket = bucket.name, "cannot read the bucket's state; watching again");
                                    break;
                                }
                            }
                            continue;
                        }
                    };
                    match item {
                        // Already read by sequence in a catch-up.
                        Some(Ok(entry)) if entry.revision < next_revision => {}
                        Some(Ok(entry)) => {
                            silent = 0;
                            next_revision = entry.revision + 1;
                            apply(&entry);
                            if entry.delta == 0 {
                                read_through(&mut loaded, &ready);
                            }
                        }
                        Some(Err(error)) => {
                            tracing::warn!(bucket = bucket.name, %error, "bucket watch failed; watching again");
                            break;
                        }
                        None => break,
                    }
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// The bucket was read through once: `ready` hears it, once.
fn read_through(loaded: &mut bool, ready: &watch::Sender<usize>) {
    if !*loaded {
        *loaded = true;
        ready.send_modify(|n| *n += 1);
    }
}

/// The bucket's last revision (0 if it holds nothing), or None if it
/// cannot be read now.
/// (Not `Store::status`: that is the stream info cached when the bucket
/// was opened, which made an earlier version of this check see a bucket
/// that never moved.)
async fn last_revision(bucket: &kv::Store) -> Option<u64> {
    let mut stream = bucket.stream.clone();
    match tokio::time::timeout(READ, stream.info()).await {
        Ok(Ok(info)) if info.state.messages > 0 => Some(info.state.last_sequence),
        Ok(Ok(_)) => Some(0),
        _ => None,
    }
}

/// Applies every revision from `from` to the bucket's last, read one by one
/// from its stream; returns the next revision still to apply. Stops early,
/// to be called again, on a read that fails.
async fn catch_up(bucket: &kv::Store, from: u64, apply: &impl Fn(&kv::Entry), stop: &CancellationToken) -> u64 {
    let Some(last) = last_revision(bucket).await else { return from };
    let mut next = from.max(1);
    while next <= last.min(from + CATCH_UP_MAX) && !stop.is_cancelled() {
        match tokio::time::timeout(READ, bucket.stream.get_raw_message(next)).await {
            Ok(Ok(message)) => {
                if let Some(entry) = entry_of(bucket, message) {
                    apply(&entry);
                }
            }
            // Overwritten by a later revision of its key, or purged.
            Ok(Err(e)) if e.kind() == RawMessageErrorKind::NoMessageFound => {}
            Ok(Err(error)) => {
                tracing::warn!(bucket = bucket.name, revision = next, %error, "cannot read a bucket revision; later");
                return next;
            }
            Err(_) => {
                tracing::warn!(bucket = bucket.name, revision = next, "reading a bucket revision timed out; later");
                return next;
            }
        }
        next += 1;
    }
    if next > from.max(1) {
        tracing::info!(bucket = bucket.name, from, to = next - 1, "bucket mirror caught up by reading the bucket");
    }
    next.max(from)
}

/// A stream message of a bucket as the watch would have delivered it.
fn entry_of(bucket: &kv::Store, message: async_nats::jetstream::message::StreamMessage) -> Option<kv::Entry> {
    let key = message.subject.as_str().strip_prefix(bucket.prefix.as_str())?.to_owned();
    let operation = match message.headers.get("KV-Operation").map(|v| v.as_str()) {
        None => Operation::Put,
        Some("DEL") => Operation::Delete,
        Some("PURGE") => Operation::Purge,
        Some(_) => return None,
    };
    Some(kv::Entry {
        bucket: bucket.name.clone(),
        key,
        value: message.payload,
        revision: message.sequence,
        delta: 0,
        created: message.time,
        operation,
        seen_current: false,
    })
}
