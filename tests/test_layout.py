"""The tests are where a maintainer looks for them: a folder per package of src/reprodl.

``tests/<package>/`` holds the tests of ``src/reprodl/<package>/`` (a module's own tests in
``test_<module>.py`` where it has a file of its own), ``tests/core/`` those of the top-level
modules (trust, errors, files, keys, model, zoo, parsing), ``tests/e2e/`` the end-to-end ones
(docs, examples, public script shapes, red team, engines, packaging, bench). Only the checks of the
repository as a whole (code shape, layers, tooling, this layout) sit in tests/ itself, beside the
helper modules (conftest.py, train_fixtures.py, user_scripts.py, ...) every folder imports.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src" / "reprodl"
TOP_LEVEL_FOLDERS = {"core", "e2e"}  # the top-level modules; the end-to-end tests
REPOSITORY_CHECKS = {"test_code_shape.py", "test_layers.py", "test_tooling.py", "test_layout.py"}


def _packages() -> set[str]:
    return {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}


def _test_files() -> list[Path]:
    return sorted(p for p in TESTS.rglob("test_*.py") if "golden" not in p.relative_to(TESTS).parts)


def test_every_package_has_a_test_folder_with_tests() -> None:
    missing = sorted(p for p in _packages() if not list((TESTS / p).glob("test_*.py")))
    assert missing == [], f"no tests/<package>/test_*.py for {missing}: put the package's tests there"


def test_every_test_folder_is_a_package_or_core_or_e2e() -> None:
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and list(p.glob("test_*.py"))}
    assert folders - _packages() - TOP_LEVEL_FOLDERS == set(), "a test folder names no package of src/reprodl"


def test_only_the_repository_checks_sit_in_tests_itself() -> None:
    flat = sorted(p.name for p in TESTS.glob("test_*.py") if p.name not in REPOSITORY_CHECKS)
    assert flat == [], (
        f"{flat} sit in tests/ itself: move each (git mv) into tests/<package>/ for the package it tests, "
        "tests/core/ for a top-level module, or tests/e2e/ for an end-to-end test"
    )


MODULE_NAMED_FROM_LINES = 300  # "the largest modules": each must be findable from the tests


def _named_by_a_test(dotted: str, stems: set[str], text: str) -> bool:
    parts = dotted.split(".")[1:]
    return bool({f"test_{parts[-1]}", "test_" + "_".join(parts)} & stems) or dotted in text


def test_every_large_module_is_named_by_the_tests_that_test_it() -> None:
    files = _test_files()
    stems, text = {p.stem for p in files}, "\n".join(p.read_text() for p in files)
    unnamed = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name in ("__init__.py", "__main__.py") or len(path.read_text().splitlines()) < MODULE_NAMED_FROM_LINES:
            continue
        dotted = ".".join(("reprodl", *path.relative_to(SRC).with_suffix("").parts))
        if not _named_by_a_test(dotted, stems, text):
            unnamed.append(dotted)
    assert unnamed == [], (
        f"no test names {unnamed}: give each its tests/<package>/test_<module>.py, or name it (its dotted name) "
        "in the docstring or imports of the test file that tests it"
    )


def test_test_file_basenames_are_unique() -> None:
    # Test folders have no __init__.py: pytest imports each file by its basename (and conftest.py puts every
    # folder on sys.path), so two files of one name would collide.
    counts = Counter(p.name for p in _test_files())
    assert [name for name, n in counts.items() if n > 1] == []


def test_no_test_folder_is_a_python_package() -> None:
    assert sorted(str(p.relative_to(TESTS)) for p in TESTS.rglob("__init__.py")) == []
