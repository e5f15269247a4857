"""Models made by the original dtoolAI 0.2.0: their weights, read safely, and the record their annotations allow.

dtoolAI saved a model as ``model.pt`` (``torch.save`` of a state dict, a pickle) with its
architecture name, parameters, label encoding and source dataset in annotations. The state dict
is read with ``torch.load(weights_only=True)``, whose unpickler builds tensors and plain
containers only and runs no code; anything that is not a mapping of names to tensors is refused.
The record built from the annotations says what dtoolAI did not record (``converted_from``), and
:func:`convert_dtoolai_model` writes it, with the weights as safetensors, as a reprodl model dataset.

Example:
    >>> uri = convert_dtoolai_model("http://example.org/mnist_model", "models")   # doctest: +SKIP
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from reprodl import __version__, keys, trust
from reprodl.errors import ModelLoadError, ReprodlError
from reprodl.files import read_regular
from reprodl.modeldataset.weights import state_dict_sha256
from reprodl.parsing import load_json
from reprodl.provenance import (
    Architecture,
    CallableInfo,
    DataRef,
    Determinism,
    Environment,
    OptimizerInfo,
    ProvenanceRecord,
    Results,
    Seeds,
    Training,
    mirror_annotations,
)
from reprodl.store import StoredDataSet, create_dataset, file_sha256, open_dataset

if TYPE_CHECKING:
    import torch

#: What a dtoolAI model dataset does not tell, named in every record made from one.
NOT_RECORDED = [
    "training.seeds (dtoolAI seeded nothing)",
    "training.determinism (dtoolAI set no deterministic mode)",
    "training.data_order_digests",
    "training.device",
    "architecture.initial_weights (neither seeded nor stored)",
    "environment (Python, torch, packages, hardware)",
    "code (script, git commit)",
    "results.history (dtoolAI's history.json holds summed batch losses; kept under converted_from)",
]


def is_dtoolai_model(ds: StoredDataSet) -> bool:
    """Whether ``ds`` is a model dataset written by dtoolAI: a ``model.pt`` item and a ``model_name`` annotation."""
    relpaths = {ds.relpath(i) for i in ds.identifiers}
    return (
        keys.DTOOLAI_WEIGHTS_FILE in relpaths
        and keys.PROVENANCE_FILE not in relpaths
        and bool(ds.get_annotation(keys.MODEL_NAME))
    )


def load_state_dict_file(path: str | os.PathLike[str], *, what: str) -> dict[str, torch.Tensor]:
    """A state dict from a ``torch.save`` file, read with ``weights_only=True`` (no code runs).

    Raises:
        ModelLoadError: the file holds anything but a mapping of names to tensors (``what`` names it).
    """
    import torch

    try:
        state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError...: all refusals
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"{what} is not a plain state dict of tensors: torch.load(weights_only=True) refused it ({reason}). "
            "reprodl runs no code from a pickle; if you trust its maker, load it yourself and save the state "
            "dict with safetensors"
        ) from None
    if not isinstance(state, Mapping) or not state:
        raise ModelLoadError(
            f"{what} holds a {type(state).__name__}, not a state dict (a mapping of parameter names to tensors)"
        )
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelLoadError(
            f"{what} is not a plain state dict: the entries {bad[:5]} are not named tensors "
            "(a checkpoint with an optimiser or epoch? save model.state_dict() alone)"
        )
    return dict(state)


def dtoolai_architecture(ds: StoredDataSet, model_class: type | None = None) -> tuple[str, dict[str, Any]]:
    """(import path, init_params) of a dtoolAI model: its ``model_name`` mapped to reprodl's zoo, or ``model_class``."""
    name = str(ds.get_annotation(keys.MODEL_NAME))
    params = ds.get_annotation(keys.MODEL_PARAMETERS) or {}
    init_params = params.get("init_params") if isinstance(params, Mapping) else None
    if not isinstance(init_params, Mapping):
        init_params = {}
    if model_class is not None:
        return f"{model_class.__module__}:{model_class.__qualname__}", dict(init_params)
    path = keys.DTOOLAI_ARCHITECTURES.get(name)
    if path is None:
        raise ModelLoadError(
            f"{ds.uri} was made by dtoolAI with the architecture {name!r}, which reprodl does not know "
            f"(it knows {', '.join(sorted(keys.DTOOLAI_ARCHITECTURES))}): pass the class, "
            "TrainedTorchModel(uri, model_class=YourNet)"
        )
    return path, dict(init_params)


