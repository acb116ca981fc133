//! The JetStream side: the events stream and the two buckets, appends with
//! the subject fence, and reading a run's chunks back.
//!
//! The fence: every append names the stream sequence of the last chunk on
//! its subject (`Nats-Expected-Last-Subject-Sequence`). Two replicas that
//! both think they hold a host cannot interleave: the second append after
//! a takeover fails, so a run's subject holds each event once, in order.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, DirectGetErrorKind, Stream};
use async_nats::jetstream::{self, kv};
use bytes::Bytes;

use super::names::{self, RunKey};
use crate::config::GatewayConfig;

/// Dedup window of the stream: a chunk sent again by a client retry within
/// it is stored once, whatever else the fence catches.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long one JetStream request (append, direct get) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// An append that fails for want of a stream leader is tried again for this
/// long before the link gives up: a clustered stream elects a new leader
/// within a few seconds of losing one. Under the link's 15 s silence limit
/// with the last request's timeout added, since the link does not read
/// (nor answer pings) while it appends.
const APPEND_RETRY_FOR: Duration = Duration::from_secs(8);

#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("connect to NATS: {0}")]
    Connect(String),
    #[error("JetStream: {0}")]
    Setup(String),
    /// The subject's last chunk is not the one this append expected:
    /// another replica appended for the host (it holds the link now).
    #[error("fenced: another replica appended to {0}")]
    Fenced(String),
    #[error("JetStream: {0}")]
    Request(String),
}

/// A chunk as stored.
pub(super) struct Chunk {
    /// Its stream sequence.
    pub stream_seq: u64,
    pub first: u64,
    pub last: u64,
    pub gap: bool,
    pub last_chunk: bool,
    pub body: Bytes,
}

impl Chunk {
    fn from_message(stream_seq: u64, headers: &HeaderMap, body: Bytes) -> Option<Chunk> {
        let num = |name: &str| headers.get(name).and_then(|v| v.as_str().parse::<u64>().ok());
        let (first, last) = (num(names::FIRST_SEQ)?, num(names::LAST_SEQ)?);
        Some(Chunk {
            stream_seq,
            first,
            last,
            gap: headers.get(names::GAP).is_some(),
            last_chunk: headers.get(names::FINAL).is_some(),
            body,
        })
    }

    /// A republished chunk: its stream sequence and the one before it on
    /// the same subject (`Nats-Last-Sequence`), for the live gap check.
    pub(super) fn from_live(message: &async_nats::Message) -> Option<(Chunk, u64)> {
        let headers = message.headers.as_ref()?;
        let num = |name: &str| headers.get(name).and_then(|v| v.as_str().parse::<u64>().ok());
        let seq = num("Nats-Sequence")?;
        let previous = num("Nats-Last-Sequence").unwrap_or(0);
        Some((Chunk::from_message(seq, headers, message.payload.clone())?, previous))
    }
}

/// Connected JetStream: the events stream and the buckets.
#[derive(Clone)]
pub(crate) struct Store {
    pub(super) client: async_nats::Client,
    js: jetstream::Context,
    stream: Stream,
    pub(super) hosts: kv::Store,
    pub(super) runs: kv::Store,
}

impl Store {
    /// Connects and makes sure the stream and buckets exist with our limits.
    pub(crate) async fn open(config: &GatewayConfig) -> Result<Store, StoreError> {
        let urls: Vec<async_nats::ServerAddr> = config
            .nats_url
            .iter()
            .map(|u| u.parse().map_err(|e| StoreError::Connect(format!("{u}: {e}"))))
            .collect::<Result<_, _>>()?;
        let client = async_nats::ConnectOptions::new()
            .name("runtap-gateway")
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .event_callback(|event| async move { tracing::info!(%event, "NATS connection") })
            .connect(urls)
            .await
            .map_err(|e| StoreError::Connect(e.to_string()))?;
        let js = jetstream::ContextBuilder::new().timeout(REQUEST_TIMEOUT).build(client.clone());
        let setup = |e: &dyn std::fmt::Display| StoreError::Setup(e.to_string());
        let max_bytes = i64::try_from(config.nats_max_bytes).unwrap_or(i64::MAX);
        let want = stream::Config {
            name: names::STREAM.into(),
            description: Some("runtap: every host's run events".into()),
            subjects: vec![format!("{}.>", names::EVENTS_PREFIX)],
            max_age: config.nats_max_age,
            max_bytes,
            num_replicas: config.nats_replicas,
            duplicate_window: DUPLICATE_WINDOW,
            allow_direct: true,
            republish: Some(stream::Republish {
                source: format!("{}.>", names::EVENTS_PREFIX),
                destination: format!("{}.>", names::LIVE_PREFIX),
                headers_only: false,
            }),
            ..Default::default()
        };
        let mut stream = js.get_or_create_stream(want.clone()).await.map_err(|e| setup(&e))?;
        let have = &stream.cached_info().config;
        if (have.max_age, have.max_bytes, have.num_replicas) != (want.max_age, want.max_bytes, want.num_replicas) {
            // The limits are the config's at every start, not only the first.
            tracing::info!(max_age = ?want.max_age, max_bytes, replicas = want.num_replicas, "updating the events stream's limits");
            js.update_stream(&want).await.map_err(|e| setup(&e))?;
            stream = js.get_stream(names::STREAM).await.map_err(|e| setup(&e))?;
        }
        let hosts = bucket(&js, names::HOSTS_BUCKET, config, None).await?;
        let runs = bucket(&js, names::RUNS_BUCKET, config, Some(config.nats_max_age)).await?;
        Ok(Store { client, js, stream, hosts, runs })
    }

