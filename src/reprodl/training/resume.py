"""Checkpoints of a :func:`reprodl.start_run` run: every N optimiser steps, and the resume.

A run checkpoints in its optimiser's step hook: the watched model, optimiser and scheduler,
the random states, and each loader's position (its generator at the start of the pass, the
pass and the batch). A resumed run (``start_run(..., resume=True)``) claims the killed run's
staging directory, restores what ``run.watch`` and ``run.loader`` are given, and its
training loader fetches and drops the batches of the interrupted pass already trained on
before it restores the random states: the run goes on as if never stopped. The user's loop
starts at the right epoch through :meth:`reprodl.training.run.Run.epochs`.

What a resumed run cannot restore is the user's own variables (a running loss sum of the
interrupted epoch): choose ``checkpoint_every`` a multiple of the steps per epoch where such
metrics must match too.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from reprodl.errors import ParametersError, ResumeError
from reprodl.store import find_resumable, normalise_uri
from reprodl.store.staging import checkpoint_summary
from reprodl.training.checkpoint import (
    Checkpoint,
    check_unchanged,
    read_checkpoint,
    restoring,
    rng_state,
    set_rng_state,
    skipped_restore,
    utcnow,
    write_checkpoint,
)


class RunCheckpoints:
    """The checkpoints of one run (``every`` N optimiser steps) and the checkpoint it resumes."""

    def __init__(self, every: int | None, *, resume: bool) -> None:
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ParametersError(f"checkpoint_every should be a positive number of steps, but got {every!r}")
        self.every, self.resume = every, bool(resume)
        self.directory: Path | None = None
        self.loaded: Checkpoint | None = None
        self.resumed: list[dict[str, Any]] = []
        self.seconds: list[float] = []
        self.epochs_done = 0
        self.meta: dict[str, Any] = {}
        self._t0 = time.perf_counter()
        self.elapsed_before = 0.0

    @staticmethod
    def _fingerprint(run: Any) -> dict[str, Any]:
        return {"params": run.params, "seed": run.seed}

    def find(self, run: Any) -> Path:
        """The killed run's staging directory; refused before it is claimed if params or seed changed."""
        staging = find_resumable(run.base_uri, run.name)
        saved = (checkpoint_summary(staging) or {}).get("fingerprint", {})
        check_unchanged(saved, self._fingerprint(run), name=run.name, where=staging)
        return staging

    def open(self, run: Any, directory: Path, *, resuming: bool) -> None:
        """Where the checkpoints go; when resuming, the run's counters as they were at the checkpoint."""
        self.directory = directory
        base = normalise_uri(run.base_uri)
        self.meta = {"kind": "run", "name": run.name, "base_uri": base, "fingerprint": self._fingerprint(run)}
        if not resuming:
            return
        c = self.loaded = read_checkpoint(directory)
        m = c.meta
        run._steps, run._where = int(m["step"]), (int(m["epoch"]), int(m["batch"]))
        run._order_digests[:] = list(m.get("order_digests", []))
        run._logged[:] = list(m.get("logged", []))
        self.epochs_done = max(int(m["epoch"]) - 1, 0)
        self.resumed = c.resumed()
        self.elapsed_before = float(m.get("elapsed_s", 0.0))

    def watched(self, run: Any) -> None:
        """Compare the watched parts with the checkpoint's, then load the saved states into them."""
        fingerprint = {k: v.model_dump(mode="json") if v is not None else None for k, v in run._watched.items()}
        self.meta["watched"] = fingerprint
        if self.loaded is None:
            return
        check_unchanged(self.loaded.meta.get("watched", {}), fingerprint, name=run.name, where=self.loaded.path)
        model, optimizer, scheduler = run._components
        state = self.loaded.state
        with restoring(self.loaded):  # a state of another shape: a ResumeError, which keeps the checkpoint
            model.load_state_dict(state["model"])
            if skipped_restore() != "optimizer":
                optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None:
                if "scheduler" not in state:
                    raise ResumeError(f"the checkpoint at {self.loaded.path} has no scheduler, but one was watched")
                scheduler.load_state_dict(state["scheduler"])
            if run._tracer is not None:
                self.loaded.restore_tracer(run._tracer)
            skip = skipped_restore()  # a negative control (tests) leaves one restore out
            at_loader = skip != "loader" and any("skip" in v for v in state.get("loaders", {}).values())
            if skip != "rng" and not at_loader:  # no training loader of the run's to restore them at
                set_rng_state(state["rng"])

    def loader_made(self, run: Any, loader: Any, index: int) -> None:
        """Refuse what cannot resume exactly; when resuming, put loader ``index`` where it was."""
        if (self.every or self.resume) and loader.num_workers and loader.persistent_workers:
            raise ParametersError(
                "run.loader(..., persistent_workers=True) cannot be checkpointed: its workers' random states "
                "live on across epochs. Leave persistent_workers out (or False) with checkpoint_every/resume"
            )
        saved = self.loaded.state.get("loaders", {}).get(index) if self.loaded is not None else None
        if saved is None:
            return
        skip = skipped_restore()  # a negative control (tests): one restore left out
        if skip != "loader":
            loader.generator.set_state(saved["generator"])
            loader.sampler.passes = int(saved["passes"])
        if "skip" in saved and skip != "loader":
            loader.resume_skip = int(saved["skip"])
            loader.resume_rng = self.loaded.state["rng"] if skip != "rng" else None  # type: ignore[union-attr]  # loaded is set: saved came from it

    def after_step(self, run: Any) -> None:
        """In the optimiser's step hook: a checkpoint every ``every`` steps."""
        if not self.every or run._steps % self.every or self.directory is None or run._components is None:
            return
        t0 = time.perf_counter()
        model, optimizer, scheduler = run._components
        state: dict[str, Any] = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": rng_state(),
            "loaders": {i: self._loader_state(run, loader) for i, loader in enumerate(run._loaders)},
        }
        if scheduler is not None:
            state["scheduler"] = scheduler.state_dict()
        epoch, batch = run._where
        meta = {
            **self.meta,
            "epoch": epoch,
            "batch": batch,
            "step": run._steps,
            "at": utcnow(),
            "order_digests": run._order_digests[:-1] if epoch > 0 else list(run._order_digests),
            "logged": list(run._logged),
            "resumed": self.resumed,
            "elapsed_s": self.elapsed_before + time.perf_counter() - self._t0,
        }
        write_checkpoint(self.directory, step=run._steps, state=state, meta=meta, tracer=run._tracer)
        self.seconds.append(time.perf_counter() - t0)

    @staticmethod
    def _loader_state(run: Any, loader: Any) -> dict[str, Any]:
        """A loader's generator and pass; the training loader's as at the start of its pass, and the batch."""
        if loader.on_batch is None or run._where[0] == 0:
            return {"generator": loader.generator.get_state(), "passes": loader.sampler.passes}
        start = loader.pass_start_generator if loader.pass_start_generator is not None else loader.generator.get_state()
        return {"generator": start, "passes": loader.sampler.passes - 1, "skip": run._where[1]}
