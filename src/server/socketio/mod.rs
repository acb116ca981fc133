//! Socket.IO v5 over Engine.IO v4 on the HTTP listener, for dashboards
//! written against socket.io (docs/socket-io.md).
//!
//! Like `ws`, this is transport only: runs are read through `Backend` and
//! `Feed`, and a run event on `/runs/` is written as the journal's own
//! bytes between a fixed prefix and suffix (`outbox::Framing::Wrapped`),
//! with no per-subscriber copy. A connection is one task (`conn`) whatever
//! its transport; polling requests reach it through the session table
//! (`engine`), and an upgrade hands it the WebSocket.
//!
//! - `packet`: Engine.IO and Socket.IO packet codecs.
//! - `engine`: HTTP side: handshake, polling requests, upgrades, CORS, the bounded session table.
//! - `conn`: one connection's task: transports, heartbeat, write stalls; `link`: its WebSocket;
//!   `dispatch`: what it does with the client's packets.
//! - `runs_ns`: path `/runs/`, namespace `/`: one run as `run-event`s.
//! - `workflow_ns`: path `/socket.io/`, namespace `/workflow`: subscriptions by message;
//!   `lifecycle`: its `workflow` and `tenant_activity` (many runs);
//!   `updates`: journaled events → `/workflow` messages; `limits`: per-event rate limits.

mod conn;
mod dispatch;
mod engine;
mod lifecycle;
mod limits;
mod link;
pub(crate) mod packet;
mod runs_ns;
mod updates;
mod workflow_ns;

pub(crate) use engine::{Sessions, handle};

/// Which Socket.IO server a request is for, from its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Server {
    /// `path: '/runs'`: namespace `/`, one run from the handshake's `runId`.
    Runs,
    /// `/socket.io/` (socket.io's default path): namespace `/workflow`.
    Workflow,
}

impl Server {
    /// The namespace this server serves.
    fn namespace(self) -> &'static str {
        match self {
            Server::Runs => "/",
            Server::Workflow => "/workflow",
        }
    }
}

/// Whether a request is Engine.IO's. `/socket.io/` always is (so a wrong
/// `EIO` gets Engine.IO's own error); `/runs/` only with `EIO=`, so that
/// `GET /runs` (the list) and `GET /runs?runId=` (a WebSocket) stay as they are.
pub(crate) fn server_for(path: &str, query: &[(String, String)]) -> Option<Server> {
    match path {
        "/socket.io" | "/socket.io/" => Some(Server::Workflow),
        "/runs/" if query.iter().any(|(k, _)| k == "EIO") => Some(Server::Runs),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_engine_io_requests_are_taken() {
        let eio = vec![("EIO".to_owned(), "4".to_owned())];
        assert_eq!(server_for("/runs/", &eio), Some(Server::Runs));
        assert_eq!(server_for("/runs/", &[]), None, "GET /runs/ is still the list");
        assert_eq!(server_for("/runs", &eio), None, "socket.io clients always add the slash");
        assert_eq!(server_for("/socket.io/", &[]), Some(Server::Workflow));
        assert_eq!(server_for("/runs/x", &eio), None);
    }
}
