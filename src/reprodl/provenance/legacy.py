"""Models made by the original dtoolAI (0.2.0): what they recorded, shown for reading only."""

from __future__ import annotations

import json
from typing import Any

from reprodl import keys
from reprodl.store import StoredDataSet, open_dataset


def legacy_provenance(ds: StoredDataSet) -> dict[str, Any] | None:
    """What the original dtoolAI recorded for a model (annotations only), or None.

    dtoolAI 0.2.0 kept the architecture name, the training parameters and the source dataset
    in annotations, which stay writable after freezing: this is shown for reading, never
    trusted for checks (there is no record item or digest to verify it against).
    """
    name = ds.get_annotation(keys.MODEL_NAME)
    if name is None:
        return None
    source_uri = ds.get_annotation(keys.SOURCE_DATASET_URI)
    info: dict[str, Any] = {
        "made_by": "dtoolAI (annotations only; no reprodl record)",
        "model_name": name,
        "model_parameters": ds.get_annotation(keys.MODEL_PARAMETERS),
        "source_dataset_uri": source_uri,
        "source_dataset_name": ds.get_annotation(keys.SOURCE_DATASET_NAME),
        "source_dataset_uuid": ds.get_annotation(keys.SOURCE_DATASET_UUID),
        "source_dataset_readme": None,
    }
    if source_uri:
        try:
            info["source_dataset_readme"] = open_dataset(source_uri).get_readme_content()
        except Exception as exc:  # noqa: BLE001 - an unreachable source is reported, not fatal
            info["source_dataset_readme_error"] = str(exc)
    return info


def legacy_summary_lines(info: dict[str, Any]) -> list[str]:
    """The lines dtoolAI's ``dtoolai-provenance`` printed, for a model it made."""
    lines = [
        f"Network architecture name: {info['model_name']}",
        f"Model training parameters: {json.dumps(info['model_parameters'], sort_keys=True, default=str)}",
        f"Source dataset URI: {info['source_dataset_uri']}",
        f"Source dataset name: {info['source_dataset_name']}",
        "Source dataset readme:",
    ]
    if info.get("source_dataset_readme") is not None:
        lines += [line for line in info["source_dataset_readme"].rstrip().splitlines()]
    else:
        lines.append(f"    (unavailable: {info.get('source_dataset_readme_error', 'no source URI')})")
    weights = info.get("weights")
    if weights:
        lines.append(
            f"Weights: {weights['item']}, a plain state dict of {weights['tensors']} tensors "
            f"({weights['values']:,} values), read with torch.load(weights_only=True)"
        )
    lines.append(
        f"Note: {info['made_by']}; `reprodl verify` and `reprodl reproduce` need a reprodl record "
        "(`reprodl convert URI BASE_URI` writes one from these annotations)."
    )
    return lines
