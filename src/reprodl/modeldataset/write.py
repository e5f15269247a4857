"""Writing a model dataset: the context manager that creates it, and what goes in it.

A model dataset holds the weights (``model.safetensors``), the sealed provenance record
(``provenance.json``), the per-epoch history, copies of the data's manifests, the code
patch and untracked files, a README for people and annotations mirroring the record. It
is created inside :class:`DerivedDataSet` and frozen only when training succeeded. No
torch at import: the weights are saved by :func:`write_model`.

Example:
    >>> with DerivedDataSet(base_uri, "mnist_model", train_ds) as output_ds:   # doctest: +SKIP
    ...     train_model_with_metadata_capture(model, train_ds, optimiser, loss_fn, params, output_ds)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import yaml

from reprodl import __version__, keys
from reprodl.errors import ParametersError, ReprodlError
from reprodl.modeldataset.weights import state_dict_sha256
from reprodl.provenance import ModelRef, ProvenanceRecord, mirror_annotations
from reprodl.provenance.record import DEFAULT_MODEL_NAME, OptimizerComponent
from reprodl.store import DatasetWriter, create_dataset, find_resumable, local_path, open_dataset, writer_over

if TYPE_CHECKING:
    import torch

    from reprodl.data.datasets import WrappedDataSet

#: README keys reprodl writes from the record; a caller's ``readme=`` may not set them
#: (``description`` it may: the caller's replaces the generated one).
GENERATED_README_KEYS = frozenset(
    {
        "name",
        "kind",
        "architecture",
        "init_params",
        "parameters",
        "training",
        "data",
        "results",
        "trained_at",
        "record_digest",
        "fine_tuned_from",
        "reproduces",
        "replicates",
    }
)


class DerivedDataSet:
    """The output model dataset: a context manager frozen only if training succeeded.

    Args:
        base_uri: where to create the model dataset (path, file://, s3://).
        name: the model dataset's name.
        source: the training dataset, or a list of them (they must share labels).
        valid: validation dataset(s), evaluated each epoch.
        test: test dataset(s), recorded by role (evaluate them with ``TrainedTorchModel``).
        parent: URI of a model dataset this training fine-tunes (recorded as lineage).
        readme: fields added to the model's README (``description``, ``owners``, ``project``...);
            values are text, numbers, lists or mappings. The keys reprodl writes from the
            record (:data:`GENERATED_README_KEYS`) are refused.
        resume: continue the killed training of this name and base from its checkpoint
            (:mod:`reprodl.training.checkpoint`); :class:`ResumeError` when there is none.
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
        readme: Mapping[str, Any] | None = None,
        resume: bool = False,
    ) -> None:
        self.base_uri = base_uri
        self.resume = resume
        self.name = name
        self.train_sets = _as_list(source)
        if not self.train_sets:
            raise ParametersError("DerivedDataSet needs at least one training dataset")
        self.valid_sets = _as_list(valid)
        self.test_sets = _as_list(test)
        self.parent = parent
        self.extra_readme = check_readme_fields(readme or {})
        check_label_compatibility(self.train_sets + self.valid_sets + self.test_sets)
        self.uri: str | None = None
        self.writer: DatasetWriter | None = None
        self.entered = False
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
        self.entered = True
        if _another_rank():  # under torchrun rank 0 writes the model; this rank only trains
            return self
        base = local_path(self.base_uri)
        if base is not None:
            base.mkdir(parents=True, exist_ok=True)  # a missing base directory is created, as by start_run
        resume_from = find_resumable(self.base_uri, self.name) if self.resume else None
        self.writer = self._stack.enter_context(create_dataset(self.base_uri, self.name, resume_from=resume_from))
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