    /// Appends a chunk after `expected` (the subject's last stream
    /// sequence, 0 for none); returns the chunk's own.
    pub(super) async fn append(
        &self,
        key: &RunKey,
        expected: u64,
        chunk: (u64, u64),
        flags: (bool, bool),
        replica: &str,
        body: Bytes,
    ) -> Result<u64, StoreError> {
        let (first, last) = chunk;
        let (gap, last_chunk) = flags;
        let mut headers = HeaderMap::new();
        headers.insert(names::FIRST_SEQ, first.to_string().as_str());
        headers.insert(names::LAST_SEQ, last.to_string().as_str());
        headers.insert(names::REPLICA, replica);
        if gap {
            headers.insert(names::GAP, "1");
        }
        if last_chunk {
            headers.insert(names::FINAL, "1");
        }
        let message = PublishMessage::build()
            .payload(body)
            .headers(headers)
            .message_id(key.msg_id(first, last))
            .expected_last_subject_sequence(expected);
        let subject = key.subject();
        let give_up = tokio::time::Instant::now() + APPEND_RETRY_FOR;
        let mut wait = Duration::from_millis(100);
        loop {
            let ack = match self.js.send_publish(subject.clone(), message.clone()).await {
                Ok(future) => future.await,
                Err(e) => Err(e),
            };
            match ack {
                Ok(ack) => return Ok(ack.sequence),
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => return Err(StoreError::Fenced(subject)),
                // No leader for the stream yet (an election after a node
                // died), or no answer: the same chunk again, which the
                // Msg-Id makes safe if the first one was stored after all.
                Err(e) if tokio::time::Instant::now() + wait < give_up => {
                    tracing::debug!(subject, error = %e, "append not acknowledged; again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(StoreError::Request(e.to_string())),
            }
        }
    }

    /// The run's last stored chunk, if any.
    pub(super) async fn last_chunk(&self, key: &RunKey) -> Result<Option<Chunk>, StoreError> {
        match self.stream.direct_get_last_for_subject(key.subject()).await {
            Ok(m) => Ok(Chunk::from_message(m.sequence, &m.headers, m.payload)),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Request(e.to_string())),
        }
    }

    /// The run's first chunk at or after stream sequence `from`.
    pub(super) async fn chunk_from(&self, key: &RunKey, from: u64) -> Result<Option<Chunk>, StoreError> {
        match self.stream.direct_get_next_for_subject(key.subject(), Some(from.max(1))).await {
            Ok(m) => Ok(Chunk::from_message(m.sequence, &m.headers, m.payload)),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Request(e.to_string())),
        }
    }
}

/// A bucket, its stream made by hand: the client's `create_key_value`
/// first asks for account info in a shape 2.9 servers do not answer.
async fn bucket(
    js: &jetstream::Context,
    name: &str,
    config: &GatewayConfig,
    max_age: Option<Duration>,
) -> Result<kv::Store, StoreError> {
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age: max_age.unwrap_or_default(),
        num_replicas: config.nats_replicas,
        allow_rollup: true,
        deny_delete: true,
        // Reads go to the bucket's leader: a direct get may be answered by
        // a replica that lags, and a compare-and-set on the revision it gave
        // fails again and again (seen after a node of a cluster died).
        allow_direct: false,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .map_err(|e| StoreError::Setup(format!("bucket {name}: {e}")))?;
    js.get_key_value(name).await.map_err(|e| StoreError::Setup(format!("bucket {name}: {e}")))
}
