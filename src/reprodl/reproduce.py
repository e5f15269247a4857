"""One-command reproduction: re-run a training from its record, compare, report.

Example:
    >>> report = reproduce("/models/digits_model")      # doctest: +SKIP
    >>> report.verdict                                  # doctest: +SKIP
    'identical'
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from reprodl import keys
from reprodl.capture import capture_environment, class_source_sha256, state_dict_sha256
from reprodl.checks import check_data
from reprodl.data.datasets import ImageDataSet, TensorDataSet, WrappedDataSet
from reprodl.errors import (
    ExitCode,
    IntegrityError,
    ReproductionError,
    TransformError,
    UnsafeImportError,
)
from reprodl.model import load_weights, resolve_class
from reprodl.params import Parameters
from reprodl.provenance import DataRef, GitInfo, ModelRef, ProvenanceRecord, read_record
from reprodl.store import StoredDataSet, open_dataset

Verdict = Literal["identical", "within tolerance", "differs"]
# A statistical-mode re-run uses the recorded seed plus this, so it never coincides with a
# member of a multi-run (seeds base..base+N-1) by accident.
STATISTICAL_SEED_OFFSET = 100_003


@dataclasses.dataclass
class Tolerance:
    """How far a reproduction may be from the original and still count.

    weights: per tensor, ``|a - b| <= atol + rtol * |a|`` everywhere; metrics: each final
    metric within ``metric_abs``; predictions: at least ``agreement`` of them equal.
    """

    atol: float = 1e-5
    rtol: float = 1e-4
    metric_abs: float = 0.02
    agreement: float = 0.99
    loss_rtol: float = 0.25

    @classmethod
    def parse(cls, text: str | None) -> "Tolerance":
        """From "1e-5" (atol) or "atol=1e-5,rtol=1e-4,metric=0.02,agreement=0.99"."""
        if not text:
            return cls()
        out = cls()
        names = {"atol": "atol", "rtol": "rtol", "metric": "metric_abs", "metric_abs": "metric_abs",
                 "agreement": "agreement", "loss_rtol": "loss_rtol"}
        try:
            if "=" not in text:
                out.atol = float(text)
                return out
            for part in text.split(","):
                key, _, value = part.partition("=")
                if key.strip() not in names:
                    raise ValueError(key)
                setattr(out, names[key.strip()], float(value))
        except ValueError:
            raise ReproductionError(
                f"tolerance {text!r} should be a number (atol) or a list like "
                "'atol=1e-5,rtol=1e-4,metric=0.02,agreement=0.99'") from None
        return out


@dataclasses.dataclass
class ReproductionReport:
    """What :func:`reproduce` found; ``verdict`` is identical, within tolerance or differs."""

    original_uri: str
    verdict: Verdict
    mode: str
    reasons: list[str] = dataclasses.field(default_factory=list)
    reproduction_uri: str | None = None
    data_checks: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    code: dict[str, Any] = dataclasses.field(default_factory=dict)
    environment_differences: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    weights: dict[str, Any] = dataclasses.field(default_factory=dict)
    metrics: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    predictions: dict[str, Any] = dataclasses.field(default_factory=dict)
    data_order_matches: bool | None = None
    envelope: dict[str, Any] | None = None
    tolerance: dict[str, float] = dataclasses.field(default_factory=dict)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.verdict in ("identical", "within tolerance")

    @property
    def exit_code(self) -> int:
        return int(ExitCode.OK if self.ok else ExitCode.FAILED)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ok": self.ok}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)


# --- checks before training ----------------------------------------------------------------
def check_code(record: ProvenanceRecord) -> dict[str, Any]:
    """Is the recorded commit available here, and does the recorded patch apply to it?"""
    git = record.code.git
    out: dict[str, Any] = {"recorded_commit": git.commit if git else None, "dirty": bool(git and git.dirty)}
    if not git or not git.commit:
        out.update(status="unknown", message="the training ran outside a git repository; code cannot be checked")
        return out
    root = _repo_root(git)

    def run(*args: str, env: dict[str, str] | None = None, stdin: bytes | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, input=stdin, env=env, timeout=60)

    try:
        has = run("cat-file", "-e", f"{git.commit}^{{commit}}").returncode == 0
    except (OSError, subprocess.SubprocessError):
        has = False
    out["commit_available"] = has
    if not has:
        out.update(status="missing", message=f"commit {git.commit} is not in the repository at {root}: fetch it "
                   f"({git.remote or 'the original remote'}) to rebuild the exact code")
        return out
    head = run("rev-parse", "HEAD").stdout.decode().strip()
    out["current_commit"] = head
    out["same_commit"] = head == git.commit
    if git.patch_item:
        out["patch_item"] = git.patch_item
    out.setdefault("status", "available")
    out["message"] = (f"commit {git.commit[:12]} is available" + ("" if head == git.commit else
                      f"; the checkout is at {head[:12]}, so the re-run uses different code"))
    return out


def _repo_root(git: GitInfo) -> Path:
    """The recorded repository root where it exists here, else the working directory."""
    return Path(git.root) if git.root and Path(git.root).is_dir() else Path.cwd()


def check_patch(record: ProvenanceRecord, model_ds: StoredDataSet, code: dict[str, Any]) -> None:
    """Record in ``code`` whether the recorded uncommitted patch applies to the recorded commit."""
    git = record.code.git
    if not git or not git.patch_item or not code.get("commit_available"):
        return
    root = _repo_root(git)
    patch = Path(model_ds.item_path(model_ds.identifier_of(git.patch_item))).read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        subprocess.run(["git", "read-tree", git.commit], cwd=root, env=env, capture_output=True, timeout=60)
        res = subprocess.run(["git", "apply", "--cached", "--check", "-"], cwd=root, env=env, input=patch,
                             capture_output=True, timeout=60)
    code["patch_applies"] = res.returncode == 0
    if res.returncode != 0:
        code["status"] = "patch does not apply"
        code["message"] = f"the recorded patch does not apply to {git.commit[:12]}: {res.stderr.decode().strip()}"


def environment_differences(record: ProvenanceRecord) -> list[dict[str, Any]]:
    """Each recorded environment field and package version that differs here: {what, recorded, now}."""
    now = capture_environment()
    was = record.environment
    out = []
    for field in ("python", "implementation", "platform", "machine", "torch", "cuda", "cudnn", "numpy", "reprodl", "gpus"):
        a, b = getattr(was, field), getattr(now, field)
        if a != b:
            out.append({"what": field, "recorded": a, "now": b})
    for name in sorted(set(was.packages) | set(now.packages)):
        a, b = was.packages.get(name), now.packages.get(name)
        if a != b:
            out.append({"what": f"package {name}", "recorded": a, "now": b})
    return out


# --- rebuilding ---------------------------------------------------------------------------
def _torch_class(module: str, name: str, prefix: str, allow: Iterable[str], what: str) -> type:
    path = f"{module}:{name}"
    if module == prefix or module.startswith(prefix + "."):
        return resolve_class(path, allow=[module])
    try:
        return resolve_class(path, allow=allow)
    except UnsafeImportError:
        raise UnsafeImportError(f"the record's {what} {path} is not from {prefix}; pass allow=[{module!r}] if you "
                                "trust it") from None


def open_recorded(ref: DataRef, *, transform: Callable[[Any], Any] | None = None,
                  dataset: StoredDataSet | None = None) -> WrappedDataSet:
    """The dataset a record's ``ref`` names, read as the training read it.

    A transform recorded from :mod:`reprodl.transforms` is rebuilt from its config; any other
    is refused (:class:`ReproductionError`, naming its class) unless ``transform`` passes it.
    ``dataset`` is the dataset at ``ref.uri`` when the caller has it open already.
    """
    if transform is None and ref.transform is not None:
        transform = rebuild_transform(ref)
    cls = ImageDataSet if ref.input_type == keys.INPUT_TYPE_IMAGE else TensorDataSet
    kwargs: dict[str, Any] = {}
    if cls is ImageDataSet and ref.image_mode:
        kwargs["mode"] = ref.image_mode
        if len(ref.input_shape) == 3:
            kwargs["size"] = (ref.input_shape[2], ref.input_shape[1])
    if ref.split is not None:
        kwargs["split"] = ref.split
    ds = cls(dataset if dataset is not None else ref.uri, ref.usetype, transform, **kwargs)
    if ref.selection_digest and ds.selection_digest() != ref.selection_digest:
        raise ReproductionError(
            f"the {ref.role} dataset {ref.name} now selects different samples for usetype {ref.usetype!r} "
            "(its split was changed after training)")
    return ds


def rebuild_transform(ref: DataRef) -> Any:
    """The transform the record's ``ref`` was read through, rebuilt from its config."""
    from reprodl.transforms import from_description

    if ref.transform is None:
        raise ReproductionError(
            f"the {ref.role} dataset {ref.name} was read without a transform: there is none to rebuild")
    try:
        return from_description(ref.transform)
    except TransformError as exc:
        raise ReproductionError(
            f"the {ref.role} dataset {ref.name} was read through a transform that reprodl cannot rebuild from the "
            f"record ({exc}). If you trust it, pass the same transform yourself: "
            f"reproduce(uri, transforms={{{ref.role!r}: your_transform}})") from None


