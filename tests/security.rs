//! Issue 17, security checks: no token of any kind, accepted or refused,
//! reaches a log line, a metric, `/healthz` or the CLI's stderr; the state
//! dir, token files, journals and the Unix socket keep other users out; and
//! `systemd-analyze security` keeps the unit's exposure where
//! docs/security.md says it is.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, get_current_timestamp};
use nix::sys::signal::Signal;
use serde_json::json;

const SECRET: &str = "a-test-hs256-secret-of-32-bytes-or-more";
const READ_ONLY: &str = "read-only-token-5a9d1c7e3b";

fn mint(secret: &str, exp_in: i64) -> String {
    let exp = get_current_timestamp().saturating_add_signed(exp_in);
    let claims = json!({"sub": "sec-test", "exp": exp, "aud": "runtap", "iss": "ci",
                        "caps": [{"runs": ["*"], "allow": ["read"]}]});
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes()).unwrap()).unwrap()
}

/// The part of a JWT that proves it: `header.claims.SIGNATURE`.
fn signature(jwt: &str) -> &str {
    jwt.rsplit('.').next().unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o7777
}

/// A `runtap` CLI command with only the `RUNTAP_*` variables given, logging at debug.
fn cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(bin());
    for var in ["RUNTAP_URL", "RUNTAP_TOKEN", "RUNTAP_TOKEN_FILE", "RUNTAP_CA_FILE"] {
        c.env_remove(var);
    }
    c.env("RUNTAP_SOCKET", "/nonexistent/runtap.sock").env("RUST_LOG", "runtap=debug");
    c.args(args).envs(env.iter().copied()).stdin(Stdio::null());
    output_with_timeout(c, WAIT)
}

fn token_file(dir: &Path, name: &str, token: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{token}\n")).unwrap();
    path
}

/// Connects to `/runs/` over Engine.IO's WebSocket transport with the token
/// in the CONNECT packet; `ok` once a run event comes, else the `error`
/// event's code (a refused client is connected, told why, disconnected).
async fn socketio_connect(url: &str, token: &str) -> String {
    let mut ws = ws_connect(url, &[]).await;
    tokio::time::timeout(WAIT, async {
        while let Some(Ok(msg)) = ws.next().await {
            let Message::Text(text) = msg else { continue };
            let text = text.as_str();
            if text.starts_with("0{") {
                ws.send(Message::Text(format!("40{}", json!({"token": token})).into())).await.unwrap();
            } else if let Some(array) = text.strip_prefix("42") {
                let args: Vec<serde_json::Value> = serde_json::from_str(array).unwrap();
                return match args[0].as_str() {
                    Some("run-event") => "ok".to_owned(),
                    _ => args.get(1).and_then(|c| c.as_str()).unwrap_or(array).to_owned(),
                };
            } else if text.starts_with("41") || text.starts_with("44") {
                return text.to_owned();
            }
        }
        "closed".to_owned()
    })
    .await
    .expect("socket.io answer in time")
}

/// Every surface a viewer token is shown to, at the daemon or gateway `addr`.
/// Returns what each answered, so the caller can check accepted and refused.
async fn present_everywhere(addr: &str, run: &str, token: &str) -> Vec<(String, String)> {
    let mut answers = Vec::new();
    let (status, _) = http_to(addr, "GET", "/runs", Some(token)).await;
    answers.push(("http header".to_owned(), status.to_string()));
    let (status, _) = http_to(addr, "GET", &format!("/runs/{run}/log?token={token}"), None).await;
    answers.push(("http query".to_owned(), status.to_string()));
    let bearer = format!("Bearer {token}");
    let mut ws = ws_connect(&format!("ws://{addr}/runs?runId={run}"), &[("Authorization", &bearer)]).await;
    let got = ws_read(&mut ws, |r| !r.events.is_empty()).await;
    answers.push(("ws header".to_owned(), got.error_code().unwrap_or_else(|| "ok".into())));
    let mut ws = ws_connect(&format!("ws://{addr}/runs?runId={run}&token={token}"), &[]).await;
    let got = ws_read(&mut ws, |r| !r.events.is_empty()).await;
    answers.push(("ws query".to_owned(), got.error_code().unwrap_or_else(|| "ok".into())));
    let mut ws = ws_connect(&format!("ws://{addr}/ws"), &[]).await;
    ws_send_json(&mut ws, json!({"type": "auth", "token": token})).await;
    let got = ws_read(&mut ws, |r| !r.controls.is_empty()).await;
    let first = got.error_code().unwrap_or_else(|| got.controls[0]["type"].as_str().unwrap_or("").to_owned());
    answers.push(("ws message".to_owned(), first));
    let sio = socketio_connect(&format!("ws://{addr}/runs/?EIO=4&transport=websocket&runId={run}"), token).await;
    answers.push(("socket.io".to_owned(), sio));
    answers
}

fn accepted(answers: &[(String, String)]) -> bool {
    answers.iter().all(|(_, a)| ["200", "ok", "authenticated"].contains(&a.as_str()))
}

