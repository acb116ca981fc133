#!/usr/bin/env bash
# Builds the fuzz targets with nightly and runs each for SECONDS (default
# 15), one after the other, on its corpus in fuzz/corpus/<target>/ (new
# inputs go to fuzz/target/corpus/, so the committed corpora stay as they
# are; docs/fuzzing.md says how they are kept). Exits 1 after the first
# crash, hang or out-of-memory, whose input cargo-fuzz leaves in
# fuzz/artifacts/<target>/. Without nightly or cargo-fuzz it exits 0 with a
# SKIPPED line: tests/fuzz_corpora.rs replays the corpora on stable anyway.
# FUZZ_FLAGS: cargo-fuzz build flags, default `-O` (optimised, as the long
# runs); CI passes `--dev -s none`, a smoke test that builds with less work.
set -euo pipefail
seconds=${1:-15}
read -r -a flags <<<"${FUZZ_FLAGS:--O}"
cd "$(dirname "$0")"

if ! command -v rustup >/dev/null 2>&1 || ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "SKIPPED: fuzz/run.sh needs a nightly toolchain (rustup toolchain install nightly)"
    exit 0
fi
if ! cargo +nightly fuzz --help >/dev/null 2>&1; then
    echo "SKIPPED: fuzz/run.sh needs cargo-fuzz (cargo install cargo-fuzz)"
    exit 0
fi

# The targets' files (runtap::fuzzing makes a temp dir per process) go in
# a dir of this run's own, removed at the end; on tmpfs when there is one:
# journal_recovery writes a run's files on every input (and fsyncs its
# `lost` event), ~5x faster there than on a disk.
if [[ -d /dev/shm && -w /dev/shm ]]; then
    TMPDIR=$(mktemp -d -p /dev/shm runtap-fuzz.XXXXXX)
else
    TMPDIR=$(mktemp -d)
fi
export TMPDIR
trap 'rm -rf "$TMPDIR"' EXIT

cargo +nightly fuzz build "${flags[@]}"
for target in $(cargo +nightly fuzz list); do
    work="target/corpus/$target"
    log="target/$target.log"
    mkdir -p "$work"
    echo "== $target: ${seconds}s"
    # -rss_limit_mb catches unbounded allocation, -timeout a hang on one input.
    if ! cargo +nightly fuzz run "${flags[@]}" "$target" "$work" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 40 "$log"
        echo "FAILED: $target (its input is in fuzz/artifacts/$target/, the log in fuzz/$log)"
        exit 1
    fi
    grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "$log" || true
done
echo "fuzz: every target ran ${seconds}s without a finding"