def transform_differences(ref: DataRef, transform: Any) -> str | None:
    """Why a transform passed to :func:`reproduce` may not be the recorded one (None: it looks the same)."""
    from reprodl.data.datasets import describe_transform

    was, now = ref.transform or {}, describe_transform(transform) or {}
    if was.get("class") != now.get("class"):
        return f"the {ref.role} transform passed is a {now.get('class')}, the recorded one a {was.get('class')}"
    if "config" in was and was.get("config") != now.get("config"):
        return f"the {ref.role} transform passed has the config {now.get('config')}, the recorded one {was['config']}"
    return None


def rebuild_model(record: ProvenanceRecord, model_ds: StoredDataSet, *, allow: Iterable[str] = (),
                  model_class: type | None = None, seed: int | None = None) -> torch.nn.Module:
    """The model at its recorded starting point; with ``seed`` (statistical mode) a model
    built by a seeded constructor starts from that seed's initialisation instead."""
    arch = record.architecture
    cls = resolve_class(arch.import_path, allow=allow, model_class=model_class)
    fresh_init = seed is not None and seed != record.training.seeds.seed and arch.initialisation == "constructor"
    if not fresh_init:
        seed = record.training.seeds.seed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(**arch.init_params)
    if arch.initialisation == "stored":
        from safetensors.torch import load_file

        state = load_file(model_ds.item_path(model_ds.identifier_of(keys.INITIAL_WEIGHTS_FILE)))
        model.load_state_dict(state)
    elif arch.initialisation == "parent":
        parent = record.lineage.parent
        if parent is None:
            raise ReproductionError("the record says the model started from its parent but names no parent")
        pds = open_dataset(parent.uri)
        model.load_state_dict(load_weights(pds, read_record(pds)))
    for name, p in model.named_parameters():
        if name in arch.frozen_parameters:
            p.requires_grad_(False)
    if (not fresh_init and arch.initial_weights_sha256
            and state_dict_sha256(model.state_dict()) != arch.initial_weights_sha256):
        raise ReproductionError(
            f"the rebuilt {arch.import_path} does not start from the recorded initial weights: the class's code "
            "or its initialisation changed since training")
    return model


