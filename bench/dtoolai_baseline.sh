#!/usr/bin/env bash
# The original dtoolAI 0.2.0, unmodified, in its own virtualenv: the baseline docs/benchmarks.md
# quotes for the provenance CLI's start-up (3.47 s and 813 MiB when last measured here).
# Run by `make bench-dtoolai`, never by `make test` or `make bench`: it downloads several GB
# (dtoolai imports torchvision; torch and torchvision are pinned side by side so that pip
# takes a matching pair from the package index).
#
#   bench/dtoolai_baseline.sh [VENV]      (default .venv-dtoolai; DTOOLAI_TORCH_PINS to change the pins)
#
# It creates VENV once, then runs dtoolAI's own console script `dtoolai-provenance --help`
# (setup.py: dtoolai.utils:print_provenance) 5 times as a fresh process, and writes the
# median wall time and the peak memory (the child's ru_maxrss) to
# bench-output/dtoolai_baseline.json. `--help` measures start-up (importing torch,
# torchvision, dtoolcore and dtoolai), which is what dominates the command on a small model.
set -euo pipefail

VENV=${1:-.venv-dtoolai}
PYTHON=${PYTHON:-python3}
PINS=${DTOOLAI_TORCH_PINS:-"torch==2.14.1 torchvision==0.29.1"}
mkdir -p bench-output

if [ ! -x "$VENV/bin/dtoolai-provenance" ]; then
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    # shellcheck disable=SC2086  # PINS is several requirements on purpose
    "$VENV/bin/python" -m pip install --quiet "dtoolai==0.2.0" $PINS
fi

OMP_NUM_THREADS=1 "$VENV/bin/python" - "$VENV/bin/dtoolai-provenance" bench-output/dtoolai_baseline.json <<'PY'
import json, resource, statistics, subprocess, sys, time

cli, out = sys.argv[1], sys.argv[2]
times = []
for _ in range(5):
    start = time.perf_counter()
    subprocess.run([cli, "--help"], check=True, stdout=subprocess.DEVNULL)
    times.append(time.perf_counter() - start)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
result = {"bench": "dtoolai_baseline", "dtoolai": "0.2.0", "command": "dtoolai-provenance --help",
          "median_s": statistics.median(times), "times_s": times, "peak_rss_bytes": peak}
with open(out, "w") as fh:
    json.dump(result, fh, indent=2)
print(f"[dtoolai_baseline] dtoolai-provenance start-up: {result['median_s']:.2f} s, peak {peak / 2**20:.0f} MiB -> {out}")
PY
