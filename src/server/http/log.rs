//! `GET /runs/ID/log`: a run's raw output as a download.
//!
//! The bytes the job wrote, stdout and stderr in journal order (as
//! `runtap logs` prints them to a terminal), base64 events decoded: what
//! the page's "download" button saves. It is the run's history up to the
//! events present when the request arrives (a feed without follow), read
//! from the journal a step at a time and written as it is read, so a
//! 1 GiB run costs one step of memory, not a gigabyte. The connection
//! stays open while the client keeps reading: each chunk it takes extends
//! the connection's deadline by `write_stall_timeout`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{Either, StreamBody};
use hyper::body::Frame;

use super::{KeepOpen, Reply};
use crate::event::{Event, EventType};
use crate::feed::{Delivery, Feed, FeedItem};
use crate::run_id::RunId;
use crate::server::Shared;
use crate::server::backend::LookupError;

/// Journal bytes read per chunk of the download (its memory per request).
const LOG_STEP: usize = 256 * 1024;

/// How long finding the run's journal may take. A daemon answers at once;
/// a gateway may wait for a host it knows of, which `get` found first.
const SOURCE_TIMEOUT: Duration = Duration::from_secs(5);

/// The body: output chunks as the journal is read.
pub(super) type LogBody =
    StreamBody<Pin<Box<dyn futures_util::Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Send>>>;

/// Answers a download of `run` (already authorized) on `host`.
pub(super) async fn download(shared: &Shared, host: Option<&str>, run: RunId, keep: Arc<KeepOpen>) -> Response<Reply> {
    if let Err(e) = shared.backend.get(host, &run) {
        return super::routes::lookup_error(e).map(Either::Left);
    }
    let source = match tokio::time::timeout(SOURCE_TIMEOUT, shared.backend.source(host, &run)).await {
        Ok(Ok(source)) => source,
        Ok(Err(e)) => return super::routes::lookup_error(e).map(Either::Left),
        Err(_) => {
            let e = LookupError::NotFound(run.to_string());
            return super::routes::lookup_error(e).map(Either::Left);
        }
    };
    tracing::debug!(run_id = %run, host, "log download");
    let filename = format!("attachment; filename=\"{run}.log\"");
    let feed = Feed::new(source.history, source.hub, run, 0, false).with_history_step(LOG_STEP);
    let stall = shared.stream_config().write_stall_timeout;
    let stream: Pin<Box<dyn futures_util::Stream<Item = _> + Send>> = Box::pin(chunks(feed, keep, stall));
    let body: LogBody = StreamBody::new(stream);
    let mut r = Response::new(Either::Right(body));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    // Run IDs are `[A-Za-z0-9._:-]`: nothing to quote or escape.
    if let Ok(v) = HeaderValue::from_str(&filename) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}

/// The feed's output, one chunk per delivery that has any. A journal that
/// fails mid-way ends the body with an error, which aborts the connection:
/// a truncated download must not look complete.
fn chunks(
    feed: Feed,
    keep: Arc<KeepOpen>,
    stall: Duration,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Send {
    futures_util::stream::unfold(Some(feed), move |state| {
        let keep = keep.clone();
        async move {
            let mut feed = state?;
            loop {
                keep.extend(stall);
                let item = match feed.next().await {
                    Ok(FeedItem::Frames(delivery)) => output_of(&delivery).map(Some),
                    // A degraded journal's missing events: what is left is served.
                    Ok(FeedItem::Gap { .. }) => Ok(None),
                    Ok(FeedItem::End) => return None,
                    Err(e) => Err(std::io::Error::other(e)),
                };
                match item {
                    Ok(Some(bytes)) if !bytes.is_empty() => return Some((Ok(Frame::data(bytes)), Some(feed))),
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::warn!(run_id = %feed.run_id(), error = %e, "log download failed");
                        return Some((Err(e), None));
                    }
                }
            }
        }
    })
}

/// The output bytes of a delivery's stdout and stderr events.
fn output_of(delivery: &Delivery) -> Result<Bytes, std::io::Error> {
    let mut out = Vec::new();
    for frame in delivery.frames() {
        if !EventType::of_line(frame.bytes()).is_some_and(EventType::is_output) {
            continue;
        }
        let bad = |e: String| std::io::Error::other(format!("event {}: {e}", frame.seq));
        let event: Event = serde_json::from_slice(frame.bytes()).map_err(|e| bad(e.to_string()))?;
        out.extend(event.output_bytes().map_err(|e| bad(e.to_string()))?);
    }
    Ok(Bytes::from(out))
}