def rebuild_optimizer(record: ProvenanceRecord, model: torch.nn.Module, allow: Iterable[str]) -> torch.optim.Optimizer:
    """The recorded optimiser over ``model``'s parameters, groups and hyperparameters as recorded."""
    info = record.training.optimizer
    cls = _torch_class(info.module, info.class_name, "torch.optim", allow, "optimizer")
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
    """The recorded loss function with its recorded arguments."""
    info = record.training.loss
    cls = _torch_class(info.module, info.class_name, "torch.nn", allow, "loss function")
    args = {k: (torch.tensor(v) if k in ("weight", "pos_weight") and v is not None else v) for k, v in info.args.items()}
    return cls(**args)


def rebuild_scheduler(record: ProvenanceRecord, optimizer: Any, allow: Iterable[str]) -> Any:
    """The recorded learning-rate scheduler on ``optimizer`` (None when there was none)."""
    info = record.training.scheduler
    if info is None:
        return None
    cls = _torch_class(info.module, info.class_name, "torch.optim", allow, "scheduler")
    args = {k: v for k, v in info.args.items() if k not in ("last_epoch", "verbose")}
    return cls(optimizer, **args)


# --- comparison ----------------------------------------------------------------------------
def compare_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: Tolerance) -> dict[str, Any]:
    """Per tensor: identical, max absolute and relative difference, within ``tol``; and overall."""
    tensors = []
    identical = set(a) == set(b)
    within = identical
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            tensors.append({"name": name, "missing_in": "original" if name not in a else "reproduction"})
            continue
        x, y = a[name], b[name]
        if x.shape != y.shape:
            tensors.append({"name": name, "shape": [list(x.shape), list(y.shape)]})
            identical = within = False
            continue
        same = torch.equal(x, y)
        identical &= same
        if x.is_floating_point():
            diff = (x.double() - y.double()).abs()
            max_abs = float(diff.max()) if diff.numel() else 0.0
            denom = x.double().abs().clamp_min(1e-12)
            max_rel = float((diff / denom).max()) if diff.numel() else 0.0
            ok = bool((diff <= tol.atol + tol.rtol * x.double().abs()).all())
        else:
            max_abs = float((x.long() - y.long()).abs().max()) if x.numel() else 0.0
            max_rel = max_abs
            ok = same
        within &= ok
        tensors.append({"name": name, "identical": same, "max_abs_diff": max_abs, "max_rel_diff": max_rel,
                        "within_tolerance": ok})
    return {"identical": identical, "within_tolerance": within,
            "n_tensors": len(tensors), "n_identical": sum(1 for t in tensors if t.get("identical")),
            "max_abs_diff": max((t.get("max_abs_diff", 0.0) for t in tensors), default=0.0), "tensors": tensors}


