"""Stage 1, plan: what will run, and where; everything refused before anything runs is refused here.

The record is read, the re-run's resources checked (at ``--world-size``: that many processes), the
datasets' copies located, the signature checked against the trusted keys, and the kind of re-run
chosen: in process (a built-in trainer's record), under torchrun (one trained by several processes),
or by re-executing the recorded code (a ``start_run`` record). A re-execution's plan reads and
digests every code item before it is shown, and without ``trust_code`` nothing runs
(:class:`~reprodl.errors.UnsafeImportError` shows the plan).

Example:
    >>> plan(Request.of("/models/digits")).kind          # doctest: +SKIP
    'in-process'
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path

from reprodl import keys, trust
from reprodl.errors import IntegrityError, ParametersError, ReproductionError, UnsafeImportError
from reprodl.modeldataset.read import load_trace, load_weights, read_record
from reprodl.modeldataset.signing import signature_note
from reprodl.provenance import ProvenanceRecord
from reprodl.reproduction.datamap import data_locations, relocated
from reprodl.reproduction.divergence import TraceComparer, load_oplogs
from reprodl.reproduction.launch import STATISTICAL_SEED_OFFSET, is_distributed
from reprodl.reproduction.pipeline.state import Plan, Request, RunKind
from reprodl.reproduction.reexec import plan_for
from reprodl.reproduction.verdict import stopped_early
from reprodl.reproduction.worldsize import replanned
from reprodl.store import StoredDataSet, open_dataset


def plan(request: Request) -> Plan:
    """The plan for ``request``: refused (an error naming why) when it cannot or must not run."""
    record = read_record(model_ds := open_dataset(request.uri))
    planned = replanned(record, request.world_size, request.uri)
    check_resources(planned, what=model_ds.uri)  # worker, process counts
    where = data_locations(record, request.data)  # a copy of a dataset (refused unless the same), a moved one
    if record.code.run is not None:
        return _reexecution(request, model_ds, record, where)
    # a built-in trainer's record is trained here or by torchrun's processes: its runner needs torch
    from reprodl.reproduction.retrain import Original, check_distributed_options, transforms_for

    signature_note(model_ds, request.trusted_keys)  # refused here when a trusted key's signature fails
    original = Original(model_ds, relocated(planned, where), load_weights(model_ds, record))
    comparer = trace_comparer(
        model_ds,
        record,
        stop=request.stop_at_divergence,
        plan=(request.replay, request.replay_window, request.replay_from),
    )
    check_distributed_options(original, request.transforms, request.model_class)
    reasons: list[str] = []
    transforms = transforms_for(original.record, request.transforms, reasons)  # refuses before any work
    kind: RunKind = "torchrun" if is_distributed(original.record) else "in-process"
    return Plan(request, model_ds, record, original.record, where, kind, comparer, original, transforms, reasons)


def check_resources(record: ProvenanceRecord, *, what: str) -> None:
    """Refuse a record whose integers would start more than this machine has, before any work:
    DataLoader workers (``num_workers``) and torchrun processes (``world_size``), bounded by
    :func:`reprodl.trust.machine_limits` (:class:`ParametersError`, naming field, value and limit);
    and a built-in trainer's record asking for more epochs than its history holds when it has no step
    trace to stop the re-run where the training stopped (see :func:`stopped_early`). A record converted from a
    dtoolAI model is refused (:class:`ReproductionError`): it has nothing to re-run."""
    converted = (record.model_extra or {}).get(keys.CONVERTED_FROM)
    if converted:
        raise ReproductionError(
            f"{what} was converted from a model made by {converted.get('tool', 'dtoolAI')}, which recorded no seeds, "
            "data order, code or environment: it cannot be reproduced. Retrain it with reprodl to get a "
            "reproducible model (its record's training.params hold dtoolAI's parameters)"
        )
    t = record.training
    for field, n in (("training.num_workers", t.num_workers), ("training.params", t.params.get("num_workers", 0))):
        trust.check_workers(n, what=f"the record of {what} ({field})")
    dist = t.distributed
    if dist is not None and dist.world_size != 1:
        trust.check_processes(
            dist.world_size, backend=dist.backend, what=f"the record of {what} (training.distributed)"
        )
    if stopped_early(record) and (t.optimizer_steps is None or record.results.trace is None):
        epochs, done = t.params.get("n_epochs", t.epochs), len(record.results.history)
        raise ParametersError(
            f"the record of {what} (training.params.n_epochs) asks for n_epochs={epochs:,}, but its "
            f"results.history holds {done:,} epoch(s) and it has no step trace and optimiser step count to stop "
            "a re-run where the training stopped: the record does not describe the training it would re-run. "
            "Refused before any work"
        )


def _reexecution(request: Request, model_ds: StoredDataSet, record: ProvenanceRecord, where: dict[str, str]) -> Plan:
    """A start_run record: the command re-executed from its stored code, refused without trust_code."""
    seed = request.seed
    run = record.code.run
    if record.training.determinism.mode == "statistical" and seed is None and run is not None:
        seed = run.seed + STATISTICAL_SEED_OFFSET
    reexecution = plan_for(model_ds, record, seed, trusted_keys=request.trusted_keys)
    if request.code_digest is not None and reexecution.code_digest != request.code_digest:
        raise IntegrityError(
            f"the recorded code of {request.uri} is now {reexecution.code_digest}, not {request.code_digest} "
            "as shown when you trusted it: it changed in between, so nothing was run; run reproduce again "
            "and read the plan"
        )
    if not request.trust_code:
        raise UnsafeImportError(
            f"{reexecution.describe()}\nNothing was run or written. Re-executing recorded code is running code: "
            "pass --trust-code (Python: trust_code=True) if you trust it"
        )
    comparer = trace_comparer(model_ds, record)
    return Plan(request, model_ds, record, record, dict(where), "re-executed", comparer, reexecution=reexecution)


def trace_comparer(
    model_ds: StoredDataSet,
    record: ProvenanceRecord,
    *,
    stop: bool = False,
    plan: tuple[bool, int | None, str | None] = (False, None, None),
) -> TraceComparer | None:
    """A comparer against the model's recorded step trace; None when the record has none, or in statistical
    mode (the re-run uses another seed, so its steps are not the recorded ones). ``plan``, for replays: (keep
    the last checkpoint before a divergence, when the record checkpointed; a replay process's last step,
    where the training stops; the checkpoint it starts from, None: from the start)."""
    if record.training.determinism.mode == "statistical":
        return None
    recorded = load_trace(model_ds, record)
    if recorded is None or record.results.trace is None:
        return None
    keep, until, start = plan
    comparer = TraceComparer(
        recorded, record.results.trace.tensors, stop=stop, until=until, kind=record.results.trace.kind
    )
    comparer.recorded_oplogs = load_oplogs(model_ds, record)
    if start is not None:
        comparer.start_checkpoint = Path(start)
    elif keep and record.training.checkpoint_every:  # removed with the comparer, or at exit
        comparer.keep_dir = Path(tempfile.mkdtemp(prefix="reprodl-replay-start-"))
        weakref.finalize(comparer, shutil.rmtree, comparer.keep_dir, True)
    if stopped_early(record):  # a re-run as long as the training the record describes, and one step more
        comparer.stop_after = record.training.optimizer_steps
    return comparer
