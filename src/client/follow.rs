//! A subscription over the socket that outlives the daemon process.
//!
//! Runs outlive the daemon (each has its own supervisor, `runtap shim`),
//! so `runtap run` and `logs -f` do too: they keep the `seq` of every event
//! they received, and when the connection ends before the run does (the
//! daemon was restarted, killed or upgraded), they connect again and
//! subscribe after that seq, so the output goes on with no gap and nothing
//! twice. Only the socket ending or breaking counts as lost: a gap in the
//! run's history (a `journal-gap` error) is the daemon speaking, and the
//! stream goes on.

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use super::{Client, ClientError, OutputSink, Streamed};
use crate::protocol::unix::{Request, Response};

/// How long a lost daemon is waited for. A restart takes the new daemon a
/// moment: systemd waits `RestartSec=2s` after a crash, and a starting
/// daemon recovers every run's journal and takes back their shims before
/// it answers on the socket. A minute covers that on a loaded host with
/// many runs; a daemon that is not back by then is not coming back by
/// itself, and a queue worker had better learn that its command failed
/// than wait forever.
const RECONNECT_FOR: Duration = Duration::from_secs(60);
/// Between attempts, while the socket is absent or refuses (until the new
/// daemon has bound it): soon enough to lose little time, rare enough to
/// cost nothing.
const RECONNECT_EVERY: Duration = Duration::from_millis(150);

/// One run's events, from `since` on, across connections.
pub(super) struct Subscription<'a> {
    socket: &'a Path,
    run_id: String,
    /// Until the run ends; false (`logs` without `-f`): a lost connection
    /// is an error, as before.
    follow: bool,
    /// None while the connection is lost.
    client: Option<Client>,
    /// The seq of the last event received: where a new subscription starts.
    last: u64,
    /// When the connection was lost; kept while a `next` waiting to
    /// reconnect is dropped (for Ctrl-C) and called again.
    lost_at: Option<Instant>,
    /// A cancel asked for on this subscription: sent again on every new
    /// connection, since the daemon that got it may have died before
    /// passing it on (cancelling twice is harmless).
    cancel: Option<String>,
    /// The last `journal-gap` message, until an event comes after it: a
    /// subscription after the gap's start reports it again.
    gap: Option<String>,
}

impl<'a> Subscription<'a> {
    /// Subscribes on `client` (connected to `socket`) to `run_id`'s events after `since`.
    pub(super) async fn start(
        socket: &'a Path,
        mut client: Client,
        run_id: &str,
        since: u64,
        follow: bool,
    ) -> Result<Self, ClientError> {
        let mut sub = Subscription {
            socket,
            run_id: run_id.to_owned(),
            follow,
            client: None,
            last: since,
            lost_at: None,
            cancel: None,
            gap: None,
        };
        match client.send(&sub.subscribe()).await {
            Ok(()) => sub.client = Some(client),
            Err(e) if e.is_lost() && follow => sub.lose(),
            Err(e) => return Err(e),
        }
        Ok(sub)
    }

    /// The next line, as `Client::next_streamed`; reconnects first if the
    /// connection was lost. Cancel-safe: a dropped call loses nothing.
    pub(super) async fn next(&mut self, sink: &mut OutputSink) -> Result<Streamed, ClientError> {
        loop {
            let Some(client) = self.client.as_mut() else {
                // Boxed: the cold path's state stays out of this future,
                // which is made once per line.
                self.client = Some(Box::pin(self.reconnect()).await?);
                continue;
            };
            let streamed = match client.next_streamed(sink).await {
                Ok(streamed) => streamed,
                Err(e) if e.is_lost() && self.follow => {
                    self.lose();
                    continue;
                }
                Err(e) => return Err(e),
            };
            match &streamed {
                Streamed::Output(seq) => self.last = *seq,
                Streamed::Event(ev) => self.last = ev.seq,
                Streamed::Control(Response::Error { code, message, .. }) if code == "journal-gap" => {
                    if self.gap.as_ref() == Some(message) {
                        continue;
                    }
                    self.gap = Some(message.clone());
                    return Ok(streamed);
                }
                Streamed::Control(_) => return Ok(streamed),
            }
            // The first event after a gap clears it: one test per event.
            if self.gap.is_some() {
                self.gap = None;
            }
            return Ok(streamed);
        }
    }

    /// Asks the daemon to cancel the run: now, or once it is reachable again.
    pub(super) async fn cancel(&mut self, reason: String) -> Result<(), ClientError> {
        let request = Request::Cancel { run_id: self.run_id.clone(), reason: Some(reason.clone()) };
        self.cancel = Some(reason);
        let Some(client) = self.client.as_mut() else { return Ok(()) };
        match client.send(&request).await {
            Err(e) if e.is_lost() && self.follow => self.lose(),
            other => other?,
        }
        Ok(())
    }

    fn subscribe(&self) -> Request {
        Request::Subscribe { run_id: self.run_id.clone(), since: self.last, follow: self.follow }
    }

    fn lose(&mut self) {
        self.client = None;
        if self.lost_at.is_none() {
            self.lost_at = Some(Instant::now());
            eprintln!("runtap: lost the daemon's socket; reconnecting to follow run {}…", self.run_id);
        }
    }

    /// A new connection, subscribed after the last event received; tries
    /// every `RECONNECT_EVERY` until `RECONNECT_FOR` after the loss.
    async fn reconnect(&mut self) -> Result<Client, ClientError> {
        let lost_at = *self.lost_at.get_or_insert_with(Instant::now);
        let deadline = lost_at + RECONNECT_FOR;
        loop {
            let error = match tokio::time::timeout_at(deadline, self.resubscribe()).await {
                Ok(Ok(client)) => {
                    self.lost_at = None;
                    return Ok(client);
                }
                Ok(Err(ClientError::Connect { error, .. })) => error.to_string(),
                Ok(Err(e)) if e.is_lost() => e.to_string(),
                Ok(Err(e)) => return Err(e),
                Err(_) => "the daemon did not answer".to_owned(),
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Reconnect { path: self.socket.to_owned(), tried: now - lost_at, error });
            }
            tokio::time::sleep_until((now + RECONNECT_EVERY).min(deadline)).await;
        }
    }

    async fn resubscribe(&self) -> Result<Client, ClientError> {
        let mut client = Client::connect(self.socket).await?;
        // A daemon that does not know the run says so; a subscription
        // would wait for it to start.
        client.call(&Request::Status { run_id: self.run_id.clone() }).await?;
        client.send(&self.subscribe()).await?;
        if let Some(reason) = &self.cancel {
            client.send(&Request::Cancel { run_id: self.run_id.clone(), reason: Some(reason.clone()) }).await?;
        }
        Ok(client)
    }
}
