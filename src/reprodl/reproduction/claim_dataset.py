"""The claim dataset: writing ``claim.json`` and its plot, reading it back, and refusing a damaged one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reprodl import __version__, keys
from reprodl.errors import DatasetFormatError
from reprodl.files import read_regular
from reprodl.parsing import load_json
from reprodl.reproduction.claim_stats import Comparison


def plot_distributions(comparison: Comparison, path: str | Path) -> None:
    """PNG of both recipes' final metric: one point per run, a line per pair, the mean of each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = [r.value for r in comparison.runs["a"]]
    b = [r.value for r in comparison.runs["b"]]
    fig, ax = plt.subplots(figsize=(4.5, 3.6))
    for x, y in zip(a, b):
        ax.plot([0, 1], [x, y], color="0.75", lw=0.8, zorder=1)
    ax.scatter([0] * len(a), a, label="A", zorder=2)
    ax.scatter([1] * len(b), b, label="B", zorder=2)
    ax.hlines([sum(a) / len(a), sum(b) / len(b)], [-0.15, 0.85], [0.15, 1.15], colors="k", lw=2)
    ax.set_xticks([0, 1], ["A", "B"])
    ax.set_xlim(-0.5, 1.5)
    ax.set_ylabel(comparison.metric)
    ax.set_title(
        f"{comparison.verdict}: P(A>B) {comparison.probability_a_better:.2f} "
        f"[{comparison.ci_low:.2f}, {comparison.ci_high:.2f}]",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_claim(comparison: Comparison, output: str, name: str) -> str:
    """Write the comparison as a claim dataset (``claim.json``, the plot); its URI."""
    import yaml

    from reprodl.store import create_dataset

    summary = {"kind": keys.KIND_CLAIM, "reprodl_version": __version__, **comparison.to_dict()}
    summary.pop("claim_uri")
    readme = yaml.safe_dump(
        {
            "name": name,
            "description": f"{comparison.verdict}: P(A>B) on {comparison.metric} over {comparison.n} paired runs",
            "rule": comparison.rule,
            "recipes": comparison.recipes,
        },
        sort_keys=False,
    )
    with create_dataset(output, name, readme=readme) as writer:
        writer.put_json(summary, keys.CLAIM_FILE)
        try:
            with writer.item_file(keys.CLAIM_PLOT_FILE) as png:
                plot_distributions(comparison, png)
        except ImportError:
            pass  # matplotlib is optional: the numbers are what count
        writer.put_annotation(keys.MODEL_KIND, keys.KIND_CLAIM)
        writer.put_annotation(keys.SUMMARY_MEMBERS, [r.uri for side in ("a", "b") for r in comparison.runs[side]])
    assert writer.uri is not None
    return writer.uri


def is_claim(uri: str) -> bool:
    """Whether the dataset at ``uri`` is a claim (its ``reprodl.kind`` annotation)."""
    from reprodl.store import open_dataset

    ds = open_dataset(uri)
    return keys.MODEL_KIND in ds.annotation_names() and ds.get_annotation(keys.MODEL_KIND) == keys.KIND_CLAIM


def load_claim(uri: str) -> dict[str, Any]:
    """The ``claim.json`` of the claim dataset at ``uri``."""
    from reprodl.store import open_dataset

    ds = open_dataset(uri)
    what = f"{ds.uri}: {keys.CLAIM_FILE}"
    data = read_regular(
        ds.item_path(ds.identifier_of(keys.CLAIM_FILE)), keys.MAX_METADATA_BYTES, what=what, error=DatasetFormatError
    )
    return load_json(data, what=what, error=DatasetFormatError)


def _claim_problem(claim: Any) -> str | None:
    """What makes ``claim`` (a parsed ``claim.json``) unlike any claim reprodl writes; None if nothing."""
    if not isinstance(claim, dict):
        return f"it holds a JSON {type(claim).__name__}, not an object"
    if not isinstance(claim.get("metric", ""), str):
        return f"its metric is {claim['metric']!r}, not a name"
    runs = claim.get("runs", {})
    if not isinstance(runs, dict):
        return f"its runs are a JSON {type(runs).__name__}, not an object with the lists 'a' and 'b'"
    for side in ("a", "b"):
        members = runs.get(side, [])
        if not isinstance(members, list):
            return f"runs.{side} is a JSON {type(members).__name__}, not a list of members"
        for i, member in enumerate(members):
            if not isinstance(member, dict) or not isinstance(member.get("uri"), str) or not member["uri"]:
                return f"runs.{side}[{i}] is {repr(member)[:80]}, not a member with a 'uri' (a string)"
    return None


def check_claim(claim: Any, uri: str) -> None:
    """Refuse a ``claim.json`` whose shape is not what reprodl writes, naming the field."""
    problem = _claim_problem(claim)
    if problem is not None:
        raise DatasetFormatError(
            f"{uri}: {keys.CLAIM_FILE} is not a claim reprodl can check: {problem}. It was edited or damaged: "
            "use an intact copy, or make the claim again (`reprodl compare`, or `reprodl collect` of its runs)"
        )
