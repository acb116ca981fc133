//! One WebSocket session: authentication, subscriptions, heartbeat, limits.
//!
//! One task per connection reads client messages, pulls each
//! subscription's feed and writes frames (see `frame`). It only pulls a
//! feed while its outbox is short; a subscriber that falls behind the live
//! stream catches up from the journal at its own pace (slow is not
//! stalled), so a slow client costs its own backlog and nothing else. A
//! write that makes no progress for `write_stall_timeout` ends the session
//! with `lagged` (1013) and the last seq written of each subscription.
//!
//! - `session`: the session's loop; `requests`: what a client may ask.
//! - `subs`: what the session keeps with each run it follows (`server::streams`).
//! - `patterns`: subscriptions to every run matching `prefix*`.
//! - `frame`: the read side for tungstenite, control frames.
//! - `limits`: what a client may send; `error`: the error events and close codes.

mod error;
pub(super) mod frame;
pub(crate) mod limits;
mod patterns;
pub(crate) mod requests;
mod session;
mod subs;

use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role as WsRole};

pub(crate) use error::WsError;
pub(crate) use limits::ws_config;

use super::Shared;
use crate::run_id::RunId;

/// Which endpoint the session came in on.
pub(crate) enum Endpoint {
    /// `/runs?runId=` and `/api/v2/workflows/runs/ID/stream`: one run; closed (1000) when it ends.
    /// `host` picks the host at a gateway.
    Single { run: Result<RunId, WsError>, since: u64, host: Option<String> },
    /// `/ws`: subscribe and unsubscribe by message.
    Multi,
}

/// Runs a session to its end. `token` is the one from the header or query.
///
/// Not an `async fn`: its arguments would stay in the session's future for
/// its whole life, and an idle subscriber is mostly that future. Only a
/// box with the socket and the request is carried in.
pub(crate) fn serve(
    upgraded: Upgraded,
    endpoint: Endpoint,
    token: Option<String>,
    shared: Arc<Shared>,
) -> impl Future<Output = ()> + Send + 'static {
    // Frames are written to the connection itself (see `frame`).
    // Built here, not in the async block: what the block captures stays in it.
    let start = crate::server::conn::from_upgraded(upgraded)
        .map(|(conn, early)| Box::new(session::Start { conn, early, request: Box::new((endpoint, token)) }));
    async move {
        let Some(start) = start else {
            tracing::error!("websocket is not on a TCP or TLS stream; dropping it");
            return;
        };
        session::run(start, shared).await;
    }
}

/// Refuses an upgraded connection with an error event and its close code
/// (used where no session follows, e.g. `/agent` with a viewer token).
pub(crate) async fn reject(upgraded: Upgraded, err: WsError) {
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), WsRole::Server, Some(ws_config(1024))).await;
    let frame = CloseFrame { code: CloseCode::from(err.close), reason: err.code.into() };
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        ws.send(Message::Text(err.to_json())).await?;
        ws.send(Message::Close(Some(frame))).await
    })
    .await;
}

#[cfg(test)]
mod size_tests {
    use super::*;

    fn future_size<A, B, C, D, F: Future>(_: fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// An idle subscriber is mostly its session's future plus its feed
    /// (issue 6: at most 4 KiB of RSS per idle subscriber, all told).
    #[test]
    fn an_idle_session_stays_small() {
        let session = future_size(serve);
        // 1384 bytes when this bound was set (1816 before the start-up
        // state and the select's output were kept out of it).
        assert!(session <= 1536, "session future is {session} bytes");
        let feed = std::mem::size_of::<crate::feed::Feed>();
        assert!(feed <= 256, "Feed is {feed} bytes");
    }
}