def read_dtoolai_weights(ds: StoredDataSet) -> dict[str, torch.Tensor]:
    """The state dict in a dtoolAI model's ``model.pt`` (see :func:`load_state_dict_file`)."""
    path = ds.item_path(ds.identifier_of(keys.DTOOLAI_WEIGHTS_FILE))
    return load_state_dict_file(path, what=f"{ds.uri}: {keys.DTOOLAI_WEIGHTS_FILE}")


def dtoolai_record(
    ds: StoredDataSet,
    state: dict[str, torch.Tensor],
    *,
    import_path: str,
    init_params: dict[str, Any],
    read_source: bool = False,
) -> ProvenanceRecord:
    """The record a dtoolAI model's annotations allow (sealed); what they do not tell is named in ``converted_from``.

    ``read_source``: open the source dataset the annotations name (to record its manifest digest,
    README and input type); otherwise, and when it cannot be read, the data entry is ``unverified``.
    """
    params = ds.get_annotation(keys.MODEL_PARAMETERS) or {}
    params = dict(params) if isinstance(params, Mapping) else {}
    module, _, qualname = import_path.partition(":")
    cls = trust.resolve(import_path, trust.Kind.ARCHITECTURE) if module.startswith("reprodl.") else None
    planned = trust.planned_size(cls, init_params, what=import_path) if cls is not None else None
    record = ProvenanceRecord(
        model_name=ds.name,
        created_at=_frozen_at(ds),
        reprodl_version=__version__,
        architecture=Architecture(
            import_path=import_path,
            module=module,
            class_name=qualname,
            init_params=init_params,
            n_parameters=planned[0] if planned else 0,
            n_trainable=planned[0] if planned else 0,
        ),
        data=[_source_ref(ds, params, read_source=read_source)],
        training=_training(params),
        environment=Environment(python="unknown", implementation="unknown", platform="unknown", machine="unknown"),
        results=Results(weights_sha256=state_dict_sha256(state)),
        **{keys.CONVERTED_FROM: _converted_from(ds)},
    )
    return record.sealed()


