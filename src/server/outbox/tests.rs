//! The outbox against real sockets: partial writes, framings, cuts, filters.

use super::*;
use crate::event::Frame;
use std::io::Cursor;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

#[test]
fn headers_parse_back_with_tungstenite() {
    for len in [0usize, 1, 125, 126, 127, 65535, 65536, 1 << 20] {
        let mut h = [0u8; 10];
        let n = ws_header(TEXT, len, &mut h);
        assert_eq!(n, ws_header_len(len));
        let (parsed, plen) = FrameHeader::parse(&mut Cursor::new(&h[..n])).unwrap().unwrap();
        assert_eq!(plen, len as u64);
        assert!(parsed.is_final && parsed.mask.is_none());
        assert_eq!(parsed.opcode, OpCode::Data(Data::Text));
    }
}

fn batch(seqs: std::ops::RangeInclusive<u64>, size: usize) -> Arc<Batch> {
    let pad = |seq: u64| "0".repeat(size - seq.to_string().len()) + &seq.to_string();
    let frames = seqs.map(|seq| Frame { seq, json: pad(seq).into() }).collect();
    Arc::new(Batch { frames, last: false })
}

/// Decodes server frames back into (opcode, payload).
fn decode(mut wire: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !wire.is_empty() {
        let mut c = Cursor::new(wire);
        let (h, len) = FrameHeader::parse(&mut c).unwrap().unwrap();
        let start = c.position() as usize;
        let end = start + len as usize;
        out.push((u8::from(h.opcode), wire[start..end].to_vec()));
        wire = &wire[end..];
    }
    out
}

/// A connected pair: what the outbox writes, and a task reading it all.
async fn pair() -> (TcpStream, tokio::task::JoinHandle<Vec<u8>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        all
    });
    (TcpStream::connect(addr).await.unwrap(), client)
}

async fn flush(out: &mut Outbox, tcp: &TcpStream) {
    while !out.is_empty() {
        out.write_to(tcp).unwrap();
        if !out.is_empty() {
            tcp.writable().await.unwrap();
        }
    }
}

#[tokio::test]
async fn partial_writes_resume_mid_frame_and_keep_order() {
    let (tcp, client) = pair().await;
    let mut out = Outbox::new(Framing::WebSocket);
    let mut hello = [0u8; 10];
    let n = ws_header(TEXT, 5, &mut hello);
    out.push_raw(Bytes::from([&hello[..n], b"hello"].concat()));
    assert_eq!(out.push_batch(batch(1..=3, 5), 1, 0), (2, 10));
    // Big frames force partial writes once the socket buffer fills.
    out.push_batch(batch(4..=20, 200_000), 0, 1);
    flush(&mut out, &tcp).await;
    assert_eq!(out.bytes(), 0);
    assert_eq!((out.written(0), out.written(1), out.written(2)), (Some(3), Some(20), None));
    drop(tcp);
    let frames = decode(&client.await.unwrap());
    assert_eq!(frames.len(), 1 + 2 + 17);
    assert_eq!(frames[0], (TEXT, b"hello".to_vec()));
    assert_eq!(frames[1], (TEXT, b"00002".to_vec()));
    assert_eq!(frames[3].1.len(), 200_000);
    assert!(frames[19].1.starts_with(b"0000") && frames[19].1.ends_with(b"20"));
}

#[tokio::test]
async fn lines_framing_writes_one_line_per_event() {
    let (tcp, client) = pair().await;
    let mut out = Outbox::new(Framing::Lines);
    out.push_raw(Bytes::from_static(b"{\"type\":\"subscribed\"}\n"));
    out.push_batch(batch(1..=3, 4), 0, 0);
    flush(&mut out, &tcp).await;
    drop(tcp);
    assert_eq!(client.await.unwrap(), b"{\"type\":\"subscribed\"}\n0001\n0002\n0003\n");
}

