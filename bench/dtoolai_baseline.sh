#!/usr/bin/env bash
# The original dtoolAI 0.2.0, unmodified, in its own virtualenv, measured head to head against
# reprodl by bench/bench_dtoolai.py (provenance CLI, training with capture, image loading).
# Run by `make bench-dtoolai`, never by `make test`: building VENV downloads several GB
# (dtoolai imports torchvision; torch and torchvision are pinned side by side so that pip
# takes a matching pair from the package index). `make bench` includes bench_dtoolai.py
# whenever .venv-dtoolai exists (and shows it as skipped when it does not).
#
#   bench/dtoolai_baseline.sh [VENV] [run_all.py options, e.g. --quick]
#       VENV: default .venv-dtoolai; DTOOLAI_TORCH_PINS changes the pins;
#       REPRODL_PYTHON: reprodl's python (default .venv/bin/python).
#
# It creates VENV once (an existing one is reused as it is), then runs
# `run_all.py --only dtoolai` with DTOOLAI_VENV=VENV: bench-output/dtoolai.json, and the
# dtoolai section of docs/benchmarks.md (a full run; the other sections are kept).
set -euo pipefail

VENV=${1:-.venv-dtoolai}
shift || true
PYTHON=${PYTHON:-python3}
REPRODL_PYTHON=${REPRODL_PYTHON:-.venv/bin/python}
PINS=${DTOOLAI_TORCH_PINS:-"torch==2.14.1 torchvision==0.29.1"}

if [ ! -x "$VENV/bin/dtoolai-provenance" ]; then
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    # shellcheck disable=SC2086  # PINS is several requirements on purpose
    "$VENV/bin/python" -m pip install --quiet "dtoolai==0.2.0" $PINS
fi

DTOOLAI_VENV=$(cd "$VENV" && pwd) OMP_NUM_THREADS=1 exec "$REPRODL_PYTHON" bench/run_all.py --only dtoolai "$@"
