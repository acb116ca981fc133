#!/usr/bin/env bash
# Builds runtap, the load generator and the two Node baselines, then runs
# every benchmark scenario against runtap, the `ws` baseline and the
# socket.io baseline, and prints the table (also written to
# bench/results/latest.md; raw results in bench/results/raw.jsonl).
#
#   bench/run.sh            full run (< 15 min on 2 cores, with a warm cargo cache)
#   bench/run.sh --smoke    every scenario, tiny, in about a minute; no thresholds (CI)
#   bench/run.sh --only fanout,latency [--servers runtap,ws]   a subset (while profiling)
#   bench/run.sh --only idle-rss,tls-idle-rss,handshakes,tls-handshakes --servers runtap
#                           TLS against plain (issue 14)
#
# Scenarios: fanout, fanout-stalled, latency, latency-stalled, idle-rss,
# idle-cpu, bigjob, launches (the light client), fanout-json, latency-json,
# latency100, latency100-json (the two clients side by side), slow-readers,
# idle-runs; sio-fanout, sio-latency, sio-idle-rss (Socket.IO: runtap's
# /runs/ endpoint, `--proto runtap-socketio`, against the socket.io peer,
# the same client for both); runtap only: tls-idle-rss (idle-rss over
# wss://), handshakes and tls-handshakes (connections set up and closed in
# a loop, plain and TLS: WebSocket upgrade, then GET /healthz; about 35 s
# for the three). The TLS server gets a CA and a leaf made by openssl in
# the work directory. catchup (runtap only, bench/catchup.sh): 3 hosts
# forwarding to a gateway that is down for OUTAGE s (default 30; 3 in
# smoke), the time from its restart until every host's copy is complete;
# GATEWAY_CONFIG (extra TOML for the gateway) and GATEWAY_ARGS are passed
# on, so the same case runs against another gateway engine.
#
# Honours CARGO_TARGET_DIR, and RUNTAP_BIN (a runtap binary to measure instead
# of the one built here, e.g. an older commit's, for before/after figures
# from the same session). Needs cargo, node >= 20 with npm, python3, and
# openssl for the tls-* scenarios.
# Everything listens on 127.0.0.1; every process started here is stopped on exit.
set -euo pipefail

MODE=full
ONLY=fanout,fanout-json,fanout-stalled,latency,latency-json,latency100,latency100-json,latency-stalled,slow-readers,idle-rss,idle-cpu,bigjob,launches,idle-runs,sio-fanout,sio-latency,sio-idle-rss,tls-idle-rss,handshakes,tls-handshakes,catchup
SERVER_KINDS=runtap,ws,socketio
while [[ $# -gt 0 ]]; do
    case "$1" in
        --smoke) MODE=smoke ;;
        --only) ONLY=${2:?--only needs a list}; shift ;;
        --servers) SERVER_KINDS=${2:?--servers needs a list}; shift ;;
        -h | --help) sed -n '2,32p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
IFS=, read -r -a SERVER_KINDS <<<"$SERVER_KINDS"
wanted() { [[ ",$ONLY," == *",$1,"* ]]; }

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH")
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
RESULTS=$BENCH/results
WORK=$(mktemp -d "${TMPDIR:-/tmp}/runtap-bench.XXXXXX")
SERVERS=()   # pids of servers still running (each leads its own process group)

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }

