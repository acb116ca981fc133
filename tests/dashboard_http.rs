//! Issue 13, the server half of the dashboard: the embedded page and its
//! headers (`/`, `/ui/*`), what a token may do (`/me`, read-only tokens
//! and cancel), and the raw log download (`/runs/ID/log`), at a daemon
//! and at a gateway.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::json;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const ASSETS: [(&str, &str); 8] = [
    ("index.html", "text/html; charset=utf-8"),
    ("style.css", "text/css; charset=utf-8"),
    ("app.js", "text/javascript; charset=utf-8"),
    ("api.js", "text/javascript; charset=utf-8"),
    ("ansi.js", "text/javascript; charset=utf-8"),
    ("logview.js", "text/javascript; charset=utf-8"),
    ("runs.js", "text/javascript; charset=utf-8"),
    ("runview.js", "text/javascript; charset=utf-8"),
];

fn web_file(name: &str) -> Vec<u8> {
    std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web").join(name)).unwrap()
}

/// Every file of the page, at `addr`: its bytes, type, security and
/// caching headers; 304 for its ETag; HEAD; unknown names 404.
async fn assert_page_served(addr: &str) {
    for (path, name, content_type) in std::iter::once(("/".to_owned(), "index.html", ASSETS[0].1))
        .chain(ASSETS.iter().map(|(n, t)| (format!("/ui/{n}"), *n, *t)))
    {
        let r = http_raw(addr, "GET", &path, &[]).await;
        assert_eq!(r.status, 200, "{path}");
        assert!(r.body == web_file(name), "{path}: not the bytes of web/{name}");
        assert_eq!(r.header("content-type"), Some(content_type), "{path}");
        assert_eq!(r.header("content-security-policy"), Some(CSP), "{path}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{path}");
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{path}");
        assert_eq!(r.header("cache-control"), Some("no-cache"), "{path}");
        let etag = r.header("etag").expect("an ETag").to_owned();
        assert!(etag.starts_with('"') && etag.ends_with('"'), "a strong ETag: {etag}");
        let again = http_raw(addr, "GET", &path, &[("If-None-Match", &etag)]).await;
        assert_eq!((again.status, again.body.len()), (304, 0), "{path}");
        assert_eq!(again.header("etag"), Some(etag.as_str()));
        assert_eq!(again.header("content-security-policy"), Some(CSP), "{path}: 304");
        let stale = http_raw(addr, "GET", &path, &[("If-None-Match", "\"stale\"")]).await;
        assert_eq!(stale.status, 200, "{path}");
        let head = http_raw(addr, "HEAD", &path, &[]).await;
        assert_eq!((head.status, head.body.len()), (200, 0), "{path}: HEAD");
        assert_eq!(head.header("etag"), Some(etag.as_str()), "{path}: HEAD");
    }
    for path in ["/ui/nope.js", "/ui/", "/ui/../Cargo.toml", "/index.html"] {
        let r = http_raw(addr, "GET", path, &[]).await;
        assert_eq!((r.status, r.json()["code"].as_str()), (404, Some("not-found")), "{path}");
    }
    let r = http_raw(addr, "POST", "/", &[]).await;
    assert_eq!(r.status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_embedded_with_its_headers_at_daemon_and_gateway() {
    let d = Daemon::start();
    assert_page_served(&d.addr).await;
    let gw = Gateway::start();
    assert_page_served(&gw.addr).await;
}

const TOKENS: &str = "[stream]\ntokens = [\"full-token-0123456789\"]\n\
    read_only_tokens = [\"read-only-token-0123456789\"]\n\
    [[stream.restricted_tokens]]\ntoken = \"team-a-token-0123456789\"\nrun_prefix = \"a-\"\n\
    [[stream.restricted_tokens]]\ntoken = \"team-b-no-cancel-012345\"\nrun_prefix = \"b-\"\ncancel = false\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn me_says_what_a_token_may_do_and_cancel_obeys_it() {
    let d = Daemon::start_with(TOKENS);
    for (token, want) in [
        ("full-token-0123456789", json!({"runs": "*", "cancel": true, "hosts": false})),
        ("read-only-token-0123456789", json!({"runs": "*", "cancel": false, "hosts": false})),
        ("team-a-token-0123456789", json!({"runs": "a-*", "cancel": true, "hosts": false})),
        ("team-b-no-cancel-012345", json!({"runs": "b-*", "cancel": false, "hosts": false})),
    ] {
        let (status, body) = http_json(&d.addr, "GET", "/me", Some(token)).await;
        assert_eq!((status, &body), (200, &want), "{token}");
        // ?token= works as for every endpoint.
        let (status, body) = http_json(&d.addr, "GET", &format!("/me?token={token}"), None).await;
        assert_eq!((status, &body), (200, &want), "{token} in the query");
    }
    for token in [None, Some("wrong-token-0123456789")] {
        let (status, body) = http_json(&d.addr, "GET", "/me", token).await;
        assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")), "{token:?}");
    }

    for id in ["a-1", "b-1", "c-1"] {
        launch(&d, id, "sleep 30");
        d.wait_running(id).await;
    }
    let cancel = |id: &str, token: &'static str| {
        let path = format!("/runs/{id}/cancel");
        let addr = d.addr.clone();
        async move { http_json(&addr, "POST", &path, Some(token)).await }
    };
    for (id, token, want) in [
        ("c-1", "read-only-token-0123456789", 403),
        ("b-1", "team-b-no-cancel-012345", 403),
        ("c-1", "team-b-no-cancel-012345", 403),
        ("b-1", "team-a-token-0123456789", 403),
    ] {
        let (status, body) = cancel(id, token).await;
        assert_eq!((status, body["code"].as_str()), (want, Some("forbidden")), "{id} with {token}: {body}");
    }
    let (status, body) = cancel("c-1", "read-only-token-0123456789").await;
    assert!(body["message"].as_str().unwrap().contains("may not cancel"), "{status} {body}");
    // Nothing was cancelled by the refusals.
    let (_, run) = http_json(&d.addr, "GET", "/runs/b-1", Some("read-only-token-0123456789")).await;
    assert_eq!(run["status"], "running", "{run}");
    assert_eq!(cancel("a-1", "team-a-token-0123456789").await.0, 200);
    assert_eq!(cancel("b-1", "full-token-0123456789").await.0, 200);
    assert_eq!(cancel("c-1", "full-token-0123456789").await.0, 200);
}

