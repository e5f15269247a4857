"""Differences between two provenance records, section by section (``reprodl diff``)."""

from __future__ import annotations

from typing import Any

from reprodl.provenance.record import ProvenanceRecord


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, list) and obj and all(isinstance(x, dict) for x in obj):
        for i, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = obj
    return out


def _section_views(record: ProvenanceRecord) -> dict[str, dict[str, Any]]:
    r = record.model_dump(mode="json")
    t = r["training"]
    data = [{k: v for k, v in d.items() if k != "readme"} for d in r["data"]]
    return {
        "data": _flatten({d["role"] + ":" + d["name"]: d for d in data}),
        "code": _flatten(r["code"]),
        "environment": _flatten({k: v for k, v in r["environment"].items() if k != "packages"}),
        "packages": _flatten(r["environment"].get("packages", {})),
        "seeds": _flatten(t["seeds"]),
        "hyperparameters": _flatten(
            {
                "optimizer": t["optimizer"],
                "loss": t["loss"],
                "scheduler": t["scheduler"],
                "epochs": t["epochs"],
                "batch_size": t["batch_size"],
                "shuffle": t["shuffle"],
                "num_workers": t["num_workers"],
                "params": t["params"],
                "device": t["device"],
            }
        ),
        "determinism": _flatten({**t["determinism"], "data_order_digests": t["data_order_digests"]}),
        "architecture": _flatten(r["architecture"]),
        "results": _flatten(
            {
                "final": r["results"]["final"],
                "weights_sha256": r["results"]["weights_sha256"],
                "history": r["results"]["history"],
            }
        ),
    }


_VOLATILE = ("wall_time_s", "started_at", "finished_at")


def diff_records(
    a: ProvenanceRecord, b: ProvenanceRecord, *, include_volatile: bool = False
) -> dict[str, list[dict[str, Any]]]:
    """Section -> list of {key, a, b} for each value that differs."""
    va, vb = _section_views(a), _section_views(b)
    out: dict[str, list[dict[str, Any]]] = {}
    for section in va:
        rows = []
        for key in sorted(set(va[section]) | set(vb[section])):
            if not include_volatile and key.split(".")[-1].split("[")[0] in _VOLATILE:
                continue
            x, y = va[section].get(key), vb[section].get(key)
            if x != y:
                rows.append({"key": key, "a": x, "b": y})
        if rows:
            out[section] = rows
    return out
