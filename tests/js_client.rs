//! Runs tests/js (the npm `socket.io-client` against the real daemon, with
//! `node --test`) so that `cargo test` covers the Socket.IO endpoints with
//! the client dashboards use. Needs `npm ci --prefix tests/js`
//! (`tests/setup.sh` and `.ci/run` do it); skipped, saying so, only where
//! `node` itself is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

#[test]
fn socket_io_client_suite() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    let node = std::process::Command::new("node").arg("--version").output();
    match node {
        Ok(o) if o.status.success() => {}
        _ => {
            eprintln!("SKIPPED socket_io_client_suite: `node` is not installed (apt-get install nodejs npm)");
            return;
        }
    }
    assert!(
        dir.join("node_modules/socket.io-client/package.json").exists(),
        "the Socket.IO client suite needs: npm ci --prefix tests/js"
    );
    let out = std::process::Command::new("node")
        .args(["--test", "--test-reporter=spec"])
        .env("RUNTAP_BIN", env!("CARGO_BIN_EXE_runtap"))
        .current_dir(&dir)
        .output()
        .unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "node --test failed:\n{report}");
    println!("{report}");
}
