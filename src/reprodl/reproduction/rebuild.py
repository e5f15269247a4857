"""Rebuilding a training from its record: data (with transforms), model, optimiser, loss,
scheduler. Only reprodl's zoo, torch's own optimisers/losses/schedulers and what the user
allows are imported; a record from a URI never names code that runs unasked.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch

from reprodl import keys, trust
from reprodl.data.datasets import ImageDataSet, TensorDataSet, WrappedDataSet, describe_transform
from reprodl.data.kinds import kind
from reprodl.data.transforms import from_description
from reprodl.errors import DatasetFormatError, ReproductionError, TransformError
from reprodl.model import resolve_class
from reprodl.modeldataset.read import load_weights, read_record
from reprodl.modeldataset.weights import state_dict_sha256
from reprodl.provenance import DataRef, ProvenanceRecord
from reprodl.store import StoredDataSet, open_dataset


# --- rebuilding ---------------------------------------------------------------------------
def open_recorded(
    ref: DataRef, *, transform: Callable[[Any], Any] | None = None, dataset: StoredDataSet | None = None
) -> WrappedDataSet:
    """The dataset a record's ``ref`` names, read as the training read it.

    A transform recorded from :mod:`reprodl.data.transforms` is rebuilt from its config; any other
    is refused (:class:`ReproductionError`, naming its class) unless ``transform`` passes it.
    ``dataset`` is the dataset at ``ref.uri`` when the caller has it open already.
    """
    try:
        found = kind(ref.input_type, what=f"the recorded {ref.role} dataset {ref.name} ({ref.uri})")
    except DatasetFormatError as exc:
        raise ReproductionError(str(exc)) from None
    if not found.feeds_trainer:
        raise ReproductionError(
            f"the recorded {ref.role} dataset {ref.name} ({ref.uri}) is a {found.name}, read only by the training's "
            "own code: the built-in trainer and evaluation cannot feed its files to a model. Reproduce the script "
            "that trained it (a start_run record)"
        )
    if transform is None and ref.transform is not None:
        transform = rebuild_transform(ref)
    cls: Any = found.cls  # a kind that feeds the trainer is read as (uri, usetype, transform, **options)
    kwargs: dict[str, Any] = {}
    if cls is ImageDataSet and ref.image_mode:
        kwargs["mode"] = ref.image_mode
        if len(ref.input_shape) == 3:
            kwargs["size"] = (ref.input_shape[2], ref.input_shape[1])
    if ref.split is not None:
        kwargs["split"] = ref.split
    if ref.bootstrap is not None:
        kwargs["bootstrap"] = ref.bootstrap
    if cls is TensorDataSet and ref.value_scale is not None:
        kwargs["value_scale"] = ref.value_scale  # as the training read it (dtoolAI's /255 included)
    ds = cls(dataset if dataset is not None else ref.uri, ref.usetype, transform, **kwargs)
    if ref.selection_digest and ds.selection_digest() != ref.selection_digest:
        raise ReproductionError(
            f"the {ref.role} dataset {ref.name} now selects different samples for usetype {ref.usetype!r} "
            "(its split was changed after training)"
        )
    return ds


def rebuild_transform(ref: DataRef) -> Any:
    """The transform the record's ``ref`` was read through, rebuilt from its config."""

    if ref.transform is None:
        raise ReproductionError(
            f"the {ref.role} dataset {ref.name} was read without a transform: there is none to rebuild"
        )
    try:
        return from_description(ref.transform)
    except TransformError as exc:
        raise ReproductionError(
            f"the {ref.role} dataset {ref.name} was read through a transform that reprodl cannot rebuild from the "
            f"record ({exc}). If you trust it, pass the same transform yourself: "
            f"reproduce(uri, transforms={{{ref.role!r}: your_transform}})"
        ) from None


def transform_differences(ref: DataRef, transform: Any) -> str | None:
    """Why a transform passed to :func:`reproduce` may not be the recorded one (None: it looks the same)."""

    was, now = ref.transform or {}, describe_transform(transform) or {}
    if was.get("class") != now.get("class"):
        return f"the {ref.role} transform passed is a {now.get('class')}, the recorded one a {was.get('class')}"
    if "config" in was and was.get("config") != now.get("config"):
        return f"the {ref.role} transform passed has the config {now.get('config')}, the recorded one {was['config']}"
    return None


