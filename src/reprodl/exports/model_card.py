"""A model's record as a Hugging Face style model card (Markdown with YAML front matter).

The front matter carries ``library_name``, ``datasets`` (their URIs), ``base_model`` (the
parent model, when fine-tuned), metrics under ``model-index`` and, under ``reprodl``, each
dataset's URI, UUID and manifest digest with the record and weights digests; the body is the
provenance summary ``reprodl provenance`` prints.

A record's strings are someone else's, and a card is rendered as HTML (on the Hub, in an IDE):
in the Markdown text each is one line with HTML (``<script>``) and link syntax escaped, so a
``javascript:`` link or raw HTML shows as text; code blocks take a fence longer than any run of
backticks inside them, so no string closes its block.
"""

from __future__ import annotations

import html
import re
import shlex
from typing import Any

import yaml

from reprodl.exports.source import Source
from reprodl.provenance import ProvenanceRecord, summary_lines

_METRIC_TYPES = {"valid_accuracy": "accuracy", "valid_loss": "loss", "train_loss": "loss"}


def front_matter(source: Source) -> dict[str, Any]:
    """The card's YAML metadata, from the record."""
    record = source.model_record("model-card")
    meta: dict[str, Any] = {
        "library_name": "pytorch",
        "tags": ["reprodl", "pytorch", "safetensors", "image-classification"],
        "pipeline_tag": "image-classification",
        "datasets": sorted({ref.uri for ref in record.data}),
    }
    if record.lineage.parent is not None:
        meta["base_model"] = record.lineage.parent.uri
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


def _results(record: ProvenanceRecord) -> list[dict[str, Any]]:
    """model-index results: the final metrics, on the validation data when there is one."""
    refs = record.data_by_role("valid") or record.data_by_role("train")
    metrics = [
        {"type": _METRIC_TYPES.get(name, name), "name": name, "value": float(value)}
        for name, value in sorted(record.results.final.items())
        if isinstance(value, (int, float)) and not isinstance(value, bool) and name != "epoch"
    ]
    if not refs or not metrics:
        return []
    ref = refs[0]
    dataset = {"name": ref.name, "type": ref.uri, "split": ref.usetype or ref.role}
    return [{"task": {"type": "image-classification"}, "dataset": dataset, "metrics": metrics}]


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
