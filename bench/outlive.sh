#!/usr/bin/env bash
# Issue 15's figures (docs/outlive.md), runtap only:
#   - a shim's memory: RSS and PSS (/proc/PID/smaps_rollup) of each of N
#     shims supervising `sleep`, and the daemon's RSS with them;
#   - the take-back: kill -9 the daemon with N active runs, start it again,
#     and time (a) its ready line (runs found and registered) and (b) every
#     shim saying "daemon attached" (all N followed live again).
#
#   bench/outlive.sh [N]        N defaults to 50; RUNTAP_BIN picks the binary
#
# Prints a markdown table. Needs an idle machine for comparable numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${RUNTAP_BIN:-target/release/runtap}
N=${1:-50}
dir=$(mktemp -d /tmp/runtap-outlive.XXXXXX)
log=$dir/daemon.log
export RUNTAP_SOCKET=$dir/runtap.sock
now() { date +%s.%N; }
start_daemon() {
    "$BIN" daemon --state-dir "$dir" --socket "$RUNTAP_SOCKET" --listen 127.0.0.1:0 >>"$log" 2>&1 &
    DAEMON=$!
}
wait_for() { # wait_for PATTERN COUNT: until the log holds COUNT lines matching PATTERN
    local deadline=$((SECONDS + 60))
    until [ "$(grep -c -- "$1" "$log" || true)" -ge "$2" ]; do
        [ $SECONDS -lt $deadline ] || { echo "timed out waiting for $2 × '$1'" >&2; tail -20 "$log" >&2; exit 1; }
        sleep 0.01
    done
}
cleanup() {
    for f in "$dir"/runs/*/supervisor.json; do
        [ -f "$f" ] && kill -TERM "$(sed -n 's/.*"pid":\([0-9]*\).*/\1/p' "$f")" 2>/dev/null || true
    done
    kill -9 "${DAEMON:-0}" 2>/dev/null || true
    sleep 1
    rm -rf "$dir"
}
trap cleanup EXIT

start_daemon
wait_for "runtap daemon ready" 1
for i in $(seq 1 "$N"); do "$BIN" run --detach --id "r$i" -- sleep 600 >/dev/null; done
wait_for "daemon attached" "$N"
sleep 1
rss=() pss=()
for f in "$dir"/runs/*/supervisor.json; do
    pid=$(sed -n 's/.*"pid":\([0-9]*\).*/\1/p' "$f")
    rss+=("$(awk '/^VmRSS/ {print $2}' /proc/"$pid"/status)")
    pss+=("$(awk '/^Pss:/ {print $2}' /proc/"$pid"/smaps_rollup)")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
max() { printf '%s\n' "$@" | sort -n | tail -1; }
daemon_rss=$(awk '/^VmRSS/ {print $2}' /proc/$DAEMON/status)

kill -9 "$DAEMON"
wait "$DAEMON" 2>/dev/null || true
before_ready=$(grep -c "runtap daemon ready" "$log")
before_attached=$(grep -c "daemon attached" "$log")
t0=$(now)
start_daemon
wait_for "runtap daemon ready" $((before_ready + 1))
t_ready=$(now)
wait_for "daemon attached" $((before_attached + N))
t_all=$(now)
running=$("$BIN" ps | grep -c " running " || true)

echo "| figure | value |"
echo "|---|---:|"
echo "| shim RSS, median / max (KiB), $N shims | $(median "${rss[@]}") / $(max "${rss[@]}") |"
echo "| shim PSS, median / max (KiB) | $(median "${pss[@]}") / $(max "${pss[@]}") |"
echo "| daemon RSS with $N runs (KiB) | $daemon_rss |"
echo "| restart to ready line, $N runs taken back (ms) | $(echo "($t_ready - $t0) * 1000" | bc | cut -d. -f1) |"
echo "| restart to all $N shims attached (ms) | $(echo "($t_all - $t0) * 1000" | bc | cut -d. -f1) |"
echo "| runs shown running after the restart | $running / $N |"