def as_output(output_ds: Any, train_ds: WrappedDataSet) -> DerivedDataSet:
    """The model dataset to write: ``output_ds`` itself, or a :class:`DerivedDataSet` over a
    dtoolcore ``DataSetCreator``/``DerivedDataSetCreator`` entered by the caller (the paper's
    ``with DerivedDataSetCreator(name, base_uri, train_ds) as output_ds:``).

    With a dtoolcore creator, the items go straight into its proto dataset and the creator freezes
    it when its block ends; the record, weights, README and annotations are those a
    :class:`DerivedDataSet` writes.
    """
    if isinstance(output_ds, DerivedDataSet):
        return output_ds
    proto = getattr(output_ds, "proto_dataset", None)
    if proto is None or not hasattr(output_ds, "prepare_staging_abspath_promise"):
        raise ParametersError(
            f"output_ds should be a reprodl DerivedDataSet or a dtoolcore DataSetCreator, but got "
            f"{type(output_ds).__name__}: use `with DerivedDataSet(base_uri, name, train_ds) as output_ds:`"
        )
    staging = getattr(output_ds, "_tmpdir", None)
    if staging is None:
        raise ParametersError(
            f"the {type(output_ds).__name__} {output_ds.name!r} must be entered first: "
            f"`with {type(output_ds).__name__}(name, base_uri, train_ds) as output_ds:`"
        )
    source_uuid = proto.get_annotation("source_dataset_uuid") if "source_dataset_uuid" in _names(proto) else None
    if source_uuid is not None and source_uuid != train_ds.uuid:
        raise ParametersError(
            f"{output_ds.name!r} derives from the dataset {source_uuid}, but train_ds is {train_ds.name} "
            f"({train_ds.uuid}): pass the training dataset as DerivedDataSetCreator's source"
        )
    out = DerivedDataSet(str(output_ds.uri).rsplit("/", 1)[0], output_ds.name, train_ds)
    out.entered = True
    out.writer = writer_over(proto, staging, output_ds.name)
    out.writer.uri = out.uri = output_ds.uri
    return out


def _names(proto: Any) -> list[str]:
    try:
        return list(proto.list_annotation_names())
    except Exception:  # noqa: BLE001 - a creator without annotations: nothing to compare
        return []


