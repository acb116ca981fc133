#!/usr/bin/env bash
# Installs what the test suites beyond Rust need, then `cargo test` runs
# everything (this is the README's test command, and .ci/run's):
#
#   tests/setup.sh && cargo test
#
# - Debian packages that are missing (python3 with venv, node with npm),
#   with apt-get as root or through sudo;
# - the Python WebSocket client suite's packages (tests/py: websockets,
#   pytest) in a virtualenv at tests/py/.venv, so the system Python is left
#   alone (Debian's refuses `pip install` outside one, PEP 668);
# - the JS suite (tests/js: npm ci from the committed lockfile): the
#   Socket.IO client, and playwright-core driving Debian's Chromium for the
#   dashboard's browser tests (npm cannot download a browser here);
# - nats-server (Debian's, 2.9.10 on bookworm) for the NATS engine's tests
#   (tests/gateway_nats.rs, tests/nats_harness.rs): they start their own
#   servers on free ports, and skip loudly where it is missing.
#
# Safe to run again: what is there already is kept.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

APT_UPDATED=0
apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$pkg")
        fi
    done
    ((${#missing[@]} == 0)) && return 0
    if ! command -v apt-get >/dev/null; then
        echo "setup: please install ${missing[*]} (no apt-get here)" >&2
        return 1
    fi
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get)
    ((EUID != 0)) && apt=(sudo "${apt[@]}")
    if ((APT_UPDATED == 0)); then
        "${apt[@]}" update -q
        APT_UPDATED=1
    fi
    echo "setup: apt-get install ${missing[*]}"
    "${apt[@]}" install -y -q --no-install-recommends "${missing[@]}"
}

command -v python3 >/dev/null || apt_install python3
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
command -v npm >/dev/null || apt_install nodejs npm
[[ -x /usr/bin/chromium ]] || apt_install chromium chromium-driver
# The Socket.IO suite's TLS test makes its certificates with openssl.
command -v openssl >/dev/null || apt_install openssl
# Debian puts it in /usr/sbin, which a non-root PATH may lack; the tests look there too.
command -v nats-server >/dev/null || [[ -x /usr/sbin/nats-server ]] || apt_install nats-server

VENV=tests/py/.venv
if [[ ! -x $VENV/bin/python ]]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/py/requirements.txt
"$VENV/bin/python" -c 'import websockets, pytest; print("websockets", websockets.__version__, "pytest", pytest.__version__)'

if [[ ! -f tests/js/node_modules/.package-lock.json || tests/js/package-lock.json -nt tests/js/node_modules/.package-lock.json ]]; then
    npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
fi
node -e 'const v = (p) => require(`./tests/js/node_modules/${p}/package.json`).version;
console.log("node", process.version, "socket.io-client", v("socket.io-client"), "playwright-core", v("playwright-core"))'
/usr/bin/chromium --version
"$(command -v nats-server || echo /usr/sbin/nats-server)" --version
