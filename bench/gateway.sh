#!/usr/bin/env bash
# Gateway engines side by side (issue 16): `[gateway] engine = "local"` (one
# gateway, journals in its state dir) against `engine = "nats"` (replicas on
# one nats-server with JetStream, started here on a free port with its store
# in the work directory). Each case starts fresh processes for each engine:
#
#   ingest    HOSTS daemons (default 3) each run a job that writes ING_LINES
#             lines of 101 B as fast as it can, each flushed (lines.py,
#             interval 1 µs). Each host's run is followed over WebSocket
#             from the gateway (the replica it forwards to, `host=`), one
#             `loadgen stream --decode json` per host, all three at once;
#             events/s = all hosts' output events / the slowest host's time
#             from its launch to its final event at the gateway. Also the
#             jobs' own wall time (writer-bound when the two are close).
#             local: 1 gateway; nats: 1 replica, and 3 replicas (a host each).
#   latency   one host, a line per ms for LAT_LINES lines; LAT_SUBS viewers
#             (json client: every frame parsed, every line and seq checked).
#             local: all on the gateway. nats: 3 replicas, the host forwards
#             to A, viewers split between A (through one replica) and B
#             (across replicas); p50/p99 per replica (`loadgen --spread`).
#             nats once more with `ack_interval = "10ms"` (default 100 ms:
#             the NATS link appends what it gathered once per interval).
#   viewers   FAN_SUBS viewers (default 1000), a line per ms for LAT_LINES
#             lines, json client. local: all on one gateway; nats: spread over
#             3 replicas, the host on A. p50/p99, and each gateway process's
#             peak RSS (VmHWM, fresh processes) and CPU, nats-server's too.
#   catchup   bench/catchup.sh (if present: 3 hosts writing steadily, the
#             gateway down OUTAGE s, time from its restart until every host's
#             copy is complete), once per engine; for nats the replica is
#             down, nats-server stays up.
#
#   bench/gateway.sh                   every case (about 4 minutes on 2 cores)
#   bench/gateway.sh --smoke           every case, tiny (about 40 s)
#   bench/gateway.sh --only ingest,latency
#   TMPDIR=/dev/shm bench/gateway.sh   state dirs and the JetStream store on tmpfs
#
# Prints one JSON object per case and engine on stdout, then a Markdown table
# on stderr. Environment: RUNTAP_BIN, LOADGEN_BIN (default: CARGO_TARGET_DIR or
# target/, release; build them with `cargo build --release --bin runtap
# --example loadgen`), HOSTS, ING_LINES, LAT_LINES, LAT_SUBS, FAN_SUBS, OUTAGE,
# NATS_SERVER (default nats-server). Needs nats-server (Debian: nats-server),
# curl and python3. Everything listens on 127.0.0.1; every process started
# here is stopped on exit and the work directory removed.
set -euo pipefail

MODE=full
ONLY=ingest,latency,viewers,catchup
while [[ $# -gt 0 ]]; do
    case "$1" in
        --smoke) MODE=smoke ;;
        --only) ONLY=${2:?--only needs a list}; shift ;;
        -h | --help) sed -n '2,42p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
wanted() { [[ ",$ONLY," == *",$1,"* ]]; }

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH")
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${RUNTAP_BIN:-$TARGET/release/runtap}
LOADGEN=${LOADGEN_BIN:-$TARGET/release/examples/loadgen}
NATS=${NATS_SERVER:-nats-server}
PY=$(command -v python3)
JOB=$BENCH/jobs/lines.py
HOSTS=${HOSTS:-3}
if [[ $MODE == smoke ]]; then
    ING_LINES=${ING_LINES:-2000} LAT_LINES=${LAT_LINES:-300} LAT_SUBS=${LAT_SUBS:-4} FAN_SUBS=${FAN_SUBS:-30}
    OUTAGE=${OUTAGE:-3} TIMEOUT=60
else
    ING_LINES=${ING_LINES:-50000} LAT_LINES=${LAT_LINES:-5000} LAT_SUBS=${LAT_SUBS:-20} FAN_SUBS=${FAN_SUBS:-1000}
    OUTAGE=${OUTAGE:-30} TIMEOUT=150