def rebuild_model(
    record: ProvenanceRecord,
    model_ds: StoredDataSet,
    *,
    allow: Iterable[str] = (),
    model_class: type | None = None,
    seed: int | None = None,
) -> torch.nn.Module:
    """The model at its recorded starting point; with ``seed`` (statistical mode) a model
    built by a seeded constructor starts from that seed's initialisation instead."""
    arch = record.architecture
    cls = resolve_class(arch.import_path, allow=allow, model_class=model_class, record=record, dataset=model_ds)
    fresh_init = seed is not None and seed != record.training.seeds.seed and arch.initialisation == "constructor"
    if not fresh_init:
        seed = record.training.seeds.seed
    trust.check_size(cls, arch.init_params, expected=arch.n_parameters, what=arch.import_path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(**arch.init_params)
    if arch.initialisation == "stored":
        _load_initial_state(model, model_ds)
    elif arch.initialisation == "parent":
        parent = record.lineage.parent
        if parent is None:
            raise ReproductionError("the record says the model started from its parent but names no parent")
        pds = open_dataset(parent.uri)
        model.load_state_dict(load_weights(pds, read_record(pds)))
    for name, p in model.named_parameters():
        if name in arch.frozen_parameters:
            p.requires_grad_(False)
    if (
        not fresh_init
        and arch.initial_weights_sha256
        and state_dict_sha256(model.state_dict()) != arch.initial_weights_sha256
    ):
        raise ReproductionError(
            f"the rebuilt {arch.import_path} does not start from the recorded initial weights: the class's code "
            "or its initialisation changed since training"
        )
    return model


def _load_initial_state(model: torch.nn.Module, model_ds: StoredDataSet) -> None:
    """Load the stored starting weights (``initial.safetensors``) into ``model``, or say why not."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    what = f"the model dataset {model_ds.name!r} ({model_ds.uri})"
    try:
        path = model_ds.item_path(model_ds.identifier_of(keys.INITIAL_WEIGHTS_FILE))
    except KeyError:
        raise ReproductionError(
            f"{what} has no {keys.INITIAL_WEIGHTS_FILE} item, but its record says training started from stored "
            "weights: without them the training cannot be re-run. Use a complete copy of the model dataset"
        ) from None
    try:
        state = load_file(path)
    except FileNotFoundError:
        raise ReproductionError(
            f"{what}: the item {keys.INITIAL_WEIGHTS_FILE} is missing on disk ({path}); "
            "`reprodl verify` lists what else is missing. Use a complete copy of the model dataset"
        ) from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise ReproductionError(
            f"{what}: {keys.INITIAL_WEIGHTS_FILE} is not a valid safetensors file ({exc}); "
            "it was damaged since training. Use an intact copy of the model dataset"
        ) from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ReproductionError(
            f"{what}: {keys.INITIAL_WEIGHTS_FILE} does not fit the rebuilt {type(model).__name__} ({exc})"
        ) from None


def rebuild_optimizer(record: ProvenanceRecord, model: torch.nn.Module, allow: Iterable[str]) -> torch.optim.Optimizer:
    """The recorded optimiser over ``model``'s parameters, groups and hyperparameters as recorded."""
    info = record.training.optimizer
    cls = trust.resolve(f"{info.module}:{info.class_name}", trust.Kind.OPTIMIZER, allow=allow)
    params = dict(model.named_parameters())
    groups = []
    for group in info.param_groups:
        hp = {k: v for k, v in group.items() if k not in ("param_names", "initial_lr")}
        names = group.get("param_names", [])
        missing = [n for n in names if n not in params]
        if missing:
            raise ReproductionError(f"the rebuilt model has no parameters {missing[:3]} named in the optimizer record")
        groups.append({"params": [params[n] for n in names], **hp})
    return cls(groups)


def rebuild_loss(record: ProvenanceRecord, allow: Iterable[str]) -> Any:
    """The recorded loss function with its recorded arguments (a loss function such as
    ``F.nll_loss`` comes back as itself, or as a ``functools.partial`` with its recorded keywords)."""

    info = record.training.loss
    cls = trust.resolve(f"{info.module}:{info.class_name}", trust.Kind.LOSS, allow=allow)
    args = {
        k: (torch.tensor(v) if k in ("weight", "pos_weight") and v is not None else v) for k, v in info.args.items()
    }
    if not inspect.isclass(cls):
        return functools.partial(cls, **args) if args else cls
    return cls(**args)


def rebuild_scheduler(record: ProvenanceRecord, optimizer: Any, allow: Iterable[str]) -> Any:
    """The recorded learning-rate scheduler on ``optimizer`` (None when there was none)."""
    info = record.training.scheduler
    if info is None:
        return None
    cls = trust.resolve(f"{info.module}:{info.class_name}", trust.Kind.SCHEDULER, allow=allow)
    args = {k: v for k, v in info.args.items() if k not in ("last_epoch", "verbose")}
    return cls(optimizer, **args)
