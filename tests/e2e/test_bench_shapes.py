"""bench/bench_shapes.py's six scripts stay valid Python of the six shapes (the benchmark itself
is not part of the suite: it runs every script several times, ``make bench``)."""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_the_six_shapes_are_scripts_that_adopt_reprodl_only_with_record() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        from _shapes import SHAPES
    finally:
        sys.path.remove(str(BENCH))
    assert sorted(SHAPES) == ["gan", "iterable", "lbfgs", "lightning_manual", "lstm_lm", "nanogpt"]
    for name, source in SHAPES.items():
        tree = ast.parse(source, filename=f"{name}.py")
        top_imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert not any("reprodl" in ast.unparse(n) for n in top_imports), name  # the plain script never imports it
        assert "args.record" in source and "loop_s" in source, name


def test_the_benchs_child_pythons_cache_compiled_bytecode_as_an_installed_package_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PYTHONDONTWRITEBYTECODE=1 (set on the machines this runs on) would make every recorded process
    recompile reprodl (~70 ms), a cost a pip-installed user never pays: the children cache it under tmp."""
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.delenv("PYTHONPYCACHEPREFIX", raising=False)
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_run_api
    import bench_shapes

    for module in (bench_shapes, bench_run_api):
        env = module.child_env(tmp_path)
        assert "PYTHONDONTWRITEBYTECODE" not in env
        assert env["PYTHONPYCACHEPREFIX"] == str(tmp_path / "pycache")
    import _common

    with _common.children_compiled(tmp_path):  # what reproduce's re-executed script inherits
        assert "PYTHONDONTWRITEBYTECODE" not in os.environ
        assert os.environ["PYTHONPYCACHEPREFIX"] == str(tmp_path / "pycache")
    assert os.environ["PYTHONDONTWRITEBYTECODE"] == "1" and "PYTHONPYCACHEPREFIX" not in os.environ
