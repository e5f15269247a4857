"""Training from a YAML config file, and many trainings at once (DeepDIVA's multi-run).

A config names the data by URI, the model, optimiser, loss and parameters::

    name: digits-cnn
    output: ./models
    data:
      train: {uri: ./data/digits, usetype: train}
      valid: {uri: ./data/digits, usetype: test}
    model: {class: GenNet, init_params: {input_channels: 1, input_dim: 8}}
    optimizer: {class: SGD, momentum: 0.9}
    loss: {class: NLLLoss}
    params: {batch_size: 32, learning_rate: 0.05, n_epochs: 10, seed: 0}

``params`` holds only :class:`reprodl.training.params.Parameters` fields (a misspelt key is refused
with the closest name); values for your own code go under ``params.user``, recorded as given.

A dataset may name preprocessing and augmentation from :mod:`reprodl.data.transforms`, applied
in order (recorded, and rebuilt when the model is reproduced)::

    data:
      train:
        uri: ./data/digits
        usetype: train
        transform:
          - {name: Normalize, mean: [0.3], std: [0.4]}
          - {name: RandomHorizontalFlip, p: 0.5}

``bootstrap: SEED`` in a data spec trains on a bootstrap resample of its selected samples (as
many, drawn with replacement by that seed; recorded as ``data[].bootstrap``), which ``reprodl
compare --vary bootstrap`` sets for each run.

Example:
    >>> uri, record = build_and_train(load_config("train.yaml", ["lr=0.1"]))   # doctest: +SKIP
"""

from __future__ import annotations

import functools
import inspect
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reprodl.data.readme import read_yaml_file
from reprodl.errors import DatasetExistsError, ParametersError, TransformError
from reprodl.modeldataset.write import DerivedDataSet, check_readme_fields
from reprodl.store import open_dataset
from reprodl.store.uris import check_name, local_path
from reprodl.training.params import Parameters, apply_overrides, check_config_keys

SHORTHANDS = {
    "lr": "params.learning_rate",
    "learning_rate": "params.learning_rate",
    "epochs": "params.n_epochs",
    "n_epochs": "params.n_epochs",
    "batch_size": "params.batch_size",
    "seed": "params.seed",
    "deterministic": "params.deterministic",
    "device": "params.device",
    "num_workers": "params.num_workers",
    "shuffle": "params.shuffle",
}


class DataSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    uri: str
    usetype: str | None = None
    split: dict[str, Any] | None = None
    bootstrap: int | None = Field(
        None, ge=0, description="seed of a bootstrap resample of the selected samples (with replacement)"
    )
    mode: str | None = None
    size: list[int] | None = None
    transform: list[dict[str, Any]] | None = Field(
        None,
        description="reprodl.data.transforms configs, applied in order: [{name: Normalize, mean: [...], std: [...]}]",
    )

    def build_transform(self) -> Any:
        """The :class:`reprodl.data.transforms.Compose` of ``transform`` (None without one)."""
        from reprodl.data.transforms import from_config

        if self.transform is None:
            return None
        try:
            return from_config(self.transform)
        except TransformError as exc:
            raise ParametersError(f"the config's transform for {self.uri} cannot be built: {exc}") from None


class ComponentSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    class_: str = Field(alias="class")
    init_params: dict[str, Any] = Field(default_factory=dict)
    args: dict[str, Any] = Field(default_factory=dict)

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the component: ``args`` and any other keys given beside ``class``."""
        return {**self.args, **(self.model_extra or {})}


class TrainConfig(BaseModel):
    """A validated training config (see the module docstring for the format)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str
    output: str
    data: dict[str, DataSpec | list[DataSpec]]
    model: ComponentSpec | None = None
    optimizer: ComponentSpec = Field(default_factory=lambda: ComponentSpec.model_validate({"class": "SGD"}))
    loss: ComponentSpec = Field(default_factory=lambda: ComponentSpec.model_validate({"class": "NLLLoss"}))
    scheduler: ComponentSpec | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    parent: str | None = None
    freeze: list[str] = Field(default_factory=list)
    allow: list[str] = Field(default_factory=list)
    readme: dict[str, Any] = Field(
        default_factory=dict,
        description="fields added to the model's README (description, owners, project...); "
        "the keys reprodl writes from the record are refused",
    )
    require_clean_code: bool = Field(False, description="refuse to train on uncommitted code")
    store_untracked: bool = Field(
        True,
        description="store the repository's untracked files with the model (git-ignored files and secrets never are)",
    )
    checkpoint_every: int | None = Field(
        None,
        ge=1,
        description="write a checkpoint every N epochs into the unfinished model's staging area, so a killed "
        "training continues with `reprodl train CONFIG --resume`",
    )
    source: str | None = Field(None, description="the config file this was read from (set on load)")

    def specs(self, role: str) -> list[DataSpec]:
        value = self.data.get(role)
        if value is None:
            return []
        return value if isinstance(value, list) else [value]