def compare_metrics(a: ProvenanceRecord, b: ProvenanceRecord) -> list[dict[str, Any]]:
    """Per epoch and metric, the original and reproduced value and their difference."""
    rows = []
    for ma, mb in zip(a.results.history, b.results.history):
        for key in ("train_loss", "valid_loss", "valid_accuracy"):
            x, y = getattr(ma, key), getattr(mb, key)
            if x is None and y is None:
                continue
            rows.append({"epoch": ma.epoch, "metric": key, "original": x, "reproduction": y,
                         "abs_diff": abs(x - y) if x is not None and y is not None else None})
    return rows


@torch.no_grad()
def compare_predictions(m1: torch.nn.Module | None, m2: torch.nn.Module, ds: WrappedDataSet) -> dict[str, Any]:
    """Agreement and accuracies of two models on ``ds``.

    ``m1=None`` says the first model is bit-identical to ``m2`` (same class, same weights):
    its predictions are then ``m2``'s, so ``m2`` alone is evaluated (one pass, not two).
    """
    from reprodl.data.datasets import collate

    if m1 is not None:
        m1.eval()
    m2.eval()
    agree = total = c1 = c2 = 0
    for x, y in torch.utils.data.DataLoader(ds, batch_size=512, shuffle=False, collate_fn=collate):
        p2 = m2(x).argmax(1)
        p1 = p2 if m1 is None else m1(x).argmax(1)
        agree += int((p1 == p2).sum())
        c1 += int((p1 == y).sum())
        c2 += int((p2 == y).sum())
        total += len(y)
    return {"dataset": ds.name, "usetype": ds.usetype, "n": total, "agreement": agree / max(total, 1),
            "original_accuracy": c1 / max(total, 1), "reproduction_accuracy": c2 / max(total, 1)}