fi
for f in "$BIN" "$LOADGEN"; do
    [[ -x $f ]] || { echo "missing $f: cargo build --release --bin runtap --example loadgen" >&2; exit 1; }
done
command -v "$NATS" >/dev/null || { echo "no $NATS (Debian: apt-get install nats-server)" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK=$(mktemp -d "${TMPDIR:-/tmp}/runtap-gw-bench.XXXXXX")
PIDS=()   # every process started here leads its own process group (setsid)
VIEWER_TOKEN=bench-viewer-$RANDOM$RANDOM$RANDOM$RANDOM
AGENT_TOKEN=bench-agent-$RANDOM$RANDOM$RANDOM$RANDOM
printf '%s\n' "$AGENT_TOKEN" >"$WORK/agent-token"
RESULTS=$WORK/results.jsonl
: >"$RESULTS"

log() { printf '[gateway %s] %s\n' "$(date +%T)" "$*" >&2; }

stop_pid() { # stop_pid PID [SIGNAL]: the process group it leads, bounded
    local pid=$1 sig=${2:-TERM} i
    kill "-$sig" -- "-$pid" 2>/dev/null || kill "-$sig" "$pid" 2>/dev/null || return 0
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
}
stop_all() {
    local pid f
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    PIDS=()
    # Runs outlive their daemons: end any shim (and job) still running.
    for f in "$WORK"/*/h*/state/runs/*/supervisor.json; do
        [[ -f $f ]] && kill -TERM "$(sed -n 's/.*"pid":\([0-9]*\).*/\1/p' "$f")" 2>/dev/null || true
    done
}
cleanup() {
    stop_all
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# wait_line FILE PATTERN: until FILE holds a line matching PATTERN (30 s at most).
wait_line() {
    local deadline=$((SECONDS + 30))
    until sed 's/\x1b\[[0-9;]*m//g' "$1" 2>/dev/null | grep -q -- "$2"; do
        ((SECONDS < deadline)) || { log "timed out waiting for '$2' in $1"; tail -20 "$1" >&2; exit 1; }
        sleep 0.05
    done
}
listen_of() { sed 's/\x1b\[[0-9;]*m//g' "$1" | grep -m1 "$2" | grep -o 'listen=[^ ]*' | cut -d= -f2; }

# start_nats DIR: sets NATS_URL, NATS_PID.
start_nats() {
    local dir=$1 port
    port=$(free_port)
    mkdir -p "$dir"
    setsid "$NATS" -js -a 127.0.0.1 -p "$port" -sd "$dir/store" >"$dir/out" 2>"$dir/log" </dev/null &
    NATS_PID=$!
    PIDS+=("$NATS_PID")
    wait_line "$dir/log" "Server is ready"
    NATS_URL=nats://127.0.0.1:$port
}

# gateway_config FILE ENGINE [ACK_INTERVAL]: the same file for every replica.
gateway_config() {
    local file=$1 engine=$2 ack=${3:-}
    {
        printf '[stream]\ntokens = ["%s"]\n[gateway]\nengine = "%s"\nagent_tokens = ["%s"]\n' \
            "$VIEWER_TOKEN" "$engine" "$AGENT_TOKEN"
        if [[ $engine == nats ]]; then printf 'nats_url = "%s"\n' "$NATS_URL"; fi
        if [[ -n $ack ]]; then printf 'ack_interval = "%s"\n' "$ack"; fi
    } >"$file"
}

# start_gateway DIR CONFIG: a gateway (replica); sets GW_ADDR, GW_PID.
start_gateway() {
    local dir=$1
    mkdir -p "$dir"
    setsid "$BIN" gateway --config "$2" --state-dir "$dir/state" --listen 127.0.0.1:0 \
        >"$dir/out" 2>"$dir/log" </dev/null &
    GW_PID=$!
    PIDS+=("$GW_PID")
    wait_line "$dir/log" "runtap gateway ready"
    GW_ADDR=$(listen_of "$dir/log" "runtap gateway ready")
}

# start_host DIR HOST GATEWAY_ADDR: a daemon forwarding as HOST; sets H_SOCK.
start_host() {
    local dir=$1
    mkdir -p "$dir"
    setsid "$BIN" daemon --state-dir "$dir/state" --socket "$dir/runtap.sock" --listen 127.0.0.1:0 \
        --upstream "ws://$3" --host-id "$2" --upstream-token-file "$WORK/agent-token" \
        >"$dir/out" 2>"$dir/log" </dev/null &
    PIDS+=("$!")
    wait_line "$dir/log" "runtap daemon ready"
    H_SOCK=$dir/runtap.sock
}

# wait_hosts GATEWAY_ADDR HOST...: until the gateway lists every HOST as connected.
wait_hosts() {
    local addr=$1
    shift
    "$PY" - "$addr" "$VIEWER_TOKEN" "$@" <<'PY' || { log "hosts did not connect to $addr"; exit 1; }
import json, sys, time, urllib.request
addr, token, want = sys.argv[1], sys.argv[2], set(sys.argv[3:])
deadline = time.time() + 30
while time.time() < deadline:
    try:
        req = urllib.request.Request(f"http://{addr}/hosts", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=2) as r:
            if want <= {h["host"] for h in json.load(r) if h.get("connected")}:
                sys.exit(0)
    except Exception:
        pass
    time.sleep(0.05)
sys.exit(1)
PY
}

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# procs_json NAME=PID...: {"NAME":{"hwm_kib":..,"cpu_s":..}}, CPU since the
# ticks recorded by procs_mark.
declare -A TICKS0
procs_mark() { local kv; for kv in "$@"; do TICKS0[${kv%%=*}]=$(cpu_ticks "${kv#*=}"); done; }
procs_json() {
    local kv name pid sep= out='{'
    for kv in "$@"; do
        name=${kv%%=*} pid=${kv#*=}
        out+="$sep\"$name\":{\"hwm_kib\":$(hwm_kib "$pid"),\"cpu_s\":$(awk -v a="${TICKS0[$name]:-0}" -v b="$(cpu_ticks "$pid")" 'BEGIN { printf "%.2f", (b - a) / 100 }')}"
        sep=,
    done
    echo "$out}"
}

# result CASE ENGINE REPLICAS JSON
result() {
    printf '{"case":"%s","engine":"%s","replicas":%s,%s\n' "$1" "$2" "$3" "${4#\{}" | tee -a "$RESULTS"
}

# Fresh processes for one engine: nats-server (nats only) and REPLICAS
# gateways; sets GWS (addresses), GW_PIDS, DIR.
n_setup=0
setup_engine() {
    local engine=$1 replicas=$2 ack=${3:-} r
    n_setup=$((n_setup + 1))
    DIR=$WORK/$n_setup-$engine
    mkdir -p "$DIR"
    NATS_PID=
    if [[ $engine == nats ]]; then start_nats "$DIR/nats"; fi
    gateway_config "$DIR/gateway.toml" "$engine" "$ack"
    GWS=() GW_PIDS=()
    for r in $(seq 1 "$replicas"); do
        start_gateway "$DIR/gw$r" "$DIR/gateway.toml"
        GWS+=("$GW_ADDR") GW_PIDS+=("$GW_PID")
    done
}
proc_names() {
    local r
    for r in "${!GW_PIDS[@]}"; do echo "gw$((r + 1))=${GW_PIDS[r]}"; done
    if [[ -n $NATS_PID ]]; then echo "nats=$NATS_PID"; fi
}

# ------------------------------------------------------------------ ingest
ingest_case() {
    local engine=$1 replicas=$2 h pids=() outs=() jt
    setup_engine "$engine" "$replicas"
    local socks=()
    for h in $(seq 1 "$HOSTS"); do
        start_host "$DIR/h$h" "h$h" "${GWS[$(((h - 1) % replicas))]}"
        socks[h]=$H_SOCK
    done
    for r in "${GWS[@]}"; do wait_hosts "$r" $(seq -f 'h%g' 1 "$HOSTS"); done
    log "ingest: $engine, $replicas replica(s), $HOSTS hosts × $ING_LINES lines as fast as they can"
    mapfile -t names < <(proc_names)
    procs_mark "${names[@]}"
    for h in $(seq 1 "$HOSTS"); do
        jt=$DIR/h$h/job-time
        timeout $((TIMEOUT + 60)) "$LOADGEN" stream --proto runtap --addr "${GWS[$(((h - 1) % replicas))]}" \
            --token "$VIEWER_TOKEN" --socket "${socks[h]}" --run-id ingest --host "h$h" \
            --subs 1 --expect-lines "$ING_LINES" --decode json --scan ends --job-time-file "$jt" --timeout "$TIMEOUT" \
            -- "$PY" "$JOB" "$ING_LINES" 101 1 "$jt" >"$DIR/ingest-h$h.json" &
        pids+=("$!")
    done
    for h in "${!pids[@]}"; do wait "${pids[h]}" || true; done
    local procs
    procs=$(procs_json "${names[@]}")
    local summary
    summary=$("$PY" - "$procs" "$DIR"/ingest-h*.json <<'PY'
import json, sys
procs, files = json.loads(sys.argv[1]), sys.argv[2:]
rs = [json.load(open(f)) if open(f).read().strip() else {"error": "no output"} for f in files]
errs = [r.get("error") for r in rs if r.get("error")]
times = [r.get("time_s") for r in rs]
ok = not errs and None not in times
events = sum(r.get("events", 0) for r in rs)
lines = sum(r.get("lines", 0) for r in rs)
out = {"hosts": len(rs), "events": events, "lines": lines,
       "complete_hosts": sum(r.get("complete_subs", 0) for r in rs),
       "time_s": max(times) if ok else None,
       "per_host_s": times, "job_s": [r.get("job_s") for r in rs],
       "events_per_s": round(events / max(times)) if ok and max(times) > 0 else None,
       "lines_per_s": round(lines / max(times)) if ok and max(times) > 0 else None,
       "mb_per_s": round(sum(r.get("data_bytes", 0) for r in rs) / 1e6 / max(times), 2) if ok and max(times) > 0 else None,
       "procs": procs}
if errs:
    out["errors"] = errs[:3]
print(json.dumps(out))
PY
)
    result ingest "$engine" "$replicas" "$summary"
    stop_all
}

# ------------------------------------------------------------------ latency, viewers
# stream_case CASE ENGINE SUBS [ACK_INTERVAL]: one host on the first
# replica; viewers on SPREAD replicas (1 for local).
stream_case() {
    local name=$1 engine=$2 subs=$3 ack=${4:-} replicas spread out
    if [[ $engine == nats ]]; then replicas=3; else replicas=1; fi
    setup_engine "$engine" "$replicas" "$ack"
    start_host "$DIR/h1" h1 "${GWS[0]}"
    wait_hosts "${GWS[0]}" h1
    case $name:$engine in
        latency:nats) spread="${GWS[0]},${GWS[1]}" ;;      # through A, across to B
        viewers:nats) spread="${GWS[0]},${GWS[1]},${GWS[2]}" ;;
        *) spread="${GWS[0]}" ;;
    esac
    log "$name: $engine${ack:+ (ack_interval $ack)}, $subs viewers over ${spread//,/ }, host on ${GWS[0]}, a line per ms × $LAT_LINES"
    mapfile -t names < <(proc_names)
    procs_mark "${names[@]}"
    out=$(timeout $((TIMEOUT + 120)) "$LOADGEN" stream --proto runtap --addr "${GWS[0]}" --token "$VIEWER_TOKEN" \
        --socket "$H_SOCK" --run-id "$name" --host h1 --server-pid "${GW_PIDS[0]}" --spread "$spread" \
        --subs "$subs" --expect-lines "$LAT_LINES" --decode json --scan all --timeout "$TIMEOUT" \
        -- "$PY" "$JOB" "$LAT_LINES" 101 1000) || true
    [[ -n $out ]] || out='{"error":"loadgen gave no output"}'
    result "$name" "$engine" "$replicas" "$("$PY" -c '
import json, sys
r, procs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
keep = ("error", "subs", "complete_subs", "cut_off_subs", "time_s", "samples", "frames", "p50_ms", "p99_ms", "max_ms",
        "loadgen_cpu_s", "errors")
out = {k: r[k] for k in keep if k in r}
# Replicas by letter, in --spread order: A is the one the host forwards to.
names = {a: "ABC"[i] for i, a in enumerate(sys.argv[4].split(","))}
out["by_replica"] = {names.get(a, a): v for a, v in sorted(r.get("by_addr", {}).items(), key=lambda kv: names.get(kv[0], kv[0]))}
out["procs"] = procs
if sys.argv[3]:
    out["ack_interval"] = sys.argv[3]
print(json.dumps(out))' "$out" "$(procs_json "${names[@]}")" "$ack" "$spread")"
    stop_all
}

