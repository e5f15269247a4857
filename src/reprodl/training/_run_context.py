"""A run's context: what starting it does (redirect, seeds, determinism, the unfinished output, code and
environment captured) and what ending it does (the model dataset written or discarded, across ranks).

Package-private: :class:`reprodl.training.run.Run` calls these from ``__enter__``, ``__exit__`` and ``_capture``.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import json
import os
import platform
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from reprodl import keys
from reprodl.errors import ParametersError, ReprodlError, add_note
from reprodl.provenance import CodeInfo, ModelRef
from reprodl.provenance.record import RunCommand
from reprodl.store import create_dataset, local_path
from reprodl.training import current
from reprodl.training.determinism import DeterminismSettings
from reprodl.training.distributed import broadcast_from_rank0, gather, process_group
from reprodl.training.environment import capture_environment
from reprodl.training.seeding import SeedPlan
from reprodl.training.snapshot import capture_snapshot
from reprodl.training.source import capture_code, main_namespace, require_clean
from reprodl.training.tensorboard import TensorBoardLogger

if TYPE_CHECKING:
    from reprodl.training.run import Run


def enter(run: Run) -> None:
    """Start ``run``: redirected inside ``reprodl reproduce``, seeded, its output open, determinism applied."""
    apply_redirect(run)
    run._t0, run._started = time.perf_counter(), utcnow()
    run._group = process_group()
    if run._group is not None and (run.checkpoints.every or run.checkpoints.resume):
        raise ParametersError(
            "checkpoint_every and resume are not supported in a multi-process (DistributedDataParallel) run "
            "yet: leave them out under torchrun"
        )
    stack = contextlib.ExitStack()
    try:
        run._recorder.seeds = SeedPlan(run.seed)  # a reproduction's seed, when redirected
        run._recorder.trace_kind = (run._redirect or {}).get("trace_kind")
        open_output(run, stack)
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
        run._determinism = DeterminismSettings(run.deterministic, device_type)
        run.determinism = stack.enter_context(run._determinism)
        run._tb = stack.enter_context(TensorBoardLogger(run.tensorboard)) if run.tensorboard else None
        run._recorder.apply_seeds(run._rank)  # rank r: seed + r
    except BaseException:
        stack.__exit__(*sys.exc_info())  # with the error: the output is discarded, not frozen empty
        raise
    run._stack = stack
    current.started(run)  # reprodl.current_run()
    atexit.register(run._abandon)


def open_output(run: Run, stack: contextlib.ExitStack) -> None:
    """On rank 0 (or the only process): the unfinished model dataset; code and environment captured."""
    if run._rank != 0:
        return
    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="reprodl-run-")))
    base = local_path(run.base_uri)
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)  # a missing base directory is created
    resume_from = run.checkpoints.find(run) if run.checkpoints.resume and not run._redirect else None
    run._writer = stack.enter_context(create_dataset(run.base_uri, run.name, resume_from=resume_from))
    run.checkpoints.open(run, run._writer.checkpoint_dir, resuming=resume_from is not None)
    run._capture(workdir)


def capture(run: Run, workdir: Path) -> None:
    """Capture the code (with its source snapshot) and the environment ``run`` records."""
    base = local_path(run.base_uri)
    outputs = [*([base] if base is not None else []), *run._output_dirs]
    code, run._patch, run._code_files = capture_code(None, outputs=outputs)
    if run.require_clean_code:
        require_clean(code)
    code.run = run_command(code, run.seed)
    code.snapshot, tar = capture_snapshot(code.git, workdir)
    if tar is not None:
        run._code_files[keys.CODE_SNAPSHOT_FILE] = tar
    run._code = code
    run._environment = capture_environment()


def exit_run(run: Run, exc_type: Any, exc: Any, tb: Any) -> bool:
    """End ``run``: on an error its output discarded, else the model dataset written (rank 0 of several)."""
    assert run._stack is not None
    atexit.unregister(run._abandon)
    if exc_type is None:
        run._recorder.complete_pending()
    run._recorder.close()  # the tracer's operation log a failure left running closed too
    stack, run._stack = run._stack, None
    current.ended(run)
    if exc_type is not None:
        add_note(exc, f"reprodl: the run {run.name!r} raised, so no model dataset was written")
        return bool(stack.__exit__(exc_type, exc, tb))  # discards the unfinished dataset
    if run._group is not None:
        try:
            return _exit_distributed(run, stack)
        finally:
            _release(run)
    return _finish(run, stack)


def _release(run: Run) -> None:
    """Let go of the watched model (a DistributedDataParallel wrapper), optimiser and loaders.

    The run must not be what keeps a wrapper (its reducer, its process group) alive after the
    ``with`` block: the script decides when those go (docs/distributed.md says how to end).
    """
    run._components, run._watched, run._loaders = None, {}, []
    run._recorder.watcher = run._recorder.tracer = None


def _exit_distributed(run: Run, stack: contextlib.ExitStack) -> bool:
    """Every rank's order digests gathered; rank 0 writes the model, the others learn its URI."""
    group = run._group
    assert group is not None
    run._rank_digests = gather(list(run._order_digests), group)
    if group.rank != 0:
        stack.__exit__(None, None, None)
        run.uri = broadcast_from_rank0(None, then_barrier=True)
        if run.uri is None:
            raise ReprodlError(
                f"rank 0 wrote no model dataset for the run {run.name!r} (its error says why), "
                f"so rank {group.rank} ends with none either"
            )
        return False
    try:
        _finish(run, stack)
    except BaseException:
        broadcast_from_rank0(None, then_barrier=True)
        raise
    broadcast_from_rank0(run.uri, then_barrier=True)
    return False