def _frozen_at(ds: StoredDataSet) -> str:
    admin = ds.admin_metadata
    stamp = admin.get("frozen_at") or admin.get("created_at")
    try:
        when = datetime.datetime.fromtimestamp(float(stamp or ""), tz=datetime.timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        return "unknown"
    return when.isoformat(timespec="seconds")


def _training(params: dict[str, Any]) -> Training:
    """What dtoolAI's ``model_parameters`` tell of the training (its loop shuffled every epoch)."""
    optimiser = str(params.get("optimiser_name") or "unknown")
    loss = str(params.get("loss_func") or "unknown")
    lr = params.get("learning_rate")
    return Training(
        optimizer=OptimizerInfo(
            class_name=optimiser,
            module="torch.optim" if optimiser != "unknown" else "unknown",
            defaults={"lr": lr} if lr is not None else {},
        ),
        loss=CallableInfo(class_name=loss, module="torch.nn" if loss != "unknown" else "unknown"),
        epochs=_int(params.get("n_epochs")),
        batch_size=_int(params.get("batch_size")),
        shuffle=True,
        params=params,
        seeds=Seeds(seed=-1, python=-1, numpy=-1, torch=-1, dataloader_generator=-1),
        determinism=Determinism(mode="statistical", use_deterministic_algorithms=False),
        device="unknown",
    )


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _source_ref(ds: StoredDataSet, params: dict[str, Any], *, read_source: bool) -> DataRef:
    """The training data as the model's annotations name it; checked against the source when it can be read."""
    encoding = ds.get_annotation(keys.CATEGORY_ENCODING)
    if not isinstance(encoding, Mapping) or not encoding:
        raise ModelLoadError(
            f"{ds.uri} (a dtoolAI model) has no category_encoding annotation: its outputs cannot be named. "
            "Copy it from the training dataset (dtool annotation set)"
        )
    channels, dim = params.get("input_channels"), params.get("input_dim")
    shape = [int(channels), int(dim), int(dim)] if isinstance(channels, int) and isinstance(dim, int) else []
    ref: dict[str, Any] = {
        "role": "train",
        "uri": str(ds.get_annotation(keys.SOURCE_DATASET_URI) or ""),
        "uuid": str(ds.get_annotation(keys.SOURCE_DATASET_UUID) or ""),
        "name": str(ds.get_annotation(keys.SOURCE_DATASET_NAME) or ""),
        "manifest_digest": "",
        "category_encoding": {str(k): int(v) for k, v in encoding.items()},
        "input_shape": shape,
        "value_scale": 255.0,  # dtoolAI divided every input by 255
        "image_mode": {1: "L", 3: "RGB", 4: "RGBA"}.get(shape[0]) if shape else None,
        "source": "unverified",
    }
    try:
        source = open_dataset(ref["uri"]) if ref["uri"] and read_source else None
    except ReprodlError:
        source = None
    if source is not None and source.uuid == ref["uuid"]:
        kind = source.get_annotation(keys.INPUT_TYPE)
        ref.update(
            input_type=kind,
            manifest_digest=source.manifest_digest(),
            readme=source.get_readme_content(),
            n_dataset_items=len(source),
            usetype="train" if kind == keys.INPUT_TYPE_IMAGE and source.get_overlay(keys.USETYPE_OVERLAY) else None,
            source="dtool",
        )
    return DataRef(**ref)


def _converted_from(ds: StoredDataSet) -> dict[str, Any]:
    weights_sha = "sha256:" + file_sha256(ds.item_path(ds.identifier_of(keys.DTOOLAI_WEIGHTS_FILE)))  # read in blocks
    history = None
    if keys.HISTORY_FILE in {ds.relpath(i) for i in ds.identifiers}:
        what = f"{ds.uri}: {keys.HISTORY_FILE}"
        data = read_regular(
            ds.item_path(ds.identifier_of(keys.HISTORY_FILE)), keys.MAX_METADATA_BYTES, what=what, error=ModelLoadError
        )
        history = load_json(data, what=what, error=ModelLoadError)
    return {
        "tool": "dtoolAI 0.2.0",
        "uri": ds.uri,
        "uuid": ds.uuid,
        "name": ds.name,
        "weights_item": keys.DTOOLAI_WEIGHTS_FILE,
        "weights_item_sha256": weights_sha,
        "annotations": {n: ds.get_annotation(n) for n in ds.annotation_names()},
        "history": history,
        "not_recorded": list(NOT_RECORDED),
        "note": "made from dtoolAI's annotations: the data's manifest digest (when the source could be read) "
        "is its state at conversion; this model cannot be reproduced from its record",
    }


def load_dtoolai_model(
    ds: StoredDataSet, *, model_class: type | None = None, read_source: bool = False
) -> tuple[ProvenanceRecord, dict[str, torch.Tensor]]:
    """(record, state dict) of a dtoolAI model dataset, its ``model.pt`` read with ``weights_only=True``."""
    import_path, init_params = dtoolai_architecture(ds, model_class)
    state = read_dtoolai_weights(ds)
    record = dtoolai_record(ds, state, import_path=import_path, init_params=init_params, read_source=read_source)
    return record, state


def convert_dtoolai_model(uri: str, base_uri: str, name: str | None = None) -> str:
    """Write the dtoolAI model at ``uri`` as a reprodl model dataset in ``base_uri``; its URI.

    The weights are checked to build the recorded architecture, then saved as safetensors beside
    the record the annotations allow (``converted_from`` names what they did not record, and keeps
    dtoolAI's annotations and history), a README and the annotations mirroring the record.
    """
    from safetensors.torch import save_file

    ds = open_dataset(uri)
    if not is_dtoolai_model(ds):
        raise ModelLoadError(
            f"{ds.uri} is not a model made by dtoolAI (it needs a {keys.DTOOLAI_WEIGHTS_FILE} item, a model_name "
            f"annotation and no {keys.PROVENANCE_FILE}): nothing to convert"
        )
    record, state = load_dtoolai_model(ds, read_source=True)
    arch = record.architecture
    cls = trust.resolve(arch.import_path, trust.Kind.ARCHITECTURE)
    trust.check_size(cls, arch.init_params, what=arch.import_path)
    try:
        cls(**arch.init_params).load_state_dict(state)
    except (TypeError, RuntimeError) as exc:
        raise ModelLoadError(f"the weights in {ds.uri} do not fit {arch.import_path}: {exc}") from None
    from reprodl.modeldataset.write import model_readme

    description = f"{arch.class_name} trained by dtoolAI, converted by reprodl {__version__} from {ds.uri}"
    with create_dataset(
        base_uri, name or ds.name, readme=model_readme(record, extra={"description": description})
    ) as writer:
        with writer.item_file(keys.WEIGHTS_FILE) as path:
            save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt"})
        writer.put_bytes(record.to_json().encode(), keys.PROVENANCE_FILE)
        for key, value in mirror_annotations(record).items():
            writer.put_annotation(key, value)
    assert writer.uri is not None
    return writer.uri
