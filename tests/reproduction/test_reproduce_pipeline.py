"""``reproduce`` is six stages in one order, and the reproduction package's imports form no cycle.

Like Lightning's hook-order test: the stages (and the runner the run stage hands to) are recorded as a
reproduction passes through them, in process and by re-execution; an untrusted re-execution stops after
the plan, before anything runs. The import graph of ``reprodl.reproduction`` (function-level imports
included) is read with ``ast``: stages import only the state and earlier stages, nothing the pipeline
uses imports the pipeline back, and no module imports another in a cycle.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Any

import pytest

pytest.register_assert_rewrite("train_fixtures")

from train_fixtures import train_digits
from user_scripts import run_script, tiny_run_script, user_repo

pytest_plugins = ["train_fixtures"]

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "reprodl" / "reproduction"
STAGES = ["plan", "check", "run", "compare", "judge", "explain"]

SCRIPT = tiny_run_script()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The stages and runners called, in order."""
    seen: list[str] = []

    def recording(name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            seen.append(name)
            return fn(*args, **kwargs)

        return wrapper

    for stage in STAGES:
        module = importlib.import_module(f"reprodl.reproduction.pipeline.{stage}")
        monkeypatch.setattr(module, stage, recording(stage, getattr(module, stage)))
    runners = {"retrain": "train_here", "reexec": "execute", "ddp": "train_under_torchrun"}
    for name, fn in runners.items():
        module = importlib.import_module(f"reprodl.reproduction.{name}")
        monkeypatch.setattr(module, fn, recording(f"{name}.{fn}", getattr(module, fn)))
    return seen


@pytest.fixture(scope="module")
def script_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A start_run model, reproduced by re-executing its stored script."""
    repo = user_repo(tmp_path_factory.mktemp("user"), {"train.py": SCRIPT}, commit_message="script")
    (repo / "models").mkdir()
    res = run_script(repo, "train.py")
    assert res.returncode == 0, res.stderr
    return str(repo / "models" / "tiny")


def test_an_in_process_reproduction_passes_the_six_stages_in_order(
    calls: list[str], digits_split_master: str, tmp_path: Path
) -> None:
    from reprodl.reproduction.pipeline import reproduce

    uri, _ = train_digits(tmp_path, "m", digits_split_master, n_epochs=1)
    report = reproduce(uri)
    assert report.verdict == "identical", report.reasons
    assert calls == ["plan", "check", "run", "retrain.train_here", "compare", "judge", "explain"]


def test_a_re_executed_reproduction_passes_the_same_stages_in_order(calls: list[str], script_model: str) -> None:
    from reprodl.reproduction.pipeline import reproduce

    report = reproduce(script_model, trust_code=True, on_output=lambda line: None)
    assert report.verdict == "identical", report.reasons
    assert report.code is not None and report.code.status == "re-executed"
    assert calls == ["plan", "check", "run", "reexec.execute", "compare", "judge", "explain"]


def test_untrusted_code_stops_at_the_plan_before_anything_is_checked_or_run(
    calls: list[str], script_model: str
) -> None:
    from reprodl.errors import UnsafeImportError
    from reprodl.reproduction.pipeline import reproduce

    with pytest.raises(UnsafeImportError, match="Nothing was run or written"):
        reproduce(script_model)
    assert calls == ["plan"]


def test_code_that_changed_after_it_was_trusted_is_refused_before_anything_runs(
    calls: list[str], script_model: str
) -> None:
    """The prompt showed digest A and the user said yes; if the bytes about to run are not A, nothing runs."""
    from reprodl.errors import IntegrityError
    from reprodl.reproduction.pipeline import reproduce
    from reprodl.reproduction.reexec import reexecution_plan

    shown = reexecution_plan(script_model).code_digest
    with pytest.raises(IntegrityError, match="changed in between, so nothing was run"):
        reproduce(script_model, trust_code=True, code_digest="sha256:" + "0" * 64)
    assert calls == ["plan"]
    calls.clear()
    report = reproduce(script_model, trust_code=True, code_digest=shown)  # the bytes shown: it runs
    assert report.verdict == "identical" and calls[:3] == ["plan", "check", "run"]


def test_the_cli_the_public_api_and_the_old_name_are_the_one_function() -> None:
    import reprodl
    from reprodl.reproduction import pipeline, rerun

    assert reprodl.reproduce is pipeline.reproduce is rerun.reproduce
    assert reprodl.ReproductionReport is pipeline.ReproductionReport is rerun.ReproductionReport


# --- the import graph -------------------------------------------------------------------------
def _module_name(path: Path) -> str:
    parts = ["reprodl", "reproduction", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    """Module -> the reproduction modules it imports at run time (function-level imports included; those
    under ``if TYPE_CHECKING:`` are for the type checker only and never run, so they make no cycle)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        tree = ast.parse(path.read_text())
        typing_only = {
            id(n)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
            for stmt in block.body
            for n in ast.walk(stmt)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first walk (each reported once, from where it was entered)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                walk(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node, [node])
    return found


def _package_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph without a package's edges to its own submodules (importing a submodule imports its package
    first; the package importing its modules is how it exposes them, not a cycle)."""
    return {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}


def test_no_module_of_reproduction_imports_another_in_a_cycle() -> None:
    assert _cycles(_package_edges(_graph())) == []


def test_a_stage_imports_only_the_state_and_earlier_stages() -> None:
    graph = _graph()
    prefix = "reprodl.reproduction.pipeline."
    for i, stage in enumerate(STAGES):
        inside = {m.removeprefix(prefix) for m in graph[prefix + stage] if m.startswith(prefix)}
        assert inside <= {"state", *STAGES[:i]}, (stage, inside)
    state = {m for m in graph[prefix + "state"] if m.startswith(prefix)}
    assert state == set()


def test_nothing_the_pipeline_uses_imports_the_pipeline_or_its_old_name() -> None:
    graph = _package_edges(_graph())
    top = "reprodl.reproduction.pipeline"
    used: set[str] = set()
    todo = [m for m in graph if m.startswith(top)]
    while todo:
        for dep in graph[todo.pop()]:
            if dep not in used:
                used.add(dep)
                todo.append(dep)
    runners = {m for m in used if not m.startswith(top)}
    assert {"reprodl.reproduction.retrain", "reprodl.reproduction.reexec", "reprodl.reproduction.ddp"} <= runners
    for module in runners:
        back = {d for d in graph[module] if d.startswith(top) or d == "reprodl.reproduction.rerun"}
        assert not back, f"{module} imports {sorted(back)}: a runner calls back into the pipeline"


@pytest.mark.parametrize("engine", ["ray", "slurm"])
def test_the_digest_trusted_at_the_prompt_goes_with_a_reproduction_on_an_engine(
    script_model: str, engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``reprodl reproduce --executor ray|slurm`` after a yes at the prompt: the engine's re-run is held to
    the bytes shown (``code_digest``), as the re-run here is; without the prompt (``--trust-code``) none is."""
    from typer.testing import CliRunner

    from reprodl.cli import build
    from reprodl.cli import reproduce as cli_reproduce
    from reprodl.reproduction import executors
    from reprodl.reproduction.reexec import reexecution_plan

    sent: list[dict[str, Any]] = []

    def fake_reproduce_on(executor: Any, uri: str, **options: Any) -> dict[str, Any]:
        sent.append(options)
        return {"verdict": "identical", "ok": True, "reasons": [], "allocation": {"label": "x", "rerun": {}}}

    monkeypatch.setattr(executors, "reproduce_on", fake_reproduce_on)
    asked = cli_reproduce._ask_trust

    def yes_at_the_prompt(uri: str, trust_code: bool, *args: Any) -> tuple[Any, bool]:
        plan, trusted = asked(uri, trust_code, *args)  # no terminal here: the plan, not yet trusted
        return plan, True  # what a yes at the prompt gives

    monkeypatch.setattr(cli_reproduce, "_ask_trust", yes_at_the_prompt)
    runner = CliRunner()
    result = runner.invoke(build(), ["reproduce", script_model, "--executor", engine, "--json"])
    assert result.exit_code == 0, result.output
    assert sent[-1]["trust_code"] is True
    assert sent[-1]["code_digest"] == reexecution_plan(script_model).code_digest
    result = runner.invoke(build(), ["reproduce", script_model, "--executor", engine, "--json", "--trust-code"])
    assert result.exit_code == 0, result.output
    assert "code_digest" not in sent[-1]
