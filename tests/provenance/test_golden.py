"""Golden files: a provenance record and a model dataset of this schema version, committed
under tests/golden/ (made by tests/golden/make_golden.py), read by today's code.

A change to the record format must be deliberate: these fail when today's reprodl cannot read
the golden files, or writes a record whose keys differ from the golden one's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from reprodl import keys

pytest_plugins = ["train_fixtures"]

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
GOLDEN_RECORD = GOLDEN / keys.PROVENANCE_FILE
GOLDEN_MODEL = GOLDEN / "digits-golden"
GOLDEN_VERSION = "1.3"
# Every schema version's golden files, kept so that old records stay readable (the newest is GOLDEN).
VERSIONS = {"1.0": GOLDEN / "1.0", "1.1": GOLDEN / "1.1", "1.2": GOLDEN / "1.2", GOLDEN_VERSION: GOLDEN}
FORMAT_CHANGED = "the record format changed: bump keys.PROVENANCE_SCHEMA_VERSION and keep old records readable"
# Digits 1403, 1406, 1408, 1417 and 1419 of scikit-learn's set (held out from the golden
# training): the golden model's predictions for them, each with a margin over 0.9 in log-probability.
PINNED = {1403: 2, 1406: 9, 1408: 4, 1417: 2, 1419: 4}


@pytest.fixture(params=sorted(VERSIONS))
def version(request: pytest.FixtureRequest) -> str:
    """Each schema version whose golden files are kept."""
    return str(request.param)


@pytest.fixture
def golden_model(tmp_path: Path, version: str) -> Path:
    """A copy of that version's golden model dataset: the tests never write into tests/golden."""
    dest = tmp_path / "digits-golden"
    shutil.copytree(VERSIONS[version] / "digits-golden", dest)
    return dest


def _golden_raw() -> dict[str, Any]:
    return json.loads(GOLDEN_RECORD.read_text(encoding="utf-8"))


def test_the_golden_record_reads_and_its_digest_checks(version: str):
    from reprodl.provenance import parse_record

    path = VERSIONS[version] / keys.PROVENANCE_FILE
    record = parse_record(path.read_bytes(), source=str(path))
    record.check_digest()
    assert record.schema_version == version
    assert record.architecture.import_path == "reprodl.zoo:GenNet"
    assert record.architecture.init_params == {"input_dim": 8}
    assert (record.training.optimizer.module, record.training.optimizer.class_name) == ("torch.optim.sgd", "SGD")
    assert record.training.scheduler is not None and record.training.scheduler.class_name == "StepLR"
    assert record.training.loss.class_name == "NLLLoss"
    seeds = record.training.seeds
    assert (seeds.seed, seeds.python, seeds.numpy, seeds.torch) == (0, 0, 0, 0)
    assert [d.role for d in record.data] == ["train", "valid"]
    assert record.results.weights_sha256 == ("sha256:3e9bd7a75da619677486e16800b62971b4f0f08e93cf1c3650db233635d7cff8")


def test_the_golden_files_are_of_the_current_schema_version():
    assert keys.PROVENANCE_SCHEMA_VERSION == GOLDEN_VERSION, (
        f"the schema version is now {keys.PROVENANCE_SCHEMA_VERSION}: keep tests/golden's "
        f"{GOLDEN_VERSION} files (and a test that reads them) and make new ones with tests/golden/make_golden.py"
    )


def test_the_golden_record_is_the_golden_models_record(version: str):
    item = VERSIONS[version] / "digits-golden" / "data" / keys.PROVENANCE_FILE
    assert item.read_bytes() == (VERSIONS[version] / keys.PROVENANCE_FILE).read_bytes()


def test_the_golden_model_opens_and_verifies(golden_model: Path):
    from reprodl.modeldataset.read import read_record
    from reprodl.modeldataset.verify import verify_model
    from reprodl.store import open_dataset

    ds = open_dataset(str(golden_model))
    assert ds.name == "digits-golden"
    assert ds.get_annotation(keys.MODEL_KIND) == keys.KIND_MODEL
    record = read_record(ds)
    raw = json.loads((golden_model / "data" / keys.PROVENANCE_FILE).read_text(encoding="utf-8"))
    assert ds.get_annotation(keys.RECORD_DIGEST) == record.digest == raw["digest"]
    report = verify_model(str(golden_model))
    assert report.ok, [c for c in report.checks if not c.ok]
    assert any(c.name == "weights match the record" and c.ok for c in report.checks)


