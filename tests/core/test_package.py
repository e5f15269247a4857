"""The top-level package: a small sorted public API, and importing it changes nothing."""

from __future__ import annotations

import subprocess
import sys


def test_public_api_is_small_sorted_and_every_name_resolves():
    import reprodl

    assert reprodl.__all__ == sorted(reprodl.__all__) == sorted(reprodl._EXPORTS)
    assert len(reprodl.__all__) <= 20  # one name per verb of the CLI, plus the classes a user holds
    for name in reprodl.__all__:
        assert getattr(reprodl, name) is not None


def test_importing_reprodl_imports_no_torch_and_sets_no_global_state():
    code = (
        "import sys, os; env = dict(os.environ); import reprodl, reprodl.store, reprodl.provenance, "
        "reprodl.training.config, reprodl.modeldataset.verify, reprodl.data.ops, reprodl.data.creators; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert dict(os.environ) == env, 'environment changed'; print('ok')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_reproduce_is_the_function_even_after_its_module_was_imported():
    code = (
        "import reprodl.reproduction.rerun, reprodl.training.loop, reprodl.model; "
        "from reprodl import reproduce, TrainedTorchModel, DerivedDataSet; "
        "assert callable(reproduce) and reproduce.__name__ == 'reproduce'; print('ok')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_no_facade_name_is_also_a_subpackage():
    """`reprodl.report` must stay the function: importing a subpackage of the same name would
    replace the facade's attribute with the module."""
    import importlib.util

    import reprodl

    clashes = [name for name in reprodl.__all__ if importlib.util.find_spec(f"reprodl.{name}") is not None]
    assert clashes == []
