#!/usr/bin/env python3
"""Benchmark job: prints LINES lines of exactly SIZE bytes, each carrying the
wall-clock time it was written, so a subscriber can compute write-to-receive
latency:  t=<unix nanoseconds, 19 digits> i=<line index, 8 digits> xxx...\n

usage: lines.py LINES SIZE INTERVAL_US [TIME_FILE]
INTERVAL_US = 0 writes as fast as possible (buffered); otherwise one line
every INTERVAL_US microseconds on an absolute schedule, flushed each time.
With TIME_FILE, the job's own wall time (seconds, from its first line to
its last write returning) is written there at the end: how long whoever
reads the job's stdout made it take."""
import os
import sys
import time

lines, size, interval_us = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
time_file = sys.argv[4] if len(sys.argv) > 4 else None
started = time.monotonic()
pad = "x" * (size - 34)
out = sys.stdout
ns = time.time_ns
if interval_us == 0:
    for i in range(lines):
        out.write(f"t={ns():019d} i={i:08d} {pad}\n")
    out.flush()
else:
    step = interval_us * 1000
    start = time.monotonic_ns()
    mono = time.monotonic_ns
    sleep = time.sleep
    for i in range(lines):
        delay = start + i * step - mono()
        if delay > 0:
            sleep(delay / 1e9)
        out.write(f"t={ns():019d} i={i:08d} {pad}\n")
        out.flush()
if time_file:
    with open(time_file + ".tmp", "w") as f:
        f.write(f"{time.monotonic() - started:.6f}\n")
    os.rename(time_file + ".tmp", time_file)
