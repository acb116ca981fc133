#!/usr/bin/env bash
# Catch-up after a gateway outage (issue 16), runtap only. HOSTS daemons each
# run a job that writes steadily (bench/jobs/lines.py, one line of 101 B every
# INTERVAL_US µs) and forward to one gateway. The gateway is stopped for
# OUTAGE seconds while the jobs write on, then started again on the same
# state dir and port. Measured from the moment it is started again: how long
# until every host's copy at the gateway holds every event that host had
# journaled at that moment (per host, and the slowest), and how long the
# gateway itself took to its ready line. The gateway is polled every 20 ms
# (GET /runs/ID?host=H, one request per host), so figures are ± 30 ms or so.
#
#   bench/catchup.sh                 prints one JSON line (bench/run.sh records it)
#   OUTAGE=5 bench/catchup.sh        a shorter outage (default 30 s)
#
# Environment:
#   RUNTAP_BIN      the runtap binary (default: CARGO_TARGET_DIR or target/, release)
#   OUTAGE          seconds the gateway stays down (default 30)
#   HOSTS           number of daemons (default 3)
#   INTERVAL_US     each job's line interval in µs (default 2000: 500 lines/s)
#   STOP_SIGNAL     how the gateway is stopped: TERM (default) or KILL
#   GATEWAY_CONFIG  extra TOML appended to the gateway's config file, e.g. to run
#                   the same case against another engine:
#                   GATEWAY_CONFIG=$'[gateway]\nengine = "nats"\nnats_url = "nats://127.0.0.1:4222"'
#   GATEWAY_ARGS    extra arguments for `runtap gateway` (word-split)
#   TIMEOUT         seconds to wait for the catch-up before giving up (default 120)
# The hosts read the gateway's generated STATE_DIR/agent-token, so the config
# may set anything but [gateway] agent_tokens. Needs curl and python3.
# Everything listens on 127.0.0.1; every process started here is stopped on exit.
set -euo pipefail

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH")
BIN=${RUNTAP_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/runtap}
OUTAGE=${OUTAGE:-30}
HOSTS=${HOSTS:-3}
INTERVAL_US=${INTERVAL_US:-2000}
STOP_SIGNAL=${STOP_SIGNAL:-TERM}
TIMEOUT=${TIMEOUT:-120}
read -r -a GW_ARGS <<<"${GATEWAY_ARGS:-}"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/runtap-catchup.XXXXXX")
PIDS=()

log() { printf '[catchup %s] %s\n' "$(date +%T)" "$*" >&2; }
now_ns() { date +%s%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }

stop_pid() { # stop_pid PID [SIGNAL]: the process group it leads, bounded
    local pid=$1 sig=${2:-TERM} i
    kill "-$sig" -- "-$pid" 2>/dev/null || kill "-$sig" "$pid" 2>/dev/null || return 0
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
}
cleanup() {
    local pid f
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    # The runs outlive their daemons: end their shims (and jobs) too.
    for f in "$WORK"/h*/state/runs/*/supervisor.json; do
        [[ -f $f ]] && kill -TERM "$(sed -n 's/.*"pid":\([0-9]*\).*/\1/p' "$f")" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_line FILE PATTERN COUNT: until FILE holds COUNT lines matching PATTERN (60 s at most).
wait_line() {
    local deadline=$((SECONDS + 60))
    until [[ $(sed 's/\x1b\[[0-9;]*m//g' "$1" 2>/dev/null | grep -c -- "$2" || true) -ge $3 ]]; do
        ((SECONDS < deadline)) || { log "timed out waiting for '$2' in $1"; tail -20 "$1" >&2; exit 1; }
        sleep 0.02
    done
}

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
GW=$WORK/gateway
mkdir -p "$GW"
printf '%s\n' "${GATEWAY_CONFIG:-}" >"$GW/config.toml"
gw_starts=0
start_gateway() {
    gw_starts=$((gw_starts + 1))
    setsid "$BIN" gateway --config "$GW/config.toml" --state-dir "$GW/state" --listen "127.0.0.1:$PORT" \
        "${GW_ARGS[@]}" >>"$GW/out" 2>>"$GW/log" </dev/null &
    GW_PID=$!
    PIDS+=("$GW_PID")
}

# The gateway's lastSeq of host H's run `job` (0 if it has none).
gw_seq() {
    curl -s --max-time 2 -H "Authorization: Bearer $GW_TOKEN" "http://127.0.0.1:$PORT/runs/job?host=$1" |
        python3 -c 'import json, sys
try: print(json.load(sys.stdin).get("lastSeq", 0))
except Exception: print(0)'
}
# The host's own lastSeq of its run `job`.
host_seq() {
    curl -s --max-time 2 -H "Authorization: Bearer ${H_TOKEN[$1]}" "http://${H_ADDR[$1]}/runs/job" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["lastSeq"])'
}

