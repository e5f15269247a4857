"""How a re-run is started: its seed in statistical mode, its model's name, and its launcher.

Shared by the runners (:mod:`.retrain`, :mod:`.reexec`, :mod:`.ddp`) so that none imports another.

Example:
    >>> reproduction_name("digits cnn").startswith("digitscnn.reproduction-")
    True
"""

from __future__ import annotations

import os
import re
import time

from reprodl import trust
from reprodl.errors import ReproductionError
from reprodl.provenance import ProvenanceRecord
from reprodl.store import StoredDataSet

# A statistical-mode re-run uses the recorded seed plus this, so it never coincides with a
# member of a multi-run (seeds base..base+N-1) by accident.
STATISTICAL_SEED_OFFSET = 100_003


def is_distributed(record: ProvenanceRecord) -> bool:
    """Whether ``record`` is of a built-in trainer's training by more than one process."""
    dist = record.training.distributed
    return record.code.run is None and dist is not None and dist.world_size > 1


def reproduction_name(name: str) -> str:
    """The name of a reproduction's model dataset: the recorded model name (its safe characters), a stamp."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    name = re.sub(r"[^A-Za-z0-9_.-]", "", name)[:40] or "model"  # a record's model_name is anyone's text
    return f"{name}.reproduction-{stamp}-{os.getpid()}"[:80]


def launcher(model_ds: StoredDataSet, record: ProvenanceRecord) -> list[str]:
    """``-m torch.distributed.run ...`` for a multi-process run (its recorded world size); refused
    when this machine cannot start that many processes of its backend."""
    dist = record.training.distributed
    if dist is None or dist.world_size < 2:
        return []
    import torch

    if not torch.distributed.is_available():
        raise ReproductionError(
            f"{model_ds.uri} was trained by {dist.world_size} processes ({dist.backend}), but this torch has no "
            "torch.distributed: install a torch build with distributed support to reproduce it"
        )
    if dist.backend == "nccl" and torch.cuda.device_count() < dist.world_size:
        raise ReproductionError(
            f"{model_ds.uri} was trained by {dist.world_size} processes on nccl (one GPU each), but this machine "
            f"has {torch.cuda.device_count()} GPU(s): reproduce it where {dist.world_size} GPUs are available"
        )
    trust.check_processes(dist.world_size, backend=dist.backend, what=f"the record of {model_ds.uri}")
    return ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(dist.world_size)]