/// Cut while a frame is half written: that frame is finished (and
/// counts as written), nothing after it is sent.
#[tokio::test]
async fn cut_keeps_only_the_frame_on_its_way() {
    let (tcp, client) = pair().await;
    let mut out = Outbox::new(Framing::WebSocket);
    out.push_batch(batch(1..=40, 100_000), 0, 0);
    out.write_to(&tcp).unwrap();
    assert!(!out.is_empty(), "4 MB cannot fit in the socket buffer at once");
    out.cut_to_front();
    let cut_at = out.written(0).unwrap();
    flush(&mut out, &tcp).await;
    drop(tcp);
    let frames = decode(&client.await.unwrap());
    assert_eq!(frames.len() as u64, cut_at, "every frame up to the cut, whole, and none after");
    assert!(frames.iter().all(|(op, p)| *op == TEXT && p.len() == 100_000));
}

#[tokio::test]
async fn filtered_batches_send_only_kept_events() {
    let (tcp, client) = pair().await;
    let mut out = Outbox::new(Framing::Lines);
    let keep = |json: &[u8]| json.ends_with(b"2") || json.ends_with(b"3") || json.ends_with(b"6");
    assert_eq!(out.push_batch_where(batch(1..=6, 4), 1, 0, keep), (3, 12));
    flush(&mut out, &tcp).await;
    assert_eq!(out.written(0), Some(6));
    drop(tcp);
    assert_eq!(client.await.unwrap(), b"0002\n0003\n0006\n");
}

const WRAP_WS: Framing = Framing::Wrapped { frame: true, prefix: b"42[\"e\",", suffix: b"]", separator: b"" };
const WRAP_POLL: Framing =
    Framing::Wrapped { frame: false, prefix: b"42[\"e\",", suffix: b"]\x1e", separator: b"\x1e" };

/// Socket.IO's framing: each event between the prefix and suffix, in a
/// text frame of its own; the connection's own messages framed alone.
#[tokio::test]
async fn wrapped_events_are_whole_frames() {
    let (tcp, client) = pair().await;
    let mut out = Outbox::new(WRAP_WS);
    out.push_message(Bytes::from_static(b"40"));
    out.push_batch(batch(1..=2, 3), 0, 0);
    out.push_batch(batch(3..=3, 70_000), 0, 0);
    let expected = out.bytes();
    flush(&mut out, &tcp).await;
    drop(tcp);
    let wire = client.await.unwrap();
    assert_eq!(wire.len(), expected, "bytes() counts what is written");
    let frames = decode(&wire);
    assert_eq!(frames[0], (TEXT, b"40".to_vec()));
    assert_eq!(frames[1], (TEXT, b"42[\"e\",001]".to_vec()));
    assert_eq!(frames[3].1.len(), 7 + 70_000 + 1);
    assert!(frames[3].1.starts_with(b"42[\"e\",0") && frames[3].1.ends_with(b"3]"));
}

/// A polling body: packets separated by `\x1e`; moved to a WebSocket
/// before anything is written, what waits is framed the new way.
#[tokio::test]
async fn polling_framing_and_the_move_to_websocket() {
    struct Sink(std::cell::RefCell<Vec<u8>>);
    impl TryWrite for Sink {
        fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            bufs.iter().for_each(|b| self.0.borrow_mut().extend_from_slice(b));
            Ok(bufs.iter().map(|b| b.len()).sum())
        }
    }
    let mut out = Outbox::new(WRAP_POLL);
    out.push_message(Bytes::from_static(b"2"));
    out.push_batch(batch(1..=2, 2), 0, 0);
    let sink = Sink(Default::default());
    out.write_to(&sink).unwrap();
    assert_eq!(sink.0.into_inner(), b"2\x1e42[\"e\",01]\x1e42[\"e\",02]\x1e");
    out.push_message(Bytes::from_static(b"3probe"));
    out.push_batch(batch(3..=3, 2), 0, 0);
    assert!(out.set_framing(WRAP_WS));
    let (tcp, client) = pair().await;
    let expected = out.bytes();
    flush(&mut out, &tcp).await;
    drop(tcp);
    let wire = client.await.unwrap();
    assert_eq!(wire.len(), expected);
    assert_eq!(decode(&wire), vec![(TEXT, b"3probe".to_vec()), (TEXT, b"42[\"e\",03]".to_vec())]);
    out.push_raw(Bytes::from_static(b"raw"));
    assert!(!out.set_framing(WRAP_POLL), "bytes already framed cannot be re-framed");
}