def test_the_golden_weights_match_the_record_digest(golden_model: Path):
    from reprodl.modeldataset.read import load_weights, read_record
    from reprodl.modeldataset.weights import state_dict_sha256
    from reprodl.store import open_dataset

    ds = open_dataset(str(golden_model))
    state = load_weights(ds, read_record(ds))
    assert state_dict_sha256(state) == read_record(ds).results.weights_sha256


def test_the_golden_model_predicts_the_pinned_classes(golden_model: Path):
    from reprodl import TrainedTorchModel
    from reprodl.data.creators import digits_arrays

    model = TrainedTorchModel(str(golden_model))
    images, _ = digits_arrays()
    rows = list(PINNED)
    batch = torch.as_tensor(images[rows].astype(np.float32) / 255.0)[:, None]
    assert model.predict(batch).tolist() == list(PINNED.values())
    assert model.predict_categories(batch) == [str(v) for v in PINNED.values()]


# --- the format has not changed by accident ----------------------------------------------------
def _model_of(node: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any] | None:
    """The record part (a schema definition) a property holds, directly, as list items or optionally."""
    options = [node, *node.get("anyOf", [])]
    for part in options + [option.get("items", {}) for option in options]:
        if "$ref" in part:
            return schema["$defs"][str(part["$ref"]).rsplit("/", 1)[-1]]
    return None


def _key_differences(golden: Any, fresh: Any, model: dict[str, Any], schema: dict[str, Any], path: str) -> list[str]:
    """Keys of record parts (not of free-form mappings such as params) in one record and not the other."""
    if golden is None or fresh is None:  # an optional part absent on one side (no git here)
        return []
    if isinstance(golden, list) and isinstance(fresh, list):
        if not golden or not fresh:
            return []
        return _key_differences(golden[0], fresh[0], model, schema, path + "[]")
    if not isinstance(golden, dict) or not isinstance(fresh, dict):
        return [f"{path}: {type(golden).__name__} in the golden record, {type(fresh).__name__} now"]
    prefix = path + "." if path else ""
    problems = [f"{prefix}{k}: in the golden record, not written now" for k in golden.keys() - fresh.keys()]
    problems += [f"{prefix}{k}: written now, not in the golden record" for k in fresh.keys() - golden.keys()]
    for key in golden.keys() & fresh.keys():
        part = _model_of(model.get("properties", {}).get(key, {}), schema)
        if part is not None:
            problems += _key_differences(golden[key], fresh[key], part, schema, prefix + key)
    return sorted(problems)


def test_the_key_walk_names_added_removed_and_nested_keys():
    from reprodl.provenance import record_json_schema

    schema = record_json_schema()
    golden = _golden_raw()
    fresh = json.loads(json.dumps(golden))
    fresh["training"]["seeds"]["extra"] = 1
    del fresh["data"][0]["labels_digest"]
    fresh["training"]["params"]["user_key"] = 1  # a free-form mapping: its keys are data
    assert _key_differences(golden, fresh, schema, schema, "") == [
        "data[].labels_digest: in the golden record, not written now",
        "training.seeds.extra: written now, not in the golden record",
    ]


def test_a_fresh_record_has_the_golden_records_keys(digits_split_master: str, tmp_path: Path):
    from train_fixtures import train_digits

    from reprodl.provenance import record_json_schema

    _, record = train_digits(
        tmp_path,
        "fresh",
        digits_split_master,
        scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
    )
    schema = record_json_schema()
    fresh = json.loads(record.to_json())
    problems = _key_differences(_golden_raw(), fresh, schema, schema, "")
    assert not problems, FORMAT_CHANGED + ":\n  " + "\n  ".join(problems)
