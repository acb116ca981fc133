//! The two wire formats, as text: Engine.IO v4 packets (one per WebSocket
//! message, or several in a polling body joined by `\x1e`) and the
//! Socket.IO v5 packets carried in Engine.IO `message` packets.
//!
//! Decoding borrows from the input and never builds JSON it does not need;
//! an event's arguments are parsed by the namespace that handles it.
//! Encoding returns whole Engine.IO packets (`42/workflow,["name",{...}]`),
//! ready for either transport. The one message sent per run event on
//! `/runs/` is not encoded here at all: it is [`RUN_EVENT_PREFIX`], the
//! journal's own bytes, and [`RUN_EVENT_SUFFIX`].

use serde_json::Value;

/// What goes before a journaled event to make it an Engine.IO `message`
/// carrying a Socket.IO `EVENT` `run-event` on namespace `/`.
pub(super) const RUN_EVENT_PREFIX: &[u8] = b"42[\"run-event\",";
/// What goes after it.
pub(super) const RUN_EVENT_SUFFIX: &[u8] = b"]";
/// Separates packets in a polling body (Engine.IO v4).
pub(super) const SEPARATOR: u8 = 0x1e;

/// Engine.IO v4 packet types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EioKind {
    Open,
    Close,
    Ping,
    Pong,
    Message,
    Upgrade,
    Noop,
}

/// One Engine.IO packet from a client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct EioPacket<'a> {
    pub kind: EioKind,
    pub data: &'a str,
}

/// Why a client's bytes are not a packet.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PacketError {
    #[error("empty packet")]
    Empty,
    #[error("unknown Engine.IO packet type {0:?}")]
    EngineType(char),
    #[error("binary packets are not part of this protocol")]
    Binary,
    #[error("unknown Socket.IO packet type {0:?}")]
    SocketType(char),
    #[error("malformed Socket.IO packet: {0}")]
    Malformed(&'static str),
}

impl<'a> EioPacket<'a> {
    pub(crate) fn parse(text: &'a str) -> Result<Self, PacketError> {
        let mut chars = text.chars();
        let kind = match chars.next().ok_or(PacketError::Empty)? {
            '0' => EioKind::Open,
            '1' => EioKind::Close,
            '2' => EioKind::Ping,
            '3' => EioKind::Pong,
            '4' => EioKind::Message,
            '5' => EioKind::Upgrade,
            '6' => EioKind::Noop,
            // Base64 binary over polling: nothing here takes binary.
            'b' => return Err(PacketError::Binary),
            other => return Err(PacketError::EngineType(other)),
        };
        Ok(EioPacket { kind, data: &text[1..] })
    }
}

/// Splits a polling body into its packets.
pub(crate) fn split_payload(body: &str) -> impl Iterator<Item = &str> {
    body.split(SEPARATOR as char)
}

/// Socket.IO v5 packet types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SioKind {
    Connect,
    Disconnect,
    Event,
    Ack,
    ConnectError,
}

/// One Socket.IO packet, borrowed from its Engine.IO `message`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SioPacket<'a> {
    pub kind: SioKind,
    /// `/` when the packet names none.
    pub ns: &'a str,
    pub ack: Option<u64>,
    /// The JSON that follows, unparsed; empty if none.
    pub data: &'a str,
}

impl<'a> SioPacket<'a> {
    pub(crate) fn parse(text: &'a str) -> Result<Self, PacketError> {
        let first = text.chars().next().ok_or(PacketError::Empty)?;
        let kind = match first {
            '0' => SioKind::Connect,
            '1' => SioKind::Disconnect,
            '2' => SioKind::Event,
            '3' => SioKind::Ack,
            '4' => SioKind::ConnectError,
            '5' | '6' => return Err(PacketError::Binary),
            other => return Err(PacketError::SocketType(other)),
        };
        let mut rest = &text[1..];
        let mut ns = "/";
        if rest.starts_with('/') {
            let end = rest.find(',').unwrap_or(rest.len());
            ns = &rest[..end];
            rest = rest.get(end + 1..).unwrap_or("");
        }
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let ack = match digits {
            0 => None,
            // An ack ID is a JavaScript number: at most 2^53.
            1..=15 => Some(rest[..digits].parse().map_err(|_| PacketError::Malformed("ack ID"))?),
            _ => return Err(PacketError::Malformed("ack ID too long")),
        };
        Ok(SioPacket { kind, ns, ack, data: &rest[digits..] })
    }
}

/// `40{"sid":...}`, with the namespace if it is not `/`.
pub(super) fn connect_ok(ns: &str, sid: &str) -> String {
    format!("40{}{}", ns_part(ns), serde_json::json!({ "sid": sid }))
}

/// `44{"message":...}`: the namespace refused the connection.
pub(super) fn connect_error(ns: &str, message: &str) -> String {
    format!("44{}{}", ns_part(ns), serde_json::json!({ "message": message }))
}

/// `41`: the server disconnects the client from the namespace.
pub(super) fn disconnect(ns: &str) -> String {
    let part = ns_part(ns);
    // A namespace other than `/` is followed by a comma even with nothing after it.
    format!("41{part}")
}

/// `42["name",arg...]`.
pub(crate) fn event(ns: &str, name: &str, args: &[&Value]) -> String {
    let mut out = format!("42{}[", ns_part(ns));
    push_json(&mut out, &Value::from(name));
    for arg in args {
        out.push(',');
        push_json(&mut out, arg);
    }
    out.push(']');
    out
}

