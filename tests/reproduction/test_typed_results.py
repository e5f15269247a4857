"""Typed results (issue 8, point 4): a reproduction report is made of typed parts.

Environment differences are :class:`EnvDifference` objects with a kind and a name, data checks
are :class:`DataCheck` objects naming the changed items, the code check is a :class:`CodeCheck`;
none is a dict read back by key or a text parsed again by prefix. Their JSON forms keep the keys
``reprodl reproduce --json`` always had.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata

import pytest
import torch

from reprodl.modeldataset.read import load_record
from reprodl.modeldataset.verify import DataCheck, check_data
from reprodl.reproduction.code import CodeCheck, check_code
from reprodl.reproduction.environment import EnvDifference, compare_environments
from reprodl.reproduction.rerun import reproduce
from reprodl.reproduction.verdict import environment_reasons
from reprodl.store import open_dataset

pytest.register_assert_rewrite("train_fixtures")

from train_fixtures import flip_byte, item_file, rewrite_model, train_digits

pytest_plugins = ["train_fixtures"]


def test_a_record_of_torch_1_13_1_gives_typed_environment_differences(trained_model, tmp_path):
    def older_torch(raw):
        raw["environment"]["torch"] = "1.13.1"
        raw["environment"]["packages"]["torch"] = "1.13.1"

    report = reproduce(rewrite_model(trained_model.uri, tmp_path, "old-torch", edit=older_torch))

    # The installed package's version, which need not be torch.__version__: a build from the package
    # index is "2.13.0" as a package and "2.13.0+cu130" as torch.__version__.
    package = importlib.metadata.version("torch")
    assert report.environment_differences == [
        EnvDifference(kind="torch", name="torch", recorded="1.13.1", now=torch.__version__),
        EnvDifference(kind="package", name="torch", recorded="1.13.1", now=package),
    ]
    assert [d.is_package for d in report.environment_differences] == [False, True]
    assert all(isinstance(c, DataCheck) and c.ok for c in report.data_checks)
    assert isinstance(report.code, CodeCheck)
    as_json = report.to_dict()
    assert as_json["environment_differences"] == [
        {"what": "torch", "recorded": "1.13.1", "now": torch.__version__},
        {"what": "package torch", "recorded": "1.13.1", "now": package},
    ]
    assert set(as_json["data_checks"][0]) == {
        "role",
        "uri",
        "name",
        "uuid_matches",
        "manifest_matches",
        "items",
        "metadata",
        "ok",
    }
    assert as_json["code"]["status"] == report.code.status


def test_a_data_check_on_a_tampered_dataset_is_not_ok_and_names_the_item(digits_split_uri, tmp_path):
    uri, _ = train_digits(tmp_path, "model", digits_split_uri, valid=False)
    flip_byte(item_file(digits_split_uri, "data.npy"), offset=-7)

    record = load_record(uri)
    (check,) = check_data(record, open_dataset(uri))

    assert isinstance(check, DataCheck)
    assert (check.ok, check.role, check.name, check.uri, check.error) == (
        False,
        "train",
        "digits",
        record.data[0].uri,
        None,
    )
    assert check.changed_items == ("content altered: data.npy",)
    assert check.metadata_changes == () and check.uuid_matches is True
    assert check.problems == ("train dataset digits: content altered: data.npy",)
    assert check.detail == "content altered: data.npy"
    with pytest.raises(dataclasses.FrozenInstanceError):
        check.ok = True  # frozen


def test_a_dataset_that_cannot_be_opened_is_a_data_check_with_its_error(trained_model, tmp_path):
    record = trained_model.record
    moved = record.model_copy(
        update={"data": [ref.model_copy(update={"uri": f"file://{tmp_path}/gone"}) for ref in record.data]}
    )

    (check,) = check_data(moved, open_dataset(trained_model.uri))

    assert not check.ok and check.error and check.changed_items == ()
    assert check.problems[0].startswith(f"train/valid dataset digits (file://{tmp_path}/gone) cannot be opened: ")
    assert set(check.to_dict()) == {"role", "uri", "name", "ok", "error"}


def test_environment_differences_compare_fields_then_packages_by_name(trained_model):
    was = trained_model.record.environment
    now = was.model_copy(update={"python": "3.99.0", "packages": {**was.packages, "aaa": "1.0"}})

    differences = compare_environments(was, now)

    assert differences == [
        EnvDifference("python", "python", was.python, "3.99.0"),
        EnvDifference("package", "aaa", None, "1.0"),
    ]
    assert [r.text for r in environment_reasons(differences)] == [
        f"environment differs: python {was.python} -> 3.99.0",
        "1 installed package version(s) differ",
    ]
    assert compare_environments(was, was) == []


def test_the_code_check_outside_git_is_unknown_and_keeps_its_json_keys(trained_model):
    record = trained_model.record
    outside = record.model_copy(update={"code": record.code.model_copy(update={"git": None})})

    check = check_code(outside)

    assert (check.status, check.recorded_commit, check.commit_available) == ("unknown", None, None)
    assert check.to_dict() == {
        "recorded_commit": None,
        "dirty": False,
        "status": "unknown",
        "message": "the training ran outside a git repository; code cannot be checked",
    }
