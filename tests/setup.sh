#!/usr/bin/env bash
# Installs what the test suites beyond Rust need: the Python WebSocket client
# suite (tests/py) and the Socket.IO client suite (tests/js, npm ci from the
# committed lockfile). Then `cargo test` runs everything:
#
#   tests/setup.sh && cargo test
#
# Needs python3 with pip, and node (18 or later) with npm.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    -r tests/py/requirements.txt
python3 -c 'import websockets, pytest; print("websockets", websockets.__version__, "pytest", pytest.__version__)'
npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
node -e 'console.log("socket.io-client", require("./tests/js/node_modules/socket.io-client/package.json").version)'
