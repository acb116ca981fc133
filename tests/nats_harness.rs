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
    let victim = (0..3).find(|&i| cluster.name(i) == stream_leader).unwrap();
    assert_eq!(cluster.stream_leaders(), [("R".to_owned(), victim)]);

    // Kill the stream's leader; the other two elect one and take writes.
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

/// The replica tools (tests/common/replicas.rs) on one gateway of the local
/// engine, which keeps its journals across kill -9: what a replica serves,
/// compared with the host's journal; the proxy that moves a host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replica_checks_hold_for_one_local_gateway_across_its_kill9() {
    let mut r = Replicas::start_with_config(1, &local_gateway_config("cancel_timeout = \"1s\""));
    let proxy = Proxy::start(r.addr(0).to_owned()).await;
    let d = r.start_host("h1", &[proxy.url()]);
    let tmp = tempfile::tempdir().unwrap();
    let stop = tmp.path().join("stop");
    launch(&d, "p", &producer(&stop));
    let mut early = r.subscribe(0, "h1", "p", 0).await;
    r.wait_seq(0, "h1", "p", 20).await;
    r.wait_connected("h1", true).await;

    r.kill9(0);
    r.restart(0);
    let n = host_last_seq(&d, "p").await;
    r.wait_seq(0, "h1", "p", n + 20).await;
    let mut late = r.subscribe(0, "h1", "p", 10).await;
    touch(&stop);
    d.wait_final("p").await;

    let theirs = journal(&host_journal_path(&d, "p"));
    r.assert_same_copy_everywhere("h1", &d, "p").await;
    let got = ws_read(&mut late, |_| false).await;
    assert_same_events(&got, &theirs[10..], "h1", "since=10");
    // The subscriber from before the kill lost its connection: what it got
    // is a prefix, each once, in order.
    let got = ws_read(&mut early, |_| false).await;
    assert!(
        !got.events.is_empty() && got.events[..] == with_host(&theirs, "h1")[..got.events.len()],
        "{:?}",
        got.seqs()
    );
    let runs = r.assert_runs_converge().await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["lastSeq"], theirs.len(), "{runs:?}");
    r.wait_connected("h1", true).await;
}
