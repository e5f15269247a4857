"""`reprodl provenance|train|predict|evaluate|reproduce|verify|lineage|diff|schema|demo`.

Run in-process through the ``cli`` fixture (Typer's CliRunner, stdout and stderr apart),
and as real processes where what matters is the process (no torch import, console scripts).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from reprodl import keys
from reprodl.errors import ExitCode
from reprodl.modeldataset.read import load_record
from reprodl.provenance import parse_record
from reprodl.store import open_dataset

pytest.register_assert_rewrite("train_fixtures")

from train_fixtures import digit_image, digits_config, flip_byte, item_file, path_of, train_digits

pytest_plugins = ["train_fixtures"]

BIN = Path(sys.executable).parent


def _ok(result) -> None:
    assert result.exit_code == 0, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"


def _failed(result, match: str, code: int = ExitCode.FAILED) -> None:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert match in result.stdout + result.stderr, result.stdout + result.stderr


def _write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# --- provenance ---------------------------------------------------------------------------------


def test_provenance_prints_what_the_papers_helper_printed(cli, trained_model):
    result = cli("provenance", trained_model.uri)
    _ok(result)
    text = result.stdout
    record = trained_model.record
    data = open_dataset(trained_model.data_uri)
    assert "Network architecture name: reprodl.zoo:GenNet" in text
    assert "Model training parameters: {" in text
    assert '"batch_size": 32,' in text and '"learning_rate": 0.05' in text
    assert f"Source dataset (train) URI: {data.uri}" in text
    assert "Source dataset (train) name: digits" in text
    assert f"Source dataset (train) UUID: {data.uuid}" in text
    assert "Source dataset (train) items: 1438 (usetype train)" in text
    assert "Source dataset (train) readme:" in text
    for line in data.get_readme_content().splitlines():
        assert f"    {line}" in text  # the source README, indented
    assert "Optimiser: SGD" in text and '"momentum": 0.9' in text
    assert "Epoch 3: train loss" in text
    assert f"Record digest: {record.digest}" in text


def test_provenance_json_is_the_record(cli, trained_model):
    result = cli("provenance", trained_model.uri, "--json")
    _ok(result)
    assert json.loads(result.stdout) == trained_model.record.model_dump(mode="json")


def test_provenance_of_an_edited_record_fails(cli, model_copy):
    record_file = model_copy / "data" / keys.PROVENANCE_FILE
    record_file.write_text(record_file.read_text().replace('"n_epochs": 3', '"n_epochs": 30'))
    result = cli("provenance", str(model_copy))
    _failed(result, "the provenance record was altered")
    assert result.stdout == "" and "Error:" in result.stderr


def test_provenance_imports_no_torch_and_the_papers_script_name_works(trained_model):
    code = textwrap.dedent(f"""
        import sys
        from reprodl.cli import main
        sys.argv = ["reprodl", "provenance", {trained_model.uri!r}]
        try:
            main()
        except SystemExit as exc:
            assert exc.code in (0, None), exc.code
        assert "torch" not in sys.modules, "provenance imported torch"
        print("NO TORCH")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Network architecture name: reprodl.zoo:GenNet" in proc.stdout and "NO TORCH" in proc.stdout
    proc = subprocess.run(
        [str(BIN / "reprodl-provenance"), trained_model.uri], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "Source dataset (train) name: digits" in proc.stdout


# --- train --------------------------------------------------------------------------------------


def test_train_records_overrides_and_the_config(cli, digits_split_master, tmp_path):
    (tmp_path / "models").mkdir()
    config = _write_config(tmp_path / "train.yaml", digits_config(digits_split_master, "models"))
    result = cli("train", config, "--set", "lr=0.1", "--set", "optimizer.momentum=0.5", "--json")
    _ok(result)
    out = json.loads(result.stdout)
    assert out["uri"] == open_dataset(tmp_path / "models" / "digits-cnn").uri  # relative to the config file
    record = load_record(out["uri"])
    assert out["record_digest"] == record.digest and out["final"] == record.results.final
    assert record.training.params["learning_rate"] == 0.1
    group = record.training.optimizer.param_groups[0]
    assert (group["lr"], group["momentum"]) == (0.1, 0.5)
    assert record.code.config_file == str(config.resolve())
    assert record.code.config["params"]["learning_rate"] == 0.1


def test_train_prints_epochs_and_the_model(cli, digits_split_master, tmp_path):
    config = _write_config(tmp_path / "train.yaml", digits_config(digits_split_master, str(tmp_path), epochs=2))
    result = cli("train", config, "--set", "epochs=2")
    _ok(result)
    assert "Model dataset: file://" in result.stdout
    assert "epoch 1: train loss" in result.stderr and "epoch 2: train loss" in result.stderr
    assert "valid accuracy" in result.stderr


def test_train_seeds_writes_a_summary(cli, digits_split_master, tmp_path):
    config = _write_config(tmp_path / "train.yaml", digits_config(digits_split_master, str(tmp_path)))
    result = cli("train", config, "--seeds", "2", "--json")
    _ok(result)
    out = json.loads(result.stdout)
    assert len(out["models"]) == 2 and out["summary"]["n_runs"] == 2
    assert set(out["summary"]["final"]) == {"train_loss", "valid_loss", "valid_accuracy"}
    assert [load_record(u).training.seeds.seed for u in out["models"]] == [0, 1]
    assert open_dataset(out["summary_uri"]).name == "digits-cnn.summary"
    text = cli("train", config, "--set", "name=again", "--splits", "2")
    _ok(text)
    assert "Summary dataset: file://" in text.stdout and "valid_accuracy: mean" in text.stdout


@pytest.mark.parametrize(
    "args, match",
    [
        (["--set", "batch_size=0"], "batch_size"),
        (["--set", "data=3"], "the config does not validate"),
        (["--set", "lr"], "should look like key=value"),
    ],
)
def test_train_bad_config_exits_2_and_writes_nothing(cli, digits_split_master, tmp_path, args, match):
    out = tmp_path / "models"
    out.mkdir()
    config = _write_config(tmp_path / "train.yaml", digits_config(digits_split_master, str(out)))
    result = cli("train", config, *args)
    _failed(result, match, code=ExitCode.USAGE)
    assert "Error:" in result.stderr and list(out.iterdir()) == []


# --- predict and evaluate -------------------------------------------------------------------


def test_predict_images_of_any_mode_and_size(cli, trained_model, tmp_path):
    from reprodl import TensorDataSet, TrainedTorchModel

    held_out = TensorDataSet(trained_model.data_uri, usetype="test")
    model = TrainedTorchModel(trained_model.uri)
    paths = []
    for i, (size, mode) in enumerate([(8, "L"), (32, "RGB"), (16, "RGBA")]):
        path = tmp_path / f"digit{i}.png"
        digit_image(held_out.data[held_out.rows[i]], size=size, mode=mode).save(path)
        paths.append(path)
    result = cli("predict", trained_model.uri, *paths, "--json")
    _ok(result)
    from PIL import Image

    expected = [model.convert_and_predict(Image.open(p)) for p in paths]
    assert json.loads(result.stdout) == [{"image": str(p), "category": c} for p, c in zip(paths, expected)]
    text = cli("predict", trained_model.uri, paths[0])
    _ok(text)
    assert text.stdout.strip() == f"{paths[0]}: {expected[0]}"


def test_evaluate_on_the_test_split(cli, trained_model):
    from reprodl import TensorDataSet, TrainedTorchModel

    expected = TrainedTorchModel(trained_model.uri).evaluate(TensorDataSet(trained_model.data_uri, usetype="test"))
    result = cli("evaluate", trained_model.uri, trained_model.data_uri, "--usetype", "test", "--json")
    _ok(result)
    assert json.loads(result.stdout) == json.loads(json.dumps(expected))
    text = cli("evaluate", trained_model.uri, trained_model.data_uri, "--usetype", "test")
    _ok(text)
    assert f"accuracy {expected['accuracy']:.2%} on 359 samples (majority-class baseline" in text.stdout
    assert "class  precision  recall  support" in text.stdout


# --- reproduce, verify, lineage, diff -----------------------------------------------------------


def test_reproduce_identical_exits_0(cli, trained_model, tmp_path):
    result = cli("reproduce", trained_model.uri, "-q", "--output", tmp_path)
    _ok(result)
    assert "Verdict: identical" in result.stdout
    assert "weights: 6/6 tensors bit-identical" in result.stdout
    assert "data  train/valid digits: unchanged" in result.stdout
    assert "environment: same as recorded" in result.stdout
    assert "reproduction: file://" in result.stdout
    as_json = cli("reproduce", trained_model.uri, "--json")
    _ok(as_json)
    report = json.loads(as_json.stdout)
    assert report["verdict"] == "identical" and report["ok"] is True and report["weights"]["identical"] is True


def test_reproduce_refuses_changed_data_with_exit_1(cli, digits_split_uri, tmp_path):
    uri, _ = train_digits(tmp_path, "model", digits_split_uri, valid=False)
    flip_byte(item_file(digits_split_uri, "labels.npy"))
    result = cli("reproduce", uri, "-q")
    _failed(result, "refusing to reproduce")
    assert "labels.npy" in result.stderr and "Verdict" not in result.stdout


def test_verify_passes_and_fails_on_tampering(cli, trained_model, model_copy):
    result = cli("verify", trained_model.uri, "--data")
    _ok(result)
    assert "All checks passed." in result.stdout
    flip_byte(model_copy / "data" / keys.WEIGHTS_FILE, offset=-3)
    result = cli("verify", str(model_copy))
    _failed(result, "Verification FAILED.")
    assert "FAILED  model dataset items match its manifest" in result.stdout
    assert "FAILED  weights match the record" in result.stdout
    as_json = cli("verify", str(model_copy), "--json")
    assert as_json.exit_code == 1 and json.loads(as_json.stdout)["ok"] is False


def test_lineage_shows_the_chain_and_a_broken_link(cli, digits_split_master, tmp_path):
    from reprodl.training.config import build_and_train, load_config

    parent, _ = build_and_train(
        load_config(digits_config(digits_split_master, tmp_path, name="parent")), progress=False
    )
    cfg = digits_config(digits_split_master, tmp_path, name="child")
    cfg.update(parent=parent, freeze=["conv1"])
    child, _ = build_and_train(load_config(cfg), progress=False)
    result = cli("lineage", child)
    _ok(result)
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"child {child} (reprodl.zoo:GenNet; train:digits, valid:digits)")
    assert "frozen: conv1.weight, conv1.bias" in lines[0]
    assert lines[1].startswith(f"  └─ parent {parent}") and lines[1].endswith("[link ok]")
    as_json = cli("lineage", child, "--json")
    assert [e["name"] for e in json.loads(as_json.stdout)] == ["child", "parent"]

    record_file = path_of(parent) / "data" / keys.PROVENANCE_FILE
    raw = json.loads(record_file.read_text())
    raw["model_name"] = "someone-else"
    record_file.write_text(parse_record(json.dumps(raw)).sealed().to_json())
    result = cli("lineage", child)
    _failed(result, "[LINK BROKEN: digest differs]")


