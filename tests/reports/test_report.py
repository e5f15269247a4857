"""The HTML report: what it shows for a model, a dataset, a claim and a summary, escaped and offline.

The page is checked as text here (sections, numbers, escaping, no network loads); the
browser test (test_report_browser.py) renders it in Chromium.
"""

from __future__ import annotations

import io
import json
import os
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

pytest.register_assert_rewrite("train_fixtures")

from remote_servers import *  # noqa: F403 - the server fixtures
from remote_servers import HTTPServer
from train_fixtures import TrainedModel, item_file, rewrite_model

pytest_plugins = ["train_fixtures"]

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


class _Loads(HTMLParser):
    """Tags and every URL-bearing attribute of a page, as a browser parses it."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.urls: list[str] = []
        self.css: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self._in_style = tag == "style"
        for name, value in attrs:
            if name in ("src", "href", "xlink:href", "srcset", "poster", "data", "action", "background"):
                self.urls.append(value or "")
            if name == "style":
                self.css.append(value or "")

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.css.append(data)


def external_loads(page: str) -> list[str]:
    """What the page would load at view time: URLs that are not embedded PNGs, CSS url(), loading tags."""
    parser = _Loads()
    parser.feed(page)
    loads = [u for u in parser.urls if not u.startswith("data:image/png;base64,")]
    loads += [c for c in parser.css if "url(" in c or "@import" in c]
    return loads + sorted(parser.tags & {"script", "link", "iframe", "object", "embed", "base", "frame"})


def check_offline(page: str) -> None:
    assert '<meta http-equiv="Content-Security-Policy" content="default-src &#x27;none&#x27;; img-src data:' in page
    assert external_loads(page) == []


def test_the_offline_check_catches_loads() -> None:
    assert external_loads('<img src="http://x/y.png"><p style="background:url(http://x)"></p><script></script>') == [
        "http://x/y.png",
        "background:url(http://x)",
        "script",
    ]


def test_model_report_shows_every_section_with_the_evaluation_computed_now(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    import reprodl

    result = reprodl.report(trained_model.uri, tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    record = trained_model.record
    assert result.kind == "model" and result.bytes == len(page.encode()) and result.notes == []
    assert result.sections == ["summary", "curves", "evaluation", "lineage", "trace", "environment", "record"]
    assert record.data[0].uuid in page and record.digest in page and "checks out" in page
    assert "computed now, by evaluating the model on its recorded valid data digits" in page
    # The evaluation now agrees with the recorded final validation accuracy (same model, same data).
    assert f"{record.results.final['valid_accuracy']:.2%}</span> on 359 samples" in page
    assert "baseline: majority" in page and "baseline: stratified random" in page
    assert page.count("data:image/png;base64,") == 2  # curves and step trace
    assert "<svg" in page and ">train+valid</text>" in page  # the lineage graph
    check_offline(page)


def test_report_without_evaluation_says_why_there_is_no_confusion_matrix(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    from reprodl.reports import render

    page, kind, notes = render(trained_model.uri, evaluate=False)
    assert kind == "model"
    assert "Not shown: evaluation turned off." in page
    assert notes == ["confusion matrix: evaluation turned off"]


def test_hostile_record_strings_are_escaped(trained_model: TrainedModel, tmp_path: Path) -> None:
    from reprodl.reports import render

    def edit(raw: dict) -> None:
        raw["model_name"] = HOSTILE
        raw["data"][0]["name"] = HOSTILE
        raw["data"][0]["readme"] = f"description: {HOSTILE}"
        raw["architecture"]["import_path"] = f"evil:{HOSTILE}"
        raw["results"]["final"][HOSTILE] = 1.0
        raw["environment"]["packages"][HOSTILE] = HOSTILE

    uri = rewrite_model(trained_model.uri, tmp_path, "hostile", edit=edit)
    page, _, notes = render(uri)
    assert "<script>" not in page and "<img src=x" not in page and "onerror=alert(1)>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert any("could not be evaluated" in n for n in notes)  # the untrusted class was refused, not imported
    check_offline(page)


def test_an_altered_record_is_reported_with_a_warning(trained_model: TrainedModel, tmp_path: Path) -> None:
    from reprodl.reports import render

    uri = rewrite_model(trained_model.uri, tmp_path, "altered", edit=lambda r: r.update(model_name="x"), reseal=False)
    page, _, notes = render(uri, evaluate=False)
    assert '<div class="banner">The provenance record does not check out' in page
    assert "DOES NOT CHECK OUT" in page


def _fake_reproduction(trained_model: TrainedModel, base: Path, *, diverge_at: int) -> str:
    """A copy of the model whose record says it reproduces it, its trace changed from one step on."""
    from reprodl import keys

    rows = np.load(item_file(trained_model.uri, keys.TRACE_FILE), allow_pickle=False)
    rows["digest"][diverge_at - 1 :, 0] ^= 1
    buf = io.BytesIO()
    np.save(buf, rows, allow_pickle=False)
    import hashlib

    digest = "sha256:" + hashlib.sha256(buf.getvalue()).hexdigest()
    record = trained_model.record

    def edit(raw: dict) -> None:
        raw["model_name"] = "digits-model.reproduction"
        raw["results"]["trace"]["sha256"] = digest
        raw["lineage"]["reproduces"] = {
            "uri": trained_model.uri,
            "uuid": record_uuid(trained_model),
            "record_digest": record.digest,
            "weights_sha256": record.results.weights_sha256,
        }

    return rewrite_model(
        trained_model.uri, base, "digits-model.reproduction", edit=edit, replace={keys.TRACE_FILE: buf.getvalue()}
    )


def record_uuid(model: TrainedModel) -> str:
    from reprodl.store import open_dataset

    return open_dataset(model.uri).uuid


def test_a_reproduction_and_its_original_show_the_first_divergent_step(
    trained_model: TrainedModel, model_copy: Path, tmp_path: Path
) -> None:
    from reprodl.reports import render

    repro = _fake_reproduction(trained_model, model_copy.parent, diverge_at=7)
    page, _, notes = render(repro, evaluate=False)
    assert notes == ["confusion matrix: evaluation turned off"]  # the marked trace plot was drawn
    assert "this model against the original it reproduces" in page
    assert "first divergent optimiser step: 7 (epoch 1, batch 7)" in page
    assert '<th>first divergent step</th><td><span class="bad">7</span>' in page  # marked on the trace
    assert "reproduced as" in page  # the graph's edge from the original
    # The original (a copy beside the reproduction: same UUID) finds its reproduction there.
    page, _, _ = render(str(model_copy), evaluate=False)
    assert "reproduction digits-model.reproduction against this model" in page
    assert "first divergent optimiser step: 7" in page


def test_dataset_report_shows_readme_counts_per_class_and_samples(digits_split_master: str, tmp_path: Path) -> None:
    import reprodl

    result = reprodl.report(digits_split_master, tmp_path / "digits.html")
    page = (tmp_path / "digits.html").read_text()
    assert result.kind == "dataset" and result.sections == ["about", "readme", "classes", "samples", "items"]
    assert "<td>total</td><td>1797</td><td class=num>1438</td><td class=num>359</td>" in page
    assert page.count('class="sample"') == 60  # 6 samples of each of the 10 digits
    check_offline(page)


def test_image_dataset_report_shows_its_images(image_uri: str, tmp_path: Path) -> None:
    from reprodl.reports import render

    page, kind, notes = render(image_uri)
    assert kind == "dataset" and notes == []
    assert page.count('class="sample"') == 9  # ant 3, bee 2, cat 4
    assert "<figcaption>bee</figcaption>" in page


def test_claim_report_shows_verdict_baselines_and_runs(tmp_path: Path) -> None:
    from reprodl.reports import render
    from reprodl.reproduction.claims import RunValue, judge, write_claim

    runs = {
        side: [
            RunValue(seed=i, value=v, uri=f"file:///m/{side}{i}", record_digest="sha256:0") for i, v in enumerate(vs)
        ]
        for side, vs in {"a": [0.9, 0.92, 0.91], "b": [0.5, 0.52, HOSTILE_VALUE]}.items()
    }
    result = judge(runs, metric="valid_accuracy", vary=["init", "order"], recipes={"a": HOSTILE, "b": "b.yaml"})
    result.baselines = {"majority": {"accuracy": 0.1, "probability_a_better": 1.0, "probability_b_better": 1.0}}
    uri = write_claim(result, str(tmp_path), "a-vs-b")
    page, kind, _ = render(uri)
    assert kind == "claim"
    assert '<span class="big">A better</span>' in page
    assert "file:///m/b2" in page and "majority" in page
    assert "<script>" not in page
    check_offline(page)


HOSTILE_VALUE = 0.51


def test_summary_report_draws_the_envelope(tmp_path: Path) -> None:
    from reprodl import keys
    from reprodl.reports import render
    from reprodl.store import create_dataset

    row = {"epoch": 1, "mean": 0.5, "std": 0.1, "min": 0.4, "max": 0.6, "n": 2}
    summary = {
        "kind": keys.KIND_SUMMARY,
        "varied": "seed",
        "n_runs": 2,
        "models": [{"uri": "file:///m/s0", "uuid": "u0", "seed": 0, "final": {"valid_accuracy": 0.6}}],
        "per_epoch": {"valid_accuracy": [row, {**row, "epoch": 2}]},
        "final": {"valid_accuracy": row},
    }
    with create_dataset(str(tmp_path), "runs.summary", readme="name: runs") as writer:
        writer.put_json(summary, keys.SUMMARY_FILE)
        writer.put_annotation(keys.MODEL_KIND, keys.KIND_SUMMARY)
    page, kind, _ = render(str(writer.uri))
    assert kind == keys.KIND_SUMMARY and "2 runs varying the seed" in page and "file:///m/s0" in page
    assert page.count("data:image/png;base64,") == 1


def test_bad_uri_and_bad_output_are_refused_with_the_fix(trained_model: TrainedModel, tmp_path: Path) -> None:
    import reprodl
    from reprodl.errors import DatasetNotFoundError, ParametersError

    with pytest.raises(DatasetNotFoundError, match="no dataset at"):
        reprodl.report(str(tmp_path / "nothing"), tmp_path / "r.html")
    with pytest.raises(ParametersError, match="does not exist: create it first"):
        reprodl.report(trained_model.uri, tmp_path / "missing" / "r.html")
    with pytest.raises(ParametersError, match="is a directory: give a file name"):
        reprodl.report(trained_model.uri, tmp_path)
    assert not list(tmp_path.glob(".reprodl-report-*"))


def test_a_report_is_readable_as_the_umask_says_and_never_replaces_a_file_unasked(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    import reprodl
    from reprodl.errors import ParametersError

    target = tmp_path / "thesis.tex"
    target.write_text("years of work")
    with pytest.raises(ParametersError, match="already exists: choose another file, or replace it with --overwrite"):
        reprodl.report(trained_model.uri, target, evaluate=False)
    assert target.read_text() == "years of work"
    old = os.umask(0o022)
    try:
        reprodl.report(trained_model.uri, tmp_path / "r.html", evaluate=False)
        assert (tmp_path / "r.html").stat().st_mode & 0o777 == 0o644  # mkstemp's 0600 would hide it
        os.umask(0o077)
        reprodl.report(trained_model.uri, tmp_path / "r.html", evaluate=False, overwrite=True)
        assert (tmp_path / "r.html").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_cli_report_prints_json_and_progress(cli, trained_model: TrainedModel, tmp_path: Path) -> None:
    result = cli("report", trained_model.uri, "-o", tmp_path / "r.html", "--json", "--no-evaluate")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"uri", "output", "kind", "bytes", "seconds", "sections", "notes"}
    assert data["kind"] == "model" and data["bytes"] == (tmp_path / "r.html").stat().st_size
    result = cli("report", trained_model.uri, "-o", tmp_path / "r.html", "--no-evaluate")
    assert result.exit_code != 0 and "already exists" in result.stderr and "--overwrite" in result.stderr
    result = cli("report", trained_model.uri, "-o", tmp_path / "r.html", "--no-evaluate", "--overwrite")
    assert result.exit_code == 0
    assert "reading the provenance record..." in result.stderr
    assert "not shown: confusion matrix: evaluation turned off" in result.stderr
    assert result.stdout.startswith("Report (model, ")
    result = cli("report", str(tmp_path / "nothing"), "-o", tmp_path / "r2.html")
    assert result.exit_code != 0 and "no dataset at" in result.stderr


def test_reports_of_a_model_and_a_dataset_served_over_http(
    http_server: HTTPServer, dtool_cache: Path, trained_model: TrainedModel
) -> None:
    import shutil

    from reprodl.reports import render

    shutil.copytree(trained_model.path, http_server.root / "report-model", dirs_exist_ok=True)
    page, kind, notes = render(http_server.uri("report-model"))
    assert kind == "model" and notes == []
    assert "computed now, by evaluating the model" in page and http_server.uri("report-model") in page
    page, kind, notes = render(http_server.uri("images"))
    assert kind == "dataset" and notes == [] and page.count('class="sample"') == 12  # 3 classes of 4
    check_offline(page)


def test_without_matplotlib_the_page_shows_the_numbers_and_says_how_to_get_plots(
    trained_model: TrainedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from reprodl.reports import render

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    page, _, notes = render(trained_model.uri, evaluate=False)
    assert "pip install &#x27;reprodl[report]&#x27;" in page
    assert any(n.startswith("training and validation curves: plots in a report need matplotlib") for n in notes)
    assert "per-epoch numbers" in page and "data:image/png" not in page


def test_claim_and_summary_json_of_the_wrong_shape_still_render(tmp_path: Path) -> None:
    from reprodl import keys
    from reprodl.reports import render
    from reprodl.store import create_dataset

    claim = {
        "verdict": HOSTILE,
        "probability_a_better": "high",
        "ci_low": None,
        "runs": {"a": [{"seed": 0, "uri": HOSTILE}, "not a run"], "b": 3},
        "baselines": {"majority": "0.1"},
        "recipes": [HOSTILE],
    }
    summary = {"final": [1, 2], "models": {"uri": 1}, "per_epoch": {"valid_accuracy": [{"epoch": "one"}]}}
    uris = {}
    for name, kind, item, doc in (
        ("c", keys.KIND_CLAIM, keys.CLAIM_FILE, claim),
        ("s", keys.KIND_SUMMARY, keys.SUMMARY_FILE, summary),
    ):
        with create_dataset(str(tmp_path), name, readme="") as writer:
            writer.put_json(doc, item)
            writer.put_annotation(keys.MODEL_KIND, kind)
        uris[name] = str(writer.uri)
    page, kind, _ = render(uris["c"])
    assert kind == keys.KIND_CLAIM and "P(A&gt;B) on None ?, ? interval [?, ?]" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    page, kind, notes = render(uris["s"])
    assert kind == keys.KIND_SUMMARY
    assert notes == [
        "seed envelope: the recorded values cannot be plotted (ValueError: could not convert string to float: 'one')"
    ]


def test_a_run_api_model_shows_what_it_logged(tmp_path: Path) -> None:
    import torch

    import reprodl
    from reprodl.reports import render

    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 4, generator=g), torch.randint(0, 2, (32,), generator=g))
    with reprodl.start_run(str(tmp_path), "tiny", seed=3) as run:
        model = torch.nn.Linear(4, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        run.watch(model, optimizer, loss=torch.nn.CrossEntropyLoss())
        for epoch in range(2):
            for step, (x, y) in enumerate(run.loader(data, batch_size=8, shuffle=True)):
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                optimizer.step()
                run.log(step=epoch * 4 + step + 1, batch_loss=loss)
            run.log(epoch=epoch + 1, train_loss=loss, test_accuracy=0.5)
        run.save(model)
    assert run.uri is not None
    page, kind, notes = render(run.uri)
    assert kind == "model" and "<h3>Metrics logged with run.log</h3>" in page and "10 entries logged" in page
    assert page.count("data:image/png;base64,") == 3  # epoch curves, logged metrics, step trace
    assert notes == ["confusion matrix: the record names no validation or test data"]
