"""Reproducing a built-in trainer's multi-process (DistributedDataParallel) training under torchrun.

A config or :func:`train_model_with_metadata_capture` trained by ``torchrun --nproc-per-node N``
is re-run the same way: this module's :func:`main` runs in each of N processes started by
``python -m torch.distributed.run --standalone --nproc-per-node N`` (the launcher of
:func:`reprodl.reproduction.launch.launcher`, refused where N processes of the recorded backend
cannot run); each rebuilds the recorded training from the record (no recorded code runs) and
trains its shard, rank 0 writes the new model, and the calling process compares it as for a
one-process training.

Example:
    >>> reproduce("/models/digits-ddp").verdict      # doctest: +SKIP
    'identical'
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from reprodl.errors import ReproductionError
from reprodl.provenance import ProvenanceRecord
from reprodl.reproduction.launch import launcher
from reprodl.store import StoredDataSet, open_dataset

OUTPUT_LINES = 30  # of a failed re-run's output, quoted in the error


def train_under_torchrun(
    model_ds: StoredDataSet, record: ProvenanceRecord, *, base: str, options: dict[str, Any]
) -> str:
    """Re-run the training of ``model_ds`` under torchrun with its recorded world size, into ``base``.

    ``options``: the re-run's ``device``, ``seed`` and ``allow`` (as :func:`reproduce` takes them).
    Returns the new model's URI; :class:`ReproductionError` when the processes failed.
    """
    start = launcher(model_ds, record)
    with tempfile.TemporaryDirectory(prefix="reprodl-ddp-") as work:
        report = Path(work) / "uri.txt"
        job = {"uri": model_ds.uri, "base": base, "report": str(report), **options}
        command = [sys.executable, *start, "-m", __name__, json.dumps(job)]
        proc = subprocess.run(command, env=_child_env(), capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not report.is_file():
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-OUTPUT_LINES:])
            raise ReproductionError(
                f"re-running the {record.training.distributed.world_size if record.training.distributed else 0}-"
                f"process training of {model_ds.uri} under torchrun failed (exit status {proc.returncode}), so "
                f"nothing was compared. Its last lines:\n{tail}"
            )
        return report.read_text().strip()


def _child_env() -> dict[str, str]:
    """This environment, with this process's reprodl importable (after the caller's paths)."""
    here = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), here) if p)
    return env


def main(argv: list[str]) -> int:
    """One rank of the re-run: rebuild the recorded training, train this rank's shard; rank 0
    writes the model and its URI into the job's ``report`` file."""
    from reprodl.modeldataset.read import read_record
    from reprodl.reproduction import retrain
    from reprodl.reproduction.worldsize import at_world_size, recorded_world_size
    from reprodl.training.distributed import joined_from_environment
    from reprodl.training.loop import choose_device

    job = json.loads(argv[0])
    model_ds = open_dataset(job["uri"])
    record = read_record(model_ds)
    if job.get("world_size", recorded_world_size(record)) != recorded_world_size(record):  # reproduce --world-size
        record = at_world_size(record, job["world_size"], what=model_ds.uri)
    params = retrain.run_params(record, device=job.get("device"), seed=job.get("seed"))
    with joined_from_environment(choose_device(params.get("device")).type) as group:
        original = retrain.Original(model_ds, record, {})
        transforms = retrain.transforms_for(record, None, [])
        training = retrain.rebuild_training(
            original,
            {},
            transforms,
            allow=job.get("allow", []),
            model_class=None,
            device=job.get("device"),
            seed=job.get("seed"),
        )
        _, uri = retrain.train_here(original, training, output=job["base"], progress=False)
        if group is None or group.rank == 0:
            Path(job["report"]).write_text(str(uri))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
