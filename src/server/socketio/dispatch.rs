//! What a connection does with what its client sends: polling requests,
//! the upgrade probe, Engine.IO packets, and the Socket.IO packets inside
//! them (CONNECT with its auth payload, EVENT, DISCONNECT).
//!
//! Every client packet passes the connection-wide limits of `[stream]`
//! first (message rate, JSON depth; size is the transport's): a client
//! over them is disconnected, as on `/ws`. What the namespaces refuse
//! (a bad token, a bad request) they answer themselves.

use bytes::Bytes;
use serde_json::Value;
use tokio::time::Instant;

use super::Server;
use super::conn::{Conn, End, Input, Ns, Transport, WS_FRAMING, overlapping_poll};
use super::engine::{Cmd, PollAnswer};
use super::link::Read;
use super::packet::{self, EioError, EioKind, EioPacket, SioKind, SioPacket};
use super::runs_ns::{self, RunsNs};
use super::workflow_ns::WorkflowNs;
use crate::server::metrics::Metrics;
use crate::server::ws::limits::json_depth;

impl Conn {
    pub(super) fn on_input(&mut self, input: Input) -> Result<(), End> {
        match input {
            Input::Ws { probe: true, read } => self.on_probe(read),
            Input::Ws { probe: false, read } => match read {
                Read::Text(text) => self.on_packet(&text),
                Read::Nothing => {
                    if let Transport::WebSocket(link) = &mut self.transport {
                        let control = link.take_control();
                        self.outbox.push_raw(control);
                    }
                    Ok(())
                }
                Read::Gone => Err(End::PeerGone),
                Read::TooLarge => Err(self.too_large()),
                Read::Bad(why) => Err(End::Error(1002, why)),
            },
            Input::Cmd(None) => Err(End::PeerGone),
            Input::Writable(r) => r.map_err(|_| End::PeerGone),
            Input::Cmd(Some(cmd)) => self.on_cmd(cmd),
        }
    }

    fn on_cmd(&mut self, cmd: Cmd) -> Result<(), End> {
        let Transport::Polling(p) = &mut self.transport else {
            // Upgraded: polling requests for this session are stale.
            return Ok(());
        };
        match cmd {
            Cmd::Poll(tx) => {
                if p.waiting.is_some() {
                    let _ = tx.send(overlapping_poll());
                    return Err(End::Error(1002, "overlapping polling requests".into()));
                }
                p.waiting = Some(tx);
                Ok(())
            }
            Cmd::Post(body, reply) => {
                let result = self.on_body(&body);
                let _ = reply.send(result.as_ref().map(|_| ()).map_err(|_| EioError::BadRequest));
                result
            }
            Cmd::Upgrade(link) => {
                if p.probe.is_none() {
                    p.probe = Some((link, false));
                }
                Ok(())
            }
        }
    }

    /// A `POST`: packets joined by `\x1e`.
    fn on_body(&mut self, body: &Bytes) -> Result<(), End> {
        let text = std::str::from_utf8(body).map_err(|_| End::Error(1007, "polling body is not UTF-8".into()))?;
        for part in packet::split_payload(text) {
            self.on_packet(part)?;
        }
        Ok(())
    }

    /// The WebSocket being probed: `2probe` → `3probe`, then `5` upgrades.
    fn on_probe(&mut self, read: Read) -> Result<(), End> {
        let Transport::Polling(p) = &mut self.transport else { return Ok(()) };
        let Some((link, probed)) = &mut p.probe else { return Ok(()) };
        match read {
            Read::Text(t) if t.as_str() == "2probe" => {
                // Eight bytes on a fresh socket: a refusal means the probe failed.
                let frame = crate::server::ws::frame::encode(crate::server::outbox::TEXT, b"3probe");
                if !link.send_now(&frame) {
                    p.probe = None;
                } else {
                    *probed = true;
                }
                Ok(())
            }
            Read::Text(t) if t.as_str() == "5" && *probed => {
                let Some((mut link, _)) = p.probe.take() else { return Ok(()) };
                if let Some(tx) = p.waiting.take() {
                    let _ = tx.send(PollAnswer::Packets(Bytes::from_static(b"6")));
                }
                if matches!(self.ns, Ns::Runs(_) | Ns::Workflow(_)) {
                    link.lift_budget();
                }
                if !self.outbox.set_framing(WS_FRAMING) {
                    return Err(End::Error(1011, "could not move queued packets to the websocket".into()));
                }
                // Dropping the polling side takes the session out of the table.
                self.transport = Transport::WebSocket(link);
                tracing::debug!("socket.io connection upgraded to websocket");
                Ok(())
            }
            // Anything else, or a probe that went away: stay on polling.
            _ => {
                p.probe = None;
                Ok(())
            }
        }
    }

    /// One Engine.IO packet from the client.
    fn on_packet(&mut self, text: &str) -> Result<(), End> {
        if !self.limiter.allow(Instant::now()) {
            Metrics::add(&self.shared.metrics.rate_limited, 1);
            return Err(self.refuse_all("rate-limited", 4429));
        }
        let pkt = EioPacket::parse(text).map_err(|e| End::Error(4400, e.to_string()))?;
        match pkt.kind {
            EioKind::Pong | EioKind::Noop | EioKind::Upgrade => Ok(()),
            // A v3-style client ping: answer it.
            EioKind::Ping => {
                self.outbox.push_message(Bytes::from(format!("3{}", pkt.data)));
                Ok(())
            }
            EioKind::Close => Err(End::PeerGone),
            EioKind::Open => Err(End::Error(4400, "clients do not send open packets".into())),
            EioKind::Message => self.on_socket_packet(pkt.data),
        }
    }

