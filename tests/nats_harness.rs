//! The NATS harness itself (tests/common/nats.rs), known good before any
//! gateway uses it: a server keeps its JetStream store across kill -9 and
//! restart on the same port, a frozen one answers nothing until thawed, and
//! three nodes form a cluster whose R3 stream survives one node's death.
//! These need only `nats-server`; the engine's tests are gateway_nats.rs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

#[test]
fn a_server_keeps_its_store_across_kill9_and_restart_and_freezes() {
    let Some(mut nats) = Nats::start() else { return };
    assert!(nats.url().starts_with("nats://127.0.0.1:"), "{}", nats.url());
    let mut c = nats.conn();
    c.create_stream("T", &["t.>"], 1);
    for i in 1..=3 {
        assert_eq!(c.js_publish("t.a", format!("m{i}").as_bytes()), i);
    }
    drop(c);

    nats.kill9();
    assert!(!nats.is_ready(), "killed, yet it answers");
    let url = nats.url();
    nats.restart();
    assert_eq!(nats.url(), url, "same port after a restart");
    assert!(has_jetstream_store(&nats.store()));
    let mut c = nats.conn();
    let info = c.stream_info("T");
    assert_eq!(info["state"]["messages"], 3, "the store across kill -9: {info}\n{}", nats.log());
    assert_eq!(c.js_publish("t.b", b"m4"), 4);

    // Frozen: connections stay open and nothing answers, until thawed.
    nats.freeze();
    assert!(!nats.is_ready(), "frozen, yet it answers");
    assert_eq!(c.request("$JS.API.STREAM.INFO.T", b"{}", Duration::from_millis(300)), None);
    nats.thaw();
    nats.wait_ready();
    // The request sent while frozen is answered now; it must not be taken
    // for the next one's reply.
    assert_eq!(c.js_publish("t.c", b"m5"), 5);
    assert_eq!(c.stream_info("T")["state"]["messages"], 5);
}

#[test]
fn three_nodes_form_a_cluster_whose_r3_stream_survives_a_node_kill9() {
    let Some(mut cluster) = NatsCluster::start(3) else { return };
    assert_eq!(cluster.urls().len(), 3);
    let leader = cluster.meta_leader(0).unwrap();
    for i in 0..3 {
        assert_eq!(cluster.meta_leader(i).as_deref(), Some(leader.as_str()), "node {i}");
    }

    let mut c = cluster.conn(0);
    c.create_stream("R", &["r.>"], 3);
    assert_eq!(c.js_publish("r.a", b"one"), 1);
    let info = c.stream_info("R");
    assert_eq!(info["config"]["num_replicas"], 3, "{info}");
    let stream_leader = info["cluster"]["leader"].as_str().unwrap().to_owned();
    drop(c);

    // Kill the stream's leader; the other two elect one and take writes.
    let victim = (0..3).find(|&i| cluster.name(i) == stream_leader).unwrap();
    let survivor = (victim + 1) % 3;
    cluster.kill9(victim);
    cluster.wait_ready();
    let mut c = cluster.conn(survivor);
    assert_eq!(c.js_publish("r.b", b"two"), 2, "{}", cluster.logs());
    drop(c);

    // Back with its store, it catches up.
    cluster.restart(victim);
    let mut c = cluster.conn(victim);
    assert_eq!(c.js_publish("r.c", b"three"), 3, "{}", cluster.logs());
    let info = c.stream_info("R");
    assert_eq!(info["state"]["messages"], 3, "{info}");
}
