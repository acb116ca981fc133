//! Runs tests/py (Python `websockets` against the real daemon) so that
//! `cargo test` covers the third-party client suite too. Its packages are
//! installed by `tests/setup.sh` in tests/py/.venv (the python3 on PATH is
//! used if it has them and there is no venv).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn python_websockets_client_suite() {
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/.venv/bin/python");
    let python = if venv.exists() { venv.into_os_string() } else { "python3".into() };
    let probe = std::process::Command::new(&python).args(["-c", "import websockets, pytest"]).output();
    match probe {
        Ok(o) if o.status.success() => {}
        _ => panic!("the Python client suite needs its packages: run tests/setup.sh"),
    }
    let out = std::process::Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/py"])
        .env("RUNTAP_BIN", env!("CARGO_BIN_EXE_runtap"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "pytest failed:\n{report}");
    println!("{report}");
}
