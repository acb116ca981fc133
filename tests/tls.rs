//! Issue 14, TLS: the listener with a certificate made here (rcgen), real
//! TLS clients (rustls, tungstenite, the CLI), certificate reload by SIGHUP,
//! a wrong-CA client, plain HTTP on the TLS port, a stalled handshake, and
//! the daemon's link to a `wss://` gateway.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

/// A daemon serving TLS with a leaf of `ca`; returns it and the leaf's DER.
fn tls_daemon(ca: &TestCa, extra: &str) -> (Daemon, Vec<u8>) {
    let mut d = Daemon::prepare("");
    let der = ca.write_leaf(d.dir.path());
    d.extra_config = format!("{}{extra}", tls_config_toml(d.dir.path()));
    d.spawn();
    (d, der)
}

/// SIGHUP, then waits for `marker` to appear once more in the log.
fn hup(d: &Daemon, marker: &str) {
    let before = d.log().matches(marker).count();
    signal(d.pid() as i32, Signal::SIGHUP);
    let deadline = std::time::Instant::now() + WAIT;
    while d.log().matches(marker).count() == before {
        assert!(std::time::Instant::now() < deadline, "no {marker:?}:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_wss_and_the_cli_over_tls_with_a_certificate_made_here() {
    let ca = TestCa::new("runtap test CA");
    let (d, _) = tls_daemon(&ca, "");
    let trust = client_config(&[&ca.pem]);
    let token = d.token();

    let (status, body) = https(&d.addr, trust.clone(), "GET", "/healthz", None).await;
    assert_eq!(status, 200, "{body}");
    // 20 000 lines: far more than one TLS record and rustls' send buffer,
    // so partial writes of encrypted records are exercised.
    let out = d.run(&["run", "--id", "big", "--", "sh", "-c", "seq 1 20000"]);
    assert!(out.status.success(), "{out:?}");
    let (status, body) = https(&d.addr, trust.clone(), "GET", "/runs/big", Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    let run: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(run["status"], "succeeded");

    let url = format!("wss://127.0.0.1:{}/runs?runId=big&token={token}", d.addr.rsplit(':').next().unwrap());
    let mut ws = wss_connect(&url, trust.clone()).await;
    let got = ws_read(&mut ws, |_| false).await;
    assert_eq!(got.close, Some(1000), "{:?}", got.controls);
    let seqs = got.seqs();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "gap-free, in order");
    let text: String =
        got.events.iter().filter(|e| e.kind == runtap::event::EventType::Stdout).map(|e| e.data.clone()).collect();
    let want: String = (1..=20000).map(|i| format!("{i}\n")).collect();
    assert!(text == want, "every byte of stdout over wss ({} of {} bytes)", text.len(), want.len());

    // The CLI over https:// trusts RUNTAP_CA_FILE besides the system's roots.
    let ca_file = ca.write(&d.dir.path().join("ca.pem"));
    let mut cli = d.cli();
    cli.args(["logs", "--url", &format!("https://{}", d.addr), "big"]);
    cli.env("RUNTAP_TOKEN", &token).env("RUNTAP_CA_FILE", &ca_file).stdin(std::process::Stdio::null());
    let out = output_with_timeout(cli, WAIT);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout == want.as_bytes(), "runtap logs --url https:// prints the run's output");

    // Without the CA the CLI refuses the server, and says why.
    let mut cli = d.cli();
    cli.args(["ps", "--url", &format!("https://{}", d.addr)]).env("RUNTAP_TOKEN", &token).env_remove("RUNTAP_CA_FILE");
    let out = output_with_timeout(cli, WAIT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("TLS") && err.contains("certificate"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_and_ws_on_the_tls_port_are_told_to_use_tls() {
    let ca = TestCa::new("runtap test CA");
    let (d, _) = tls_daemon(&ca, "");
    let (status, body) = http_to(&d.addr, "GET", "/healthz", None).await;
    assert_eq!(status, 400, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["code"], "tls-required", "{v}");
    let plain = tokio_tungstenite::connect_async(format!("ws://{}/ws", d.addr)).await;
    assert!(plain.is_err(), "a plain WebSocket must not be served");
    // Neither counts as a failed TLS handshake, and the daemon serves TLS as before.
    let (status, metrics) = https(&d.addr, client_config(&[&ca.pem]), "GET", "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(metrics.contains("runtap_tls_handshake_failures_total 0"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_trusts_another_ca_is_refused() {
    let ca = TestCa::new("runtap test CA");
    let other = TestCa::new("someone else's CA");
    let (d, _) = tls_daemon(&ca, "");
    let refused = tls_connect(&d.addr, client_config(&[&other.pem])).await;
    let Err(err) = refused else { panic!("the handshake must fail") };
    let err = err.to_string();
    assert!(err.contains("certificate"), "{err}");
    let (status, metrics) = https(&d.addr, client_config(&[&ca.pem]), "GET", "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(metrics.contains("runtap_tls_handshake_failures_total 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_certificate_for_new_handshakes_and_open_streams_stay() {
    let (ca, ca2) = (TestCa::new("first CA"), TestCa::new("second CA"));
    let (d, first) = tls_daemon(&ca, "");
    let token = d.token();
    let port = d.addr.rsplit(':').next().unwrap().to_owned();
    let mut ws = wss_connect(&format!("wss://127.0.0.1:{port}/ws?token={token}"), client_config(&[&ca.pem])).await;
    ws_send_json(&mut ws, json!({"type": "subscribe", "runId": "later-*"})).await;
    ws_read(&mut ws, |r| !r.controls.is_empty()).await;

    // A broken key refuses the reload; the old certificate stays.
    std::fs::write(d.dir.path().join("key.pem"), "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")
        .unwrap();
    hup(&d, "reload refused");
    assert!(d.log().contains("stream.tls_key"), "the error names the key:\n{}", d.log());
    let s = tls_connect(&d.addr, client_config(&[&ca.pem])).await.unwrap();
    assert_eq!(peer_cert(&s), first, "still the first certificate");

    let second = ca2.write_leaf(d.dir.path());
    hup(&d, "config reloaded");
    let s = tls_connect(&d.addr, client_config(&[&ca2.pem])).await.unwrap();
    assert_eq!(peer_cert(&s), second, "new handshakes get the new certificate");
    assert!(tls_connect(&d.addr, client_config(&[&ca.pem])).await.is_err(), "the first CA no longer vouches for it");

    // The stream opened before the reload carries on over its old session.
    launch(&d, "later-1", "echo after the reload");
    let got = ws_read(&mut ws, |r| r.controls.iter().any(|c| c["type"] == "end")).await;
    assert!(got.events.iter().any(|e| e.data == "after the reload\n"), "{got:?}");
    assert_eq!(got.close, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_closed_within_handshake_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = TestCa::new("runtap test CA");
    let (d, _) = tls_daemon(&ca, "handshake_timeout = \"1s\"\n");
    // The first bytes of a TLS record (a handshake, 512 bytes announced), then nothing.
    let mut s = tokio::net::TcpStream::connect(&d.addr).await.unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server must close a stalled handshake");
    assert!(started.elapsed() < Duration::from_secs(10), "closed after {:?}", started.elapsed());
    let (status, metrics) = https(&d.addr, client_config(&[&ca.pem]), "GET", "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(metrics.contains("runtap_tls_handshake_failures_total 1"), "{metrics}");
    assert!(d.log().contains("TLS handshake timeout"), "{}", d.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_forwards_to_a_wss_gateway_it_trusts_by_ca_file() {
    let ca = TestCa::new("gateway CA");
    let mut g = Gateway::prepare("");
    ca.write_leaf(g.dir.path());
    g.extra_config = tls_config_toml(g.dir.path());
    g.spawn();
    let ca_file = ca.write(&g.dir.path().join("ca.pem"));
    let url = format!("wss://127.0.0.1:{}", g.addr.rsplit(':').next().unwrap());

    let mut d = Daemon::prepare(&format!("[upstream]\nca_file = {:?}\n", ca_file.display().to_string()));
    d.extra_args = upstream_args(&url, "tls-host", &g.agent_token_path());
    d.spawn();
    let out = d.run(&["run", "--id", "over-tls", "--", "sh", "-c", "seq 1 500"]);
    assert!(out.status.success(), "{out:?}");
    let local = journal(&host_journal_path(&d, "over-tls"));
    let path = g.events_path("tls-host", "over-tls");
    wait_until(
        || format!("the gateway's copy of over-tls:\n{}\n{}", d.log(), g.log()),
        || {
            let path = path.clone();
            let want = local.len();
            async move { std::fs::read_to_string(&path).is_ok_and(|t| t.lines().count() >= want) }
        },
    )
    .await;
    let copy = journal(&path);
    assert_eq!(seqs(&copy), seqs(&local), "every event reached the gateway over wss");
    assert_eq!(copy.last().unwrap()["data"], "succeeded");

    // Without the CA file the daemon refuses the gateway's certificate, and logs why.
    let mut other = Daemon::prepare("");
    other.extra_args = upstream_args(&url, "untrusting", &g.agent_token_path());
    other.spawn();
    wait_until(
        || format!("a refused certificate in the log:\n{}", other.log()),
        || {
            let log = other.log();
            async move { log.contains("cannot reach the gateway") && log.contains("invalid peer certificate") }
        },
    )
    .await;
}