fn refused(answers: &[(String, String)]) -> bool {
    answers.iter().all(|(_, a)| ["401", "unauthorized"].contains(&a.as_str()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_reaches_a_log_a_metric_or_the_cli() {
    let gw = Gateway::start();
    let mut d = gw.prepare_host("sec-host");
    let secret = token_file(d.dir.path(), "jwt-secret", SECRET);
    d.extra_config = format!(
        "[stream]\nread_only_tokens = [\"{READ_ONLY}\"]\n\
         [auth]\njwt_hs256_secret_file = {:?}\njwt_audience = \"runtap\"\njwt_issuer = \"ci\"\n",
        secret.display().to_string()
    );
    d.spawn();
    wait_connected(&gw, "sec-host", true).await;
    launch(&d, "sec-run", "echo built");
    d.wait_final("sec-run").await;
    wait_gateway_seq(&gw, "sec-host", "sec-run", host_last_seq(&d, "sec-run").await).await;

    let viewer = d.token();
    let gw_viewer = gw.token();
    let agent = gw.agent_token();
    let jwt = mint(SECRET, 600);
    let expired = mint(SECRET, -3600);
    let forged = mint("another-secret-of-32-bytes-or-more!!", 600);
    let wrong_static = format!("{}x", &viewer[..viewer.len() - 1]);
    let wrong_read_only = "read-only-token-5a9d1c7e3c";
    let wrong_agent = format!("{}x", &agent[..agent.len() - 1]);

    // Accepted, at the daemon and at the gateway, on every surface.
    for (addr, token) in [(&d.addr, viewer.as_str()), (&d.addr, READ_ONLY), (&d.addr, &jwt), (&gw.addr, &gw_viewer)] {
        let answers = present_everywhere(addr, "sec-run", token).await;
        assert!(accepted(&answers), "{addr}: {answers:?}");
    }
    // Refused: wrong tokens of each kind, and the agent token as a viewer.
    for (addr, token) in [
        (&d.addr, wrong_static.as_str()),
        (&d.addr, wrong_read_only),
        (&d.addr, &expired),
        (&d.addr, &forged),
        (&gw.addr, &wrong_static),
        (&gw.addr, &forged),
        (&gw.addr, &wrong_agent),
    ] {
        let answers = present_everywhere(addr, "sec-run", token).await;
        assert!(refused(&answers), "{addr}: {answers:?}");
    }
    let answers = present_everywhere(&gw.addr, "sec-run", &agent).await;
    assert!(answers.iter().all(|(_, a)| !["200", "ok", "authenticated"].contains(&a.as_str())), "{answers:?}");

    // A host with a wrong agent token is refused at /agent.
    let mut stray = Daemon::prepare("");
    let stray_token = token_file(stray.dir.path(), "agent-token", &wrong_agent);
    stray.extra_args = upstream_args(&gw.url(), "stray-host", &stray_token);
    stray.spawn();
    wait_until(
        || format!("the stray host refused:\n{}", stray.log()),
        || async { stray.log().contains("missing or wrong token") },
    )
    .await;

    // The remote CLI: --token-file and RUNTAP_TOKEN, right and wrong.
    let files = tempfile::tempdir().unwrap();
    let mut stderr = String::new();
    for (url, token, ok) in [
        (d.http_url(""), viewer.as_str(), true),
        (d.http_url(""), READ_ONLY, true),
        (d.http_url(""), &jwt, true),
        (format!("http://{}", gw.addr), &gw_viewer, true),
        (d.http_url(""), &wrong_static, false),
        (d.http_url(""), &forged, false),
        (format!("http://{}", gw.addr), &agent, false),
    ] {
        let file = token_file(files.path(), "token", token);
        let by_file = cli(&["ps", "--url", &url, "--token-file", file.to_str().unwrap()], &[]);
        let by_env = cli(&["ps", "--url", &url], &[("RUNTAP_TOKEN", token)]);
        for out in [by_file, by_env] {
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            assert_eq!(out.status.success(), ok, "{url}: {err}");
            stderr.push_str(&err);
        }
    }

    // A reload logs what changed, never what the tokens are.
    for pid in [d.pid(), gw.pid()] {
        signal(pid as i32, Signal::SIGHUP);
    }
    wait_until(
        || "both reloaded".into(),
        || async { d.log().contains("config reloaded") && gw.log().contains("config reloaded") },
    )
    .await;

    let (_, d_metrics) = http_to(&d.addr, "GET", "/metrics", None).await;
    let (_, d_health) = http_to(&d.addr, "GET", "/healthz", None).await;
    let (_, gw_metrics) = http_to(&gw.addr, "GET", "/metrics", None).await;
    let (_, gw_health) = http_to(&gw.addr, "GET", "/healthz", None).await;
    assert!(d_metrics.contains("runtap_jwt_accepted_total"), "{d_metrics}");
    let (d_log, gw_log, stray_log) = (d.log(), gw.log(), stray.log());
    assert!(d_log.contains("JWT accepted") && d_log.contains("JWT refused"), "debug logging is on:\n{d_log}");
    let places = [
        ("daemon log", &d_log),
        ("gateway log", &gw_log),
        ("stray host log", &stray_log),
        ("CLI stderr", &stderr),
        ("daemon /metrics", &d_metrics),
        ("daemon /healthz", &d_health),
        ("gateway /metrics", &gw_metrics),
        ("gateway /healthz", &gw_health),
    ];
    let secrets = [
        ("viewer token", viewer.as_str()),
        ("gateway viewer token", &gw_viewer),
        ("read-only token", READ_ONLY),
        ("agent token", &agent),
        ("JWT", &jwt),
        ("JWT signature", signature(&jwt)),
        ("expired JWT signature", signature(&expired)),
        ("forged JWT signature", signature(&forged)),
        ("wrong static token", &wrong_static),
        ("wrong read-only token", wrong_read_only),
        ("wrong agent token", &wrong_agent),
        ("JWT secret", SECRET),
    ];
    for (place, text) in places {
        for (what, secret) in secrets {
            assert!(!text.contains(secret), "the {what} is in the {place}:\n{text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_tokens_journals_and_socket_keep_other_users_out() {
    let gw = Gateway::start();
    let d = gw.start_host("perm-host");
    wait_connected(&gw, "perm-host", true).await;
    launch(&d, "perm-run", "echo private output");
    d.wait_final("perm-run").await;
    wait_gateway_seq(&gw, "perm-host", "perm-run", host_last_seq(&d, "perm-run").await).await;

    // The state dirs: 0750, so a group member can reach the default socket
    // inside the daemon's; nothing for others.
    assert_eq!(mode(&d.state_dir()), 0o750);
    assert_eq!(mode(&gw.state_dir()), 0o750);
    // Tokens: the owner's alone.
    assert_eq!(mode(&d.state_dir().join("token")), 0o600);
    assert_eq!(mode(&gw.state_dir().join("token")), 0o600);
    assert_eq!(mode(&gw.agent_token_path()), 0o600);
    // The socket: daemon.socket_mode, 0660 by default.
    assert_eq!(mode(&d.socket()), 0o660);
    assert_journals_private(&d, &gw, "perm-host", "perm-run");
}

/// A run's journal at the host and at the gateway cannot be read by others:
/// the file itself, or a directory between it and the state dir, keeps
/// them out (the files hold the command line and all output).
fn assert_journals_private(d: &Daemon, gw: &Gateway, host: &str, run: &str) {
    for (root, file) in [(d.state_dir(), host_journal_path(d, run)), (gw.state_dir(), gw.events_path(host, run))] {
        let dir = file.parent().unwrap();
        for f in [file.clone(), dir.join("meta.json")] {
            let closed_dir = f.ancestors().skip(1).take_while(|p| p.starts_with(&root)).any(|p| mode(p) & 0o001 == 0);
            assert!(mode(&f) & 0o004 == 0 || closed_dir, "{} is readable by others", f.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journals_stay_private_in_a_state_dir_others_may_enter() {
    // A state dir made beforehand with mkdir's usual 0755: the daemon and
    // the gateway use it as it is.
    let mut gw = Gateway::prepare("");
    std::fs::DirBuilder::new().mode(0o755).create(gw.state_dir()).unwrap();
    gw.spawn();
    let mut d = gw.prepare_host("open-host");
    std::fs::DirBuilder::new().mode(0o755).create(d.state_dir()).unwrap();
    d.spawn();
    wait_connected(&gw, "open-host", true).await;
    launch(&d, "open-run", "echo private output");
    d.wait_final("open-run").await;
    wait_gateway_seq(&gw, "open-host", "open-run", host_last_seq(&d, "open-run").await).await;
    assert_eq!(mode(&d.state_dir()), 0o755);
    assert_journals_private(&d, &gw, "open-host", "open-run");
    assert_eq!(mode(&d.state_dir().join("token")), 0o600);
}

#[test]
fn the_units_exposure_is_as_documented() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("skipped: no systemd-analyze");
        return;
    };
    assert!(version.status.success());
    let root = tempfile::tempdir().unwrap();
    let units = root.path().join("etc/systemd/system");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    std::fs::create_dir_all(units.join("runtap.service.d")).unwrap();
    std::fs::copy(repo.join("runtap.service"), units.join("runtap.service")).unwrap();
    let score = || {
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(format!("--root={}", root.path().display()))
            .arg("runtap.service")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("{text}"));
        let value: f64 = line.split(": ").nth(1).and_then(|s| s.split_whitespace().next()).unwrap().parse().unwrap();
        value
    };
    // docs/security.md: 8.5 before issue 17, 8.3 after, 8.4 since issue 15 (RemoveIPC= dropped:
    // runs outlive the daemon); 7.4 and 2.2 with the drop-in.
    let alone = score();
    assert!(alone <= 8.4, "runtap.service scores {alone}");
    std::fs::copy(repo.join("strict-hardening.conf"), units.join("runtap.service.d/strict-hardening.conf")).unwrap();
    let strict = score();
    assert!(strict <= 2.2, "with strict-hardening.conf: {strict}");
}
