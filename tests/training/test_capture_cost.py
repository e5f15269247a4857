"""What recording costs a script: no module the plain script would not load (issue 18, item 10).

``torch.use_deterministic_algorithms`` imports ``torch._inductor.config`` (with it torch's
compiler stack: about 800 modules, over a second); a script that never compiles and has no
optimiser (a hand-written update) never loads it. Each script here runs in a fresh process
and lists the modules it ended with.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from user_scripts import child_env

# A language-model-like loop updated by hand (no optimiser: torch.optim loads torch._dynamo itself).
HAND_UPDATE = """\
import json
import sys

import torch
from torch import nn

RECORDED = len(sys.argv) > 2


def train(run=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(11, 8), nn.Flatten(), nn.Linear(8 * 6, 11))
    data = torch.utils.data.TensorDataset(torch.randint(0, 11, (24, 6)), torch.randint(0, 11, (24,)))
    if run is not None:
        run.watch(model)
    loader = run.loader(data, batch_size=8) if run is not None else torch.utils.data.DataLoader(data, batch_size=8)
    for x, y in loader:
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p.grad, alpha=-0.1)
    return model


if RECORDED:
    import reprodl

    run = reprodl.start_run(sys.argv[2], "hand", seed=0)
    run.save(train(run))
    run.finish()
else:
    train()
with open(sys.argv[1], "w") as fh:
    json.dump(sorted(sys.modules), fh)
"""

COMPILER = ("torch._inductor", "torch._dynamo")


def _modules(tmp_path: Path, *args: str) -> set[str]:
    script = tmp_path / "train.py"
    script.write_text(HAND_UPDATE)
    out = tmp_path / f"modules-{len(args)}.json"
    res = subprocess.run(
        [sys.executable, str(script), str(out), *args],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    return set(json.loads(out.read_text()))


def test_a_recorded_run_loads_no_compiler_stack_the_plain_script_does_not(tmp_path: Path) -> None:
    plain = _modules(tmp_path)
    recorded = _modules(tmp_path, str(tmp_path / "models"))
    assert (tmp_path / "models" / "hand").is_dir()  # it did record, in bitwise mode (the default)
    assert not any(m.startswith(COMPILER) for m in plain)
    extra = sorted(m for m in recorded - plain if m.startswith(COMPILER) or m.split(".")[0] in ("PIL", "sympy"))
    assert extra == []


# What a record is compared and rendered with: a training builds one and does neither.
READERS = (
    "reprodl.provenance.diff",
    "reprodl.provenance.fields",
    "reprodl.provenance.summary",
    "reprodl.provenance.legacy",
)


def test_a_recorded_run_loads_no_module_that_only_compares_or_renders_records(tmp_path: Path) -> None:
    recorded = _modules(tmp_path, str(tmp_path / "models"))
    assert (tmp_path / "models" / "hand").is_dir()
    assert "reprodl.provenance.record" in recorded
    assert sorted(m for m in recorded if m in READERS) == []


def test_the_provenance_package_still_gives_the_names_it_loads_on_first_use() -> None:
    import reprodl.provenance as provenance
    from reprodl.provenance.diff import diff_records
    from reprodl.provenance.legacy import legacy_provenance, legacy_summary_lines
    from reprodl.provenance.summary import summary_lines

    assert provenance.diff_records is diff_records
    assert provenance.summary_lines is summary_lines
    assert (provenance.legacy_provenance, provenance.legacy_summary_lines) == (legacy_provenance, legacy_summary_lines)
    assert set(provenance.__all__) <= set(dir(provenance))
    assert not hasattr(provenance, "no_such_name")


COMPILED = """\
import sys

import torch
from torch import nn

import reprodl

run = reprodl.start_run(sys.argv[1], "compiled", seed=0)
loaded_at_start = "torch._inductor.config" in sys.modules
model = torch.compile(nn.Linear(4, 2))  # loads inductor after the run started
run.watch(model, torch.optim.SGD(model.parameters(), lr=0.1))
import torch._inductor.config as inductor

during = inductor.deterministic
run.use(torch.utils.data.TensorDataset(torch.randn(4, 4)), role="train")
run.save(model)
run.finish()
print(loaded_at_start, during, inductor.deterministic)
"""


@pytest.mark.slow  # torch.compile imports torch's compiler stack: seconds
def test_a_model_compiled_after_the_run_started_gets_inductors_deterministic_flag(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(COMPILED)
    res = subprocess.run(
        [sys.executable, "train.py", str(tmp_path / "models")],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "True", "False"]  # set while the run lasts, given back after