def _finish(run: Run, stack: contextlib.ExitStack) -> bool:
    """Write the model dataset (refused without ``run.save``) then frozen."""
    if run._saved is None:
        error = ParametersError(
            f"the run {run.name!r} ended without run.save(model), so no model dataset was written: "
            "call run.save(model) inside the with-block, after training"
        )
        stack.__exit__(type(error), error, None)
        raise error
    try:
        run._write()
    except BaseException as error:
        stack.__exit__(type(error), error, error.__traceback__)
        raise
    stack.__exit__(None, None, None)
    run.uri = run._writer.uri
    _report_redirect(run)
    return False


def apply_redirect(run: Run) -> None:
    """Inside ``reprodl reproduce``: write into its output base, with its seed and lineage."""
    raw = os.environ.get(keys.RUN_REDIRECT_ENV)
    if not raw:
        return
    run._redirect = redirect = json.loads(raw)
    run.base_uri = redirect["base_uri"]
    if not run._named or run.name == redirect.get("original_name"):
        run.name = redirect["name"]
    run.seed = int(redirect.get("seed", run.seed))
    if redirect.get("reproduces"):
        run.reproduces = ModelRef.model_validate(redirect["reproduces"])


def _report_redirect(run: Run) -> None:
    if run._redirect and run._redirect.get("report_file"):
        with open(run._redirect["report_file"], "a", encoding="utf-8") as f:
            f.write(json.dumps({"name": run.name, "uri": run.uri}) + "\n")


def run_command(code: CodeInfo, seed: int) -> RunCommand:
    """How to run the current process again, paths relative to the code root."""
    script = Path(code.entry_script) if code.entry_script else None
    if code.git is not None and code.git.root:
        root = Path(code.git.root)
    else:
        root = script.parent if script is not None else Path.cwd()
    spec = main_namespace().get("__spec__")  # python -m MODULE; not the tool a script runs under (cProfile)
    module = spec.name.removesuffix(".__main__") if spec is not None and spec.name else None
    return RunCommand(
        entry_script=_relative(script, root) if script is not None and module is None else None,
        module=module,
        argv=list(sys.argv[1:]),
        working_directory=_relative(Path.cwd(), root) or ".",
        python=platform.python_version(),
        seed=seed,
        root=str(root),
    )


def _relative(path: Path, root: Path) -> str | None:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None


def utcnow() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def default_name() -> str:
    """A model name no other run shares: the script's name, the UTC time and a random suffix."""

    script = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] not in ("", "-c") else "run"
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in script).strip("-_") or "run"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{stem[:40]}-{stamp}-{secrets.token_hex(3)}"
