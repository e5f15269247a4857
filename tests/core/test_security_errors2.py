"""Issue 17, item 15: the tracebacks and misleading messages of the second hostile-input round.

Each test builds the hostile input as an attacker who can write where a dataset or model lives
would (an edited record resealed, a manifest or http manifest rewritten, a full disk) and runs
the real entry point: the message names the input and the fix, on stderr, with the project's
exit code and no traceback.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import remote_servers
import yaml
from conftest import snapshot
from remote_servers import dtool_cache  # noqa: F401 - a fixture
from train_fixtures import digits_config, path_of, rewrite_model

from reprodl import keys
from reprodl.errors import ExitCode

pytest_plugins = ["train_fixtures"]

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _refused(result: Any, *matches: str, code: int = ExitCode.USAGE) -> None:
    """The command failed cleanly: its exit code, 'Error:' and each of ``matches`` on stderr, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    text = " ".join(result.stderr.split())  # Rich wraps long lines
    assert "Error:" in text, result.stderr
    for match in matches:
        assert match in text, (match, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


def _write_config(tmp_path: Path, cfg: dict[str, Any]) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


# --- records: the step trace, names in plots, MLflow ------------------------------------


def test_a_trace_header_claiming_2_40_rows_is_refused_before_allocating(cli, tmp_path, trained_model):
    from reprodl.errors import ModelLoadError
    from reprodl.modeldataset.read import load_trace, read_record
    from reprodl.store import open_dataset

    rows = np.load(trained_model.path / "data" / keys.TRACE_FILE, allow_pickle=False)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": np.lib.format.dtype_to_descr(rows.dtype), "fortran_order": False, "shape": (2**40,)}
    )
    evil = header.getvalue() + rows.tobytes()

    def edit(raw: dict[str, Any]) -> None:
        raw["results"]["trace"]["sha256"] = "sha256:" + hashlib.sha256(evil).hexdigest()

    uri = rewrite_model(trained_model.uri, tmp_path, "trace", edit=edit, replace={keys.TRACE_FILE: evil})
    ds = open_dataset(uri)
    with pytest.raises(ModelLoadError, match=r"trace\.npy: its header claims shape \(1099511627776,\)"):
        load_trace(ds, read_record(ds))
    result = cli("report", uri, "-o", tmp_path / "r.html", "--no-evaluate", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert "step trace" in result.stderr and "header claims shape (1099511627776,)" in " ".join(result.stderr.split())
    assert "use an intact copy" in " ".join(result.stderr.split())


@pytest.mark.parametrize("name", ["$" + "{" * 400 + "x" + "}" * 400 + "$", r"$\frac{$"])
def test_a_metric_name_with_mathtext_is_shown_as_text(cli, tmp_path, trained_model, name):
    pytest.importorskip("matplotlib")

    def edit(raw: dict[str, Any]) -> None:
        raw["results"]["logged"] = [{"step": 1, name: 0.5}, {"step": 2, name: 0.4}]

    uri = rewrite_model(trained_model.uri, tmp_path, "metric", edit=edit)
    result = cli("report", uri, "-o", tmp_path / "r.html", "--no-evaluate", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.stderr and "logged metrics" not in result.stderr  # drawn, not left out
    assert "Metrics logged with run.log" in (tmp_path / "r.html").read_text()


@pytest.mark.parametrize(
    "edit_logged, match",
    [
        (lambda raw: raw["training"]["params"].update(user={"../../x": 1}), "a parameter named 'user.../../x'"),
        (lambda raw: raw["results"].update(logged=[{"step": 1, "../../m": 0.5}]), "a metric named '../../m'"),
        (lambda raw: raw["results"].update(logged=[{"epoch": "abc", "acc": 0.5}]), "has epoch 'abc', not a whole"),
    ],
)
def test_an_mlflow_export_of_unusable_names_or_steps_is_refused(cli, tmp_path, trained_model, edit_logged, match):
    pytest.importorskip("mlflow")
    uri = rewrite_model(trained_model.uri, tmp_path, "ml", edit=edit_logged)
    store = tmp_path / "mlruns"
    _refused(cli("export", uri, "-f", "mlflow", "--tracking-uri", store, "--quiet"), match, "--format ro-crate")
    assert not store.exists()  # refused before any run was made


def test_a_run_mlflow_refuses_part_way_is_deleted_and_named(cli, tmp_path, trained_model, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.entities import ViewType
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    def refuse(self: Any, *args: Any, **kwargs: Any) -> None:
        raise MlflowException("Dataset name exceeds the maximum length")

    monkeypatch.setattr(MlflowClient, "log_inputs", refuse)
    store = tmp_path / "mlruns"
    result = cli("export", trained_model.uri, "-f", "mlflow", "--tracking-uri", store, "--quiet")
    _refused(result, "MLflow refused the record of", "Dataset name exceeds the maximum length", "was deleted")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    experiment = client.get_experiment_by_name("reprodl")
    runs = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL)
    assert [r.info.lifecycle_stage for r in runs] == ["deleted"]


# --- full disks ------------------------------------------------------------------------


def _cli_with_file_limit(limit: int, *args: Any, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``reprodl ARGS`` in a child whose files may grow to ``limit`` bytes (RLIMIT_FSIZE: EFBIG)."""
    code = (
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
        "from reprodl.cli import main\n"
        "sys.argv = ['reprodl', *sys.argv[1:]]\n"
        "main()\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "COLUMNS": "400"}
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


@pytest.mark.skipif(os.name != "posix", reason="needs RLIMIT_FSIZE")
def test_a_full_disk_while_creating_a_dataset_names_it_and_keeps_nothing(tmp_path, base_dir):
    """NumPy reports a short write as an OSError with no errno ("N requested and M written")."""
    done = _cli_with_file_limit(20_000, "dataset", "create-digits", base_dir, "digits", cwd=tmp_path)
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert "Traceback" not in done.stderr
    assert "could not write the dataset 'digits'" in done.stderr
    assert "the disk is full or a file is over its size limit" in done.stderr and "free some space" in done.stderr
    assert snapshot(base_dir) == []


@pytest.mark.skipif(os.name != "posix", reason="needs RLIMIT_FSIZE")
def test_a_full_disk_while_writing_a_report_names_it_and_keeps_nothing(tmp_path, trained_model):
    out = tmp_path / "out"
    out.mkdir()
    done = _cli_with_file_limit(
        20_000, "report", trained_model.uri, "-o", out / "r.html", "--no-evaluate", "-q", cwd=tmp_path
    )
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert "Traceback" not in done.stderr
    assert f"could not write the report {out / 'r.html'}: File too large" in done.stderr
    assert "the disk is full" in done.stderr and "free some space" in done.stderr
    assert snapshot(out) == []


@pytest.mark.skipif(os.name != "posix", reason="needs RLIMIT_FSIZE")
@pytest.mark.parametrize("fmt, target", [("model-card", "card.md"), ("prov", "prov.json"), ("ro-crate", "crate")])
def test_a_full_disk_while_exporting_names_the_output_and_keeps_nothing(tmp_path, trained_model, fmt, target):
    out = tmp_path / "out"
    out.mkdir()
    done = _cli_with_file_limit(2_000, "export", trained_model.uri, "-f", fmt, "-o", out / target, "-q", cwd=tmp_path)
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert "Traceback" not in done.stderr
    assert f"could not write the {fmt} export {out / target}: File too large. Nothing was written there" in done.stderr
    assert "free some space" in done.stderr
    assert snapshot(out) == []


# --- manifests and http manifests ------------------------------------------------------


def test_manifest_sizes_given_as_text_are_refused_naming_the_item(cli, digits_uri):
    manifest = Path(digits_uri) / ".dtool" / "manifest.json"
    doc = json.loads(manifest.read_text())
    for props in doc["items"].values():
        props["size_in_bytes"] = str(props["size_in_bytes"])
    manifest.write_text(json.dumps(doc))
    for command in ("info", "verify", "stats"):
        _refused(cli("dataset", command, digits_uri), "whose manifest size_in_bytes is '", "use an intact copy")


@pytest.fixture(scope="module")
def hostile_http(tmp_path_factory: pytest.TempPathFactory):
    """A dtool-http server over copies of the digits dataset, each with its own flaw."""
    pytest.importorskip("dtool_http")
    import requests

    from reprodl.data.creators import create_digits

    root = tmp_path_factory.mktemp("hostile-http")
    master = Path(path_of(create_digits(str(tmp_path_factory.mktemp("master")), "digits")))
    for name in ("digits", "no-url", "no-admin", "no-readme", "bad-annotation", "bad-tag"):
        shutil.copytree(master, root / name)
    (root / "no-readme" / "README.yml").unlink()
    log = tmp_path_factory.mktemp("hostile-http-log") / "server.log"
    cmd = [sys.executable, "-u", remote_servers.__file__, "http", str(root)]
    with remote_servers._server(cmd, log, r"serving on 127\.0\.0\.1:(\d+)") as port:
        server = remote_servers.HTTPServer(root, port, log)
        generated = requests.get(server.uri("digits") + "/http_manifest.json", timeout=30).json()

        def publish(name: str, edit: Any) -> None:
            doc = json.loads(json.dumps(generated).replace("/digits/", f"/{name}/"))
            edit(doc)
            (root / name / "http_manifest.json").write_text(json.dumps(doc))  # served as it is

        publish("no-url", lambda d: d["item_urls"].pop(next(iter(d["item_urls"]))))
        publish("no-admin", lambda d: d.pop("admin_metadata"))
        publish("bad-annotation", lambda d: d["annotations"].update({"../x": d["annotations"][keys.INPUT_TYPE]}))
        publish("bad-tag", lambda d: d.update(tags=["../x"]))
        yield server


@pytest.mark.usefixtures("dtool_cache")
def test_an_http_manifest_missing_an_item_url_names_the_item(cli, hostile_http, tmp_path):
    uri = hostile_http.uri("no-url")
    _refused(cli("dataset", "verify", uri), "/no-url/http_manifest.json has no URL for the item '", "dtool publish")
    (tmp_path / "copies").mkdir()
    _refused(cli("dataset", "copy", uri, tmp_path / "copies"), "has no URL for the item")
    assert snapshot(tmp_path / "copies") == []


@pytest.mark.usefixtures("dtool_cache")
def test_an_http_manifest_without_admin_metadata_is_named(cli, hostile_http):
    _refused(
        cli("dataset", "info", hostile_http.uri("no-admin")),
        "/no-admin/http_manifest.json has no 'admin_metadata'",
        "publish the dataset again",
    )


@pytest.mark.usefixtures("dtool_cache")
def test_a_readme_answering_404_is_not_called_no_dataset(cli, hostile_http):
    result = cli("dataset", "info", hostile_http.uri("no-readme"))
    _refused(result, "the README of dataset", "is missing on its server (404), although the dataset itself is there")
    assert "no dataset" not in result.stderr


@pytest.mark.usefixtures("dtool_cache")
@pytest.mark.parametrize("name, kind", [("bad-annotation", "an annotation"), ("bad-tag", "a tag")])
def test_an_annotation_or_tag_named_as_a_path_is_refused_on_copy(cli, hostile_http, tmp_path, name, kind):
    dest = tmp_path / "copies"
    dest.mkdir()
    _refused(cli("dataset", "copy", hostile_http.uri(name), dest), f"has {kind} named '../x', which dtool does not")
    assert snapshot(dest) == []
    assert not (tmp_path / "x.json").exists()


# --- claims -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "claim, match",
    [
        ([1, 2], "it holds a JSON list, not an object"),
        ({"metric": "valid_accuracy", "runs": [1]}, "its runs are a JSON list"),
        ({"metric": "valid_accuracy", "runs": {"a": "xyz", "b": []}}, "runs.a is a JSON str, not a list"),
        ({"metric": "valid_accuracy", "runs": {"a": [{"seed": 0}], "b": []}}, "runs.a[0] is {'seed': 0}, not a member"),
        ({"metric": "valid_accuracy", "runs": {"a": [], "b": [{"uri": 5}]}}, "runs.b[0] is {'uri': 5}"),
        ({"metric": [1], "runs": {"a": [], "b": []}}, "its metric is [1], not a name"),
    ],
)
def test_a_malformed_claim_is_refused_naming_the_field(cli, base_dir, claim, match):
    from reprodl.store import create_dataset

    with create_dataset(str(base_dir), "claim") as writer:
        writer.put_bytes(json.dumps(claim).encode(), keys.CLAIM_FILE)
        writer.put_annotation(keys.MODEL_KIND, keys.KIND_CLAIM)
    _refused(cli("verify", base_dir / "claim"), "claim.json is not a claim reprodl can check", match, "reprodl compare")


# --- parameters -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, match",
    [
        ("seed=10000000000000000000000", "seed should be a whole number from 0 to 2**63 - 1"),
        ("seed=-1", "seed should be a whole number from 0 to 2**63 - 1"),
        ("lr=1.0e+308", "learning_rate should be at most 3.403e+38 (the largest float32)"),
        ("optimizer.lr=1.0e+308", "the config's optimizer has lr=1e+308, larger than the model's torch.float32"),
        ("optimizer.weight_decay=1.0e+300", "has weight_decay=1e+300"),
    ],
)
def test_a_seed_or_learning_rate_that_overflows_is_refused(cli, tmp_path, digits_split_uri, override, match):
    (tmp_path / "models").mkdir()
    config = _write_config(tmp_path, digits_config(digits_split_uri, tmp_path / "models"))
    _refused(cli("train", config, "--set", override, "--quiet"), match)
    assert snapshot(tmp_path / "models") == []


def test_the_largest_seed_orders_the_data_without_overflow():
    from reprodl.training.params import MAX_SEED, Parameters
    from reprodl.training.seeding import SeedPlan

    plan = SeedPlan(Parameters(seed=MAX_SEED).seed)
    assert 0 <= plan.epoch_order_seed(7) < 2**64
    assert SeedPlan(12345).epoch_order_seed(3) == 12346 * 1_000_003 + 3  # unchanged where it fitted


# --- URIs, labels, names ----------------------------------------------------------------


@pytest.mark.parametrize("uri, match", [("s3://", "'s3://' names no bucket"), ("http://", "'http://' names no host")])
def test_listing_a_remote_uri_without_its_bucket_or_host_is_refused(cli, uri, match):
    _refused(cli("dataset", "ls", uri), match, "write ")


@pytest.mark.usefixtures("dtool_cache")
def test_listing_an_http_server_says_it_lists_nothing(cli, hostile_http):
    _refused(cli("dataset", "ls", f"http://127.0.0.1:{hostile_http.port}"), "lists none. Give a dataset's own URI")


def test_nan_labels_are_refused_naming_the_row(cli, tmp_path, digits_uri):
    from reprodl.store import create_dataset, open_dataset

    src = open_dataset(digits_uri)
    (tmp_path / "evil").mkdir()
    with create_dataset(str(tmp_path / "evil"), "digits", readme=src.get_readme_content()) as writer:
        for idn in src.identifiers:
            rel = src.relpath(idn)
            if rel == keys.TENSOR_LABELS_FILE:
                labels = np.load(src.item_path(idn)).astype(np.float64)
                labels[3] = np.nan
                writer.put_bytes(_npy(labels), rel)
            else:
                writer.put_item(src.item_path(idn), rel)
        for name in src.annotation_names():
            writer.put_annotation(name, src.get_annotation(name))
    uri = str(tmp_path / "evil" / "digits")
    for args in (("dataset", "info", uri), ("dataset", "stats", uri), ("dataset", "split", uri, "--test", "0.2")):
        _refused(cli(*args), "1 non-finite value(s) (NaN or infinite), the first in row 3", "recreate the dataset")
    cfg = digits_config(uri, tmp_path / "models")
    cfg["data"] = {"train": {"uri": uri}}
    (tmp_path / "models").mkdir()
    _refused(cli("train", _write_config(tmp_path, cfg), "--quiet"), "row 3")


@pytest.mark.parametrize("name", [".", ".."])
def test_the_names_dot_and_dot_dot_are_refused_not_called_taken(cli, tmp_path, base_dir, digits_split_uri, name):
    result = cli("dataset", "create-digits", base_dir, name)
    _refused(result, f"dataset name {name!r} is not allowed: it names a directory")
    assert "already exists" not in result.stderr
    (tmp_path / "models").mkdir()
    config = _write_config(tmp_path, digits_config(digits_split_uri, tmp_path / "models"))
    _refused(cli("train", config, "--set", f"name={name}", "--quiet"), "it names a directory")
    assert snapshot(base_dir) == [] and snapshot(tmp_path / "models") == []