# ------------------------------------------------------------------ catch-up
catchup_case() {
    local engine=$1 out extra=
    if [[ ! -x $BENCH/catchup.sh ]]; then
        log "catchup: no bench/catchup.sh here (issue 16's upstream branch brings it); skipped"
        result catchup "$engine" 1 '{"error":"bench/catchup.sh missing"}'
        return 0
    fi
    n_setup=$((n_setup + 1))
    DIR=$WORK/$n_setup-$engine
    mkdir -p "$DIR"
    if [[ $engine == nats ]]; then
        start_nats "$DIR/nats"
        extra=$(printf '[gateway]\nengine = "nats"\nnats_url = "%s"' "$NATS_URL")
    fi
    log "catchup: $engine, bench/catchup.sh with a ${OUTAGE}s outage"
    out=$(OUTAGE=$OUTAGE HOSTS=3 RUNTAP_BIN=$BIN GATEWAY_CONFIG=$extra TMPDIR=$DIR \
        timeout $((OUTAGE + 300)) "$BENCH/catchup.sh") || true
    [[ -n $out ]] || out='{"error":"catchup.sh gave no output"}'
    result catchup "$engine" 1 "$out"
    stop_all
}

# ------------------------------------------------------------------ run
log "mode $MODE; work dir $WORK; $(nproc) CPUs; $(uptime | sed 's/.*load average/load average/')"
if wanted ingest; then
    ingest_case local 1
    ingest_case nats 1
    ingest_case nats 3
