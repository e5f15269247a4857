"""bench/bench_dtoolai.py without a dtoolAI venv, and run_all's splicing of one section."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def run_all(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.syspath_prepend(str(BENCH))
    import run_all as module

    monkeypatch.setattr(module, "OUTPUT_DIR", tmp_path)
    return module


def test_without_a_venv_it_writes_a_skipped_result(tmp_path: Path) -> None:
    env = {**os.environ, "DTOOLAI_VENV": str(tmp_path / "no-such-venv")}
    cmd = [sys.executable, str(BENCH / "bench_dtoolai.py"), "--quick", "--output-dir", str(tmp_path)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "dtoolai.json").read_text())
    assert doc["comparisons"] == []
    assert "make bench-dtoolai" in doc["skipped"]


def test_a_skipped_result_is_a_skipped_row_not_a_failure(run_all) -> None:
    rows = run_all.rows_of("dtoolai", {"skipped": "run `make bench-dtoolai` first", "comparisons": []})
    assert [r["status"] for r in rows] == ["skipped"]


def test_splice_replaces_only_the_sections_run(run_all, tmp_path: Path) -> None:
    (tmp_path / "dtoolai.json").write_text(json.dumps({"skipped": "no venv", "comparisons": []}))
    old = (
        "# Benchmarks\n\nSummary: 9 PASS, 9 FAIL, 0 ERROR, 9 figures for information (no target).\n\n"
        "## hashing\n\nkept\n\n| a | PASS |\n| b | info |\n\n"
        "## dtoolai\n\nold figures\n"
    )
    benches = [("dtoolai", BENCH / "bench_dtoolai.py"), ("hashing", BENCH / "bench_hashing.py")]
    new = run_all.splice(old, benches, {"dtoolai": {"returncode": 0, "output": "x"}})
    assert "## hashing\n\nkept\n\n| a | PASS |" in new
    assert "old figures" not in new
    assert "Not measured here: no venv." in new
    assert "Summary: 1 PASS, 0 FAIL, 0 ERROR, 1 figures for information (no target)." in new
