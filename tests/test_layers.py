"""The package's layers: imports point down only (DESIGN.md), checked on the source.

Every ``import reprodl...`` / ``from reprodl... import`` in a module, function-level ones
included, is read with ``ast``; a module may import its own layer or a lower one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "reprodl"

# Lowest first. A module's layer is that of its top-level name under reprodl.
LAYERS: list[set[str]] = [
    {"keys", "errors", "parsing", "files"},
    {"store"},
    {"data", "trust"},
    {"provenance"},
    {"modeldataset"},
    {"model", "zoo"},
    {"training"},
    {"integrations", "compat"},
    {"reproduction", "exports", "catalog"},
    {"reports"},
    {"cli"},
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}

# Known exceptions, each to be removed by moving code to its layer (the test fails when one
# is fixed, so the list only shrinks).
KNOWN: set[tuple[str, str]] = set()


def _top(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "reprodl" or len(parts) == 1:
        return None
    return parts[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "reprodl":
                found.update(f"reprodl.{alias.name}" for alias in node.names)
    return found


def _violations() -> set[tuple[str, str]]:
    out = set()
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        if rel.parts == ("__init__.py",):
            continue  # the facade re-exports from every layer
        own = rel.parts[0].removesuffix(".py")
        for module in _imports(path):
            top = _top(module)
            if top is None or top == own or top == "__version__":
                continue
            if top not in RANK:
                continue
            if RANK[top] > RANK[own]:
                out.add((str(rel), module))
    return out


def test_every_module_is_in_a_layer() -> None:
    tops = {p.relative_to(SRC).parts[0].removesuffix(".py") for p in SRC.rglob("*.py")} - {"__init__"}
    assert tops <= set(RANK), f"modules in no layer: {sorted(tops - set(RANK))}"


def test_imports_point_down_only() -> None:
    found = _violations()
    new = sorted(found - KNOWN)
    assert not new, "imports pointing up a layer:\n" + "\n".join(f"  {m} imports {i}" for m, i in new)
    fixed = sorted(KNOWN - found)
    assert not fixed, f"remove these from KNOWN, they are fixed: {fixed}"


@pytest.mark.parametrize(
    "module",
    [
        "reprodl",
        "reprodl.provenance",
        "reprodl.training",
        "reprodl.integrations",
        "reprodl.compat",
        "reprodl.compat.dtoolai",
        "reprodl.reproduction",
        "reprodl.modeldataset",
        "reprodl.trust",
        "reprodl.parsing",
    ],
)
def test_importing_a_package_imports_no_torch(module: str) -> None:
    import subprocess
    import sys

    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