def test_diff_shows_differing_hyperparameters(cli, trained_model, digits_split_master, tmp_path):
    other, _ = train_digits(tmp_path, "slower", digits_split_master, n_epochs=3, learning_rate=0.02)
    result = cli("diff", trained_model.uri, other)
    _ok(result)
    assert "hyperparameters" in result.stdout
    assert "params.learning_rate" in result.stdout and "0.05" in result.stdout and "0.02" in result.stdout
    as_json = json.loads(cli("diff", trained_model.uri, other, "--json").stdout)
    rows = {r["key"]: (r["a"], r["b"]) for r in as_json["hyperparameters"]}
    assert rows["params.learning_rate"] == (0.05, 0.02)
    same = cli("diff", trained_model.uri, trained_model.uri)
    _ok(same)
    assert "The two records do not differ (beyond timings)." in same.stdout


# --- schema ---------------------------------------------------------------------------------------


def test_schema_is_a_json_schema_that_real_records_satisfy(cli, trained_model):
    import jsonschema

    result = cli("schema")
    _ok(result)
    schema = json.loads(result.stdout)
    assert schema["$id"] == keys.PROVENANCE_SCHEMA_ID
    validator = jsonschema.Draft202012Validator(schema)
    validator.check_schema(schema)
    record = json.loads((trained_model.path / "data" / keys.PROVENANCE_FILE).read_text())
    validator.validate(record)
    broken = dict(record)
    del broken["architecture"]
    with pytest.raises(jsonschema.ValidationError, match="'architecture' is a required property"):
        validator.validate(broken)
    _ok(cli("schema", "readme"))
    assert cli("schema", "nonsense").exit_code == ExitCode.USAGE


