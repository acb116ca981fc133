//! `runtap logs --url`: a run's events over its WebSocket (`/runs?runId=`),
//! each handed to the same decoder and sink as the socket client's
//! (`decode::into_sink`), so stdout and stderr get the same bytes.
//!
//! Without `-f` it stops at the run's `lastSeq` as `GET /runs/ID` gave it,
//! which is the socket's "what the journal holds now". A stream the server
//! ends as `lagged` (stdout was blocked for `write_stall_timeout`, e.g. by a
//! pager) is resumed after the last event printed, with nothing lost or
//! printed twice.

use std::time::Duration;

use ::http::Method;
use futures_util::{FutureExt as _, StreamExt as _};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::{Remote, run_id};
use crate::client::http as net;
use crate::client::{ClientError, OutputSink, decode};
use crate::run_id::RunId;

/// A stream that has heard nothing (not even the server's pings, every
/// `stream.ping_interval`, 25 s by default) for this long is dead.
const STREAM_SILENCE: Duration = Duration::from_secs(120);

/// `runtap logs --url`.
pub async fn logs(remote: &Remote, id: &str, since: u64, follow: bool) -> Result<i32, ClientError> {
    let run = run_id(id)?;
    let answer = remote.call(Method::GET, &remote.target(&format!("/runs/{run}"), &[]), None).await?;
    if !answer.status.is_success() {
        return Err(remote.refusal(&answer));
    }
    let until = if follow { None } else { Some(answer.json()["lastSeq"].as_u64().unwrap_or(0)) };
    let mut sink = OutputSink::new();
    let mut after = since;
    while until.is_none_or(|u| after < u) {
        match stream(remote, &run, after, until, &mut sink).await? {
            Ended::Done => break,
            Ended::Lagged(last) => after = last,
        }
    }
    sink.flush()?;
    Ok(0)
}

enum Ended {
    Done,
    /// The server gave up on a reader that took nothing for its
    /// `write_stall_timeout`; resume after this seq.
    Lagged(u64),
}

/// One WebSocket's worth of a run's events after `since`, up to `until`.
async fn stream(
    remote: &Remote,
    run: &RunId,
    since: u64,
    until: Option<u64>,
    sink: &mut OutputSink,
) -> Result<Ended, ClientError> {
    let target = remote.target("/runs", &[("runId", run.to_string()), ("since", since.to_string())]);
    let mut ws = match net::websocket(&remote.url, &target, &remote.token).await? {
        Ok(ws) => ws,
        Err(answer) => return Err(remote.refusal(&answer)),
    };
    let mut last = since;
    let mut refused: Option<ClientError> = None;
    loop {
        // Output is written out whenever the client is about to wait for
        // the server, as on the socket: live, and batched while it can be.
        let next = match ws.next().now_or_never() {
            Some(next) => next,
            None => {
                sink.flush()?;
                tokio::time::timeout(STREAM_SILENCE, ws.next()).await.map_err(|_| {
                    let secs = STREAM_SILENCE.as_secs();
                    ClientError::Unreachable(format!("{} sent nothing for {secs}s", remote.url.text))
                })?
            }
        };
        let text = match next {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                return match (refused, frame) {
                    (Some(e), _) => Err(e),
                    (None, Some(f)) if u16::from(f.code) == 1000 => Ok(Ended::Done),
                    (None, f) => Err(ClientError::Unreachable(format!(
                        "{} closed the stream: {}",
                        remote.url.text,
                        f.map_or_else(
                            || "no reason".into(),
                            |f| format!("{} {}", u16::from(f.code), f.reason.as_str())
                        )
                    ))),
                };
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(ClientError::Unreachable(format!("stream from {}: {e}", remote.url.text))),
            None => return Err(refused.unwrap_or(ClientError::Closed)),
        };
        let line = text.as_bytes();
        if !line.starts_with(br#"{"runId""#) {
            match control(line, last)? {
                Control::Ignore => {}
                Control::Lagged(at) => return Ok(Ended::Lagged(at)),
                Control::Refused(ClientError::Refused { code, .. }) if code == "unauthorized" => {
                    refused = Some(remote.token_refused());
                }
                Control::Refused(e) => refused = Some(e),
            }
            continue;
        }
        let seq = decode::seq_of(line).unwrap_or(last + 1);
        if until.is_some_and(|u| seq > u) {
            return Ok(Ended::Done);
        }
        decode::into_sink(line, sink)?;
        last = seq;
        if until == Some(seq) {
            return Ok(Ended::Done);
        }
    }
}

enum Control {
    Ignore,
    Lagged(u64),
    /// Ends the stream (the close frame follows).
    Refused(ClientError),
}

/// A message that is not an event: `journal-gap` is printed (as the socket
/// client prints it) and the stream goes on; other errors end it.
fn control(line: &[u8], last: u64) -> Result<Control, ClientError> {
    let v: Value = serde_json::from_slice(line).map_err(|e| crate::client::bad_line(e, line))?;
    if v["type"] != "error" {
        return Ok(Control::Ignore);
    }
    let code = v["code"].as_str().unwrap_or_default().to_owned();
    let message = v["message"].as_str().unwrap_or_default().to_owned();
    Ok(match code.as_str() {
        "journal-gap" => {
            eprintln!("runtap: {message}");
            Control::Ignore
        }
        // Ours is what we printed, which may be more than the server counted as written.
        "lagged" => Control::Lagged(v["lastSeq"].as_u64().unwrap_or(0).max(last)),
        "journal" => Control::Refused(ClientError::Unreachable(message)),
        _ => Control::Refused(ClientError::Refused { code, message }),
    })
}
