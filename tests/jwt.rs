//! Issue 14, JWT: tokens minted here (HS256, EdDSA, RS256) against the real
//! daemon over HTTP and WebSocket: caps, refusals, expiry mid-stream, and
//! key rotation by SIGHUP. Keys: tests/fixtures (test-only, made once with
//! `openssl genpkey`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, get_current_timestamp};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

const SECRET: &str = "a-test-hs256-secret-of-32-bytes-or-more";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn mint(alg: Algorithm, claims: &Value) -> String {
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&std::fs::read(fixture("ed25519-private.pem")).unwrap()).unwrap(),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa-private.pem")).unwrap()).unwrap(),
        other => panic!("no test key for {other:?}"),
    };
    encode(&Header::new(alg), claims, &key).unwrap()
}

fn claims(sub: &str, exp_in: i64, caps: Value) -> Value {
    let exp = get_current_timestamp().saturating_add_signed(exp_in);
    json!({"sub": sub, "exp": exp, "aud": "runtap", "iss": "ci", "caps": caps})
}

/// A daemon with the HS256 secret and `keys` (paths) as public keys,
/// audience `runtap`, issuer `ci`.
fn daemon_with_keys(keys: &[PathBuf]) -> Daemon {
    let mut d = Daemon::prepare("");
    let secret = d.dir.path().join("jwt-secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let keys: Vec<String> = keys.iter().map(|p| format!("{:?}", p.display().to_string())).collect();
    d.extra_config = format!(
        "[auth]\njwt_hs256_secret_file = {:?}\njwt_public_keys = [{}]\njwt_audience = \"runtap\"\njwt_issuer = \"ci\"\n",
        secret.display().to_string(),
        keys.join(", ")
    );
    d.spawn();
    d
}

async fn get(d: &Daemon, path: &str, token: &str) -> (u16, Value) {
    http_json(&d.addr, "GET", path, Some(token)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_decide_what_a_jwt_reads_and_cancels_over_http_and_websocket() {
    let d = daemon_with_keys(&[fixture("ed25519-public.pem")]);
    launch(&d, "build-1", "echo built; sleep 30");
    launch(&d, "other-1", "echo secret; sleep 30");
    d.wait_running("build-1").await;
    d.wait_running("other-1").await;
    let reader = mint(Algorithm::EdDSA, &claims("reader", 600, json!([{"runs": ["build-*"], "allow": ["read"]}])));
    let canceller = mint(
        Algorithm::HS256,
        &claims("canceller", 600, json!([{"runs": ["build-*", "ci-42"], "allow": ["read", "cancel"]}])),
    );

    let (status, me) = get(&d, "/me", &reader).await;
    assert_eq!(
        (status, &me["runs"], &me["cancel"], &me["sub"]),
        (200, &json!("build-*"), &json!(false), &json!("reader"))
    );
    let (_, me) = get(&d, "/me", &canceller).await;
    assert_eq!((&me["runs"], &me["cancel"]), (&json!(["build-*", "ci-42"]), &json!(true)), "{me}");
    let (status, runs) = get(&d, "/runs", &reader).await;
    let ids: Vec<&str> = runs.as_array().unwrap().iter().filter_map(|r| r["runId"].as_str()).collect();
    assert_eq!((status, ids), (200, vec!["build-1"]), "the list is filtered");
    assert_eq!(get(&d, "/runs/build-1", &reader).await.0, 200);
    assert_eq!(get(&d, "/runs/other-1", &reader).await.0, 403);
    assert_eq!(http_to(&d.addr, "GET", "/runs/build-1/log", Some(&reader)).await.0, 200);
    assert_eq!(http_to(&d.addr, "GET", "/runs/other-1/log", Some(&reader)).await.0, 403);

    // WebSocket: the single-run endpoint, by header.
    let bearer = format!("Bearer {reader}");
    let mut ws = ws_connect(&d.ws_url("/runs?runId=other-1"), &[("Authorization", &bearer)]).await;
    let got = ws_read(&mut ws, |_| false).await;
    assert_eq!((got.error_code().as_deref(), got.close), (Some("forbidden"), Some(4403)));
    let mut ws = ws_connect(&d.ws_url("/runs?runId=build-1"), &[("Authorization", &bearer)]).await;
    let got = ws_read(&mut ws, |r| r.events.iter().any(|e| e.data == "built\n")).await;
    assert!(got.events.iter().all(|e| e.run_id == "build-1"));

    // Read-only caps may not cancel; cancel caps may, within their runs only.
    assert_eq!(http_to(&d.addr, "POST", "/runs/build-1/cancel", Some(&reader)).await.0, 403);
    assert_eq!(http_to(&d.addr, "POST", "/runs/other-1/cancel", Some(&canceller)).await.0, 403);
    assert_eq!(http_to(&d.addr, "POST", "/runs/build-1/cancel", Some(&canceller)).await.0, 200);
    d.wait_final("build-1").await;

    // Static tokens keep working beside JWTs, and see everything.
    let (_, runs) = get(&d, "/runs", &d.token()).await;
    assert_eq!(runs.as_array().unwrap().len(), 2);
    let log = d.log();
    assert!(log.lines().any(|l| l.contains("cancel requested") && l.contains("canceller")), "sub in the log:\n{log}");
    assert!(!log.contains(&reader) && !log.contains(&canceller), "no token in the log");
    // `sub` is a metrics label; the tokens are nowhere in /metrics.
    let (_, metrics) = http_to(&d.addr, "GET", "/metrics", None).await;
    assert!(metrics.contains(r#"runtap_jwt_accepted_total{sub="reader"}"#), "{metrics}");
    assert!(metrics.contains(r#"runtap_jwt_accepted_total{sub="canceller"}"#), "{metrics}");
    assert!(!metrics.contains(&reader) && !metrics.contains(&canceller), "no token in /metrics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_jwts_are_unauthorized_and_never_logged() {
    let d = daemon_with_keys(&[fixture("ed25519-public.pem"), fixture("rsa-public.pem")]);
    let caps = json!([{"runs": ["*"], "allow": ["read"]}]);
    let good = claims("someone", 600, caps.clone());
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let hs_with = |key: &[u8], c: &Value| {
        encode(&Header::new(Algorithm::HS256), c, &EncodingKey::from_secret(key).unwrap()).unwrap()
    };
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    };
    let valid = mint(Algorithm::EdDSA, &good);
    assert_eq!(get(&d, "/me", &valid).await.0, 200, "the control case");
    let now = get_current_timestamp();
    let bad = [
        ("expired", mint(Algorithm::EdDSA, &with("exp", json!(now - 120)))),
        ("not yet valid", mint(Algorithm::HS256, &with("nbf", json!(now + 600)))),
        ("wrong audience", mint(Algorithm::EdDSA, &with("aud", json!("other")))),
        ("wrong issuer", mint(Algorithm::HS256, &with("iss", json!("mallory")))),
        ("no exp", mint(Algorithm::HS256, &json!({"aud": "runtap", "iss": "ci", "caps": caps}))),
        ("alg none", format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&good.to_string()))),
        ("HS256 with the Ed25519 public key", hs_with(&std::fs::read(fixture("ed25519-public.pem")).unwrap(), &good)),
        ("HS256 with the RSA public key", hs_with(&std::fs::read(fixture("rsa-public.pem")).unwrap(), &good)),
        ("truncated", valid[..valid.len() - 6].to_owned()),
        ("garbage", "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2lnbmF0dXJl".to_owned()),
    ];
    for (what, token) in &bad {
        let (status, body) = get(&d, "/runs", token).await;
        assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")), "{what}");
        let mut ws = ws_connect(&d.ws_url(&format!("/ws?token={token}")), &[]).await;
        let got = ws_read(&mut ws, |_| false).await;
        assert_eq!((got.error_code().as_deref(), got.close), (Some("unauthorized"), Some(4401)), "{what}");
    }
    let log = d.log();
    for (what, token) in &bad {
        // Every token's signature part (or the whole of one without).
        let tail = token.rsplit('.').find(|p| p.len() > 8).unwrap_or(token);
        assert!(!log.contains(tail), "{what}: token in the log");
    }
    assert!(log.contains("JWT refused"), "refusals are logged (reason only):\n{log}");
    let (_, metrics) = http_to(&d.addr, "GET", "/metrics", None).await;
    for (what, token) in &bad {
        let tail = token.rsplit('.').find(|p| p.len() > 8).unwrap_or(token);
        assert!(!metrics.contains(tail), "{what}: token in /metrics");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_subscription_under_a_build_cap_never_delivers_other_runs() {
    let d = daemon_with_keys(&[fixture("ed25519-public.pem")]);
    launch(&d, "other-1", "echo secret; sleep 30");
    d.wait_running("other-1").await;
    let token = mint(Algorithm::EdDSA, &claims("ci", 600, json!([{"runs": ["build-*"], "allow": ["read"]}])));
    let mut ws = ws_connect(&d.ws_url(&format!("/ws?token={token}")), &[]).await;
    ws_send_json(&mut ws, json!({"type": "subscribe", "runId": "*"})).await;
    let ack = ws_read(&mut ws, |r| !r.controls.is_empty()).await;
    assert_eq!(ack.controls[0], json!({"type": "subscribed", "runId": "*"}));
    // Started first, so a leak would be followed before build-1 ends.
    launch(&d, "other-2", "echo secret too");
    launch(&d, "build-1", "echo mine");
    let got = ws_read(&mut ws, |r| r.controls.iter().any(|c| c["type"] == "end" && c["runId"] == "build-1")).await;
    assert!(got.events.iter().all(|e| e.run_id == "build-1"), "{:?}", got.events);
    assert!(got.controls.iter().all(|c| c["runId"] == "build-1"), "{:?}", got.controls);
    assert!(got.events.iter().any(|e| e.data == "mine\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_expires_mid_stream_ends_it_with_token_expired() {
    let d = daemon_with_keys(&[fixture("ed25519-public.pem")]);
    launch(&d, "build-1", "echo started; sleep 30");
    d.wait_running("build-1").await;
    let token = mint(Algorithm::EdDSA, &claims("short", 3, json!([{"runs": ["*"], "allow": ["read"]}])));
    let started = std::time::Instant::now();
    let mut single = ws_connect(&d.ws_url(&format!("/runs?runId=build-1&token={token}")), &[]).await;
    let mut multi = ws_connect(&d.ws_url(&format!("/ws?token={token}")), &[]).await;
    ws_send_json(&mut multi, json!({"type": "subscribe", "runId": "build-1"})).await;
    for ws in [&mut single, &mut multi] {
        let got = ws_read(ws, |_| false).await;
        assert!(got.events.iter().any(|e| e.data == "started\n"), "it streamed first: {got:?}");
        assert_eq!((got.error_code().as_deref(), got.close), (Some("token-expired"), Some(4401)), "{got:?}");
    }
    let took = started.elapsed();
    assert!(took >= std::time::Duration::from_secs(1) && took < std::time::Duration::from_secs(10), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_on_sighup_a_broken_file_keeps_the_old_and_subscribers_stay() {
    let mut d = Daemon::prepare("");
    let key = d.dir.path().join("jwt-key.pem");
    std::fs::copy(fixture("ed25519-public.pem"), &key).unwrap();
    d.extra_config = format!("[auth]\njwt_public_keys = [{:?}]\n", key.display().to_string());
    d.spawn();
    let caps = json!([{"runs": ["*"], "allow": ["read"]}]);
    let old = mint(Algorithm::EdDSA, &json!({"sub": "old", "exp": get_current_timestamp() + 600, "caps": caps}));
    let new = mint(Algorithm::RS256, &json!({"sub": "new", "exp": get_current_timestamp() + 600, "caps": caps}));
    let mut ws = ws_connect(&d.ws_url(&format!("/ws?token={old}")), &[]).await;
    ws_send_json(&mut ws, json!({"type": "subscribe", "runId": "later-*"})).await;
    ws_read(&mut ws, |r| !r.controls.is_empty()).await;

    let hup = |d: &Daemon, marker: &str| {
        let before = d.log().matches(marker).count();
        signal(d.pid() as i32, Signal::SIGHUP);
        let deadline = std::time::Instant::now() + WAIT;
        while d.log().matches(marker).count() == before {
            assert!(std::time::Instant::now() < deadline, "no {marker:?}:\n{}", d.log());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    std::fs::write(&key, "-----BEGIN PUBLIC KEY-----\nbroken\n-----END PUBLIC KEY-----\n").unwrap();
    hup(&d, "reload refused");
    assert!(d.log().contains(&format!("JWT key file {}", key.display())), "the error names the file:\n{}", d.log());
    assert_eq!(get(&d, "/me", &old).await.0, 200, "the old key stays");

    std::fs::copy(fixture("rsa-public.pem"), &key).unwrap();
    hup(&d, "config reloaded");
    assert_eq!(get(&d, "/me", &old).await.0, 401, "the old key is gone");
    let (status, me) = get(&d, "/me", &new).await;
    assert_eq!((status, &me["sub"]), (200, &json!("new")));

    // The subscriber connected with the old key keeps its connection.
    launch(&d, "later-1", "echo after the rotation");
    let got = ws_read(&mut ws, |r| r.controls.iter().any(|c| c["type"] == "end")).await;
    assert!(got.events.iter().any(|e| e.data == "after the rotation\n"), "{got:?}");
    assert_eq!(got.close, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_a_gateway_host_patterns_decide_per_host() {
    let mut gw = Gateway::prepare("");
    let secret = gw.dir.path().join("jwt-secret");
    std::fs::write(&secret, SECRET).unwrap();
    gw.extra_config = format!("[auth]\njwt_hs256_secret_file = {:?}\n", secret.display().to_string());
    gw.spawn();
    let (h1, h2) = (gw.start_host("h1"), gw.start_host("h2"));
    for (name, h) in [("h1", &h1), ("h2", &h2)] {
        launch(h, "same", &format!("echo from {name}"));
        h.wait_final("same").await;
        wait_gateway_seq(&gw, name, "same", host_last_seq(h, "same").await).await;
    }
    let caps = json!([{"runs": ["*"], "hosts": ["h1"], "allow": ["read", "cancel"]}]);
    let token = mint(Algorithm::HS256, &json!({"sub": "h1-only", "exp": get_current_timestamp() + 600, "caps": caps}));
    let (_, runs) = http_json(&gw.addr, "GET", "/runs", Some(&token)).await;
    let hosts: Vec<&str> = runs.as_array().unwrap().iter().filter_map(|r| r["host"].as_str()).collect();
    assert_eq!(hosts, ["h1"], "{runs}");
    let (_, listed) = http_json(&gw.addr, "GET", "/hosts", Some(&token)).await;
    let names: Vec<&str> = listed.as_array().unwrap().iter().filter_map(|h| h["host"].as_str()).collect();
    assert_eq!(names, ["h1"], "{listed}");
    assert_eq!(http_json(&gw.addr, "GET", "/runs/same?host=h1", Some(&token)).await.0, 200);
    assert_eq!(http_json(&gw.addr, "GET", "/runs/same?host=h2", Some(&token)).await.0, 403);
    assert_eq!(http_json(&gw.addr, "GET", "/runs/same", Some(&token)).await.0, 403, "no host=: not every host");
    let mut ws = ws_connect(&gw.ws_url(&format!("/runs?runId=same&host=h2&token={token}")), &[]).await;
    let got = ws_read(&mut ws, |_| false).await;
    assert_eq!((got.error_code().as_deref(), got.close), (Some("forbidden"), Some(4403)));

    // A pattern subscription at the gateway: only h1's runs.
    let mut ws = ws_connect(&gw.ws_url(&format!("/ws?token={token}")), &[]).await;
    ws_send_json(&mut ws, json!({"type": "subscribe", "runId": "later-*"})).await;
    ws_read(&mut ws, |r| !r.controls.is_empty()).await;
    launch(&h2, "later-2", "echo on h2");
    h2.wait_final("later-2").await;
    // At the gateway before later-1 starts, so a leak would come first.
    wait_gateway_seq(&gw, "h2", "later-2", host_last_seq(&h2, "later-2").await).await;
    launch(&h1, "later-1", "echo on h1");
    let got = ws_read(&mut ws, |r| r.controls.iter().any(|c| c["type"] == "end")).await;
    assert!(got.events.iter().all(|e| e.run_id == "later-1"), "{:?}", got.events);
    assert!(got.controls.iter().all(|c| c["runId"] != "later-2"), "{:?}", got.controls);
}