/// What `/runs/ID/log` must hold: the output bytes of every stdout and
/// stderr event, in seq order.
async fn journal_output(d: &Daemon, id: &str) -> Vec<u8> {
    d.events(id).await.iter().filter(|e| e.kind.is_output()).flat_map(|e| e.output_bytes().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raw_log_is_the_runs_bytes_in_journal_order() {
    let d = Daemon::start_with(TOKENS);
    // Text on both streams, bytes that are not UTF-8, and 3 MB: many chunks.
    let script = "echo out; echo err >&2; printf '\\377\\000\\n'; head -c 3000000 /dev/urandom; echo end >&2";
    let out = d.cli().args(["run", "--id", "a-big", "--", "sh", "-c", script]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let want = journal_output(&d, "a-big").await;
    // (The order of stdout against stderr is the order they were read in.)
    assert!(want.len() > 3_000_000 && want.starts_with(b"out\n"), "{} bytes", want.len());

    for token in ["full-token-0123456789", "team-a-token-0123456789", "read-only-token-0123456789"] {
        let bearer = format!("Bearer {token}");
        let r = http_raw(&d.addr, "GET", "/runs/a-big/log", &[("Authorization", &bearer)]).await;
        assert_eq!(r.status, 200, "{token}");
        assert_eq!(r.header("content-type"), Some("application/octet-stream"));
        assert_eq!(r.header("content-disposition"), Some("attachment; filename=\"a-big.log\""));
        assert!(r.body == want, "{token}: {} bytes, want {}", r.body.len(), want.len());
    }
    let r = http_raw(&d.addr, "GET", "/runs/a-big/log?token=full-token-0123456789", &[]).await;
    assert!(r.status == 200 && r.body == want);

    for (path, token, status, code) in [
        ("/runs/a-big/log", None, 401, "unauthorized"),
        ("/runs/a-big/log", Some("wrong-token-0123456789"), 401, "unauthorized"),
        ("/runs/a-big/log", Some("team-b-no-cancel-012345"), 403, "forbidden"),
        ("/runs/nope/log", Some("full-token-0123456789"), 404, "not-found"),
        ("/runs/..%2Fx/log", Some("full-token-0123456789"), 400, "bad-request"),
    ] {
        let (got, body) = http_json(&d.addr, "GET", path, token).await;
        assert_eq!((got, body["code"].as_str()), (status, Some(code)), "{path} {token:?}: {body}");
    }
    let (got, _) = http_json(&d.addr, "POST", "/runs/a-big/log", Some("full-token-0123456789")).await;
    assert_eq!(got, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_me_and_each_hosts_log() {
    let gw = Gateway::start();
    let (h1, h2) = (gw.start_host("h1"), gw.start_host("h2"));
    let t = gw.token();
    let (status, body) = http_json(&gw.addr, "GET", "/me", Some(&t)).await;
    assert_eq!((status, body), (200, json!({"runs": "*", "cancel": true, "hosts": true})));
    let (status, _) = http_json(&gw.addr, "GET", "/me", Some(&gw.agent_token())).await;
    assert_eq!(status, 403, "a host token is not a viewer");

    for (name, h) in [("h1", &h1), ("h2", &h2)] {
        launch(h, "same", &format!("echo from {name}; printf '\\377' >&2"));
        h.wait_final("same").await;
        wait_gateway_seq(&gw, name, "same", host_last_seq(h, "same").await).await;
    }
    for (name, h) in [("h1", &h1), ("h2", &h2)] {
        let r = http_raw(&gw.addr, "GET", &format!("/runs/same/log?host={name}&token={t}"), &[]).await;
        assert_eq!(r.status, 200, "{name}");
        assert_eq!(r.body, journal_output(h, "same").await, "{name}");
    }
    let (status, body) = http_json(&gw.addr, "GET", "/runs/same/log", Some(&t)).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("ambiguous-run-id")), "{body}");
    let (status, _) = http_json(&gw.addr, "GET", "/runs/same/log?host=nohost", Some(&t)).await;
    assert_eq!(status, 404);
}
