"""What the built-in trainer captures before its first step: the code, the components (architecture,
initial weights and how to have them again, optimiser, loss, scheduler), the parent and the environment;
and the recorder that watches the model.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Literal

import torch

from reprodl import trust
from reprodl.errors import ParametersError
from reprodl.modeldataset.weights import state_dict_sha256
from reprodl.modeldataset.write import parent_ref
from reprodl.provenance import Architecture, CallableInfo, CodeInfo, Environment, ModelRef, OptimizerInfo
from reprodl.provenance.record import DEFAULT_MODEL_NAME
from reprodl.training.checkpoint import utcnow
from reprodl.training.describe import check_rebuildable, describe_architecture, describe_callable, describe_optimizer
from reprodl.training.environment import capture_environment
from reprodl.training.params import Parameters
from reprodl.training.recorder import Recorder
from reprodl.training.seeding import SeedPlan
from reprodl.training.source import capture_code, require_clean
from reprodl.training.trace import StepCallback

Initialisation = Literal["constructor", "stored", "parent"]


def _initialisation(
    model: torch.nn.Module, init_params: dict[str, Any], seed: int, parent_sha: str | None, initial_sha: str
) -> Initialisation:
    """How the initial weights can be had again: from the parent, a seeded constructor, or stored."""
    if parent_sha is not None and parent_sha == initial_sha:
        return "parent"
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = type(model)(**init_params)
        if state_dict_sha256(fresh.state_dict()) == initial_sha:
            return "constructor"
    except Exception:  # noqa: BLE001 - a class that cannot be rebuilt from init_params
        pass
    return "stored"


@dataclasses.dataclass
class Captured:
    """What a training captures before its first step, beside the code."""

    started: str
    t_start: float
    architecture: Architecture
    initial_state: dict[str, torch.Tensor]
    optimizer: OptimizerInfo
    loss: CallableInfo
    scheduler: CallableInfo | None
    environment: Environment
    parent: ModelRef | None


@dataclasses.dataclass
class CapturedCode:
    info: CodeInfo
    patch: str | None
    files: dict[str, Path]


def capture_trainer_code(
    code_root: str | os.PathLike[str] | None,
    config: dict[str, Any] | None,
    *,
    require_clean_code: bool,
    store_untracked: bool,
) -> CapturedCode:
    """The code version, patch and untracked files (refused when dirty and clean code is required)."""
    info, patch, files = capture_code(code_root, store_untracked=store_untracked)
    if require_clean_code:
        require_clean(info)
    if config is not None:
        info.config = config
        info.config_file = config.get("source")
    return CapturedCode(info, patch, files)


def capture_start(
    model: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    loss_fn: Any,
    scheduler: Any,
    params: Parameters,
    *,
    parent: str | None,
) -> Captured:
    """The start time, components, initial weights, parent and environment of a training."""
    started, t_start = utcnow(), time.perf_counter()
    names = {id(p): n for n, p in model.named_parameters()}
    parent_model = parent_ref(parent)
    init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    initial_sha = state_dict_sha256(init_state)
    arch = describe_architecture(model, params.init_params)
    parent_sha = parent_model.weights_sha256 if parent_model else None
    arch.initialisation = _initialisation(model, params.init_params, params.seed, parent_sha, initial_sha)
    arch.initial_weights_sha256 = initial_sha
    optimizer_info = describe_optimizer(optimiser, names)
    scheduler_info = describe_callable(scheduler) if scheduler is not None else None
    if scheduler_info is not None:
        check_rebuildable(optimiser, optimizer_info, scheduler, scheduler_info)
    return Captured(
        started=started,
        t_start=t_start,
        architecture=arch,
        initial_state=init_state,
        optimizer=optimizer_info,
        loss=_describe_loss(loss_fn),
        scheduler=scheduler_info,
        environment=capture_environment(),
        parent=parent_model,
    )


def _describe_loss(loss_fn: Any) -> CallableInfo:
    """The loss's record; a function other than torch.nn.functional's losses is refused now, since
    no record could rebuild it (a loss class of your own is rebuilt with ``allow``)."""

    info = describe_callable(loss_fn)
    if isinstance(loss_fn, torch.nn.Module):
        return info
    path = f"{info.module}:{info.class_name}"
    if path not in trust.LOSS_FUNCTIONS:
        raise ParametersError(
            f"the loss function {path} cannot be rebuilt from a record, so the training could not be reproduced: "
            "use a torch.nn loss (torch.nn.NLLLoss()), one of torch.nn.functional's losses (F.nll_loss), "
            "or an nn.Module subclass of yours (reproduced with allow=['your.module'])"
        )
    return info


def make_recorder(
    model: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    scheduler: Any,
    params: Parameters,
    captured: Captured,
    *,
    on_step: StepCallback | None,
) -> Recorder:
    """The training's recorder (:mod:`reprodl.training.recorder`): its seed plan, and the model and
    optimiser watched under the name ``model``; each trace row is taken once the trainer's update is over."""
    recorder = Recorder(SeedPlan(params.seed, params.num_workers), on_trace_row=on_step, defer_rows=True)
    recorder.watch(
        model,
        [optimiser],
        name=DEFAULT_MODEL_NAME,
        schedulers=[scheduler] if scheduler is not None else [],
        loss=captured.loss,
        init_params=params.init_params,
    )
    return recorder