/// `43<id>[arg...]`: the answer to an event the client sent with an ack ID.
pub(super) fn ack(ns: &str, id: u64, args: &[&Value]) -> String {
    let mut out = format!("43{}{id}[", ns_part(ns));
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json(&mut out, arg);
    }
    out.push(']');
    out
}

fn ns_part(ns: &str) -> String {
    if ns == "/" { String::new() } else { format!("{ns},") }
}

fn push_json(out: &mut String, v: &Value) {
    // Serializing a `Value` into a String cannot fail.
    out.push_str(&v.to_string());
}

/// Engine.IO's HTTP error codes, answered as `{"code":N,"message":"..."}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum EioError {
    UnknownTransport = 0,
    UnknownSid = 1,
    BadHandshakeMethod = 2,
    BadRequest = 3,
    Forbidden = 4,
    UnsupportedProtocolVersion = 5,
}

impl EioError {
    pub(super) fn message(self) -> &'static str {
        match self {
            EioError::UnknownTransport => "Transport unknown",
            EioError::UnknownSid => "Session ID unknown",
            EioError::BadHandshakeMethod => "Bad handshake method",
            EioError::BadRequest => "Bad request",
            EioError::Forbidden => "Forbidden",
            EioError::UnsupportedProtocolVersion => "Unsupported protocol version",
        }
    }

    pub(super) fn body(self) -> String {
        serde_json::json!({"code": self as u8, "message": self.message()}).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn engine_packets_parse() {
        assert_eq!(EioPacket::parse("3").unwrap(), EioPacket { kind: EioKind::Pong, data: "" });
        assert_eq!(EioPacket::parse("2probe").unwrap(), EioPacket { kind: EioKind::Ping, data: "probe" });
        assert_eq!(EioPacket::parse("40{\"token\":\"x\"}").unwrap().data, "0{\"token\":\"x\"}");
        assert_eq!(EioPacket::parse(""), Err(PacketError::Empty));
        assert_eq!(EioPacket::parse("bAQID"), Err(PacketError::Binary));
        assert_eq!(EioPacket::parse("9"), Err(PacketError::EngineType('9')));
        assert_eq!(EioPacket::parse("é"), Err(PacketError::EngineType('é')));
    }

    #[test]
    fn payloads_split_on_the_record_separator() {
        let parts: Vec<_> = split_payload("3\u{1e}40\u{1e}42[\"a\"]").collect();
        assert_eq!(parts, ["3", "40", "42[\"a\"]"]);
    }

    #[test]
    fn socket_packets_parse_namespace_ack_and_data() {
        let p = SioPacket::parse("0{\"token\":\"t\"}").unwrap();
        assert_eq!((p.kind, p.ns, p.ack, p.data), (SioKind::Connect, "/", None, "{\"token\":\"t\"}"));
        let p = SioPacket::parse("2/workflow,12[\"ping\"]").unwrap();
        assert_eq!((p.kind, p.ns, p.ack, p.data), (SioKind::Event, "/workflow", Some(12), "[\"ping\"]"));
        let p = SioPacket::parse("0/workflow,").unwrap();
        assert_eq!((p.kind, p.ns, p.data), (SioKind::Connect, "/workflow", ""));
        // A namespace with nothing after it has no comma either.
        let p = SioPacket::parse("1/workflow").unwrap();
        assert_eq!((p.kind, p.ns, p.data), (SioKind::Disconnect, "/workflow", ""));
        assert_eq!(SioPacket::parse("51-[\"x\",{}]"), Err(PacketError::Binary));
        assert_eq!(SioPacket::parse("x"), Err(PacketError::SocketType('x')));
        assert_eq!(SioPacket::parse("21234567890123456[]"), Err(PacketError::Malformed("ack ID too long")));
    }

    #[test]
    fn encodings_match_socket_io() {
        assert_eq!(connect_ok("/", "abc"), r#"40{"sid":"abc"}"#);
        assert_eq!(connect_ok("/workflow", "abc"), r#"40/workflow,{"sid":"abc"}"#);
        assert_eq!(connect_error("/x", "Invalid namespace"), r#"44/x,{"message":"Invalid namespace"}"#);
        assert_eq!(disconnect("/"), "41");
        assert_eq!(disconnect("/workflow"), "41/workflow,");
        assert_eq!(event("/", "error", &[&json!("unauthorized")]), r#"42["error","unauthorized"]"#);
        assert_eq!(event("/workflow", "pong", &[&json!({"timestamp": 1})]), r#"42/workflow,["pong",{"timestamp":1}]"#);
        assert_eq!(ack("/workflow", 7, &[&json!({"ok": true})]), r#"43/workflow,7[{"ok":true}]"#);
        let mut run_event = RUN_EVENT_PREFIX.to_vec();
        run_event.extend_from_slice(br#"{"seq":1}"#);
        run_event.extend_from_slice(RUN_EVENT_SUFFIX);
        let p = SioPacket::parse(std::str::from_utf8(&run_event[1..]).unwrap()).unwrap();
        assert_eq!(serde_json::from_str::<Value>(p.data).unwrap(), json!(["run-event", {"seq": 1}]));
    }

    #[test]
    fn error_bodies_are_engine_io_json() {
        assert_eq!(
            EioError::UnsupportedProtocolVersion.body(),
            r#"{"code":5,"message":"Unsupported protocol version"}"#
        );
        assert_eq!(EioError::UnknownSid.body(), r#"{"code":1,"message":"Session ID unknown"}"#);
    }
}