fi
if wanted latency; then
    stream_case latency local "$LAT_SUBS"
    stream_case latency nats "$LAT_SUBS"
    # The NATS link appends what it gathered every ack_interval (100 ms),
    # and viewers, even on the same replica, get events once stored.
    stream_case latency nats "$LAT_SUBS" 10ms
fi
if wanted viewers; then
    stream_case viewers local "$FAN_SUBS"
    stream_case viewers nats "$FAN_SUBS"
fi
if wanted catchup; then
    catchup_case local
    catchup_case nats
fi
log "done; $(uptime | sed 's/.*load average/load average/')"

# ------------------------------------------------------------------ table
"$PY" - "$RESULTS" >&2 <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
f = lambda x, d=1: "—" if x is None else f"{x:.{d}f}"
print("\n| case | engine | figure |\n|---|---|---|")
for r in rows:
    eng = f'{r["engine"]}, {r["replicas"]} replica{"s" if r["replicas"] > 1 else ""}' if r["engine"] == "nats" else "local"
    if r.get("ack_interval"):
        eng += f', ack_interval {r["ack_interval"]}'
    if r.get("error"):
        print(f'| {r["case"]} | {eng} | error: {r["error"]} |'); continue
    procs = r.get("procs", {})
    mem = ", ".join(f'{k} {p["hwm_kib"] / 1024:.0f} MB / {p["cpu_s"]:.1f} s CPU' for k, p in procs.items())
    if r["case"] == "ingest":
        fig = (f'{r["events_per_s"]} events/s ({r["lines_per_s"]} lines/s, {r["mb_per_s"]} MB/s): {r["events"]} events in {f(r["time_s"], 2)} s, '
               f'{r["complete_hosts"]}/{r["hosts"]} hosts complete; jobs {", ".join(f(j, 2) for j in r["job_s"])} s; {mem}')
    elif r["case"] in ("latency", "viewers"):
        per = "; ".join(f'{a}: p50 {f(v["p50_ms"], 2)} / p99 {f(v["p99_ms"], 2)} ms, {v["complete_subs"]}/{v["subs"]}'
                        for a, v in r.get("by_replica", {}).items())
        fig = (f'p50 {f(r.get("p50_ms"), 2)} / p99 {f(r.get("p99_ms"), 2)} / max {f(r.get("max_ms"), 1)} ms, '
               f'{r.get("complete_subs")}/{r.get("subs")} complete; {per}; {mem}')
    else:
        fig = f'slowest host {f(r.get("max_s"), 2)} s after the restart (per host {r.get("caught_up_s")}; ready {r.get("gateway_ready_s")} s)'
    print(f'| {r["case"]} | {eng} | {fig} |')
PY
