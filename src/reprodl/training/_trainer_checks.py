"""What the built-in trainer checks before it trains: its arguments, the data against their manifests (none
empty), the device, and the process group under torchrun.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from reprodl.data.datasets import WrappedDataSet
from reprodl.errors import IntegrityError, ParametersError
from reprodl.modeldataset.write import DerivedDataSet, as_output, check_label_compatibility
from reprodl.training.distributed import Group, launched_world_size, on_rank0_first, process_group
from reprodl.training.params import Parameters, check_trainer_keys


def choose_device(requested: str | None) -> torch.device:
    """The torch device for ``requested`` ('auto' picks CUDA when available); refuses unusable ones."""
    if requested in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ParametersError(f"device should be 'auto', 'cpu' or 'cuda[:N]', but got device={requested!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ParametersError(f"device {requested!r} was asked for but CUDA is not available here; use device='cpu'")
    return device


def check_data(datasets: list[tuple[str, WrappedDataSet]], how: str) -> None:
    if how == "none":
        return
    problems = []
    for role, ds in datasets:
        report = ds.dataset.verify(deep=how == "deep")
        problems += [f"{role} dataset {ds.name} ({ds.uri}): {p}" for p in report.problems()]
    if problems:
        raise IntegrityError(
            "refusing to train: the data do not match their manifests:\n  " + "\n  ".join(problems), problems=problems
        )


def check_not_empty(roles: list[tuple[str, WrappedDataSet]]) -> None:
    """Refuse a train or valid dataset that selects no samples (a split or usetype that left none)."""
    for role, ds in roles:
        if role in ("train", "valid") and len(ds) == 0:
            raise ParametersError(
                f"the {role} dataset {ds.name} ({ds.uri}) has no samples"
                + (f" of usetype {ds.usetype!r}" if ds.usetype else "")
                + ": check its split (`reprodl dataset info URI` shows the counts) or choose another usetype"
            )


def checked_roles(
    output_ds: DerivedDataSet, params: Parameters, group: Group | None
) -> list[tuple[str, WrappedDataSet]]:
    """The output's datasets by role, none empty, their data checked once (rank 0 first under DDP)."""
    roles = output_ds.datasets_by_role()
    check_not_empty(roles)
    on_rank0_first(lambda: check_data(roles, params.verify_data), group)
    return roles


def checked_group() -> Group | None:
    """The process group trained in (None: one process); refuses torchrun without a joined process group."""
    group, n = process_group(), launched_world_size()
    if group is None and n > 1:
        raise ParametersError(
            f"this is one of {n} processes (torchrun), but no process group was joined: every process would "
            "train the whole data alone. Call torch.distributed.init_process_group('gloo') before "
            "DerivedDataSet, or run `reprodl train CONFIG` under torchrun, which joins it (docs/distributed.md)"
        )
    return group


def rank_device(device: torch.device, group: Group | None) -> torch.device:
    """Under nccl, rank r's GPU (``LOCAL_RANK``); the device asked for otherwise."""
    if group is None or device.type != "cuda" or device.index is not None:
        return device
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def check_arguments(
    train_ds: WrappedDataSet,
    params: Parameters | dict[str, Any],
    output_ds: DerivedDataSet | Any,
    valid_ds: WrappedDataSet | None,
    *,
    rerun: bool,
) -> tuple[Parameters, DerivedDataSet]:
    """The parameters, validated, and the output (a dtoolcore creator wrapped: :func:`as_output`);
    ``valid_ds`` joins the output's validation sets."""
    output_ds = as_output(output_ds, train_ds)
    if not isinstance(params, Parameters):
        params = Parameters(**dict(params))
    if not rerun:  # a reproduction or replication trains as recorded, even parameters once left unused
        check_trainer_keys(params)
    if not output_ds.entered:
        raise ParametersError("output_ds must be entered first: use `with DerivedDataSet(...) as output_ds:`")
    if output_ds.record is not None:
        raise ParametersError(f"a model was already trained into {output_ds.name!r}; use a new DerivedDataSet")
    if not any(train_ds is d for d in output_ds.train_sets):
        raise ParametersError(
            f"train_ds ({train_ds.name}, {train_ds.uri}) is not a training dataset of the output "
            f"{output_ds.name!r}: pass the same dataset to DerivedDataSet(base_uri, name, train_ds) "
            "so the record names what the model was trained on"
        )
    if valid_ds is not None and valid_ds not in output_ds.valid_sets:
        output_ds.valid_sets.append(valid_ds)
    check_label_compatibility(output_ds.train_sets + output_ds.valid_sets)
    return params, output_ds
