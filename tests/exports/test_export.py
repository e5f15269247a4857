"""reprodl export: the command and what every format shares (nothing imported before use, the umask).

Each format's own round trip is in the test file named after its module: test_ro_crate.py,
test_prov_doc.py, test_croissant.py, test_model_card.py, test_onnx_model.py, test_mlflow_run.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from train_fixtures import TrainedModel

from reprodl.exports import ExportError, export

pytest_plugins = ["train_fixtures"]


def test_cli_export_prints_json_and_refuses_what_it_cannot_do(cli, trained_model: TrainedModel, tmp_path: Path) -> None:
    res = cli("export", trained_model.uri, "--format", "model-card", "-o", tmp_path / "card.md", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["format"] == "model-card" and data["bytes"] == (tmp_path / "card.md").stat().st_size
    again = cli("export", trained_model.uri, "--format", "model-card", "-o", tmp_path / "card.md")
    assert again.exit_code == 2 and "already exists" in again.stderr
    assert (
        cli("export", trained_model.uri, "--format", "model-card", "-o", tmp_path / "card.md", "--overwrite").exit_code
        == 0
    )
    bad = cli("export", trained_model.uri, "--format", "pickle", "-o", tmp_path / "x")
    assert bad.exit_code == 2 and "unknown format 'pickle'" in bad.stderr
    no_uri = cli("export", trained_model.uri, "--format", "mlflow")
    assert no_uri.exit_code == 2 and "--tracking-uri" in no_uri.stderr
    with pytest.raises(ExportError, match="not a ro-crate export"):
        export(trained_model.uri, "ro-crate", tmp_path, overwrite=True)


def test_importing_reprodl_and_its_export_imports_no_format_package() -> None:
    code = (
        "import sys, reprodl; from reprodl import export; import reprodl.exports; "
        "print(sorted(m for m in ('mlflow', 'rocrate', 'prov', 'onnx', 'mlcroissant', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_exports_are_readable_as_the_umask_says(trained_model: TrainedModel, tmp_path: Path) -> None:
    """mkstemp/mkdtemp make 0600/0700; a shared export follows the umask like any file the user makes."""
    import os

    old = os.umask(0o022)
    try:
        export(trained_model.uri, "model-card", tmp_path / "card.md")
        export(trained_model.uri, "ro-crate", tmp_path / "crate")
    finally:
        os.umask(old)
    assert (tmp_path / "card.md").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "crate").stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "crate").iterdir()} == {0o644}
