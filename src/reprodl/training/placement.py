"""Where a training runs: the scheduler that started it, its job, the node and the allocation.

Read from the environment when the training starts: a Slurm job's variables (``SLURM_JOB_ID``,
``SLURM_ARRAY_JOB_ID``/``SLURM_ARRAY_TASK_ID``, ``SLURMD_NODENAME``, ``SLURM_CLUSTER_NAME``), or
those reprodl's Ray executor sets in its task (:data:`reprodl.keys.PLACEMENT_SCHEDULER_ENV`...);
otherwise a local run on this host.
"""

from __future__ import annotations

import os
import socket

from reprodl import keys
from reprodl.provenance import Placement


def capture_placement() -> Placement:
    """The :class:`~reprodl.provenance.Placement` of this process."""
    env, node = os.environ, socket.gethostname()
    scheduler = env.get(keys.PLACEMENT_SCHEDULER_ENV)
    if scheduler:
        return Placement(
            scheduler=scheduler,
            job_id=env.get(keys.PLACEMENT_JOB_ENV) or None,
            node=node,
            allocation=env.get(keys.PLACEMENT_ALLOCATION_ENV) or None,
        )
    job = env.get("SLURM_JOB_ID")
    if job:
        array, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
        cluster = env.get("SLURM_CLUSTER_NAME") or "slurm"
        return Placement(
            scheduler="slurm",
            job_id=f"{array}_{task}" if array and task else job,
            node=env.get("SLURMD_NODENAME") or node,
            allocation=f"{cluster}/{job}",
        )
    return Placement(scheduler="local", node=node)
