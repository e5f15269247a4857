"""The package's layers: imports point down only (DESIGN.md), checked on the source.

Every ``import reprodl...`` / ``from reprodl... import`` in a module, function-level ones
included, is read with ``ast``; a module may import its own layer or a lower one.
"""

from __future__ import annotations

import ast
import sys
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
        "reprodl.reproduction.pipeline",  # a re-executed run is reproduced without torch in this process
        "reprodl.reproduction.weightdiff",
        "reprodl.training.tracefiles",
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


def _package(rel: Path) -> str:
    """The dotted package a module under src/reprodl belongs to ("reprodl" for a top-level module)."""
    return ".".join(("reprodl", *rel.parts[:-1]))


def _module_package(module: str) -> str:
    """The package a ``reprodl...`` module lives in (a package is its own)."""
    parts = module.split(".")[1:]
    return module if (SRC.joinpath(*parts) / "__init__.py").exists() else module.rsplit(".", 1)[0]


def _private_imports() -> list[str]:
    """``from reprodl.<pkg>.x import _name`` where <pkg> is not the importing module's package."""
    out = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        own = _package(rel)
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.module and node.level == 0):
                continue
            if not node.module.startswith("reprodl."):
                continue
            source = _module_package(node.module)
            if source == own:
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    out.append(f"{rel}:{node.lineno} imports {alias.name} from {node.module}")
    return sorted(out)


def test_no_private_name_is_imported_across_packages() -> None:
    found = _private_imports()
    assert not found, "private names imported from another package (make them public or move them):\n" + "\n".join(
        f"  {line}" for line in found
    )


def test_the_privacy_rule_catches_a_cross_package_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "reprodl"
    (fake / "store").mkdir(parents=True)
    (fake / "data").mkdir()
    (fake / "store" / "x.py").write_text("def _helper(): pass\n")
    (fake / "store" / "y.py").write_text("from reprodl.store.x import _helper\n")  # same package: allowed
    (fake / "data" / "z.py").write_text("from reprodl.store.x import _helper\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", fake)
    assert _private_imports() == ["data/z.py:1 imports _helper from reprodl.store.x"]


def test_trust_and_transforms_form_no_import_cycle() -> None:
    """transforms rebuilds through trust; trust names transforms' base class as data, never imports it."""
    assert "reprodl.trust" in _imports(SRC / "data" / "transforms.py")
    assert not {m for m in _imports(SRC / "trust.py") if m.startswith("reprodl.data")}


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _loaded_modules(node: ast.Import | ast.ImportFrom) -> set[str]:
    """The reprodl modules an import statement loads: ``from reprodl import trust`` is ``reprodl.trust``,
    ``from reprodl.errors import X`` is ``reprodl.errors``."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name.split(".")[0] == "reprodl"}
    if node.level or not node.module or node.module.split(".")[0] != "reprodl":
        return set()
    out = set()
    for alias in node.names:
        sub = SRC.joinpath(*node.module.split(".")[1:], alias.name)
        out.add(f"{node.module}.{alias.name}" if sub.with_suffix(".py").exists() or sub.is_dir() else node.module)
    return out


def _function_level_imports(tree: ast.Module) -> tuple[set[str], list[ast.Import | ast.ImportFrom]]:
    """(the reprodl modules imported at module level, the import statements inside functions); imports
    under ``if TYPE_CHECKING`` never run, so neither counts them."""
    top: set[str] = set()
    lazy: list[ast.Import | ast.ImportFrom] = []

    def walk(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                if in_function:
                    lazy.append(child)
                else:
                    top.update(_loaded_modules(child))
            walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    walk(tree, False)
    return top, lazy


def _needless_lazy_imports() -> list[str]:
    """Function-level imports of reprodl modules the module already imports at its top: lazy for nothing."""
    out = []
    for path in sorted(SRC.rglob("*.py")):
        top, lazy = _function_level_imports(ast.parse(path.read_text()))
        for node in lazy:
            loaded = _loaded_modules(node)
            if loaded and loaded <= top:
                out.append(f"{path.relative_to(SRC)}:{node.lineno} imports {', '.join(sorted(loaded))} again")
    return out


def test_no_function_imports_what_its_module_imports_at_the_top() -> None:
    """A function-level import is there to defer a load (torch, an optional package) or to break a cycle;
    one of a module the file imports at its top anyway defers nothing: import the name at the top."""
    found = _needless_lazy_imports()
    assert not found, "function-level imports of modules already imported at the top (move them up):\n" + "\n".join(
        f"  {line}" for line in found
    )


def test_the_lazy_import_rule_catches_a_duplicate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "reprodl"
    (fake / "store").mkdir(parents=True)
    (fake / "errors.py").write_text("class E(Exception): pass\nclass F(Exception): pass\n")
    (fake / "trust.py").write_text("")
    (fake / "store" / "__init__.py").write_text("")
    (fake / "store" / "x.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from reprodl import trust\n"
        "from reprodl.errors import E\n"
        "if TYPE_CHECKING:\n"
        "    from reprodl.store import y\n"
        "def f():\n"
        "    from reprodl.errors import F\n"  # reprodl.errors is imported at the top: caught
        "    from reprodl import trust as t\n"  # so is reprodl.trust: caught
        "    from reprodl.store import y\n"  # only under TYPE_CHECKING at the top: deferring it is the point
        "    import json\n"  # not a reprodl module: not this rule's
    )
    monkeypatch.setattr(sys.modules[__name__], "SRC", fake)
    assert _needless_lazy_imports() == [
        "store/x.py:7 imports reprodl.errors again",
        "store/x.py:8 imports reprodl.trust again",
    ]
