//! The two line protocols runtap speaks besides its public WebSocket API.
//!
//! - [`unix`]: the local Unix socket (launch, subscribe, cancel, list,
//!   status), newline-delimited JSON; `docs/socket-protocol.md`.
//! - [`link`]: a host daemon ↔ the gateway, one WebSocket; `docs/gateway.md`.
//!
//! Both are plain serde types with no I/O, shared by the two ends of each.

pub mod link;
pub mod unix;
