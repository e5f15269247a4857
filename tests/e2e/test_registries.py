"""The extension points are tables: a new export format, divergence cause or command group is
its own code plus one line of the table, and the entry points find it there."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from train_fixtures import TrainedModel

from reprodl.exports import formats
from reprodl.reproduction import causes
from reprodl.reproduction.rerun import reproduce
from reprodl.training import _epochs as loop_module

pytest_plugins = ["train_fixtures"]

CLI = Path(__file__).resolve().parents[2] / "src" / "reprodl" / "cli"


def _write_digests(source: Any, path: Path, options: formats.ExportOptions) -> dict[str, Any]:
    """A format a test adds: the model's weights digest and the options it was given, as JSON."""
    record = source.model_record("digests")
    path.write_text(json.dumps({"weights": record.results.weights_sha256, "allow": list(options.allow)}))
    return {"digests": 1}


def test_a_format_added_to_the_table_is_listed_and_exported_through_the_cli(
    cli, trained_model: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    line = formats.ExportFormat("digests", ".json", "model", "file", "the model's digests", _write_digests)
    monkeypatch.setitem(formats.FORMATS, "digests", line)
    out = tmp_path / "digests.json"
    res = cli("export", trained_model.uri, "--format", "digests", "-o", out, "--allow", "my_models", "--json")
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["format"] == "digests" and result["details"] == {"digests": 1}
    assert result["bytes"] == out.stat().st_size
    written = json.loads(out.read_text())
    assert written == {"weights": trained_model.record.results.weights_sha256, "allow": ["my_models"]}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # written atomically, nothing left over


def test_an_unknown_format_is_an_error_naming_the_formats_there_are(cli, trained_model: TrainedModel) -> None:
    from reprodl.exports import ExportError, export

    bad = cli("export", trained_model.uri, "--format", "pickle", "-o", "x.pkl")
    assert bad.exit_code == 2 and "unknown format 'pickle'" in bad.stderr
    listed = " ".join(bad.stderr.split()).replace("│", "")
    assert all(name in listed for name in formats.FORMATS), bad.stderr
    with pytest.raises(ExportError, match="unknown export format 'pickle': use one of ro-crate, prov, prov-n"):
        export(trained_model.uri, "pickle", "x.pkl")


def test_a_format_needing_a_model_refuses_a_dataset_before_writing(digits_split_master: str, tmp_path: Path) -> None:
    from reprodl.exports import ExportError, export

    with pytest.raises(ExportError, match="is a dataset, not a reprodl model"):
        export(digits_split_master, "model-card", tmp_path / "card.md")
    assert not list(tmp_path.iterdir())


def test_every_format_module_has_the_same_writer_shape() -> None:
    for fmt in formats.FORMATS.values():
        assert isinstance(fmt.write, formats.Lazy), fmt.name  # the table imports no format's module
        writer = getattr(importlib.import_module(fmt.write.module), fmt.write.function)
        params = list(inspect.signature(writer).parameters)
        assert params[0] == "source" and params[2] == "options" and len(params) == 3, fmt.name


def test_a_cause_added_to_the_table_is_reported_in_its_place(
    trained_model: TrainedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    k = trained_model.record.training.optimizer_steps // trained_model.record.training.epochs + 2
    update = loop_module.Loop._update

    def perturbed(self: Any) -> None:
        update(self)
        if self.optimizer_steps == k:
            with torch.no_grad():
                next(self.model.parameters()).add_(1e-6)

    def clocks(f: causes.Finding) -> list[str]:
        return [f"GPU clocks: none recorded at {f.where} (lines before: {len(f.before)})"]

    seen: list[causes.Finding] = []

    def spy(f: causes.Finding) -> list[str]:
        seen.append(f)
        return []

    table = list(causes.CAUSES)
    at = [c.name for c in table].index("computation")
    table[at:at] = [causes.Cause("clocks", "nvidia-smi's clocks, recorded and now", clocks)]
    monkeypatch.setattr(causes, "CAUSES", [causes.Cause("spy", "everything", spy), *table])
    monkeypatch.setattr(loop_module.Loop, "_update", perturbed)
    div = reproduce(trained_model.uri, stop_at_divergence=True).divergence
    assert div is not None and div.step == k
    assert div.causes == [f"GPU clocks: none recorded at step {k} (epoch 2, batch 2) (lines before: 0)"]
    assert len(seen) == 1 and seen[0].divergence.step == k and seen[0].before == ()  # asked once, first


def test_the_causes_are_checked_in_the_stated_order() -> None:
    names = [c.name for c in causes.CAUSES]
    assert names == [
        "data order",
        "data",
        "initial weights",
        "seeds",
        "code",
        "settings",
        "environment",
        "random draws",
        "computation",
        "operation",
    ]
    doc = (Path(__file__).resolve().parents[2] / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert " -> ".join(names) in doc


def test_the_cli_registers_its_groups_explicitly_and_no_module_imports_the_app() -> None:
    import reprodl.cli

    for name in reprodl.cli.GROUPS:
        tree = ast.parse((CLI / f"{name}.py").read_text(encoding="utf-8"))
        imported = {
            (node.module, alias.name)
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            for alias in node.names
        }
        assert ("reprodl.cli", "app") not in imported, name  # the cycle cli -> module -> cli is gone
        assert any(isinstance(n, ast.FunctionDef) and n.name == "register" for n in tree.body), name
    app = reprodl.cli.build()
    n_commands = len(app.registered_commands)
    assert reprodl.cli.build() is app and len(app.registered_commands) == n_commands  # once, however often
    assert {g.name for g in app.registered_groups} == {"dataset", "catalog"}


def test_reprodl_help_builds_every_group_without_importing_torch_or_the_store() -> None:
    code = (
        "import sys; sys.argv = ['reprodl', '--help']; from reprodl.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = ('torch', 'dtoolcore', 'reprodl.store', 'reprodl.exports.source')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "[]"
    assert all(name in out for name in ("dataset", "catalog", "export", "reproduce", "keygen", "report"))
