//! Issue 13, the CLI over the network: `logs`, `ps` and `cancel` with
//! `--url` print what they print over the Unix socket, byte for byte, and
//! exit the same, against a daemon and against a gateway with two hosts;
//! wrong URLs, tokens and runs give clear errors and non-zero exits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;
use runtap::event::RunStatus;

/// stdout text, stderr text, bytes that are not UTF-8 (NUL, 0xff), a
/// 200 kB random block (several events), then a last line on each stream.
const MIXED: &str = "printf 'out 1\\n'; printf 'err 1\\n' >&2; printf '\\377\\376\\000bin\\n'; \
                     head -c 200000 /dev/urandom; printf 'err 2\\n' >&2; echo 'out 2'";

/// A `runtap` command with none of the caller's `RUNTAP_*` and a socket
/// that does not exist, so a remote command that used it would fail.
fn cli(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(bin());
    for var in ["RUNTAP_URL", "RUNTAP_TOKEN", "RUNTAP_TOKEN_FILE", "RUNTAP_CA_FILE"] {
        c.env_remove(var);
    }
    c.env("RUNTAP_SOCKET", "/nonexistent/runtap.sock").args(args).envs(env.iter().copied()).stdin(Stdio::null());
    c
}

fn remote(args: &[&str], env: &[(&str, &str)]) -> Output {
    output_with_timeout(cli(args, env), WAIT)
}

