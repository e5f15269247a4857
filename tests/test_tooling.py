"""The lint habits hold: pre-commit runs `make lint`'s tools, and every suppression comment
left in the code is needed by a tool and says why."""

from __future__ import annotations

import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
LINTED = ("src", "tests", "bench", "examples")  # what `make lint` runs ruff over
NOQA = re.compile(r"#\s*noqa\b(?P<rest>.*)", re.IGNORECASE)
TYPE_IGNORE = re.compile(r"#\s*type:\s*ignore(?P<rest>.*)")
JUSTIFIED_NOQA = re.compile(r"^:\s*[A-Z]+\d+(,\s*[A-Z]+\d+)*\s+-\s+\S")  # ": BLE001 - why"
JUSTIFIED_IGNORE = re.compile(r"^\[[a-z-]+(,\s*[a-z-]+)*\]\s+#\s*\S")  # "[attr-defined]  # why"


def _comments() -> Iterator[tuple[str, int, str]]:
    """(file, line, comment) of every comment in the linted Python files."""
    for top in LINTED:
        for path in sorted((REPO / top).rglob("*.py")):
            with tokenize.open(path) as fh:
                for tok in tokenize.generate_tokens(fh.readline):
                    if tok.type == tokenize.COMMENT:
                        yield str(path.relative_to(REPO)), tok.start[0], tok.string


def test_every_noqa_names_its_codes_and_says_why():
    bad = [
        f"{path}:{line}: {text}"
        for path, line, text in _comments()
        if (m := NOQA.search(text)) and not JUSTIFIED_NOQA.match(m["rest"])
    ]
    assert not bad, "write `# noqa: CODE - why` (or remove it when ruff does not need it):\n" + "\n".join(bad)


def test_type_ignores_are_only_where_mypy_checks_and_each_says_why():
    bad = []
    for path, line, text in _comments():
        m = TYPE_IGNORE.search(text)
        if m is None:
            continue
        if not path.startswith("src/reprodl/"):
            bad.append(f"{path}:{line}: mypy does not check this file, so nothing needs {text!r}")
        elif not JUSTIFIED_IGNORE.match(m["rest"]):
            bad.append(f"{path}:{line}: write `# type: ignore[code]  # why`: {text}")
    assert not bad, "\n".join(bad)


def test_unused_suppressions_are_tool_findings():
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")  # no tomllib on Python 3.10
    select = re.search(r"^select = \[(.*)\]$", text.split("[tool.ruff.lint]", 1)[1], re.MULTILINE)
    assert select is not None and '"RUF100"' in select[1]  # ruff: an unused noqa is a finding
    mypy = text.split("[tool.mypy]", 1)[1].split("\n[", 1)[0]
    assert re.search(r"^warn_unused_ignores = true$", mypy, re.MULTILINE)  # mypy: an unused type: ignore is one


def test_pre_commit_runs_the_tools_of_make_lint_offline():
    config = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text(encoding="utf-8"))
    hooks = [hook for repo in config["repos"] for hook in repo["hooks"]]
    assert {repo["repo"] for repo in config["repos"]} == {"local"}  # nothing to download
    assert all(hook["language"] == "system" for hook in hooks)
    entries = [hook["entry"].split()[:2] for hook in hooks]
    assert entries == [
        [".venv/bin/ruff", "check"],
        [".venv/bin/ruff", "format"],
        [".venv/bin/mypy"],
        [".venv/bin/python", "-m"],
    ]
    rules = "tests/test_layers.py tests/test_code_shape.py tests/test_layout.py"
    assert hooks[-1]["entry"].endswith(rules)
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    for command in ("ruff check", "ruff format --check", "mypy"):
        assert f"$(VENV)/bin/{command}" in makefile
    assert rules in makefile  # make lint runs the same rules
