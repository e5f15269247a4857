"""Training with automatic provenance capture; the model is written as a dataset.

The paper's workflow runs as written:

    >>> train_ds = TensorDataSet(train_dataset_uri)                                # doctest: +SKIP
    >>> model = GenNet(**params.init_params)                                       # doctest: +SKIP
    >>> loss_fn = torch.nn.NLLLoss()                                               # doctest: +SKIP
    >>> optimiser = torch.optim.SGD(model.parameters(), lr=params.learning_rate)   # doctest: +SKIP
    >>> with DerivedDataSet(base_uri, "mnist_model", train_ds) as output_ds:       # doctest: +SKIP
    ...     train_model_with_metadata_capture(model, train_ds, optimiser, loss_fn, params, output_ds)
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Sampler

from reprodl import __version__, keys
from reprodl.data.datasets import WrappedDataSet, collate
from reprodl.errors import IntegrityError, ParametersError, ReprodlError, TrainingDivergedError
from reprodl.modeldataset.weights import state_dict_sha256
from reprodl.provenance import (
    DataRef,
    EpochMetrics,
    Lineage,
    ModelRef,
    ProvenanceRecord,
    Results,
    Training,
    mirror_annotations,
    store_readmes_once,
)
from reprodl.store import DatasetWriter, create_dataset
from reprodl.training.capture import (
    DeterminismSettings,
    capture_code,
    capture_environment,
    derive_seeds,
    describe_architecture,
    describe_callable,
    describe_optimizer,
    require_clean,
    seed_everything,
)
from reprodl.training.params import Parameters

EpochCallback = Callable[[EpochMetrics], None]


class DerivedDataSet:
    """The output model dataset: a context manager frozen only if training succeeded.

    Args:
        base_uri: where to create the model dataset (path, file://, s3://).
        name: the model dataset's name.
        source: the training dataset, or a list of them (they must share labels).
        valid: validation dataset(s), evaluated each epoch.
        test: test dataset(s), recorded by role (evaluate them with ``TrainedTorchModel``).
        parent: URI of a model dataset this training fine-tunes (recorded as lineage).
    """

    def __init__(
        self,
        base_uri: str,
        name: str,
        source: WrappedDataSet | Sequence[WrappedDataSet],
        *,
        valid: WrappedDataSet | Sequence[WrappedDataSet] | None = None,
        test: WrappedDataSet | Sequence[WrappedDataSet] | None = None,
        parent: str | None = None,
        readme: dict[str, Any] | None = None,
    ) -> None:
        self.base_uri = base_uri
        self.name = name
        self.train_sets = _as_list(source)
        if not self.train_sets:
            raise ParametersError("DerivedDataSet needs at least one training dataset")
        self.valid_sets = _as_list(valid)
        self.test_sets = _as_list(test)
        self.parent = parent
        self.extra_readme = dict(readme or {})
        check_label_compatibility(self.train_sets + self.valid_sets + self.test_sets)
        self.uri: str | None = None
        self.writer: DatasetWriter | None = None
        self._stack: contextlib.ExitStack | None = None
        self.record: ProvenanceRecord | None = None

    def datasets_by_role(self) -> list[tuple[str, WrappedDataSet]]:
        """(role, dataset) for every train, valid and test dataset, in that order."""
        return (
            [("train", d) for d in self.train_sets]
            + [("valid", d) for d in self.valid_sets]
            + [("test", d) for d in self.test_sets]
        )

    def __enter__(self) -> DerivedDataSet:
        self._stack = contextlib.ExitStack()
        self.writer = self._stack.enter_context(create_dataset(self.base_uri, self.name))
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        assert self._stack is not None
        if exc_type is None and self.record is None:
            error = ReprodlError(
                f"nothing was trained into the model dataset {self.name!r}: call "
                "train_model_with_metadata_capture(..., output_ds) inside the with-block"
            )
            self._stack.__exit__(type(error), error, None)  # discards the unfinished dataset
            raise error
        suppress = self._stack.__exit__(exc_type, exc, tb)
        if exc_type is None and self.writer is not None:
            self.uri = self.writer.uri
        return bool(suppress)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def check_label_compatibility(datasets: Sequence[WrappedDataSet]) -> None:
    """Datasets trained or evaluated together must share their label encoding."""
    if len(datasets) < 2:
        return
    first = datasets[0]
    for other in datasets[1:]:
        if other.cat_encoding != first.cat_encoding:
            a, b = first.cat_encoding, other.cat_encoding
            only_a = sorted(set(a) - set(b))
            only_b = sorted(set(b) - set(a))
            moved = sorted(k for k in set(a) & set(b) if a[k] != b[k])
            raise ParametersError(
                f"datasets {first.name!r} and {other.name!r} do not share label metadata: "
                f"categories only in the first {only_a}, only in the second {only_b}, "
                f"encoded differently {moved}. Re-create them with the same categories"
            )


class EpochSampler(Sampler[list[int]]):
    """Batches of indices from a permutation seeded by (seed, epoch); records its digest."""

    def __init__(self, n: int, batch_size: int, *, seed: int, shuffle: bool) -> None:
        self.n = n
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.order_digest: str | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order()
        self.order_digest = "sha256:" + hashlib.sha256(order.numpy().astype("<i8").tobytes()).hexdigest()
        for batch in torch.split(order, self.batch_size):
            yield batch.tolist()

    def __len__(self) -> int:
        return (self.n + self.batch_size - 1) // self.batch_size


def _worker_init(seed_base: int) -> Callable[[int], None]:
    return _WorkerInit(seed_base)


class _WorkerInit:
    def __init__(self, seed_base: int) -> None:
        self.seed_base = seed_base

    def __call__(self, worker_id: int) -> None:
        import random

        seed = (self.seed_base + 1000 + worker_id) & 0xFFFFFFFF
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)


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


def make_loader(
    ds: WrappedDataSet | torch.utils.data.ConcatDataset[Any],
    batch_size: int,
    *,
    seed: int,
    shuffle: bool,
    num_workers: int,
    device: torch.device,
) -> tuple[DataLoader, EpochSampler]:
    """A DataLoader whose batch order comes from a seeded :class:`EpochSampler` (its digest is recorded)."""
    sampler = EpochSampler(len(ds), batch_size, seed=seed, shuffle=shuffle)
    g = torch.Generator()
    g.manual_seed(seed + 1)
    loader = DataLoader(
        ds,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        worker_init_fn=_worker_init(seed) if num_workers else None,
        generator=g,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
    )
    return loader, sampler


@torch.no_grad()
def evaluate_loss_accuracy(
    model: torch.nn.Module, ds: WrappedDataSet, loss_fn: Any, device: torch.device, batch_size: int = 256
) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` on ``ds`` (the model's train/eval mode is restored)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        out = model(x)
        loss_sum += loss_fn(out, y).detach().double() * len(y)
        correct += (out.argmax(1) == y).sum()
    model.train(was_training)
    n = max(len(ds), 1)
    return float(loss_sum) / n, float(correct) / n


def _check_data(datasets: list[tuple[str, WrappedDataSet]], how: str) -> None:
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


def _check_not_empty(roles: list[tuple[str, WrappedDataSet]]) -> None:
    """Refuse a train or valid dataset that selects no samples (a split or usetype that left none)."""
    for role, ds in roles:
        if role in ("train", "valid") and len(ds) == 0:
            raise ParametersError(
                f"the {role} dataset {ds.name} ({ds.uri}) has no samples"
                + (f" of usetype {ds.usetype!r}" if ds.usetype else "")
                + ": check its split (`reprodl dataset info URI` shows the counts) or choose another usetype"
            )


def _diverged(name: str, epoch: int, batch: int, n_batches: int, loss: float) -> None:
    where = f"batch {batch + 1}/{n_batches} of epoch {epoch + 1}" if batch >= 0 else f"epoch {epoch + 1}"
    raise TrainingDivergedError(
        f"the training of {name!r} diverged: the loss became {loss} at {where}, so no model was written. "
        "Lower the learning rate, check the data for NaN/inf values, or pass allow_nonfinite_loss=True "
        "(params: {allow_nonfinite_loss: true}) to keep such a model"
    )


def _utcnow() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _initialisation(
    model: torch.nn.Module, init_params: dict[str, Any], seed: int, parent_sha: str | None, initial_sha: str
) -> Literal["constructor", "stored", "parent"]:
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


def train_model_with_metadata_capture(
    model: torch.nn.Module,
    train_ds: WrappedDataSet,
    optimiser: torch.optim.Optimizer,
    loss_fn: Any,
    params: Parameters | dict[str, Any],
    output_ds: DerivedDataSet,
    *,
    valid_ds: WrappedDataSet | None = None,
    scheduler: Any = None,
    device: str | torch.device | None = None,
    progress: bool | Callable[[str, int, int], None] = True,
    on_epoch: EpochCallback | None = None,
    model_name: str | None = None,
    reproduces: ModelRef | None = None,
    code_root: str | os.PathLike[str] | None = None,
    config: dict[str, Any] | None = None,
    require_clean_code: bool = False,
    store_untracked: bool = True,
) -> ProvenanceRecord:
    """Train ``model`` and write it, with its full provenance, into ``output_ds``.

    Captures the architecture, optimiser, loss, scheduler, parameters, every dataset,
    seeds and determinism settings, data order, code version, environment and per-epoch
    metrics. Metrics accumulate on the device (no per-batch synchronisation).

    With ``require_clean_code=True`` training is refused (:class:`DirtyCodeError`) unless the
    code is committed (DeepDIVA's enforcement); otherwise the uncommitted patch and untracked
    files are stored with the model: git-ignored files, files named like secrets (``.env``,
    ``id_rsa``, ``*.pem``...: :data:`reprodl.training.capture.SECRET_FILE_PATTERNS`) and symbolic links
    are not, and ``store_untracked=False`` stores none (the record names each one skipped and why).

    Returns:
        The sealed :class:`ProvenanceRecord` (also stored as ``provenance.json``).
    """
    if not isinstance(params, Parameters):
        params = Parameters(**dict(params))
    if output_ds.writer is None:
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
    code, patch, code_files = capture_code(code_root, store_untracked=store_untracked)
    if require_clean_code:
        require_clean(code)
    roles = output_ds.datasets_by_role()
    _check_not_empty(roles)
    _check_data(roles, params.verify_data)
    started = _utcnow()
    t_start = time.perf_counter()

    target = choose_device(str(device) if device is not None else params.device)
    seeds = derive_seeds(params.seed, params.num_workers)
    names = {id(p): n for n, p in model.named_parameters()}
    parent_ref = _parent_ref(output_ds.parent)
    init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    initial_sha = state_dict_sha256(init_state)
    arch = describe_architecture(model, params.init_params)
    arch.initialisation = _initialisation(
        model,
        params.init_params,
        params.seed,
        parent_ref.weights_sha256 if parent_ref else None,
        initial_sha,
    )
    arch.initial_weights_sha256 = initial_sha
    optimizer_info = describe_optimizer(optimiser, names)
    loss_info = describe_callable(loss_fn)
    scheduler_info = describe_callable(scheduler) if scheduler is not None else None
    if config is not None:
        code.config = config
        code.config_file = config.get("source")
    env = capture_environment()

    train_sets = output_ds.train_sets
    data_for_loader: WrappedDataSet | torch.utils.data.ConcatDataset = (
        train_sets[0] if len(train_sets) == 1 else _Concat(train_sets)
    )
    loader, sampler = make_loader(
        data_for_loader,
        params.batch_size,
        seed=seeds.dataloader_generator,
        shuffle=params.shuffle,
        num_workers=params.num_workers,
        device=target,
    )
    history: list[EpochMetrics] = []
    order_digests: list[str] = []
    model.to(target)
    # The optimiser's state (momentum buffers...) must follow the model to the device.
    report = _progress_reporter(progress)
    with DeterminismSettings(params.deterministic, target.type) as determinism:
        seed_everything(seeds)
        model.train()
        for epoch in range(params.n_epochs):
            t_epoch = time.perf_counter()
            sampler.set_epoch(epoch)
            loss_sum = torch.zeros((), device=target, dtype=torch.float64)
            # The first batch whose loss is not finite, tracked on the device (no per-batch sync).
            first_bad = torch.full((), -1, device=target, dtype=torch.int64)
            n_batches = len(sampler)
            for i, (x, y) in enumerate(loader):
                x = x.to(target, non_blocking=True)
                y = y.to(target, non_blocking=True)
                optimiser.zero_grad(set_to_none=True)
                loss = loss_fn(model(x), y)
                loss.backward()
                optimiser.step()
                loss_sum += loss.detach() * len(y)
                if not params.allow_nonfinite_loss:
                    bad = (first_bad < 0) & ~torch.isfinite(loss.detach())
                    first_bad = torch.where(bad, torch.full_like(first_bad, i), first_bad)
                if report:
                    report(f"epoch {epoch + 1}/{params.n_epochs}", i + 1, n_batches)
            lr_now = float(optimiser.param_groups[0].get("lr", float("nan")))
            if scheduler is not None:
                scheduler.step()
            assert sampler.order_digest is not None
            order_digests.append(sampler.order_digest)
            metrics = EpochMetrics(
                epoch=epoch + 1,
                train_loss=float(loss_sum) / len(data_for_loader),
                learning_rate=lr_now,
                wall_time_s=0.0,
            )
            if not params.allow_nonfinite_loss and not math.isfinite(metrics.train_loss):
                _diverged(output_ds.name, epoch, int(first_bad), n_batches, metrics.train_loss)
            if output_ds.valid_sets:
                vl, va = evaluate_loss_accuracy(model, output_ds.valid_sets[0], loss_fn, target)
                metrics.valid_loss, metrics.valid_accuracy = vl, va
            metrics.wall_time_s = time.perf_counter() - t_epoch
            history.append(metrics)
            if on_epoch:
                on_epoch(metrics)
    wall = time.perf_counter() - t_start
    data_refs = store_readmes_once(
        [DataRef.model_validate({"role": role, **ds.provenance_info()}) for role, ds in roles]
    )
    training = Training(
        optimizer=optimizer_info,
        loss=loss_info,
        scheduler=scheduler_info,
        epochs=params.n_epochs,
        batch_size=params.batch_size,
        shuffle=params.shuffle,
        num_workers=params.num_workers,
        params=params.to_dict(),
        seeds=seeds,
        determinism=determinism,
        data_order_digests=order_digests,
        device=str(target),
    )
    final: dict[str, Any] = {"train_loss": history[-1].train_loss}
    if history[-1].valid_accuracy is not None:
        final.update(valid_loss=history[-1].valid_loss, valid_accuracy=history[-1].valid_accuracy)
    record = ProvenanceRecord(
        model_name=model_name or output_ds.name,
        created_at=started,
        reprodl_version=__version__,
        architecture=arch,
        data=data_refs,
        training=training,
        code=code,
        environment=env,
        results=Results(history=history, final=final, wall_time_s=wall, started_at=started, finished_at=_utcnow()),
        lineage=Lineage(parent=parent_ref, reproduces=reproduces),
    )
    manifests = {}
    for ref, (_, ds) in zip(record.data, roles):
        ref.manifest_item = f"{keys.MANIFESTS_DIR}/{ds.uuid}.json"
        manifests[ref.manifest_item] = ds.dataset.manifest_entries()
    write_model(
        output_ds,
        model,
        record,
        patch=patch,
        manifests=manifests,
        code_files=code_files,
        initial_state=init_state if arch.initialisation == "stored" else None,
    )
    return output_ds.record  # type: ignore[return-value]  # write_model has just set it


class _Concat(torch.utils.data.ConcatDataset):
    """Several training datasets as one, keeping batch fetches batched per dataset."""

    def __getitems__(self, indices: Sequence[int]) -> Any:
        return [self[i] for i in indices]


def _progress_reporter(progress: bool | Callable[[str, int, int], None]) -> Callable[[str, int, int], None] | None:
    """The per-batch progress callback: the caller's, or (``True``) a bar on stderr shown only
    to a person at a terminal, so scripts and logs stay clean; ``False`` turns it off."""
    import sys

    if callable(progress):
        return progress
    if not progress or not sys.stderr.isatty():
        return None
    state = {"last": 0.0}

    def report(label: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if done == total or now - state["last"] > 0.5:
            state["last"] = now
            bar = "#" * int(30 * done / total)
            sys.stderr.write(f"\r{label} [{bar:<30}] {done}/{total}")
            if done == total:
                sys.stderr.write("\n")
            sys.stderr.flush()

    return report


def _parent_ref(parent: str | None) -> ModelRef | None:
    if parent is None:
        return None
    from reprodl.modeldataset.read import read_record
    from reprodl.store import open_dataset

    ds = open_dataset(parent)
    record = read_record(ds)
    return ModelRef(uri=ds.uri, uuid=ds.uuid, record_digest=record.digest, weights_sha256=record.results.weights_sha256)


def write_model(
    output_ds: DerivedDataSet,
    model: torch.nn.Module,
    record: ProvenanceRecord,
    *,
    patch: str | None = None,
    initial_state: dict[str, torch.Tensor] | None = None,
    manifests: dict[str, Any] | None = None,
    code_files: dict[str, Any] | None = None,
) -> None:
    """Write weights (safetensors), record, history, README and annotations into the output."""
    from safetensors.torch import save_file

    writer = output_ds.writer
    assert writer is not None
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    record.results.weights_sha256 = state_dict_sha256(state)
    with writer.item_file(keys.WEIGHTS_FILE) as path:
        save_file(_unshare(state), str(path), metadata={"format": "pt", "reprodl": __version__})
    if initial_state is not None:
        with writer.item_file(keys.INITIAL_WEIGHTS_FILE) as path:
            save_file(_unshare({k: v.cpu().contiguous() for k, v in initial_state.items()}), str(path))
    if patch:
        assert record.code.git is not None
        record.code.git.patch_item = keys.CODE_PATCH_FILE
        writer.put_bytes(patch.encode(), keys.CODE_PATCH_FILE)
    for relpath, path in (code_files or {}).items():
        writer.put_item(path, relpath)
    for relpath, entries in (manifests or {}).items():
        if relpath not in writer.relpaths:
            writer.put_json(entries, relpath)
    record = record.sealed()
    writer.put_bytes(record.to_json().encode(), keys.PROVENANCE_FILE)
    writer.put_json([m.model_dump(mode="json") for m in record.results.history], keys.HISTORY_FILE)
    writer.put_readme(model_readme(record))
    for name, value in mirror_annotations(record).items():
        writer.put_annotation(name, value)
    output_ds.record = record


def _unshare(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    seen: set[int] = set()
    out = {}
    for k, v in state.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else -1
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


def model_readme(record: ProvenanceRecord) -> str:
    """README.yml of a model dataset: a summary for people (the record is authoritative)."""
    t = record.training
    data = {
        "name": record.model_name,
        "description": f"{record.architecture.class_name} trained by reprodl {record.reprodl_version}",
        "kind": "reprodl model",
        "architecture": record.architecture.import_path,
        "init_params": record.architecture.init_params,
        "parameters": record.architecture.n_parameters,
        "training": {
            "optimizer": t.optimizer.class_name,
            "learning_rate": t.params.get("learning_rate"),
            "loss": t.loss.class_name,
            "epochs": t.epochs,
            "batch_size": t.batch_size,
            "seed": t.seeds.seed,
            "mode": t.determinism.mode,
            "device": t.device,
        },
        "data": [{"role": d.role, "name": d.name, "uri": d.uri, "uuid": d.uuid} for d in record.data],
        "results": record.results.final,
        "trained_at": record.created_at,
        "record_digest": record.digest,
    }
    if record.lineage.parent:
        data["fine_tuned_from"] = record.lineage.parent.uri
    if record.lineage.reproduces:
        data["reproduces"] = record.lineage.reproduces.uri
    return yaml.safe_dump(json.loads(json.dumps(data)), sort_keys=False)