/// The same output and exit status, or a report of how they differ.
fn assert_same(what: &str, local: &Output, remote: &Output) {
    assert_eq!(remote.status.code(), local.status.code(), "{what}: exit\nremote stderr: {}", text(&remote.stderr));
    assert!(
        local.stdout == remote.stdout,
        "{what}: stdout differs ({} vs {} bytes)",
        local.stdout.len(),
        remote.stdout.len()
    );
    assert_eq!(text(&remote.stderr), text(&local.stderr), "{what}: stderr");
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn token_file(dir: &Path, name: &str, token: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{token}\n")).unwrap();
    path
}

/// A daemon, its URL, and the file holding its generated token.
fn daemon_with_token_file() -> (Daemon, String, String) {
    let d = Daemon::start();
    let url = d.http_url("");
    let tf = d.state_dir().join("token").to_str().unwrap().to_owned();
    (d, url, tf)
}

/// Waits until `addr` serves at least `n` WebSocket sessions (a `logs -f` has connected).
async fn wait_websockets(addr: &str, n: i64) {
    wait_until(
        || format!("{n} websocket(s) at {addr}"),
        || async { http_json(addr, "GET", "/healthz", None).await.1["websockets"].as_i64().unwrap_or(0) >= n },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_over_the_network_equal_local_logs_byte_for_byte() {
    let (d, url, tf) = daemon_with_token_file();
    let tf = tf.as_str();
    let out = d.run(&["run", "--id", "mixed", "--", "sh", "-c", MIXED]);
    assert!(out.status.success(), "{out:?}");
    for args in [&["logs", "mixed"][..], &["logs", "-f", "mixed"], &["logs", "--since", "4", "mixed"]] {
        let local = d.run(args);
        // Output events carry at most 64 KiB: past seq 4 there are still 60 kB.
        let least = if args.contains(&"--since") { 60_000 } else { 200_000 };
        assert!(local.status.success() && local.stdout.len() > least, "{args:?}: {} bytes", local.stdout.len());
        let mut with_url = args.to_vec();
        with_url.extend(["--url", &url, "--token-file", tf]);
        assert_same(&format!("{args:?}"), &local, &remote(&with_url, &[]));
    }

    // -f started while the run is running: live, then the end, same bytes.
    let stop = d.dir.path().join("stop");
    launch(&d, "live", &format!("{MIXED}; {}", producer(&stop)));
    d.wait_running("live").await;
    let follower = Collecting::start(cli(&["logs", "-f", "live", "--url", &url], &[("RUNTAP_TOKEN_FILE", tf)]));
    wait_websockets(&d.addr, 1).await;
    touch(&stop);
    let followed = follower.finish(WAIT).expect("logs -f ends with the run");
    assert_eq!(d.wait_final("live").await.status(), Some(RunStatus::Succeeded));
    assert_same("logs -f while running", &d.run(&["logs", "live"]), &followed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_through_a_gateway_with_two_hosts() {
    let gw = Gateway::start();
    let (h1, h2) = (gw.start_host("h1"), gw.start_host("h2"));
    let url = format!("http://{}", gw.addr);
    let tf = gw.state_dir().join("token");
    let tf = tf.to_str().unwrap();
    for h in [&h1, &h2] {
        launch(h, "dup", MIXED);
        h.wait_final("dup").await;
    }
    for (name, h) in [("h1", &h1), ("h2", &h2)] {
        wait_gateway_seq(&gw, name, "dup", host_last_seq(h, "dup").await).await;
        let got = remote(&["logs", "dup", "--url", &url, "--token-file", tf, "--host", name], &[]);
        assert_same(&format!("logs --host {name}"), &h.run(&["logs", "dup"]), &got);
    }
    // On both hosts, the ID alone is ambiguous: said, and exit 1.
    let got = remote(&["logs", "dup", "--url", &url, "--token-file", tf], &[]);
    assert_eq!(got.status.code(), Some(1), "{got:?}");
    assert!(text(&got.stderr).contains("several hosts"), "{}", text(&got.stderr));

    let stop = h2.dir.path().join("stop");
    launch(&h2, "live", &format!("{MIXED}; {}", producer(&stop)));
    wait_gateway_seq(&gw, "h2", "live", 3).await;
    let follower =
        Collecting::start(cli(&["logs", "-f", "live", "--url", &url, "--token-file", tf, "--host", "h2"], &[]));
    wait_websockets(&gw.addr, 1).await;
    touch(&stop);
    let followed = follower.finish(WAIT).expect("logs -f ends with the run");
    h2.wait_final("live").await;
    assert_same("logs -f --host h2 while running", &h2.run(&["logs", "live"]), &followed);

    // ps: every host's runs, with a HOST column; --host keeps one host's.
    let table = remote(&["ps", "--url", &url, "--token-file", tf], &[]);
    assert!(table.status.success(), "{table:?}");
    let table = text(&table.stdout);
    assert!(table.starts_with("HOST  ID "), "{table}");
    assert_eq!(table.lines().filter(|l| l.starts_with("h1 ") || l.starts_with("h2 ")).count(), 3, "{table}");
    let json = remote(&["ps", "--json", "--host", "h2", "--url", &url, "--token-file", tf], &[]);
    let runs: Vec<serde_json::Value> = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(runs.iter().all(|r| r["host"] == "h2"), "{runs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ps_over_the_network_equals_local_ps() {
    let d = Daemon::start();
    for (id, script) in [("ok", "echo hi"), ("bad", "exit 3")] {
        let _ = d.run(&["run", "--id", id, "--", "sh", "-c", script]);
    }
    let url = d.http_url("/");
    let token = d.token();
    let env = [("RUNTAP_URL", url.as_str()), ("RUNTAP_TOKEN", token.as_str())];
    assert_same("ps", &d.run(&["ps"]), &remote(&["ps"], &env));
    assert_same("ps --json", &d.run(&["ps", "--json"]), &remote(&["ps", "--json"], &env));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_needs_a_token_that_may_cancel() {
    let d = Daemon::start_with(
        "[stream]\ntokens = [\"full-token-0123456789\"]\nread_only_tokens = [\"read-only-token-0123456789\"]\n",
    );
    let dir = d.dir.path();
    let full = token_file(dir, "full", "full-token-0123456789");
    let read_only = token_file(dir, "ro", "read-only-token-0123456789");
    let url = d.http_url("");
    launch(&d, "victim", "sleep 30");
    d.wait_running("victim").await;

    let refused = remote(&["cancel", "victim", "--url", &url, "--token-file", read_only.to_str().unwrap()], &[]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(text(&refused.stderr).contains("may not cancel"), "{}", text(&refused.stderr));
    // It can still read: the run is there, still running.
    let ps = remote(&["ps", "--json", "--url", &url, "--token-file", read_only.to_str().unwrap()], &[]);
    assert!(text(&ps.stdout).contains("\"running\""), "{}", text(&ps.stdout));

    let args =
        ["cancel", "victim", "--reason", "over the network", "--url", &url, "--token-file", full.to_str().unwrap()];
    let ok = remote(&args, &[]);
    assert!(ok.status.success(), "{ok:?}");
    assert_eq!(text(&ok.stdout), "cancelling victim (was running)\n");
    let fin = d.wait_final("victim").await;
    assert_eq!((fin.status(), fin.reason.as_deref()), (Some(RunStatus::Cancelled), Some("over the network")));
    // Twice is harmless, and said as over the socket.
    assert_same("cancel a finished run", &d.run(&["cancel", "victim"]), &remote(&args, &[]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_url_token_or_run_give_clear_errors() {
    let (d, url, tf) = daemon_with_token_file();
    let tf = tf.as_str();
    let err = |out: &Output| text(&out.stderr);

    for (args, env, code, want) in [
        (vec!["ps", "--url", "ftp://h:1"], vec![], 125, "invalid URL \"ftp://h:1\" (--url): unsupported scheme ftp://"),
        (vec!["logs", "x"], vec![("RUNTAP_URL", "localhost:7878")], 125, "invalid URL \"localhost:7878\" (RUNTAP_URL)"),
        (vec!["ps", "--url", &url], vec![], 125, "no token for"),
        (vec!["ps", "--host", "h1"], vec![], 125, "--token-file and --host need --url"),
        (vec!["ps", "--url", &url, "--token-file", "/nonexistent/t"], vec![], 125, "read token file /nonexistent/t"),
    ] {
        let out = remote(&args, &env);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", err(&out));
        assert!(err(&out).starts_with(&format!("runtap: {want}")), "{args:?}: {}", err(&out));
    }

    // Nobody listening; and https:// to a server that speaks plain HTTP.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let closed = format!("http://127.0.0.1:{port}");
    let out = remote(&["ps", "--url", &closed, "--token-file", tf], &[]);
    assert_eq!(out.status.code(), Some(125), "{}", err(&out));
    assert!(err(&out).starts_with(&format!("runtap: cannot connect to {closed}: ")), "{}", err(&out));
    let https = format!("https://{}", d.addr);
    let out = remote(&["ps", "--url", &https, "--token-file", tf], &[]);
    assert_eq!(out.status.code(), Some(125), "{}", err(&out));
    assert!(err(&out).contains("TLS"), "{}", err(&out));

    // A refused token: where it came from is said, the token never.
    let wrong = token_file(d.dir.path(), "wrong", "wrong-token-0123456789");
    let out = remote(&["logs", "x", "--url", &url], &[("RUNTAP_TOKEN", "secret-wrong-token-42")]);
    assert_eq!(out.status.code(), Some(1), "{}", err(&out));
    assert!(err(&out).contains("refused the token from RUNTAP_TOKEN"), "{}", err(&out));
    assert!(!err(&out).contains("secret-wrong-token-42"), "{}", err(&out));
    let out = remote(&["ps", "--url", &url, "--token-file", wrong.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", err(&out));
    assert!(err(&out).contains(&format!("refused the token from --token-file {}", wrong.display())), "{}", err(&out));

    // An unknown run and an invalid ID: word for word as over the socket.
    for args in [&["logs", "nope"][..], &["logs", "-f", "nope"], &["cancel", "nope"], &["logs", "../etc"]] {
        let mut with_url = args.to_vec();
        with_url.extend(["--url", &url, "--token-file", tf]);
        let local = d.run(args);
        assert_eq!(local.status.code(), Some(1), "{args:?}: {local:?}");
        assert_same(&format!("{args:?}"), &local, &remote(&with_url, &[]));
    }
}
