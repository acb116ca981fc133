"""The network stream, driven by a client runtap did not write: Python `websockets`.

Run by `cargo test` (tests/python_client.rs), which passes the binary in
RUNTAP_BIN. Each test starts a real daemon on an ephemeral port.
"""

import json
import os
import re
import subprocess
import tempfile
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

BIN = os.environ.get("RUNTAP_BIN", "target/debug/runtap")
WAIT = 20


class Daemon:
    def __init__(self, config=""):
        self.dir = tempfile.TemporaryDirectory()
        d = self.dir.name
        self.socket = os.path.join(d, "runtap.sock")
        cfg = os.path.join(d, "config.toml")
        with open(cfg, "w") as f:
            f.write(config)
        self.log = open(os.path.join(d, "daemon.log"), "w+")
        self.proc = subprocess.Popen(
            [BIN, "daemon", "--config", cfg, "--state-dir", os.path.join(d, "state"),
             "--socket", self.socket, "--listen", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log,
        )
        deadline = time.monotonic() + WAIT
        while True:
            self.log.seek(0)
            m = re.search(r"runtap daemon ready.*listen=(\S+)", self.log.read())
            if m:
                self.addr = m.group(1)
                break
            assert self.proc.poll() is None, "daemon exited early"
            assert time.monotonic() < deadline, "daemon not ready"
            time.sleep(0.02)
        with open(os.path.join(d, "state", "token")) as f:
            self.token = f.read().strip()

    def run(self, *args):
        env = dict(os.environ, RUNTAP_SOCKET=self.socket)
        return subprocess.run([BIN, *args], env=env, capture_output=True, timeout=WAIT)

    def url(self, path):
        return f"ws://{self.addr}{path}"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=WAIT)
        self.log.close()
        self.dir.cleanup()


@pytest.fixture
def daemon():
    d = Daemon()
    yield d
    d.stop()


def read_all(ws):
    """Every message until the server closes; returns (events, others, close code)."""
    events, others = [], []
    try:
        while True:
            msg = json.loads(ws.recv(timeout=WAIT))
            (events if msg.get("type") in ("stdout", "stderr", "status") else others).append(msg)
    except ConnectionClosed as closed:
        return events, others, closed.rcvd.code if closed.rcvd else None


def test_single_run_endpoint_streams_history_then_closes_normally(daemon):
    out = daemon.run("run", "--id", "py1", "--", "sh", "-c", "echo hello; echo oops >&2; exit 2")
    assert out.returncode == 2
    with connect(daemon.url(f"/runs?runId=py1&token={daemon.token}")) as ws:
        events, others, code = read_all(ws)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert {"stdout": "hello\n", "stderr": "oops\n"} == {
        e["type"]: e["data"] for e in events if e["type"] in ("stdout", "stderr")
    }
    last = events[-1]
    assert (last["type"], last["data"], last["exitCode"]) == ("status", "failed", 2)
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$", last["timestamp"])
    assert others == [] and code == 1000


def test_bearer_header_and_since(daemon):
    daemon.run("run", "--id", "py2", "--", "seq", "1", "3")
    headers = {"Authorization": f"Bearer {daemon.token}"}
    with connect(daemon.url("/api/v2/workflows/runs/py2/stream?since=2"), additional_headers=headers) as ws:
        events, _, code = read_all(ws)
    assert events[0]["seq"] == 3 and code == 1000


def test_ws_endpoint_auth_message_subscribe_and_end(daemon):
    with connect(daemon.url("/ws")) as ws:
        ws.send(json.dumps({"type": "auth", "token": daemon.token}))
        assert json.loads(ws.recv(timeout=WAIT)) == {"type": "authenticated"}
        ws.send(json.dumps({"type": "subscribe", "runId": "py3", "since": 0}))
        assert json.loads(ws.recv(timeout=WAIT)) == {"type": "subscribed", "runId": "py3", "since": 0}
        # Subscribed before the run exists: it waits, then gets all of it.
        daemon.run("run", "--id", "py3", "--", "echo", "late")
        events = []
        while True:
            msg = json.loads(ws.recv(timeout=WAIT))
            if msg["type"] == "end":
                break
            events.append(msg)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert any(e["type"] == "stdout" and e["data"] == "late\n" for e in events)


@pytest.mark.parametrize("path,code,close", [
    ("/runs?runId=x&token=wrong", "unauthorized", 4401),
    ("/runs?token={t}", "missing-run-id", 4400),
    ("/runs?runId=..%2Fetc&token={t}", "bad-request", 4400),
])
def test_error_rows(daemon, path, code, close):
    with connect(daemon.url(path.format(t=daemon.token))) as ws:
        events, others, got = read_all(ws)
    assert events == []
    assert others[0]["type"] == "error" and others[0]["code"] == code and got == close


def test_malformed_message_and_oversized_frame(daemon):
    with connect(daemon.url(f"/ws?token={daemon.token}")) as ws:
        ws.send("{not json")
        _, others, code = read_all(ws)
    assert others[0]["code"] == "bad-request" and code == 4400
    with connect(daemon.url(f"/ws?token={daemon.token}"), max_size=None) as ws:
        ws.send("x" * (70 * 1024))
        _, others, code = read_all(ws)
    assert others[0]["code"] == "message-too-large" and code == 1009


def test_binary_output_is_base64_and_lossless(daemon):
    daemon.run("run", "--id", "py4", "--", "printf", "\\377\\376ok")
    with connect(daemon.url(f"/runs?runId=py4&token={daemon.token}")) as ws:
        events, _, _ = read_all(ws)
    import base64
    raw = b"".join(
        base64.b64decode(e["data"]) if e.get("encoding") == "base64" else e["data"].encode()
        for e in events if e["type"] == "stdout"
    )
    assert raw == b"\xff\xfeok"
