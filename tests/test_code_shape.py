"""The library stays readable: no function over about 60 lines (issue 8's house rule).

A function is measured from its ``def`` to its last line, decorators and docstring included.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "reprodl"
MAX_LINES = 60


def _long_functions() -> dict[str, int]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_LINES:
                    out[f"{path.relative_to(SRC)}:{node.name}"] = n
    return out


def test_no_library_function_is_over_60_lines() -> None:
    long = _long_functions()
    assert not long, "split these functions (lines): " + ", ".join(f"{k} ({v})" for k, v in sorted(long.items()))