# --- the command ---------------------------------------------------------------------------
def reproduce(
    uri: str,
    *,
    output: str | None = None,
    tolerance: Tolerance | str | None = None,
    allow: Iterable[str] = (),
    model_class: type | None = None,
    device: str | None = None,
    seed: int | None = None,
    progress: bool = False,
    envelope: dict[str, Any] | None = None,
    transforms: Mapping[str, Callable[[Any], Any]] | None = None,
) -> ReproductionReport:
    """Re-run the training recorded in the model dataset at ``uri`` and compare.

    Refuses to train (:class:`IntegrityError`, naming the items) if a training dataset
    changed. Bitwise-mode models are compared weight for weight; statistical-mode models are
    re-run with a different seed (``seed``, default recorded + 100003) and judged on metrics and
    predictions, against a multi-run envelope when one is given.

    Transforms recorded from :mod:`reprodl.transforms` (with their configs) are rebuilt,
    so preprocessing and seeded augmentation run again as they did. A transform of your own
    cannot be rebuilt from a record (reprodl never imports what a record names), so such a
    model is refused (:class:`ReproductionError`, naming the class) unless you pass it.

    Args:
        output: base URI to keep the reproduced model dataset in (default: a temporary
            directory, removed after the comparison).
        transforms: transform objects by dataset role ("train", "valid", "test"), used
            instead of rebuilding the recorded ones; a class or config other than the
            recorded one is listed in the report's reasons.

    Example:
        >>> reproduce("/models/augmented", transforms={"train": MyAugment(0.1)})   # doctest: +SKIP
    """
    tol = tolerance if isinstance(tolerance, Tolerance) else Tolerance.parse(tolerance)
    t0 = time.perf_counter()
    model_ds = open_dataset(uri)
    record = read_record(model_ds)
    original_state = load_weights(model_ds, record)
    mode = record.training.determinism.mode
    report = ReproductionReport(original_uri=model_ds.uri, verdict="differs", mode=mode,
                                tolerance=dataclasses.asdict(tol))

    data_transforms = _transforms_for(record, transforms, report)  # refuses before any work
    t_data = time.perf_counter()
    opened: dict[str, StoredDataSet] = {}
    report.data_checks, problems = check_data(record, model_ds, opened=opened)
    report.timings["data_check_s"] = time.perf_counter() - t_data
    if problems:
        raise IntegrityError("refusing to reproduce: the training data changed since training:\n  "
                             + "\n  ".join(problems), problems=problems)
    report.code = check_code(record)
    check_patch(record, model_ds, report.code)
    report.environment_differences = environment_differences(record)

    from reprodl.train import DerivedDataSet, train_model_with_metadata_capture

    run_params = dict(record.training.params)
    if mode == "statistical":
        run_params["seed"] = seed if seed is not None else int(run_params.get("seed", 0)) + STATISTICAL_SEED_OFFSET
    elif seed is not None:
        run_params["seed"] = seed
    model = rebuild_model(record, model_ds, allow=allow, model_class=model_class, seed=int(run_params.get("seed", 0)))
    current_src = class_source_sha256(type(model))
    if record.architecture.source_sha256 and current_src and current_src != record.architecture.source_sha256:
        report.reasons.append(f"the source of {record.architecture.import_path} differs from the recorded one")
    optimizer = rebuild_optimizer(record, model, allow)
    loss_fn = rebuild_loss(record, allow)
    scheduler = rebuild_scheduler(record, optimizer, allow)
    roles: dict[str, list[WrappedDataSet]] = {"train": [], "valid": [], "test": []}
    for ref, transform in zip(record.data, data_transforms):
        roles[ref.role].append(open_recorded(ref, transform=transform, dataset=opened.get(ref.uri)))
    run_params["verify_data"] = "none"  # just checked, deeply
    if device is not None:
        run_params["device"] = device
    elif not torch.cuda.is_available():
        run_params["device"] = "cpu"
    params = Parameters(**run_params)
    ref_self = ModelRef(uri=model_ds.uri, uuid=model_ds.uuid, record_digest=record.digest,
                        weights_sha256=record.results.weights_sha256)

    with contextlib.ExitStack() as stack:
        base = output
        if base is None:
            base = stack.enter_context(tempfile.TemporaryDirectory(prefix="reprodl-reproduce-"))
        name = _reproduction_name(record.model_name)
        t_train = time.perf_counter()
        with DerivedDataSet(base, name, roles["train"], valid=roles["valid"], test=roles["test"],
                            parent=record.lineage.parent.uri if record.lineage.parent else None) as out:
            new_record = train_model_with_metadata_capture(
                model, roles["train"][0], optimizer, loss_fn, params, out, scheduler=scheduler,
                progress=progress, model_name=record.model_name, reproduces=ref_self)
        report.timings["training_s"] = time.perf_counter() - t_train
        report.reproduction_uri = out.uri if output is not None else None
        new_state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        report.weights = compare_weights(original_state, new_state, tol)
        report.metrics = compare_metrics(record, new_record)
        report.data_order_matches = record.training.data_order_digests == new_record.training.data_order_digests
        eval_sets = roles["test"] or roles["valid"] or roles["train"]
        original_model = None
        if not report.weights["identical"]:
            # Bit-identical weights in the same class predict the same: one evaluation serves both.
            original_model = rebuild_model(record, model_ds, allow=allow, model_class=model_class)
            original_model.load_state_dict(original_state)
        model.cpu()
        report.predictions = compare_predictions(original_model, model, eval_sets[0])
    report.timings["original_training_s"] = record.results.wall_time_s
    report.timings["total_s"] = time.perf_counter() - t0
    if envelope is None and mode == "statistical":
        envelope = _find_envelope(model_ds)
    _judge(report, record, new_record, tol, envelope)
    return report


