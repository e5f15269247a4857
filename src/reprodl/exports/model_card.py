"""A model's record as a Hugging Face style model card (Markdown with YAML front matter).

The front matter carries ``library_name``, ``license`` (the Hub's id for the model's licence:
its README's, else its training data's; ``other`` with ``license_name`` for one the Hub does
not list, ``unknown`` when none is stated), metrics under ``model-index`` (each on the data it
was measured on: ``valid_*`` on the validation data, ``train_*`` on the training data) and,
under ``reprodl``, each dataset's URI, UUID and manifest digest with the record and weights
digests and the parent model. The Hub's ``datasets`` and ``base_model`` name Hub ids, which a
dtool URI is not, so they are left out; ``model-index`` names datasets by their dtool names.
The body is the provenance summary ``reprodl provenance`` prints.

A record's strings are someone else's, and a card is rendered as HTML (on the Hub, in an IDE):
in the Markdown text each is one line with HTML (``<script>``) and link syntax escaped, so a
``javascript:`` link or raw HTML shows as text; code blocks take a fence longer than any run of
backticks inside them, so no string closes its block.
"""

from __future__ import annotations

import html
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from reprodl.exports.formats import ExportOptions
from reprodl.exports.source import Source, model_licence
from reprodl.provenance import ProvenanceRecord, summary_lines

_ROLES = {"valid_": "valid", "test_": "test", "train_": "train"}  # a final metric's prefix: the data it was measured on


def front_matter(source: Source) -> dict[str, Any]:
    """The card's YAML metadata, from the record."""
    record = source.model_record("model-card")
    meta: dict[str, Any] = {
        "library_name": "pytorch",
        "tags": ["reprodl", "pytorch", "safetensors", "image-classification"],
        "pipeline_tag": "image-classification",
        **_licence(source, record),
    }
    meta["model-index"] = [{"name": record.model_name, "results": _results(record)}]
    meta["reprodl"] = {
        "uri": source.uri,
        "uuid": source.dataset.uuid,
        "record_digest": record.digest,
        "weights_sha256": record.results.weights_sha256,
        "architecture": record.architecture.import_path,
        "datasets": [
            {
                "role": r.role,
                "uri": r.uri,
                "uuid": r.uuid,
                "name": r.name,
                "manifest_digest": r.manifest_digest,
                "usetype": r.usetype,
                "n_items": r.n_items,
            }
            for r in record.data
        ],
    }
    if record.lineage.parent is not None:
        meta["reprodl"]["base_model"] = record.lineage.parent.model_dump(mode="json")
    return meta


def _licence(source: Source, record: ProvenanceRecord) -> dict[str, str]:
    """The Hub's ``license`` (and ``license_name`` for one it does not list)."""
    licence = model_licence(source, record)
    if licence is None:
        return {"license": "unknown"}
    if licence.spdx is not None:
        return {"license": licence.spdx.lower()}
    slug = re.sub(r"[^a-z0-9]+", "-", licence.text.lower()).strip("-") or "unnamed"
    return {"license": "other", "license_name": slug[:100]}


def _results(record: ProvenanceRecord) -> list[dict[str, Any]]:
    """model-index results: each final metric on the data it was measured on (its prefix's role)."""
    results = []
    for prefix, role in _ROLES.items():
        refs = record.data_by_role(role)
        metrics = [
            {"type": name[len(prefix) :], "name": name, "value": float(value)}
            for name, value in sorted(record.results.final.items())
            if name.startswith(prefix) and isinstance(value, (int, float)) and not isinstance(value, bool)
        ]
        if refs and metrics:
            ref = refs[0]
            dataset = {"name": ref.name, "type": ref.name, "split": ref.usetype or role}
            results.append({"task": {"type": "image-classification"}, "dataset": dataset, "metrics": metrics})
    return results


def model_card(source: Source) -> str:
    """The model card: YAML front matter, then the provenance summary."""
    record = source.model_record("model-card")
    meta = yaml.safe_dump(front_matter(source), sort_keys=False, allow_unicode=True)
    arch = record.architecture
    body = [
        f"# {_text(record.model_name)}",
        "",
        f"A {_text(arch.class_name)} ({arch.n_parameters:,} parameters) trained with reprodl; "
        f"{record.training.epochs} epochs on {_text(', '.join(sorted({r.name for r in record.data})))}.",
        "",
        "## Use",
        "",
        *_code("python", ["from reprodl import TrainedTorchModel", f"model = TrainedTorchModel({source.uri!r})"]),
        "",
        "## Reproduce",
        "",
        *_code("bash", [f"reprodl reproduce {shlex.quote(source.uri)}"]),
        "",
        "## Provenance",
        "",
        *_code("text", summary_lines(record)),
        "",
    ]
    return f"---\n{meta}---\n\n" + "\n".join(body)


_MARKDOWN_SYNTAX = re.compile(r"([\\`*_\[\]()!|~])")


def _text(value: str) -> str:
    """A record string as inert Markdown text: one line, HTML escaped (``<script>`` shows as
    text) and Markdown's emphasis, code and link syntax backslash-escaped (no link is formed)."""
    one_line = " ".join(str(value).split())
    return _MARKDOWN_SYNTAX.sub(r"\\\1", html.escape(one_line, quote=False))


def _code(language: str, lines: list[str]) -> list[str]:
    """A fenced code block whose fence is longer than any run of backticks in ``lines``."""
    longest = max((len(run) for line in lines for run in re.findall(r"`+", line)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + language, *(line.replace("\r", " ") for line in lines), fence]


def write(source: Source, path: Path, options: ExportOptions) -> dict[str, Any]:
    """The ``model-card`` format's writer (:mod:`reprodl.exports.formats`): the card to ``path``."""
    path.write_text(model_card(source), encoding="utf-8")
    return {}
