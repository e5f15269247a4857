"""`reprodl provenance URI` start to finish vs the same command on a torch-importing process.

The provenance command reads the record without importing torch, so it should answer in
the time Python needs to start and load pydantic/typer, well under ``import torch``.
Measured as subprocesses (start-up included), interleaved:

  * ``reprodl provenance URI`` (the installed .venv/bin/reprodl entry point) - the candidate;
  * ``reprodl-provenance URI`` (the paper's command name) - informational;
  * the same command on a process that imports torch first
    (``python -c "import torch; from reprodl.cli import main; ...; main()"``) - baseline 1;
  * ``python -c "import torch"`` alone - baseline 2.

Checks (PASS/FAIL): the plain command imports no torch, by ``python -X importtime`` on the
entry point and by ``sys.modules`` after running ``main()`` in a ``-c`` wrapper.

The model dataset is a 1-epoch digits model trained once in a temporary directory.

    .venv/bin/python bench/bench_provenance_cli.py [--quick]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# _common first: it sets OMP_NUM_THREADS before torch loads (E402 is ignored under bench/).
import _common as C
import _timing as T

NAME = "provenance_cli"
BIN = Path(sys.executable).parent
HEAVY = ("torch", "numpy", "PIL", "safetensors", "sklearn", "boto3", "dtoolcore", "pydantic", "typer", "rich")


def make_model(tmp: Path) -> str:
    """A 1-epoch digits model (the demo config) trained in ``tmp``; its URI."""
    import yaml

    C.set_torch_threads()
    from reprodl.cli.demo import DEMO_CONFIG
    from reprodl.data.creators import create_digits
    from reprodl.data.ops import split_dataset
    from reprodl.training.config import build_and_train, load_config

    (tmp / "data").mkdir()
    (tmp / "models").mkdir()
    split_dataset(create_digits(str(tmp / "data"), "digits"), test=0.2, seed=0)
    config = {**DEMO_CONFIG, "params": {**DEMO_CONFIG["params"], "n_epochs": 1}}
    path = tmp / "train.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    uri, _ = build_and_train(load_config(path), progress=False)
    return uri


def run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"{cmd[:3]}... failed ({res.returncode}): {res.stderr[-2000:]}")
    return res


def imported_by_importtime(uri: str, env: dict[str, str]) -> list[str]:
    """Top-level packages `python -X importtime` shows the entry point importing."""
    res = run([sys.executable, "-X", "importtime", str(BIN / "reprodl"), "provenance", uri], env)
    mods = set()
    for line in res.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name and name != "package":
                mods.add(name.split(".")[0])
    return sorted(mods)


def imported_by_sys_modules(uri: str, env: dict[str, str]) -> list[str]:
    """Top-level packages in sys.modules after running the command's main() in-process."""
    code = (
        "import sys, json\n"
        "from reprodl.cli import main\n"
        f"sys.argv = ['reprodl', 'provenance', {uri!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "sys.stderr.write('MODULES ' + json.dumps(sorted({m.split('.')[0] for m in sys.modules})) + '\\n')\n"
    )
    res = run([sys.executable, "-c", code], env)
    line = [x for x in res.stderr.splitlines() if x.startswith("MODULES ")][-1]
    import json

    return json.loads(line[len("MODULES ") :])


def main() -> None:
    args = C.parse_args(__doc__.splitlines()[0])
    repeats = args.repeats or (5 if args.quick else 11)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NO_COLOR": "1"}
    with tempfile.TemporaryDirectory(prefix="reprodl-bench-") as tmp:
        uri = make_model(Path(tmp))
        out = run([str(BIN / "reprodl"), "provenance", uri], env).stdout
        assert "Record digest: sha256:" in out, out[-500:]
        torch_first = (
            "import torch; import sys; from reprodl.cli import main; "
            f"sys.argv = ['reprodl', 'provenance', {uri!r}]; main()"
        )
        commands = {
            "reprodl_provenance": [str(BIN / "reprodl"), "provenance", uri],
            "reprodl-provenance_entry_point": [str(BIN / "reprodl-provenance"), uri],
            "torch_then_provenance": [sys.executable, "-c", torch_first],
            "import_torch": [sys.executable, "-c", "import torch"],
        }
        runs = {k: (lambda c=c: run(c, env) and None) for k, c in commands.items()}
        results = T.alternating(runs, repeats, warmup=1)
        via_importtime = imported_by_importtime(uri, env)
        via_sys_modules = imported_by_sys_modules(uri, env)

    wall = {k: v["wall"] for k, v in results.items()}
    cand = wall["reprodl_provenance"]
    comparisons = [
        T.overhead(
            "reprodl provenance vs the same on a torch-importing process",
            "reprodl_provenance",
            "torch first, then provenance",
            cand,
            wall["torch_then_provenance"],
            None,
            "start to finish, subprocess",
        ),
        T.overhead(
            "reprodl provenance vs `python -c 'import torch'` alone",
            "reprodl_provenance",
            "import torch alone",
            cand,
            wall["import_torch"],
            None,
            "start to finish, subprocess",
        ),
        T.overhead(
            "reprodl-provenance (paper's name) vs import torch alone",
            "reprodl-provenance_entry_point",
            "import torch alone",
            wall["reprodl-provenance_entry_point"],
            wall["import_torch"],
            None,
            "",
        ),
    ]
    torch_free = "torch" not in via_importtime and "torch" not in via_sys_modules
    checks = {
        "torch_not_imported": "PASS" if torch_free else "FAIL",
        "heavy_modules_importtime": [m for m in HEAVY if m in via_importtime],
        "heavy_modules_sys_modules": [m for m in HEAVY if m in via_sys_modules],
    }
    saved = C.median(wall["torch_then_provenance"]) - C.median(cand)
    notes = [
        f"torch imported by `reprodl provenance`: {'no' if torch_free else 'YES'} "
        f"(-X importtime and sys.modules)  {checks['torch_not_imported']}",
        f"heavy packages it does import: {', '.join(checks['heavy_modules_importtime']) or 'none'}",
        f"not importing torch saves {T.fmt_s(saved)} per call (median)",
    ]
    measurements = {
        k: {"wall": T.summary(v["wall"]), "cpu": T.summary(v["cpu"]), "uncontended": T.summary(v["uncontended"])}
        for k, v in results.items()
    }
    measurements["checks"] = checks
    T.write_report(
        NAME,
        args,
        {"repeats": repeats, "commands": {k: " ".join(c) for k, c in commands.items()}},
        comparisons,
        measurements,
        notes,
    )
    if not torch_free:
        raise SystemExit(f"[{NAME}] FAIL: `reprodl provenance` imported torch")


if __name__ == "__main__":
    main()