def _transforms_for(record: ProvenanceRecord, given: Mapping[str, Callable[[Any], Any]] | None,
                    report: ReproductionReport) -> list[Any]:
    """Per recorded dataset, the transform to read it through: passed, rebuilt, or None."""
    given = dict(given or {})
    present = {ref.role for ref in record.data}
    unknown = sorted(set(given) - present)
    if unknown:
        raise ReproductionError(f"transforms= names roles {unknown}, but the record has datasets for {sorted(present)}")
    out = []
    for ref in record.data:
        transform = given.get(ref.role)
        if transform is None:
            out.append(rebuild_transform(ref) if ref.transform is not None else None)
            continue
        if ref.transform is None:
            raise ReproductionError(
                f"a transform was passed for the {ref.role} dataset {ref.name}, but the recorded training read it "
                "without one: leave it out of transforms=")
        why = transform_differences(ref, transform)
        if why:
            report.reasons.append(why)
        out.append(transform)
    return out


def _find_envelope(model_ds: StoredDataSet) -> dict[str, Any] | None:
    """The multi-run summary this model belongs to, if one was written."""
    uri = model_ds.get_annotation(keys.SUMMARY_URI)
    if not uri:
        return None
    from reprodl.multirun import load_summary

    try:
        return load_summary(uri)
    except Exception:  # noqa: BLE001 - an unreachable summary leaves the plain tolerance
        return None