def load_config(path: str | os.PathLike[str] | dict[str, Any], overrides: list[str] | None = None) -> TrainConfig:
    """Read and validate a config; ``overrides`` are ``key=value`` (``lr=0.05``, ``params.seed=3``)."""
    if isinstance(path, dict):
        raw: Any = path
        base = Path.cwd()
    else:
        p = Path(path)
        raw = read_yaml_file(p, what="the config", error=ParametersError)
        base = p.resolve().parent
    if not isinstance(raw, dict):
        raise ParametersError("the config must be a YAML mapping (name, output, data, model, ...)")
    expanded = []
    for text in overrides or []:
        key, sep, value = text.partition("=")
        expanded.append(f"{SHORTHANDS.get(key.strip(), key.strip())}{sep}{value}")
    raw = apply_overrides(raw, expanded)
    try:
        cfg = TrainConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ParametersError(f"the config does not validate: {problems}") from None
    if not cfg.specs("train"):
        raise ParametersError("the config needs data.train: {uri: ...}")
    check_config_keys(cfg.params)
    check_readme_fields(cfg.readme)  # a reserved or odd readme key is reported before the data are read
    # Relative paths in a config file are relative to the file, not the working directory.
    cfg.output = _resolve(cfg.output, base)
    for role in list(cfg.data):
        for spec in cfg.specs(role):
            spec.uri = _resolve(spec.uri, base)
            spec.build_transform()  # a bad transform is reported now, not after the data are read
    if cfg.parent:
        cfg.parent = _resolve(cfg.parent, base)
    if not isinstance(path, dict):
        cfg.source = str(Path(path).resolve())
    return cfg


def _resolve(uri: str, base: Path) -> str:
    if "://" in uri or os.path.isabs(uri):
        return uri
    return str((base / uri).resolve())


def _open(spec: DataSpec) -> Any:
    from reprodl.data.kinds import open_training_data

    return open_training_data(
        spec.uri,
        spec.usetype,
        spec.build_transform(),
        mode=spec.mode,
        size=(int(spec.size[0]), int(spec.size[1])) if spec.size else None,
        split=spec.split,
        bootstrap=spec.bootstrap,
    )


def _component(spec: ComponentSpec, prefix: str, kind: Any, allow: list[str]) -> Any:
    """The class a config names (a bare name is looked up in ``prefix``), through the trust policy."""
    from reprodl import trust

    path = spec.class_
    if ":" not in path and "." not in path:
        path = f"{prefix}:{path}"
    return trust.resolve(path, kind, allow=allow)


