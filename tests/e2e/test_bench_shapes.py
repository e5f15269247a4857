"""bench/bench_shapes.py's six scripts stay valid Python of the six shapes (the benchmark itself
is not part of the suite: it runs every script several times, ``make bench``)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

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