def _reproduction_name(name: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    return f"{name}.reproduction-{stamp}-{os.getpid()}"[:80]


def _judge(report: ReproductionReport, record: ProvenanceRecord, new: ProvenanceRecord, tol: Tolerance,
           envelope: dict[str, Any] | None) -> None:
    reasons = report.reasons
    env = report.environment_differences
    key_env = [d for d in env if not d["what"].startswith("package ")]
    if key_env:
        reasons.append("environment differs: " + ", ".join(f"{d['what']} {d['recorded']} -> {d['now']}" for d in key_env))
    if any(d["what"].startswith("package ") for d in env):
        n = sum(1 for d in env if d["what"].startswith("package "))
        reasons.append(f"{n} installed package version(s) differ")
    if record.training.device != new.training.device:
        reasons.append(f"device differs: {record.training.device} -> {new.training.device}")
    if report.code.get("same_commit") is False:
        reasons.append(report.code["message"])
    if report.data_order_matches is False:
        reasons.append("the order in which samples were seen differs (data-order digests)")
    metric_ok = all(r["abs_diff"] is None or r["abs_diff"] <= tol.metric_abs
                    for r in report.metrics if r["epoch"] == record.training.epochs)
    agree_ok = report.predictions.get("agreement", 0.0) >= tol.agreement
    if report.mode == "statistical":
        reasons.append(f"statistical mode: re-run with seed {new.training.seeds.seed} (recorded "
                       f"{record.training.seeds.seed}); judged on final metrics, not bits")
        if envelope is not None:
            report.envelope = _envelope_check(envelope, new)
            ok = report.envelope["within"]
        else:
            ok = _statistical_metrics_ok(report.metrics, record.training.epochs, tol)
        report.verdict = "within tolerance" if ok else "differs"
        if not ok:
            reasons.append("final metrics fall outside the tolerance" + (" envelope" if envelope else ""))
        return
    if report.weights["identical"]:
        report.verdict = "identical"
        return
    reasons.append(f"weights differ: {report.weights['n_tensors'] - report.weights['n_identical']} of "
                   f"{report.weights['n_tensors']} tensors, max abs diff {report.weights['max_abs_diff']:.3g}")
    if not key_env and not report.reasons[:-1]:
        reasons.append("same environment, data and code: non-determinism in the training")
    report.verdict = "within tolerance" if (report.weights["within_tolerance"] and metric_ok and agree_ok) else "differs"


def _judged_metrics(names: Iterable[str]) -> list[str]:
    """Accuracy metrics when there are any (what a claim about a model is about), else losses."""
    names = list(names)
    accuracy = [n for n in names if "accuracy" in n]
    return accuracy or names


def _statistical_metrics_ok(rows: list[dict[str, Any]], epochs: int, tol: Tolerance) -> bool:
    """Final accuracies within ``metric_abs``; losses (only when no accuracy) within ``loss_rtol``."""
    final = {r["metric"]: r for r in rows if r["epoch"] == epochs and r["abs_diff"] is not None}
    judged = _judged_metrics(final)
    if not judged:
        return False
    for name in judged:
        r = final[name]
        limit = tol.metric_abs if "accuracy" in name else tol.loss_rtol * abs(r["original"])
        if r["abs_diff"] > limit:
            return False
    return True


def _envelope_check(envelope: dict[str, Any], new: ProvenanceRecord) -> dict[str, Any]:
    """Is each judged final metric of the new run inside [min, max] widened by 1 std of the multi-run summary?"""
    final = {k: v for k, v in envelope.get("final", {}).items() if k in _judged_metrics(envelope.get("final", {}))}
    rows = []
    within = True
    for metric, stats in final.items():
        value = new.results.final.get(metric)
        if value is None:
            continue
        lo = stats["min"] - stats["std"]
        hi = stats["max"] + stats["std"]
        ok = lo <= value <= hi
        within &= ok
        rows.append({"metric": metric, "value": value, "low": lo, "high": hi, "mean": stats["mean"], "within": ok})
    return {"within": within and bool(rows), "metrics": rows}