def _construct(cls: type, what: str, kwargs: dict[str, Any], *args: Any) -> Any:
    """``cls(*args, **kwargs)``; a wrong keyword or value is a :class:`ParametersError` naming the config key."""

    try:
        return cls(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        try:
            accepted = [n for n in inspect.signature(cls).parameters if n not in ("self", "params", "optimizer")]
        except (TypeError, ValueError):
            accepted = []
        hint = ""
        unknown = [k for k in kwargs if accepted and k not in accepted]
        if unknown:
            import difflib

            close = {k: difflib.get_close_matches(k, accepted, n=1) for k in unknown}
            hint = "; unknown keyword(s) " + ", ".join(
                f"{k!r}" + (f" (did you mean {c[0]!r}?)" if c else "") for k, c in close.items()
            )
        key = "model.init_params" if what == "model" else what
        raise ParametersError(
            f"the config's {key} cannot build {cls.__module__}.{cls.__qualname__} with {kwargs}: {exc}{hint}. "
            f"Fix {key} in the config" + (f" (it accepts {', '.join(accepted)})" if accepted else "")
        ) from None


def build_and_train(
    cfg: TrainConfig,
    *,
    progress: Any = True,
    on_epoch: Callable[..., None] | None = None,
    name: str | None = None,
    resume: bool = False,
) -> tuple[str, Any]:
    """Build everything the config names and train it with capture; (model URI, record).

    ``resume``: continue the killed training of this config from its last checkpoint
    (:class:`~reprodl.errors.ResumeError` when there is none, or the config changed since).

    Under ``torchrun --nproc-per-node N`` each process joins the process group (gloo on CPUs,
    nccl on GPUs) and trains with DistributedDataParallel; rank 0 writes the model, and every
    rank returns its URI (:mod:`reprodl.training.distributed`, docs/distributed.md).
    """
    from reprodl.training.distributed import joined_from_environment
    from reprodl.training.loop import choose_device

    check_name_free(cfg.output, name or cfg.name)  # before the data are read
    params = _parameters(cfg)
    with joined_from_environment(choose_device(params.device).type) as group:
        uri, record = _train(cfg, params, progress=progress, on_epoch=on_epoch, name=name, resume=resume)
        if group is not None:
            from reprodl.training.distributed import broadcast_from_rank0

            uri = broadcast_from_rank0(uri)  # rank 0's, once it froze the model dataset
    assert uri is not None
    return uri, record


def _train(
    cfg: TrainConfig,
    params: Any,
    *,
    progress: Any,
    on_epoch: Callable[..., None] | None,
    name: str | None,
    resume: bool,
) -> tuple[str | None, Any]:
    """:func:`build_and_train`'s training, in this process: (the model's URI, None on ranks but 0; record)."""
    from reprodl.training.loop import train_model_with_metadata_capture

    train = [_open(s) for s in cfg.specs("train")]
    valid = [_open(s) for s in cfg.specs("valid")]
    test = [_open(s) for s in cfg.specs("test")]
    model, params = _build_model(cfg, params)
    optimizer, loss_fn, scheduler = _build_components(cfg, model, params.learning_rate)
    with DerivedDataSet(
        cfg.output, name or cfg.name, train, valid=valid, test=test, parent=cfg.parent, readme=cfg.readme, resume=resume
    ) as out:
        record = train_model_with_metadata_capture(
            model,
            train[0],
            optimizer,
            loss_fn,
            params,
            out,
            scheduler=scheduler,
            progress=progress,
            on_epoch=on_epoch,
            code_root=Path(cfg.source).parent if cfg.source else None,
            config=cfg.model_dump(mode="json", by_alias=True),
            require_clean_code=cfg.require_clean_code,
            store_untracked=cfg.store_untracked,
            checkpoint_every=cfg.checkpoint_every,
        )
    return out.uri, record


def valid_label_counts(cfg: TrainConfig) -> dict[str, int] | None:
    """Samples per class of the config's (first) validation data; ``None`` without ``data.valid``."""
    specs = cfg.specs("valid")
    if not specs:
        return None
    try:
        return dict(_open(specs[0]).label_counts())
    except NotImplementedError:
        return None


def _taken(output: str, name: str) -> bool:
    """Whether a dataset called ``name`` is already under the local base ``output`` (remote: not checked)."""

    base = local_path(output)
    return base is not None and (base / name).exists()


def free_name(output: str, name: str) -> str:
    """``name`` when nothing of that name is under ``output``, else the first free ``name-2``, ``name-3``...

    Example:
        >>> free_name("./models", "digits-cnn")   # doctest: +SKIP
        'digits-cnn-2'
    """
    if not _taken(output, name):
        return name
    n = 2
    while _taken(output, f"{name}-{n}"):
        n += 1
    return f"{name}-{n}"


def check_name_free(output: str, name: str) -> None:
    """Refuse, before any data are read, a model name already taken under ``output``.

    Raises:
        InvalidNameError: a name dtool does not allow ('.', '..', a '/').
        DatasetExistsError: naming the model and how to pick a new name or number the run.
    """

    check_name(name)  # '.' or '..' would otherwise be "taken"
    if _taken(output, name):
        new = free_name(output, name)
        raise DatasetExistsError(
            f"a model called {name!r} already exists in {output} (reprodl never overwrites): pick a new name "
            f"with --set name={new} (Python: load_config(path, ['name={new}'])), or number the runs with "
            "--name-suffix auto"
        )


def _parameters(cfg: TrainConfig) -> Any:
    """The config's params, with the scheduler's ``interval`` (epoch or step) as ``scheduler_interval``."""

    values = dict(cfg.params)
    interval = (cfg.scheduler.model_extra or {}).get("interval") if cfg.scheduler is not None else None
    if interval is not None:
        values["scheduler_interval"] = interval
    return Parameters(**values)


def _build_model(cfg: TrainConfig, params: Any) -> tuple[Any, Any]:
    """(the model the config names, seeded; the parameters with its init_params), parent weights loaded."""
    import torch

    from reprodl import trust

    init_params = dict(params.init_params)
    if cfg.model is not None and cfg.model.init_params:
        init_params = {**cfg.model.init_params, **init_params}
    parent_state = None
    model_spec = cfg.model
    if cfg.parent:
        from reprodl.modeldataset.read import load_weights, read_record

        pds = open_dataset(cfg.parent)
        precord = read_record(pds)
        parent_state = load_weights(pds, precord)
        if model_spec is None:
            model_spec = ComponentSpec(**{"class": precord.architecture.import_path})
            init_params = {**precord.architecture.init_params, **init_params}
    if model_spec is None:
        raise ParametersError("the config needs model: {class: ..., init_params: {...}} (or parent: URI)")
    params = params.updated(init_params=init_params)
    model_cls = _component(model_spec, "reprodl.zoo", trust.Kind.ARCHITECTURE, cfg.allow)
    trust.check_size(model_cls, init_params)
    torch.manual_seed(params.seed)
    model = _construct(model_cls, "model", init_params)
    if parent_state is not None:
        model.load_state_dict(parent_state)
    _freeze(model, cfg.freeze)
    return model, params


def _freeze(model: Any, freeze: list[str]) -> None:
    """Turn off gradients of the parameters (or modules, by prefix) named in ``freeze``."""
    names = dict(model.named_parameters())
    unknown = [n for n in freeze if n not in names and not any(k.startswith(n + ".") for k in names)]
    if unknown:
        raise ParametersError(f"freeze names {unknown} are not parameters of the model; it has {list(names)[:8]}...")
    for n, p in names.items():
        if any(n == f or n.startswith(f + ".") for f in freeze):
            p.requires_grad_(False)


def _build_components(cfg: TrainConfig, model: Any, learning_rate: float) -> tuple[Any, Any, Any]:
    """(optimiser over the trainable parameters, loss function, scheduler or None) the config names.

    A loss may be a class (``NLLLoss``) or one of torch.nn.functional's losses
    (``torch.nn.functional.nll_loss``, its other keys bound as keywords); the scheduler's
    ``interval`` key is the parameter ``scheduler_interval``, not a constructor argument.
    """
    from reprodl import trust
    from reprodl.training.describe import remember_arguments

    opt_cls = _component(cfg.optimizer, "torch.optim", trust.Kind.OPTIMIZER, cfg.allow)
    opt_kwargs = {"lr": learning_rate, **cfg.optimizer.kwargs()}
    optimizer = _construct(opt_cls, "optimizer", opt_kwargs, [p for p in model.parameters() if p.requires_grad])
    _check_fits(optimizer)
    loss_fn = _loss(cfg)
    scheduler = None
    if cfg.scheduler is not None:
        kwargs = {k: v for k, v in cfg.scheduler.kwargs().items() if k != "interval"}
        scheduler = _construct(
            _component(cfg.scheduler, "torch.optim.lr_scheduler", trust.Kind.SCHEDULER, cfg.allow),
            "scheduler",
            kwargs,
            optimizer,
        )
        remember_arguments(scheduler, kwargs)
    return optimizer, loss_fn, scheduler


def _check_fits(optimizer: Any) -> None:
    """Refuse a hyperparameter too large for the weights it scales (``lr: 1e308`` on float32 weights
    overflows at the first step with a bare RuntimeError)."""
    import torch

    for group in optimizer.param_groups:
        dtypes = [p.dtype for p in group["params"] if p.is_floating_point()]
        if not dtypes:
            continue
        largest = min(float(torch.finfo(d).max) for d in dtypes)
        for key, value in group.items():
            for v in value if isinstance(value, (list, tuple)) and key != "params" else [value]:
                if isinstance(v, float) and math.isfinite(v) and abs(v) > largest:
                    raise ParametersError(
                        f"the config's optimizer has {key}={v!r}, larger than the model's {dtypes[0]} weights can "
                        f"hold ({largest:.4g}): the first step would overflow. Choose a smaller {key}"
                    )


def _loss(cfg: TrainConfig) -> Any:
    """The loss the config names: a class built with its keys, or a loss function with them bound."""

    from reprodl import trust

    obj = _component(cfg.loss, "torch.nn", trust.Kind.LOSS, cfg.allow)
    if inspect.isclass(obj):
        return _construct(obj, "loss", cfg.loss.kwargs())
    return functools.partial(obj, **cfg.loss.kwargs()) if cfg.loss.kwargs() else obj