# --- demo ---------------------------------------------------------------------------------------


def test_demo_runs_the_whole_workflow(cli, tmp_path):
    result = cli("demo", "--workdir", tmp_path, "--epochs", "2", "-q")
    _ok(result)
    text = result.stdout
    for step in ("== 1.", "== 2.", "== 3.", "== 4.", "== 5.", "== 6."):
        assert step in text
    assert "Network architecture name: reprodl.zoo:GenNet" in text
    assert "Verdict: identical" in text and "Demo finished" in text
    (run,) = tmp_path.iterdir()
    assert (run / "models" / "digits-cnn").is_dir() and len(list((run / "images").iterdir())) == 5


def test_provenance_of_a_model_made_by_dtoolai_prints_its_annotations(cli, digits_split_master, tmp_path):
    """dtoolAI 0.2.0 kept provenance in annotations beside a pickled model.pt."""
    from reprodl.store import create_dataset, open_dataset

    source = open_dataset(digits_split_master)
    import io

    import torch

    from reprodl.zoo import SimpleScalingCNN

    buf = io.BytesIO()
    torch.save(SimpleScalingCNN(1, 28).state_dict(), buf)  # what dtoolAI's training saved
    with create_dataset(str(tmp_path), "mnist_model", readme="name: mnist_model\n") as w:
        w.put_bytes(buf.getvalue(), "model.pt")
        w.put_annotation("model_name", "dtoolai.simpleScalingCNN")
        w.put_annotation(
            "model_parameters",
            {
                "batch_size": 128,
                "learning_rate": 0.01,
                "n_epochs": 1,
                "init_params": {"input_channels": 1, "input_dim": 28},
            },
        )
        w.put_annotation("source_dataset_uri", source.uri)
        w.put_annotation("source_dataset_name", source.name)
        w.put_annotation("source_dataset_uuid", source.uuid)
    result = cli("provenance", w.uri)
    assert result.exit_code == 0, result.stderr
    assert "Network architecture name: dtoolai.simpleScalingCNN" in result.stdout
    assert f"Source dataset URI: {source.uri}" in result.stdout
    assert "Source dataset name: digits" in result.stdout
    assert "E. Alpaydin" in result.stdout  # the source dataset's README, fetched by URI
    assert "no reprodl record" in result.stdout
    as_json = json.loads(cli("provenance", w.uri, "--json").stdout)
    assert as_json["model_parameters"]["init_params"] == {"input_channels": 1, "input_dim": 28}
    assert "Weights: model.pt, a plain state dict of 8 tensors" in result.stdout  # read with weights_only=True
    # This one never had its category_encoding annotation: its outputs cannot be named.
    refused = cli("predict", w.uri, str(tmp_path / "x.png"))
    assert refused.exit_code == 2 and "no category_encoding annotation" in refused.stderr