    fn on_socket_packet(&mut self, text: &str) -> Result<(), End> {
        let max_depth = self.shared.stream_config().max_json_depth;
        let pkt = SioPacket::parse(text).map_err(|e| End::Error(4400, e.to_string()))?;
        if json_depth(pkt.data.as_bytes()) > max_depth {
            return Err(End::Error(4400, format!("JSON nested deeper than {max_depth}")));
        }
        let ns = self.server.namespace();
        if pkt.ns != ns {
            if pkt.kind == SioKind::Connect {
                self.outbox.push_message(packet::connect_error(pkt.ns, "Invalid namespace").into());
            }
            return Ok(());
        }
        match pkt.kind {
            SioKind::Connect => self.on_connect(pkt.data),
            SioKind::Disconnect => Err(End::PeerGone),
            SioKind::Event => self.on_event(pkt.data, pkt.ack),
            SioKind::Ack | SioKind::ConnectError => Ok(()),
        }
    }

    /// CONNECT: the token (the handshake's, else the auth payload's), then
    /// the namespace. A refused client is connected, told why, and disconnected.
    fn on_connect(&mut self, data: &str) -> Result<(), End> {
        let Ns::Waiting(_) = &self.ns else { return Ok(()) };
        let Ns::Waiting(start) = std::mem::replace(&mut self.ns, Ns::Closing) else { return Ok(()) };
        let auth: Value = if data.is_empty() { Value::Null } else { serde_json::from_str(data).unwrap_or(Value::Null) };
        let token = start.token.clone().or_else(|| auth.get("token").and_then(Value::as_str).map(str::to_owned));
        let ns = self.server.namespace();
        self.outbox.push_message(packet::connect_ok(ns, &self.socket_id).into());
        let refused = match start.server {
            Server::Runs => match RunsNs::connect(&self.shared, start.runs, token.as_deref()) {
                Ok(runs) => {
                    self.ns = Ns::Runs(Box::new(runs));
                    None
                }
                Err(code) => Some(runs_ns::refusal(code)),
            },
            Server::Workflow => {
                match WorkflowNs::connect(&self.shared, token.as_deref(), start.host, &self.socket_id, &mut self.outbox)
                {
                    Ok(wf) => {
                        self.ns = Ns::Workflow(Box::new(wf));
                        None
                    }
                    Err(code) => {
                        let body = serde_json::json!({"message": refusal_message(code), "type": code,
                            "timestamp": crate::event::now_timestamp()});
                        Some(packet::event(ns, "error", &[&body]))
                    }
                }
            }
        };
        match refused {
            None => {
                if let Transport::WebSocket(link) = &mut self.transport {
                    link.lift_budget();
                }
                Ok(())
            }
            Some(text) => {
                tracing::debug!(server = ?self.server, "socket.io connect refused");
                self.outbox.push_message(text.into());
                self.disconnect();
                Ok(())
            }
        }
    }

    fn on_event(&mut self, data: &str, ack: Option<u64>) -> Result<(), End> {
        let ns = self.server.namespace();
        let Ns::Workflow(wf) = &mut self.ns else {
            // `/runs/` takes no events; an ack asked for is answered empty.
            if let Some(id) = ack {
                self.outbox.push_message(packet::ack(ns, id, &[]).into());
            }
            return Ok(());
        };
        let args: Vec<Value> = match serde_json::from_str(data) {
            Ok(Value::Array(args)) => args,
            _ => return Err(End::Error(4400, "an event is a JSON array".into())),
        };
        let Some(name) = args.first().and_then(Value::as_str) else {
            return Err(End::Error(4400, "an event starts with its name".into()));
        };
        wf.on_event(name, args.get(1).unwrap_or(&Value::Null), ack, &mut self.outbox);
        Ok(())
    }

    fn too_large(&mut self) -> End {
        Metrics::add(&self.shared.metrics.oversized_messages, 1);
        let max = self.shared.stream_config().max_frame_bytes;
        End::Error(1009, format!("message over {max} bytes"))
    }

    /// A connection-wide limit: the client is told (if connected) and disconnected.
    fn refuse_all(&mut self, code: &'static str, close: u16) -> End {
        let ns = self.server.namespace();
        let text = match self.ns {
            Ns::Runs(_) => runs_ns::refusal(code),
            Ns::Workflow(_) => {
                let body = serde_json::json!({"message": refusal_message(code), "type": code,
                    "timestamp": crate::event::now_timestamp()});
                packet::event(ns, "error", &[&body])
            }
            Ns::Waiting(_) | Ns::Closing => return End::Error(close, code.into()),
        };
        self.outbox.push_message(text.into());
        self.outbox.push_message(packet::disconnect(ns).into());
        self.ns = Ns::Closing;
        End::Error(close, code.into())
    }
}

fn refusal_message(code: &str) -> &'static str {
    match code {
        "unauthorized" => "missing or wrong token",
        "forbidden" => "host (agent) tokens cannot read runs",
        "rate-limited" => "too many messages",
        _ => "refused",
    }
}