def _another_rank() -> bool:
    """Whether this process is a rank other than 0 of an initialised process group (torchrun)."""
    torch = sys.modules.get("torch")  # a process group needs torch imported: never imported here
    dist = getattr(torch, "distributed", None)
    return bool(dist is not None and dist.is_available() and dist.is_initialized() and dist.get_rank() != 0)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def check_readme_fields(readme: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``readme`` (fields for the model's README), refused unless JSON-able and unreserved."""
    if not isinstance(readme, Mapping):
        raise ParametersError(
            f"readme should be a mapping of README fields, but got readme={readme!r}: "
            "give e.g. {description: ..., owners: [...]}"
        )
    not_text = [k for k in readme if not isinstance(k, str)]
    if not_text:
        raise ParametersError(f"readme keys must be text, but got {not_text}: quote them")
    reserved = sorted(set(readme) & GENERATED_README_KEYS)
    if reserved:
        raise ParametersError(
            f"readme keys {reserved} are written by reprodl from the provenance record: "
            "rename them (description, owners, project... are yours to set)"
        )
    try:
        return dict(json.loads(json.dumps(dict(readme), allow_nan=False)))
    except (TypeError, ValueError) as exc:
        raise ParametersError(
            f"readme values must be text, numbers, booleans, lists or mappings ({exc}): fix the readme fields"
        ) from None


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


def parent_ref(parent: str | None) -> ModelRef | None:
    """The lineage reference of the model dataset at ``parent`` (None for no parent)."""
    if parent is None:
        return None
    from reprodl.modeldataset.read import read_record

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
    trace: bytes | None = None,
    more_weights: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    oplogs: Mapping[str, bytes] | None = None,
) -> None:
    """Write weights (safetensors), record, history, README and annotations into the output.

    ``trace`` is the step trace's ``trace.npy``; ``record.results.trace`` (set by the caller)
    gets its item name and sha256, so the record digest covers it. ``model`` is the default
    (first) model; ``more_weights`` maps the item of each other model the record names
    (``models/<name>.safetensors``) to its weights. A record without named models (the
    built-in trainer's) gets its one model and optimiser named ``model``. ``oplogs``: the
    operation logs by item (``oplog/step-1.jsonl``), each named in ``record.results.trace.oplog``.
    """
    writer = output_ds.writer
    assert writer is not None
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    record.results.weights_sha256 = state_dict_sha256(state)
    _write_weights(writer, state, initial_state)
    for relpath, weights in (more_weights or {}).items():
        _write_weights(writer, {k: v.detach().cpu().contiguous() for k, v in weights.items()}, None, relpath=relpath)
    _name_components(record)
    if patch:
        assert record.code.git is not None
        record.code.git.patch_item = keys.CODE_PATCH_FILE
        writer.put_bytes(patch.encode(), keys.CODE_PATCH_FILE)
    for relpath, path in (code_files or {}).items():
        writer.put_item(path, relpath)
    if trace is not None and record.results.trace is not None:
        record.results.trace.item = keys.TRACE_FILE
        record.results.trace.sha256 = "sha256:" + hashlib.sha256(trace).hexdigest()
        writer.put_bytes(trace, keys.TRACE_FILE)
        for relpath, data in (oplogs or {}).items():
            writer.put_bytes(data, relpath)
    for relpath, entries in (manifests or {}).items():
        if relpath not in writer.relpaths:
            writer.put_json(entries, relpath)
    record = record.sealed()
    writer.put_bytes(record.to_json().encode(), keys.PROVENANCE_FILE)
    writer.put_json([m.model_dump(mode="json") for m in record.results.history], keys.HISTORY_FILE)
    writer.put_readme(model_readme(record, extra=output_ds.extra_readme))
    for name, value in mirror_annotations(record).items():
        writer.put_annotation(name, value)
    output_ds.record = record


def _name_components(record: ProvenanceRecord) -> None:
    """Give a record without named models its one model and optimiser, both named ``model``."""
    if record.models:
        return
    record.models = record.model_components()
    t = record.training
    if not t.optimizers:
        t.optimizers = [
            OptimizerComponent(
                **t.optimizer.model_dump(),
                name=DEFAULT_MODEL_NAME,
                model=DEFAULT_MODEL_NAME,
                scheduler=t.scheduler,
                steps=t.optimizer_steps or 0,
            )
        ]


def _write_weights(
    writer: DatasetWriter,
    state: dict[str, torch.Tensor],
    initial_state: dict[str, torch.Tensor] | None,
    *,
    relpath: str = keys.WEIGHTS_FILE,
) -> None:
    """The trained weights, and the initial ones when they cannot be had again otherwise."""
    from safetensors.torch import save_file

    with writer.item_file(relpath) as path:
        save_file(_unshare(state), str(path), metadata={"format": "pt", "reprodl": __version__})
    if initial_state is not None:
        with writer.item_file(keys.INITIAL_WEIGHTS_FILE) as path:
            save_file(_unshare({k: v.cpu().contiguous() for k, v in initial_state.items()}), str(path))


def _unshare(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with tensors that share storage cloned apart (safetensors refuses shared ones)."""
    seen: set[int] = set()
    out = {}
    for k, v in state.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else -1
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


def model_readme(record: ProvenanceRecord, *, extra: Mapping[str, Any] | None = None) -> str:
    """README.yml of a model dataset: a summary for people (the record is authoritative).

    ``extra`` adds the caller's fields (:func:`check_readme_fields`); its ``description``
    replaces the generated one.
    """
    t = record.training
    data: dict[str, Any] = {
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
    if record.lineage.replicates:
        data["replicates"] = record.lineage.replicates.uri
    data.update(check_readme_fields(extra or {}))
    return yaml.safe_dump(json.loads(json.dumps(data)), sort_keys=False)