def test_the_summary_counts_optimisers_groups_and_an_uncounted_epoch() -> None:
    """A nanoGPT-like record (two parameter groups, epochs never logged) and a GAN's (two optimisers): the
    headline optimiser says it is one of several, and "Epochs: 0" is not printed as a count."""
    from reprodl.provenance.summary import _optimiser_line

    group = {"lr": 0.001}
    opt = SimpleNamespace(class_name="AdamW", param_groups=[group, {"lr": 0.001, "weight_decay": 0.0}])
    one = SimpleNamespace(optimizer=opt, optimizers=[opt])
    assert _optimiser_line(one).endswith("(parameter group 1 of 2 (all in the record))")
    two = SimpleNamespace(optimizer=SimpleNamespace(class_name="Adam", param_groups=[group]), optimizers=[opt, opt])
    assert _optimiser_line(two) == 'Optimiser: Adam {"lr": 0.001} (1 more optimiser(s) below)'
    from reprodl.provenance import ProvenanceRecord
    from reprodl.provenance.summary import summary_lines

    golden = Path(__file__).resolve().parents[1] / "golden" / "provenance.json"
    record = ProvenanceRecord.model_validate_json(golden.read_text())
    record.training.epochs = 0
    line = next(x for x in summary_lines(record) if x.startswith("Epochs:"))
    assert line.startswith("Epochs: not counted (no epoch logged), optimiser steps: ")
