//! Runs tests/py (Python `websockets` against the real daemon) so that
//! `cargo test` covers the third-party client suite too. Needs
//! `pip install -r tests/py/requirements.txt` (`.ci/run` does it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn python_websockets_client_suite() {
    let probe = std::process::Command::new("python3").args(["-c", "import websockets, pytest"]).output();
    match probe {
        Ok(o) if o.status.success() => {}
        _ => panic!("the Python client suite needs: pip install -r tests/py/requirements.txt"),
    }
    let out = std::process::Command::new("python3")
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/py"])
        .env("RUNTAP_BIN", env!("CARGO_BIN_EXE_runtap"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "pytest failed:\n{report}");
    println!("{report}");
}