log "gateway on 127.0.0.1:$PORT (${GATEWAY_CONFIG:+extra config, }binary $BIN)"
start_gateway
wait_line "$GW/log" "runtap gateway ready" 1
GW_TOKEN=$(<"$GW/state/token")

H_ADDR=() H_TOKEN=()
for h in $(seq 1 "$HOSTS"); do
    dir=$WORK/h$h
    mkdir -p "$dir"
    setsid "$BIN" daemon --state-dir "$dir/state" --socket "$dir/runtap.sock" --listen 127.0.0.1:0 \
        --upstream "ws://127.0.0.1:$PORT" --host-id "h$h" --upstream-token-file "$GW/state/agent-token" \
        >"$dir/out" 2>"$dir/log" </dev/null &
    PIDS+=("$!")
    wait_line "$dir/log" "runtap daemon ready" 1
    H_ADDR[h]=$(sed 's/\x1b\[[0-9;]*m//g' "$dir/log" | grep -m1 'runtap daemon ready' | grep -o 'listen=[^ ]*' | cut -d= -f2)
    H_TOKEN[h]=$(<"$dir/state/token")
    RUNTAP_SOCKET=$dir/runtap.sock "$BIN" run --detach --id job -- \
        python3 "$BENCH/jobs/lines.py" 100000000 101 "$INTERVAL_US" >/dev/null
done

# Forwarding works before the outage.
for h in $(seq 1 "$HOSTS"); do
    deadline=$((SECONDS + 30))
    until (($(gw_seq "h$h") > 10)); do
        ((SECONDS < deadline)) || { log "h$h never reached the gateway"; tail -20 "$WORK/h$h/log" >&2; exit 1; }
        sleep 0.1
    done
done
log "$HOSTS hosts forwarding; stopping the gateway (SIG$STOP_SIGNAL) for ${OUTAGE}s"
stop_pid "$GW_PID" "$STOP_SIGNAL"
sleep "$OUTAGE"

targets=()
for h in $(seq 1 "$HOSTS"); do targets[h]=$(host_seq "$h"); done
t0=$(now_ns)
start_gateway
log "gateway started again; hosts had ${targets[*]} events"
# One poller (python, so each poll is one HTTP request, not a process): the
# gateway's ready line, then each host's lastSeq at the gateway every 20 ms.
result=$(python3 - "$t0" "$PORT" "$GW_TOKEN" "$GW/log" "$gw_starts" "$TIMEOUT" "${targets[@]:1}" <<'PY'
import json, re, sys, time, urllib.request
t0, port, token, log, starts, timeout = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), float(sys.argv[6])
targets = [int(t) for t in sys.argv[7:]]
since = lambda: round(time.time() - t0 / 1e9, 3)
def gw_seq(host):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/runs/job?host={host}", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return json.load(r).get("lastSeq", 0)
    except Exception:
        return 0
ready, done = None, [None] * len(targets)
while since() < timeout and None in done:
    if ready is None:
        with open(log, errors="replace") as f:
            if f.read().count("runtap gateway ready") >= starts:
                ready = since()
    if ready is not None:
        for i, want in enumerate(targets):
            if done[i] is None and gw_seq(f"h{i + 1}") >= want:
                done[i] = since()
    time.sleep(0.02)
print(json.dumps({"gateway_ready_s": ready, "caught_up_s": done,
                  "max_s": None if None in done else max(done)}))
PY
)
log "from the restart: $result"
printf '{"outage_s":%s,"hosts":%s,"interval_us":%s,"stop_signal":"%s","events_at_restart":[%s],%s\n' \
    "$OUTAGE" "$HOSTS" "$INTERVAL_US" "$STOP_SIGNAL" "$(IFS=,; echo "${targets[*]}")" "${result#\{}"