stop_pid() {
    local pid=$1 i
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local pid
    for pid in "${SERVERS[@]}"; do stop_pid "$pid"; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ parameters
LINE_BYTES=101
# Slow readers: lines of 100 B, so SLOW_LINES lines are exactly SLOW_LINES * 100 bytes.
SLOW_MS=1 SLOW_LINE_BYTES=100
if [[ $MODE == smoke ]]; then
    FAN_SUBS=10 FAN_LINES=1000
    LAT_SUBS=10 LAT_LINES=300 LAT_SMALL_SUBS=5
    SLOW_SUBS=10 SLOW_LINES=10000 SLOW_BASE_REPS=1
    IDLE_SUBS=100 CPU_SUBS=100 CPU_WINDOW=0.5 SETTLE=0.5
    BIG_BYTES=$((10 * 1000 * 1000)) BIG_REPS=1
    LAUNCH_SECS=2
    HS_SECS=1 HS_CONC=4
    IDLE_RUNS=10 IDLE_RUN_BYTES=1000000 IDLE_RUN_HOLD=10 IDLE_RUN_SETTLE=1
    CATCHUP_OUTAGE=3
    TIMEOUT=30
else
    FAN_SUBS=1000 FAN_LINES=100000
    LAT_SUBS=1000 LAT_LINES=5000 LAT_SMALL_SUBS=100
    SLOW_SUBS=100 SLOW_LINES=100000 SLOW_BASE_REPS=3
    IDLE_SUBS=10000 CPU_SUBS=1000 CPU_WINDOW=10 SETTLE=2
    BIG_BYTES=$((1024 * 1024 * 1024)) BIG_REPS=2
    LAUNCH_SECS=5
    HS_SECS=5 HS_CONC=32
    IDLE_RUNS=10 IDLE_RUN_BYTES=16000000 IDLE_RUN_HOLD=30 IDLE_RUN_SETTLE=5
    CATCHUP_OUTAGE=${OUTAGE:-30}
    TIMEOUT=150
fi

# ------------------------------------------------------------------ build
started=$(date +%s)
log "building runtap and the load generator (target dir: $TARGET)"
(cd "$ROOT" && cargo build --quiet --release --example loadgen --bin runtap)
RUNTAP=${RUNTAP_BIN:-$TARGET/release/runtap}
LOADGEN=$TARGET/release/examples/loadgen

log "installing the Node baselines"
if [[ ! -f $BENCH/node_modules/.package-lock.json || $BENCH/package-lock.json -nt $BENCH/node_modules/.package-lock.json ]]; then
    (cd "$BENCH" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi
PY=$(python3 -c 'import sys; print(sys.executable)')
JOB=$BENCH/jobs/lines.py
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
mkdir -p "$RESULTS"
RAW=$RESULTS/raw.jsonl
: >"$RAW"

# ------------------------------------------------------------------ servers
# TLS for runtap (tls-* scenarios): a CA and a leaf for 127.0.0.1 signed by
# it (rustls refuses a self-signed CA:TRUE certificate as the server's own),
# P-256 keys, and a config file with only stream.tls_cert/tls_key, so
# everything else is the defaults, as without a config. Made once per run;
# without openssl the tls-* scenarios are recorded as failed, the rest run.
TLS_DIR=$WORK/tls
make_tls() {
    [[ -f $TLS_DIR/runtap.toml ]] && return 0
    command -v openssl >/dev/null || { log "openssl not found: no TLS scenarios"; return 1; }
    mkdir -p "$TLS_DIR"
    (
        cd "$TLS_DIR"
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >leaf.ext
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem \
            -days 2 -subj /CN=bench-ca
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout key.pem -out leaf.csr \
            -subj /CN=localhost
        openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -out cert.pem -extfile leaf.ext
    ) >"$WORK/openssl.log" 2>&1 || { log "openssl failed:"; cat "$WORK/openssl.log" >&2; return 1; }
    printf '[stream]\ntls_cert = "%s"\ntls_key = "%s"\n' "$TLS_DIR/cert.pem" "$TLS_DIR/key.pem" >"$TLS_DIR/runtap.toml"
}

# start_server KIND [tls]: sets SERVER_PID, SERVER_ADDR, SERVER_TOKEN,
# SERVER_SOCKET, and SERVER_TLS_CA (the CA file for the load generator's
# --tls-ca; empty for a plain server). Only runtap serves TLS.
n_server=0
start_server() {
    local kind=$1 tls=${2:-} dir i config=()
    n_server=$((n_server + 1))
    dir=$WORK/$kind-$n_server
    mkdir -p "$dir"
    SERVER_SOCKET=$dir/runtap.sock
    SERVER_TLS_CA=
    if [[ -n $tls ]]; then
        [[ $kind == runtap ]] || { log "only runtap serves TLS"; exit 1; }
        config=(--config "$TLS_DIR/runtap.toml")
        SERVER_TLS_CA=$TLS_DIR/ca.pem
    fi
    if [[ $kind == runtap ]]; then
        setsid "$RUNTAP" daemon "${config[@]}" --state-dir "$dir/state" --socket "$SERVER_SOCKET" --listen 127.0.0.1:0 \
            >"$dir/out" 2>"$dir/log" </dev/null &
    else
        SERVER_TOKEN=bench-token-$RANDOM$RANDOM$RANDOM
        BENCH_TOKEN=$SERVER_TOKEN setsid node "$BENCH/$kind-server.js" >"$dir/out" 2>"$dir/log" </dev/null &
    fi
    SERVER_PID=$!
    SERVERS+=("$SERVER_PID")
    SERVER_ADDR=
    for i in $(seq 100); do
        if [[ $kind == runtap ]]; then
            SERVER_ADDR=$(sed 's/\x1b\[[0-9;]*m//g' "$dir/log" 2>/dev/null | grep -m1 'runtap daemon ready' | grep -o 'listen=[^ ]*' | cut -d= -f2 || true)
        else
            SERVER_ADDR=$(grep -m1 '^listening ' "$dir/out" 2>/dev/null | cut -d' ' -f2 || true)
        fi
        [[ -n $SERVER_ADDR ]] && break
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [[ -z $SERVER_ADDR ]]; then
        log "$kind did not start:"; cat "$dir/log" >&2; exit 1
    fi
    [[ $kind == runtap ]] && SERVER_TOKEN=$(<"$dir/state/token")
    return 0
}

stop_server() {
    stop_pid "$SERVER_PID"
    local keep=() pid
    for pid in "${SERVERS[@]}"; do [[ $pid != "$SERVER_PID" ]] && keep+=("$pid"); done
    SERVERS=("${keep[@]}")
}

# record SCENARIO SERVER JSON
record() {
    printf '{"scenario":"%s","server":"%s","result":%s}\n' "$1" "$2" "${3:-null}" >>"$RAW"
}

# The client protocol for a server kind: runtap's own Socket.IO endpoint in
# the sio-* scenarios, else the kind itself.
proto_for() {
    local kind=$1 scenario=$2
    if [[ $kind == runtap && $scenario == sio-* ]]; then echo runtap-socketio; else echo "$kind"; fi
}

target_args() {
    local kind=$1 run=$2
    echo --proto "$(proto_for "$kind" "$run")" --addr "$SERVER_ADDR" --token "$SERVER_TOKEN" --socket "$SERVER_SOCKET" \
        --server-pid "$SERVER_PID" --run-id "$run" ${SERVER_TLS_CA:+--tls-ca "$SERVER_TLS_CA"}
}

# stream_scenario NAME KIND SUBS STALLED LINES INTERVAL_US SCAN DECODE
stream_scenario() {
    local name=$1 kind=$2 subs=$3 stalled=$4 lines=$5 interval=$6 scan=$7 decode=$8 out
    start_server "$kind"
    log "$name: $kind, $subs subscribers (+$stalled stalled), $lines lines, $decode client"
    # shellcheck disable=SC2046
    out=$(timeout $((TIMEOUT + 120)) "$LOADGEN" stream $(target_args "$kind" "$name-1") \
        --subs "$subs" --stalled "$stalled" --expect-lines "$lines" --scan "$scan" --decode "$decode" \
        --timeout "$TIMEOUT" -- "$PY" "$JOB" "$lines" "$LINE_BYTES" "$interval") || true
    log "  $out"
    record "$name" "$kind" "$out"
    stop_server
}

# tls_or_skip NAME: the certificates for a tls-* scenario, or a failed
# measurement recorded for it (status 1).
tls_or_skip() {
    make_tls && return 0
    record "$1" runtap '{"error":"no certificates: openssl missing or failed"}'
    return 1
}

# idle_scenario NAME KIND SUBS CPU_WINDOW [tls]
idle_scenario() {
    local name=$1 kind=$2 subs=$3 window=$4 tls=${5:-} out
    if [[ -n $tls ]]; then tls_or_skip "$name" || return 0; fi
    start_server "$kind" "$tls"
    log "$name: $kind, $subs idle subscribers${tls:+ over TLS}"
    # shellcheck disable=SC2046
    out=$(timeout $((TIMEOUT + 120)) "$LOADGEN" idle $(target_args "$kind" "$name-1") \
        --subs "$subs" --settle "$SETTLE" --cpu-window "$window" -- sleep 600) || true
    log "  $out"
    record "$name" "$kind" "$out"
    stop_server
}

# handshakes_scenario NAME [tls] (runtap only): HS_CONC workers set up and
# close connections for HS_SECS each way: WebSocket upgrade to an idle run
# up to its first frame, then GET /healthz. TLS: a full handshake each time.
handshakes_scenario() {
    local name=$1 tls=${2:-} out
    if [[ -n $tls ]]; then tls_or_skip "$name" || return 0; fi
    start_server runtap "$tls"
    log "$name: runtap, $HS_CONC workers, ${HS_SECS}s each of WebSocket upgrades and GET /healthz${tls:+ over TLS}"
    # shellcheck disable=SC2046
    out=$(timeout $((2 * HS_SECS + 60)) "$LOADGEN" handshakes $(target_args runtap "$name-1") \
        --secs "$HS_SECS" --concurrency "$HS_CONC" --set-up ws,healthz -- sleep 600) || true
    log "  $out"
    record "$name" runtap "$out"
    stop_server
}

# Slow readers: SLOW_SUBS subscribers that each spend SLOW_MS on every frame
# (json client, no resubscribing: a `lagged` cut-off leaves one
# incomplete) on a burst of SLOW_LINES lines of 100 B. The job's own wall
# time (lines.py's TIME_FILE) against the same job with no subscriber at all
# (best of SLOW_BASE_REPS, one fresh server).
slow_scenario() {
    local kind=$1 out best= s i jt=$WORK/job-time
    start_server "$kind"
    log "slow-readers: $kind, the job alone (best of $SLOW_BASE_REPS)"
    for i in $(seq "$SLOW_BASE_REPS"); do
        # shellcheck disable=SC2046
        out=$(timeout $((TIMEOUT + 120)) "$LOADGEN" stream $(target_args "$kind" "slow-base-$i") \
            --subs 0 --expect-lines "$SLOW_LINES" --decode json --job-time-file "$jt" --timeout "$TIMEOUT" \
            -- "$PY" "$JOB" "$SLOW_LINES" "$SLOW_LINE_BYTES" 0 "$jt") || true
        s=$(grep -o '"job_s":[0-9.]*' <<<"$out" | cut -d: -f2 || true)
        log "  $out"
        if [[ -n $s ]] && { [[ -z $best ]] || less_than "$s" "$best"; }; then best=$s; fi
    done
    record slow-readers-base "$kind" "{\"job_s\":${best:-null},\"reps\":$SLOW_BASE_REPS}"
    stop_server
    start_server "$kind"
    log "slow-readers: $kind, $SLOW_SUBS subscribers at ${SLOW_MS} ms per frame, $SLOW_LINES lines"
    # shellcheck disable=SC2046
    out=$(timeout $((TIMEOUT + 120)) "$LOADGEN" stream $(target_args "$kind" "slow-readers-1") \
        --subs "$SLOW_SUBS" --expect-lines "$SLOW_LINES" --expect-bytes $((SLOW_LINES * SLOW_LINE_BYTES)) \
        --decode json --resubscribe 0 --slow-ms "$SLOW_MS" --job-time-file "$jt" --timeout "$TIMEOUT" \
        -- "$PY" "$JOB" "$SLOW_LINES" "$SLOW_LINE_BYTES" 0 "$jt") || true
    log "  $out"
    record slow-readers "$kind" "$out"
    stop_server
}

# Idle runs (runtap only): IDLE_RUNS runs that each write IDLE_RUN_BYTES and
# then sleep; the daemon's RSS IDLE_RUN_SETTLE s after the last burst.
idle_runs_scenario() {
    local out
    start_server runtap
    log "idle-runs: $IDLE_RUNS runs writing $IDLE_RUN_BYTES bytes each, then idle"
    out=$(timeout $((TIMEOUT + 120)) "$LOADGEN" idle-runs --socket "$SERVER_SOCKET" --server-pid "$SERVER_PID" \
        --runs "$IDLE_RUNS" --bytes "$IDLE_RUN_BYTES" --hold "$IDLE_RUN_HOLD" --settle "$IDLE_RUN_SETTLE" \
        --marker-dir "$WORK/markers" --timeout "$TIMEOUT") || true
    log "  $out"
    record idle-runs runtap "$out"
    stop_server
}

# Catch-up after a gateway outage (runtap only): bench/catchup.sh says what
# it measures; its JSON line is the result.
catchup_scenario() {
    local out
    log "catchup: 3 hosts, the gateway down ${CATCHUP_OUTAGE}s${GATEWAY_CONFIG:+ (extra gateway config)}"
    out=$(OUTAGE=$CATCHUP_OUTAGE HOSTS=3 RUNTAP_BIN=$RUNTAP timeout $((CATCHUP_OUTAGE + 300)) "$BENCH/catchup.sh") || true
    log "  $out"
    record catchup runtap "$out"
}

secs_since() { awk -v a="$1" -v b="$(date +%s%N)" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }
less_than() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }

bigjob_scenario() {
    local line job best_pipe= best_runtap= t i s hwm journal
    line=$(printf 'x%.0s' $(seq $((LINE_BYTES - 1))))
    job="yes $line | head -c $BIG_BYTES"
    log "bigjob: $BIG_BYTES bytes into a plain pipe and through runtap run (best of $BIG_REPS)"
    for i in $(seq "$BIG_REPS"); do
        t=$(date +%s%N)
        sh -c "$job" | cat >/dev/null
        s=$(secs_since "$t")
        if [[ -z $best_pipe ]] || less_than "$s" "$best_pipe"; then best_pipe=$s; fi
    done
    start_server runtap
    for i in $(seq "$BIG_REPS"); do
        t=$(date +%s%N)
        RUNTAP_SOCKET=$SERVER_SOCKET timeout "$TIMEOUT" "$RUNTAP" run --id "bigjob-$i" -- sh -c "$job" | cat >/dev/null
        s=$(secs_since "$t")
        if [[ -z $best_runtap ]] || less_than "$s" "$best_runtap"; then best_runtap=$s; fi
    done
    hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$SERVER_PID/status")
    journal=$(du -sk "$(dirname "$SERVER_SOCKET")/state" | cut -f1)
    stop_server
    log "  pipe ${best_pipe}s, runtap run ${best_runtap}s"
    record bigjob runtap "{\"bytes\":$BIG_BYTES,\"pipe_s\":$best_pipe,\"runtap_s\":$best_runtap,\"server_hwm_kib\":$hwm,\"state_dir_kib\":$journal}"
}

launches_scenario() {
    local out
    start_server runtap
    log "launches: \`true\` over the Unix socket for ${LAUNCH_SECS}s"
    out=$(timeout $((LAUNCH_SECS + 60)) "$LOADGEN" launches --socket "$SERVER_SOCKET" --duration "$LAUNCH_SECS" --reference) || true
    log "  $out"
    record launches runtap "$out"
    stop_server
}

# Share of the machine busy with something else, over one second: the
# numbers are only comparable on a quiet machine.
busy_pct() {
    local a b
    a=$(head -1 /proc/stat); sleep 1; b=$(head -1 /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN {
        n = split(a, x, " "); split(b, y, " ");
        for (i = 2; i <= n; i++) { d = y[i] - x[i]; total += d; if (i == 5 || i == 6) idle += d }
        printf "%.0f", total ? 100 * (total - idle) / total : 0 }'
}

# ------------------------------------------------------------------ scenarios
log "mode: $MODE"
BUSY_BEFORE=$(busy_pct)
if ((BUSY_BEFORE > 10)); then
    log "warning: the machine is already ${BUSY_BEFORE}% busy; results will be noisy"
fi
for name in fanout fanout-json fanout-stalled latency latency-json latency100 latency100-json latency-stalled \
    slow-readers idle-rss idle-cpu sio-fanout sio-latency sio-idle-rss tls-idle-rss; do
    wanted "$name" || continue
    for kind in "${SERVER_KINDS[@]}"; do
        case $name in
            fanout) stream_scenario "$name" "$kind" "$FAN_SUBS" 0 "$FAN_LINES" 0 ends light ;;
            fanout-json) stream_scenario "$name" "$kind" "$FAN_SUBS" 0 "$FAN_LINES" 0 ends json ;;
            fanout-stalled) stream_scenario "$name" "$kind" "$FAN_SUBS" 1 "$FAN_LINES" 0 ends light ;;
            latency) stream_scenario "$name" "$kind" "$LAT_SUBS" 0 "$LAT_LINES" 1000 all light ;;
            latency-json) stream_scenario "$name" "$kind" "$LAT_SUBS" 0 "$LAT_LINES" 1000 all json ;;
            latency100) stream_scenario "$name" "$kind" "$LAT_SMALL_SUBS" 0 "$LAT_LINES" 1000 all light ;;
            latency100-json) stream_scenario "$name" "$kind" "$LAT_SMALL_SUBS" 0 "$LAT_LINES" 1000 all json ;;
            latency-stalled) stream_scenario "$name" "$kind" "$LAT_SUBS" 1 "$LAT_LINES" 1000 all light ;;
            slow-readers) slow_scenario "$kind" ;;
            idle-rss) idle_scenario "$name" "$kind" "$IDLE_SUBS" "$SETTLE" ;;
            idle-cpu) idle_scenario "$name" "$kind" "$CPU_SUBS" "$CPU_WINDOW" ;;
            # Socket.IO: runtap's endpoint and the socket.io peer only.
            sio-fanout) [[ $kind == ws ]] || stream_scenario "$name" "$kind" "$FAN_SUBS" 0 "$FAN_LINES" 0 ends light ;;
            sio-latency) [[ $kind == ws ]] || stream_scenario "$name" "$kind" "$LAT_SUBS" 0 "$LAT_LINES" 1000 all light ;;
            sio-idle-rss) [[ $kind == ws ]] || idle_scenario "$name" "$kind" "$IDLE_SUBS" "$SETTLE" ;;
            # TLS: runtap only (the baselines serve plain TCP).
            tls-idle-rss) [[ $kind != runtap ]] || idle_scenario "$name" "$kind" "$IDLE_SUBS" "$SETTLE" tls ;;
        esac
    done
done
if wanted bigjob; then bigjob_scenario; fi
if wanted launches; then launches_scenario; fi
if wanted idle-runs; then idle_runs_scenario; fi
if wanted handshakes; then handshakes_scenario handshakes; fi
if wanted tls-handshakes; then handshakes_scenario tls-handshakes tls; fi
if wanted catchup; then catchup_scenario; fi

BUSY_AFTER=$(busy_pct)
elapsed=$(($(date +%s) - started))
machine="$(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), Linux $(uname -r), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM"
node "$BENCH/report.js" "$RAW" "$MODE" "$machine" "$elapsed" "$(node --version)" "$BUSY_BEFORE% before, $BUSY_AFTER% after" | tee "$RESULTS/latest.md"
log "done in ${elapsed}s; table in bench/results/latest.md"
